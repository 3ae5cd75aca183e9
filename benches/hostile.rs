//! Hostile traffic against ordinary traffic of the same packet count, in one run
//! (`cargo bench --bench hostile`): replay time and peak resident memory of each attack's crafted
//! capture (tests/common/attacks.rs) as ratios to a generated capture of ordinary SIP traffic with
//! as many frames. SIPTAP_BEFORE=/path/to/an/older/siptap adds its figures on the same files.
#[path = "../tests/common/attacks.rs"]
mod attacks;
#[path = "../tests/common/flood.rs"]
mod flood;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (seconds, peak RSS KiB) of one replay by `bin`.
fn replay(bin: &Path, path: &Path) -> Option<(f64, u64)> {
    let t = Instant::now();
    let out = Command::new("timeout")
        .arg("600")
        .arg(bin)
        .args(["replay", "--stats", "--config"])
        .arg(root().join("config.toml.example"))
        .arg(path)
        .output()
        .ok()?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        return None;
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let rss = err.lines().find_map(|l| l.strip_prefix("peak_rss_kib").map(|v| v.trim().parse().unwrap_or(0)))?;
    Some((secs, rss))
}

fn ordinary(frames: usize, path: &Path) {
    use siptap::testkit::capgen::{GenSpec, write_pcap};
    // about 11.5 frames per call with registrations at this mix
    let calls = frames / 12;
    let spec = GenSpec {
        seed: 8,
        users: (calls / 5).max(10),
        calls,
        duration_secs: 600,
        refresh_secs: 300,
        ..GenSpec::default()
    };
    write_pcap(&spec, path).unwrap();
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_siptap"));
    let before = std::env::var_os("SIPTAP_BEFORE").map(PathBuf::from);
    let start = 1_795_000_000_000_000;
    let cases: Vec<(&str, Vec<flood::Frame>)> = vec![
        ("100k SYNs to port 5060", attacks::syn_flood(100_000, start, start + 60_000_000, 5)),
        ("200k one-byte fragments", attacks::tiny_fragments(200_000, start, start + 60_000_000, 9)),
        ("300k zero-length fragments", attacks::empty_fragments(300_000, start, start + 60_000_000)),
        ("100k REGISTERs x 100 contacts", attacks::many_contact_registers(100_000, start, 3)),
        ("5,000 TCP streams x 250 KB", attacks::big_tcp_streams(5000, 178, start)),
    ];
    println!("Hostile traffic (replay; ratios to ordinary SIP traffic of the same frame count, same run):");
    println!("{:<32} {:>9} {:>9} {:>8} {:>10} {:>8}", "attack", "frames", "seconds", "time x", "peak KiB", "RSS x");
    for (name, frames) in cases {
        let n = frames.len();
        let attack = dir.path().join("attack.pcap");
        flood::write(&attack, frames);
        let base = dir.path().join("ordinary.pcap");
        ordinary(n, &base);
        let (bt, br) = replay(&bin, &base).expect("ordinary replay");
        let (at, ar) = replay(&bin, &attack).expect("attack replay");
        println!("{name:<32} {n:>9} {at:>9.2} {:>8.2} {ar:>10} {:>8.2}", at / bt, ar as f64 / br as f64);
        if let Some(old) = &before {
            match (replay(old, &base), replay(old, &attack)) {
                (Some((obt, obr)), Some((oat, oar))) => println!(
                    "{:<32} {n:>9} {oat:>9.2} {:>8.2} {oar:>10} {:>8.2}",
                    "  (before)",
                    oat / obt,
                    oar as f64 / obr as f64
                ),
                _ => println!("{:<32} did not finish within 600 s", "  (before)"),
            }
        }
    }
}
