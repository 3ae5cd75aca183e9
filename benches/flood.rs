//! Peak memory and speed under a scanner flood, against replaying the real traffic alone in the
//! same run. Run: `cargo bench --bench flood`. The target: a 100,000-attempt flood keeps siptap's
//! peak resident memory under 64 MiB, and memory stays bounded as the flood grows.
#[path = "../tests/common/flood.rs"]
mod flood;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const TARGET_KIB: u64 = 64 * 1024;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// (peak RSS KiB, seconds, frames) of one replay.
fn replay(path: &Path) -> (u64, f64, u64) {
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_siptap"))
        .args(["replay", "--stats", "--config"])
        .arg(root().join("config.toml.example"))
        .arg(path)
        .output()
        .unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8(out.stderr).unwrap();
    let stat = |k: &str| -> u64 {
        err.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(k)).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap()
    };
    (stat("peak_rss_kib"), secs, stat("frames"))
}

fn main() {
    let dir = std::env::temp_dir().join(format!("siptap-flood-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let lab = root().join("fixtures/lab/captures");
    let mut real = Vec::new();
    for c in ["register.pcap", "call_caller_bye.pcap", "derived/call_busy_plus1h.pcap"] {
        real.extend(flood::read(&lab.join(c)));
    }
    let start = real.iter().map(|f| f.ts).min().unwrap();
    let base_path = dir.join("real.pcap");
    flood::write(&base_path, flood::read_all(&real));
    let (base_kib, base_s, base_frames) = replay(&base_path);
    println!("{:>10} {:>9} {:>12} {:>12} {:>8}", "attempts", "frames", "peak RSS KiB", "frames/s", "RSS/base");
    println!("{:>10} {base_frames:>9} {base_kib:>12} {:>12.0} {:>8.2}", 0, base_frames as f64 / base_s, 1.0);
    let mut at_100k = 0;
    for attempts in [100_000usize, 300_000] {
        let path = dir.join(format!("flood-{attempts}.pcap"));
        let mut frames = flood::read_all(&real);
        frames.extend(flood::flood(attempts, start, 60_000_000, 7));
        flood::write(&path, frames);
        let (kib, s, n) = replay(&path);
        println!("{attempts:>10} {n:>9} {kib:>12} {:>12.0} {:>8.2}", n as f64 / s, kib as f64 / base_kib as f64);
        if attempts == 100_000 {
            at_100k = kib;
        }
        std::fs::remove_file(&path).ok();
    }
    println!(
        "target: peak RSS under a 100,000-attempt flood < {TARGET_KIB} KiB: {}",
        if at_100k < TARGET_KIB { "met" } else { "MISSED" }
    );
    std::fs::remove_dir_all(&dir).ok();
}
