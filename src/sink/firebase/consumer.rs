//! Cluster mode's delivery worker: takes events from the cluster's stream through one durable
//! consumer shared by every worker (any number of `siptap run` or `siptap deliver` processes
//! share the work), sends them to Firebase as the single-box sender does (batches of one app
//! instance, a bounded number of requests in flight, backoff on transient failures) and
//! acknowledges each event only after its request got a 2xx. A worker that dies mid-batch loses
//! nothing: what it had not acknowledged is delivered again after the ack wait (so an event
//! whose 2xx came just before the crash can reach Firebase twice: the documented bound).
//!
//! Refused (4xx), locally invalid and too-old events are not retried: they go to the cluster's
//! rejected stream (`PREFIX_rejected`, 30 days) with the status and the answer, and are
//! acknowledged.
use super::Target;
use super::mp::{self, MAX_AGE_MICROS, QueuedEvent};
use super::sender::{DeliveryResult, Outcome, SenderConfig, SenderStats, backoff, collect_url, post};
use crate::clock::now_micros;
use crate::store::cluster::Cluster;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// Runs until `stop` turns true, or (with `until_idle`) the stream has had nothing for that long.
pub async fn run(
    cluster: Arc<Cluster>,
    targets: Vec<Target>,
    cfg: SenderConfig,
    stats: Arc<SenderStats>,
    until_idle: Option<Duration>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder().timeout(cfg.request_timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %super::sender::describe(e), "cannot start the HTTP client");
            return;
        }
    };
    // one durable consumer per tenant: a worker takes only the tenants it can deliver
    let cfg = Arc::new(cfg);
    let mut tasks = tokio::task::JoinSet::new();
    for t in targets {
        let (cluster, client, cfg, stats, stop) =
            (cluster.clone(), client.clone(), cfg.clone(), stats.clone(), stop.clone());
        tasks.spawn(async move { run_tenant(cluster, t, client, cfg, stats, until_idle, stop).await });
    }
    while tasks.join_next().await.is_some() {}
}

/// Delivers one tenant's events from its durable consumer.
async fn run_tenant(
    cluster: Arc<Cluster>,
    target: Target,
    client: reqwest::Client,
    cfg: Arc<SenderConfig>,
    stats: Arc<SenderStats>,
    until_idle: Option<Duration>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let url = collect_url(&target.base_url, false, &target.app_id, &target.api_secret);
    let consumer_name = cluster.cfg.consumer(&target.tenant);
    let subject = cluster.cfg.subject(&target.tenant);
    let ccfg = &cluster.cfg;
    let mut logged = false;
    let consumer: jetstream::consumer::Consumer<pull::Config> = loop {
        if *stop.borrow() {
            return;
        }
        let attempt = async {
            let stream = cluster.js.get_stream(ccfg.stream()).await.map_err(|e| e.to_string())?;
            stream
                .get_or_create_consumer(
                    &consumer_name,
                    pull::Config {
                        durable_name: Some(consumer_name.clone()),
                        description: Some(format!("siptap delivery of tenant {} to Firebase", target.tenant)),
                        ack_policy: jetstream::consumer::AckPolicy::Explicit,
                        ack_wait: cfg.request_timeout + Duration::from_secs(5),
                        max_ack_pending: ccfg.max_unacked as i64,
                        filter_subject: subject.clone(),
                        max_deliver: -1,
                        num_replicas: ccfg.replicas,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(c)) => break c,
            r => {
                if !logged {
                    logged = true;
                    let why = match r {
                        Ok(Err(e)) => e,
                        _ => "timed out".into(),
                    };
                    tracing::warn!(error = %why, "delivery consumer not ready (is NATS up?): retrying");
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = stop.changed() => {}
                }
            }
        }
    };
    tracing::info!(tenant = %target.tenant, consumer = %consumer_name, "delivering from the cluster's stream");
    let mut idle_since = Instant::now();
    let mut probes = 0u32;
    let mut last_info = Instant::now() - Duration::from_secs(10);
    let mut consumer = consumer;
    loop {
        if *stop.borrow() {
            return;
        }
        if last_info.elapsed() >= Duration::from_secs(2) {
            last_info = Instant::now();
            if let Ok(Ok(i)) = tokio::time::timeout(Duration::from_secs(1), consumer.info()).await {
                cluster.stats.set_consumer(&target.tenant, i.num_pending, i.num_ack_pending as u64);
            }
        }
        // after a transient failure, one small batch (a probe) until the endpoint answers
        let n = if probes > 0 { 1 } else { ccfg.max_unacked.min(500) };
        // what is there now; when nothing is, a long poll for the next one (no busy loop, and an
        // event is taken as soon as it arrives), then what came with it
        let fetched = async {
            let mut msgs = take(&consumer, n, None).await;
            if msgs.is_empty() {
                msgs = take(&consumer, 1, Some(Duration::from_secs(1))).await;
                if !msgs.is_empty() && n > 1 {
                    msgs.extend(take(&consumer, n - 1, None).await);
                }
            }
            msgs
        };
        let msgs = tokio::select! {
            m = tokio::time::timeout(Duration::from_secs(5), fetched) => m.unwrap_or_default(),
            _ = stop.changed() => return,
        };
        if msgs.is_empty() {
            if until_idle.is_some_and(|d| idle_since.elapsed() >= d) {
                return;
            }
            if cluster.client.connection_state() != async_nats::connection::State::Connected {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    _ = stop.changed() => return,
                }
            }
            continue;
        }
        let transient = deliver(&cluster, &client, &target.tenant, &url, &cfg, &stats, msgs).await;
        if transient {
            probes = probes.saturating_add(1);
            let wait = backoff(probes - 1, cfg.max_backoff);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        } else {
            if probes > 0 {
                tracing::info!("delivery recovered: back to full speed");
            }
            probes = 0;
        }
        idle_since = Instant::now();
    }
}

/// Up to `n` messages: those available now (`wait` None), or waiting up to `wait` for them.
async fn take(
    consumer: &jetstream::consumer::Consumer<pull::Config>,
    n: usize,
    wait: Option<Duration>,
) -> Vec<jetstream::Message> {
    let mut msgs = Vec::new();
    let stream = match wait {
        None => consumer.fetch().max_messages(n).messages().await,
        Some(w) => consumer.batch().max_messages(n).expires(w).messages().await,
    };
    if let Ok(mut s) = stream {
        while let Some(Ok(m)) = s.next().await {
            msgs.push(m);
        }
    }
    msgs
}

/// Delivers one fetched batch of a tenant's events; `true` when a request failed transiently
/// (those events are handed back to the stream for later).
async fn deliver(
    cluster: &Cluster,
    client: &reqwest::Client,
    tenant: &str,
    url: &str,
    cfg: &SenderConfig,
    stats: &SenderStats,
    msgs: Vec<jetstream::Message>,
) -> bool {
    let now = now_micros();
    let mut rows: Vec<(jetstream::Message, QueuedEvent)> = Vec::with_capacity(msgs.len());
    for m in msgs {
        if m.info().is_ok_and(|i| i.delivered > 1) {
            cluster.stats.consumer_redelivered.fetch_add(1, Relaxed);
        }
        let Some(mut q) = serde_json::from_slice::<QueuedEvent>(&m.payload).ok().filter(|q| q.tenant == tenant) else {
            // not an event of this tenant's (the subject says it is): kept, not sent
            reject_raw(cluster, &m, "not a queued event of this tenant").await;
            continue;
        };
        if now - q.timestamp_micros > MAX_AGE_MICROS {
            reject(cluster, &q, &m, 0, "older than 72 hours when sent").await;
            continue;
        }
        if q.timestamp_micros - now > super::sender::FUTURE_SLACK {
            q.timestamp_micros = now;
        }
        rows.push((m, q));
    }
    // requests as the single box builds them: one app instance each, in time order
    let refs: Vec<&QueuedEvent> = rows.iter().map(|(_, q)| q).collect();
    let addr = |e: &QueuedEvent| e as *const QueuedEvent as usize;
    let index: HashMap<usize, usize> = rows.iter().enumerate().map(|(i, (_, q))| (addr(q), i)).collect();
    let mut requests: Vec<(Vec<usize>, Vec<u8>)> = Vec::new();
    for batch in mp::batches(&refs) {
        let idx: Vec<usize> = batch.iter().map(|q| index[&addr(q)]).collect();
        let body = mp::body(&batch);
        let problems = mp::validate(&body, now_micros());
        if !problems.is_empty() {
            stats.invalid_local.fetch_add(1, Relaxed);
            stats.tenant(tenant, DeliveryResult::InvalidNotSent, 0);
            for &i in &idx {
                reject(cluster, &rows[i].1, &rows[i].0, 0, &problems.join("; ")).await;
            }
            continue;
        }
        requests.push((idx, body));
    }
    let results: Vec<(Vec<usize>, Outcome, Duration)> = futures_util::stream::iter(requests)
        .map(|(idx, body)| async move {
            let started = Instant::now();
            let o = post(client, url, body).await;
            (idx, o, started.elapsed())
        })
        .buffer_unordered(cfg.max_in_flight.max(1))
        .collect()
        .await;
    let mut transient = false;
    for (idx, outcome, took) in results {
        match outcome {
            Outcome::Ok => {
                for &i in &idx {
                    let _ = rows[i].0.ack().await;
                }
                stats.requests_ok.fetch_add(1, Relaxed);
                stats.events_sent.fetch_add(idx.len() as u64, Relaxed);
                stats.latency_sum_us.fetch_add(took.as_micros() as u64, Relaxed);
                stats.latency_count.fetch_add(1, Relaxed);
                stats.latency.observe(took.as_secs_f64());
                stats.batch_events.observe(idx.len() as f64);
                stats.tenant(tenant, DeliveryResult::Ok, idx.len() as u64);
            }
            Outcome::Final { status, answer } => {
                tracing::error!(%tenant, status, answer = %answer.chars().take(300).collect::<String>(), "request refused; its events go to the cluster's rejected stream, not retried");
                stats.http_4xx.fetch_add(1, Relaxed);
                stats.tenant(tenant, DeliveryResult::Refused4xx, 0);
                for &i in &idx {
                    reject(cluster, &rows[i].1, &rows[i].0, status, &answer).await;
                }
            }
            Outcome::Transient { status, why, retry_after } => {
                transient = true;
                match status {
                    Some(_) => stats.http_5xx_429.fetch_add(1, Relaxed),
                    None => stats.transport_errors.fetch_add(1, Relaxed),
                };
                let result =
                    if status.is_some() { DeliveryResult::Transient5xx429 } else { DeliveryResult::TransportError };
                stats.tenant(tenant, result, 0);
                stats.retries.fetch_add(1, Relaxed);
                tracing::warn!(%tenant, ?status, error = %why.chars().take(300).collect::<String>(), "delivery failing: events handed back to the stream");
                let delay = retry_after.unwrap_or(Duration::from_millis(250)).min(cfg.max_backoff);
                for &i in &idx {
                    let _ = rows[i].0.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
    }
    transient
}

/// Keeps a message that is not an event of the consumer's tenant in the rejected stream as it is.
async fn reject_raw(cluster: &Cluster, m: &jetstream::Message, why: &str) {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Siptap-Status", "0");
    h.insert("Siptap-Answer", why);
    let subject = format!("{}.rejected._", cluster.cfg.prefix);
    let kept = match cluster.js.publish_with_headers(subject, h, m.payload.clone()).await {
        Ok(f) => f.await.is_ok(),
        Err(_) => false,
    };
    let _ = if kept { m.ack().await } else { m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await };
}

/// Keeps a refused event in the rejected stream, then acknowledges it (not retried).
async fn reject(cluster: &Cluster, q: &QueuedEvent, m: &jetstream::Message, status: u16, answer: &str) {
    let subject = format!("{}.rejected.{}", cluster.cfg.prefix, crate::config::subject_token(&q.tenant));
    let mut h = async_nats::HeaderMap::new();
    h.insert("Siptap-Status", status.to_string().as_str());
    let answer: String = answer.chars().filter(|c| !c.is_control()).take(300).collect();
    h.insert("Siptap-Answer", answer.as_str());
    let body: bytes::Bytes = serde_json::to_vec(q).expect("serialisable").into();
    let kept = match cluster.js.publish_with_headers(subject, h, body).await {
        Ok(f) => f.await.is_ok(),
        Err(_) => false,
    };
    match kept {
        true => {
            let _ = m.ack().await;
        }
        false => {
            // not kept yet: leave it to be delivered again (and kept then)
            let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(5)))).await;
        }
    }
}
