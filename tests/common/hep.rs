//! Feeding a lab capture to running siptaps as HEP v3 over UDP, as Kamailio's siptrace would.
#![allow(dead_code)]
use super::{attacks, flood};
use std::path::Path;
use std::time::Duration;

/// One captured UDP SIP message as a HEP packet: its IPv4 source and destination, and the packet.
pub struct HepPacket {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub data: Vec<u8>,
}

/// The UDP SIP messages of a lab capture as HEP packets, in the capture's order and spacing of
/// timestamps, stamped from now (so that the events are fresh enough to deliver), after whatever
/// was stamped before (the daemon's clock ticks with the wall clock: a past stamp would let the
/// transaction timers fire between messages).
pub fn stamped(capture: &Path) -> Vec<HepPacket> {
    let frames = flood::read(capture);
    let base = frames.first().map_or(0, |f| f.ts);
    static LAST: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);
    let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let now = wall.max(LAST.load(std::sync::atomic::Ordering::Relaxed) + 1_000);
    let mut out = Vec::new();
    for f in &frames {
        let d = &f.data;
        // Ethernet, IPv4, UDP (what tcpdump wrote on the lab's loopback)
        if d.len() < 42 || d[12..14] != [8, 0] || d[23] != 17 {
            continue;
        }
        let ihl = usize::from(d[14] & 15) * 4;
        let udp = 14 + ihl;
        let ip = |o: usize| [d[o], d[o + 1], d[o + 2], d[o + 3]];
        let port = |o: usize| u16::from_be_bytes([d[o], d[o + 1]]);
        let sip = String::from_utf8_lossy(&d[udp + 8..]);
        let pkt = attacks::hep3((ip(26), port(udp)), (ip(30), port(udp + 2)), now + (f.ts - base), &sip);
        LAST.fetch_max(now + (f.ts - base), std::sync::atomic::Ordering::Relaxed);
        out.push(HepPacket { src: ip(26), dst: ip(30), data: pkt });
    }
    out
}

/// Sends each packet to the HEP listeners `to` names for it (on 127.0.0.1), 2 ms apart.
pub fn send(packets: &[HepPacket], to: impl Fn(&HepPacket) -> Vec<u16>) -> usize {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for p in packets {
        for port in to(p) {
            sock.send_to(&p.data, ("127.0.0.1", port)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    packets.len()
}

/// Sends a lab capture to one HEP listener; returns how many messages went.
pub fn send_as_hep(capture: &Path, hep: u16) -> usize {
    send(&stamped(capture), |_| vec![hep])
}
