//! The durable outbox: an event is committed here before it is sent and removed only after a 2xx.
//! `redb` (pure Rust, durable per commit), keyed by (tenant, sequence), so each tenant's queue is
//! a range scan. Writes are batched: one commit per call, never one per event.
use super::mp::QueuedEvent;
use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

const OUTBOX: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("outbox");
/// Requests the endpoint refused with a 4xx (never retried), kept for inspection.
const REJECTED: TableDefinition<u64, &[u8]> = TableDefinition::new("rejected");

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
}

pub struct Outbox {
    db: Database,
    next: Mutex<u64>,
    len: AtomicU64,
    max_events: u64,
    when_full: WhenFull,
    pub stats: OutboxStats,
    /// Wakes the sender when events are queued (it also polls, so a missed wake only delays).
    pub wake: tokio::sync::Notify,
}

impl Outbox {
    /// Opens (or creates) `DIR/outbox.redb`; `cache_bytes` bounds redb's page cache.
    pub fn open(dir: &Path, max_events: u64, when_full: WhenFull, cache_bytes: usize) -> Result<Self> {
        crate::store::private_dir(dir)?;
        let path = dir.join("outbox.redb");
        crate::store::private_file(&path)?;
        let db = redb::Builder::new()
            .set_cache_size(cache_bytes)
            .create(&path)
            .with_context(|| format!("cannot open outbox {}", path.display()))?;
        let tx = db.begin_write()?;
        let (len, next) = {
            let t = tx.open_table(OUTBOX)?;
            tx.open_table(REJECTED)?;
            let len = t.len()?;
            let mut next = 0;
            for row in t.iter()? {
                let (k, _) = row?;
                next = next.max(k.value().1 + 1);
            }
            (len, next)
        };
        tx.commit()?;
        Ok(Outbox {
            db,
            next: Mutex::new(next),
            len: AtomicU64::new(len),
            max_events: max_events.max(1),
            when_full,
            stats: OutboxStats::default(),
            wake: tokio::sync::Notify::new(),
        })
    }

    /// Events queued and not yet acknowledged.
    pub fn len(&self) -> u64 {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues events in one commit; returns how many were refused because the outbox is full.
    pub fn push(&self, events: &[QueuedEvent]) -> Result<u64> {
        if events.is_empty() {
            return Ok(0);
        }
        let mut next = self.next.lock().expect("not poisoned");
        let tx = self.db.begin_write()?;
        let mut refused = 0;
        {
            let mut t = tx.open_table(OUTBOX)?;
            for e in events {
                if self.len.load(Ordering::Relaxed) >= self.max_events {
                    match self.when_full {
                        WhenFull::RejectNew => {
                            refused += 1;
                            continue;
                        }
                        WhenFull::DropOldest => {
                            let key = match t.range((e.tenant.as_str(), 0)..=(e.tenant.as_str(), u64::MAX))?.next() {
                                Some(row) => Some(row?.0.value().1),
                                None => None,
                            };
                            match key {
                                Some(k) => {
                                    t.remove((e.tenant.as_str(), k))?;
                                    self.len.fetch_sub(1, Ordering::Relaxed);
                                    self.stats.dropped_full.fetch_add(1, Ordering::Relaxed);
                                }
                                None => {
                                    refused += 1;
                                    continue;
                                }
                            }
                        }
                    }
                }
                let v = serde_json::to_vec(e)?;
                t.insert((e.tenant.as_str(), *next), v.as_slice())?;
                *next += 1;
                self.len.fetch_add(1, Ordering::Relaxed);
            }
        }
        tx.commit()?;
        let n = events.len() as u64 - refused;
        self.stats.queued.fetch_add(n, Ordering::Relaxed);
        self.wake.notify_waiters();
        self.stats.dropped_full.fetch_add(refused, Ordering::Relaxed);
        if refused > 0 {
            tracing::error!(
                refused,
                max = self.max_events,
                "outbox full: new events refused (delivery.when_full = reject_new)"
            );
        }
        Ok(refused)
    }

    /// Up to `limit` of a tenant's queued events, oldest first, skipping those in `skip`.
    pub fn pending(&self, tenant: &str, limit: usize, skip: &HashSet<u64>) -> Result<Vec<(u64, QueuedEvent)>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(OUTBOX)?;
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

    /// Removes delivered (or abandoned) events.
    pub fn remove(&self, tenant: &str, ids: &[u64]) -> Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(OUTBOX)?;
            for id in ids {
                if t.remove((tenant, *id))?.is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Moves a refused request out of the queue, keeping its body and the answer for inspection.
    pub fn reject(&self, tenant: &str, ids: &[u64], status: u16, body: &[u8], answer: &str) -> Result<()> {
        let record = serde_json::json!({
            "tenant": tenant,
            "status": status,
            "answer": answer,
            "body": String::from_utf8_lossy(body),
        });
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(OUTBOX)?;
            for id in ids {
                if t.remove((tenant, *id))?.is_some() {
                    self.len.fetch_sub(1, Ordering::Relaxed);
                }
            }
            let mut r = tx.open_table(REJECTED)?;
            let key = ids.first().copied().unwrap_or(0);
            r.insert(key, serde_json::to_vec(&record)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The requests kept after a 4xx.
    pub fn rejected(&self) -> Result<Vec<serde_json::Value>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(REJECTED)?;
        let mut v = Vec::new();
        for row in t.iter()? {
            let (_, b) = row?;
            v.push(serde_json::from_slice(b.value())?);
        }
        Ok(v)
    }
}
