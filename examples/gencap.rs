//! Writes a large realistic capture (see `siptap::testkit::capgen`): deterministic by seed.
//!
//! cargo run --release --example gencap -- [--seed N] [--users N] [--calls N] [--scanners N]
//!     [--duration SECS] [--tcp PERCENT] [--open PERCENT] [--refresh SECS] OUT.pcap
use siptap::testkit::capgen::{GenSpec, write_pcap};

fn main() {
    let mut spec = GenSpec::default();
    let mut out = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> u64 {
            args.next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{name} needs a number"))
        };
        match a.as_str() {
            "--seed" => spec.seed = num("--seed"),
            "--users" => spec.users = num("--users") as usize,
            "--calls" => spec.calls = num("--calls") as usize,
            "--scanners" => spec.scanner_attempts = num("--scanners") as usize,
            "--duration" => spec.duration_secs = num("--duration"),
            "--tcp" => spec.tcp_percent = num("--tcp") as u32,
            "--open" => spec.open_percent = num("--open") as u32,
            "--refresh" => spec.refresh_secs = num("--refresh"),
            _ if a.starts_with("--") => panic!("unknown option {a}"),
            _ => out = Some(a),
        }
    }
    let out = out.expect("usage: gencap [options] OUT.pcap");
    let st = write_pcap(&spec, std::path::Path::new(&out)).expect("write the capture");
    eprintln!(
        "{out}: {} frames, {} SIP messages, {} bytes ({} registrations, {} calls)",
        st.frames, st.sip_messages, st.bytes, st.registrations, st.calls
    );
}
