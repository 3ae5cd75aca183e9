//! The embedded store: one redb file (`STATE/siptap.redb`, pure Rust, durable per commit) holding
//! the known users, the derivation state (apps, contacts, pending REGISTERs, call legs: see
//! `state::snapshot`) and a small meta table (format version, fingerprint key, next leg id).
//! Each commit is one redb transaction: a crash mid-write leaves the previous state.
//!
//! A commit (one a second while the state changes) appends the delta to a journal table, as
//! records of at most [`JOURNAL_RECORD_BYTES`] each. Every [`FOLD_COMMITS`] commits,
//! [`FOLD_BYTES`] bytes or [`FOLD_CHANGES`] changes, at a clean stop and at start, the journal is
//! folded into the four state tables (the newest record of each key, once) and emptied, in the
//! same transaction. Writing each changed record into a B-tree every second cost about 5,500
//! instructions per record, a third of the daemon's work on a registration wave; the fold writes
//! each key once however often it changed, and not at all when it came and went between folds
//! (most calls, every pending REGISTER).
use crate::capture::Micros;
use crate::state::Tracker;
use crate::state::snapshot::{Delta, FORMAT_VERSION, Table};
use crate::state::users::KnownUsers;
use anyhow::{Context, Result, anyhow, bail};
use redb::{Builder, Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// address of record -> first signup time (microseconds since the epoch; 0 when seeded)
const USERS: TableDefinition<&str, i64> = TableDefinition::new("known_users");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// record number -> a commit's delta, or a piece of it ([`Delta::encode_records`]), until the
/// next fold
const JOURNAL: TableDefinition<u64, &[u8]> = TableDefinition::new("journal");

/// The journal is folded when it holds this many commits (about five minutes of state changes)...
pub const FOLD_COMMITS: u64 = 300;
/// ...or this many bytes (the default of `limits.store_journal_mib`), or this many changes: bounds
/// on the file's growth and on what one fold holds in memory (the records, and a map entry per
/// key: about 15 MiB at most with the default).
pub const FOLD_BYTES: u64 = 8 << 20;
pub const FOLD_CHANGES: u64 = 100_000;
/// A save's delta goes into the journal as records of this many bytes at most: redb keeps a
/// value larger than a page in a page of its own, of the next power of two, allocated and
/// zero-filled at each write (a second's 2.3 MB under load took a 4 MiB page, fresh memory each
/// time); under 64 KiB those pages stay small. (The page-fault round in the README: a third
/// fewer page faults on the saving thread, with the journal's next key kept in memory and the
/// fold's buffers sized once.)
pub const JOURNAL_RECORD_BYTES: usize = 60 << 10;

fn def(t: Table) -> TableDefinition<'static, u64, &'static [u8]> {
    TableDefinition::new(t.name())
}

/// What the store did, for `--stats` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreStats {
    pub known_users: AtomicU64,
    pub aors: AtomicU64,
    pub contacts: AtomicU64,
    pub pending_registers: AtomicU64,
    pub call_legs: AtomicU64,
    pub bytes_on_disk: AtomicU64,
    pub saves: AtomicU64,
    pub save_errors: AtomicU64,
    /// Wall-clock time of the last save (µs since the epoch) and how long it took.
    pub last_save_unix_micros: AtomicU64,
    pub last_save_micros: AtomicU64,
    /// Commits in the journal since the last fold, and their bytes.
    pub journal_commits: AtomicU64,
    pub journal_bytes: AtomicU64,
    pub folds: AtomicU64,
    pub records_loaded: AtomicU64,
    /// Records that did not decode at start (skipped).
    pub records_unreadable: AtomicU64,
    /// The derivation state was dropped at start because an older siptap wrote it.
    pub fresh_starts: AtomicU64,
    pub lookup_errors: AtomicU64,
}

impl StoreStats {
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("store_known_users", self.known_users.load(Relaxed)),
            ("store_aors", self.aors.load(Relaxed)),
            ("store_contacts", self.contacts.load(Relaxed)),
            ("store_pending_registers", self.pending_registers.load(Relaxed)),
            ("store_call_legs", self.call_legs.load(Relaxed)),
            ("store_bytes_on_disk", self.bytes_on_disk.load(Relaxed)),
            ("store_saves", self.saves.load(Relaxed)),
            ("store_save_errors", self.save_errors.load(Relaxed)),
            ("store_last_save_unix_micros", self.last_save_unix_micros.load(Relaxed)),
            ("store_last_save_micros", self.last_save_micros.load(Relaxed)),
            ("store_journal_commits", self.journal_commits.load(Relaxed)),
            ("store_journal_bytes", self.journal_bytes.load(Relaxed)),
            ("store_folds", self.folds.load(Relaxed)),
            ("store_records_loaded", self.records_loaded.load(Relaxed)),
            ("store_records_unreadable", self.records_unreadable.load(Relaxed)),
            ("store_fresh_starts", self.fresh_starts.load(Relaxed)),
            ("store_lookup_errors", self.lookup_errors.load(Relaxed)),
        ]
    }
}

pub struct StateStore {
    db: Arc<Database>,
    path: PathBuf,
    fingerprint_key: [u64; 2],
    next_leg_id: u64,
    /// Changes in the journal since the last fold (for `FOLD_CHANGES`).
    journal_changes: AtomicU64,
    /// The journal's next key (it is empty after each fold, and at start: the opening folds it).
    /// Like the counters above it, it assumes one thread saves (the daemon's core thread, or
    /// replay's): redb locks the file against other processes.
    journal_seq: AtomicU64,
    /// A journal record's size bound ([`JOURNAL_RECORD_BYTES`]; smaller in tests).
    record_bytes: usize,
    /// The journal's bound in bytes ([`FOLD_BYTES`] unless configured).
    journal_max_bytes: u64,
    /// Whether a fold was made because the journal reached its bound in bytes (logged once).
    journal_full_logged: std::sync::atomic::AtomicBool,
    pub stats: Arc<StoreStats>,
}

impl StateStore {
    /// Opens (or creates) `DIR/siptap.redb`. `cache_bytes` bounds redb's page cache.
    pub fn open(dir: &Path, cache_bytes: usize) -> Result<Self> {
        super::private_dir(dir)?;
        let path = dir.join("siptap.redb");
        super::private_file(&path)?;
        let db = Builder::new().set_cache_size(cache_bytes).create(&path).map_err(|e| {
            anyhow!(
                "cannot open the state database {}: {e}. If it is damaged, move it aside: siptap then starts \
                 with an empty state (known users, registrations and open calls are forgotten)",
                path.display()
            )
        })?;
        let stats = Arc::new(StoreStats::default());
        let tx = db.begin_write()?;
        let (key, next_leg_id) = {
            let mut meta = tx.open_table(META)?;
            tx.open_table(USERS)?;
            for t in Table::ALL {
                tx.open_table(def(t))?;
            }
            tx.open_table(JOURNAL)?;
            let version = meta.get("format_version")?.map(|v| {
                let b = v.value();
                u32::from_le_bytes(b.get(..4).and_then(|s| s.try_into().ok()).unwrap_or([0xff; 4]))
            });
            match version {
                Some(v) if v > FORMAT_VERSION => {
                    bail!(
                        "{}: written by a newer siptap (state format {v}; this siptap reads format {FORMAT_VERSION}). \
                         Run that version, or move the file aside to start with an empty state",
                        path.display()
                    );
                }
                Some(v) if v < FORMAT_VERSION => {
                    tracing::warn!(
                        file = %path.display(), old = v, new = FORMAT_VERSION,
                        "state written by an older siptap: registrations and open calls start empty (known users kept)"
                    );
                    for t in Table::ALL {
                        let mut tab = tx.open_table(def(t))?;
                        tab.retain(|_, _| false)?;
                    }
                    tx.open_table(JOURNAL)?.retain(|_, _| false)?;
                    stats.fresh_starts.store(1, Relaxed);
                }
                _ => {}
            }
            meta.insert("format_version", FORMAT_VERSION.to_le_bytes().as_slice())?;
            let stored = meta.get("fingerprint_key")?.map(|v| v.value().to_vec());
            let key = match stored {
                Some(k) if k.len() == 16 => k,
                _ => {
                    let k = crate::sink::firebase::random_bytes(16)?;
                    meta.insert("fingerprint_key", k.as_slice())?;
                    k
                }
            };
            let next = meta
                .get("next_leg_id")?
                .and_then(|v| v.value().get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes));
            let next = next.unwrap_or(0);
            // what the last run journalled and did not fold (a kill, a crash): into the tables
            fold(&tx, &Delta::default(), &stats, 0)?;
            let k0 = u64::from_le_bytes(key[..8].try_into().expect("16 bytes"));
            let k1 = u64::from_le_bytes(key[8..].try_into().expect("16 bytes"));
            ([k0, k1], next)
        };
        tx.commit()?;
        let store = StateStore {
            db: Arc::new(db),
            path,
            fingerprint_key: key,
            next_leg_id,
            journal_changes: AtomicU64::new(0),
            journal_seq: AtomicU64::new(0),
            record_bytes: JOURNAL_RECORD_BYTES,
            journal_max_bytes: FOLD_BYTES,
            journal_full_logged: Default::default(),
            stats,
        };
        store.refresh_stats();
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bounds the journal at `bytes` (`limits.store_journal_mib`; [`FOLD_BYTES`] by default):
    /// a commit that would take it there folds it into the tables instead.
    pub fn set_journal_max_bytes(&mut self, bytes: u64) {
        self.journal_max_bytes = bytes.max(1);
    }

    /// The key of the state's fingerprints (random, made with the store).
    pub fn fingerprint_key(&self) -> [u64; 2] {
        self.fingerprint_key
    }

    /// Cluster mode: fingerprints are made with the cluster's key, the same on every sensor. A
    /// state saved under another key (this sensor's own, before it joined) cannot be read with
    /// it: its registrations and open calls are dropped (known users are kept by name).
    pub fn adopt_fingerprint_key(&mut self, key: [u64; 2]) -> Result<bool> {
        if key == self.fingerprint_key {
            return Ok(false);
        }
        let tx = self.db.begin_write()?;
        let mut had_state = false;
        {
            let mut meta = tx.open_table(META)?;
            let mut b = key[0].to_le_bytes().to_vec();
            b.extend_from_slice(&key[1].to_le_bytes());
            meta.insert("fingerprint_key", b.as_slice())?;
            for t in Table::ALL {
                let mut tab = tx.open_table(def(t))?;
                had_state |= tab.len()? > 0;
                tab.retain(|_, _| false)?;
            }
        }
        tx.commit()?;
        self.fingerprint_key = key;
        if !had_state {
            return Ok(false);
        }
        tracing::warn!(
            "joined a cluster: the saved registrations and open calls (made with this sensor's own key) start empty; known users are kept"
        );
        Ok(true)
    }

    /// The known users, read from the store when asked (a bounded cache in memory).
    pub fn users(&self, cache_entries: usize) -> StoreUsers {
        StoreUsers {
            db: self.db.clone(),
            cache: HashSet::new(),
            max_cache: cache_entries.max(16),
            new: Vec::new(),
            count: self.stats.known_users.load(Relaxed),
            stats: self.stats.clone(),
        }
    }

    /// Puts the saved derivation state into a tracker that has seen nothing yet.
    pub fn load(&self, tracker: &mut Tracker) -> Result<()> {
        let tx = self.db.begin_read()?;
        for t in Table::ALL {
            let tab = tx.open_table(def(t))?;
            for row in tab.iter()? {
                let (k, v) = row?;
                match tracker.restore(t, k.value(), v.value()) {
                    Ok(()) => {
                        self.stats.records_loaded.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        if self.stats.records_unreadable.fetch_add(1, Relaxed) == 0 {
                            tracing::warn!(table = e.table.name(), key = e.key, error = %e.error, "unreadable state record skipped");
                        }
                    }
                }
            }
        }
        tracker.finish_restore(self.next_leg_id);
        let bad = self.stats.records_unreadable.load(Relaxed);
        if bad > 0 {
            tracing::warn!(
                records = bad,
                "state records skipped because they did not decode (counted in store_records_unreadable)"
            );
        }
        Ok(())
    }

    /// Writes a delta and the users that signed up, in one transaction: the delta into the
    /// journal, or folded with the journal into the tables when the journal is full.
    pub fn commit(&self, delta: &Delta, users: &[(String, Micros)]) -> Result<()> {
        self.write(delta, users, false)
    }

    /// The same, and the journal folded into the tables whatever its size (at a clean stop, and
    /// at the end of a replay: the file then holds the state in its tables alone).
    pub fn commit_folded(&self, delta: &Delta, users: &[(String, Micros)]) -> Result<()> {
        self.write(delta, users, true)
    }

    fn write(&self, delta: &Delta, users: &[(String, Micros)], fold_now: bool) -> Result<()> {
        let journalled = self.stats.journal_commits.load(Relaxed) > 0;
        if delta.is_empty() && users.is_empty() && !(fold_now && journalled) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        // what this commit adds to the journal, counted once the transaction is durable
        let mut journal_add = (0, 0, 0);
        let mut seq = self.journal_seq.load(Relaxed);
        let mut folded = false;
        let res = (|| -> Result<()> {
            let tx = self.db.begin_write()?;
            {
                let mut u = tx.open_table(USERS)?;
                // in key order (neighbours share B-tree pages), one lookup each: a user already
                // stored (a commit retried) keeps the time stored first
                let mut sorted: Vec<&(String, Micros)> = users.iter().collect();
                sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
                for (aor, ts) in sorted {
                    let before = u.insert(aor.as_str(), *ts)?.map(|g| g.value());
                    if let Some(first) = before.filter(|first| first != ts) {
                        u.insert(aor.as_str(), first)?;
                    }
                }
                // (the record is made only when it goes into the journal, not when it is folded)
                let bytes = if delta.is_empty() { 0 } else { delta.encoded_len() as u64 };
                let commits = self.stats.journal_commits.load(Relaxed);
                let full = self.stats.journal_bytes.load(Relaxed) + bytes >= self.journal_max_bytes;
                if full && !fold_now && !self.journal_full_logged.swap(true, Relaxed) {
                    tracing::info!(
                        max_mib = self.journal_max_bytes >> 20,
                        "the state journal reached its size bound: folded into the state tables early \
                         (limits.store_journal_mib; counted in store_folds)"
                    );
                }
                if fold_now
                    || full
                    || commits + 1 >= FOLD_COMMITS
                    || self.journal_changes.load(Relaxed) + delta.changes.len() as u64 >= FOLD_CHANGES
                {
                    fold(&tx, delta, &self.stats, self.journal_changes.load(Relaxed))?;
                    folded = true;
                } else if !delta.is_empty() {
                    let mut j = tx.open_table(JOURNAL)?;
                    let mut written = 0;
                    delta.encode_records(self.record_bytes, |record| {
                        j.insert(seq, record)?;
                        (seq, written) = (seq + 1, written + record.len() as u64);
                        Ok::<_, redb::StorageError>(())
                    })?;
                    journal_add = (1, written, delta.changes.len() as u64);
                }
                let mut meta = tx.open_table(META)?;
                meta.insert("next_leg_id", delta.next_leg_id.to_le_bytes().as_slice())?;
            }
            tx.commit()?;
            Ok(())
        })();
        match &res {
            Ok(()) => {
                self.stats.saves.fetch_add(1, Relaxed);
                if folded {
                    self.stats.journal_commits.store(0, Relaxed);
                    self.stats.journal_bytes.store(0, Relaxed);
                    self.journal_changes.store(0, Relaxed);
                    self.stats.folds.fetch_add(1, Relaxed);
                    seq = 0;
                }
                self.journal_seq.store(seq, Relaxed);
                self.stats.journal_commits.fetch_add(journal_add.0, Relaxed);
                self.stats.journal_bytes.fetch_add(journal_add.1, Relaxed);
                self.journal_changes.fetch_add(journal_add.2, Relaxed);
                self.stats.last_save_micros.store(started.elapsed().as_micros() as u64, Relaxed);
                self.stats.last_save_unix_micros.store(crate::clock::now_micros() as u64, Relaxed);
                self.refresh_stats();
            }
            Err(_) => {
                self.stats.save_errors.fetch_add(1, Relaxed);
            }
        }
        res.with_context(|| format!("cannot save state to {}", self.path.display()))
    }

    /// Adds users in one transaction (seeding); returns how many were new.
    pub fn add_users(&self, users: &[(String, i64)]) -> Result<usize> {
        let tx = self.db.begin_write()?;
        let mut added = 0;
        {
            let mut t = tx.open_table(USERS)?;
            for (u, ts) in users {
                if t.get(u.as_str())?.is_none() {
                    t.insert(u.as_str(), *ts)?;
                    added += 1;
                }
            }
        }
        tx.commit()?;
        self.refresh_stats();
        Ok(added)
    }

    /// Entries per table and the file's size.
    pub fn refresh_stats(&self) {
        let Ok(tx) = self.db.begin_read() else { return };
        if let Ok(t) = tx.open_table(USERS) {
            self.stats.known_users.store(t.len().unwrap_or(0), Relaxed);
        }
        for (t, slot) in [
            (Table::Aors, &self.stats.aors),
            (Table::Contacts, &self.stats.contacts),
            (Table::Pending, &self.stats.pending_registers),
            (Table::Legs, &self.stats.call_legs),
        ] {
            if let Ok(tab) = tx.open_table(def(t)) {
                slot.store(tab.len().unwrap_or(0), Relaxed);
            }
        }
        if let Ok(m) = std::fs::metadata(&self.path) {
            self.stats.bytes_on_disk.store(m.len(), Relaxed);
        }
    }
}

/// Folds the journal, then `delta`, into the state tables inside `tx`: the newest record of each
/// key written once, table by table in key order (neighbouring keys share B-tree pages), and the
/// journal emptied. A journal record that does not decode is counted and skipped.
fn fold(tx: &redb::WriteTransaction, delta: &Delta, stats: &StoreStats, journal_changes: u64) -> Result<()> {
    let mut journal = tx.open_table(JOURNAL)?;
    // the journal's records copied into one buffer (at most the journal's size bound) and read
    // in place: (table, key, record as a range of the buffer) per change, oldest first
    // (sized once from what the journal is known to hold: grown by doubling, they touched about
    // twice their size in fresh pages at each fold, page faults that showed in the daemon's
    // profile under load)
    let mut bytes: Vec<u8> = Vec::with_capacity(stats.journal_bytes.load(Relaxed) as usize);
    let mut changes: Vec<(Table, u64, Option<std::ops::Range<usize>>)> = Vec::with_capacity(journal_changes as usize);
    for row in journal.iter()? {
        let (seq, v) = row?;
        let (base, mark) = (bytes.len(), changes.len());
        bytes.extend_from_slice(v.value());
        let walked = Delta::walk(&bytes[base..], |t, k, r| {
            changes.push((t, k, r.map(|r| base + r.start..base + r.end)));
        });
        if let Err(e) = walked {
            // (a record is taken whole or not at all)
            bytes.truncate(base);
            changes.truncate(mark);
            if stats.records_unreadable.fetch_add(1, Relaxed) == 0 {
                tracing::warn!(journal_record = seq.value(), error = %e, "unreadable state journal record skipped");
            }
        }
    }
    journal.retain(|_, _| false)?;
    // then `delta`'s, the newest; numbered newest first, so that after sorting by key and number
    // the first of each key is its newest record, the one kept (an in-place sort: a stable one
    // takes a scratch buffer as large as the changes; a 1 GiB journal, the bound's most, holds
    // fewer than 2^32 changes of 13 bytes or more)
    let mut all: Vec<(Table, u64, u32, Option<&[u8]>)> = Vec::with_capacity(changes.len() + delta.changes.len());
    all.extend(
        delta
            .changes
            .iter()
            .rev()
            .map(|c| (c.table, c.key, c.value.as_deref()))
            .chain(changes.into_iter().rev().map(|(t, k, r)| (t, k, r.map(|r| &bytes[r]))))
            .enumerate()
            .map(|(i, (t, k, v))| (t, k, i as u32, v)),
    );
    all.sort_unstable_by_key(|&(t, k, i, _)| (t.index(), k, i));
    all.dedup_by_key(|&mut (t, k, _, _)| (t, k));
    for t in Table::ALL {
        let mut tab = tx.open_table(def(t))?;
        for &(_, key, _, value) in all.iter().filter(|c| c.0 == t) {
            match value {
                Some(v) => {
                    tab.insert(key, v)?;
                }
                None => {
                    tab.remove(key)?;
                }
            }
        }
    }
    Ok(())
}

/// Known users answered from the store, with a bounded cache of the ones already asked about.
pub struct StoreUsers {
    db: Arc<Database>,
    cache: HashSet<Box<str>>,
    max_cache: usize,
    /// Signed up, not yet committed (kept in the cache until then).
    new: Vec<(String, Micros)>,
    count: u64,
    stats: Arc<StoreStats>,
}

impl StoreUsers {
    fn remember(&mut self, aor: &str) {
        if self.cache.len() >= self.max_cache {
            self.cache.clear();
            let pending: Vec<Box<str>> = self.new.iter().map(|(a, _)| a.as_str().into()).collect();
            self.cache.extend(pending);
        }
        self.cache.insert(aor.into());
    }

    fn stored(&self, aor: &str) -> Result<bool> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(USERS)?;
        Ok(t.get(aor)?.is_some())
    }
}

impl KnownUsers for StoreUsers {
    fn sign_up(&mut self, aor: &str, ts: Micros) -> bool {
        if self.cache.contains(aor) {
            return false;
        }
        let known = match self.stored(aor) {
            Ok(k) => k,
            Err(e) => {
                // without an answer, no signup: a missed one is better than one for an old user
                if self.stats.lookup_errors.fetch_add(1, Relaxed) == 0 {
                    tracing::error!(error = %e, "cannot read the known-users store");
                }
                true
            }
        };
        self.remember(aor);
        if known {
            return false;
        }
        self.new.push((aor.to_string(), ts));
        self.count += 1;
        true
    }

    fn take_new(&mut self) -> Vec<(String, Micros)> {
        std::mem::take(&mut self.new)
    }

    fn count(&self) -> u64 {
        self.count.max(self.stats.known_users.load(Relaxed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::snapshot::Change;

    impl StateStore {
        /// Injects a journal record where the next commit would put its first (what a record
        /// damaged on disk would look like).
        fn inject_record(&self, record: &[u8]) {
            let tx = self.db.begin_write().unwrap();
            let seq = self.journal_seq.fetch_add(1, Relaxed);
            tx.open_table(JOURNAL).unwrap().insert(seq, record).unwrap();
            tx.commit().unwrap();
        }

        fn journal_records(&self) -> Vec<Vec<u8>> {
            let tx = self.db.begin_read().unwrap();
            let j = tx.open_table(JOURNAL).unwrap();
            j.iter().unwrap().map(|r| r.unwrap().1.value().to_vec()).collect()
        }
    }

    fn change(table: Table, key: u64, value: Option<&[u8]>) -> Change {
        Change { table, key, value: value.map(<[u8]>::to_vec) }
    }

    fn delta(changes: Vec<Change>, next_leg_id: u64) -> Delta {
        Delta { changes, next_leg_id }
    }

    /// Every record of every state table, and the journal's length.
    fn contents(store: &StateStore) -> (Vec<(Table, u64, Vec<u8>)>, u64) {
        let tx = store.db.begin_read().unwrap();
        let mut all = Vec::new();
        for t in Table::ALL {
            for row in tx.open_table(def(t)).unwrap().iter().unwrap() {
                let (k, v) = row.unwrap();
                all.push((t, k.value(), v.value().to_vec()));
            }
        }
        (all, tx.open_table(JOURNAL).unwrap().len().unwrap())
    }

    #[test]
    fn journalled_changes_survive_a_kill_and_are_folded_at_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path(), 1 << 20).unwrap();
            store
                .commit(&delta(vec![change(Table::Legs, 1, Some(b"a")), change(Table::Aors, 9, Some(b"x"))], 2), &[])
                .unwrap();
            store
                .commit(&delta(vec![change(Table::Legs, 1, Some(b"b")), change(Table::Legs, 2, Some(b"c"))], 3), &[])
                .unwrap();
            store
                .commit(&delta(vec![change(Table::Legs, 2, None), change(Table::Pending, 5, Some(b"p"))], 3), &[])
                .unwrap();
            // in the journal only: the tables are untouched until a fold
            assert_eq!(contents(&store), (vec![], 3));
            assert_eq!(store.stats.journal_commits.load(Relaxed), 3);
            // dropped without a clean stop: what a kill -9 leaves
        }
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        let want =
            vec![(Table::Aors, 9, b"x".to_vec()), (Table::Pending, 5, b"p".to_vec()), (Table::Legs, 1, b"b".to_vec())];
        assert_eq!(contents(&store), (want, 0), "the newest record of each key, the deleted one gone");
        assert_eq!(store.next_leg_id, 3);
        assert_eq!(store.stats.journal_commits.load(Relaxed), 0);
    }

    #[test]
    fn an_unreadable_journal_record_is_counted_and_skipped_at_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = StateStore::open(dir.path(), 1 << 20).unwrap();
            store.commit(&delta(vec![change(Table::Legs, 1, Some(b"a"))], 2), &[]).unwrap();
            let tx = store.db.begin_write().unwrap();
            tx.open_table(JOURNAL).unwrap().insert(7u64, [0u8; 8 + 3].as_slice()).unwrap();
            tx.commit().unwrap();
            store.commit(&delta(vec![change(Table::Legs, 2, Some(b"b"))], 3), &[]).unwrap();
        }
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(store.stats.records_unreadable.load(Relaxed), 1);
        let legs: Vec<u64> = contents(&store).0.iter().map(|r| r.1).collect();
        assert_eq!(legs, [1, 2], "the records before and after it are kept");
    }

    /// Folding gives the tables what applying every commit in order would: the newest record of
    /// each key, deletions applied. Random commits of overwrites and deletions across the four
    /// tables, folded at random moments (and by the size bound), against a model; a journal
    /// record that does not decode is skipped whole, the records around it folded.
    #[test]
    fn folding_keeps_the_newest_record_of_each_key() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path(), 1 << 20).unwrap();
        store.set_journal_max_bytes(32 << 10);
        // (commits of more than a kilobyte go into the journal as several records)
        store.record_bytes = 1 << 10;
        let mut model = std::collections::BTreeMap::new();
        let mut rng = crate::testkit::Rng(21);
        for i in 0..400u64 {
            let mut changes = Vec::new();
            for _ in 0..rng.below(12) {
                let t = Table::ALL[rng.below(4) as usize];
                let key = rng.below(40);
                let value = (rng.below(4) != 0).then(|| vec![i as u8; rng.below(300) as usize]);
                changes.push(change(t, key, value.as_deref()));
            }
            // (a delta holds each key once: the newest of the commit's changes)
            let mut seen = std::collections::HashSet::new();
            changes.reverse();
            changes.retain(|c| seen.insert((c.table, c.key)));
            for c in &changes {
                match &c.value {
                    Some(v) => model.insert((c.table.index(), c.key), v.clone()),
                    None => model.remove(&(c.table.index(), c.key)),
                };
            }
            let d = delta(changes, i);
            if rng.below(25) == 0 { store.commit_folded(&d, &[]) } else { store.commit(&d, &[]) }.unwrap();
            if i == 200 {
                // a change of table 0 (key 1,000, which no commit uses), then a cut: nothing of it may
                // reach the tables
                let mut bad = 0u64.to_le_bytes().to_vec();
                bad.extend_from_slice(&[0, 0xe8, 3, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, b'z', 0]);
                store.inject_record(&bad);
            }
        }
        store.commit_folded(&delta(vec![], 400), &[]).unwrap();
        assert!(store.stats.folds.load(Relaxed) > 10, "folded {} times", store.stats.folds.load(Relaxed));
        assert_eq!(store.stats.records_unreadable.load(Relaxed), 1);
        let want: Vec<(Table, u64, Vec<u8>)> =
            model.into_iter().map(|((t, k), v)| (Table::ALL[usize::from(t)], k, v)).collect();
        assert_eq!(contents(&store), (want, 0));
    }

    #[test]
    fn the_journal_is_folded_at_its_configured_size() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = StateStore::open(dir.path(), 1 << 20).unwrap();
        store.set_journal_max_bytes(64 << 10);
        let big = vec![b'x'; 4000];
        let mut folded_at = None;
        for i in 0..40u64 {
            store.commit(&delta(vec![change(Table::Legs, i, Some(&big))], i), &[]).unwrap();
            assert!(store.stats.journal_bytes.load(Relaxed) < 64 << 10, "the journal stays under its bound");
            if folded_at.is_none() && store.stats.folds.load(Relaxed) == 1 {
                folded_at = Some(i);
                assert_eq!(contents(&store), (((0..=i).map(|k| (Table::Legs, k, big.clone()))).collect(), 0));
            }
        }
        // 4,000-byte records: the sixteenth or seventeenth would take the journal past 64 KiB
        let at = folded_at.expect("folded before 40 commits of 4 KB");
        assert!((14..=17).contains(&at), "folded at commit {at}");
        assert_eq!(store.stats.folds.load(Relaxed), 2, "and again 16 or so commits later");
    }

    #[test]
    fn the_journal_is_folded_when_full_and_at_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        store.commit(&delta(vec![change(Table::Contacts, 7, Some(b"old"))], 0), &[]).unwrap();
        store.commit_folded(&delta(vec![], 0), &[]).unwrap();
        assert_eq!(contents(&store), (vec![(Table::Contacts, 7, b"old".to_vec())], 0), "an empty delta still folds");
        assert_eq!(store.stats.folds.load(Relaxed), 1);
        for i in 1..FOLD_COMMITS {
            store
                .commit(&delta(vec![change(Table::Legs, i, Some(b"leg")), change(Table::Contacts, 7, None)], i), &[])
                .unwrap();
        }
        assert_eq!(contents(&store).1, FOLD_COMMITS - 1);
        assert_eq!(contents(&store).0.len(), 1, "nothing folded yet");
        // the commit that fills the journal folds it, and itself, into the tables
        store.commit(&delta(vec![change(Table::Legs, 1, None)], FOLD_COMMITS), &[]).unwrap();
        let (rows, journal) = contents(&store);
        assert_eq!(journal, 0);
        assert_eq!(store.stats.folds.load(Relaxed), 2);
        assert_eq!(store.stats.journal_bytes.load(Relaxed), 0);
        assert_eq!(rows.len() as u64, FOLD_COMMITS - 2, "legs 2..300; leg 1 and the contact deleted");
        assert!(rows.iter().all(|r| r.0 == Table::Legs && r.1 >= 2 && r.2 == b"leg"));
    }

    #[test]
    fn a_large_delta_folds_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        let big = vec![0u8; (FOLD_BYTES / 4) as usize];
        for i in 0..3 {
            store.commit(&delta(vec![change(Table::Aors, i, Some(&big))], 0), &[]).unwrap();
        }
        assert_eq!((store.stats.folds.load(Relaxed), contents(&store).1), (0, 3));
        store.commit(&delta(vec![change(Table::Aors, 3, Some(&big))], 0), &[]).unwrap();
        assert_eq!((store.stats.folds.load(Relaxed), contents(&store).1), (1, 0), "past FOLD_BYTES");
        assert_eq!(contents(&store).0.len(), 4);
    }

    #[test]
    fn a_user_committed_twice_keeps_the_time_stored_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        let users = |v: &[(&str, Micros)]| v.iter().map(|&(a, t)| (a.to_string(), t)).collect::<Vec<_>>();
        store.commit(&Delta::default(), &users(&[("b@x", 20), ("a@x", 10)])).unwrap();
        store.commit(&Delta::default(), &users(&[("a@x", 50), ("c@x", 5)])).unwrap();
        let tx = store.db.begin_read().unwrap();
        let t = tx.open_table(USERS).unwrap();
        let got: Vec<(String, i64)> =
            t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_string(), v.value())).collect();
        assert_eq!(got, users(&[("a@x", 10), ("b@x", 20), ("c@x", 5)]));
    }

    #[test]
    fn many_small_changes_fold_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        let deletions =
            |from: u64, n: u64| delta((from..from + n).map(|k| change(Table::Pending, k, None)).collect(), 0);
        store.commit(&deletions(0, FOLD_CHANGES / 2), &[]).unwrap();
        store.commit(&deletions(FOLD_CHANGES, FOLD_CHANGES / 2 - 1), &[]).unwrap();
        assert_eq!((store.stats.folds.load(Relaxed), store.stats.journal_commits.load(Relaxed)), (0, 2));
        store.commit(&deletions(3 * FOLD_CHANGES, 1), &[]).unwrap();
        assert_eq!((store.stats.folds.load(Relaxed), contents(&store).1), (1, 0), "at FOLD_CHANGES");
    }

    /// A save's delta larger than a journal record's bound goes in as several records, each
    /// within the bound, in order; after a kill, the next start folds them into exactly what the
    /// delta held.
    #[test]
    fn a_large_delta_is_journalled_in_records_of_bounded_size() {
        let dir = tempfile::tempdir().unwrap();
        let value = |k: u64| vec![(k % 251) as u8; 100 + (k % 7) as usize * 300];
        let want: Vec<(Table, u64, Vec<u8>)> = (0..3_000).map(|k| (Table::Legs, k, value(k))).collect();
        {
            let store = StateStore::open(dir.path(), 1 << 20).unwrap();
            let changes = want.iter().map(|(t, k, v)| change(*t, *k, Some(v))).collect();
            let d = delta(changes, 7);
            assert!(d.encoded_len() > 10 * JOURNAL_RECORD_BYTES);
            store.commit(&d, &[]).unwrap();
            let records = store.journal_records();
            assert!(records.len() > 10, "{} records", records.len());
            assert!(records.iter().all(|r| r.len() <= JOURNAL_RECORD_BYTES));
            let mut keys = Vec::new();
            for r in &records {
                assert_eq!(Delta::walk(r, |_, k, _| keys.push(k)), Ok(7), "each record whole, with the next leg id");
            }
            assert_eq!(keys, (0..3_000).collect::<Vec<_>>(), "every change once, in order");
            assert_eq!(store.stats.journal_bytes.load(Relaxed), records.iter().map(|r| r.len() as u64).sum::<u64>());
            assert_eq!(contents(&store).0, vec![], "nothing folded yet");
            // dropped without a clean stop: what a kill -9 leaves
        }
        let store = StateStore::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(contents(&store), (want, 0));
        assert_eq!(store.next_leg_id, 7);
    }
}
