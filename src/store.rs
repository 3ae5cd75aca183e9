//! The persistent set of known users behind `signup`, in an embedded `redb` database under the
//! state directory (pure Rust, durable per commit).
use anyhow::{Context, Result};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::collections::HashSet;
use std::path::Path;

/// address of record -> first signup time (microseconds since the epoch; 0 when seeded)
const USERS: TableDefinition<&str, i64> = TableDefinition::new("known_users");

pub struct KnownUsersStore {
    db: Database,
}

impl KnownUsersStore {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create state directory {}", dir.display()))?;
        let path = dir.join("siptap.redb");
        let db = Database::create(&path).with_context(|| format!("cannot open state database {}", path.display()))?;
        let tx = db.begin_write()?;
        tx.open_table(USERS)?;
        tx.commit()?;
        Ok(KnownUsersStore { db })
    }

    pub fn load(&self) -> Result<HashSet<String>> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(USERS)?;
        let mut set = HashSet::new();
        for row in t.iter()? {
            let (k, _) = row?;
            set.insert(k.value().to_string());
        }
        Ok(set)
    }

    /// Adds users in one transaction; returns how many were new.
    pub fn add(&self, users: &[(String, i64)]) -> Result<usize> {
        if users.is_empty() {
            return Ok(0);
        }
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
        Ok(added)
    }
}
