//! SIP/SIPS/TEL URI pieces: enough to name an address of record and match a contact.

/// The parts of a URI siptap compares: user, host (IPv6 brackets kept) and port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    pub scheme: &'a str,
    pub user: Option<&'a str>,
    pub host: &'a str,
    pub port: Option<u16>,
}

impl<'a> Uri<'a> {
    /// Parses `sip:user:pw@host:port;params?headers` (also `sips:` and `tel:`). Never fails on junk
    /// after the host; returns `None` only when there is no scheme or no host.
    pub fn parse(s: &'a str) -> Option<Uri<'a>> {
        // byte searches for the ASCII delimiters (slicing at them keeps to char boundaries)
        let first = |s: &str, pred: fn(u8) -> bool| s.bytes().position(pred);
        let last = |s: &str, c: u8| s.bytes().rposition(|b| b == c);
        let s = crate::sip::parse::trim_str(s);
        let colon = first(s, |b| b == b':')?;
        let scheme = &s[..colon];
        if scheme.is_empty()
            || !scheme.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        {
            return None;
        }
        let rest = &s[colon + 1..];
        if scheme.eq_ignore_ascii_case("tel") {
            let num = &rest[..first(rest, |b| b == b';' || b == b'?').unwrap_or(rest.len())];
            if num.is_empty() {
                return None;
            }
            return Some(Uri { scheme, user: Some(num), host: "", port: None });
        }
        // user part ends at the last '@' before any ';' or '?' of the host part
        let (user, hostport) = match last(rest, b'@') {
            Some(at) => {
                let u = &rest[..at];
                let u = &u[..first(u, |b| b == b':').unwrap_or(u.len())]; // drop a password
                (Some(u), &rest[at + 1..])
            }
            None => (None, rest),
        };
        let hostport = &hostport[..first(hostport, |b| matches!(b, b';' | b'?' | b'>')).unwrap_or(hostport.len())];
        let (host, port) = if let Some(stripped) = hostport.strip_prefix('[') {
            let end = first(stripped, |b| b == b']')?;
            let host = &hostport[..end + 2];
            let port = hostport[end + 2..].strip_prefix(':').and_then(|p| p.parse().ok());
            (host, port)
        } else {
            match last(hostport, b':') {
                Some(c) => (&hostport[..c], hostport[c + 1..].parse().ok()),
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
        format!("{}@{}:{}", self.user.unwrap_or(""), self.host.to_ascii_lowercase(), self.port.unwrap_or(5060))
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
        for _ in 0..200_000 {
            let n = (next() % 9) as usize;
            let s: String = (0..n).map(|_| parts[(next() % parts.len() as u64) as usize]).collect();
            assert_eq!(Uri::parse(&s), reference_parse(&s), "{s:?}");
        }
    }
}
