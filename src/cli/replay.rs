//! `siptap replay`: capture files as one timeline -> events as JSON lines (and, with `--send`,
//! into the Firebase outbox). With `--state`, the derivation state is loaded at start and saved
//! at the end, so that a capture replayed in parts gives the events of one run.
use anyhow::{Context, Result, bail};
use siptap::capture::file::read_file;
use siptap::config::Config;
use siptap::pipeline::{Pipeline, Routed};
use siptap::sink::firebase::Delivery;
use siptap::sink::firebase::mp::QueuedEvent;
use siptap::sink::jsonl;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::Arc;

pub fn replay(
    config: PathBuf,
    state: Option<PathBuf>,
    stats: bool,
    send_timeout: Option<u64>,
    feeding: Feeding,
    report_path: Option<PathBuf>,
    captures: Vec<PathBuf>,
) -> Result<()> {
    let cfg = Config::load(&config)?;
    for c in &captures {
        if !c.is_file() {
            bail!("cannot read capture {}: no such file", c.display());
        }
    }
    let siptap::store::Opened { pipeline, store, persistent, scratch: _scratch, cluster } =
        siptap::store::open_pipeline(&cfg, state.as_deref())?;
    if cluster.is_some() && send_timeout.is_some() {
        bail!("--send: in cluster mode a replay publishes its events to the cluster, whose delivery workers send them");
    }
    // cluster mode: every event goes to the cluster's stream; only those new to the cluster are
    // printed (two sensors replaying the same traffic print each event once between them)
    let mut to_cluster = cluster.as_ref().map(|c| ClusterOut::new(c.clone(), Delivery::new(&cfg, &c.identity_key)));
    // with --send, events of delivering tenants are committed to the outbox in batches; each
    // event has a deterministic id and is queued once, so a replay killed before a commit and run
    // again queues what it lost and nothing twice
    let mut delivery = match (&state, send_timeout) {
        (Some(dir), Some(_)) => {
            let key = siptap::sink::firebase::identity_key(dir)?;
            Some((Delivery::new(&cfg, &key), Arc::new(super::deliver::open_outbox(&cfg, dir)?)))
        }
        _ => None,
    };
    let mut pending: Vec<QueuedEvent> = Vec::new();
    let mut queue_err: Option<anyhow::Error> = None;
    let mut not_queued = 0u64;
    // (not locked for the whole run: in cluster mode the publishing thread writes the lines)
    let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout());
    let mut write_err: Option<std::io::Error> = None;
    let mut lines: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut report = report_path.as_ref().map(|_| siptap::sink::report::Report::default());
    let mut emit = |r: Routed| {
        if let Some(co) = &mut to_cluster {
            co.add(&r);
        } else {
            jsonl::append(&mut lines, &r);
        }
        if let Some(rep) = &mut report {
            rep.add(&r);
        }
        if lines.len() >= 1 << 16 {
            if write_err.is_none()
                && let Err(e) = out.write_all(&lines)
            {
                write_err = Some(e);
            }
            lines.clear();
        }
        if let Some((d, outbox)) = &mut delivery
            && to_cluster.is_none()
            && let Some(q) = d.queue(&r, Some(outbox))
        {
            pending.push(q);
            if pending.len() >= 256 && queue_err.is_none() {
                match outbox.push(&pending, &d.take_sessions()) {
                    Ok(n) => not_queued += n,
                    Err(e) => queue_err = Some(e),
                }
                pending.clear();
            }
        }
    };
    let mut save_err: Option<anyhow::Error> = None;
    // the users that signed up go to the store as we go: memory holds only a bounded cache of
    // them, whatever the capture's size
    let mut since_commit = 0u64;
    let mut after_batch = |back: &mut siptap::pipeline::Back, frames: u64| {
        since_commit += frames;
        if since_commit >= 65_536 {
            since_commit = 0;
            let users = back.tracker.registrations.known_mut().take_new();
            if let Err(e) = store.commit(&Default::default(), &users)
                && save_err.is_none()
            {
                save_err = Some(e);
            }
        }
    };
    let (fed, file_stats) = feed(pipeline, &captures, feeding, &mut emit, &mut after_batch)?;
    let mut pipeline = fed;
    pipeline.finish(&mut emit);
    if let Some(co) = to_cluster.take()
        && let Err(e) = co.finish()
        && queue_err.is_none()
    {
        queue_err = Some(e);
    }
    if write_err.is_none()
        && let Err(e) = out.write_all(&lines)
    {
        write_err = Some(e);
    }
    if let Some(e) = write_err {
        // a closed pipe (`| head`) is not worth a complaint
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e).context("cannot write events");
        }
    }
    let _ = out.flush();
    if let Some(e) = queue_err {
        if cluster.is_some() {
            return Err(e).context("cannot publish events to the cluster (replaying again is safe: events have ids)");
        }
        return Err(e).context("cannot queue events in the outbox");
    }
    if let Some(c) = &cluster
        && stats
    {
        let mut err = std::io::stderr().lock();
        for (k, v) in c.stats.counters() {
            writeln!(err, "{k:32} {v}")?;
        }
    }
    if let Some(e) = save_err {
        return Err(e);
    }
    if let (Some(mut rep), Some(path)) = (report, &report_path) {
        rep.counters = pipeline.counters().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let names: Vec<String> = captures.iter().map(|c| c.display().to_string()).collect();
        rep.source = format!("siptap replay of {}", names.join(", "));
        std::fs::write(path, rep.html()).with_context(|| format!("cannot write the report {}", path.display()))?;
    }
    // the state as it stands at the end of the input: the next replay (or `run`) goes on from it
    if persistent {
        let delta = pipeline.tracker().take_delta();
        store.commit_folded(&delta, &pipeline.take_new_users())?;
    }
    if stats {
        let mut err = std::io::stderr().lock();
        for (k, v) in [
            ("capture_frames_snapped", file_stats.0),
            ("capture_timestamps_refused", file_stats.1),
            ("capture_files_truncated", file_stats.2),
        ]
        .into_iter()
        .chain(pipeline.counters())
        {
            writeln!(err, "{k:32} {v}")?;
        }
        if persistent {
            for (k, v) in store.stats.counters() {
                writeln!(err, "{k:32} {v}")?;
            }
        }
        if let Some(kib) = super::peak_rss_kib() {
            writeln!(err, "{:32} {kib}", "peak_rss_kib")?;
        }
    }
    if let (Some((mut d, outbox)), Some(timeout)) = (delivery, send_timeout) {
        not_queued += outbox.push(&pending, &d.take_sessions()).context("cannot queue events in the outbox")?;
        super::deliver::deliver(&cfg, &d, outbox, timeout, stats, not_queued)?;
    }
    Ok(())
}

/// A batch for the publishing thread: each event's JSON line and its stream message.
type PublishBatch = Vec<(Vec<u8>, siptap::sink::stream::Outgoing)>;

/// Cluster mode's output: events are published in batches by a thread of their own (so that
/// deriving goes on while NATS acknowledges), which prints, in order, the lines of the events
/// that were new to the cluster.
struct ClusterOut {
    cluster: Arc<siptap::store::cluster::Cluster>,
    delivery: Delivery,
    pending: PublishBatch,
    tx: Option<std::sync::mpsc::SyncSender<PublishBatch>>,
    worker: Option<std::thread::JoinHandle<Result<()>>>,
    /// Publishing failed: the replay ends with that error, nothing more is tried.
    failed: Arc<std::sync::atomic::AtomicBool>,
}

/// Events per published batch, and batches queued for the publishing thread.
const CLUSTER_BATCH: usize = 512;
const CLUSTER_QUEUE: usize = 4;

impl ClusterOut {
    fn new(cluster: Arc<siptap::store::cluster::Cluster>, delivery: Delivery) -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<PublishBatch>(CLUSTER_QUEUE);
        let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, f) = (cluster.clone(), failed.clone());
        let worker = std::thread::Builder::new()
            .name("publish".into())
            .spawn(move || {
                let mut out = BufWriter::new(std::io::stdout().lock());
                for batch in rx {
                    let new = match publish_with_retry(&c, &batch) {
                        Ok(n) => n,
                        Err(e) => {
                            f.store(true, std::sync::atomic::Ordering::Relaxed);
                            return Err(e);
                        }
                    };
                    for ((line, _), n) in batch.iter().zip(new) {
                        if n && let Err(e) = out.write_all(line) {
                            // a closed pipe (`| head`) is not worth a complaint
                            if e.kind() == std::io::ErrorKind::BrokenPipe {
                                return Ok(());
                            }
                            return Err(e).context("cannot write events");
                        }
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
                Ok(())
            })
            .expect("a thread");
        ClusterOut { cluster, delivery, pending: Vec::new(), tx: Some(tx), worker: Some(worker), failed }
    }

    fn add(&mut self, r: &Routed) {
        if self.failed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut line = Vec::with_capacity(320);
        let id = r.event.id(&r.tenant);
        jsonl::append_with_id(&mut line, r, &id);
        let o = match self.delivery.queue(r, None) {
            Some(q) => siptap::sink::stream::outgoing(&self.cluster, &q),
            None => siptap::sink::stream::Outgoing {
                subject: self.cluster.cfg.lines_subject(&r.tenant),
                id,
                payload: line.clone().into(),
            },
        };
        self.pending.push((line, o));
        if self.pending.len() >= CLUSTER_BATCH {
            self.send();
        }
    }

    fn send(&mut self) {
        let batch = std::mem::take(&mut self.pending);
        if let Some(tx) = &self.tx
            && !batch.is_empty()
        {
            // (fails only when the thread has ended on an error, which `finish` reports)
            let _ = tx.send(batch);
        }
    }

    /// Publishes what is left, waits for the thread, and says how it ended.
    fn finish(mut self) -> Result<()> {
        self.send();
        drop(self.tx.take());
        match self.worker.take().map(|w| w.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the publishing thread failed"),
            None => Ok(()),
        }
    }
}

/// Publishes a batch (retrying for up to a minute while NATS is away); per event, whether it was
/// new to the cluster.
fn publish_with_retry(
    cluster: &Arc<siptap::store::cluster::Cluster>,
    batch: &[(Vec<u8>, siptap::sink::stream::Outgoing)],
) -> Result<Vec<bool>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let items: Vec<siptap::sink::stream::Outgoing> = batch
            .iter()
            .map(|(_, o)| siptap::sink::stream::Outgoing {
                subject: o.subject.clone(),
                id: o.id.clone(),
                payload: o.payload.clone(),
            })
            .collect();
        let c = cluster.clone();
        let r = cluster
            .block_for(std::time::Duration::from_secs(30), async move {
                siptap::sink::stream::publish_batch(&c, items).await
            })
            .unwrap_or_else(|| Err("timed out".into()));
        match r {
            Ok(new) => return Ok(new),
            Err(e) if std::time::Instant::now() >= deadline => bail!("{e}"),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// Messages per batch between the halves (and bytes: whichever comes first).
const BATCH_MESSAGES: usize = 1024;
const BATCH_BYTES: usize = 1 << 20;
/// How many full batches the decoding thread may be ahead of the state thread (at most
/// `BATCH_BYTES` each). The halves' shares change along a capture (registrations, calls,
/// scanners); with 4 the state thread waited 66-236 ms of a 1.2-1.8 s run for batches, with 16
/// 29-98 ms.
const BATCHES_AHEAD: usize = 16;
/// With one thread, `after_batch` runs every this many frames.
const SOLO_FRAMES: u64 = 1024;

/// How the captures are fed through the pipeline.
#[derive(Debug, Clone, Copy)]
pub struct Feeding {
    /// 1, or 2: decoding and parsing on one thread, state and output on the other
    pub threads: usize,
    /// A benchmark's aid (one thread): sleep this long after every so many frames, so that
    /// replay runs at the cadence of a live capture's batches, each begun with caches that
    /// went cold while it slept (`benches/live/capture.sh`). The events are the same.
    pub pause: Option<(u64, std::time::Duration)>,
}

/// Reads the captures through the pipeline, as one timeline. With two threads, reading,
/// decoding and parsing run on one and state, output and the store on this one, joined by a
/// bounded queue of batches; with one, each message goes from one half to the other as it is
/// parsed. The halves are the same code either way, so the events are the same, in the same
/// order. Returns the pipeline and the files' counters (frames cut by the snaplen, timestamps
/// refused, files ending inside a record).
fn feed(
    pipeline: Pipeline,
    captures: &[PathBuf],
    feeding: Feeding,
    emit: &mut dyn FnMut(Routed),
    after_batch: &mut dyn FnMut(&mut siptap::pipeline::Back, u64),
) -> Result<(Pipeline, (u64, u64, u64))> {
    let mut progress = Progress::new(captures);
    let mut file_stats = (0u64, 0u64, 0u64);
    if feeding.threads < 2 {
        let mut pipeline = pipeline;
        let mut frames = 0;
        let mut since_pause = 0;
        for c in captures {
            let fs = read_file(c, |frame| {
                progress.frame(frame.data.len());
                pipeline.frame(frame, emit);
                frames += 1;
                if let Some((every, sleep)) = feeding.pause {
                    since_pause += 1;
                    if since_pause >= every {
                        since_pause = 0;
                        std::thread::sleep(sleep);
                    }
                }
                if frames == SOLO_FRAMES {
                    pipeline.flush(emit);
                    after_batch(&mut pipeline.back, frames);
                    frames = 0;
                }
            })?;
            file_stats.0 += fs.snapped;
            file_stats.1 += fs.bad_timestamps;
            file_stats.2 += u64::from(fs.truncated);
            tracing::debug!(file = %c.display(), frames = fs.frames, "capture read");
        }
        pipeline.flush(emit);
        after_batch(&mut pipeline.back, frames);
        progress.done();
        return Ok((pipeline, file_stats));
    }
    let Pipeline { mut front, mut back, .. } = pipeline;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<siptap::pipeline::Batch>(BATCHES_AHEAD);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<siptap::pipeline::Batch>();
    let files = captures.to_vec();
    let reader = std::thread::Builder::new().name("decode".into()).spawn(move || {
        let mut stats = (0u64, 0u64, 0u64);
        let mut batch = siptap::pipeline::Batch::default();
        for c in &files {
            let fs = read_file(c, |frame| {
                front.frame(frame, &mut batch);
                if batch.full(BATCH_MESSAGES, BATCH_BYTES) {
                    let next = empty_rx.try_recv().unwrap_or_default();
                    // (the other side hung up only on an error of its own)
                    let _ = full_tx.send(std::mem::replace(&mut batch, next));
                }
            })?;
            stats.0 += fs.snapped;
            stats.1 += fs.bad_timestamps;
            stats.2 += u64::from(fs.truncated);
            tracing::debug!(file = %c.display(), frames = fs.frames, "capture read");
        }
        let _ = full_tx.send(batch);
        anyhow::Ok((front, stats))
    })?;
    for mut b in full_rx {
        progress.batch(b.frames, b.bytes());
        back.apply(&b, emit);
        after_batch(&mut back, b.frames);
        b.clear();
        let _ = empty_tx.send(b);
    }
    let (front, stats) = reader.join().map_err(|_| anyhow::anyhow!("the decoding thread failed"))??;
    progress.done();
    file_stats = stats;
    Ok((Pipeline::from_halves(front, back), file_stats))
}

/// Progress of a long replay on stderr, when stderr is a terminal (and nothing otherwise):
/// bytes read, messages, rate and the time left.
struct Progress {
    on: bool,
    total: u64,
    bytes: u64,
    frames: u64,
    started: std::time::Instant,
    last: std::time::Instant,
}

impl Progress {
    fn new(captures: &[PathBuf]) -> Self {
        let total = captures.iter().filter_map(|c| std::fs::metadata(c).ok()).map(|m| m.len()).sum();
        let now = std::time::Instant::now();
        Progress {
            on: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            total,
            bytes: 0,
            frames: 0,
            started: now,
            last: now,
        }
    }
    fn frame(&mut self, len: usize) {
        if self.on {
            self.batch(1, len + 16);
        }
    }
    fn batch(&mut self, frames: u64, bytes: usize) {
        if !self.on {
            return;
        }
        self.frames += frames;
        self.bytes += bytes as u64;
        if self.last.elapsed() < std::time::Duration::from_millis(500) {
            return;
        }
        self.last = std::time::Instant::now();
        let secs = self.started.elapsed().as_secs_f64();
        let rate = self.bytes as f64 / secs.max(1e-3);
        let left = self.total.saturating_sub(self.bytes) as f64 / rate.max(1.0);
        eprint!(
            "\r{:>7.1} of {:.1} MB  {:>10} frames  {:>8.0} frames/s  {:>5.0} s left ",
            self.bytes as f64 / 1e6,
            self.total as f64 / 1e6,
            self.frames,
            self.frames as f64 / secs.max(1e-3),
            left
        );
    }
    fn done(&self) {
        if self.on && self.frames > 0 {
            eprintln!();
        }
    }
}
