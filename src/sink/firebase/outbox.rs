//! The durable outbox: an event is committed here before it is sent and removed only after a 2xx.
//! `redb` (pure Rust, durable per commit), opened so that several processes can use it at once
//! (the daemon, and `siptap outbox` looking at it or requeueing while it runs).
//!
//! Tables: `queue` ((tenant, sequence) -> event: each tenant's queue is a range scan); `ids`
//! and `ids_by_time` (the deterministic ids of the events queued in the last 73 hours, so that a
//! replay queued again, or an event derived twice, is queued once); `rejected` (requests the
//! endpoint refused, events too old for GA4, and invalid ones: kept with their events, their
//! status and the server's answer, under keys that never repeat); `sessions` (each app instance's
//! current GA4 session); `meta` (the sequences). Writes are batched: one commit per call.
use super::mp::QueuedEvent;
use anyhow::{Context, Result};
use redb::{
    Builder, ConcurrencyMode, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

const QUEUE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
const IDS: TableDefinition<u128, i64> = TableDefinition::new("ids");
const IDS_BY_TIME: TableDefinition<(i64, u128), ()> = TableDefinition::new("ids_by_time");
const REJECTED: TableDefinition<u64, &[u8]> = TableDefinition::new("rejected_v2");
const SESSIONS: TableDefinition<&str, (i64, i64)> = TableDefinition::new("sessions");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// How long an event id is remembered: past 72 hours GA4 refuses the event anyway.
const ID_MEMORY: i64 = 73 * 3600 * 1_000_000;

/// What to do with a new event when the outbox is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Keep what is queued; refuse (drop and count) the new event.
    RejectNew,
    /// Make room by dropping the tenant's oldest queued event.
    DropOldest,
}

#[derive(Debug, Default)]
pub struct OutboxStats {
    pub queued: AtomicU64,
    pub dropped_full: AtomicU64,
    pub acked: AtomicU64,
    pub rejected: AtomicU64,
    pub dropped_too_old: AtomicU64,
    /// Events not queued because their id was queued before (a replay run again).
    pub duplicates: AtomicU64,
    /// Events more than 15 minutes ahead of this host's clock, sent stamped with the send time.
    pub clamped_future: AtomicU64,
    /// Rejected events discarded because the rejected table was full.
    pub rejected_discarded: AtomicU64,
}

/// Why events left the queue without a 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// The endpoint answered a 4xx that says the request itself is wrong.
    Refused,
    /// The local check (what /debug/mp/collect would say) failed: never sent.
    Invalid,
    /// Older than GA4's 72-hour window: it would be dropped.
    TooOld,
    /// Dropped to make room (when_full = drop_oldest).
    DroppedFull,
}

impl RejectKind {
    pub fn name(self) -> &'static str {
        match self {
            RejectKind::Refused => "refused",
            RejectKind::Invalid => "invalid",
            RejectKind::TooOld => "too_old",
            RejectKind::DroppedFull => "dropped_full",
        }
    }
}

/// One rejected request (or group of events), with what is needed to look at it and requeue it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    pub tenant: String,
    pub kind: RejectKind,
    /// The HTTP status (0 when never sent).
    pub status: u16,
    /// The server's answer or the local reasons.
    pub answer: String,
    /// When (µs since the epoch, this host's clock).
    pub at: i64,
    pub events: Vec<QueuedEvent>,
}

/// Counts of one tenant's events by state.
#[derive(Debug, Default, Clone, Serialize)]
pub struct TenantCounts {
    pub queued: u64,
    pub rejected: BTreeMap<String, u64>,
}

pub struct Outbox {
    db: Database,
    len: AtomicU64,
    max_events: u64,
    /// Events the rejected table keeps (a tenth of the outbox's bound, at least 10,000); past it
    /// the oldest records go (counted, logged once).
    max_rejected: u64,
    rejected_logged: AtomicBool,
    when_full: WhenFull,
    full_logged: AtomicBool,
    last_drop_log: std::sync::Mutex<Option<std::time::Instant>>,
    pub stats: OutboxStats,
    /// Wakes the sender when events are queued (it also polls, so a missed wake only delays).
    pub wake: tokio::sync::Notify,
}

fn id_key(id: &str) -> u128 {
    u128::from_str_radix(id.get(..32).unwrap_or(id), 16).unwrap_or_else(|_| {
        // an id that is not hex (older rows): hash it
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        id.hash(&mut h);
        u128::from(h.finish())
    })
}

/// Adds a rejected record, and trims the oldest ones past the bound.
fn add_rejected(
    tx: &redb::WriteTransaction,
    rec: &Rejected,
    max: u64,
    discarded: &AtomicU64,
    logged: &AtomicBool,
) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let mut r = tx.open_table(REJECTED)?;
    let key = next(&mut meta, "next_rejected")?;
    r.insert(key, serde_json::to_vec(rec)?.as_slice())?;
    let mut total = meta.get("rejected_events")?.map(|v| v.value()).unwrap_or(0) + rec.events.len() as u64;
    while total > max {
        let first = r.first()?.map(|(k, v)| {
            let n = serde_json::from_slice::<Rejected>(v.value()).map(|x| x.events.len() as u64).unwrap_or(1);
            (k.value(), n)
        });
        let Some((k, n)) = first else { break };
        if k == key {
            break;
        }
        r.remove(k)?;
        total = total.saturating_sub(n);
        discarded.fetch_add(n, Ordering::Relaxed);
        if !logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                max,
                "rejected table full: its oldest records are discarded (siptap outbox shows what is kept)"
            );
        }
    }
    meta.insert("rejected_events", total)?;
    Ok(())
}

/// Counts rejected events taken out of the table (requeued or dropped).
/// The rejected records of `tenant` (all tenants when `None`) whose kind is in `kinds`.
fn matching_rejected(
    r: &redb::Table<u64, &[u8]>,
    tenant: Option<&str>,
    kinds: &[RejectKind],
) -> Result<Vec<(u64, Rejected)>> {
    use redb::ReadableTable;
    let mut v = Vec::new();
    for row in r.iter()? {
        let (k, b) = row?;
        if let Ok(rec) = serde_json::from_slice::<Rejected>(b.value())
            && tenant.is_none_or(|t| t == rec.tenant)
            && kinds.contains(&rec.kind)
        {
            v.push((k.value(), rec));
        }
    }
    Ok(v)
}

fn less_rejected(tx: &redb::WriteTransaction, n: u64) -> Result<()> {
    let mut meta = tx.open_table(META)?;
    let total = meta.get("rejected_events")?.map(|v| v.value()).unwrap_or(0);
    meta.insert("rejected_events", total.saturating_sub(n))?;
    Ok(())
}

fn next(meta: &mut redb::Table<&str, u64>, key: &str) -> Result<u64> {
    let n = meta.get(key)?.map(|v| v.value()).unwrap_or(0);
    meta.insert(key, n + 1)?;
    Ok(n)
}

impl Outbox {
    /// Opens (or creates) `DIR/outbox.redb`; `cache_bytes` bounds redb's page cache.
    pub fn open(dir: &Path, max_events: u64, when_full: WhenFull, cache_bytes: usize) -> Result<Self> {
        crate::store::private_dir(dir)?;
        let path = dir.join("outbox.redb");
        crate::store::private_file(&path)?;
        let db = Builder::new()
            .set_cache_size(cache_bytes)
            .set_concurrency_mode(ConcurrencyMode::MultiWriter)
            .create(&path)
            .with_context(|| format!("cannot open outbox {}", path.display()))?;
        let tx = db.begin_write()?;
        let len = {
            let q = tx.open_table(QUEUE)?;
            tx.open_table(IDS)?;
            tx.open_table(IDS_BY_TIME)?;
            tx.open_table(REJECTED)?;
            tx.open_table(SESSIONS)?;
            let mut meta = tx.open_table(META)?;
            // sequences continue from the highest key ever used, never from the queue's length
            if meta.get("next_seq")?.is_none() {
                let mut n = 0;
                for row in q.iter()? {
                    n = n.max(row?.0.value().1 + 1);
                }
                meta.insert("next_seq", n)?;
            }
            q.len()?
        };
        tx.commit()?;
        let ob = Outbox {
            db,
            len: AtomicU64::new(len),
            max_events: max_events.max(1),
            max_rejected: (max_events.max(1) / 10).max(10_000),
            rejected_logged: AtomicBool::new(false),
            when_full,
            full_logged: AtomicBool::new(false),
            last_drop_log: std::sync::Mutex::new(None),
            stats: OutboxStats::default(),
            wake: tokio::sync::Notify::new(),
        };
        ob.forget_old_ids(crate::clock::now_micros())?;
        Ok(ob)
    }

    /// Events queued and not yet acknowledged (as of this process's last look).
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    /// The bound (delivery.max_outbox_events).
    pub fn max_events(&self) -> u64 {
        self.max_events
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues events in one commit, each once (an id queued in the last 73 hours is skipped), and
    /// the app instances' sessions. Returns how many were refused because the outbox is full.
    pub fn push(&self, events: &[QueuedEvent], sessions: &[(String, i64, i64)]) -> Result<u64> {
        if events.is_empty() && sessions.is_empty() {
            return Ok(0);
        }
        let tx = self.db.begin_write()?;
        let (mut refused, mut dropped, mut queued, mut dup) = (0u64, Vec::new(), 0u64, 0u64);
        {
            let mut q = tx.open_table(QUEUE)?;
            let mut ids = tx.open_table(IDS)?;
            let mut by_time = tx.open_table(IDS_BY_TIME)?;
            let mut meta = tx.open_table(META)?;
            let mut len = q.len()?;
            for e in events {
                let key = id_key(&e.id);
                if !e.id.is_empty() && ids.get(key)?.is_some() {
                    dup += 1;
                    continue;
                }
                if len >= self.max_events {
                    match self.when_full {
                        WhenFull::RejectNew => {
                            refused += 1;
                            continue;
                        }
                        WhenFull::DropOldest => {
                            let oldest = match q.range((e.tenant.as_str(), 0)..=(e.tenant.as_str(), u64::MAX))?.next() {
                                Some(row) => {
                                    let (k, v) = row?;
                                    Some((k.value().1, v.value().to_vec()))
                                }
                                None => None,
                            };
                            match oldest {
                                Some((k, v)) => {
                                    q.remove((e.tenant.as_str(), k))?;
                                    len -= 1;
                                    if let Ok(old) = serde_json::from_slice::<QueuedEvent>(&v) {
                                        dropped.push(old);
                                    }
                                }
                                None => {
                                    refused += 1;
                                    continue;
                                }
                            }
                        }
                    }
                }
                let seq = next(&mut meta, "next_seq")?;
                q.insert((e.tenant.as_str(), seq), serde_json::to_vec(e)?.as_slice())?;
                len += 1;
                queued += 1;
                if !e.id.is_empty() {
                    ids.insert(key, e.timestamp_micros)?;
                    by_time.insert((e.timestamp_micros, key), ())?;
                }
            }
            let mut s = tx.open_table(SESSIONS)?;
            for (app, sid, last) in sessions {
                s.insert(app.as_str(), (*sid, *last))?;
            }
            self.len.store(len, Ordering::Relaxed);
        }
        if !dropped.is_empty() {
            // what drop_oldest pushes out stays visible (and requeueable) in the rejected table
            let mut by_tenant: BTreeMap<String, Vec<QueuedEvent>> = BTreeMap::new();
            for d in dropped.iter().cloned() {
                by_tenant.entry(d.tenant.clone()).or_default().push(d);
            }
            for (tenant, evs) in by_tenant {
                let rec = Rejected {
                    tenant,
                    kind: RejectKind::DroppedFull,
                    status: 0,
                    answer: "outbox full (delivery.when_full = drop_oldest)".into(),
                    at: crate::clock::now_micros(),
                    events: evs,
                };
                add_rejected(&tx, &rec, self.max_rejected, &self.stats.rejected_discarded, &self.rejected_logged)?;
            }
        }
        tx.commit()?;
        self.stats.queued.fetch_add(queued, Ordering::Relaxed);
        self.stats.duplicates.fetch_add(dup, Ordering::Relaxed);
        self.stats.dropped_full.fetch_add(refused + dropped.len() as u64, Ordering::Relaxed);
        if queued > 0 {
            self.wake.notify_waiters();
        }
        if refused > 0 && !self.full_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                refused,
                max = self.max_events,
                "outbox full: new events refused (delivery.when_full = reject_new); counted in outbox_dropped_full"
            );
        }
        if !dropped.is_empty() {
            let mut last = self.last_drop_log.lock().expect("not poisoned");
            if last.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                *last = Some(std::time::Instant::now());
                tracing::error!(
                    dropped = self.stats.dropped_full.load(Ordering::Relaxed),
                    max = self.max_events,
                    "outbox full: the oldest events are dropped (delivery.when_full = drop_oldest); kept in the rejected table"
                );
            }
        }
        Ok(refused + dropped.len() as u64)
    }

    /// Up to `limit` of a tenant's queued events, oldest first, skipping those in `skip`.
    pub fn pending(&self, tenant: &str, limit: usize, skip: &HashSet<u64>) -> Result<Vec<(u64, QueuedEvent)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(QUEUE)?;
        // (another process may have changed the queue: `siptap outbox requeue`)
        self.len.store(t.len()?, Ordering::Relaxed);
        let mut out = Vec::new();
        for row in t.range((tenant, 0)..=(tenant, u64::MAX))? {
            let (k, v) = row?;
            let seq = k.value().1;
            if skip.contains(&seq) {
                continue;
            }
            match serde_json::from_slice(v.value()) {
                Ok(e) => out.push((seq, e)),
                Err(e) => tracing::error!(seq, error = %e, "unreadable outbox entry skipped"),
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// How many events a tenant has queued, without reading them.
    pub fn count(&self, tenant: &str) -> Result<u64> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(QUEUE)?;
        let mut n = 0;
        for row in t.range((tenant, 0)..=(tenant, u64::MAX))? {
            row?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes delivered events.
    pub fn remove(&self, tenant: &str, ids: &[u64]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(QUEUE)?;
            for id in ids {
                t.remove((tenant, *id))?;
            }
            self.len.store(t.len()?, Ordering::Relaxed);
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves events out of the queue into the rejected table, with why (a key that never repeats).
    pub fn reject(&self, tenant: &str, ids: &[u64], kind: RejectKind, status: u16, answer: &str) -> Result<()> {
        let tx = self.db.begin_write()?;
        let n;
        {
            let mut t = tx.open_table(QUEUE)?;
            let mut events = Vec::new();
            for id in ids {
                if let Some(v) = t.remove((tenant, *id))?
                    && let Ok(e) = serde_json::from_slice::<QueuedEvent>(v.value())
                {
                    events.push(e);
                }
            }
            n = events.len() as u64;
            self.len.store(t.len()?, Ordering::Relaxed);
            if !events.is_empty() {
                let rec = Rejected {
                    tenant: tenant.to_string(),
                    kind,
                    status,
                    answer: answer.chars().take(2000).collect(),
                    at: crate::clock::now_micros(),
                    events,
                };
                add_rejected(&tx, &rec, self.max_rejected, &self.stats.rejected_discarded, &self.rejected_logged)?;
            }
        }
        tx.commit()?;
        match kind {
            RejectKind::TooOld => self.stats.dropped_too_old.fetch_add(n, Ordering::Relaxed),
            _ => self.stats.rejected.fetch_add(n, Ordering::Relaxed),
        };
        Ok(())
    }

    /// Every rejected record, with its key.
    pub fn rejected(&self) -> Result<Vec<(u64, Rejected)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REJECTED)?;
        let mut v = Vec::new();
        for row in t.iter()? {
            let (k, b) = row?;
            if let Ok(r) = serde_json::from_slice(b.value()) {
                v.push((k.value(), r));
            }
        }
        Ok(v)
    }

    /// Queue and rejected counts per tenant (reading keys, or small records, not the queue's events).
    pub fn counts(&self) -> Result<BTreeMap<String, TenantCounts>> {
        let tx = self.db.begin_read()?;
        let mut m: BTreeMap<String, TenantCounts> = BTreeMap::new();
        for row in tx.open_table(QUEUE)?.iter()? {
            let (k, _) = row?;
            m.entry(k.value().0.to_string()).or_default().queued += 1;
        }
        for row in tx.open_table(REJECTED)?.iter()? {
            let (_, b) = row?;
            if let Ok(r) = serde_json::from_slice::<Rejected>(b.value()) {
                *m.entry(r.tenant.clone()).or_default().rejected.entry(r.kind.name().to_string()).or_default() +=
                    r.events.len() as u64;
            }
        }
        Ok(m)
    }

    /// Puts rejected events back in the queue (after fixing what made them fail). Returns how many.
    pub fn requeue(&self, tenant: Option<&str>, kinds: &[RejectKind]) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            let mut r = tx.open_table(REJECTED)?;
            let mut q = tx.open_table(QUEUE)?;
            let mut meta = tx.open_table(META)?;
            for (k, rec) in matching_rejected(&r, tenant, kinds)? {
                for e in rec.events {
                    let seq = next(&mut meta, "next_seq")?;
                    q.insert((e.tenant.as_str(), seq), serde_json::to_vec(&e)?.as_slice())?;
                    n += 1;
                }
                r.remove(k)?;
            }
            self.len.store(q.len()?, Ordering::Relaxed);
        }
        less_rejected(&tx, n)?;
        tx.commit()?;
        self.wake.notify_waiters();
        Ok(n)
    }

    /// Drops queued and/or rejected events (of a tenant). Returns how many.
    pub fn drop_events(&self, tenant: Option<&str>, queued: bool, kinds: &[RejectKind]) -> Result<u64> {
        let tx = self.db.begin_write()?;
        let mut n = 0;
        {
            if queued {
                let mut q = tx.open_table(QUEUE)?;
                let mut keys = Vec::new();
                for row in q.iter()? {
                    let (k, _) = row?;
                    let (t, s) = k.value();
                    if tenant.is_none_or(|x| x == t) {
                        keys.push((t.to_string(), s));
                    }
                }
                for (t, s) in keys {
                    q.remove((t.as_str(), s))?;
                    n += 1;
                }
                self.len.store(q.len()?, Ordering::Relaxed);
            }
            let mut r = tx.open_table(REJECTED)?;
            let keys: Vec<(u64, u64)> = matching_rejected(&r, tenant, kinds)?
                .into_iter()
                .map(|(k, rec)| (k, rec.events.len() as u64))
                .collect();
            let mut gone = 0;
            for (k, c) in keys {
                r.remove(k)?;
                gone += c;
            }
            n += gone;
            drop(r);
            less_rejected(&tx, gone)?;
        }
        tx.commit()?;
        Ok(n)
    }

    /// The app instances' sessions: (session id, last event time).
    pub fn session(&self, app: &str) -> Result<Option<(i64, i64)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SESSIONS)?;
        Ok(t.get(app)?.map(|v| v.value()))
    }

    /// Forgets the ids of events older than the 72-hour window (they cannot be sent anyway).
    pub fn forget_old_ids(&self, now: i64) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut by_time = tx.open_table(IDS_BY_TIME)?;
            let mut ids = tx.open_table(IDS)?;
            let cutoff = now - ID_MEMORY;
            let old: Vec<(i64, u128)> =
                by_time.range(..(cutoff, 0))?.filter_map(|r| r.ok().map(|(k, _)| k.value())).collect();
            for k in old {
                by_time.remove(k)?;
                ids.remove(k.1)?;
            }
            // sessions idle for longer than a day are over whatever the timeout
            let mut s = tx.open_table(SESSIONS)?;
            s.retain(|_, (_, last)| now - last < 24 * 3600 * 1_000_000)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Gives the file's free pages back after the queue drained (only where no other process has
    /// it open; otherwise a no-op).
    pub fn compact(self) -> Result<()> {
        let mut db = self.db;
        let _ = db.compact();
        Ok(())
    }
}
