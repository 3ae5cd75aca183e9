//! A localhost HTTP endpoint: Prometheus `/metrics` and `/health`.
use super::Shared;
use super::metrics_text::Writer;
use crate::counters;
use crate::sink::firebase::sender::DeliveryResult;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Connections served at once; more are closed at once (a slow or idle client cannot hold the
/// endpoint, and file descriptors stay bounded).
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(_) => {
                // out of file descriptors, say: wait instead of spinning
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut buf = vec![0u8; 4096];
            let n = match tokio::time::timeout(REQUEST_TIMEOUT, conn.read(&mut buf)).await {
                Ok(Ok(n)) => n,
                _ => return,
            };
            let req = String::from_utf8_lossy(&buf[..n]);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (status, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render(&shared).await),
                "/health" => {
                    if shared.healthy() {
                        ("200 OK", "text/plain", health_body(&shared, true))
                    } else {
                        ("503 Service Unavailable", "text/plain", health_body(&shared, false))
                    }
                }
                _ => ("404 Not Found", "text/plain", "try /metrics or /health\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}

/// Per-tenant outbox counts read the queue's keys: at most every 15 s, off the async thread.
type TenantCounts = std::collections::BTreeMap<String, crate::sink::firebase::outbox::TenantCounts>;
static OUTBOX_COUNTS: std::sync::Mutex<Option<(std::time::Instant, Arc<TenantCounts>)>> = std::sync::Mutex::new(None);

async fn outbox_counts(s: &Arc<Shared>) -> Arc<TenantCounts> {
    if let Some((at, c)) = OUTBOX_COUNTS.lock().expect("not poisoned").as_ref()
        && at.elapsed() < std::time::Duration::from_secs(15)
    {
        return c.clone();
    }
    let s = s.clone();
    let c = tokio::task::spawn_blocking(move || s.outbox.as_ref().and_then(|o| o.counts().ok()).unwrap_or_default())
        .await
        .map(Arc::new)
        .unwrap_or_default();
    *OUTBOX_COUNTS.lock().expect("not poisoned") = Some((std::time::Instant::now(), c.clone()));
    c
}

/// The `/health` body: the state, then which instance answered.
fn health_body(s: &Shared, ok: bool) -> String {
    format!(
        "{}\nversion {}\npid {}\nconfig {}\n",
        if ok { "ok" } else { "core loop stalled" },
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        s.config_path
    )
}

async fn render(s: &Arc<Shared>) -> String {
    let tenant_counts = outbox_counts(s).await;
    let mut w = Writer::new();
    w.single("up", "gauge", "siptap is running.", 1.0);
    w.family("build_info", "gauge", "Version of this siptap, and which configuration it runs (always 1).");
    w.sample(
        "build_info",
        "gauge",
        &[("version", env!("CARGO_PKG_VERSION")), ("config", &s.config_path), ("pid", &std::process::id().to_string())],
        1.0,
    );
    w.single("start_time_seconds", "gauge", "When siptap started (Unix time).", s.started_unix as f64);
    let r = &s.reload;
    w.family("config_reloads", "counter", "Configuration reloads (SIGHUP) by result.");
    w.sample("config_reloads", "counter", &[("result", "ok")], r.ok.load(Relaxed) as f64);
    w.sample("config_reloads", "counter", &[("result", "refused")], r.failed.load(Relaxed) as f64);
    w.single(
        "config_last_reload_successful",
        "gauge",
        "1 if the last reload (or the start) applied the file, 0 if it was refused and the old configuration runs.",
        if r.last_ok.load(Relaxed) { 1.0 } else { 0.0 },
    );
    w.single(
        "config_last_reload_timestamp_seconds",
        "gauge",
        "When the configuration was last loaded or a reload refused (Unix time).",
        r.last_unix_micros.load(Relaxed) as f64 / 1e6,
    );
    w.single(
        "last_tick_timestamp_seconds",
        "gauge",
        "When the core loop last published its counters (Unix time); stale means stalled.",
        s.last_tick.load(Relaxed) as f64 / 1e6,
    );
    process_metrics(&mut w);

    let snap = s.snapshot.lock().expect("not poisoned");
    let mut tenants: Vec<String> = snap.events.keys().map(|(t, _)| t.clone()).collect();
    tenants.dedup();
    for (k, v) in &snap.counters {
        let Some(m) = counters::meta(k) else { continue };
        let kind = if m.kind == counters::Kind::Counter { "counter" } else { "gauge" };
        w.single(m.name, kind, m.help, *v as f64 * m.scale);
    }
    w.family("events", "counter", "Events derived, by tenant and kind (before delivery).");
    for ((tenant, kind), v) in &snap.events {
        w.sample("events", "counter", &[("tenant", tenant), ("kind", kind)], *v as f64);
    }
    drop(snap);

    w.family("capture_packets", "counter", "Packets read from each capture interface (after the BPF filter).");
    for (name, c) in &s.captures {
        w.sample("capture_packets", "counter", &[("interface", name)], c.received.load(Relaxed) as f64);
    }
    w.family(
        "capture_kernel_drops",
        "counter",
        "Packets the kernel dropped before siptap read them (where=buffer: raise run.buffer_mib).",
    );
    for (name, c) in &s.captures {
        w.sample(
            "capture_kernel_drops",
            "counter",
            &[("interface", name), ("where", "buffer")],
            c.dropped.load(Relaxed) as f64,
        );
        w.sample(
            "capture_kernel_drops",
            "counter",
            &[("interface", name), ("where", "interface")],
            c.if_dropped.load(Relaxed) as f64,
        );
    }

    if let Some(ob) = s.outbox.as_ref() {
        w.single("outbox_events", "gauge", "Events waiting in the outbox (all tenants).", ob.len() as f64);
        w.single(
            "outbox_max_events",
            "gauge",
            "The outbox's bound (delivery.max_outbox_events).",
            ob.max_events() as f64,
        );
        w.family("outbox_tenant_events", "gauge", "Events waiting in the outbox, by tenant (read every 15 s).");
        // every tenant, at zero when nothing waits
        let mut depth: std::collections::BTreeMap<&str, u64> = tenants.iter().map(|t| (t.as_str(), 0)).collect();
        for (tenant, c) in tenant_counts.iter() {
            depth.insert(tenant, c.queued);
        }
        for (tenant, n) in depth {
            w.sample("outbox_tenant_events", "gauge", &[("tenant", tenant)], n as f64);
        }
        w.family(
            "outbox_rejected_events",
            "gauge",
            "Events kept in the rejected table (not sent), by tenant and reason; see `siptap outbox`.",
        );
        for (tenant, c) in tenant_counts.iter() {
            for (reason, n) in &c.rejected {
                w.sample("outbox_rejected_events", "gauge", &[("tenant", tenant), ("reason", reason)], *n as f64);
            }
        }
        for (name, help, v) in [
            ("outbox_queued", "Events put in the outbox.", &ob.stats.queued),
            ("outbox_dropped_full", "Events dropped because the outbox was full.", &ob.stats.dropped_full),
            ("outbox_dropped_too_old", "Events dropped as older than GA4's 72-hour window.", &ob.stats.dropped_too_old),
            ("outbox_rejected", "Events moved to the rejected table (refused or invalid).", &ob.stats.rejected),
            ("outbox_acked", "Events delivered (answered 2xx) and removed.", &ob.stats.acked),
            ("outbox_duplicates", "Events not queued again (their id was queued before).", &ob.stats.duplicates),
            (
                "outbox_clamped_future",
                "Events stamped more than 15 minutes ahead of this host's clock, sent with the send time.",
                &ob.stats.clamped_future,
            ),
            (
                "outbox_rejected_discarded",
                "Rejected events discarded because the rejected table was full.",
                &ob.stats.rejected_discarded,
            ),
        ] {
            w.single(name, "counter", help, v.load(Relaxed) as f64);
        }
    }

    let d = &s.sender;
    let tenants = d.tenants.lock().expect("not poisoned").clone();
    w.family("delivery_requests", "counter", "Measurement Protocol requests by tenant and result.");
    for (tenant, t) in &tenants {
        for r in DeliveryResult::ALL {
            w.sample(
                "delivery_requests",
                "counter",
                &[("tenant", tenant), ("result", r.label())],
                t.requests[r as usize] as f64,
            );
        }
    }
    w.family("delivery_events", "counter", "Events delivered (answered 2xx), by tenant.");
    for (tenant, t) in &tenants {
        w.sample("delivery_events", "counter", &[("tenant", tenant)], t.events_sent as f64);
    }
    w.single(
        "delivery_retries",
        "counter",
        "Requests retried after a transient failure.",
        d.retries.load(Relaxed) as f64,
    );
    w.single(
        "delivery_outages",
        "counter",
        "Delivery outages (a failure after success).",
        d.outages.load(Relaxed) as f64,
    );
    w.single(
        "delivery_cancelled",
        "counter",
        "Requests cancelled at a stop deadline (their events stay queued).",
        d.cancelled.load(Relaxed) as f64,
    );
    for (name, help, h) in [
        ("delivery_latency_seconds", "Time from sending a request to its 2xx.", &d.latency),
        ("delivery_batch_events", "Events per delivered request.", &d.batch_events),
    ] {
        w.family(name, "histogram", help);
        let (cum, sum) = h.read();
        w.histogram(name, &[], h.bounds, &cum, sum);
    }
    w.out
}

/// The standard `process_*` metrics, from /proc/self.
fn process_metrics(w: &mut Writer) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return };
    // the fields after the command name (which may hold spaces) in parentheses
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions
    let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64) };
    // fields counted from state (field 3 of stat(5)): utime 14, stime 15, starttime 22, vsize 23, rss 24
    let boot = std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
        .unwrap_or(0.0);
    let raw = |name: &str, kind: &str, help: &str, v: f64, w: &mut Writer| {
        let _ = writeln!(w.out, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
    };
    raw("process_cpu_seconds_total", "counter", "CPU time used (user and system).", (num(11) + num(12)) / hz, w);
    raw("process_start_time_seconds", "gauge", "When the process started (Unix time).", boot + num(19) / hz, w);
    raw("process_virtual_memory_bytes", "gauge", "Virtual memory size.", num(20), w);
    raw("process_resident_memory_bytes", "gauge", "Resident memory size.", num(21) * page, w);
    let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
    raw("process_open_fds", "gauge", "Open file descriptors.", fds as f64, w);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
        })
        .unwrap_or(0.0);
    raw("process_max_fds", "gauge", "The open file descriptor limit.", max_fds, w);
}
