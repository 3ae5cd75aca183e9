//! The same calls in every framing give the same events. Each lab capture (real sipp + Kamailio
//! traffic) is re-framed the way messy networks and capture setups deliver it, by the code below
//! (kept here so anyone can see and rerun exactly what was done), then replayed and compared with
//! the capture's hand-checked expected events.
mod common;
use common::*;
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use siptap::capture::file::read_file;
use std::path::{Path, PathBuf};
use std::time::Duration;

struct F {
    ts: i64,
    data: Vec<u8>,
}

fn load(p: &Path) -> Vec<F> {
    let mut v = Vec::new();
    read_file(p, |f| {
        assert_eq!(f.linktype, 1, "lab captures are Ethernet");
        v.push(F { ts: f.ts, data: f.data.to_vec() })
    })
    .unwrap();
    v
}

fn save(frames: &[F], linktype: DataLink, path: &Path) {
    let header = PcapHeader { datalink: linktype, ..Default::default() };
    let mut w = PcapWriter::with_header(std::fs::File::create(path).unwrap(), header).unwrap();
    for f in frames {
        let ts = Duration::from_micros(f.ts as u64);
        w.write_packet(&PcapPacket::new(ts, f.data.len() as u32, &f.data)).unwrap();
    }
}

fn ipv4_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let mut sum: u32 = h.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    h[10..12].copy_from_slice(&c.to_be_bytes());
}

/// An IPv4 packet inside an Ethernet frame: (eth header, ip header, ip payload).
fn split_ipv4(frame: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([frame[16], frame[17]]));
    Some((&frame[..14], &frame[14..14 + ihl], &frame[14 + ihl..14 + total]))
}

fn ipv4_frame(eth: &[u8], ip: &[u8], payload: &[u8], flags_off: u16) -> Vec<u8> {
    let mut h = ip.to_vec();
    let total = (h.len() + payload.len()) as u16;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[6..8].copy_from_slice(&flags_off.to_be_bytes());
    ipv4_checksum(&mut h);
    [eth, &h, payload].concat()
}

/// Every UDP datagram over 400 bytes as IPv4 fragments of 256 bytes, sent last first, with the
/// middle one sent twice and an overlapping copy of the first.
fn ip_fragments(frames: Vec<F>) -> Vec<F> {
    let mut out = Vec::new();
    for f in frames {
        match split_ipv4(&f.data) {
            Some((eth, ip, payload)) if ip[9] == 17 && payload.len() > 400 => {
                let mut frags: Vec<Vec<u8>> = payload
                    .chunks(256)
                    .enumerate()
                    .map(|(i, c)| {
                        let more = (i + 1) * 256 < payload.len();
                        ipv4_frame(eth, ip, c, ((i * 256 / 8) as u16) | if more { 0x2000 } else { 0 })
                    })
                    .collect();
                let mid = frags[frags.len() / 2].clone();
                frags.push(mid);
                frags.push(ipv4_frame(eth, ip, &payload[..64], 0x2000));
                frags.reverse();
                out.extend(frags.into_iter().map(|data| F { ts: f.ts, data }));
            }
            _ => out.push(f),
        }
    }
    out
}

/// Every TCP segment's payload cut into 50-byte segments, each pair sent in swapped order, and
/// the first one retransmitted at the end (as a new IP packet).
fn tcp_segments(frames: Vec<F>) -> Vec<F> {
    let mut out = Vec::new();
    for f in frames {
        let Some((eth, ip, seg)) = split_ipv4(&f.data) else {
            out.push(f);
            continue;
        };
        let doff = seg.get(12).map(|b| usize::from(b >> 4) * 4).unwrap_or(0);
        if ip[9] != 6 || seg.len() <= doff + 50 {
            out.push(f);
            continue;
        }
        let (hdr, data) = seg.split_at(doff);
        let seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
        let mut segs: Vec<Vec<u8>> = data
            .chunks(50)
            .enumerate()
            .map(|(i, c)| {
                let mut h = hdr.to_vec();
                h[4..8].copy_from_slice(&seq.wrapping_add((i * 50) as u32).to_be_bytes());
                ipv4_frame(eth, ip, &[&h[..], c].concat(), 0x4000)
            })
            .collect();
        for pair in segs.chunks_mut(2) {
            pair.reverse();
        }
        // a retransmission is a new IP packet (new IP ID), not a copy of the frame
        let mut again = segs[segs.len().min(2) - 1].clone();
        again[18] ^= 0x55;
        ipv4_checksum(&mut again[14..34]);
        segs.push(again);
        out.extend(segs.into_iter().map(|data| F { ts: f.ts, data }));
    }
    out
}

/// Every frame twice, 30 µs apart, as two mirror ports deliver it.
fn mirrored(frames: Vec<F>) -> Vec<F> {
    frames.into_iter().flat_map(|f| [F { ts: f.ts, data: f.data.clone() }, F { ts: f.ts + 30, data: f.data }]).collect()
}

/// Every IPv4 packet inside an outer IPv4 header (IP-in-IP, protocol 4), on raw-IP link type.
fn ip_in_ip(frames: Vec<F>) -> Vec<F> {
    frames
        .into_iter()
        .filter_map(|f| {
            let (_, ip, payload) = split_ipv4(&f.data)?;
            let inner = [ip, payload].concat();
            let mut outer = vec![0x45, 0, 0, 0, 0x12, 0x34, 0, 0, 64, 4, 0, 0, 10, 9, 9, 1, 10, 9, 9, 2];
            let total = (outer.len() + inner.len()) as u16;
            outer[2..4].copy_from_slice(&total.to_be_bytes());
            ipv4_checksum(&mut outer);
            Some(F { ts: f.ts, data: [outer, inner].concat() })
        })
        .collect()
}

/// Every IPv4 packet inside an outer IPv6 header (next header 4: IPv4-in-IPv6), on raw IP.
fn ipv4_in_ipv6(frames: Vec<F>) -> Vec<F> {
    frames
        .into_iter()
        .filter_map(|f| {
            let (_, ip, payload) = split_ipv4(&f.data)?;
            let inner = [ip, payload].concat();
            let mut outer = vec![0x60, 0, 0, 0];
            outer.extend_from_slice(&(inner.len() as u16).to_be_bytes());
            outer.extend_from_slice(&[4, 64]);
            outer.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
            outer.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
            Some(F { ts: f.ts, data: [outer, inner].concat() })
        })
        .collect()
}

/// Every Ethernet frame in VXLAN (UDP 4789) inside an outer Ethernet + 802.1Q + IPv4.
fn vxlan_vlan(frames: Vec<F>) -> Vec<F> {
    frames
        .into_iter()
        .map(|f| {
            let vx = [&[0x08u8, 0, 0, 0, 0, 0, 42, 0][..], &f.data].concat();
            let udp_len = (8 + vx.len()) as u16;
            let mut udp = vec![0x12, 0x34, 0x12, 0xb5, 0, 0, 0, 0];
            udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
            let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 8, 8, 1, 10, 8, 8, 2];
            ip[2..4].copy_from_slice(&(20 + udp_len).to_be_bytes());
            ipv4_checksum(&mut ip);
            let eth = [&[2u8, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0x00, 0x07, 0x08, 0x00][..]].concat();
            F { ts: f.ts, data: [eth, ip, udp, vx].concat() }
        })
        .collect()
}

fn lab_names() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(root().join("fixtures/lab/expected"))
        .unwrap()
        .map(|e| e.unwrap().path().file_stem().unwrap().to_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

/// Replays every lab capture after `reframe` and compares with its expected events; returns the
/// summed counters of interest.
fn same_events(label: &str, linktype: DataLink, reframe: fn(Vec<F>) -> Vec<F>, counters: &[&str]) -> Vec<u64> {
    let dir = tempfile::tempdir().unwrap();
    let config = root().join("config.toml.example");
    let mut sums = vec![0; counters.len()];
    for name in lab_names() {
        let original: PathBuf = root().join("fixtures/lab/captures").join(format!("{name}.pcap"));
        let path = dir.path().join(format!("{name}.{label}.pcap"));
        save(&reframe(load(&original)), linktype, &path);
        let want =
            parse_lines(&std::fs::read_to_string(root().join(format!("fixtures/lab/expected/{name}.jsonl"))).unwrap());
        let out = siptap(&["replay", "--stats", "--config", config.to_str().unwrap(), path.to_str().unwrap()]);
        assert!(out.status.success(), "{label} {name}: {}", String::from_utf8_lossy(&out.stderr));
        assert_events(&format!("{name} ({label})"), &parse_lines(&String::from_utf8(out.stdout).unwrap()), &want);
        let err = String::from_utf8(out.stderr).unwrap();
        for (i, c) in counters.iter().enumerate() {
            sums[i] += stat_of(&err, c);
        }
    }
    sums
}

#[test]
fn ip_fragments_out_of_order_duplicated_overlapping() {
    let s = same_events("ipfrag", DataLink::ETHERNET, ip_fragments, &["ip_reassembled", "ip_fragments_timed_out"]);
    assert!(s[0] >= 100, "only {} datagrams were reassembled", s[0]);
    // the leftover duplicate fragments start datagrams that never complete; none is SIP
    assert_eq!(s[1], 0);
}

#[test]
fn tcp_resegmented_reordered_retransmitted() {
    let s = same_events(
        "tcpseg",
        DataLink::ETHERNET,
        tcp_segments,
        &["tcp_out_of_order", "tcp_retransmitted", "tcp_messages"],
    );
    assert!(s[0] > 0 && s[1] > 0, "out of order {}, retransmitted {}", s[0], s[1]);
    // call_tcp: 20 SIP messages, of which bob's REGISTER (4) and his leg (6) are UDP;
    // push_foreground: alice's app registers over TCP twice (REGISTER, 401, REGISTER, 200 each)
    assert_eq!(s[2], (20 - 4 - 6) + 2 * 4, "alice's messages over TCP");
}

#[test]
fn every_frame_seen_twice_by_two_mirror_ports() {
    let s = same_events("mirror", DataLink::ETHERNET, mirrored, &["frames", "frames_duplicate"]);
    assert_eq!(s[1] * 2, s[0], "every second frame is a duplicate");
}

#[test]
fn ip_in_ip_on_raw_ip_link_type() {
    let s = same_events("ipip", DataLink::RAW, ip_in_ip, &["frames_tunnelled"]);
    assert!(s[0] > 200);
}

#[test]
fn ipv4_in_ipv6_tunnel() {
    let s = same_events("ip4in6", DataLink::RAW, ipv4_in_ipv6, &["frames_tunnelled"]);
    assert!(s[0] > 200);
}

#[test]
fn vxlan_inside_vlan() {
    let s = same_events("vxlan", DataLink::ETHERNET, vxlan_vlan, &["frames_tunnelled"]);
    assert!(s[0] > 200);
}
