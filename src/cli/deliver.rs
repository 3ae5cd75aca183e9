//! `siptap flush`, and the delivery step of `replay --send`: send what the outbox holds, within
//! a deadline kept to the second.
use anyhow::{Result, bail};
use siptap::config::Config;
use siptap::sink::firebase::Delivery;
use siptap::sink::firebase::outbox::Outbox;
use siptap::sink::firebase::sender::{self, SenderConfig, SenderStats};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

pub fn open_outbox(cfg: &Config, state: &std::path::Path) -> Result<Outbox> {
    Outbox::open(state, cfg.delivery.max_outbox_events, cfg.delivery.when_full, cfg.limits.store_cache_mib << 20)
}

pub fn flush(config: PathBuf, state: PathBuf, timeout: u64, stats: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let key = siptap::sink::firebase::identity_key(&state)?;
    let outbox = Arc::new(open_outbox(&cfg, &state)?);
    deliver(&cfg, &Delivery::new(&cfg, &key), outbox, timeout, stats, 0)
}

/// Sends the outbox until it is empty or `timeout` seconds pass. `dropped`: events the caller
/// could not queue (a full outbox), reported with the rest.
pub fn deliver(cfg: &Config, d: &Delivery, outbox: Arc<Outbox>, timeout: u64, stats: bool, dropped: u64) -> Result<()> {
    let sender_stats = Arc::new(SenderStats::default());
    let scfg = SenderConfig::of(&cfg.delivery, Duration::from_millis(100));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    rt.block_on(sender::run(outbox.clone(), d.targets(), scfg, sender_stats.clone(), true, Some(deadline), stop));
    drop(rt);
    // only the delivering tenants' queues count (a tenant since disabled keeps its events),
    // counted without reading them
    let left: u64 = d.targets().iter().map(|t| outbox.count(&t.tenant).unwrap_or(0)).sum();
    if stats {
        let mut err = std::io::stderr().lock();
        for (k, v) in outbox_counters(&outbox).into_iter().chain(sender_counters(&sender_stats)) {
            writeln!(err, "{k:32} {v}")?;
        }
        writeln!(err, "{:32} {left}", "outbox_left")?;
    }
    let refused = outbox.stats.rejected.load(Relaxed);
    let too_old = outbox.stats.dropped_too_old.load(Relaxed);
    let dropped = dropped + outbox.stats.dropped_full.load(Relaxed);
    if left == 0
        && refused == 0
        && let Ok(ob) = Arc::try_unwrap(outbox)
    {
        // a drained outbox gives its space back
        let _ = ob.compact();
    }
    let mut problems = Vec::new();
    if left > 0 {
        problems.push(format!(
            "{left} event(s) not delivered within {timeout} s; they stay in the outbox (`siptap flush` sends them)"
        ));
    }
    if refused > 0 {
        problems.push(format!(
            "{refused} event(s) refused or invalid, not retried; kept in the outbox's rejected table (`siptap outbox`)"
        ));
    }
    if too_old > 0 {
        problems.push(format!("{too_old} event(s) older than GA4's 72 hours, not sent (`siptap outbox`)"));
    }
    if dropped > 0 {
        problems.push(format!("{dropped} event(s) dropped because the outbox was full (delivery.max_outbox_events)"));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(())
}

pub fn outbox_counters(o: &Outbox) -> Vec<(&'static str, u64)> {
    let s = &o.stats;
    vec![
        ("outbox_queued", s.queued.load(Relaxed)),
        ("outbox_duplicates_skipped", s.duplicates.load(Relaxed)),
        ("outbox_dropped_full", s.dropped_full.load(Relaxed)),
        ("outbox_dropped_too_old", s.dropped_too_old.load(Relaxed)),
        ("outbox_rejected", s.rejected.load(Relaxed)),
        ("outbox_timestamps_clamped", s.clamped_future.load(Relaxed)),
    ]
}

pub fn sender_counters(s: &SenderStats) -> Vec<(&'static str, u64)> {
    vec![
        ("delivery_requests_ok", s.requests_ok.load(Relaxed)),
        ("delivery_events_sent", s.events_sent.load(Relaxed)),
        ("delivery_retries", s.retries.load(Relaxed)),
        ("delivery_outages", s.outages.load(Relaxed)),
        ("delivery_transport_errors", s.transport_errors.load(Relaxed)),
        ("delivery_5xx_429", s.http_5xx_429.load(Relaxed)),
        ("delivery_4xx", s.http_4xx.load(Relaxed)),
        ("delivery_invalid_not_sent", s.invalid_local.load(Relaxed)),
        ("delivery_cancelled_at_deadline", s.cancelled.load(Relaxed)),
    ]
}

/// `siptap deliver`: a cluster delivery worker, until SIGTERM/Ctrl-C or the stream is idle.
pub fn cluster_deliver(config: PathBuf, state: Option<PathBuf>, until_idle: Option<u64>, stats: bool) -> Result<()> {
    let cfg = Config::load(&config)?;
    let Some(ccfg) = &cfg.cluster else {
        bail!(
            "{}: no [cluster] section: `siptap deliver` is a cluster delivery worker (single box: `siptap flush`)",
            config.display()
        );
    };
    let state = state.unwrap_or_else(|| cfg.run.state_dir.clone());
    let cluster = siptap::store::cluster::Cluster::connect(ccfg, &state)?;
    let d = Delivery::new(&cfg, &cluster.identity_key);
    if d.is_empty() {
        bail!("{}: no tenant delivers to Firebase: nothing for a delivery worker to do", config.display());
    }
    let sender_stats = Arc::new(SenderStats::default());
    let scfg = SenderConfig::of(&cfg.delivery, Duration::from_millis(100));
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let worker = cluster.handle().spawn(siptap::sink::firebase::consumer::run(
        cluster.clone(),
        d.targets(),
        scfg,
        sender_stats.clone(),
        until_idle.map(Duration::from_secs),
        stop,
    ));
    cluster.block_for(Duration::from_secs(100 * 365 * 86_400), async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            return;
        };
        let mut worker = worker;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = &mut worker => return,
        }
        let _ = stop_tx.send(true);
        let _ = worker.await;
    });
    if stats {
        let mut err = std::io::stderr().lock();
        for (k, v) in sender_counters(&sender_stats).into_iter().chain(cluster.stats.counters()) {
            writeln!(err, "{k:32} {v}")?;
        }
    }
    Ok(())
}

/// `siptap deliver --requeue-rejected`: the cluster's rejected events back to the event stream.
pub fn cluster_requeue(config: PathBuf, state: Option<PathBuf>, tenant: Option<String>) -> Result<()> {
    let cfg = Config::load(&config)?;
    let Some(ccfg) = &cfg.cluster else {
        bail!("{}: no [cluster] section (single box: `siptap outbox requeue`)", config.display());
    };
    let state = state.unwrap_or_else(|| cfg.run.state_dir.clone());
    let cluster = siptap::store::cluster::Cluster::connect(ccfg, &state)?;
    let c = cluster.clone();
    let n = cluster
        .block_for(Duration::from_secs(600), async move {
            siptap::sink::stream::requeue_rejected(&c, tenant.as_deref()).await
        })
        .unwrap_or_else(|| Err("timed out".into()))
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("{n} event(s) put back into the cluster's event stream");
    Ok(())
}
