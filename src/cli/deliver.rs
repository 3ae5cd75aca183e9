//! `siptap flush`, and the delivery step of `replay --send`: send what the outbox holds.
use anyhow::{Result, bail};
use siptap::config::Config;
use siptap::sink::firebase::Delivery;
use siptap::sink::firebase::outbox::Outbox;
use siptap::sink::firebase::sender::{self, SenderConfig, SenderStats};
use std::collections::HashSet;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub fn flush(config: PathBuf, state: PathBuf, timeout: u64, stats: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let key = siptap::sink::firebase::identity_key(&state)?;
    let outbox = Arc::new(Outbox::open(
        &state,
        cfg.delivery.max_outbox_events,
        cfg.delivery.when_full,
        cfg.limits.store_cache_mib << 20,
    )?);
    deliver(&cfg, &Delivery::new(&cfg, &key), outbox, timeout, stats)
}

/// Sends the outbox until it is empty or `timeout` seconds pass.
pub fn deliver(cfg: &Config, d: &Delivery, outbox: Arc<Outbox>, timeout: u64, stats: bool) -> Result<()> {
    let sender_stats = Arc::new(SenderStats::default());
    let scfg = SenderConfig {
        max_in_flight: cfg.delivery.max_in_flight,
        request_timeout: Duration::from_secs(cfg.delivery.request_timeout_secs),
        max_backoff: Duration::from_secs(cfg.delivery.max_backoff_secs),
        poll: Duration::from_millis(100),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    rt.block_on(sender::run(
        outbox.clone(),
        d.targets(),
        scfg,
        sender_stats.clone(),
        true,
        Some(deadline),
        Arc::new(AtomicBool::new(false)),
    ));
    if stats {
        let mut err = std::io::stderr().lock();
        let o = &outbox.stats;
        for (k, v) in [
            ("outbox_queued", o.queued.load(Relaxed)),
            ("outbox_dropped_full", o.dropped_full.load(Relaxed)),
            ("outbox_dropped_too_old", o.dropped_too_old.load(Relaxed)),
            ("outbox_rejected", o.rejected.load(Relaxed)),
            ("outbox_left", outbox.len()),
            ("delivery_requests_ok", sender_stats.requests_ok.load(Relaxed)),
            ("delivery_events_sent", sender_stats.events_sent.load(Relaxed)),
            ("delivery_retries", sender_stats.retries.load(Relaxed)),
            ("delivery_transport_errors", sender_stats.transport_errors.load(Relaxed)),
            ("delivery_5xx_429", sender_stats.http_5xx_429.load(Relaxed)),
            ("delivery_4xx", sender_stats.http_4xx.load(Relaxed)),
            ("delivery_invalid_not_sent", sender_stats.invalid_local.load(Relaxed)),
        ] {
            writeln!(err, "{k:32} {v}")?;
        }
    }
    // only the delivering tenants' queues count: a tenant since disabled keeps its events
    let targets: HashSet<String> = d.targets().into_iter().map(|t| t.tenant).collect();
    let left: usize =
        targets.iter().map(|t| outbox.pending(t, usize::MAX, &HashSet::new()).map(|v| v.len()).unwrap_or(0)).sum();
    if left > 0 {
        bail!("{left} event(s) not delivered within {timeout} s; they stay in the outbox (`siptap flush` sends them)");
    }
    let refused = sender_stats.http_4xx.load(Relaxed) + sender_stats.invalid_local.load(Relaxed);
    if refused > 0 {
        bail!("{refused} request(s) refused or invalid, not retried; kept in the outbox's rejected table");
    }
    Ok(())
}
