//! `siptap run`: the daemon. Thin shells around the same sans-IO pipeline as `replay`: capture
//! threads (libpcap) and a HEP listener feed a decoding thread, which feeds the core thread
//! (state, events, outbox, store), as `replay --threads 2` splits it; a clock tick drives
//! timeouts when traffic is quiet; events go to the Firebase outbox (tenants with Firebase
//! settings) or to JSON lines; a tokio thread runs delivery, the metrics endpoint and signal
//! handling.
pub mod decoding;
pub mod hep_listener;
pub mod live;
pub mod metrics;
pub mod notify;

use crate::capture::Micros;
use crate::clock::now_micros;
use crate::config::Config;
use crate::pipeline::Routed;
use crate::sink::firebase::mp::QueuedEvent;
use crate::sink::firebase::outbox::Outbox;
use crate::sink::firebase::sender::{self, SenderConfig, SenderStats};
use crate::sink::firebase::{Delivery, Target};
use crate::sink::jsonl;
use anyhow::{Context, Result, bail};
use decoding::Core;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the core thread receives.
pub enum Input {
    /// Frames from a capture thread.
    Frames(live::FrameBatch),
    Hep {
        ts: Micros,
        sender: IpAddr,
        data: Vec<u8>,
    },
    /// A clock tick: the wall-clock time it was sent. Timers fire up to `CAPTURE_LAG` before
    /// it, not at the time the core reads it: frames still on their way (in the ring, in a
    /// capture thread's batch) come after the tick, and behind a backlog the core reads it late.
    Tick(Micros),
    Reload,
    Stop,
    /// At a stop, after the capture threads have handed over their last frames: the front half
    /// hands on everything before it, then [`decoding::Core::Flushed`].
    Flush,
}

/// How long after its capture a frame may reach the channel to the core at most: the ring's block
/// timeout (50 ms) and a capture thread's hold (at most 250 ms: `live::hold`, and a batch's span
/// by packet time), with room to spare. A tick fires the timers due this long before it was
/// sent, so it cannot fire a timer that a frame captured before it, and queued after it, would
/// have stopped: the events are those of replay. Timeouts in quiet traffic reach the outbox up to
/// this much later; their times are their own.
const CAPTURE_LAG: Micros = 1_000_000;
// (room to spare: a capture thread may be late to read the ring, the decoding thread to hand on)
const _: () = assert!(3 * live::MAX_HOLD_MICROS <= CAPTURE_LAG);

/// A clock tick sent at `sent` (wall clock): the timers due [`CAPTURE_LAG`] before it fire.
fn fire_timers(back: &mut crate::pipeline::Back, sent: Micros, out: &mut dyn FnMut(Routed)) {
    back.tick(sent - CAPTURE_LAG, out);
}

/// Bytes of input (captured frames, HEP packets, and the batches decoded from them) waiting for
/// the core: bounded by `run.queue_mib`; past it new input is dropped and counted, and logged
/// once.
#[derive(Debug)]
pub struct InputBudget {
    bytes: std::sync::atomic::AtomicUsize,
    max: usize,
    pub dropped: std::sync::atomic::AtomicU64,
    logged: AtomicBool,
}

impl InputBudget {
    pub fn new(max: usize) -> Self {
        InputBudget {
            bytes: std::sync::atomic::AtomicUsize::new(0),
            max,
            dropped: std::sync::atomic::AtomicU64::new(0),
            logged: AtomicBool::new(false),
        }
    }
    /// The bound, in bytes.
    pub fn max_bytes(&self) -> usize {
        self.max
    }
    /// Takes room for `n` bytes; `false` (counted) when the queue is full.
    pub fn admit(&self, n: usize) -> bool {
        let before = self.bytes.fetch_add(n, Ordering::Relaxed);
        if before + n > self.max {
            self.bytes.fetch_sub(n, Ordering::Relaxed);
            self.refuse();
            return false;
        }
        true
    }
    /// Counts input dropped because the queue is full.
    pub fn refuse(&self) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                max_bytes = self.max,
                "input queue full: the core is behind, new packets are dropped (run.queue_mib); counted in input_dropped"
            );
        }
    }
    /// Takes room for `n` bytes already decoded (never refused: they are not dropped once
    /// decoded, but they make the capture threads drop until the core has caught up).
    pub fn hold(&self, n: usize) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
    pub fn release(&self, n: usize) {
        self.bytes.fetch_sub(n, Ordering::Relaxed);
    }
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// What the core publishes for the metrics endpoint, once a tick.
#[derive(Default)]
pub struct Snapshot {
    pub counters: Vec<(String, u64)>,
    pub events: BTreeMap<(String, String), u64>,
}

pub struct Shared {
    pub snapshot: Mutex<Snapshot>,
    pub captures: Vec<(String, Arc<live::CaptureStats>)>,
    pub outbox: Option<Arc<Outbox>>,
    pub sender: Arc<SenderStats>,
    pub last_tick: AtomicI64,
    pub input: Arc<InputBudget>,
    pub hep: Arc<hep_listener::HepListenerStats>,
    /// Which instance this is (several may run on one host): shown by /health and /metrics.
    pub config_path: String,
    pub started_unix: i64,
    pub reload: ReloadStats,
    /// Cluster mode: the connection's counters.
    pub cluster: Option<Arc<crate::store::cluster::ClusterStats>>,
}

/// The outcome of SIGHUP reloads, for the metrics and `siptap status`.
#[derive(Default)]
pub struct ReloadStats {
    pub ok: std::sync::atomic::AtomicU64,
    pub failed: std::sync::atomic::AtomicU64,
    /// 1 when the last reload (or the start) applied the file, 0 when it was refused.
    pub last_ok: std::sync::atomic::AtomicBool,
    pub last_unix_micros: AtomicI64,
}

impl Shared {
    pub fn healthy(&self) -> bool {
        now_micros() - self.last_tick.load(Ordering::Relaxed) < 5_000_000
    }
}

/// Commands for the delivery side (the tokio thread).
enum SenderCmd {
    Restart(Vec<Target>),
    /// Deliver what is queued for at most this long, then stop.
    Drain(Duration),
}

/// Whether this process runs as root (from /proc, without a libc dependency).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false)
}

pub struct RunOptions {
    pub config: PathBuf,
    pub allow_root: bool,
    /// Overrides `run.state_dir`.
    pub state_dir: Option<PathBuf>,
}

pub fn run(opts: RunOptions) -> Result<()> {
    if is_root() && !opts.allow_root {
        bail!(
            "refusing to run as root: siptap reads untrusted traffic and needs only CAP_NET_RAW. \
             Use the systemd unit (a dedicated user with that capability), or pass --allow-root"
        );
    }
    let mut cfg = Config::load(&opts.config)?;
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let state = opts.state_dir.clone().unwrap_or_else(|| cfg.run.state_dir.clone());
    let crate::store::Opened { pipeline, store, cluster, .. } = crate::store::open_pipeline(&cfg, Some(&state))?;
    // (a state directory: no scratch one to keep)
    // pseudonyms must be the same on every sensor of a cluster: the cluster's key then
    let key = match &cluster {
        Some(c) => c.identity_key.clone(),
        None => crate::sink::firebase::identity_key(&state)?,
    };
    let outbox = Arc::new(Outbox::open(
        &state,
        cfg.delivery.max_outbox_events,
        cfg.delivery.when_full,
        cfg.limits.store_cache_mib << 20,
    )?);
    let mut delivery = Delivery::new(&cfg, &key);
    let mut jsonl_out = open_jsonl(&cfg.run.jsonl_path)?;
    // cluster mode: each line carries the event's id, the same on every sensor
    let with_ids = cluster.is_some();

    let (tx, rx) = std::sync::mpsc::sync_channel::<Input>(65_536);
    let budget = Arc::new(InputBudget::new(cfg.run.queue_mib << 20));
    let stop = Arc::new(AtomicBool::new(false));
    let pool = Arc::new(live::BatchPool::default());
    let live::Captures { stats: captures, threads: mut capture_threads } = if cfg.run.interfaces.is_empty() {
        live::Captures { stats: Vec::new(), threads: Vec::new() }
    } else {
        live::start(&cfg, tx.clone(), budget.clone(), pool.clone(), stop.clone())?
    };
    let hep_tcp = match cfg.hep.listen {
        Some(addr) => {
            hep_listener::start_udp(addr, tx.clone(), budget.clone(), stop.clone())?;
            Some(hep_listener::bind_tcp(addr)?)
        }
        None => None,
    };
    let sender_stats = Arc::new(SenderStats::default());
    // every tenant's delivery series exist from the start, at zero
    sender_stats
        .tenants
        .lock()
        .expect("not poisoned")
        .extend(cfg.tenants.iter().map(|t| (t.id.clone(), Default::default())));
    let hep_stats = Arc::new(hep_listener::HepListenerStats::default());
    let shared = Arc::new(Shared {
        snapshot: Mutex::default(),
        captures,
        outbox: Some(outbox.clone()),
        sender: sender_stats.clone(),
        last_tick: AtomicI64::new(now_micros()),
        input: budget.clone(),
        hep: hep_stats.clone(),
        config_path: std::path::absolute(&opts.config).unwrap_or(opts.config.clone()).display().to_string(),
        started_unix: now_micros() / 1_000_000,
        reload: ReloadStats {
            last_ok: true.into(),
            last_unix_micros: AtomicI64::new(now_micros()),
            ..Default::default()
        },
        cluster: cluster.as_ref().map(|c| c.stats.clone()),
    });
    // every tenant and kind from the start, at zero: rates and alerts need the series to exist
    // (per tenant, by kind: counting an event allocates nothing)
    let mut counts: BTreeMap<String, EventCounts> =
        cfg.tenants.iter().map(|t| (t.id.to_string(), EventCounts::default())).collect();
    // /metrics serves every metric from the start, not only after the first tick
    publish(&shared, pipeline.counters(), &store, &budget, &counts);

    // the listeners (metrics and health, HEP over TCP) on a runtime of their own, so that they
    // answer whatever delivery or the core is doing
    let metrics = match cfg.run.metrics_listen {
        Some(a) => Some(std::net::TcpListener::bind(a).with_context(|| format!("cannot listen for metrics on {a}"))?),
        None => None,
    };
    {
        let (shared, tx, budget, cfg) = (shared.clone(), tx.clone(), budget.clone(), cfg.clone());
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime")?;
        std::thread::Builder::new()
            .name("listeners".into())
            .spawn(move || {
                rt.block_on(async move {
                    if let Some(l) = metrics {
                        let _ = l.set_nonblocking(true);
                        match tokio::net::TcpListener::from_std(l) {
                            Ok(l) => {
                                tokio::spawn(metrics::serve(l, shared.clone()));
                            }
                            Err(e) => tracing::error!(error = %e, "cannot serve metrics"),
                        }
                    }
                    if let Some(l) = hep_tcp {
                        tokio::spawn(hep_listener::serve_tcp(
                            l,
                            tx,
                            budget,
                            cfg.hep.max_connections,
                            Duration::from_secs(cfg.hep.idle_timeout_secs),
                            hep_stats,
                        ));
                    }
                    std::future::pending::<()>().await
                })
            })
            .context("cannot start the listeners thread")?;
    }

    // the tokio side: delivery and signals
    let (cmd_tx, cmd_rx) = tokio::sync::mpsc::unbounded_channel::<SenderCmd>();
    let async_side = {
        let (outbox, shared, tx, cfg, cluster) =
            (outbox.clone(), shared.clone(), tx.clone(), cfg.clone(), cluster.clone());
        let targets = delivery.targets();
        let rt =
            tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start a runtime")?;
        std::thread::Builder::new()
            .name("delivery".into())
            .spawn(move || rt.block_on(async_main(outbox, targets, cfg, shared, tx, cmd_rx, cluster)))
            .context("cannot start the delivery thread")?
    };
    // the clock: timeouts fire when traffic is quiet, and the watchdog is fed from the core loop
    {
        let (tx, stop) = (tx.clone(), stop.clone());
        std::thread::Builder::new().name("tick".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1000));
                if tx.send(Input::Tick(now_micros())).is_err() {
                    return;
                }
            }
        })?;
    }
    // the front half: on a thread of its own (`run.threads = 2`), or inline in the core
    let (front, mut back) = pipeline.into_halves();
    let (trust_tx, trust_rx) = std::sync::mpsc::channel();
    let threaded = cfg.run.threads > 1;
    let decoding = decoding::Decoding::new(front, threaded, budget.clone(), pool.clone(), trust_rx);
    let spares = decoding.spares();
    let mut front_counters = decoding.counters();
    let (mut feed, decode_thread) = if threaded {
        let (core_tx, core_rx) = std::sync::mpsc::sync_channel(decoding::CORE_QUEUE);
        let t = decoding::spawn(decoding, rx, core_tx).context("cannot start the decoding thread")?;
        (decoding::Feed::Thread { batches: core_rx }, Some(t))
    } else {
        (decoding::Feed::Inline { inputs: rx, decoding: Box::new(decoding) }, None)
    };
    let flush_tx = tx.clone();
    drop(tx);
    notify::notify("READY=1");
    tracing::info!(
        interfaces = ?cfg.run.interfaces,
        hep = ?cfg.hep.listen,
        metrics = ?cfg.run.metrics_listen,
        delivering = ?delivery.targets().iter().map(|t| t.tenant.clone()).collect::<Vec<_>>(),
        "siptap running"
    );

    let mut queued: Vec<QueuedEvent> = Vec::new();
    let mut last_watchdog = Instant::now();
    // counts for `siptap report --state` (no personal data), saved once a minute and at stop
    let mut report = match crate::sink::report::Report::load(&state) {
        Ok(r) => r.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "the saved report is unreadable; starting a new one");
            Default::default()
        }
    };
    let mut report_saved = Instant::now();
    let mut unsaved = None;
    let watchdog = notify::watchdog_interval();
    // on a stop, capture stops first and what it captured until then is still derived
    let mut final_pass = false;
    let mut flush_asked = false;
    loop {
        if final_pass && !flush_asked {
            // (never blocking: with one thread, only this loop empties the queue)
            flush_asked = !matches!(flush_tx.try_send(Input::Flush), Err(TrySendError::Full(_)));
        }
        let mut stopping = false;
        let mut flushed = false;
        let mut tick = false;
        let mut reload = false;
        let came = {
            let mut emit = |r: Routed| {
                match counts.get_mut(&*r.tenant) {
                    Some(c) => c[r.event.kind as usize] += 1,
                    None => counts.entry(r.tenant.to_string()).or_default()[r.event.kind as usize] += 1,
                }
                report.add(&r);
                match delivery.queue(&r, Some(&outbox)) {
                    Some(q) => queued.push(q),
                    None if with_ids => {
                        let _ = jsonl::write_with_id(&mut jsonl_out, &r);
                    }
                    None => {
                        let _ = jsonl::write(&mut jsonl_out, &r);
                    }
                }
            };
            let mut core = |c: Core| match c {
                Core::Batch(b) => {
                    if threaded {
                        back.apply(&b, &mut emit);
                    } else {
                        back.apply_staged(&b, &mut emit);
                    }
                    spares.give(b);
                }
                Core::Tick { sent, counters } => {
                    if let Some(c) = counters {
                        front_counters = *c;
                    }
                    fire_timers(&mut back, sent, &mut emit);
                    tick = true;
                }
                Core::Reload => reload = true,
                Core::Stop => stopping = true,
                Core::Flushed => flushed = true,
            };
            feed.burst(Duration::from_secs(2), &mut core)
        };
        // the last pass ends when everything captured before the stop is through (or when
        // nothing more comes)
        let stopping = if final_pass { flushed || !came } else { stopping };
        if !queued.is_empty() {
            if let Err(e) = outbox.push(&queued, &delivery.take_sessions()) {
                tracing::error!(error = %e, events = queued.len(), "cannot queue events in the outbox");
            }
            queued.clear();
        }
        let _ = jsonl_out.flush();
        if stopping && !final_pass {
            // stop capturing (each capture thread hands over its last batch), then one last
            // pass, until the front half has handed on all of it
            stop.store(true, Ordering::Relaxed);
            for t in capture_threads.drain(..) {
                let _ = t.join();
            }
            final_pass = true;
            continue;
        }
        if tick || stopping {
            // group commit: the state changes of the last second in one transaction
            // (at a stop, with the journal folded: the file holds the state in its tables alone)
            save_state(&store, &mut back.tracker, &mut unsaved, stopping);
        }
        if tick {
            shared.last_tick.store(now_micros(), Ordering::Relaxed);
            publish(&shared, crate::pipeline::counters(&front_counters, &back), &store, &budget, &counts);
            if stopping || report_saved.elapsed() >= Duration::from_secs(60) {
                report_saved = Instant::now();
                save_report(&mut report, &shared, &state);
            }
            if watchdog.is_some_and(|w| last_watchdog.elapsed() >= w) {
                notify::notify("WATCHDOG=1");
                last_watchdog = Instant::now();
            }
        }
        if reload {
            notify::notify(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
            match Config::load(&opts.config) {
                Ok(new) => {
                    back.reload(&new);
                    let _ = trust_tx.send(new.hep.trust());
                    delivery = Delivery::new(&new, &key);
                    let _ = cmd_tx.send(SenderCmd::Restart(delivery.targets()));
                    tracing::info!(
                        tenants = new.tenants.len(),
                        "configuration reloaded (tables kept; bounds, interfaces and listeners need a restart)"
                    );
                    cfg = new;
                    shared.reload.ok.fetch_add(1, Ordering::Relaxed);
                    shared.reload.last_ok.store(true, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload refused: the running configuration stays");
                    shared.reload.failed.fetch_add(1, Ordering::Relaxed);
                    shared.reload.last_ok.store(false, Ordering::Relaxed);
                }
            }
            shared.reload.last_unix_micros.store(now_micros(), Ordering::Relaxed);
            // the events file is reopened on every SIGHUP, even when the reload was refused:
            // logrotate has moved the old one away
            let _ = jsonl_out.flush();
            match open_jsonl(&cfg.run.jsonl_path) {
                Ok(w) => jsonl_out = w,
                Err(e) => tracing::error!(error = %e, "cannot open jsonl_path; writing on to the file open before"),
            }
            notify::notify("READY=1");
        }
        if stopping {
            break;
        }
    }
    // (a decoding thread still sending finds the core gone and ends)
    drop(feed);
    let decoding_ok = decode_thread.is_none_or(|t| t.join().is_ok());
    // stop: capture first, then hand what is queued to delivery for a bounded time
    notify::notify("STOPPING=1");
    stop.store(true, Ordering::Relaxed);
    let _ = cmd_tx.send(SenderCmd::Drain(Duration::from_secs(cfg.run.stop_timeout_secs)));
    let delivery_ok = async_side.join().unwrap_or(false);
    save_report(&mut report, &shared, &state);
    tracing::info!(left_in_outbox = outbox.len(), "siptap stopped");
    if !delivery_ok {
        // (what was queued is still in the outbox: the next start delivers it)
        bail!("the delivery thread failed (a bug: please report it with the log above)");
    }
    if !decoding_ok {
        // (the state was saved with what the core had: the next start goes on from there)
        bail!("the decoding thread failed (a bug: please report it with the log above)");
    }
    Ok(())
}

/// Saves the report's counts with the counters as they stand (a failure is logged, not fatal:
/// the report is a convenience).
fn save_report(report: &mut crate::sink::report::Report, shared: &Shared, state: &Path) {
    report.counters = shared.snapshot.lock().expect("not poisoned").counters.clone();
    report.source = format!(
        "siptap run with {}: events of the last two weeks at most; counters since its last start",
        shared.config_path
    );
    if let Err(e) = report.save(state) {
        tracing::warn!(error = %format!("{e:#}"), "cannot save the report");
    }
}

/// Hands the core's counters to the metrics endpoint.
fn publish(
    shared: &Shared,
    pipeline_counters: Vec<(&'static str, u64)>,
    store: &crate::store::StateStore,
    budget: &InputBudget,
    events: &BTreeMap<String, EventCounts>,
) {
    let counters = pipeline_counters
        .into_iter()
        .chain(store.stats.counters())
        .chain(shared.hep.counters())
        .chain(shared.cluster.as_ref().map(|c| c.counters()).unwrap_or_default())
        .chain([
            ("input_dropped", budget.dropped.load(Ordering::Relaxed)),
            ("input_queue_bytes", budget.bytes() as u64),
        ])
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let mut snap = shared.snapshot.lock().expect("not poisoned");
    snap.counters = counters;
    snap.events = events
        .iter()
        .flat_map(|(t, c)| crate::event::Kind::ALL.map(|k| ((t.clone(), k.canonical().to_string()), c[k as usize])))
        .collect();
}

/// Events derived for one tenant, by `Kind` (its discriminant).
type EventCounts = [u64; crate::event::Kind::ALL.len()];

/// Writes what the state machines changed (and the users that signed up) to the store; what a
/// failed save held is tried again with the next.
fn save_state(
    store: &crate::store::StateStore,
    tracker: &mut crate::state::Tracker,
    unsaved: &mut Option<(crate::state::snapshot::Delta, Vec<(String, Micros)>)>,
    fold: bool,
) {
    let mut delta = tracker.take_delta();
    let mut users = tracker.registrations.known_mut().take_new();
    if let Some((d, mut u)) = unsaved.take() {
        delta = d.then(delta);
        u.append(&mut users);
        users = u;
    }
    let saved = if fold { store.commit_folded(&delta, &users) } else { store.commit(&delta, &users) };
    if let Err(e) = saved {
        if store.stats.save_errors.load(Ordering::Relaxed) <= 1 {
            tracing::error!(error = %format!("{e:#}"), "cannot save state; will retry every second");
        }
        *unsaved = Some((delta, users));
    }
}

fn monotonic_usec() -> u128 {
    // CLOCK_MONOTONIC via /proc/uptime is coarse but enough for RELOADING=1
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1e6) as u128)
        .unwrap_or(0)
}

fn open_jsonl(path: &str) -> Result<Box<dyn Write + Send>> {
    use std::os::unix::fs::OpenOptionsExt;
    if path == "-" {
        return Ok(Box::new(std::io::stdout()));
    }
    // private: events name users
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(Path::new(path))
        .with_context(|| format!("cannot open {path} for events"))?;
    Ok(Box::new(std::io::BufWriter::new(f)))
}

/// Cluster mode's delivery side: the outbox drains into the cluster's stream, and (unless
/// `cluster.deliver = false`) a delivery worker takes from the stream to Firebase. At a stop
/// (`until_empty`), only the outbox is drained, until it is empty or the deadline passes.
#[allow(clippy::too_many_arguments)]
async fn cluster_side(
    cluster: Arc<crate::store::cluster::Cluster>,
    outbox: Arc<Outbox>,
    targets: Vec<Target>,
    scfg: SenderConfig,
    stats: Arc<SenderStats>,
    until_empty: bool,
    deadline: Option<Instant>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let tenants: Vec<String> = targets.iter().map(|t| t.tenant.clone()).collect();
    let rt = cluster.handle();
    let (inner_tx, inner_rx) = tokio::sync::watch::channel(false);
    let drain = rt.spawn(crate::sink::stream::drain_outbox(
        cluster.clone(),
        outbox.clone(),
        tenants.clone(),
        until_empty,
        inner_rx.clone(),
    ));
    let worker = (!until_empty && cluster.cfg.deliver)
        .then(|| rt.spawn(crate::sink::firebase::consumer::run(cluster.clone(), targets, scfg, stats, None, inner_rx)));
    let until = deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(365 * 86_400));
    let mut drain = drain;
    let drained = tokio::select! {
        _ = stop.changed() => false,
        _ = tokio::time::sleep_until(until.into()) => false,
        _ = &mut drain, if until_empty => true,
    };
    let _ = inner_tx.send(true);
    if !drained {
        let _ = drain.await;
    }
    if let Some(w) = worker {
        let _ = w.await;
    }
}

async fn async_main(
    outbox: Arc<Outbox>,
    targets: Vec<Target>,
    cfg: Config,
    shared: Arc<Shared>,
    core: SyncSender<Input>,
    mut cmds: tokio::sync::mpsc::UnboundedReceiver<SenderCmd>,
    cluster: Option<Arc<crate::store::cluster::Cluster>>,
) -> bool {
    // signals go to the core loop as inputs
    {
        use tokio::signal::unix::{SignalKind, signal};
        let core = core.clone();
        tokio::spawn(async move {
            let (Ok(mut hup), Ok(mut term), Ok(mut int)) =
                (signal(SignalKind::hangup()), signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
            else {
                return;
            };
            loop {
                let input = tokio::select! {
                    _ = hup.recv() => Input::Reload,
                    _ = term.recv() => Input::Stop,
                    _ = int.recv() => Input::Stop,
                };
                let core = core.clone();
                let _ = tokio::task::spawn_blocking(move || core.send(input)).await;
            }
        });
    }
    drop(core);
    let scfg = |c: &Config| SenderConfig::of(&c.delivery, Duration::from_millis(200));
    let spawn = |targets: Vec<Target>, until_empty: bool, deadline: Option<Instant>| {
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        let h = match &cluster {
            None => tokio::spawn(sender::run(
                outbox.clone(),
                targets,
                scfg(&cfg),
                shared.sender.clone(),
                until_empty,
                deadline,
                stop,
            )),
            Some(c) => tokio::spawn(cluster_side(
                c.clone(),
                outbox.clone(),
                targets,
                scfg(&cfg),
                shared.sender.clone(),
                until_empty,
                deadline,
                stop,
            )),
        };
        (h, stop_tx)
    };
    let mut current = spawn(targets.clone(), false, None);
    let mut targets = targets;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            SenderCmd::Restart(t) => {
                let _ = current.1.send(true);
                if (&mut current.0).await.is_err() {
                    return false;
                }
                targets = t;
                current = spawn(targets.clone(), false, None);
            }
            SenderCmd::Drain(limit) => {
                // the stop deadline counts from the signal: requests in flight at it are
                // cancelled, their events stay queued for the next start
                let until = Instant::now() + limit;
                let _ = current.1.send(true);
                let first = (&mut current.0).await;
                let (h, _stop) = spawn(targets.clone(), true, Some(until));
                let last = h.await;
                // a delivery task that panicked is a bug to report, not a clean stop
                return first.is_ok() && last.is_ok();
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Pipeline;
    use crate::state::users::MemoryUsers;

    /// A tick the core reads late must not fire a timer that a frame captured before the tick
    /// would have stopped. The lab capture of a call (sipp through Kamailio), its frames after
    /// the first one that sets a timer moved later, so that the next frame comes 100 ms before
    /// that timer is due; a clock tick sent 100 ms after it is due overtakes that frame (it was
    /// still in the ring or a capture thread's batch). The events must be replay's.
    #[test]
    fn a_tick_that_overtakes_frames_captured_before_it_changes_no_event() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = Config::load(&root.join("config.toml.example")).unwrap();
        let mut frames: Vec<(Micros, u32, Vec<u8>)> = Vec::new();
        crate::capture::file::read_file(&root.join("fixtures/lab/captures/call_caller_bye.pcap"), |f| {
            frames.push((f.ts, f.linktype, f.data.to_vec()))
        })
        .unwrap();
        let pipeline = || Pipeline::new(&cfg, Box::new(MemoryUsers::new([])), [1, 2]);
        let feed = |p: &mut Pipeline, fs: &[(Micros, u32, Vec<u8>)], lines: &mut Vec<String>| {
            for (ts, linktype, data) in fs {
                let f = crate::capture::Frame { ts: *ts, linktype: *linktype, data };
                p.frame(f, &mut |r| lines.push(format!("{} {:?}", r.name, r.event)));
            }
            p.flush(&mut |r| lines.push(format!("{} {:?}", r.name, r.event)));
        };
        // the first frame after which a timer is pending, and when it is due
        let (k, due) = {
            let mut p = pipeline();
            (0..frames.len())
                .find_map(|k| {
                    feed(&mut p, &frames[k..=k], &mut Vec::new());
                    p.tracker().calls.next_deadline().map(|d| (k, d))
                })
                .expect("a call sets a timer")
        };
        assert!(k + 1 < frames.len());
        let shift = due - 100_000 - frames[k + 1].0;
        assert!(shift >= 0, "the next frame already comes after the timer");
        for f in &mut frames[k + 1..] {
            f.0 += shift;
        }
        let (before, after) = frames.split_at(k + 1);
        let run = |tick: &dyn Fn(&mut Pipeline, &mut Vec<String>)| {
            let mut p = pipeline();
            let mut lines = Vec::new();
            feed(&mut p, before, &mut lines);
            tick(&mut p, &mut lines);
            feed(&mut p, after, &mut lines);
            lines
        };
        let replay = run(&|_, _| {});
        assert!(replay.len() >= 4, "{replay:?}");
        let sent = due + 100_000;
        // the tick as the core fires it
        let live =
            run(&|p, lines| fire_timers(&mut p.back, sent, &mut |r| lines.push(format!("{} {:?}", r.name, r.event))));
        assert_eq!(live, replay);
        // (at the time it was read, the timer would have gone off first: the case is real)
        let at_read = run(&|p, lines| p.back.tick(sent, &mut |r| lines.push(format!("{} {:?}", r.name, r.event))));
        assert_ne!(at_read, replay);
    }
}
