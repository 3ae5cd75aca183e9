//! A deterministic generator of large, realistic SIP captures, for the tests and benchmarks that
//! need more traffic than the lab can record (restart-safe state replayed in parts, throughput,
//! soak). Same seed, same bytes.
//!
//! The messages follow the lab's real flows (`fixtures/lab`: sipp through Kamailio): users
//! register with a 401 challenge and refresh on their Call-ID (some reboot: a new Call-ID); calls
//! go through a record-routing proxy at 127.0.0.10:5060 with a 407 challenge, the proxy's own
//! INVITE to the callee's contact, 100/180, and an outcome: answered and hung up by either side,
//! busy, cancelled, not found, unanswered (the proxy's 408), some with the INVITE retransmitted,
//! some still open at the end. A share of the users talk over TCP (one connection each, as
//! Kamailio reuses the registration's). A scanner sprays INVITEs that get 407 or 503.
use super::Rng;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::Ipv4Addr;

pub const SERVER: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 10);
pub const DOMAIN: &str = "lab.example";

#[derive(Debug, Clone)]
pub struct GenSpec {
    pub seed: u64,
    pub users: usize,
    pub calls: usize,
    /// The timeline: registrations during the first tenth, calls over the rest.
    pub duration_secs: u64,
    /// Users that talk over TCP, in percent.
    pub tcp_percent: u32,
    pub scanner_attempts: usize,
    /// Answered calls still going at the end, in percent.
    pub open_percent: u32,
    /// Registrations are refreshed this often (Expires is twice that).
    pub refresh_secs: u64,
    /// Refreshes that come from a rebooted app (a new Call-ID), in percent.
    pub reboot_percent: u32,
    /// Calls whose authenticated INVITE is retransmitted (the proxy is slow), in percent.
    pub retransmit_percent: u32,
    /// Users that stop refreshing after their first registration and come back (same Call-ID)
    /// once it has expired, in percent.
    pub away_percent: u32,
    /// The capture's first second (Unix time).
    pub start_unix: i64,
}

impl Default for GenSpec {
    fn default() -> Self {
        GenSpec {
            seed: 1,
            users: 1000,
            calls: 2000,
            duration_secs: 3600,
            tcp_percent: 10,
            scanner_attempts: 0,
            open_percent: 5,
            refresh_secs: 1800,
            reboot_percent: 5,
            retransmit_percent: 3,
            away_percent: 5,
            start_unix: 1_795_000_000,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct GenStats {
    pub frames: u64,
    pub sip_messages: u64,
    pub bytes: u64,
    pub registrations: u64,
    pub calls: u64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Ep {
    ip: Ipv4Addr,
    port: u16,
}

#[derive(Clone, Copy, PartialEq)]
enum Tr {
    Udp,
    Tcp,
}

struct User {
    name: String,
    ep: Ep,
    tr: Tr,
    reg_call_id: String,
    reg_cseq: u32,
}

struct Packet {
    src: Ep,
    dst: Ep,
    tr: Tr,
    data: Vec<u8>,
}

/// What happens when, before its packets are made.
#[derive(Clone, Copy)]
enum Action {
    Register { user: usize, reboot: bool },
    Call { caller: usize, callee: usize, outcome: Outcome, retransmit: bool, talk_ms: i64, ring_ms: i64 },
    Scan { n: u64 },
}

#[derive(Clone, Copy, PartialEq)]
enum Outcome {
    CallerBye,
    CalleeBye,
    Open,
    Busy,
    Cancel,
    NotFound,
    NoAnswer,
}

struct Gen<'a> {
    users: Vec<User>,
    heap: BinaryHeap<Reverse<(i64, u64)>>,
    packets: HashMap<u64, Packet>,
    seq: u64,
    ids: u64,
    tcp_seq: HashMap<(Ep, Ep), u32>,
    ip_id: u16,
    stats: GenStats,
    out: &'a mut dyn FnMut(i64, &[u8]),
}

const SDP: &str = "v=0\r\no=user1 53655765 2353687637 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";

fn server() -> Ep {
    Ep { ip: SERVER, port: 5060 }
}

fn tr_name(t: Tr) -> &'static str {
    match t {
        Tr::Udp => "UDP",
        Tr::Tcp => "TCP",
    }
}

impl Gen<'_> {
    fn id(&mut self) -> u64 {
        self.ids += 1;
        self.ids
    }

    fn send(&mut self, ts: i64, src: Ep, dst: Ep, tr: Tr, msg: String) {
        self.seq += 1;
        self.heap.push(Reverse((ts, self.seq)));
        self.packets.insert(self.seq, Packet { src, dst, tr, data: msg.into_bytes() });
    }

    /// Writes every packet due before `until`, in time order.
    fn flush(&mut self, until: i64) {
        while let Some(&Reverse((ts, seq))) = self.heap.peek() {
            if ts >= until {
                break;
            }
            self.heap.pop();
            let p = self.packets.remove(&seq).expect("queued");
            let frame = self.frame(&p);
            self.stats.frames += 1;
            self.stats.sip_messages += 1;
            self.stats.bytes += frame.len() as u64;
            (self.out)(ts, &frame);
        }
    }

    fn frame(&mut self, p: &Packet) -> Vec<u8> {
        let mut f = Vec::with_capacity(p.data.len() + 60);
        f.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let l4 = match p.tr {
            Tr::Udp => 8,
            Tr::Tcp => 20,
        };
        let total = (20 + l4 + p.data.len()) as u16;
        self.ip_id = self.ip_id.wrapping_add(1);
        let proto = if p.tr == Tr::Udp { 17 } else { 6 };
        let mut ip = [0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        ip[4..6].copy_from_slice(&self.ip_id.to_be_bytes());
        ip[12..16].copy_from_slice(&p.src.ip.octets());
        ip[16..20].copy_from_slice(&p.dst.ip.octets());
        let mut sum: u32 = ip.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&p.src.port.to_be_bytes());
        f.extend_from_slice(&p.dst.port.to_be_bytes());
        match p.tr {
            Tr::Udp => {
                f.extend_from_slice(&((8 + p.data.len()) as u16).to_be_bytes());
                f.extend_from_slice(&[0, 0]);
            }
            Tr::Tcp => {
                let seq = self.tcp_seq.entry((p.src, p.dst)).or_insert(1000);
                f.extend_from_slice(&seq.to_be_bytes());
                *seq = seq.wrapping_add(p.data.len() as u32);
                f.extend_from_slice(&[0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0]);
            }
        }
        f.extend_from_slice(&p.data);
        f
    }

    fn register(&mut self, ts: i64, u: usize, reboot: bool, expires: u64) {
        let n = self.id();
        let user = &mut self.users[u];
        if reboot || user.reg_call_id.is_empty() {
            user.reg_call_id = format!("reg{n}-{}@{}", user.name, user.ep.ip);
            user.reg_cseq = 0;
        }
        let (name, ep, tr, cid) = (user.name.clone(), user.ep, user.tr, user.reg_call_id.clone());
        user.reg_cseq += 2;
        let c1 = user.reg_cseq - 1;
        let t = tr_name(tr);
        let req = |cseq: u32, auth: &str| {
            format!(
                "REGISTER sip:{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/{t} {ip}:{port};branch=z9hG4bK-r{n}-{cseq}\r\nFrom: <sip:{name}@{DOMAIN}>;tag=rt{n}\r\nTo: <sip:{name}@{DOMAIN}>\r\nCall-ID: {cid}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{name}@{ip}:{port};transport={tl}>\r\n{auth}Max-Forwards: 70\r\nUser-Agent: gen-softphone/1.0\r\nExpires: {expires}\r\nContent-Length: 0\r\n\r\n",
                ip = ep.ip,
                port = ep.port,
                tl = t.to_ascii_lowercase()
            )
        };
        let resp = |cseq: u32, status: &str, extra: &str| {
            format!(
                "SIP/2.0 {status}\r\nVia: SIP/2.0/{t} {ip}:{port};branch=z9hG4bK-r{n}-{cseq};rport={port};received={ip}\r\nFrom: <sip:{name}@{DOMAIN}>;tag=rt{n}\r\nTo: <sip:{name}@{DOMAIN}>;tag=srv.r{n}\r\nCall-ID: {cid}\r\nCSeq: {cseq} REGISTER\r\n{extra}Server: kamailio (5.6.3 (x86_64/linux))\r\nContent-Length: 0\r\n\r\n",
                ip = ep.ip,
                port = ep.port,
            )
        };
        let s = server();
        self.send(ts, ep, s, tr, req(c1, ""));
        self.send(
            ts + 300,
            s,
            ep,
            tr,
            resp(c1, "401 Unauthorized", &format!("WWW-Authenticate: Digest realm=\"{DOMAIN}\", nonce=\"n{n}\"\r\n")),
        );
        let auth = format!(
            "Authorization: Digest username=\"{name}\", realm=\"{DOMAIN}\", uri=\"sip:{DOMAIN}\", nonce=\"n{n}\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5\r\n"
        );
        self.send(ts + 600, ep, s, tr, req(c1 + 1, &auth));
        let contact = format!(
            "Contact: <sip:{name}@{ip}:{port};transport={tl}>;expires={expires}\r\n",
            ip = ep.ip,
            port = ep.port,
            tl = t.to_ascii_lowercase()
        );
        self.send(ts + 900, s, ep, tr, resp(c1 + 1, "200 OK", &contact));
        self.stats.registrations += 1;
    }

    #[allow(clippy::too_many_arguments)]
    fn call(
        &mut self,
        ts: i64,
        caller: usize,
        callee: usize,
        outcome: Outcome,
        retransmit: bool,
        talk_ms: i64,
        ring_ms: i64,
        end: i64,
    ) {
        let n = self.id();
        self.stats.calls += 1;
        let s = server();
        let (a_name, a, atr) = (self.users[caller].name.clone(), self.users[caller].ep, self.users[caller].tr);
        let (b_name, b, btr) = (self.users[callee].name.clone(), self.users[callee].ep, self.users[callee].tr);
        let b_name = if outcome == Outcome::NotFound { format!("nobody{n}") } else { b_name };
        let (at, bt) = (tr_name(atr), tr_name(btr));
        let cid = format!("{n}-4242@{}", a.ip);
        let ftag = format!("{n}SIPpTag00");
        let ttag = format!("{n}SIPpTag01");
        let from = format!("From: <sip:{a_name}@{DOMAIN}>;tag={ftag}\r\n");
        let to = format!("To: <sip:{b_name}@{DOMAIN}>");
        let via_a = |cseq: u32| format!("Via: SIP/2.0/{at} {}:{};branch=z9hG4bK-{n}-{cseq}\r\n", a.ip, a.port);
        let via_s = |cseq: u32| format!("Via: SIP/2.0/{bt} {SERVER};branch=z9hG4bKsrv{n}.{cseq}\r\n");
        let rr = format!("Record-Route: <sip:{SERVER};lr=on;ftag={ftag}>\r\n");
        let a_contact = format!("Contact: <sip:{a_name}@{}:{};transport={at}>\r\n", a.ip, a.port);
        let b_contact = format!("Contact: <sip:{b_name}@{}:{};transport={bt}>\r\n", b.ip, b.port);
        let sdp = |m: &str| format!("{m}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}", SDP.len());
        let invite = |cseq: u32, auth: &str| {
            sdp(&format!(
                "INVITE sip:{b_name}@{DOMAIN} SIP/2.0\r\n{}{from}{to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} INVITE\r\n{a_contact}{auth}Max-Forwards: 70\r\nUser-Agent: gen-softphone/1.0\r\n",
                via_a(cseq)
            ))
        };
        // responses on alice's (the caller's) leg, from the proxy
        let to_a = |cseq: u32, status: &str, tag: bool, extra: &str, method: &str| {
            let tt = if tag { format!(";tag={ttag}") } else { String::new() };
            format!(
                "SIP/2.0 {status}\r\n{}{rr}{from}{to}{tt}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
                via_a(cseq)
            )
        };
        let ack_a = |cseq: u32| {
            format!(
                "ACK sip:{b_name}@{DOMAIN} SIP/2.0\r\n{}{from}{to};tag=srv{n}\r\nCall-ID: {cid}\r\nCSeq: {cseq} ACK\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
                via_a(cseq)
            )
        };
        let mut t = ts;
        self.send(t, a, s, atr, invite(1, ""));
        t += 400;
        let challenge = format!("Proxy-Authenticate: Digest realm=\"{DOMAIN}\", nonce=\"c{n}\"\r\n");
        self.send(
            t,
            s,
            a,
            atr,
            to_a(1, "407 Proxy Authentication Required", false, &challenge, "INVITE")
                .replace(&format!("{to}\r\n"), &format!("{to};tag=srv{n}\r\n")),
        );
        t += 100;
        self.send(t, a, s, atr, ack_a(1));
        t += 1000;
        let auth = format!(
            "Proxy-Authorization: Digest username=\"{a_name}\", realm=\"{DOMAIN}\", uri=\"sip:{b_name}@{DOMAIN}\", nonce=\"c{n}\", response=\"0123456789abcdef0123456789abcdef\", algorithm=MD5\r\n"
        );
        self.send(t, a, s, atr, invite(2, &auth));
        if retransmit {
            // the proxy is slow: the caller retransmits after T1
            self.send(t + 500_000, a, s, atr, invite(2, &auth));
            t += 900_000;
        }
        t += 400;
        self.send(
            t,
            s,
            a,
            atr,
            to_a(2, "100 trying -- your call is important to us", false, "Server: kamailio\r\n", "INVITE"),
        );
        if outcome == Outcome::NotFound {
            t += 200;
            self.send(
                t,
                s,
                a,
                atr,
                to_a(2, "404 Not Found", false, "", "INVITE")
                    .replace(&format!("{to}\r\n"), &format!("{to};tag=srv{n}\r\n")),
            );
            self.send(t + 150, a, s, atr, ack_a(2));
            return;
        }
        // the proxy's INVITE to the callee's contact
        t += 200;
        let b_invite = sdp(&format!(
            "INVITE sip:{b_name}@{}:{};transport={bt} SIP/2.0\r\n{rr}{}{}{from}{to}\r\nCall-ID: {cid}\r\nCSeq: 2 INVITE\r\n{a_contact}Max-Forwards: 69\r\nUser-Agent: gen-softphone/1.0\r\n",
            b.ip,
            b.port,
            via_s(2),
            via_a(2)
        ));
        self.send(t, s, b, btr, b_invite);
        // callee's responses: both Vias, then the proxy's copy to the caller
        let from_b = |cseq: u32, status: &str, extra: &str, method: &str| {
            format!(
                "SIP/2.0 {status}\r\n{}{}{rr}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\n{extra}Content-Length: 0\r\n\r\n",
                via_s(cseq),
                via_a(cseq)
            )
        };
        t += 300;
        self.send(t, b, s, btr, from_b(2, "180 Ringing", &b_contact, "INVITE"));
        t += 200;
        self.send(t, s, a, atr, to_a(2, "180 Ringing", true, &b_contact, "INVITE"));
        let ring_end = t + ring_ms * 1000;
        match outcome {
            Outcome::Busy => {
                t = ring_end;
                self.send(t, b, s, btr, from_b(2, "486 Busy Here", "", "INVITE"));
                self.send(t + 150, s, b, btr, format!("ACK sip:{b_name}@{}:{} SIP/2.0\r\n{}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: 2 ACK\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n", b.ip, b.port, via_s(2)));
                self.send(t + 300, s, a, atr, to_a(2, "486 Busy Here", true, "", "INVITE"));
                self.send(t + 450, a, s, atr, ack_a(2).replace(&format!("tag=srv{n}"), &format!("tag={ttag}")));
            }
            Outcome::Cancel | Outcome::NoAnswer => {
                t = ring_end;
                if outcome == Outcome::Cancel {
                    self.send(t, a, s, atr, format!("CANCEL sip:{b_name}@{DOMAIN} SIP/2.0\r\n{}{from}{to}\r\nCall-ID: {cid}\r\nCSeq: 2 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n", via_a(2)));
                    t += 200;
                    self.send(t, s, a, atr, to_a(2, "200 canceling", false, "", "CANCEL"));
                } else {
                    self.send(t, s, a, atr, to_a(2, "408 Request Timeout", true, "", "INVITE"));
                    self.send(t + 150, a, s, atr, ack_a(2).replace(&format!("tag=srv{n}"), &format!("tag={ttag}")));
                }
                t += 200;
                self.send(t, s, b, btr, format!("CANCEL sip:{b_name}@{}:{} SIP/2.0\r\n{}{from}{to}\r\nCall-ID: {cid}\r\nCSeq: 2 CANCEL\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n", b.ip, b.port, via_s(2)));
                t += 200;
                self.send(t, b, s, btr, format!("SIP/2.0 200 OK\r\n{}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: 2 CANCEL\r\nContent-Length: 0\r\n\r\n", via_s(2)));
                t += 100;
                self.send(t, b, s, btr, from_b(2, "487 Request Terminated", "", "INVITE"));
                self.send(t + 150, s, b, btr, format!("ACK sip:{b_name}@{}:{} SIP/2.0\r\n{}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: 2 ACK\r\nMax-Forwards: 69\r\nContent-Length: 0\r\n\r\n", b.ip, b.port, via_s(2)));
                if outcome == Outcome::Cancel {
                    self.send(t + 300, s, a, atr, to_a(2, "487 Request Terminated", true, "", "INVITE"));
                    self.send(t + 450, a, s, atr, ack_a(2).replace(&format!("tag=srv{n}"), &format!("tag={ttag}")));
                }
            }
            Outcome::CallerBye | Outcome::CalleeBye | Outcome::Open => {
                t = ring_end;
                self.send(t, b, s, btr, sdp(&format!("SIP/2.0 200 OK\r\n{}{}{rr}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: 2 INVITE\r\n{b_contact}", via_s(2), via_a(2))));
                t += 300;
                self.send(t, s, a, atr, sdp(&format!("SIP/2.0 200 OK\r\n{}{rr}{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: 2 INVITE\r\n{b_contact}", via_a(2))));
                // in-dialog requests follow the record-route: caller -> proxy -> callee contact
                let in_dialog = |method: &str, cseq: u32, caller_side: bool| -> (String, String) {
                    if caller_side {
                        let m = format!("{method} sip:{b_name}@{}:{};transport={bt} SIP/2.0\r\n", b.ip, b.port);
                        let hdr = format!(
                            "{from}{to};tag={ttag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                        );
                        (
                            format!("{m}{}Route: <sip:{SERVER};lr=on;ftag={ftag}>\r\n{hdr}", via_a(cseq)),
                            format!("{m}{}{}{hdr}", via_s(cseq), via_a(cseq)),
                        )
                    } else {
                        let m = format!("{method} sip:{a_name}@{}:{};transport={at} SIP/2.0\r\n", a.ip, a.port);
                        let hdr = format!(
                            "From: <sip:{b_name}@{DOMAIN}>;tag={ttag}\r\nTo: <sip:{a_name}@{DOMAIN}>;tag={ftag}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
                        );
                        let vb = format!("Via: SIP/2.0/{bt} {}:{};branch=z9hG4bK-b{n}-{cseq}\r\n", b.ip, b.port);
                        (
                            format!("{m}{vb}Route: <sip:{SERVER};lr=on;ftag={ftag}>\r\n{hdr}"),
                            format!("{m}Via: SIP/2.0/{at} {SERVER};branch=z9hG4bKsrvb{n}.{cseq}\r\n{vb}{hdr}"),
                        )
                    }
                };
                t += 200;
                let (ack1, ack2) = in_dialog("ACK", 2, true);
                self.send(t, a, s, atr, ack1);
                self.send(t + 150, s, b, btr, ack2);
                let bye_at = t + talk_ms * 1000;
                if outcome == Outcome::Open || bye_at >= end {
                    return; // still talking when the capture ends
                }
                t = bye_at;
                let caller_side = outcome == Outcome::CallerBye;
                let (bye1, bye2) = in_dialog("BYE", 3, caller_side);
                let (p1, p2) = if caller_side { (a, b) } else { (b, a) };
                let (tr1, tr2) = if caller_side { (atr, btr) } else { (btr, atr) };
                self.send(t, p1, s, tr1, bye1.clone());
                self.send(t + 200, s, p2, tr2, bye2.clone());
                let ok = |m: &str| {
                    let head: String = m
                        .lines()
                        .skip(1)
                        .filter(|l| {
                            l.starts_with("Via:")
                                || l.starts_with("From:")
                                || l.starts_with("To:")
                                || l.starts_with("Call-ID:")
                                || l.starts_with("CSeq:")
                        })
                        .map(|l| format!("{l}\r\n"))
                        .collect();
                    format!("SIP/2.0 200 OK\r\n{head}Content-Length: 0\r\n\r\n")
                };
                self.send(t + 400, p2, s, tr2, ok(&bye2));
                let first_via_dropped: String = {
                    let r = ok(&bye2);
                    let mut lines: Vec<&str> = r.split("\r\n").collect();
                    if let Some(i) = lines.iter().position(|l| l.starts_with("Via:")) {
                        lines.remove(i);
                    }
                    lines.join("\r\n")
                };
                self.send(t + 600, s, p1, tr1, first_via_dropped);
            }
            Outcome::NotFound => unreachable!("handled above"),
        }
    }

    fn scan(&mut self, ts: i64, rng_val: u64) {
        let n = self.id();
        let src = Ep { ip: Ipv4Addr::new(203, 0, 113, (rng_val % 200) as u8 + 1), port: 5060 };
        let guess = ["100", "admin", "test", "1000", "alice", "u000001", "support", "200"][(rng_val % 8) as usize];
        let msg = format!(
            "INVITE sip:{}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {}:5060;branch=z9hG4bKscan{n}\r\nFrom: \"{guess}\" <sip:{guess}@{DOMAIN}>;tag=s{n}\r\nTo: <sip:{}@{DOMAIN}>\r\nCall-ID: scan{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:{guess}@{}:5060>\r\nUser-Agent: friendly-scanner\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            100 + rng_val % 900,
            src.ip,
            100 + rng_val % 900,
            src.ip
        );
        let s = server();
        self.send(ts, src, s, Tr::Udp, msg);
        let (status, hdr) = if rng_val.is_multiple_of(2) {
            (
                "407 Proxy Authentication Required",
                format!("Proxy-Authenticate: Digest realm=\"{DOMAIN}\", nonce=\"s{n}\"\r\n"),
            )
        } else {
            ("503 Rate limited", String::new())
        };
        self.send(
            ts + 300,
            s,
            src,
            Tr::Udp,
            format!("SIP/2.0 {status}\r\nVia: SIP/2.0/UDP {}:5060;branch=z9hG4bKscan{n}\r\nFrom: \"{guess}\" <sip:{guess}@{DOMAIN}>;tag=s{n}\r\nTo: <sip:{}@{DOMAIN}>;tag=srv{n}\r\nCall-ID: scan{n}\r\nCSeq: 1 INVITE\r\n{hdr}Content-Length: 0\r\n\r\n", src.ip, 100 + rng_val % 900),
        );
    }
}

/// Generates the capture; `out` gets each frame (Ethernet) with its time, in time order.
pub fn generate(spec: &GenSpec, mut out: impl FnMut(i64, &[u8])) -> GenStats {
    let mut rng = Rng(spec.seed);
    let start = spec.start_unix * 1_000_000;
    let span = spec.duration_secs as i64 * 1_000_000;
    let end = start + span;
    let users: Vec<User> = (0..spec.users)
        .map(|u| {
            let tcp = rng.percent(spec.tcp_percent);
            let ip = Ipv4Addr::new(10, (u >> 16) as u8, (u >> 8) as u8, u as u8);
            let port = if tcp { 30_000 + (u % 30_000) as u16 } else { 5060 };
            User {
                name: format!("u{u:06}"),
                ep: Ep { ip, port },
                tr: if tcp { Tr::Tcp } else { Tr::Udp },
                reg_call_id: String::new(),
                reg_cseq: 0,
            }
        })
        .collect();
    let mut actions: Vec<(i64, u64, Action)> = Vec::new();
    let warmup = (span / 10).max(1);
    let refresh = spec.refresh_secs.max(1) as i64 * 1_000_000;
    let expires_us = (spec.refresh_secs * 2).max(60) as i64 * 1_000_000;
    for u in 0..spec.users {
        let first_at = start + rng.below(warmup as u64) as i64;
        // an away user skips its refreshes until its binding has long expired
        let away = rng.percent(spec.away_percent);
        let mut t = first_at;
        let mut first = true;
        while t < end {
            let skipped = away && !first && t < first_at + 3 * expires_us;
            if !skipped {
                let reboot = !first && rng.percent(spec.reboot_percent);
                actions.push((t, actions.len() as u64, Action::Register { user: u, reboot }));
            }
            first = false;
            t += refresh;
        }
    }
    if spec.users >= 2 {
        for _ in 0..spec.calls {
            let t = start + warmup + rng.below((span - warmup - 60_000_000).max(1) as u64) as i64;
            let caller = rng.below(spec.users as u64) as usize;
            let mut callee = rng.below(spec.users as u64 - 1) as usize;
            if callee >= caller {
                callee += 1;
            }
            let outcome = match rng.below(100) {
                x if x < u64::from(spec.open_percent) => Outcome::Open,
                x if x < 45 => Outcome::CallerBye,
                x if x < 65 => Outcome::CalleeBye,
                x if x < 77 => Outcome::Busy,
                x if x < 87 => Outcome::Cancel,
                x if x < 94 => Outcome::NotFound,
                _ => Outcome::NoAnswer,
            };
            let retransmit = rng.percent(spec.retransmit_percent);
            let talk_ms = 5_000 + rng.below(120_000) as i64;
            let ring_ms = 1_000 + rng.below(8_000) as i64;
            actions.push((
                t,
                actions.len() as u64,
                Action::Call { caller, callee, outcome, retransmit, talk_ms, ring_ms },
            ));
        }
    }
    for _ in 0..spec.scanner_attempts {
        let t = start + rng.below(span as u64) as i64;
        actions.push((t, actions.len() as u64, Action::Scan { n: rng.next_u64() }));
    }
    actions.sort_by_key(|(t, i, _)| (*t, *i));
    let mut g = Gen {
        users,
        heap: BinaryHeap::new(),
        packets: HashMap::new(),
        seq: 0,
        ids: 0,
        tcp_seq: HashMap::new(),
        ip_id: 0,
        stats: GenStats::default(),
        out: &mut out,
    };
    let expires = (spec.refresh_secs * 2).max(60);
    for (t, _, a) in actions {
        g.flush(t);
        match a {
            Action::Register { user, reboot } => g.register(t, user, reboot, expires),
            Action::Call { caller, callee, outcome, retransmit, talk_ms, ring_ms } => {
                g.call(t, caller, callee, outcome, retransmit, talk_ms, ring_ms, end)
            }
            Action::Scan { n } => g.scan(t, n),
        }
    }
    g.flush(end);
    g.stats
}

/// Writes the generated capture as a pcap file.
pub fn write_pcap(spec: &GenSpec, path: &std::path::Path) -> std::io::Result<GenStats> {
    use pcap_file::DataLink;
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let file = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let header = PcapHeader { datalink: DataLink::ETHERNET, ..Default::default() };
    let mut w = PcapWriter::with_header(file, header).map_err(std::io::Error::other)?;
    let mut err = None;
    let stats = generate(spec, |ts, frame| {
        if err.is_none()
            && let Err(e) =
                w.write_packet(&PcapPacket::new(std::time::Duration::from_micros(ts as u64), frame.len() as u32, frame))
        {
            err = Some(e);
        }
    });
    match err {
        Some(e) => Err(std::io::Error::other(e)),
        None => Ok(stats),
    }
}
