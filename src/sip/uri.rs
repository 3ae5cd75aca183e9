//! SIP/SIPS/TEL URI pieces: enough to name an address of record and match a contact.

/// The parts of a URI siptap compares: user, host (IPv6 brackets kept) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
}

/// The bytes [`Uri::parse`] stops at after the scheme: '@', ':', ';', '?' and '>'.
const DELIMITER: [bool; 256] = {
    let mut t = [false; 256];
    t[b'@' as usize] = true;
    t[b':' as usize] = true;
    t[b';' as usize] = true;
    t[b'?' as usize] = true;
    t[b'>' as usize] = true;
    t
};

/// Calls `f(i, r[i])` for each byte of `r` that is in [`DELIMITER`], in order. Sixteen bytes at
/// a time where SSE2 is there (every x86-64): five compares and one mask per 16 bytes, then one
/// step per delimiter found, where the byte loop took eight instructions per byte (callgrind).
/// Bytes past the last whole block are read by one load that ends at `r`'s end, their earlier
/// bytes (already seen) masked off; a URI shorter than 16 bytes is read byte by byte.
#[inline(always)]
fn for_each_delimiter(r: &[u8], mut f: impl FnMut(usize, u8)) {
    #[cfg(target_arch = "x86_64")]
    if r.len() >= 16 {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of the x86-64 baseline; every load reads the 16 bytes from `p`,
        // and `p + 16 <= r.len()` for each `p` below (`r.len() >= 16` for the last one)
        let mask_at = |p: usize| unsafe {
            let v = _mm_loadu_si128(r.as_ptr().add(p).cast::<__m128i>());
            let eq = |c: u8| _mm_cmpeq_epi8(v, _mm_set1_epi8(c as i8));
            let m = _mm_or_si128(
                _mm_or_si128(eq(b'@'), eq(b':')),
                _mm_or_si128(_mm_or_si128(eq(b';'), eq(b'?')), eq(b'>')),
            );
            _mm_movemask_epi8(m) as u32
        };
        let mut i = 0;
        let mut each = |base: usize, mut m: u32| {
            while m != 0 {
                let j = base + m.trailing_zeros() as usize;
                f(j, r[j]);
                m &= m - 1;
            }
        };
        while i + 16 <= r.len() {
            each(i, mask_at(i));
            i += 16;
        }
        if i < r.len() {
            let last = r.len() - 16;
            let seen = i - last;
            each(last, mask_at(last) >> seen << seen);
        }
        return;
    }
    for (j, &c) in r.iter().enumerate() {
        if DELIMITER[usize::from(c)] {
            f(j, c);
        }
    }
}

impl<'a> Uri<'a> {
    /// Parses `sip:user:pw@host:port;params?headers` (also `sips:` and `tel:`). Never fails on junk
    /// after the host; returns `None` only when there is no scheme or no host.
    pub fn parse(s: &'a str) -> Option<Uri<'a>> {
        let s = crate::sip::parse::trim_str(s);
        let b = s.as_bytes();
        // `sip:` (nearly every URI) is a scheme that passes the checks below and is not `tel`
        let sip = b.len() >= 4 && crate::sip::parse::is_name(&b[..4], b"sip:");
        let colon = if sip { 3 } else { b.iter().position(|&c| c == b':')? };
        let scheme = &s[..colon];
        if !sip
            && (scheme.is_empty()
                || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.'))
        {
            return None;
        }
        let rest = &s[colon + 1..];
        if !sip && scheme.eq_ignore_ascii_case("tel") {
            let num = &rest[..rest.bytes().position(|b| b == b';' || b == b'?').unwrap_or(rest.len())];
            if num.is_empty() {
                return None;
            }
            return Some(Uri { scheme, user: Some(num), host: "", port: None });
        }
        // one pass over the rest: the user part ends at its last '@'; after that '@', the host
        // part ends at its first ';', '?' or '>', and its port follows its last ':' before that
        // (slicing at these ASCII bytes keeps to char boundaries)
        let r = rest.as_bytes();
        let (mut at, mut first_colon, mut end, mut port_colon) = (None, None, None, None);
        for_each_delimiter(r, |i, c| match c {
            b'@' => {
                at = Some(i);
                end = None;
                port_colon = None;
            }
            b':' => {
                first_colon.get_or_insert(i);
                if end.is_none() {
                    port_colon = Some(i);
                }
            }
            _ => {
                end.get_or_insert(i);
            }
        });
        let (user, from) = match at {
            // a password (after the user's first ':') dropped
            Some(at) => (Some(&rest[..first_colon.filter(|&c| c < at).unwrap_or(at)]), at + 1),
            None => (None, 0),
        };
        let end = end.unwrap_or(r.len());
        let hostport = &rest[from..end];
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let close = stripped.bytes().position(|b| b == b']')?;
            let host = &hostport[..close + 2];
            let port = hostport[close + 2..].strip_prefix(':').and_then(|p| p.parse().ok());
            (host, port)
        } else {
            match port_colon {
                Some(c) => (&rest[from..c], crate::sip::parse::decimal(&r[c + 1..end])),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Uri { scheme, user: user.filter(|u| !u.is_empty()), host, port })
    }

    /// The address of record `user@domain`, domain lower-cased, without parameters.
    /// A URI without a user part is named by its host alone.
    pub fn aor(&self) -> String {
        let mut s = String::with_capacity(self.user.map_or(0, |u| u.len() + 1) + self.host.len());
        if let Some(u) = self.user {
            s.push_str(u);
            if !self.host.is_empty() {
                s.push('@');
            }
        }
        let at = s.len();
        s.push_str(self.host);
        s[at..].make_ascii_lowercase();
        s
    }

    /// A key for matching a Request-URI against a registered contact: user, host, port
    /// (default 5060), lower-case host.
    pub fn contact_key(&self) -> String {
        let user = self.user.unwrap_or("");
        let mut s = String::with_capacity(user.len() + self.host.len() + 7);
        s.push_str(user);
        s.push('@');
        let at = s.len();
        s.push_str(self.host);
        s[at..].make_ascii_lowercase();
        s.push(':');
        let mut digits = [0; 20];
        let port = crate::bytes::decimal(u64::from(self.port.unwrap_or(5060)), &mut digits);
        s.push_str(std::str::from_utf8(port).expect("digits"));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_and_parameters() {
        let u = Uri::parse("sip:alice@Lab.Example;transport=tcp").unwrap();
        assert_eq!(u.user, Some("alice"));
        assert_eq!(u.host, "Lab.Example");
        assert_eq!(u.port, None);
        assert_eq!(u.aor(), "alice@lab.example");
    }

    #[test]
    fn ipv6_host_and_port() {
        let u = Uri::parse("sip:bob@[2001:db8::1]:5070;lr").unwrap();
        assert_eq!(u.host, "[2001:db8::1]");
        assert_eq!(u.port, Some(5070));
        assert_eq!(u.contact_key(), "bob@[2001:db8::1]:5070");
        let u = Uri::parse("sip:[::1]").unwrap();
        assert_eq!((u.user, u.host, u.port), (None, "[::1]", None));
    }

    #[test]
    fn password_tel_and_junk() {
        let u = Uri::parse("sips:carol:pw@example.com:5061").unwrap();
        assert_eq!((u.user, u.port), (Some("carol"), Some(5061)));
        let t = Uri::parse("tel:+4930123;phone-context=x").unwrap();
        assert_eq!(t.aor(), "+4930123");
        assert!(Uri::parse("nonsense").is_none());
        assert!(Uri::parse("sip:").is_none());
        assert!(Uri::parse("sip:user@").is_none());
        assert!(Uri::parse("sip:[::1").is_none());
    }

    /// The parser as it was before it searched bytes (str methods throughout): both must agree
    /// on every input.
    fn reference_parse(s: &str) -> Option<Uri<'_>> {
        let s = s.trim();
        let colon = s.find(':')?;
        let scheme = &s[..colon];
        if scheme.is_empty()
            || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return None;
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("tel") {
            let num = rest.split([';', '?']).next().unwrap_or("");
            if num.is_empty() {
                return None;
            }
            return Some(Uri { scheme, user: Some(num), host: "", port: None });
        }
        // user part ends at the last '@' before any ';' or '?' of the host part
        let (user, hostport) = match rest.rfind('@') {
            Some(at) => {
                let u = &rest[..at];
                let u = u.split(':').next().unwrap_or(u); // drop a password
                (Some(u), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let hostport = hostport.split([';', '?', '>']).next().unwrap_or("");
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let end = stripped.find(']')?;
            let host = &hostport[..end + 2];
            let port = hostport[end + 2..].strip_prefix(':').and_then(|p| p.parse().ok());
            (host, port)
        } else {
            match hostport.rfind(':') {
                Some(c) => (&hostport[..c], hostport[c + 1..].parse().ok()),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return None;
        }
        Some(Uri { scheme, user: user.filter(|u| !u.is_empty()), host, port })
    }

    #[test]
    fn byte_search_agrees_with_the_str_parser() {
        let parts = [
            "sip",
            "SIPS",
            "sIp:",
            "tel",
            ":",
            "@",
            "alice",
            "pw",
            "[",
            "]",
            "2001:db8::1",
            ";",
            "?",
            ">",
            "<",
            " ",
            "\t",
            "\u{a0}",
            "é",
            "5060",
            "+",
            "65536",
            "Host.Example",
            "",
            "+1-555",
            ".",
            ",",
            "\r\n",
            "lr",
        ];
        let seed = 0x2545_f491_4f6c_dd1du64;
        let mut rng = crate::testkit::Rng(seed);
        let mut next = || rng.next_u64();
        let fp = crate::state::fingerprint::Fingerprinter::new([3, 4]);
        for _ in 0..200_000 {
            // (up to 12 pieces: URIs past one and two 16-byte blocks, for `for_each_delimiter`)
            let n = (next() % 13) as usize;
            let s: String = (0..n).map(|_| parts[(next() % parts.len() as u64) as usize]).collect();
            let u = Uri::parse(&s);
            assert_eq!(u, reference_parse(&s), "{s:?}");
            if let Some(u) = u {
                let key =
                    format!("{}@{}:{}", u.user.unwrap_or(""), u.host.to_ascii_lowercase(), u.port.unwrap_or(5060));
                assert_eq!(u.contact_key(), key, "{s:?}");
                assert_eq!(fp.of_contact(&u), fp.of(&key), "{s:?}");
            }
        }
    }
}
