//! Fingerprints: 64-bit keyed hashes (SipHash-1-3) of strings the state machines only compare
//! for equality (Call-IDs of boot cycles, contacts, tags), so that tables hold 8 bytes instead
//! of a string. The key is random per state directory (kept with the state, so fingerprints stay
//! valid across restarts) and unknown to senders, so nobody can craft colliding values.
use std::hash::{BuildHasherDefault, Hasher};

pub type Fp = u64;

/// The fingerprints the call legs are found by: a message's Call-ID and its From and To tags.
/// Taken where the message is parsed: with two threads, on the decoding one, which has the
/// lighter load (the state thread waits on its tables' cache misses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageKeys {
    pub call_id: Fp,
    pub from_tag: Option<Fp>,
    pub to_tag: Option<Fp>,
}

impl MessageKeys {
    /// (A REGISTER's legs are never looked for: its tags are left out.)
    pub fn of(fp: &Fingerprinter, msg: &crate::sip::parse::Message<'_>) -> Self {
        let register = msg.is_register();
        let tag = |t: Option<&str>| if register { None } else { t.map(|t| fp.of(t)) };
        MessageKeys { call_id: fp.of(msg.call_id), from_tag: tag(msg.from.tag()), to_tag: tag(msg.to.tag()) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprinter {
    k0: u64,
    k1: u64,
}

impl Fingerprinter {
    pub fn new(key: [u64; 2]) -> Self {
        Fingerprinter { k0: key[0], k1: key[1] }
    }

    pub fn key(&self) -> [u64; 2] {
        [self.k0, self.k1]
    }

    pub fn of(&self, s: &str) -> Fp {
        self.of_bytes(s.as_bytes())
    }

    /// A transport address (IP and port), for tables that only ask "the same source?".
    pub fn of_addr(&self, a: &std::net::SocketAddr) -> Fp {
        let mut buf = [0u8; 18];
        let n = match a.ip() {
            std::net::IpAddr::V4(ip) => {
                buf[..4].copy_from_slice(&ip.octets());
                4
            }
            std::net::IpAddr::V6(ip) => {
                buf[..16].copy_from_slice(&ip.octets());
                16
            }
        };
        buf[n..n + 2].copy_from_slice(&a.port().to_be_bytes());
        self.of_bytes(&buf[..n + 2])
    }

    /// The fingerprint of a URI's contact key (`Uri::contact_key`: user, `@`, lower-case host,
    /// `:`, port), without building the string: the key is written into a buffer on the stack
    /// (the URIs the state keeps are at most `MAX_FIELD` bytes) and hashed in one call.
    pub fn of_contact(&self, uri: &crate::sip::uri::Uri<'_>) -> Fp {
        let (user, host) = (uri.user.unwrap_or("").as_bytes(), uri.host.as_bytes());
        let mut buf = [0u8; 2 * super::tracker::MAX_FIELD];
        if user.len() + host.len() + 7 > buf.len() {
            return self.of(&uri.contact_key());
        }
        buf[..user.len()].copy_from_slice(user);
        let mut n = user.len();
        buf[n] = b'@';
        n += 1;
        buf[n..n + host.len()].copy_from_slice(host);
        buf[n..n + host.len()].make_ascii_lowercase();
        n += host.len();
        buf[n] = b':';
        n += 1;
        let mut digits = [0; 20];
        let d = crate::bytes::decimal(u64::from(uri.port.unwrap_or(5060)), &mut digits);
        buf[n..n + d.len()].copy_from_slice(d);
        self.of_bytes(&buf[..n + d.len()])
    }

    pub fn of_bytes(&self, b: &[u8]) -> Fp {
        siphash13(self.k0, self.k1, b)
    }
}

/// SipHash-1-3 of `b` in one call: the value `SipHasher13`'s `write` then `finish` give (tested),
/// without the streaming hasher's handling of a tail between writes, which showed in profiles.
fn siphash13(k0: u64, k1: u64, b: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    let round = |v: &mut [u64; 4]| {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    };
    let compress = |v: &mut [u64; 4], m: u64| {
        v[3] ^= m;
        round(v);
        v[0] ^= m;
    };
    let mut words = b.chunks_exact(8);
    for w in &mut words {
        compress(&mut v, u64::from_le_bytes(w.try_into().expect("8 bytes")));
    }
    compress(&mut v, crate::bytes::le_tail(words.remainder()) | (b.len() as u64) << 56);
    v[2] ^= 0xff;
    for _ in 0..3 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// A hasher for maps keyed by fingerprints or sequential ids: one multiplication (Fibonacci
/// hashing), which spreads sequential ids over all the bits the table looks at (its top bits as
/// well as its low ones). Keys from the network are fingerprints already (keyed SipHash), so
/// nobody can aim collisions at it.
#[derive(Default, Clone, Copy)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by fingerprints.
pub type FpMap<V> = std::collections::HashMap<Fp, V, BuildHasherDefault<Identity>>;
/// A set of fingerprints.
pub type FpSet = std::collections::HashSet<Fp, BuildHasherDefault<Identity>>;

/// The keys of records changed since the state was last saved; switched off where nothing is
/// saved (a replay without a state directory), so that it costs nothing there.
#[derive(Debug, Default)]
pub struct DirtySet {
    keys: FpSet,
    off: bool,
}

impl DirtySet {
    pub fn insert(&mut self, k: Fp) {
        if !self.off {
            self.keys.insert(k);
        }
    }
    pub fn take(&mut self) -> FpSet {
        std::mem::take(&mut self.keys)
    }
    pub fn set_tracking(&mut self, on: bool) {
        self.off = !on;
        if !on {
            self.keys = FpSet::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_and_stable() {
        let a = Fingerprinter::new([1, 2]);
        let b = Fingerprinter::new([1, 3]);
        assert_eq!(a.of("call-1@host"), a.of("call-1@host"));
        assert_ne!(a.of("call-1@host"), a.of("call-2@host"));
        assert_ne!(a.of("call-1@host"), b.of("call-1@host"));
        // the value is part of the persisted state format: it must not change between builds
        assert_eq!(Fingerprinter::new([0, 0]).of(""), 0xd1fb_a762_150c_532c);
    }

    /// The one-call SipHash gives the streaming hasher's values (the persisted state's format).
    #[test]
    fn one_call_siphash_is_sip_hasher_13() {
        let mut rng = crate::testkit::Rng(13);
        for len in 0..600 {
            let b: Vec<u8> = (0..len).map(|_| rng.below(256) as u8).collect();
            let (k0, k1) = (rng.next_u64(), rng.next_u64());
            let mut h = siphasher::sip::SipHasher13::new_with_keys(k0, k1);
            h.write(&b);
            assert_eq!(siphash13(k0, k1, &b), h.finish(), "{len}");
        }
    }

    #[test]
    fn contact_fingerprint_is_the_contact_key_s() {
        let f = Fingerprinter::new([7, 9]);
        let long_host = format!("sip:u@{}.Example.COM:65535", "H".repeat(150));
        // (and one too long for the stack buffer, hashed from the built string)
        let too_long = format!("sip:{}@{}.Example.COM:65535", "u".repeat(300), "H".repeat(300));
        for uri in
            ["sip:alice@Lab.Example", "sip:bob@[2001:DB8::1]:5070;lr", "sip:[::1]", "sips:x@h:0", &long_host, &too_long]
        {
            let u = crate::sip::uri::Uri::parse(uri).unwrap();
            assert_eq!(f.of_contact(&u), f.of(&u.contact_key()), "{uri}");
        }
    }
}
