//! A localhost HTTP endpoint: Prometheus `/metrics` and `/health`.
//!
//! The exposition is built with `prometheus-client` (the Prometheus project's Rust client: metric
//! types, HELP, the `_total` suffix and escaping come from it, in the OpenMetrics text format),
//! from the core's published counters through a [`Collector`]; what each counter is comes from
//! `crate::counters`. HTTP is hyper serving an axum router, behind a connection cap (a semaphore
//! on accept), hyper's header-read timeout (an idle or slow client is dropped), and tower's
//! concurrency limit on requests.
use super::Shared;
use crate::counters;
use crate::sink::firebase::sender::{DeliveryResult, Histogram};
use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

/// Connections served at once; more are closed at once (a slow or idle client cannot hold the
/// endpoint, and file descriptors stay bounded).
const MAX_CONNECTIONS: usize = 256;
/// How long a client may take to send its request's head.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// Requests handled at once (rendering reads the outbox every 15 s at most).
const MAX_REQUESTS: usize = 16;
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC: &str = "text/plain; version=0.0.4; charset=utf-8";

/// OpenMetrics text to the classic Prometheus text format: a counter family is named with its
/// `_total` suffix in HELP and TYPE (OpenMetrics names the family without it), and the `# EOF`
/// and `# UNIT` lines go. Samples, labels and escaping are the same in both.
fn classic(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let suffix = if ty == "counter" && !name.ends_with("_total") { "_total" } else { "" };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {name}{suffix} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name}{suffix} {ty}\n"));
            continue;
        }
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(h) = help.take() {
            out.push_str(&format!("# HELP {h}\n"));
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

pub async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .fallback(|| async { (StatusCode::NOT_FOUND, "try /metrics or /health\n") })
        .layer(tower::limit::ConcurrencyLimitLayer::new(MAX_REQUESTS))
        .with_state(shared);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(_) => {
                // out of file descriptors, say: wait instead of spinning
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(REQUEST_TIMEOUT).keep_alive(false);
            // a bound on the whole exchange too: a client that reads the answer slowly goes
            let _ = tokio::time::timeout(
                REQUEST_TIMEOUT * 5,
                http.serve_connection(hyper_util::rt::TokioIo::new(conn), service),
            )
            .await;
        });
    }
}

async fn metrics(
    axum::extract::State(s): axum::extract::State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    // Prometheus asks for OpenMetrics; anything else (curl, promtool, older scrapers) gets the
    // classic text format, as the Prometheus project's own clients do
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|a| a.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let outbox = outbox_counts(&s).await;
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ProcessCollector));
    registry.sub_registry_with_prefix("siptap").register_collector(Box::new(SiptapCollector { s, outbox }));
    let mut body = String::with_capacity(32 << 10);
    match prometheus_client::encoding::text::encode(&mut body, &registry) {
        Ok(()) if openmetrics => (StatusCode::OK, [(header::CONTENT_TYPE, OPENMETRICS)], body),
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, CLASSIC)], classic(&body)),
        Err(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], "encoding failed\n".into())
        }
    }
}

async fn health(axum::extract::State(s): axum::extract::State<Arc<Shared>>) -> impl IntoResponse {
    let ok = s.healthy();
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, health_body(&s, ok))
}

/// Per-tenant outbox counts read the queue's keys: at most every 15 s, off the async thread.
type TenantCounts = BTreeMap<String, crate::sink::firebase::outbox::TenantCounts>;
static OUTBOX_COUNTS: std::sync::Mutex<Option<(std::time::Instant, Arc<TenantCounts>)>> = std::sync::Mutex::new(None);

async fn outbox_counts(s: &Arc<Shared>) -> Arc<TenantCounts> {
    if let Some((at, c)) = OUTBOX_COUNTS.lock().expect("not poisoned").as_ref()
        && at.elapsed() < Duration::from_secs(15)
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

type Fmt = Result<(), std::fmt::Error>;

/// One sample without labels.
fn single(enc: &mut DescriptorEncoder, name: &str, help: &str, ty: MetricType, v: f64) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    value(&mut m, ty, v)
}

fn value(m: &mut MetricEncoder, ty: MetricType, v: f64) -> Fmt {
    match ty {
        // integral counters stay integers in the text
        MetricType::Counter if v.fract() == 0.0 => m.encode_counter::<NoLabelSet, u64, u64>(&(v as u64), None),
        MetricType::Counter => m.encode_counter::<NoLabelSet, f64, u64>(&v, None),
        _ if v.fract() == 0.0 && v.abs() < 1e15 => m.encode_gauge(&(v as i64)),
        _ => m.encode_gauge(&v),
    }
}

/// A family: one sample per label set.
fn family(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    ty: MetricType,
    rows: &[(Vec<(&str, String)>, f64)],
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, ty)?;
    for (labels, v) in rows {
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut f = m.encode_family(&labels)?;
        value(&mut f, ty, *v)?;
    }
    Ok(())
}

fn histogram(enc: &mut DescriptorEncoder, name: &str, help: &str, h: &Histogram) -> Fmt {
    let (cum, sum) = h.read();
    let buckets: Vec<(f64, u64)> =
        cum.iter().enumerate().map(|(i, n)| (h.bounds.get(i).copied().unwrap_or(f64::INFINITY), *n)).collect();
    let count = cum.last().copied().unwrap_or(0);
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

/// siptap's own metrics (prefixed `siptap_` by the registry), read on each scrape.
struct SiptapCollector {
    s: Arc<Shared>,
    outbox: Arc<TenantCounts>,
}

impl std::fmt::Debug for SiptapCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SiptapCollector")
    }
}

impl Collector for SiptapCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        use MetricType::{Counter, Gauge};
        let s = &self.s;
        let e = &mut enc;
        single(e, "up", "siptap is running.", Gauge, 1.0)?;
        // a gauge at 1 with the facts as labels (the OpenMetrics info type is not understood by
        // promtool's classic parser)
        family(
            e,
            "build_info",
            "Version of this siptap, which configuration it runs and its process id (always 1).",
            Gauge,
            &[(
                vec![
                    ("version", env!("CARGO_PKG_VERSION").to_string()),
                    ("config", s.config_path.clone()),
                    ("pid", std::process::id().to_string()),
                ],
                1.0,
            )],
        )?;
        single(e, "start_time_seconds", "When siptap started (Unix time).", Gauge, s.started_unix as f64)?;
        let r = &s.reload;
        family(
            e,
            "config_reloads",
            "Configuration reloads (SIGHUP) by result.",
            Counter,
            &[
                (vec![("result", "ok".into())], r.ok.load(Relaxed) as f64),
                (vec![("result", "refused".into())], r.failed.load(Relaxed) as f64),
            ],
        )?;
        single(
            e,
            "config_last_reload_successful",
            "1 if the last reload (or the start) applied the file, 0 if it was refused and the old configuration runs.",
            Gauge,
            if r.last_ok.load(Relaxed) { 1.0 } else { 0.0 },
        )?;
        single(
            e,
            "config_last_reload_timestamp_seconds",
            "When the configuration was last loaded or a reload refused (Unix time).",
            Gauge,
            r.last_unix_micros.load(Relaxed) as f64 / 1e6,
        )?;
        single(
            e,
            "last_tick_timestamp_seconds",
            "When the core loop last published its counters (Unix time); stale means stalled.",
            Gauge,
            s.last_tick.load(Relaxed) as f64 / 1e6,
        )?;

        let (core, events) = {
            let snap = s.snapshot.lock().expect("not poisoned");
            (snap.counters.clone(), snap.events.clone())
        };
        for (k, v) in &core {
            let Some(m) = counters::meta(k) else { continue };
            let ty = if m.kind == counters::Kind::Counter { Counter } else { Gauge };
            single(e, m.name, m.help, ty, *v as f64 * m.scale)?;
        }
        let rows: Vec<_> =
            events.iter().map(|((t, k), v)| (vec![("tenant", t.clone()), ("kind", k.clone())], *v as f64)).collect();
        family(e, "events", "Events derived, by tenant and kind (before delivery).", Counter, &rows)?;
        let mut tenants: Vec<String> = events.keys().map(|(t, _)| t.clone()).collect();
        tenants.dedup();

        let rows: Vec<_> =
            s.captures.iter().map(|(n, c)| (vec![("interface", n.clone())], c.received.load(Relaxed) as f64)).collect();
        family(
            e,
            "capture_packets",
            "Packets read from each capture interface (after the BPF filter).",
            Counter,
            &rows,
        )?;
        let rows: Vec<_> = s
            .captures
            .iter()
            .flat_map(|(n, c)| {
                [
                    (vec![("interface", n.clone()), ("where", "buffer".into())], c.dropped.load(Relaxed) as f64),
                    (vec![("interface", n.clone()), ("where", "interface".into())], c.if_dropped.load(Relaxed) as f64),
                ]
            })
            .collect();
        family(
            e,
            "capture_kernel_drops",
            "Packets the kernel dropped before siptap read them (where=buffer: raise run.buffer_mib).",
            Counter,
            &rows,
        )?;

        if let Some(ob) = s.outbox.as_ref() {
            single(e, "outbox_events", "Events waiting in the outbox (all tenants).", Gauge, ob.len() as f64)?;
            single(
                e,
                "outbox_max_events",
                "The outbox's bound (delivery.max_outbox_events).",
                Gauge,
                ob.max_events() as f64,
            )?;
            // every tenant, at zero when nothing waits
            let mut depth: BTreeMap<&str, u64> = tenants.iter().map(|t| (t.as_str(), 0)).collect();
            for (t, c) in self.outbox.iter() {
                depth.insert(t, c.queued);
            }
            let rows: Vec<_> = depth.iter().map(|(t, n)| (vec![("tenant", t.to_string())], *n as f64)).collect();
            family(
                e,
                "outbox_tenant_events",
                "Events waiting in the outbox, by tenant (read every 15 s).",
                Gauge,
                &rows,
            )?;
            let rows: Vec<_> = self
                .outbox
                .iter()
                .flat_map(|(t, c)| {
                    c.rejected
                        .iter()
                        .map(move |(reason, n)| (vec![("tenant", t.clone()), ("reason", reason.clone())], *n as f64))
                })
                .collect();
            family(
                e,
                "outbox_rejected_events",
                "Events kept in the rejected table (not sent), by tenant and reason; see `siptap outbox`.",
                Gauge,
                &rows,
            )?;
            let st = &ob.stats;
            for (name, help, v) in [
                ("outbox_queued", "Events put in the outbox.", &st.queued),
                ("outbox_dropped_full", "Events dropped because the outbox was full.", &st.dropped_full),
                ("outbox_dropped_too_old", "Events dropped as older than GA4's 72-hour window.", &st.dropped_too_old),
                ("outbox_rejected", "Events moved to the rejected table (refused or invalid).", &st.rejected),
                ("outbox_acked", "Events delivered (answered 2xx) and removed.", &st.acked),
                ("outbox_duplicates", "Events not queued again (their id was queued before).", &st.duplicates),
                (
                    "outbox_clamped_future",
                    "Events stamped more than 15 minutes ahead of this host's clock, sent with the send time.",
                    &st.clamped_future,
                ),
                (
                    "outbox_rejected_discarded",
                    "Rejected events discarded because the rejected table was full.",
                    &st.rejected_discarded,
                ),
            ] {
                single(e, name, help, Counter, v.load(Relaxed) as f64)?;
            }
        }

        let d = &s.sender;
        let per_tenant = d.tenants.lock().expect("not poisoned").clone();
        let rows: Vec<_> = per_tenant
            .iter()
            .flat_map(|(t, td)| {
                DeliveryResult::ALL.map(|r| {
                    (vec![("tenant", t.clone()), ("result", r.label().to_string())], td.requests[r as usize] as f64)
                })
            })
            .collect();
        family(e, "delivery_requests", "Measurement Protocol requests by tenant and result.", Counter, &rows)?;
        let rows: Vec<_> =
            per_tenant.iter().map(|(t, td)| (vec![("tenant", t.clone())], td.events_sent as f64)).collect();
        family(e, "delivery_events", "Events delivered (answered 2xx), by tenant.", Counter, &rows)?;
        single(
            e,
            "delivery_retries",
            "Requests retried after a transient failure.",
            Counter,
            d.retries.load(Relaxed) as f64,
        )?;
        single(
            e,
            "delivery_outages",
            "Delivery outages (a failure after success).",
            Counter,
            d.outages.load(Relaxed) as f64,
        )?;
        single(
            e,
            "delivery_cancelled",
            "Requests cancelled at a stop deadline (their events stay queued).",
            Counter,
            d.cancelled.load(Relaxed) as f64,
        )?;
        histogram(e, "delivery_latency_seconds", "Time from sending a request to its 2xx.", &d.latency)?;
        histogram(e, "delivery_batch_events", "Events per delivered request.", &d.batch_events)?;
        if let Some(c) = &self.s.cluster {
            histogram(
                e,
                "cluster_publish_latency_seconds",
                "Cluster mode: time from publishing a batch of events to the stream's last acknowledgement.",
                &c.publish_latency,
            )?;
        }
        Ok(())
    }
}

/// The standard `process_*` metrics, from /proc/self.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Fmt {
        use MetricType::{Counter, Gauge};
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return Ok(()) };
        // the fields after the command name (which may hold spaces) in parentheses
        let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { return Ok(()) };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // SAFETY: sysconf has no preconditions
        let (hz, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK) as f64, libc::sysconf(libc::_SC_PAGESIZE) as f64) };
        let boot = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("btime ").and_then(|v| v.trim().parse::<f64>().ok())))
            .unwrap_or(0.0);
        // counted from the state field (stat(5) field 3): utime 14, stime 15, starttime 22, vsize 23, rss 24
        let e = &mut enc;
        single(e, "process_cpu_seconds", "CPU time used (user and system).", Counter, (num(11) + num(12)) / hz)?;
        single(e, "process_start_time_seconds", "When the process started (Unix time).", Gauge, boot + num(19) / hz)?;
        single(e, "process_virtual_memory_bytes", "Virtual memory size.", Gauge, num(20))?;
        single(e, "process_resident_memory_bytes", "Resident memory size.", Gauge, num(21) * page)?;
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0);
        single(e, "process_open_fds", "Open file descriptors.", Gauge, fds as f64)?;
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Max open files"))
                    .and_then(|l| l.split_whitespace().nth(3).and_then(|v| v.parse::<f64>().ok()))
            })
            .unwrap_or(0.0);
        single(e, "process_max_fds", "The open file descriptor limit.", Gauge, max_fds)
    }
}

#[cfg(test)]
mod tests {
    use super::classic;

    #[test]
    fn openmetrics_counters_become_classic_total_families() {
        let om = "# HELP x_requests Requests.\n# TYPE x_requests counter\nx_requests_total{a=\"b\"} 3\n\
                  # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n# EOF\n";
        assert_eq!(
            classic(om),
            "# HELP x_requests_total Requests.\n# TYPE x_requests_total counter\nx_requests_total{a=\"b\"} 3\n\
             # HELP x_up Up.\n# TYPE x_up gauge\nx_up 1\n"
        );
    }
}
