//! Sends the outbox to each tenant's Measurement Protocol endpoint: batches of one app instance,
//! a bounded number of requests in flight per tenant, jittered exponential backoff on transport
//! errors, 5xx and 429, never a retry of a 4xx (kept for inspection), and events past GA4's
//! 72-hour window dropped with a count and a log line. An event leaves the outbox only after a 2xx.
use super::mp::{self, MAX_AGE_MICROS, QueuedEvent};
use super::outbox::Outbox;
use super::{Secret, Target};
use crate::clock::now_micros;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

#[derive(Debug, Default)]
pub struct SenderStats {
    pub requests_ok: AtomicU64,
    pub events_sent: AtomicU64,
    pub retries: AtomicU64,
    pub transport_errors: AtomicU64,
    pub http_5xx_429: AtomicU64,
    pub http_4xx: AtomicU64,
    pub invalid_local: AtomicU64,
    /// Delay of each request from send to 2xx, in µs (the last 10,000).
    pub latencies_us: Mutex<Vec<u64>>,
    pub latency_sum_us: AtomicU64,
    pub latency_count: AtomicU64,
}

pub struct SenderConfig {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub max_backoff: Duration,
    pub poll: Duration,
}

/// The collect URL with its query; the secret is in it, so this string is never logged.
fn collect_url(base: &str, debug: bool, app_id: &str, secret: &Secret) -> String {
    let path = if debug { "/debug/mp/collect" } else { "/mp/collect" };
    format!("{}{path}?firebase_app_id={}&api_secret={}", base.trim_end_matches('/'), enc(app_id), enc(secret.expose()))
}

fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Posts a body to a tenant's debug endpoint and returns its validation messages.
pub async fn debug_validate(client: &reqwest::Client, t: &Target, body: Vec<u8>) -> Result<Vec<String>, String> {
    let url = collect_url(&t.base_url, true, &t.app_id, &t.api_secret);
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    let v: serde_json::Value = resp.json().await.map_err(|e| e.without_url().to_string())?;
    Ok(v["validationMessages"].as_array().map(|a| a.iter().map(|m| m.to_string()).collect()).unwrap_or_default())
}

/// Delivers until the outbox is empty (`until_empty`) or `deadline` passes, or `stop` is set.
pub async fn run(
    outbox: Arc<Outbox>,
    targets: Vec<Target>,
    cfg: SenderConfig,
    stats: Arc<SenderStats>,
    until_empty: bool,
    deadline: Option<Instant>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let client = reqwest::Client::builder().timeout(cfg.request_timeout).build().expect("TLS backend available");
    let cfg = Arc::new(cfg);
    let mut tasks = Vec::new();
    for t in targets {
        tasks.push(tokio::spawn(tenant_loop(
            outbox.clone(),
            t,
            client.clone(),
            cfg.clone(),
            stats.clone(),
            until_empty,
            deadline,
            stop.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn tenant_loop(
    outbox: Arc<Outbox>,
    t: Target,
    client: reqwest::Client,
    cfg: Arc<SenderConfig>,
    stats: Arc<SenderStats>,
    until_empty: bool,
    deadline: Option<Instant>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let url = Arc::new(collect_url(&t.base_url, false, &t.app_id, &t.api_secret));
    let sem = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let in_flight: Arc<Mutex<HashSet<u64>>> = Arc::default();
    // backoff shared by the tenant's requests: (failures in a row, paused until)
    let backoff: Arc<Mutex<(u32, Option<Instant>)>> = Arc::default();
    loop {
        let done = stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d);
        let busy = !in_flight.lock().expect("not poisoned").is_empty();
        if done {
            // wait for the requests in flight, then stop
            let _ = sem.acquire_many(cfg.max_in_flight.max(1) as u32).await;
            return;
        }
        let paused = backoff.lock().expect("not poisoned").1;
        if let Some(until) = paused
            && until > Instant::now()
        {
            tokio::time::sleep_until(until.into()).await;
            continue;
        }
        // registered before looking, so that events queued meanwhile wake us
        let woken = outbox.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let skip = in_flight.lock().expect("not poisoned").clone();
        let rows = match outbox.pending(&t.tenant, 1000, &skip) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant = %t.tenant, error = %e, "cannot read the outbox");
                tokio::time::sleep(cfg.poll).await;
                continue;
            }
        };
        if rows.is_empty() {
            if until_empty && !busy {
                return;
            }
            tokio::select! {
                _ = &mut woken => {}
                _ = tokio::time::sleep(cfg.poll) => {}
            }
            continue;
        }
        let now = now_micros();
        let (old, fresh): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|(_, e)| now - e.timestamp_micros > MAX_AGE_MICROS);
        if !old.is_empty() {
            let ids: Vec<u64> = old.iter().map(|(i, _)| *i).collect();
            tracing::warn!(tenant = %t.tenant, events = ids.len(), "events older than GA4's 72-hour window dropped");
            outbox.stats.dropped_too_old.fetch_add(ids.len() as u64, Ordering::Relaxed);
            let _ = outbox.remove(&t.tenant, &ids);
        }
        let refs: Vec<&QueuedEvent> = fresh.iter().map(|(_, e)| e).collect();
        // each queued event's outbox key, by its address (batches hand back references)
        let addr = |e: &QueuedEvent| e as *const QueuedEvent as usize;
        let key_of: std::collections::HashMap<usize, u64> = fresh.iter().map(|(i, e)| (addr(e), *i)).collect();
        let ids_of = |batch: &[&QueuedEvent]| -> Vec<u64> { batch.iter().map(|b| key_of[&addr(b)]).collect() };
        for batch in mp::batches(&refs) {
            let permit = sem.clone().acquire_owned().await.expect("semaphore open");
            let ids = ids_of(&batch);
            let body = mp::body(&batch);
            in_flight.lock().expect("not poisoned").extend(ids.iter().copied());
            let problems = mp::validate(&body, now_micros());
            if !problems.is_empty() {
                // the endpoint would drop it silently: keep it for inspection instead
                tracing::error!(tenant = %t.tenant, problems = ?problems, "invalid request not sent");
                stats.invalid_local.fetch_add(1, Ordering::Relaxed);
                let _ = outbox.reject(&t.tenant, &ids, 0, &body, &problems.join("; "));
                in_flight.lock().expect("not poisoned").retain(|i| !ids.contains(i));
                drop(permit);
                continue;
            }
            let (client, url, outbox, stats, in_flight, backoff, tenant, cfg) = (
                client.clone(),
                url.clone(),
                outbox.clone(),
                stats.clone(),
                in_flight.clone(),
                backoff.clone(),
                t.tenant.clone(),
                cfg.clone(),
            );
            tokio::spawn(async move {
                let started = Instant::now();
                let res = client
                    .post(url.as_str())
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let outcome = match res {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let answer = r.text().await.unwrap_or_default();
                        Err((Some(status), answer))
                    }
                    Err(e) => Err((None, e.without_url().to_string())),
                };
                match outcome {
                    Ok(()) => {
                        if let Err(e) = outbox.remove(&tenant, &ids) {
                            tracing::error!(%tenant, error = %e, "delivered but could not remove from the outbox");
                        }
                        stats.requests_ok.fetch_add(1, Ordering::Relaxed);
                        stats.events_sent.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        outbox.stats.acked.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        let us = started.elapsed().as_micros() as u64;
                        stats.latency_sum_us.fetch_add(us, Ordering::Relaxed);
                        stats.latency_count.fetch_add(1, Ordering::Relaxed);
                        let mut l = stats.latencies_us.lock().expect("not poisoned");
                        if l.len() >= 10_000 {
                            l.drain(..5_000);
                        }
                        l.push(us);
                        *backoff.lock().expect("not poisoned") = (0, None);
                    }
                    Err((Some(status), answer)) if (400..500).contains(&status) && status != 429 => {
                        tracing::error!(%tenant, status, "request refused; kept in the outbox's rejected table, not retried");
                        stats.http_4xx.fetch_add(1, Ordering::Relaxed);
                        outbox.stats.rejected.fetch_add(ids.len() as u64, Ordering::Relaxed);
                        let _ = outbox.reject(&tenant, &ids, status, &body, &answer);
                    }
                    Err((status, why)) => {
                        match status {
                            Some(_) => stats.http_5xx_429.fetch_add(1, Ordering::Relaxed),
                            None => stats.transport_errors.fetch_add(1, Ordering::Relaxed),
                        };
                        stats.retries.fetch_add(1, Ordering::Relaxed);
                        let mut b = backoff.lock().expect("not poisoned");
                        b.0 = b.0.saturating_add(1);
                        let base = Duration::from_millis(250).saturating_mul(1 << b.0.min(16)).min(cfg.max_backoff);
                        // full jitter: anywhere in [base/2, base]
                        let jitter = base.mul_f64(0.5 + 0.5 * pseudo_random());
                        b.1 = Some(Instant::now() + jitter);
                        tracing::warn!(%tenant, ?status, error = %why, retry_in_ms = jitter.as_millis() as u64, "delivery failed; will retry");
                    }
                }
                in_flight.lock().expect("not poisoned").retain(|i| !ids.contains(i));
                drop(permit);
            });
        }
    }
}

/// A number in [0, 1) for jitter (no need for a cryptographic generator).
fn pseudo_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
