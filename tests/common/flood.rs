//! A hostile-traffic generator: scanners spraying REGISTER and INVITE for random users from many
//! source addresses, merged in time order with real lab captures. Written to a pcap file only
//! (no packet is sent anywhere). Shared by `tests/flood.rs` and `benches/flood.rs`.
#![allow(dead_code)]
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use std::path::Path;
use std::time::Duration;

pub const SERVER: [u8; 4] = [127, 0, 0, 10];

/// A small deterministic generator (no dependency; the flood only needs to look random).
pub struct Lcg(pub u64);
impl Lcg {
    pub fn next(&mut self) -> u32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

fn checksum(h: &mut [u8]) {
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// An Ethernet/IPv4/UDP frame carrying `payload`.
pub fn udp_frame(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, id: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    checksum(&mut ip);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn request(method: &str, user: &str, ip: [u8; 4], call_id: &str, auth: bool) -> String {
    let [a, b, c, d] = ip;
    let ruri = if method == "REGISTER" { "sip:lab.example".to_string() } else { format!("sip:{user}@lab.example") };
    let cred = if auth {
        format!(
            "Authorization: Digest username=\"{user}\", realm=\"lab.example\", nonce=\"x\", uri=\"{ruri}\", response=\"00\"\r\n"
        )
    } else {
        String::new()
    };
    format!(
        "{method} {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {a}.{b}.{c}.{d}:5060;branch=z9hG4bK{call_id}\r\nFrom: \"friendly-scanner\" <sip:{user}@lab.example>;tag={call_id}\r\nTo: <sip:{user}@lab.example>\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\nContact: <sip:{user}@{a}.{b}.{c}.{d}:5060>\r\n{cred}User-Agent: friendly-scanner\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
}

fn response(code: &str, method: &str, user: &str, ip: [u8; 4], call_id: &str) -> String {
    let [a, b, c, d] = ip;
    let hdr = if code.starts_with("401") { "WWW-Authenticate" } else { "Proxy-Authenticate" };
    format!(
        "SIP/2.0 {code}\r\nVia: SIP/2.0/UDP {a}.{b}.{c}.{d}:5060;branch=z9hG4bK{call_id}\r\nFrom: \"friendly-scanner\" <sip:{user}@lab.example>;tag={call_id}\r\nTo: <sip:{user}@lab.example>;tag=srv{call_id}\r\nCall-ID: {call_id}\r\nCSeq: 1 {method}\r\n{hdr}: Digest realm=\"lab.example\", nonce=\"x\"\r\nContent-Length: 0\r\n\r\n"
    )
}

pub struct Frame {
    pub ts: i64,
    pub data: Vec<u8>,
}

/// `attempts` scanner attempts spread evenly over `[start, start + span)`: a quarter each
/// REGISTER -> 401, REGISTER with (wrong) credentials -> 403, INVITE -> 407, and INVITE left
/// unanswered, each for a new random user from a random 10.x.y.z source.
pub fn flood(attempts: usize, start: i64, span: i64, seed: u64) -> Vec<Frame> {
    let mut rng = Lcg(seed);
    let mut out = Vec::with_capacity(attempts * 2);
    for i in 0..attempts {
        let ts = start + span * i as i64 / attempts as i64;
        let src = [10, (rng.next() % 256) as u8, (rng.next() % 256) as u8, (rng.next() % 254 + 1) as u8];
        let user = format!("{}", 100_000 + rng.next() % 900_000);
        let call_id = format!("flood{i}x{}", rng.next());
        let id = (i % 65_536) as u16;
        let (method, auth, reply) = match i % 4 {
            0 => ("REGISTER", false, Some("401 Unauthorized")),
            1 => ("REGISTER", true, Some("403 Forbidden")),
            2 => ("INVITE", false, Some("407 Proxy Authentication Required")),
            _ => ("INVITE", false, None),
        };
        let req = request(method, &user, src, &call_id, auth);
        out.push(Frame { ts, data: udp_frame(src, 5060, SERVER, 5060, id, req.as_bytes()) });
        if let Some(code) = reply {
            let resp = response(code, method, &user, src, &call_id);
            out.push(Frame { ts: ts + 150, data: udp_frame(SERVER, 5060, src, 5060, id ^ 0x8000, resp.as_bytes()) });
        }
    }
    out
}

/// `n` INVITEs left unanswered (no response at all), each from a new random user and 10.x source,
/// spread evenly over `[start, start + span)`, generated as they are written.
pub fn unanswered_invites(n: usize, start: i64, span: i64, seed: u64) -> impl Iterator<Item = Frame> {
    let mut rng = Lcg(seed);
    (0..n).map(move |i| {
        let ts = start + span * i as i64 / n as i64;
        let src = [10, (rng.next() % 256) as u8, (rng.next() % 256) as u8, (rng.next() % 254 + 1) as u8];
        let user = format!("{}", 100_000 + rng.next() % 900_000);
        let call_id = format!("inv{i}x{}", rng.next());
        let req = request("INVITE", &user, src, &call_id, false);
        Frame { ts, data: udp_frame(src, 5060, SERVER, 5060, (i % 65_536) as u16, req.as_bytes()) }
    })
}

/// Writes `frames` (any order) merged by time with a generated stream already in time order.
pub fn write_merged(path: &Path, mut frames: Vec<Frame>, stream: impl Iterator<Item = Frame>) {
    frames.sort_by_key(|f| f.ts);
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(std::fs::File::create(path).unwrap()), header).unwrap();
    let mut put = |f: &Frame| {
        w.write_packet(&PcapPacket::new(Duration::from_micros(f.ts as u64), f.data.len() as u32, &f.data)).unwrap();
    };
    let mut real = frames.iter().peekable();
    for g in stream {
        while let Some(r) = real.next_if(|r| r.ts <= g.ts) {
            put(r);
        }
        put(&g);
    }
    for r in real {
        put(r);
    }
}

/// Merges frame lists by time and writes an Ethernet pcap.
pub fn write(path: &Path, mut frames: Vec<Frame>) {
    frames.sort_by_key(|f| f.ts);
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let mut w = PcapWriter::with_header(std::io::BufWriter::new(std::fs::File::create(path).unwrap()), header).unwrap();
    for f in &frames {
        w.write_packet(&PcapPacket::new(Duration::from_micros(f.ts as u64), f.data.len() as u32, &f.data)).unwrap();
    }
}

/// The frames of a capture file.
pub fn read(path: &Path) -> Vec<Frame> {
    let mut v = Vec::new();
    siptap::capture::file::read_file(path, |f| v.push(Frame { ts: f.ts, data: f.data.to_vec() })).unwrap();
    v
}

/// A copy of frames (the generator's frames are consumed by `write`).
pub fn read_all(frames: &[Frame]) -> Vec<Frame> {
    frames.iter().map(|f| Frame { ts: f.ts, data: f.data.clone() }).collect()
}
