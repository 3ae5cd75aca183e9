//! Sends the outbox to each tenant's Measurement Protocol endpoint: batches of one app instance,
//! a bounded number of requests in flight per tenant, and an event leaves the outbox only after
//! a 2xx.
//!
//! Failures: a transport error, 408, 425, 429 or 5xx is transient: the tenant enters an outage
//! and sends one probe request at a time (after `Retry-After` when the server says so, else a
//! jittered exponential backoff capped by `max_backoff`) until the endpoint answers, then goes
//! back to full speed at once. Any other 4xx says the request itself is wrong: its events move to
//! the rejected table (with the status and the server's answer) for `siptap outbox requeue`.
//! Events older than GA4's 72 hours move there too (`too_old`); events stamped more than 15
//! minutes ahead of this host's clock are sent stamped with the send time, and counted.
//! Every deadline (`--timeout`, `--send-timeout`, `run.stop_timeout_secs`) is kept to within a
//! second: requests in flight are cancelled and their events stay queued.
use super::mp::{self, MAX_AGE_MICROS, QueuedEvent};
use super::outbox::{Outbox, RejectKind};
use super::{Secret, Target};
use crate::clock::now_micros;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// How far ahead of this host's clock GA4 takes an event.
pub(crate) const FUTURE_SLACK: i64 = 15 * 60 * 1_000_000;

pub struct SenderStats {
    pub requests_ok: AtomicU64,
    pub events_sent: AtomicU64,
    pub retries: AtomicU64,
    pub transport_errors: AtomicU64,
    /// Transient HTTP answers: 408, 425, 429 and 5xx.
    pub http_5xx_429: AtomicU64,
    pub http_4xx: AtomicU64,
    pub invalid_local: AtomicU64,
    /// Outages (a transient failure after success) and requests cancelled at a deadline.
    pub outages: AtomicU64,
    pub cancelled: AtomicU64,
    /// Delay of each request from send to 2xx, in µs (the last 10,000).
    pub latencies_us: Mutex<Vec<u64>>,
    pub latency_sum_us: AtomicU64,
    pub latency_count: AtomicU64,
    /// Seconds from send to 2xx, and events per delivered request, for Prometheus.
    pub latency: Histogram,
    pub batch_events: Histogram,
    /// The same outcomes per tenant.
    pub tenants: Mutex<std::collections::BTreeMap<String, TenantDelivery>>,
}

impl Default for SenderStats {
    fn default() -> Self {
        SenderStats {
            requests_ok: AtomicU64::new(0),
            events_sent: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            transport_errors: AtomicU64::new(0),
            http_5xx_429: AtomicU64::new(0),
            http_4xx: AtomicU64::new(0),
            invalid_local: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
            latency_sum_us: AtomicU64::new(0),
            latency_count: AtomicU64::new(0),
            latency: Histogram::new(&[0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
            batch_events: Histogram::new(&[1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 25.0]),
            tenants: Mutex::new(Default::default()),
        }
    }
}

impl SenderStats {
    /// Counts one request's outcome for its tenant.
    pub(crate) fn tenant(&self, tenant: &str, result: DeliveryResult, events: u64) {
        let mut m = self.tenants.lock().expect("not poisoned");
        let t = m.entry(tenant.to_string()).or_default();
        t.requests[result as usize] += 1;
        if result == DeliveryResult::Ok {
            t.events_sent += events;
        }
    }
}

/// How a Measurement Protocol request ended, as the `result` label says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryResult {
    Ok,
    TransportError,
    Transient5xx429,
    Refused4xx,
    InvalidNotSent,
}

impl DeliveryResult {
    pub const ALL: [DeliveryResult; 5] = [
        DeliveryResult::Ok,
        DeliveryResult::TransportError,
        DeliveryResult::Transient5xx429,
        DeliveryResult::Refused4xx,
        DeliveryResult::InvalidNotSent,
    ];
    pub fn label(self) -> &'static str {
        match self {
            DeliveryResult::Ok => "ok",
            DeliveryResult::TransportError => "transport_error",
            DeliveryResult::Transient5xx429 => "5xx_429",
            DeliveryResult::Refused4xx => "4xx",
            DeliveryResult::InvalidNotSent => "invalid_not_sent",
        }
    }
}

/// One tenant's delivery counters.
#[derive(Default, Clone)]
pub struct TenantDelivery {
    pub events_sent: u64,
    pub requests: [u64; 5],
}

/// A Prometheus histogram with fixed upper bounds, updated without a lock.
pub struct Histogram {
    pub bounds: &'static [f64],
    /// Observations at or below each bound (not cumulative; the last is +Inf).
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }
    pub fn observe(&self, v: f64) {
        let i = self.bounds.iter().position(|b| v <= *b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }
    /// Cumulative counts per bound (the last is +Inf, the total), and the sum.
    pub fn read(&self) -> (Vec<u64>, f64) {
        let mut acc = 0;
        let cum = self
            .counts
            .iter()
            .map(|c| {
                acc += c.load(Ordering::Relaxed);
                acc
            })
            .collect();
        (cum, self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

pub struct SenderConfig {
    pub max_in_flight: usize,
    pub request_timeout: Duration,
    pub max_backoff: Duration,
    pub poll: Duration,
}

impl SenderConfig {
    /// The `[delivery]` settings, polling the outbox every `poll`.
    pub fn of(d: &crate::config::DeliveryCfg, poll: Duration) -> Self {
        SenderConfig {
            max_in_flight: d.max_in_flight,
            request_timeout: Duration::from_secs(d.request_timeout_secs),
            max_backoff: Duration::from_secs(d.max_backoff_secs),
            poll,
        }
    }
}

/// The collect URL with its query; the secret is in it, so this string is never logged.
pub(crate) fn collect_url(base: &str, debug: bool, app_id: &str, secret: &Secret) -> String {
    let path = if debug { "/debug/mp/collect" } else { "/mp/collect" };
    format!(
        "{}{path}?firebase_app_id={}&api_secret={}",
        base.trim_end_matches('/'),
        percent_encode(app_id),
        percent_encode(secret.expose())
    )
}

/// Percent-encoding of a query value (RFC 3986 unreserved characters kept).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An HTTP client error with its causes (never the URL, which carries the secret).
pub fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(c) = src {
        let c_text = c.to_string();
        if !s.contains(&c_text) {
            s.push_str(": ");
            s.push_str(&c_text);
        }
        src = c.source();
    }
    s
}

/// Posts a body to a tenant's debug endpoint and returns its validation messages. An endpoint
/// that cannot be reached, or answers anything but 2xx with JSON, is an error: nothing was checked.
pub async fn debug_validate(client: &reqwest::Client, t: &Target, body: Vec<u8>) -> Result<Vec<String>, String> {
    let url = collect_url(&t.base_url, true, &t.app_id, &t.api_secret);
    let resp = client.post(url).header("content-type", "application/json").body(body).send().await.map_err(describe)?;
    let status = resp.status();
    let text = resp.text().await.map_err(describe)?;
    if !status.is_success() {
        return Err(format!("HTTP {}: {}", status.as_u16(), text.chars().take(200).collect::<String>()));
    }
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the answer is not the debug endpoint's JSON: {e}"))?;
    let Some(msgs) = v.get("validationMessages").and_then(|m| m.as_array()) else {
        return Err("the answer has no validationMessages: not a debug endpoint".into());
    };
    Ok(msgs.iter().map(|m| m.to_string()).collect())
}

/// What one request came to.
pub(crate) enum Outcome {
    Ok,
    /// Worth trying again: a transport error, 408, 425, 429, 5xx.
    Transient {
        status: Option<u16>,
        why: String,
        retry_after: Option<Duration>,
    },
    /// The request itself is wrong (any other 4xx, or a 3xx).
    Final {
        status: u16,
        answer: String,
    },
}

fn transient(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Google's endpoints).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = h.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Posts one request body and classifies the answer.
pub(crate) async fn post(client: &reqwest::Client, url: &str, body: Vec<u8>) -> Outcome {
    let res = client.post(url).header("content-type", "application/json").body(body).send().await;
    match res {
        Ok(r) if r.status().is_success() => Outcome::Ok,
        Ok(r) => {
            let status = r.status().as_u16();
            let after = retry_after(r.headers());
            let answer = r.text().await.unwrap_or_default();
            if transient(status) {
                Outcome::Transient { status: Some(status), why: answer, retry_after: after }
            } else {
                Outcome::Final { status, answer }
            }
        }
        Err(e) => Outcome::Transient { status: None, why: describe(e), retry_after: None },
    }
}

/// Delivers until the outbox is empty (`until_empty`), `deadline` passes, or `stop` turns true.
pub async fn run(
    outbox: Arc<Outbox>,
    targets: Vec<Target>,
    cfg: SenderConfig,
    stats: Arc<SenderStats>,
    until_empty: bool,
    deadline: Option<Instant>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(cfg.request_timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %describe(e), "cannot start the HTTP client");
            return;
        }
    };
    let cfg = Arc::new(cfg);
    let mut tasks = JoinSet::new();
    for t in targets {
        let (outbox, client, cfg, stats, stop) =
            (outbox.clone(), client.clone(), cfg.clone(), stats.clone(), stop.clone());
        tasks.spawn(async move {
            Tenant::new(outbox, t, client, cfg, stats).run(until_empty, deadline, stop).await;
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// An outage: since when, how many probes failed, when the next one goes.
struct Outage {
    since: Instant,
    probes: u32,
    next_probe: Instant,
}

struct Tenant {
    outbox: Arc<Outbox>,
    t: Target,
    url: Arc<String>,
    client: reqwest::Client,
    cfg: Arc<SenderConfig>,
    stats: Arc<SenderStats>,
    /// Requests in flight: (outbox keys, whether it is a probe) -> outcome.
    inflight: JoinSet<(Vec<u64>, bool, Outcome, Duration)>,
    in_keys: HashSet<u64>,
    /// Requests built and not sent yet (read from the outbox in blocks): (keys, body).
    ready: std::collections::VecDeque<(Vec<u64>, Vec<u8>)>,
    outage: Option<Outage>,
    last_clamp_log: Option<Instant>,
}

impl Tenant {
    fn new(
        outbox: Arc<Outbox>,
        t: Target,
        client: reqwest::Client,
        cfg: Arc<SenderConfig>,
        stats: Arc<SenderStats>,
    ) -> Self {
        let url = Arc::new(collect_url(&t.base_url, false, &t.app_id, &t.api_secret));
        Tenant {
            outbox,
            t,
            url,
            client,
            cfg,
            stats,
            inflight: JoinSet::new(),
            in_keys: HashSet::new(),
            ready: std::collections::VecDeque::new(),
            outage: None,
            last_clamp_log: None,
        }
    }

    async fn run(mut self, until_empty: bool, deadline: Option<Instant>, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            while let Some(done) = self.inflight.try_join_next() {
                if let Ok(r) = done {
                    self.handle(r);
                }
            }
            let now = Instant::now();
            if *stop.borrow() || deadline.is_some_and(|d| now >= d) {
                // the deadline holds: what is in flight is cancelled and stays queued
                let n = self.inflight.len() as u64;
                self.inflight.abort_all();
                self.stats.cancelled.fetch_add(n, Ordering::Relaxed);
                return;
            }
            // registered before looking, so that events queued meanwhile wake us
            let outbox = self.outbox.clone();
            let woken = outbox.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let capacity = match &self.outage {
                None => self.cfg.max_in_flight.max(1).saturating_sub(self.inflight.len()),
                // one probe at a time, once its time has come
                Some(o) if now >= o.next_probe && self.inflight.is_empty() => 1,
                Some(_) => 0,
            };
            let mut sent = 0;
            if capacity > 0 {
                sent = self.send_some(capacity);
                if sent == 0 && self.inflight.is_empty() && until_empty {
                    return;
                }
            }
            let next_probe = self.outage.as_ref().map(|o| o.next_probe);
            let wait = match next_probe {
                Some(p) => {
                    p.saturating_duration_since(Instant::now()).min(self.cfg.poll.max(Duration::from_millis(50)))
                }
                None if sent > 0 => Duration::ZERO,
                None => self.cfg.poll,
            };
            let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                r = self.inflight.join_next(), if !self.inflight.is_empty() => {
                    if let Some(Ok(r)) = r {
                        self.handle(r);
                    }
                }
                _ = &mut woken, if self.outage.is_none() && capacity > 0 => {}
                _ = tokio::time::sleep(wait), if wait > Duration::ZERO || self.inflight.is_empty() => {}
                _ = tokio::time::sleep_until(until.into()) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// Sends up to `capacity` requests, reading the next block of queued events when none is
    /// ready; returns how many went.
    fn send_some(&mut self, capacity: usize) -> usize {
        if self.ready.is_empty() {
            self.prepare();
        }
        let mut sent = 0;
        while sent < capacity {
            let Some((keys, body)) = self.ready.pop_front() else { break };
            let probe = self.outage.is_some();
            let (client, url) = (self.client.clone(), self.url.clone());
            self.inflight.spawn(async move {
                let started = Instant::now();
                let outcome = post(&client, &url, body).await;
                (keys, probe, outcome, started.elapsed())
            });
            sent += 1;
        }
        sent
    }

    /// Reads a block of queued events (not in flight) and builds their requests.
    fn prepare(&mut self) {
        let rows = match self.outbox.pending(&self.t.tenant, 1000, &self.in_keys) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(tenant = %self.t.tenant, error = %e, "cannot read the outbox");
                return;
            }
        };
        if rows.is_empty() {
            return;
        }
        let now = now_micros();
        // past GA4's window: kept for inspection, not sent
        let (old, mut fresh): (Vec<_>, Vec<_>) =
            rows.into_iter().partition(|(_, e)| now - e.timestamp_micros > MAX_AGE_MICROS);
        if !old.is_empty() {
            let keys: Vec<u64> = old.iter().map(|(k, _)| *k).collect();
            tracing::warn!(tenant = %self.t.tenant, events = keys.len(), "events older than GA4's 72-hour window: not sent, kept in the rejected table (too_old)");
            let _ = self.outbox.reject(&self.t.tenant, &keys, RejectKind::TooOld, 0, "older than 72 hours when sent");
        }
        // ahead of this host's clock by more than GA4 allows: sent stamped with the send time
        let ahead = fresh.iter().filter(|(_, e)| e.timestamp_micros - now > FUTURE_SLACK).count();
        if ahead > 0 {
            for (_, e) in fresh.iter_mut().filter(|(_, e)| e.timestamp_micros - now > FUTURE_SLACK) {
                e.timestamp_micros = now;
            }
            self.outbox.stats.clamped_future.fetch_add(ahead as u64, Ordering::Relaxed);
            if self.last_clamp_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(600)) {
                self.last_clamp_log = Some(Instant::now());
                tracing::warn!(tenant = %self.t.tenant, events = ahead, "events stamped more than 15 minutes ahead of this host's clock (is the capture host's or HEP agent's clock right?): sent with the send time");
            }
        }
        let refs: Vec<&QueuedEvent> = fresh.iter().map(|(_, e)| e).collect();
        let addr = |e: &QueuedEvent| e as *const QueuedEvent as usize;
        let key_of: std::collections::HashMap<usize, u64> = fresh.iter().map(|(k, e)| (addr(e), *k)).collect();
        for batch in mp::batches(&refs) {
            let keys: Vec<u64> = batch.iter().map(|b| key_of[&addr(b)]).collect();
            let body = mp::body(&batch);
            let problems = mp::validate(&body, now_micros());
            if !problems.is_empty() {
                // the endpoint would drop it silently: keep it for inspection instead
                tracing::error!(tenant = %self.t.tenant, problems = ?problems, "invalid request not sent; kept in the rejected table");
                self.stats.invalid_local.fetch_add(1, Ordering::Relaxed);
                self.stats.tenant(&self.t.tenant, DeliveryResult::InvalidNotSent, 0);
                let _ = self.outbox.reject(&self.t.tenant, &keys, RejectKind::Invalid, 0, &problems.join("; "));
                continue;
            }
            self.in_keys.extend(keys.iter().copied());
            self.ready.push_back((keys, body));
        }
    }

    fn handle(&mut self, (keys, probe, outcome, took): (Vec<u64>, bool, Outcome, Duration)) {
        for k in &keys {
            self.in_keys.remove(k);
        }
        let tenant = self.t.tenant.clone();
        match outcome {
            Outcome::Ok => {
                if let Err(e) = self.outbox.remove(&tenant, &keys) {
                    tracing::error!(%tenant, error = %e, "delivered but could not remove from the outbox");
                }
                let s = &self.stats;
                s.requests_ok.fetch_add(1, Ordering::Relaxed);
                s.events_sent.fetch_add(keys.len() as u64, Ordering::Relaxed);
                self.outbox.stats.acked.fetch_add(keys.len() as u64, Ordering::Relaxed);
                let us = took.as_micros() as u64;
                s.latency_sum_us.fetch_add(us, Ordering::Relaxed);
                s.latency_count.fetch_add(1, Ordering::Relaxed);
                s.latency.observe(took.as_secs_f64());
                s.batch_events.observe(keys.len() as f64);
                s.tenant(&tenant, DeliveryResult::Ok, keys.len() as u64);
                let mut l = s.latencies_us.lock().expect("not poisoned");
                if l.len() >= 10_000 {
                    l.drain(..5_000);
                }
                l.push(us);
                if let Some(o) = self.outage.take() {
                    tracing::info!(%tenant, after_secs = o.since.elapsed().as_secs(), "delivery recovered: back to full speed");
                }
            }
            Outcome::Final { status, answer } => {
                tracing::error!(%tenant, status, answer = %answer.chars().take(300).collect::<String>(), "request refused; kept in the outbox's rejected table, not retried (siptap outbox)");
                self.stats.http_4xx.fetch_add(1, Ordering::Relaxed);
                self.stats.tenant(&tenant, DeliveryResult::Refused4xx, 0);
                let _ = self.outbox.reject(&tenant, &keys, RejectKind::Refused, status, &answer);
            }
            Outcome::Transient { status, why, retry_after } => {
                match status {
                    Some(_) => self.stats.http_5xx_429.fetch_add(1, Ordering::Relaxed),
                    None => self.stats.transport_errors.fetch_add(1, Ordering::Relaxed),
                };
                let result =
                    if status.is_some() { DeliveryResult::Transient5xx429 } else { DeliveryResult::TransportError };
                self.stats.tenant(&tenant, result, 0);
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                let max = self.cfg.max_backoff;
                match &mut self.outage {
                    None => {
                        // requests built before the outage are built again after it (times move on)
                        for (keys, _) in self.ready.drain(..) {
                            for k in keys {
                                self.in_keys.remove(&k);
                            }
                        }
                        self.stats.outages.fetch_add(1, Ordering::Relaxed);
                        let wait = retry_after.unwrap_or_else(|| backoff(0, max)).min(max);
                        tracing::warn!(%tenant, ?status, error = %why.chars().take(300).collect::<String>(), retry_in_ms = wait.as_millis() as u64, "delivery failing: one probe request at a time until the endpoint answers");
                        self.outage =
                            Some(Outage { since: Instant::now(), probes: 0, next_probe: Instant::now() + wait });
                    }
                    Some(o) if probe => {
                        // backoff grows per failed probe, not per request
                        o.probes = o.probes.saturating_add(1);
                        let wait = retry_after.unwrap_or_else(|| backoff(o.probes, max)).min(max);
                        o.next_probe = Instant::now() + wait;
                    }
                    Some(o) => {
                        if let Some(wait) = retry_after {
                            o.next_probe = o.next_probe.max(Instant::now() + wait.min(max));
                        }
                    }
                }
            }
        }
    }
}

/// 250 ms doubling per failed probe, capped, with jitter in [base/2, base].
pub(crate) fn backoff(probes: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250).saturating_mul(1 << probes.min(16)).min(max);
    base.mul_f64(0.5 + 0.5 * pseudo_random())
}

/// A number in [0, 1) for jitter (no need for a cryptographic generator).
fn pseudo_random() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}
