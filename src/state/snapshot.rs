//! The durable form of the derivation state: what the state machines changed, as encoded records
//! the shells write to the state store, and the way back. Sans-IO: bytes in, bytes out.
//!
//! Four tables, each keyed by a 64-bit key: apps per address of record, registered contacts,
//! REGISTERs awaiting their response, call legs. Records are `postcard` encodings of the state
//! machines' own structs; [`FORMAT_VERSION`] changes whenever they do.
use super::tracker::Tracker;
use serde::Serialize;

/// The version of the record encoding. A store written with another version is not read.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    Aors,
    Contacts,
    Pending,
    Legs,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Aors, Table::Contacts, Table::Pending, Table::Legs];
    pub fn name(self) -> &'static str {
        match self {
            Table::Aors => "aors",
            Table::Contacts => "contacts",
            Table::Pending => "pending_registers",
            Table::Legs => "call_legs",
        }
    }
}

/// One record written (`Some`) or deleted (`None`).
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub table: Table,
    pub key: u64,
    pub value: Option<Vec<u8>>,
}

/// What changed since the last delta.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Delta {
    pub changes: Vec<Change>,
    /// The next call leg id to hand out.
    pub next_leg_id: u64,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// This delta followed by a newer one (a save that failed, then the next): the newer record
    /// of a key wins, each key once.
    pub fn then(self, newer: Delta) -> Delta {
        let mut seen = std::collections::HashSet::new();
        let mut changes: Vec<Change> = newer
            .changes
            .into_iter()
            .chain(self.changes.into_iter().rev())
            .filter(|c| seen.insert((c.table, c.key)))
            .collect();
        changes.reverse();
        Delta { changes, next_leg_id: self.next_leg_id.max(newer.next_leg_id) }
    }
}

#[derive(Debug)]
pub struct RecordError {
    pub table: Table,
    pub key: u64,
    pub error: String,
}

fn encode<T: Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).expect("state records encode")
}

impl Tracker {
    /// The records changed since the last call: every change of the tables, deletions included.
    pub fn take_delta(&mut self) -> Delta {
        let regs = self.registrations.take_dirty();
        let legs = self.calls.take_dirty();
        self.delta_of(regs, legs)
    }

    /// Every record (a full save).
    pub fn full_delta(&mut self) -> Delta {
        let _ = self.take_delta();
        let regs = self.registrations.all_keys();
        let legs = self.calls.leg_ids();
        self.delta_of(regs, legs)
    }

    fn delta_of(&self, regs: super::registration::RegKeys, legs: super::fingerprint::FpSet) -> Delta {
        let r = &self.registrations;
        let mut changes = Vec::with_capacity(regs.aors.len() + regs.contacts.len() + regs.pending.len() + legs.len());
        let mut sorted = |table: Table, keys: super::fingerprint::FpSet, value: &dyn Fn(u64) -> Option<Vec<u8>>| {
            let mut keys: Vec<u64> = keys.into_iter().collect();
            keys.sort_unstable();
            changes.extend(keys.into_iter().map(|key| Change { table, key, value: value(key) }));
        };
        sorted(Table::Aors, regs.aors, &|k| r.aor_record(k).map(encode));
        sorted(Table::Contacts, regs.contacts, &|k| r.contact_record(k).map(encode));
        sorted(Table::Pending, regs.pending, &|k| r.pending_record(k).map(encode));
        sorted(Table::Legs, legs, &|k| self.calls.leg_record(k).map(encode));
        Delta { changes, next_leg_id: self.calls.next_id() }
    }

    /// Takes one stored record (at start, before any message). A record that does not decode is
    /// refused with the reason; the caller counts and skips it.
    pub fn restore(&mut self, table: Table, key: u64, bytes: &[u8]) -> Result<(), RecordError> {
        let err = |e: postcard::Error| RecordError { table, key, error: e.to_string() };
        match table {
            Table::Aors => self.registrations.restore_aor(key, postcard::from_bytes(bytes).map_err(err)?),
            Table::Contacts => self.registrations.restore_contact(key, postcard::from_bytes(bytes).map_err(err)?),
            Table::Pending => self.registrations.restore_pending(key, postcard::from_bytes(bytes).map_err(err)?),
            Table::Legs => self.calls.restore_leg(key, postcard::from_bytes(bytes).map_err(err)?),
        }
        Ok(())
    }

    /// Whether changes are tracked for the state store (off where nothing is saved: a replay
    /// without a state directory).
    pub fn set_tracking(&mut self, on: bool) {
        self.registrations.set_tracking(on);
        self.calls.set_tracking(on);
    }

    /// After the last record: indexes are rebuilt and nothing restored counts as changed.
    pub fn finish_restore(&mut self, next_leg_id: u64) {
        self.registrations.finish_restore();
        self.calls.set_next_id(next_leg_id);
        let _ = self.take_delta();
    }
}
