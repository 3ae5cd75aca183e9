//! Steady state is flat (`cargo bench --bench soak`): eight hours of packet time at a constant
//! load (200 users refreshing every 10 minutes, 6 calls a second of every outcome, calls of
//! 5-125 s) through the whole pipeline, sampling the heap every 30 minutes of packet time.
//! Memory must level off after warm-up: the growth from hour 5 to hour 8 (after the 4-hour
//! limit of an answered call, the longest timer) against the heap at hour 1.
//! Packet time, not wall time: the core never looks at a clock, so hours of load take seconds,
//! and the same run on any machine gives the same figures. (The live daemon soak, which also
//! covers capture and delivery, is `benches/live/soak.sh`.)
use siptap::capture::Frame;
use siptap::config::Config;
use siptap::store::open_pipeline;
use siptap::testkit::capgen::{GenSpec, generate};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The system allocator, counting the bytes in use.
struct Counting;
static IN_USE: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        IN_USE.fetch_add(l.size(), Relaxed);
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        IN_USE.fetch_sub(l.size(), Relaxed);
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        IN_USE.fetch_add(new, Relaxed);
        IN_USE.fetch_sub(l.size(), Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const HOUR: i64 = 3_600_000_000;

fn main() {
    let hours = 8;
    let cfg = Config::parse(
        "sip_servers = [\"127.0.0.10:5060\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n",
        Path::new("bench.toml"),
    )
    .unwrap();
    let spec = GenSpec {
        seed: 11,
        users: 200,
        calls: 6 * 3600 * hours,
        duration_secs: 3600 * hours as u64,
        refresh_secs: 600,
        open_percent: 0,
        ..GenSpec::default()
    };
    let o = open_pipeline(&cfg, None).unwrap();
    let _scratch = o.scratch;
    let mut p = o.pipeline;
    let mut events = 0u64;
    let mut start = None;
    let mut next_sample = 0;
    let mut samples: Vec<(f64, usize, usize, usize, u64)> = Vec::new();
    let mut frames = 0u64;
    let t = std::time::Instant::now();
    generate(&spec, |ts, data| {
        let s = *start.get_or_insert(ts);
        if ts - s >= next_sample {
            p.flush(&mut |_| events += 1);
            let tr = p.tracker();
            let legs = tr.calls.len();
            let timers = tr.calls.timer_entries();
            samples.push(((ts - s) as f64 / HOUR as f64, IN_USE.load(Relaxed), legs, timers, events));
            next_sample += HOUR / 2;
        }
        frames += 1;
        p.frame(Frame { ts, linktype: 1, data }, &mut |_| events += 1);
    });
    p.finish(&mut |_| events += 1);
    let secs = t.elapsed().as_secs_f64();
    println!("soak: {hours} h of packet time, {frames} frames, {events} events, {secs:.1} s");
    println!("{:>6} {:>12} {:>8} {:>12} {:>10}", "hour", "heap bytes", "legs", "timer heap", "events");
    for (h, heap, legs, timers, ev) in &samples {
        println!("{h:>6.1} {heap:>12} {legs:>8} {timers:>12} {ev:>10}");
    }
    let at = |h: f64| samples.iter().find(|s| s.0 >= h).map(|s| s.1 as f64).unwrap_or(f64::NAN);
    let (h1, h5, h8) = (at(1.0), at(5.0), at(hours as f64 - 0.5));
    let per_min = (h8 - h5) / ((hours as f64 - 0.5 - 5.0) * 60.0);
    println!(
        "heap at hour 1: {:.1} MB; hour 5 -> {:.1}: {:+.1} kB/min ({:+.2}% of the hour-1 heap per hour)",
        h1 / 1e6,
        hours as f64 - 0.5,
        per_min / 1e3,
        per_min * 60.0 / h1 * 100.0
    );
    let max_timers = samples.iter().map(|s| s.3 as f64 / (s.2 as f64 + 1.0)).fold(0.0, f64::max);
    println!("timer heap entries per leg, at most: {max_timers:.2} (stale deadlines are dropped)");
}
