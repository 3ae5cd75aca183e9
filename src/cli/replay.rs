//! `siptap replay`: capture files as one timeline -> events as JSON lines (and, with `--send`,
//! into the Firebase outbox). With `--state`, the derivation state is loaded at start and saved
//! at the end, so that a capture replayed in parts gives the events of one run.
use anyhow::{Context, Result, bail};
use siptap::capture::file::read_file;
use siptap::config::Config;
use siptap::pipeline::Routed;
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
    captures: Vec<PathBuf>,
) -> Result<()> {
    let cfg = Config::load(&config)?;
    let mut file_stats = (0u64, 0u64, 0u64);
    for c in &captures {
        if !c.is_file() {
            bail!("cannot read capture {}: no such file", c.display());
        }
    }
    let siptap::store::Opened { mut pipeline, store, persistent, scratch: _scratch } =
        siptap::store::open_pipeline(&cfg, state.as_deref())?;
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
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut write_err: Option<std::io::Error> = None;
    let mut lines: Vec<u8> = Vec::with_capacity(1 << 17);
    let mut emit = |r: Routed| {
        jsonl::append(&mut lines, &r);
        if lines.len() >= 1 << 16 {
            if write_err.is_none()
                && let Err(e) = out.write_all(&lines)
            {
                write_err = Some(e);
            }
            lines.clear();
        }
        if let Some((d, outbox)) = &mut delivery
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
    let mut frames = 0u64;
    let mut save_err: Option<anyhow::Error> = None;
    for c in &captures {
        let fs = read_file(c, |frame| {
            pipeline.frame(frame, &mut emit);
            frames += 1;
            // the users that signed up go to the store as we go: memory holds only a bounded
            // cache of them, whatever the capture's size
            if frames.is_multiple_of(65_536) {
                let users = pipeline.take_new_users();
                if let Err(e) = store.commit(&Default::default(), &users)
                    && save_err.is_none()
                {
                    save_err = Some(e);
                }
            }
        })?;
        file_stats.0 += fs.snapped;
        file_stats.1 += fs.bad_timestamps;
        file_stats.2 += u64::from(fs.truncated);
        tracing::debug!(file = %c.display(), frames = fs.frames, "capture read");
    }
    pipeline.finish(&mut emit);
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
        return Err(e).context("cannot queue events in the outbox");
    }
    if let Some(e) = save_err {
        return Err(e);
    }
    // the state as it stands at the end of the input: the next replay (or `run`) goes on from it
    if persistent {
        let delta = pipeline.tracker.take_delta();
        store.commit(&delta, &pipeline.take_new_users())?;
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
