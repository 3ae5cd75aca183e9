//! Crafted attack traffic, shared by `tests/hostile.rs` and `benches/hostile.rs`: each builder
//! writes the frames an attacker would put on the wire (nothing is sent anywhere).
#![allow(dead_code)]
use super::flood::{Frame, Lcg, SERVER, udp_frame};

/// A HEP v3 packet carrying `sip` from `src` to `dst` at `ts` (µs).
pub fn hep3(src: ([u8; 4], u16), dst: ([u8; 4], u16), ts: i64, sip: &str) -> Vec<u8> {
    let mut chunks = Vec::new();
    let mut chunk = |ty: u16, v: &[u8]| {
        chunks.extend_from_slice(&0u16.to_be_bytes());
        chunks.extend_from_slice(&ty.to_be_bytes());
        chunks.extend_from_slice(&((6 + v.len()) as u16).to_be_bytes());
        chunks.extend_from_slice(v);
    };
    chunk(1, &[2]);
    chunk(2, &[17]);
    chunk(3, &src.0);
    chunk(4, &dst.0);
    chunk(7, &src.1.to_be_bytes());
    chunk(8, &dst.1.to_be_bytes());
    chunk(9, &((ts / 1_000_000) as u32).to_be_bytes());
    chunk(10, &((ts % 1_000_000) as u32).to_be_bytes());
    chunk(11, &[1]);
    chunk(12, &2001u32.to_be_bytes());
    chunk(15, sip.as_bytes());
    let mut p = b"HEP3".to_vec();
    p.extend_from_slice(&((6 + chunks.len()) as u16).to_be_bytes());
    p.extend_from_slice(&chunks);
    p
}

/// A made-up registration and answered call of `victim@lab.example`, as HEP sent by an internet
/// host to the SIP server's address, port 9060 (nothing needs to listen there: capture sees it).
pub fn hep_injection(start: i64) -> Vec<Frame> {
    let (client, server) = (([10, 66, 0, 1], 5060), ([127, 0, 0, 10], 5060));
    let hdr = |cseq: &str, cid: &str, to_tag: &str| {
        format!(
            "From: <sip:victim@lab.example>;tag=f1\r\nTo: <sip:bob@lab.example>{to_tag}\r\nCall-ID: {cid}\r\nCSeq: {cseq}\r\nContact: <sip:victim@10.66.0.1:5060>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    type Endpoint = ([u8; 4], u16);
    let msgs: Vec<(Endpoint, Endpoint, String)> = vec![
        (
            client,
            server,
            format!(
                "REGISTER sip:lab.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}",
                hdr("1 REGISTER", "inj-reg", "").replace("bob", "victim")
            ),
        ),
        (
            server,
            client,
            format!(
                "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}",
                hdr("1 REGISTER", "inj-reg", ";tag=s").replace("bob", "victim")
            ),
        ),
        (
            client,
            server,
            format!(
                "INVITE sip:bob@lab.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}",
                hdr("1 INVITE", "inj-call", "")
            ),
        ),
        (
            server,
            client,
            format!("SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}", hdr("1 INVITE", "inj-call", ";tag=t")),
        ),
        (
            server,
            client,
            format!("SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}", hdr("1 INVITE", "inj-call", ";tag=t")),
        ),
        (
            client,
            server,
            format!(
                "BYE sip:bob@lab.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.66.0.1\r\n{}",
                hdr("2 BYE", "inj-call", ";tag=t")
            ),
        ),
    ];
    msgs.into_iter()
        .enumerate()
        .map(|(i, (s, d, m))| {
            let ts = start + i as i64 * 100_000;
            let pkt = hep3(s, d, ts, &m);
            Frame { ts, data: udp_frame([203, 0, 113, 9], 40_000, SERVER, 9060, i as u16, &pkt) }
        })
        .collect()
}

/// An Ethernet/IPv4/TCP frame to the server's port 5060.
pub fn tcp_frame(src: [u8; 4], sport: u16, flags: u8, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 20 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&SERVER);
    f.extend_from_slice(&ip);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&5060u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// An IPv4 fragment (UDP inside) from `src` with IP id `id`.
pub fn fragment(src: [u8; 4], id: u16, offset_units: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 12];
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let flags = (if more { 0x2000 } else { 0 }) | offset_units;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[4..6].copy_from_slice(&id.to_be_bytes());
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&SERVER);
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// `n` SYNs to the server's port 5060 from random sources, over `[start, end)`.
pub fn syn_flood(n: u32, start: i64, end: i64, seed: u64) -> Vec<Frame> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| {
            let src = [10, (rng.next() % 256) as u8, (rng.next() % 256) as u8, (rng.next() % 254 + 1) as u8];
            let ts = start + (end - start) * i64::from(i) / i64::from(n);
            Frame { ts, data: tcp_frame(src, 40_000 + (i % 20_000) as u16, 0x02, rng.next(), &[]) }
        })
        .collect()
}

/// `n` one-byte fragments, 1,000 per datagram id, at random offsets: none completes.
pub fn tiny_fragments(n: u32, start: i64, end: i64, seed: u64) -> Vec<Frame> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| {
            let ts = start + (end - start) * i64::from(i) / i64::from(n);
            let off = (rng.next() % 8000) as u16;
            Frame { ts, data: fragment([10, 9, 9, 9], (i / 1000) as u16, off, true, b"x") }
        })
        .collect()
}

/// `n` fragments without a payload.
pub fn empty_fragments(n: u32, start: i64, end: i64) -> Vec<Frame> {
    (0..n)
        .map(|i| {
            let ts = start + (end - start) * i64::from(i) / i64::from(n);
            Frame { ts, data: fragment([10, 8, 8, 8], 7, (i % 8000) as u16, true, &[]) }
        })
        .collect()
}

/// `n` REGISTERs nobody answers, each listing 100 contacts (about 1.4 KB).
pub fn many_contact_registers(n: u32, start: i64, seed: u64) -> Vec<Frame> {
    let mut rng = Lcg(seed);
    (0..n)
        .map(|i| {
            let src = [10, (rng.next() % 256) as u8, (rng.next() % 256) as u8, 1];
            let contacts: Vec<String> =
                (0..100).map(|c| format!("<sip:u{i}@10.{}.{}.1:{}>", c % 250, i % 250, 5000 + c)).collect();
            let msg = format!(
                "REGISTER sip:lab.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1\r\nFrom: <sip:u{i}@lab.example>;tag=a\r\nTo: <sip:u{i}@lab.example>\r\nCall-ID: reg{i}\r\nCSeq: 1 REGISTER\r\nContact: {}\r\nContent-Length: 0\r\n\r\n",
                contacts.join(", ")
            );
            Frame { ts: start + i64::from(i) * 9, data: udp_frame(src, 5060, SERVER, 5060, i as u16, msg.as_bytes()) }
        })
        .collect()
}

/// `streams` TCP streams, each an INVITE announcing 300 KB and sending `segments` body
/// segments of 1,400 bytes, all within about 0.9 s.
pub fn big_tcp_streams(streams: u32, segments: i64, start: i64) -> Vec<Frame> {
    let head =
        b"INVITE sip:bob@lab.example SIP/2.0\r\nCall-ID: big\r\nCSeq: 1 INVITE\r\nContent-Length: 300000\r\n\r\n";
    let body = vec![b'v'; 1400];
    let mut frames = Vec::new();
    for s in 0..streams {
        let src = [10, 20, (s >> 8) as u8, s as u8];
        let mut seq = 1000u32;
        let t0 = start + i64::from(s) * 180;
        frames.push(Frame { ts: t0, data: tcp_frame(src, 40_000, 0x18, seq, head) });
        seq += head.len() as u32;
        for k in 0..segments {
            frames.push(Frame { ts: t0 + k + 1, data: tcp_frame(src, 40_000, 0x18, seq, &body) });
            seq += body.len() as u32;
        }
    }
    frames
}
