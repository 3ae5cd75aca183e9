//! Frames -> SIP message bytes with their endpoints: link layers, IPv4/IPv6 (with fragment
//! reassembly), tunnels (IP-in-IP, GRE, ERSPAN, VXLAN, GTP-U), UDP, TCP (stream reassembly) and
//! SCTP. Sans-IO: time is the frame's timestamp.
pub mod defrag;
pub mod hep;
pub mod link;
pub mod tcp;
pub mod ws;

use crate::capture::{Frame, Micros};
use crate::sip::parse::{StartHint, sip_start, starts_with_sip};
use defrag::{Defrag, DefragLimits, FragKey};
use link::{LinkError, Net};
use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tcp::{FlowKey, Segment, TcpReassembly};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Udp,
    Tcp,
    Sctp,
    /// SIP over WebSocket (RFC 7118) on plain TCP.
    Ws,
}

/// One SIP message's bytes as they crossed the network.
#[derive(Debug, Clone, Copy)]
pub struct SipBytes<'a> {
    pub ts: Micros,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub transport: Transport,
    pub data: &'a [u8],
    /// The first line's shape, where the decoder already split it (UDP): not split again.
    pub start: Option<StartHint>,
}

/// Counters for what decoding met and skipped.
#[derive(Debug, Default, Clone, Copy)]
pub struct DecodeStats {
    pub frames: u64,
    pub unknown_linktype: u64,
    pub truncated: u64,
    pub not_ip: u64,
    pub tunnelled: u64,
    pub udp: u64,
    pub udp_not_sip: u64,
    pub sctp_chunks: u64,
    pub other_ip_proto: u64,
    pub too_deep: u64,
    /// The same IP packet seen again within the duplicate window (two mirror ports, a SPAN of
    /// both directions): dropped. A SIP retransmission comes later and is not one of these.
    pub duplicates: u64,
    pub hep_packets: u64,
    pub hep_not_sip: u64,
    pub hep_malformed: u64,
    pub hep_refused: u64,
    /// SCTP messages being reassembled, dropped at the bound (`limits.max_sctp_bytes`).
    pub sctp_dropped: u64,
}

/// Limits for the decoder's tables.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    pub max_fragments: usize,
    /// Bytes all incomplete datagrams may hold together.
    pub max_fragment_bytes: usize,
    pub max_fragments_per_datagram: usize,
    pub fragment_timeout_secs: u64,
    pub max_tcp_streams: usize,
    pub max_tcp_buffer: usize,
    /// Bytes all TCP streams may hold together.
    pub max_tcp_total_bytes: usize,
    /// Bytes of SCTP messages being reassembled.
    pub max_sctp_bytes: usize,
    /// Copies of one IP packet closer together than this are duplicates (0: keep all).
    pub duplicate_window: Micros,
    /// UDP ports on which HEP v3 is recognised.
    pub hep_ports: Vec<u16>,
    /// Who HEP is taken from (captured or received): nobody unless configured.
    pub hep_trust: HepTrust,
}

/// Who siptap takes HEP from. HEP carries SIP with its own addresses and times, so whoever can
/// send a HEP packet that siptap decodes can make up registrations and calls: nothing is trusted
/// unless configured (`[[hep.sources]]`), or everything only when explicitly told
/// (`hep.allow_any_source`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HepTrust {
    pub sources: Vec<HepSource>,
    pub allow_any: bool,
}

impl HepTrust {
    pub fn accepts(&self, sender: IpAddr, capture_id: Option<u32>, password: Option<&str>) -> bool {
        self.allow_any
            || self.sources.iter().any(|s| {
                s.address.is_none_or(|a| a == sender)
                    && s.capture_id.is_none_or(|c| Some(c) == capture_id)
                    && s.password.as_deref().is_none_or(|pw| Some(pw) == password)
            })
    }
}

/// A HEP sender siptap accepts: its address, and the capture id and password it must present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HepSource {
    pub address: Option<IpAddr>,
    pub capture_id: Option<u32>,
    pub password: Option<String>,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_fragments: 4096,
            max_fragment_bytes: 16 << 20,
            max_fragments_per_datagram: 128,
            fragment_timeout_secs: 30,
            max_tcp_streams: 65_536,
            max_tcp_buffer: 256 * 1024,
            max_tcp_total_bytes: 32 << 20,
            max_sctp_bytes: 4 << 20,
            duplicate_window: 20_000,
            hep_ports: vec![9060],
            hep_trust: HepTrust::default(),
        }
    }
}

pub struct Decoder {
    pub defrag: Defrag,
    pub tcp: TcpReassembly,
    pub stats: DecodeStats,
    sip_ports: Vec<u16>,
    last_expire: Micros,
    /// SCTP user messages split over several DATA chunks, by (src, dst, stream).
    sctp_partial: HashMap<(SocketAddr, SocketAddr, u16), Vec<u8>>,
    sctp_bytes: usize,
    max_sctp_bytes: usize,
    max_message: usize,
    dedup: Dedup,
    hep_ports: Vec<u16>,
    hep_trust: HepTrust,
    hep_refused_logged: bool,
}

/// The keys of the duplicate table are hashes already: use them as they are.
#[derive(Default)]
struct PreHashed(u64);

impl std::hash::Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Recently seen IP packets, by hash, to drop copies of one packet seen twice.
struct Dedup {
    window: Micros,
    seen: HashMap<u64, Micros, std::hash::BuildHasherDefault<PreHashed>>,
    order: VecDeque<(Micros, u64)>,
}

impl Dedup {
    const MAX: usize = 1 << 16;

    /// Whether a packet with this hash was seen within the window (and remembers it).
    fn is_duplicate(&mut self, ts: Micros, h: u64) -> bool {
        if self.window <= 0 {
            return false;
        }
        while let Some(&(t, k)) = self.order.front() {
            if ts - t <= self.window && self.order.len() < Self::MAX {
                break;
            }
            self.order.pop_front();
            // (one lookup each: the entry API, not a `get` then a `remove` or an `insert`)
            if let Entry::Occupied(e) = self.seen.entry(k)
                && *e.get() == t
            {
                e.remove();
            }
        }
        match self.seen.entry(h) {
            Entry::Occupied(e) if (ts - *e.get()).abs() <= self.window => return true,
            Entry::Occupied(mut e) => {
                e.insert(ts);
            }
            Entry::Vacant(e) => {
                e.insert(ts);
            }
        }
        self.order.push_back((ts, h));
        false
    }
}

/// A fast 64-bit hash of a packet's identity, eight bytes at a time (FxHash's mixing step; the
/// duplicate table needs no resistance against chosen collisions: a forged twin would have to be
/// sent within the 20 ms window of a packet the attacker cannot see in advance).
fn packet_hash(parts: &[&[u8]]) -> u64 {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let mix = |h: u64, w: u64| (h.rotate_left(5) ^ w).wrapping_mul(K);
    let word = |c: &[u8]| u64::from_le_bytes(c.try_into().expect("8 bytes"));
    // four independent lanes over 32-byte blocks: the multiplications overlap instead of
    // waiting on each other (the payload is most of what is hashed)
    let mut lanes = [0u64, 1, 2, 3];
    let mut tail = 0u64;
    for p in parts {
        let mut blocks = p.chunks_exact(32);
        for b in &mut blocks {
            for (i, lane) in lanes.iter_mut().enumerate() {
                *lane = mix(*lane, word(&b[i * 8..i * 8 + 8]));
            }
        }
        let mut words = blocks.remainder().chunks_exact(8);
        for w in &mut words {
            tail = mix(tail, word(w));
        }
        tail = mix(tail, crate::bytes::le_tail(words.remainder()) ^ ((p.len() as u64) << 56));
    }
    lanes.iter().fold(tail, |h, l| mix(h, *l))
}

/// An address as bytes for hashing, without formatting it as text: the family, the IP (an IPv4
/// one in its IPv6-mapped form) and the port.
fn addr_bytes(a: SocketAddr) -> [u8; 19] {
    let (family, ip) = match a.ip() {
        IpAddr::V4(v4) => (4, v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => (6, v6),
    };
    let mut b = [0u8; 19];
    b[0] = family;
    b[1..17].copy_from_slice(&ip.octets());
    b[17..].copy_from_slice(&a.port().to_be_bytes());
    b
}

/// The address [`addr_bytes`] was made from.
fn addr_from_bytes(b: &[u8; 19]) -> SocketAddr {
    let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(&b[1..17]).expect("16 bytes"));
    let ip = match (b[0], v6.to_ipv4_mapped()) {
        (4, Some(v4)) => IpAddr::V4(v4),
        _ => IpAddr::V6(v6),
    };
    SocketAddr::new(ip, u16::from_be_bytes([b[17], b[18]]))
}

const MAX_DEPTH: u8 = 6;

impl Decoder {
    /// `sip_ports`: TCP ports whose streams are followed even when first seen mid-message.
    pub fn new(limits: DecodeLimits, sip_ports: Vec<u16>) -> Self {
        Decoder {
            defrag: Defrag::new(DefragLimits {
                max_datagrams: limits.max_fragments,
                max_total_bytes: limits.max_fragment_bytes,
                max_pieces: limits.max_fragments_per_datagram,
                timeout: limits.fragment_timeout_secs as Micros * 1_000_000,
            }),
            tcp: TcpReassembly::new(limits.max_tcp_streams, limits.max_tcp_buffer, limits.max_tcp_total_bytes),
            stats: DecodeStats::default(),
            sip_ports,
            last_expire: 0,
            sctp_partial: HashMap::new(),
            sctp_bytes: 0,
            max_sctp_bytes: limits.max_sctp_bytes,
            max_message: limits.max_tcp_buffer,
            dedup: Dedup { window: limits.duplicate_window, seen: HashMap::default(), order: VecDeque::new() },
            hep_ports: limits.hep_ports,
            hep_trust: limits.hep_trust,
            hep_refused_logged: false,
        }
    }

    /// Decodes one frame; calls `out` for every SIP message it yields (none, one or several).
    pub fn decode(&mut self, frame: Frame<'_>, out: &mut dyn FnMut(SipBytes<'_>)) {
        self.stats.frames += 1;
        if frame.ts - self.last_expire > 1_000_000 {
            self.tick(frame.ts, out);
        }
        match link::strip(frame.linktype, frame.data) {
            Ok((net, rest)) => self.net(frame.ts, net, rest, 0, out),
            Err(e) => self.link_error(e),
        }
    }

    /// Timers of the decoding tables: fragments and streams that waited too long. Called once a
    /// second of packet time by `decode`, and by a live capture's clock when traffic is quiet.
    pub fn tick(&mut self, now: Micros, out: &mut dyn FnMut(SipBytes<'_>)) {
        self.defrag.expire(now);
        self.tcp.flush_gaps(now, &mut |key, m, ws| {
            let transport = if ws { Transport::Ws } else { Transport::Tcp };
            out(SipBytes { ts: now, src: key.src, dst: key.dst, transport, data: m, start: None })
        });
        self.tcp.expire(now);
        self.last_expire = now;
    }

    fn link_error(&mut self, e: LinkError) {
        match e {
            LinkError::UnknownLinkType => self.stats.unknown_linktype += 1,
            LinkError::Truncated => self.stats.truncated += 1,
            LinkError::NotIp => self.stats.not_ip += 1,
        }
    }

    fn net(&mut self, ts: Micros, net: Net, data: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        if depth > MAX_DEPTH {
            self.stats.too_deep += 1;
            return;
        }
        match net {
            Net::Ipv4 => self.ipv4(ts, data, depth, out),
            Net::Ipv6 => self.ipv6(ts, data, depth, out),
            Net::Ethernet => match link::ethernet(data) {
                Ok((n, rest)) if n != Net::Ethernet => self.net(ts, n, rest, depth + 1, out),
                Ok((_, rest)) => self.net(ts, Net::Ethernet, rest, depth + 1, out),
                Err(e) => self.link_error(e),
            },
        }
    }

    fn ipv4(&mut self, ts: Micros, d: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        if d.len() < 20 || d[0] >> 4 != 4 {
            self.stats.truncated += 1;
            return;
        }
        let ihl = usize::from(d[0] & 0x0f) * 4;
        let total = usize::from(u16::from_be_bytes([d[2], d[3]]));
        if ihl < 20 || d.len() < ihl {
            self.stats.truncated += 1;
            return;
        }
        // tolerate a total length of 0 (TSO on the capturing host) or past the frame (snaplen)
        let end = if total >= ihl && total <= d.len() { total } else { d.len() };
        let proto = d[9];
        let src = IpAddr::V4(Ipv4Addr::new(d[12], d[13], d[14], d[15]));
        let dst = IpAddr::V4(Ipv4Addr::new(d[16], d[17], d[18], d[19]));
        let flags_off = u16::from_be_bytes([d[6], d[7]]);
        let more = flags_off & 0x2000 != 0;
        let offset = usize::from(flags_off & 0x1fff) * 8;
        let payload = &d[ihl..end];
        // identity of the packet: addresses, protocol, IP ID, fragment field and payload (not
        // the TTL or checksum, which differ between two capture points)
        if self.dedup.is_duplicate(ts, packet_hash(&[&d[4..8], &d[9..10], &d[12..20], payload])) {
            self.stats.duplicates += 1;
            return;
        }
        if more || offset != 0 {
            let key = FragKey { src, dst, id: u32::from(u16::from_be_bytes([d[4], d[5]])), proto };
            if let Some(whole) = self.defrag.push(ts, key, offset, more, payload) {
                self.transport(ts, proto, src, dst, &whole, depth, out);
            }
            return;
        }
        self.transport(ts, proto, src, dst, payload, depth, out);
    }

    fn ipv6(&mut self, ts: Micros, d: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        if d.len() < 40 || d[0] >> 4 != 6 {
            self.stats.truncated += 1;
            return;
        }
        let plen = usize::from(u16::from_be_bytes([d[4], d[5]]));
        let end = if plen > 0 && 40 + plen <= d.len() { 40 + plen } else { d.len() };
        let src = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&d[8..24]).expect("16 bytes")));
        let dst = IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&d[24..40]).expect("16 bytes")));
        if self.dedup.is_duplicate(ts, packet_hash(&[&d[6..7], &d[8..40], &d[40..end]])) {
            self.stats.duplicates += 1;
            return;
        }
        let mut next = d[6];
        let mut pos = 40;
        // walk the extension headers
        for _ in 0..8 {
            match next {
                0 | 43 | 60 => {
                    let Some(h) = d.get(pos..pos + 2) else { break };
                    next = h[0];
                    pos += (usize::from(h[1]) + 1) * 8;
                }
                44 => {
                    let Some(h) = d.get(pos..pos + 8) else { break };
                    let off_m = u16::from_be_bytes([h[2], h[3]]);
                    let key = FragKey { src, dst, id: u32::from_be_bytes([h[4], h[5], h[6], h[7]]), proto: h[0] };
                    let offset = usize::from(off_m >> 3) * 8;
                    let more = off_m & 1 == 1;
                    let Some(payload) = d.get(pos + 8..end) else {
                        break;
                    };
                    if let Some(whole) = self.defrag.push(ts, key, offset, more, payload) {
                        self.transport(ts, h[0], src, dst, &whole, depth, out);
                    }
                    return;
                }
                _ => {
                    let Some(payload) = d.get(pos..end) else {
                        break;
                    };
                    self.transport(ts, next, src, dst, payload, depth, out);
                    return;
                }
            }
        }
        self.stats.truncated += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn transport(
        &mut self,
        ts: Micros,
        proto: u8,
        src: IpAddr,
        dst: IpAddr,
        p: &[u8],
        depth: u8,
        out: &mut dyn FnMut(SipBytes<'_>),
    ) {
        match proto {
            17 => self.udp(ts, src, dst, p, depth, out),
            6 => self.tcp(ts, src, dst, p, out),
            132 => self.sctp(ts, src, dst, p, out),
            4 => {
                self.stats.tunnelled += 1;
                self.net(ts, Net::Ipv4, p, depth + 1, out)
            }
            41 => {
                self.stats.tunnelled += 1;
                self.net(ts, Net::Ipv6, p, depth + 1, out)
            }
            47 => self.gre(ts, p, depth, out),
            _ => self.stats.other_ip_proto += 1,
        }
    }

    fn udp(&mut self, ts: Micros, src: IpAddr, dst: IpAddr, p: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        if p.len() < 8 {
            self.stats.truncated += 1;
            return;
        }
        let sport = u16::from_be_bytes([p[0], p[1]]);
        let dport = u16::from_be_bytes([p[2], p[3]]);
        let ulen = usize::from(u16::from_be_bytes([p[4], p[5]]));
        let end = if ulen >= 8 && ulen <= p.len() { ulen } else { p.len() };
        let payload = &p[8..end];
        self.stats.udp += 1;
        // tunnels carried over UDP
        if dport == 4789 && payload.len() > 8 && payload[0] & 0x08 != 0 {
            self.stats.tunnelled += 1;
            return self.net(ts, Net::Ethernet, &payload[8..], depth + 1, out);
        }
        if (dport == 2152 || sport == 2152) && payload.len() >= 8 && payload[0] >> 5 == 1 && payload[1] == 0xff {
            return self.gtp_u(ts, payload, depth, out);
        }
        if hep::is_hep3(payload) && (self.hep_ports.contains(&dport) || self.hep_ports.contains(&sport)) {
            return self.hep(ts, src, payload, out);
        }
        let start @ Some(_) = sip_start(payload) else {
            self.stats.udp_not_sip += 1;
            return;
        };
        out(SipBytes {
            ts,
            src: SocketAddr::new(src, sport),
            dst: SocketAddr::new(dst, dport),
            transport: Transport::Udp,
            data: payload,
            start,
        });
    }

    pub fn set_hep_trust(&mut self, trust: HepTrust) {
        self.hep_trust = trust;
    }

    /// One HEP v3 packet sent by `sender` (from a capture, or received by the live listener).
    /// The SIP inside keeps its own addresses and, when the packet carries one, its own time.
    pub fn hep(&mut self, ts: Micros, sender: IpAddr, payload: &[u8], out: &mut dyn FnMut(SipBytes<'_>)) {
        self.stats.hep_packets += 1;
        let p = match hep::parse(payload, self.max_message) {
            Ok(p) => p,
            Err(_) => {
                self.stats.hep_malformed += 1;
                return;
            }
        };
        if !self.hep_trust.accepts(sender, p.capture_id, p.password) {
            self.stats.hep_refused += 1;
            if !self.hep_refused_logged {
                self.hep_refused_logged = true;
                tracing::warn!(%sender, capture_id = ?p.capture_id, "HEP from a source not in [[hep.sources]] ignored (counted in hep_refused)");
            }
            return;
        }
        if p.payload_type != 1 || !starts_with_sip(&p.payload) {
            self.stats.hep_not_sip += 1;
            return;
        }
        let ts = p.ts.unwrap_or(ts);
        // several agents (or one agent on several interfaces) may mirror the same message
        let ident = packet_hash(&[&ts.to_be_bytes(), &addr_bytes(p.src), &addr_bytes(p.dst), &p.payload]);
        if self.dedup.is_duplicate(ts, ident) {
            self.stats.duplicates += 1;
            return;
        }
        let transport = match p.ip_proto {
            6 => Transport::Tcp,
            132 => Transport::Sctp,
            _ => Transport::Udp,
        };
        out(SipBytes { ts, src: p.src, dst: p.dst, transport, data: &p.payload, start: None });
    }

    fn gtp_u(&mut self, ts: Micros, p: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        let flags = p[0];
        let mut pos = 8;
        if flags & 0x07 != 0 {
            pos += 4; // sequence number, N-PDU number, next extension header type
            let mut next_ext = p.get(pos - 1).copied().unwrap_or(0);
            while next_ext != 0 {
                let Some(&len) = p.get(pos) else { return };
                if len == 0 {
                    return;
                }
                pos += usize::from(len) * 4;
                next_ext = p.get(pos - 1).copied().unwrap_or(0);
            }
        }
        let Some(inner) = p.get(pos..) else { return };
        self.stats.tunnelled += 1;
        match inner.first().map(|b| b >> 4) {
            Some(4) => self.net(ts, Net::Ipv4, inner, depth + 1, out),
            Some(6) => self.net(ts, Net::Ipv6, inner, depth + 1, out),
            _ => self.stats.not_ip += 1,
        }
    }

    fn gre(&mut self, ts: Micros, p: &[u8], depth: u8, out: &mut dyn FnMut(SipBytes<'_>)) {
        if p.len() < 4 {
            self.stats.truncated += 1;
            return;
        }
        let flags = p[0];
        let version = p[1] & 0x07;
        let proto = u16::from_be_bytes([p[2], p[3]]);
        let mut pos = 4;
        if flags & 0x80 != 0 || flags & 0x40 != 0 {
            pos += 4; // checksum (+ offset)
        }
        if flags & 0x20 != 0 {
            pos += 4; // key
        }
        if flags & 0x10 != 0 {
            pos += 4; // sequence number
        }
        if version == 1 && p[1] & 0x80 != 0 {
            pos += 4; // enhanced GRE (PPTP) acknowledgment number
        }
        let Some(inner) = p.get(pos..) else {
            self.stats.truncated += 1;
            return;
        };
        self.stats.tunnelled += 1;
        let res = match proto {
            0x88BE => inner.get(8..).map(|e| (Net::Ethernet, e)).ok_or(LinkError::Truncated), // ERSPAN type II
            0x22EB => {
                // ERSPAN type III: 12 bytes, plus 8 when the O bit says a platform subheader follows
                let o = inner.get(11).map(|b| b & 0x01 != 0).unwrap_or(false);
                inner.get(if o { 20 } else { 12 }..).map(|e| (Net::Ethernet, e)).ok_or(LinkError::Truncated)
            }
            0x880B => {
                // PPP, optionally with address/control bytes 0xff 0x03
                let q = if inner.starts_with(&[0xff, 0x03]) { &inner[2..] } else { inner };
                match q {
                    [a, rest @ ..] if a & 1 == 1 => link::ppp(u16::from(*a), rest),
                    [a, b, rest @ ..] => link::ppp(u16::from_be_bytes([*a, *b]), rest),
                    _ => Err(LinkError::Truncated),
                }
            }
            et => link::ethertype(et, inner),
        };
        match res {
            Ok((net, rest)) => self.net(ts, net, rest, depth + 1, out),
            Err(e) => self.link_error(e),
        }
    }

    fn tcp(&mut self, ts: Micros, src: IpAddr, dst: IpAddr, p: &[u8], out: &mut dyn FnMut(SipBytes<'_>)) {
        if p.len() < 20 {
            self.stats.truncated += 1;
            return;
        }
        let sport = u16::from_be_bytes([p[0], p[1]]);
        let dport = u16::from_be_bytes([p[2], p[3]]);
        let seq = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
        let off = usize::from(p[12] >> 4) * 4;
        let flags = p[13];
        let Some(payload) = p.get(off.max(20)..) else {
            self.stats.truncated += 1;
            return;
        };
        let key = FlowKey { src: SocketAddr::new(src, sport), dst: SocketAddr::new(dst, dport) };
        let seg = Segment { seq, syn: flags & 0x02 != 0, fin: flags & 0x01 != 0, rst: flags & 0x04 != 0, payload };
        let sip_port = self.sip_ports.contains(&sport) || self.sip_ports.contains(&dport);
        self.tcp.push(ts, key, seg, sip_port, &mut |m, ws| {
            let transport = if ws { Transport::Ws } else { Transport::Tcp };
            out(SipBytes { ts, src: key.src, dst: key.dst, transport, data: m, start: None })
        });
    }

    fn sctp(&mut self, ts: Micros, src: IpAddr, dst: IpAddr, p: &[u8], out: &mut dyn FnMut(SipBytes<'_>)) {
        if p.len() < 12 {
            self.stats.truncated += 1;
            return;
        }
        let s = SocketAddr::new(src, u16::from_be_bytes([p[0], p[1]]));
        let d = SocketAddr::new(dst, u16::from_be_bytes([p[2], p[3]]));
        let mut pos = 12;
        while pos + 4 <= p.len() {
            let ctype = p[pos];
            let flags = p[pos + 1];
            let len = usize::from(u16::from_be_bytes([p[pos + 2], p[pos + 3]]));
            if len < 4 || pos + len > p.len() {
                break;
            }
            // a DATA chunk: B and E bits mark the first and last piece of a user message
            if ctype == 0 && len > 16 {
                self.stats.sctp_chunks += 1;
                let data = &p[pos + 16..pos + len];
                let stream = u16::from_be_bytes([p[pos + 8], p[pos + 9]]);
                let key = (s, d, stream);
                match flags & 0x03 {
                    0x03 => {
                        if starts_with_sip(data) {
                            out(SipBytes { ts, src: s, dst: d, transport: Transport::Sctp, data, start: None });
                        }
                    }
                    0x02 => {
                        // a new message on this stream: what was pending there is abandoned
                        if let Some(old) = self.sctp_partial.remove(&key) {
                            self.sctp_bytes -= old.len();
                        }
                        if self.sctp_partial.len() >= 1024 || self.sctp_bytes + data.len() > self.max_sctp_bytes {
                            // bounded in entries and bytes: drop what is pending, counted
                            self.stats.sctp_dropped += self.sctp_partial.len() as u64;
                            self.sctp_partial.clear();
                            self.sctp_bytes = 0;
                        }
                        self.sctp_bytes += data.len();
                        self.sctp_partial.insert(key, data.to_vec());
                    }
                    b => {
                        if let Some(buf) = self.sctp_partial.get_mut(&key) {
                            if buf.len() + data.len() > self.max_message
                                || self.sctp_bytes + data.len() > self.max_sctp_bytes
                            {
                                self.sctp_bytes -= buf.len();
                                self.sctp_partial.remove(&key);
                                self.stats.sctp_dropped += 1;
                            } else {
                                buf.extend_from_slice(data);
                                self.sctp_bytes += data.len();
                                if b == 0x01 {
                                    let msg = self.sctp_partial.remove(&key).expect("present");
                                    self.sctp_bytes -= msg.len();
                                    if starts_with_sip(&msg) {
                                        out(SipBytes {
                                            ts,
                                            src: s,
                                            dst: d,
                                            transport: Transport::Sctp,
                                            data: &msg,
                                            start: None,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
            }
            pos += len.div_ceil(4) * 4;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder that takes HEP from any sender.
    fn hep_from_anyone() -> Decoder {
        Decoder::new(
            DecodeLimits { hep_trust: HepTrust { sources: vec![], allow_any: true }, ..DecodeLimits::default() },
            vec![5060],
        )
    }

    const SIP: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nCall-ID: x\r\n\r\n";

    /// Copies of one HEP message (two agents mirroring it) are dropped; a message that differs in
    /// an address, even only in its family, is not a copy.
    #[test]
    fn hep_copies_are_dropped_by_addresses_time_and_payload() {
        let mut d = hep_from_anyone();
        let a: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let b: SocketAddr = "127.0.0.2:5060".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:5060".parse().unwrap();
        let b6: SocketAddr = "[::ffff:127.0.0.2]:5060".parse().unwrap();
        let other_port: SocketAddr = "127.0.0.1:5062".parse().unwrap();
        let ts = 1_700_000_000_000_000;
        let sender: IpAddr = "127.0.0.9".parse().unwrap();
        let mut seen = Vec::new();
        for (src, dst) in [(a, b), (a, b), (other_port, b), (mapped, b6), (mapped, b6), (b, a)] {
            let pkt = hep::build(src, dst, ts, 17, 1, None, SIP);
            d.hep(ts, sender, &pkt, &mut |m| seen.push((m.src, m.dst)));
        }
        assert_eq!(seen, vec![(a, b), (other_port, b), (mapped, b6), (b, a)]);
        assert_eq!(d.stats.duplicates, 2);
        // the same message later than the window is not a copy
        let pkt = hep::build(a, b, ts + 10_000_000, 17, 1, None, SIP);
        d.hep(ts + 10_000_000, sender, &pkt, &mut |m| seen.push((m.src, m.dst)));
        assert_eq!(seen.len(), 5);
    }

    /// A HEP message is stamped with the time in its header (when the agent saw it on the wire),
    /// not with when its datagram reached siptap; only a header without a time falls back to that.
    #[test]
    fn hep_messages_take_the_agents_time() {
        let mut d = hep_from_anyone();
        let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:5060".parse().unwrap(), "127.0.0.2:5060".parse().unwrap());
        let (wire, arrived) = (1_700_000_000_123_456, 1_700_000_000_180_000);
        let mut times = Vec::new();
        d.hep(arrived, "127.0.0.9".parse().unwrap(), &hep::build(a, b, wire, 17, 1, None, SIP), &mut |m| {
            times.push(m.ts)
        });
        assert_eq!(times, vec![wire]);
    }
}
