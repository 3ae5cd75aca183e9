//! Delivery figures against a local fake Measurement Protocol server (tests/common/mp_server.rs),
//! compared with the outbox alone in the same run. Run: `cargo bench --bench delivery`.
//! 1. Throughput: events/s from the outbox to acknowledged, vs. queue-and-remove without HTTP.
//! 2. Latency: from queuing a `callend` (the moment the packet that ends the call is processed)
//!    to the server receiving it, one event at a time with the sender running: median and p99.
#[path = "../tests/common/mp_server.rs"]
mod mp_server;
use serde_json::{Map, Value};
use siptap::sink::firebase::mp::QueuedEvent;
use siptap::sink::firebase::outbox::{Outbox, WhenFull};
use siptap::sink::firebase::sender::{self, SenderConfig, SenderStats};
use siptap::sink::firebase::{Secret, Target};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64
}

fn event(i: u64) -> QueuedEvent {
    let mut params = Map::new();
    params.insert("call_id".into(), Value::from(format!("{i:016x}")));
    params.insert("direction".into(), "out".into());
    params.insert("answered".into(), 1.into());
    params.insert("status".into(), 200.into());
    params.insert("duration_sec".into(), 61.2.into());
    params.insert("session_id".into(), 1_800_000_000i64.into());
    params.insert("engagement_time_msec".into(), 61_200.into());
    QueuedEvent {
        id: format!("{i:032x}"),
        kind: "call_ended".into(),
        tenant: "lab".into(),
        // 500 app instances, each with runs of 10 events in a row
        app_instance_id: format!("{:032x}", i / 10 % 500),
        user_id: Some(format!("{:032x}", i / 10 % 500)),
        timestamp_micros: now_micros(),
        name: "callend".into(),
        params,
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let n = 20_000u64;
    let events: Vec<QueuedEvent> = (0..n).map(event).collect();

    // baseline: the durable queue alone (commit in batches of 1000, read, remove)
    let ob = Outbox::open(&dir.path().join("base"), u64::MAX, WhenFull::RejectNew, 16 << 20).unwrap();
    let t = Instant::now();
    for c in events.chunks(1000) {
        ob.push(c, &[]).unwrap();
    }
    let mut left = ob.pending("lab", 1000, &Default::default()).unwrap();
    while !left.is_empty() {
        let ids: Vec<u64> = left.iter().map(|(i, _)| *i).collect();
        ob.remove("lab", &ids).unwrap();
        left = ob.pending("lab", 1000, &Default::default()).unwrap();
    }
    let base = n as f64 / t.elapsed().as_secs_f64();

    // through HTTP to the fake server
    let mp = mp_server::FakeMp::start();
    let target = Target {
        tenant: "lab".into(),
        base_url: mp.url(),
        app_id: "1:1:android:1".into(),
        api_secret: Secret::new("x".into()),
    };
    let cfg = || SenderConfig {
        max_in_flight: 4,
        request_timeout: Duration::from_secs(10),
        max_backoff: Duration::from_secs(1),
        poll: Duration::from_millis(100),
    };
    let ob = Arc::new(Outbox::open(&dir.path().join("http"), u64::MAX, WhenFull::RejectNew, 16 << 20).unwrap());
    for c in events.chunks(1000) {
        ob.push(c, &[]).unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let stats = Arc::new(SenderStats::default());
    let t = Instant::now();
    let (_keep, never) = tokio::sync::watch::channel(false);
    rt.block_on(sender::run(ob.clone(), vec![target.clone()], cfg(), stats.clone(), true, None, never.clone()));
    let http = n as f64 / t.elapsed().as_secs_f64();
    assert!(ob.is_empty());
    let reqs = stats.requests_ok.load(std::sync::atomic::Ordering::Relaxed);

    println!("Delivery throughput (events/s; ratio to the outbox alone):");
    println!("  outbox commit+read+remove only   {base:>10.0}  1.00");
    println!(
        "  outbox -> HTTP -> 2xx -> removed {http:>10.0}  {:.2}  ({reqs} requests, {:.1} events each)",
        http / base,
        n as f64 / reqs as f64
    );

    // latency: the sender runs; one callend at a time is queued, as live capture would
    let mp = mp_server::FakeMp::start();
    let target = Target { base_url: mp.url(), ..target };
    let count = || mp.received.lock().unwrap().len();
    let ob = Arc::new(Outbox::open(&dir.path().join("lat"), u64::MAX, WhenFull::RejectNew, 16 << 20).unwrap());
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let samples = 300;
    let lat = rt.block_on(async {
        let sender = tokio::spawn(sender::run(
            ob.clone(),
            vec![target],
            cfg(),
            Arc::new(SenderStats::default()),
            false,
            None,
            stop,
        ));
        let mut lat = Vec::new();
        let mut push_us = Vec::new();
        for i in 0..samples {
            let before = count();
            let t = Instant::now();
            ob.push(&[event(1_000_000 + i)], &[]).unwrap();
            push_us.push(t.elapsed().as_micros() as u64);
            while count() == before {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            lat.push(t.elapsed().as_micros() as u64);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let _ = stop_tx.send(true);
        let _ = sender.await;
        push_us.sort_unstable();
        println!(
            "  (of which the durable commit of the queued event: median {:.2} ms)",
            push_us[push_us.len() / 2] as f64 / 1000.0
        );
        lat
    });
    let mut l = lat.clone();
    l.sort_unstable();
    let pct = |p: f64| l[((l.len() as f64 - 1.0) * p) as usize] as f64 / 1000.0;
    println!("Latency, callend queued -> received by the server ({samples} events one at a time):");
    println!("  median {:.2} ms   p99 {:.2} ms   max {:.2} ms", pct(0.5), pct(0.99), pct(1.0));
    blip(dir.path());
}

/// A one-second 503 blip with 12,000 events queued: how long the outbox takes to drain, against
/// the same outbox with no blip (the sender backs off per outage and probes, then goes back to
/// full speed).
fn blip(dir: &std::path::Path) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let drain = |name: &str, down: Option<Duration>| -> (f64, u64) {
        let mp = mp_server::FakeMp::start();
        mp.behaviour.lock().unwrap().down_until = down.map(|d| Instant::now() + d);
        let ob = Arc::new(Outbox::open(&dir.join(name), u64::MAX, WhenFull::RejectNew, 16 << 20).unwrap());
        let evs: Vec<QueuedEvent> = (0..12_000).map(|i| event(5_000_000 + i)).collect();
        for c in evs.chunks(1000) {
            ob.push(c, &[]).unwrap();
        }
        let target = Target {
            tenant: "lab".into(),
            base_url: mp.url(),
            app_id: "1:1:android:1".into(),
            api_secret: Secret::new("x".into()),
        };
        let cfg = SenderConfig {
            max_in_flight: 4,
            request_timeout: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            poll: Duration::from_millis(100),
        };
        let stats = Arc::new(SenderStats::default());
        let (_keep, never) = tokio::sync::watch::channel(false);
        let t = Instant::now();
        rt.block_on(sender::run(ob.clone(), vec![target], cfg, stats.clone(), true, None, never));
        assert!(ob.is_empty());
        (t.elapsed().as_secs_f64(), stats.http_5xx_429.load(std::sync::atomic::Ordering::Relaxed))
    };
    let (clean, _) = drain("clean", None);
    let (after, failed) = drain("blip", Some(Duration::from_secs(1)));
    println!("A one-second 503 blip with 12,000 events queued (max_backoff_secs = 300):");
    println!("  no blip      {clean:>7.2} s");
    println!("  1 s of 503   {after:>7.2} s  ({failed} requests answered 503)");
}
