//! Throughput figures, each compared with a baseline measured in the same run (machines here are
//! noisy, so ratios are what to read). Run: `cargo bench --bench throughput`.
//!
//! 1. SIP parsing: siptap's view (start line + the headers the state machines use) against
//!    `rsip` 0.4 parsing the same messages, and against a bare memchr line scan.
//! 2. The whole pipeline (decode, reassembly, parse, state, routing) against decoding alone.
use rsip::prelude::*;
use siptap::capture::file::read_file;
use siptap::config::Config;
use siptap::decode::{DecodeLimits, Decoder};
use siptap::pipeline::Pipeline;
use siptap::sip;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Instant;

struct OwnedFrame {
    ts: i64,
    linktype: u32,
    data: Vec<u8>,
}

fn captures() -> Vec<PathBuf> {
    siptap::testkit::lab_captures()
}

fn load(paths: &[PathBuf]) -> Vec<OwnedFrame> {
    let mut frames = Vec::new();
    for p in paths {
        read_file(p, |f| frames.push(OwnedFrame { ts: f.ts, linktype: f.linktype, data: f.data.to_vec() })).unwrap();
    }
    frames
}

fn messages(frames: &[OwnedFrame]) -> Vec<Vec<u8>> {
    let mut d = Decoder::new(DecodeLimits::default(), vec![5060]);
    let mut out = Vec::new();
    for f in frames {
        d.decode(siptap::capture::Frame { ts: f.ts, linktype: f.linktype, data: &f.data }, &mut |m| {
            out.push(m.data.to_vec())
        });
    }
    out
}

/// Runs `f` repeatedly for about `secs` seconds; returns items per second.
fn rate(items_per_call: usize, secs: f64, mut f: impl FnMut()) -> f64 {
    f(); // warm-up
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f();
        calls += 1;
    }
    (calls as f64 * items_per_call as f64) / start.elapsed().as_secs_f64()
}

fn main() {
    let secs: f64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let frames = load(&captures());
    let msgs = messages(&frames);
    println!("corpus: {} frames, {} SIP messages from fixtures/lab/captures", frames.len(), msgs.len());

    // --- 1. parsing ---
    let siptap_rate = rate(msgs.len(), secs, || {
        for m in &msgs {
            let u = sip::parse::unfold(m);
            if let Ok(p) = sip::parse(&u) {
                black_box((p.call_id.len(), p.cseq, p.from.tag(), p.to.tag(), p.contacts().len()));
            }
        }
    });
    let scan_rate = rate(msgs.len(), secs, || {
        for m in &msgs {
            black_box(memchr::memchr_iter(b'\n', m).count());
        }
    });
    let mut rsip_ok = 0;
    for m in &msgs {
        if rsip::SipMessage::try_from(&m[..]).is_ok() {
            rsip_ok += 1;
        }
    }
    let rsip_rate = rate(msgs.len(), secs, || {
        for m in &msgs {
            if let Ok(p) = rsip::SipMessage::try_from(&m[..]) {
                // the same fields siptap extracts
                let from_tag = p.from_header().ok().and_then(|h| h.tag().ok().flatten());
                let to_tag = p.to_header().ok().and_then(|h| h.tag().ok().flatten());
                let call_id = p.call_id_header().ok().map(|h| h.value().len());
                let cseq = p.cseq_header().ok().and_then(|h| h.typed().ok()).map(|c| c.seq);
                black_box((from_tag, to_tag, call_id, cseq));
            }
        }
    });
    println!("\nSIP parsing (messages/s; ratio to rsip):");
    println!("  rsip 0.4 SipMessage::try_from   {rsip_rate:>12.0}  1.00  (accepted {rsip_ok}/{})", msgs.len());
    println!("  siptap sip::parse (fields)      {siptap_rate:>12.0}  {:.2}", siptap_rate / rsip_rate);
    println!("  memchr line scan only           {scan_rate:>12.0}  {:.2}", scan_rate / rsip_rate);

    // --- tolerance: what each parser makes of the dialects passive capture meets ---
    let cases: &[(&str, &str)] = &[
        (
            "compact headers",
            "INVITE sip:b@x SIP/2.0\r\nv: SIP/2.0/UDP 1.2.3.4\r\nf: <sip:a@x>;tag=1\r\nt: <sip:b@x>\r\ni: CID\r\nCSeq: 1 INVITE\r\nl: 0\r\n\r\n",
        ),
        (
            "folded From",
            "INVITE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nFrom: <sip:a@x>\r\n ;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: CID\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "IPv6 Request-URI",
            "INVITE sip:b@[2001:db8::1]:5060 SIP/2.0\r\nVia: SIP/2.0/UDP [2001:db8::2]:5060\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: CID\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "quoted +sip.instance",
            "REGISTER sip:x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>\r\nCall-ID: CID\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@1.2.3.4>;+sip.instance=\"<urn:uuid:1>\";expires=60\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "unknown method",
            "FROB sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\nCall-ID: CID\r\nCSeq: 1 FROB\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "two Contacts on a line",
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 1.2.3.4\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:a@x>;tag=2\r\nCall-ID: CID\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@1.2.3.4>;expires=60, <sip:a@5.6.7.8>;expires=30\r\nContent-Length: 0\r\n\r\n",
        ),
    ];
    println!("\nTolerance (does the parser give Call-ID `CID` and From tag `1`?):");
    for (name, m) in cases {
        let b = m.as_bytes();
        let u = sip::parse::unfold(b);
        let ours = sip::parse(&u).map(|p| p.call_id == "CID" && p.from.tag() == Some("1")).unwrap_or(false);
        let theirs = rsip::SipMessage::try_from(b)
            .map(|p| {
                let cid = p.call_id_header().map(|h| h.value() == "CID").unwrap_or(false);
                let tag = p
                    .from_header()
                    .ok()
                    .and_then(|h| h.tag().ok().flatten())
                    .map(|t| t.value() == "1")
                    .unwrap_or(false);
                cid && tag
            })
            .unwrap_or(false);
        println!("  {name:24} siptap {}  rsip {}", if ours { "yes" } else { "NO " }, if theirs { "yes" } else { "NO" });
    }

    // --- 2. pipeline ---
    let cfg = Config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config.toml.example"))).unwrap();
    let decode_rate = rate(frames.len(), secs, || {
        let mut d = Decoder::new(DecodeLimits::default(), vec![5060]);
        for f in &frames {
            d.decode(siptap::capture::Frame { ts: f.ts, linktype: f.linktype, data: &f.data }, &mut |m| {
                black_box(m.data.len());
            });
        }
    });
    let no_dedup_rate = rate(frames.len(), secs, || {
        let mut d = Decoder::new(DecodeLimits { duplicate_window: 0, ..DecodeLimits::default() }, vec![5060]);
        for f in &frames {
            d.decode(siptap::capture::Frame { ts: f.ts, linktype: f.linktype, data: &f.data }, &mut |m| {
                black_box(m.data.len());
            });
        }
    });
    let mut events = 0usize;
    let pipe_rate = rate(frames.len(), secs, || {
        let mut p = Pipeline::new(&cfg, Box::<siptap::state::users::MemoryUsers>::default(), [1, 2]);
        for f in &frames {
            p.frame(siptap::capture::Frame { ts: f.ts, linktype: f.linktype, data: &f.data }, &mut |r| {
                black_box(&r);
                events += 1;
            });
        }
        p.finish(&mut |_| {});
    });
    println!("\nPipeline (frames/s; ratio to decoding alone):");
    println!("  decode only (link, IP, UDP/TCP)  {decode_rate:>12.0}  1.00");
    println!("  decode, duplicate check off      {no_dedup_rate:>12.0}  {:.2}", no_dedup_rate / decode_rate);
    println!(
        "  whole pipeline to routed events   {pipe_rate:>12.0}  {:.2}  ({:.0} SIP messages/s)",
        pipe_rate / decode_rate,
        pipe_rate * msgs.len() as f64 / frames.len() as f64
    );
    black_box(events);
}
