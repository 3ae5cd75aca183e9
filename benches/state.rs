//! The cost of restart-safe state (`cargo bench --bench state`): replay throughput with the
//! derivation state saved as `siptap run` saves it (one commit per second of packet time) against
//! no persistence, in one run; and the bytes on disk per active registration and per open call leg.
//! `cargo bench --bench state -- burst [ROUNDS]`: the same at the live bench's pace instead (the
//! large capture's first 300,000 frames, saved every 50,000), with the time in the saves.
//! Captures come from the deterministic generator (`siptap::testkit::capgen`).
use siptap::capture::Frame;
use siptap::config::Config;
use siptap::store::{StateStore, open_pipeline};
use siptap::testkit::capgen::{GenSpec, generate};
use std::path::Path;
use std::time::Instant;

/// The daemon's allocator (src/main.rs), so that the figures are the daemon's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct F {
    ts: i64,
    data: Vec<u8>,
}

fn frames(spec: &GenSpec) -> Vec<F> {
    let mut v = Vec::new();
    generate(spec, |ts, d| v.push(F { ts, data: d.to_vec() }));
    v
}

/// Replays the frames; with a state dir, commits the delta at the end, and with `every_second`
/// also once a second of packet time (as `siptap run` does once a second of wall time; the
/// journal's folds, every 300 commits, are in the commits' time).
/// Returns (seconds, commits, seconds spent committing).
fn run(cfg: &Config, fr: &[F], state: Option<&Path>, every_second: bool) -> (f64, u64, f64) {
    let t = Instant::now();
    let o = open_pipeline(cfg, state).unwrap();
    let _scratch = o.scratch;
    let (mut p, store) = (o.pipeline, o.persistent.then_some(o.store));
    let mut events = 0usize;
    let mut last_commit = fr[0].ts;
    let (mut commits, mut in_commit) = (0u64, 0f64);
    for f in fr {
        p.frame(Frame { ts: f.ts, linktype: 1, data: &f.data }, &mut |_| events += 1);
        if every_second
            && let Some(s) = &store
            && f.ts - last_commit >= 1_000_000
        {
            // as the daemon does: nothing waits in the pipeline's batch when the state is saved
            p.flush(&mut |_| events += 1);
            let c = Instant::now();
            let d = p.tracker().take_delta();
            s.commit(&d, &p.take_new_users()).unwrap();
            in_commit += c.elapsed().as_secs_f64();
            commits += 1;
            last_commit = f.ts;
        }
    }
    p.finish(&mut |_| events += 1);
    if let Some(s) = &store {
        // the end, as a replay or a daemon's clean stop: with the journal folded into the tables
        let d = p.tracker().take_delta();
        s.commit_folded(&d, &p.take_new_users()).unwrap();
    }
    std::hint::black_box(events);
    (t.elapsed().as_secs_f64(), commits, in_commit)
}

/// The file's size after a replay that saved once a second (as the daemon does: more commits
/// leave more free pages than one save at the end).
fn disk_bytes(cfg: &Config, fr: &[F], dir: &Path) -> u64 {
    run(cfg, fr, Some(dir), true);
    let s = StateStore::open(dir, 1 << 20).unwrap();
    s.stats.bytes_on_disk.load(std::sync::atomic::Ordering::Relaxed)
}

fn main() {
    let cfg = Config::parse(
        "sip_servers = [\"127.0.0.10:5060\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    if std::env::args().any(|a| a == "burst") {
        burst(&cfg, dir.path());
        return;
    }
    // throughput: 5,000 users refreshing every 2 minutes, 20,000 calls, over half an hour
    let spec =
        GenSpec { seed: 3, users: 5000, calls: 20_000, duration_secs: 1800, refresh_secs: 120, ..GenSpec::default() };
    let fr = frames(&spec);
    println!("capture: {} frames (generated: 5,000 users, 20,000 calls, 30 min)", fr.len());
    let (mut base, mut at_end, mut each) = (f64::MAX, f64::MAX, (f64::MAX, 0, 0.0));
    for i in 0..3 {
        base = base.min(run(&cfg, &fr, None, false).0);
        at_end = at_end.min(run(&cfg, &fr, Some(&dir.path().join(format!("a{i}"))), false).0);
        let r = run(&cfg, &fr, Some(&dir.path().join(format!("s{i}"))), true);
        if r.0 < each.0 {
            each = r;
        }
    }
    println!("Replay throughput (best of 3, frames/s; ratio to no persistence):");
    println!("  no state saved                        {:>10.0}  1.00", fr.len() as f64 / base);
    println!("  replay --state (load, save at end)    {:>10.0}  {:.2}", fr.len() as f64 / at_end, base / at_end);
    println!(
        "  saved once per second of packet time  {:>10.0}  {:.2}  ({} commits, {:.2} ms each)",
        fr.len() as f64 / each.0,
        base / each.0,
        each.1,
        each.2 * 1000.0 / each.1 as f64
    );
    let per_sec = fr.len() as f64 / 1800.0;
    println!(
        "The daemon commits once a second of wall time: at this capture's rate ({per_sec:.0} frames/s) a commit takes {:.2} ms, {:.2}% of a core",
        each.2 * 1000.0 / each.1 as f64,
        each.2 / each.1 as f64 * 100.0
    );

    // size on disk: registrations only, then open calls only (answered, no BYE)
    let empty = disk_bytes(&cfg, &frames(&GenSpec { users: 2, calls: 0, ..GenSpec::default() }), &dir.path().join("e"));
    let regs = 20_000;
    let reg_spec = GenSpec {
        seed: 4,
        users: regs,
        calls: 0,
        duration_secs: 600,
        refresh_secs: 3600,
        away_percent: 0,
        ..GenSpec::default()
    };
    let with_regs = disk_bytes(&cfg, &frames(&reg_spec), &dir.path().join("r"));
    let calls = 20_000;
    let call_spec = GenSpec {
        seed: 5,
        users: 2000,
        calls,
        duration_secs: 600,
        refresh_secs: 3600,
        open_percent: 100,
        retransmit_percent: 0,
        away_percent: 0,
        ..GenSpec::default()
    };
    let (with_calls, base_users) = (
        disk_bytes(&cfg, &frames(&call_spec), &dir.path().join("c")),
        disk_bytes(&cfg, &frames(&GenSpec { calls: 0, ..call_spec.clone() }), &dir.path().join("c0")),
    );
    println!("Size on disk (STATE/siptap.redb):");
    println!("  empty store                        {empty:>10} bytes");
    println!("  per active registration (20,000)   {:>10.0} bytes", (with_regs - empty) as f64 / regs as f64);
    println!(
        "  per open call leg (40,000 legs)    {:>10.0} bytes",
        with_calls.saturating_sub(base_users) as f64 / (2 * calls) as f64
    );
}

/// The live bench's burst in process: the first `n` frames of the large capture's shape (a
/// registration wave and calls, 50,000 frames a second on the live bench), replayed with the
/// state saved every `every` frames (a second of that rate), as the daemon's core saves it.
/// Returns (seconds in all, seconds taking deltas, seconds committing, commits, folds).
fn burst_run(cfg: &Config, fr: &[F], state: Option<&Path>, every: usize) -> (f64, f64, f64, u64, u64) {
    let t = Instant::now();
    let o = open_pipeline(cfg, state).unwrap();
    let _scratch = o.scratch;
    let (mut p, store) = (o.pipeline, o.persistent.then_some(o.store));
    let mut events = 0usize;
    let (mut in_delta, mut in_commit, mut commits) = (0f64, 0f64, 0u64);
    for chunk in fr.chunks(every) {
        for f in chunk {
            p.frame(Frame { ts: f.ts, linktype: 1, data: &f.data }, &mut |_| events += 1);
        }
        if let Some(s) = &store {
            p.flush(&mut |_| events += 1);
            let c = Instant::now();
            let d = p.tracker().take_delta();
            let u = p.take_new_users();
            in_delta += c.elapsed().as_secs_f64();
            let c = Instant::now();
            s.commit(&d, &u).unwrap();
            in_commit += c.elapsed().as_secs_f64();
            commits += 1;
        }
    }
    p.finish(&mut |_| events += 1);
    std::hint::black_box(events);
    let folds = store.map_or(0, |s| s.stats.folds.load(std::sync::atomic::Ordering::Relaxed));
    (t.elapsed().as_secs_f64(), in_delta, in_commit, commits, folds)
}

fn burst(cfg: &Config, dir: &Path) {
    const N: usize = 300_000;
    const EVERY: usize = 50_000;
    let spec = GenSpec {
        seed: 1,
        users: 20_000,
        calls: 100_000,
        scanner_attempts: 20_000,
        duration_secs: 3600,
        refresh_secs: 1800,
        ..GenSpec::default()
    };
    let mut fr = Vec::with_capacity(N);
    generate(&spec, |ts, d| {
        if fr.len() < N {
            fr.push(F { ts, data: d.to_vec() })
        }
    });
    println!(
        "Burst: the first {} frames of the large capture's shape, the state saved every {EVERY} frames (a second at the live bench's 50,000/s)",
        fr.len()
    );
    // (`burst 1`: one round, for callgrind)
    let rounds: usize = std::env::args()
        .skip_while(|a| a != "burst")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(5);
    let (mut base, mut saved) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        base.push(burst_run(cfg, &fr, None, EVERY));
        saved.push(burst_run(cfg, &fr, Some(&dir.join(format!("b{i}"))), EVERY));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let us = |s: f64| s / fr.len() as f64 * 1e6;
    let b = median(&mut base.iter().map(|r| r.0).collect());
    let s = median(&mut saved.iter().map(|r| r.0).collect());
    let d = median(&mut saved.iter().map(|r| r.1).collect());
    let c = median(&mut saved.iter().map(|r| r.2).collect());
    println!("  (medians of {rounds} alternating runs, us per frame)");
    println!("  no state saved                {:>6.3}", us(b));
    println!("  saved every {EVERY} frames     {:>6.3}  ({:.2}x)", us(s), s / b);
    println!("    of it taking the deltas     {:>6.3}", us(d));
    println!("    of it committing            {:>6.3}  ({} commits, {} folds)", us(c), saved[0].3, saved[0].4);
}
