//! The embedded store: one redb file (`STATE/siptap.redb`, pure Rust, durable per commit) holding
//! the known users, the derivation state (apps, contacts, pending REGISTERs, call legs: see
//! `state::snapshot`) and a small meta table (format version, fingerprint key, next leg id).
//! Each commit is one redb transaction: a crash mid-write leaves the previous state.
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
            let k0 = u64::from_le_bytes(key[..8].try_into().expect("16 bytes"));
            let k1 = u64::from_le_bytes(key[8..].try_into().expect("16 bytes"));
            ([k0, k1], next)
        };
        tx.commit()?;
        let store = StateStore { db: Arc::new(db), path, fingerprint_key: key, next_leg_id, stats };
        store.refresh_stats();
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// Writes a delta and the users that signed up, in one transaction.
    pub fn commit(&self, delta: &Delta, users: &[(String, Micros)]) -> Result<()> {
        if delta.is_empty() && users.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let res = (|| -> Result<()> {
            let tx = self.db.begin_write()?;
            {
                let mut u = tx.open_table(USERS)?;
                for (aor, ts) in users {
                    if u.get(aor.as_str())?.is_none() {
                        u.insert(aor.as_str(), *ts)?;
                    }
                }
                for t in Table::ALL {
                    let mut tab = tx.open_table(def(t))?;
                    for c in delta.changes.iter().filter(|c| c.table == t) {
                        match &c.value {
                            Some(v) => {
                                tab.insert(c.key, v.as_slice())?;
                            }
                            None => {
                                tab.remove(c.key)?;
                            }
                        }
                    }
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
