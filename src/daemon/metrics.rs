//! A localhost HTTP endpoint: Prometheus `/metrics` and `/health`.
use super::Shared;
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
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", render(&shared)),
                "/health" => {
                    if shared.healthy() {
                        ("200 OK", "text/plain", "ok\n".to_string())
                    } else {
                        ("503 Service Unavailable", "text/plain", "core loop stalled\n".to_string())
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

fn render(s: &Shared) -> String {
    let mut o = String::new();
    let snap = s.snapshot.lock().expect("not poisoned");
    let _ = writeln!(o, "# HELP siptap_up siptap is running.\n# TYPE siptap_up gauge\nsiptap_up 1");
    for (k, v) in &snap.counters {
        let _ = writeln!(o, "# TYPE siptap_{k} counter\nsiptap_{k} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP siptap_events_total Events derived, by tenant and kind.\n# TYPE siptap_events_total counter"
    );
    for ((tenant, kind), v) in &snap.events {
        let _ = writeln!(o, "siptap_events_total{{tenant=\"{tenant}\",kind=\"{kind}\"}} {v}");
    }
    drop(snap);
    let _ = writeln!(o, "# TYPE siptap_capture_packets_total counter");
    for (name, c) in &s.captures {
        let _ = writeln!(o, "siptap_capture_packets_total{{interface=\"{name}\"}} {}", c.received.load(Relaxed));
    }
    let _ = writeln!(
        o,
        "# HELP siptap_capture_kernel_drops_total Packets the kernel dropped (buffer full or interface).\n# TYPE siptap_capture_kernel_drops_total counter"
    );
    for (name, c) in &s.captures {
        let _ = writeln!(
            o,
            "siptap_capture_kernel_drops_total{{interface=\"{name}\",where=\"buffer\"}} {}",
            c.dropped.load(Relaxed)
        );
        let _ = writeln!(
            o,
            "siptap_capture_kernel_drops_total{{interface=\"{name}\",where=\"interface\"}} {}",
            c.if_dropped.load(Relaxed)
        );
    }
    if let Some(ob) = s.outbox.as_ref() {
        let _ = writeln!(o, "# TYPE siptap_outbox_depth gauge\nsiptap_outbox_depth {}", ob.len());
        for (k, v) in [
            ("outbox_queued_total", &ob.stats.queued),
            ("outbox_dropped_full_total", &ob.stats.dropped_full),
            ("outbox_dropped_too_old_total", &ob.stats.dropped_too_old),
            ("outbox_rejected_total", &ob.stats.rejected),
        ] {
            let _ = writeln!(o, "# TYPE siptap_{k} counter\nsiptap_{k} {}", v.load(Relaxed));
        }
    }
    let d = &s.sender;
    let _ = writeln!(
        o,
        "# HELP siptap_delivery_requests_total Measurement Protocol requests by result.\n# TYPE siptap_delivery_requests_total counter"
    );
    for (result, v) in [
        ("ok", &d.requests_ok),
        ("transport_error", &d.transport_errors),
        ("5xx_429", &d.http_5xx_429),
        ("4xx", &d.http_4xx),
        ("invalid_not_sent", &d.invalid_local),
    ] {
        let _ = writeln!(o, "siptap_delivery_requests_total{{result=\"{result}\"}} {}", v.load(Relaxed));
    }
    let _ = writeln!(
        o,
        "# TYPE siptap_delivery_events_total counter\nsiptap_delivery_events_total {}",
        d.events_sent.load(Relaxed)
    );
    let _ = writeln!(
        o,
        "# HELP siptap_delivery_latency_seconds Time from sending a request to its 2xx.\n# TYPE siptap_delivery_latency_seconds summary\nsiptap_delivery_latency_seconds_sum {}\nsiptap_delivery_latency_seconds_count {}",
        d.latency_sum_us.load(Relaxed) as f64 / 1e6,
        d.latency_count.load(Relaxed)
    );
    o
}
