//! Cluster mode's event sink: events go to the cluster's JetStream stream, each with its
//! deterministic id as `Nats-Msg-Id`, so that what two sensors both derive is stored once (the
//! stream's duplicate window decides, and says which copy was first).
//!
//! - `siptap run`: events of delivering tenants are committed to the local outbox first (the
//!   buffer while NATS is unreachable); [`drain_outbox`] publishes them and removes each from the
//!   outbox once the stream has acknowledged it.
//! - `siptap replay`: [`publish_batch`] publishes a batch and says, per event, whether it was new
//!   to the cluster (only those are printed).
use crate::sink::firebase::mp::QueuedEvent;
use crate::sink::firebase::outbox::Outbox;
use crate::store::cluster::Cluster;
use async_nats::jetstream::context::Publish;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

/// One event to publish: its subject, its id and its body.
pub struct Outgoing {
    pub subject: String,
    pub id: String,
    pub payload: bytes::Bytes,
}

/// Publishes events in order and waits for the stream's acknowledgements. `Ok(new)`: per event,
/// whether the stream stored it (`false`: a copy with its id was already there).
pub async fn publish_batch(cluster: &Cluster, items: Vec<Outgoing>) -> Result<Vec<bool>, String> {
    let mut acks = Vec::with_capacity(items.len());
    let started = Instant::now();
    for o in items {
        let p =
            Publish::build().payload(o.payload).message_id(o.id).header("Siptap-Sensor", cluster.cfg.sensor.as_str());
        match cluster.js.send_publish(o.subject, p).await {
            Ok(f) => acks.push(f),
            Err(e) => {
                cluster.stats.publish_errors.fetch_add(1, Relaxed);
                return Err(format!("cannot publish to the event stream: {e}"));
            }
        }
    }
    let mut out = Vec::with_capacity(acks.len());
    for f in acks {
        match f.await {
            Ok(ack) => {
                cluster.stats.published.fetch_add(1, Relaxed);
                if ack.duplicate {
                    cluster.stats.duplicates.fetch_add(1, Relaxed);
                }
                out.push(!ack.duplicate);
            }
            Err(e) => {
                cluster.stats.publish_errors.fetch_add(1, Relaxed);
                return Err(format!("the event stream did not acknowledge: {e}"));
            }
        }
    }
    if !out.is_empty() {
        cluster.stats.publish_latency.observe(started.elapsed().as_secs_f64());
    }
    Ok(out)
}

/// The stream's form of a queued event.
pub fn outgoing(cluster: &Cluster, q: &QueuedEvent) -> Outgoing {
    Outgoing {
        subject: cluster.cfg.subject(&q.tenant),
        id: q.id.clone(),
        payload: serde_json::to_vec(q).expect("serialisable").into(),
    }
}

/// Publishes what the outbox holds for `tenants`, removing each event once the stream has it,
/// until `stop`; while NATS is unreachable the events wait in the outbox (retried with a backoff
/// capped at 2 s). `until_empty`: returns once the outbox has nothing left.
pub async fn drain_outbox(
    cluster: Arc<Cluster>,
    outbox: Arc<Outbox>,
    tenants: Vec<String>,
    until_empty: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut outage_logged = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let woken = outbox.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        let mut moved = 0usize;
        let mut failed = false;
        for t in &tenants {
            let rows = match outbox.pending(t, 512, &HashSet::new()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(tenant = %t, error = %e, "cannot read the outbox");
                    continue;
                }
            };
            if rows.is_empty() {
                continue;
            }
            let items = rows.iter().map(|(_, q)| outgoing(&cluster, q)).collect();
            let keys: Vec<u64> = rows.iter().map(|(k, _)| *k).collect();
            match tokio::time::timeout(Duration::from_secs(10), publish_batch(&cluster, items)).await {
                Ok(Ok(_)) => {
                    if let Err(e) = outbox.remove(t, &keys) {
                        tracing::error!(tenant = %t, error = %e, "published but could not remove from the outbox");
                    }
                    outbox.stats.acked.fetch_add(keys.len() as u64, Relaxed);
                    moved += keys.len();
                }
                Ok(Err(e)) => {
                    failed = true;
                    if !outage_logged {
                        outage_logged = true;
                        tracing::warn!(error = %e, "cannot publish events to the cluster: they wait in the outbox");
                    }
                }
                Err(_) => {
                    failed = true;
                    cluster.stats.publish_errors.fetch_add(1, Relaxed);
                    if !outage_logged {
                        outage_logged = true;
                        tracing::warn!("the event stream does not answer: events wait in the outbox");
                    }
                }
            }
        }
        if failed {
            failures = failures.saturating_add(1);
            let wait = Duration::from_millis((250u64 << failures.min(3)).min(2000));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        if failures > 0 {
            tracing::info!("publishing to the cluster again");
        }
        failures = 0;
        outage_logged = false;
        if moved > 0 {
            continue;
        }
        if until_empty {
            return;
        }
        tokio::select! {
            _ = &mut woken => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Puts the events of the rejected stream (refused by Firebase, invalid, too old) back into the
/// event stream, for the delivery workers to try again (after a fix of the cause), and removes
/// them from the rejected stream. `tenant`: only that tenant's. Returns how many went back.
pub async fn requeue_rejected(cluster: &Cluster, tenant: Option<&str>) -> Result<u64, String> {
    let name = format!("{}_rejected", cluster.cfg.prefix);
    let mut stream = cluster.js.get_stream(&name).await.map_err(|e| format!("cannot open {name}: {e}"))?;
    let state = stream.info().await.map_err(|e| format!("cannot read {name}: {e}"))?.state.clone();
    let mut n = 0;
    for seq in state.first_sequence..=state.last_sequence {
        let Ok(m) = stream.get_raw_message(seq).await else { continue };
        let Ok(q) = serde_json::from_slice::<QueuedEvent>(&m.payload) else { continue };
        if tenant.is_some_and(|t| t != q.tenant) {
            continue;
        }
        // a new id: the original may still be in the duplicate window
        let mut o = outgoing(cluster, &q);
        o.id = format!("{}:requeued:{seq}", q.id);
        publish_batch(cluster, vec![o]).await?;
        stream.delete_message(seq).await.map_err(|e| format!("cannot remove message {seq} from {name}: {e}"))?;
        n += 1;
    }
    Ok(n)
}
