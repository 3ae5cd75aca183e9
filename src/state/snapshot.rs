//! The durable form of the derivation state: what the state machines changed, as encoded records
//! the shells write to the state store, and the way back. Sans-IO: bytes in, bytes out.
//!
//! Four tables, each keyed by a 64-bit key: apps per address of record, registered contacts,
//! REGISTERs awaiting their response, call legs. Records are `postcard` encodings of the state
//! machines' own structs; [`FORMAT_VERSION`] changes whenever they do.
use super::tracker::Tracker;
use serde::Serialize;
use std::ops::Range;

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
    fn from_index(i: u8) -> Option<Table> {
        Table::ALL.get(usize::from(i)).copied()
    }
    pub(crate) fn index(self) -> u8 {
        self as u8
    }
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

impl Change {
    /// Its bytes in a journal record: table (1), key (8), length (4), then the record.
    fn encoded_len(&self) -> usize {
        13 + self.value.as_ref().map_or(0, Vec::len)
    }
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

    /// The delta as one journal record: [`Delta::encode_records`] without a bound (the tests'
    /// reference; the store writes bounded records).
    #[cfg(test)]
    pub fn encode(&self) -> Vec<u8> {
        let mut record = Vec::new();
        let whole: Result<(), std::convert::Infallible> = self.encode_records(usize::MAX, |r| {
            record = r.to_vec();
            Ok(())
        });
        let Ok(()) = whole;
        record
    }

    /// The delta as journal records of about `max` bytes at most (a change longer than that alone
    /// in its own), in order, made in one reused buffer and handed to `each`. A record is the
    /// next leg id (8 bytes), then per change its table (1 byte), key (8) and record length (4;
    /// `u32::MAX` for a deletion) and the record: one copy of the already encoded records, where
    /// writing each into the tables' B-trees costs thousands of instructions. (One record per
    /// save made a value of megabytes under load, which the store put in a page of its own,
    /// allocated afresh and zero-filled, then read back whole at the next save to find the
    /// journal's last key: a fifth of the saving thread's page faults at 50,000 packets/s.)
    pub fn encode_records<E>(&self, max: usize, mut each: impl FnMut(&[u8]) -> Result<(), E>) -> Result<(), E> {
        let mut out = Vec::with_capacity(max.min(self.encoded_len()));
        let start = |out: &mut Vec<u8>| {
            out.clear();
            out.extend_from_slice(&self.next_leg_id.to_le_bytes());
        };
        start(&mut out);
        for c in &self.changes {
            if out.len() > 8 && out.len() + c.encoded_len() > max {
                each(&out)?;
                start(&mut out);
            }
            out.push(c.table.index());
            out.extend_from_slice(&c.key.to_le_bytes());
            match &c.value {
                Some(v) => {
                    out.extend_from_slice(&(v.len() as u32).to_le_bytes());
                    out.extend_from_slice(v);
                }
                None => out.extend_from_slice(&u32::MAX.to_le_bytes()),
            }
        }
        if out.len() > 8 || self.changes.is_empty() {
            each(&out)?;
        }
        Ok(())
    }

    /// The length of the delta as one record ([`Delta::encode_records`] without a bound), without
    /// making it.
    pub fn encoded_len(&self) -> usize {
        8 + self.changes.iter().map(Change::encoded_len).sum::<usize>()
    }

    /// The way back from [`Delta::encode_records`]'s records, owned; a truncated or unknown record is an error.
    /// (The tests' round trip of the format: the store reads records with [`Delta::walk`].)
    #[cfg(test)]
    pub fn decode(b: &[u8]) -> Result<Delta, String> {
        let mut changes = Vec::new();
        let next_leg_id = Delta::walk(b, |table, key, value| {
            changes.push(Change { table, key, value: value.map(|r| b[r].to_vec()) })
        })?;
        Ok(Delta { changes, next_leg_id })
    }

    /// Reads a [`Delta::encode_records`] record without copying it: each change in order, its record as
    /// a range of `b`; returns the next leg id. (Folding the journal reads every record of it:
    /// a vector per record and a map of them cost more than the reading.) A truncated or
    /// unknown record is an error, after the changes before it were given.
    pub fn walk(b: &[u8], mut change: impl FnMut(Table, u64, Option<Range<usize>>)) -> Result<u64, String> {
        // the next `n` bytes: their range, and `at` moved past them
        fn take(b: &[u8], at: &mut usize, n: usize) -> Result<Range<usize>, String> {
            let left = b.len() - *at;
            if left < n {
                return Err(format!("journal record truncated ({left} bytes left, {n} needed)"));
            }
            *at += n;
            Ok(*at - n..*at)
        }
        let word = |r: Range<usize>| u64::from_le_bytes(b[r].try_into().expect("8 bytes"));
        let mut at = 0;
        let next_leg_id = word(take(b, &mut at, 8)?);
        while at < b.len() {
            let t = b[take(b, &mut at, 1)?.start];
            let table = Table::from_index(t).ok_or_else(|| format!("journal record names table {t}"))?;
            let key = word(take(b, &mut at, 8)?);
            let len = u32::from_le_bytes(b[take(b, &mut at, 4)?].try_into().expect("4 bytes"));
            let value = if len == u32::MAX { None } else { Some(take(b, &mut at, len as usize)?) };
            change(table, key, value);
        }
        Ok(next_leg_id)
    }
}

#[derive(Debug)]
pub struct RecordError {
    pub table: Table,
    pub key: u64,
    pub error: String,
}

/// One record in postcard's encoding (the same bytes as `postcard::to_allocvec`, tested): written
/// into `scratch` and copied out once, exactly sized. `to_allocvec` grows its vector field by
/// field; in a profile of the daemon at 4,000 packets/s that growth was half of the ~1,400
/// instructions each changed record cost to encode (the daemon encodes every record changed in
/// the last second, about one per message at low rates). A record too long for `scratch` (none
/// the state machines make: their strings are at most `MAX_FIELD` bytes) is encoded the old way.
fn encode<T: Serialize>(scratch: &mut [u8], v: &T) -> Vec<u8> {
    match postcard::to_slice(v, scratch) {
        Ok(b) => b.to_vec(),
        Err(_) => postcard::to_allocvec(v).expect("state records encode"),
    }
}

/// The bytes [`encode`] writes records through.
const SCRATCH: usize = 4096;

/// The changes of one table, in key order (neighbours share B-tree pages when folded): a key
/// whose record is gone is a deletion.
fn sorted<'t, T: Serialize + 't>(
    changes: &mut Vec<Change>,
    scratch: &mut [u8],
    table: Table,
    keys: super::fingerprint::FpSet,
    record: impl Fn(u64) -> Option<&'t T>,
) {
    let mut keys: Vec<u64> = keys.into_iter().collect();
    keys.sort_unstable();
    changes.extend(keys.into_iter().map(|key| Change { table, key, value: record(key).map(|v| encode(scratch, v)) }));
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
        let mut scratch = vec![0u8; SCRATCH];
        sorted(&mut changes, &mut scratch, Table::Aors, regs.aors, |k| r.aor_record(k));
        sorted(&mut changes, &mut scratch, Table::Contacts, regs.contacts, |k| r.contact_record(k));
        sorted(&mut changes, &mut scratch, Table::Pending, regs.pending, |k| r.pending_record(k));
        sorted(&mut changes, &mut scratch, Table::Legs, legs, |k| self.calls.leg_record(k));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn delta() -> Delta {
        Delta {
            changes: vec![
                Change { table: Table::Aors, key: 1, value: Some(vec![1, 2, 3]) },
                Change { table: Table::Legs, key: u64::MAX, value: None },
                Change { table: Table::Pending, key: 7, value: Some(Vec::new()) },
                Change { table: Table::Contacts, key: 0, value: Some(vec![9; 300]) },
            ],
            next_leg_id: 42,
        }
    }

    /// The records are postcard's bytes (`to_allocvec`'s), whichever way they are encoded: the
    /// lab captures replayed with changes tracked, a delta taken after each, every record
    /// compared; and a value too long for the scratch buffer.
    #[test]
    fn records_are_postcards_bytes() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = crate::config::Config::load(&root.join("config.toml.example")).unwrap();
        let users = Box::new(crate::state::users::MemoryUsers::new([]));
        let mut p = crate::pipeline::Pipeline::new(&cfg, users, [3, 4]);
        p.tracker().set_tracking(true);
        let mut checked = [0usize; 4];
        for c in crate::testkit::lab_captures() {
            crate::capture::file::read_file(&c, |f| p.frame(f, &mut |_| {})).unwrap();
            p.flush(&mut |_| {});
            let t = p.tracker();
            for d in [t.take_delta(), t.full_delta()] {
                for ch in &d.changes {
                    let Some(v) = &ch.value else { continue };
                    let r = &t.registrations;
                    let want = match ch.table {
                        Table::Aors => postcard::to_allocvec(r.aor_record(ch.key).unwrap()),
                        Table::Contacts => postcard::to_allocvec(r.contact_record(ch.key).unwrap()),
                        Table::Pending => postcard::to_allocvec(r.pending_record(ch.key).unwrap()),
                        Table::Legs => postcard::to_allocvec(t.calls.leg_record(ch.key).unwrap()),
                    };
                    assert_eq!(v, &want.unwrap(), "{:?} {}", ch.table, ch.key);
                    checked[ch.table.index() as usize] += 1;
                }
            }
        }
        // (the lab captures leave registrations and call legs: every table but the short-lived
        // pending REGISTERs has records to compare)
        assert!(checked[0] > 10 && checked[1] > 10 && checked[3] > 10, "{checked:?}");
        let long: Vec<String> = (0..SCRATCH / 8).map(|i| format!("record {i}")).collect();
        let mut scratch = [0u8; SCRATCH];
        assert_eq!(encode(&mut scratch, &long), postcard::to_allocvec(&long).unwrap());
        assert!(postcard::to_allocvec(&long).unwrap().len() > SCRATCH);
    }

    #[test]
    fn a_journal_record_decodes_to_the_delta_it_was_made_of() {
        let d = delta();
        assert_eq!(d.encode().len(), d.encoded_len());
        assert_eq!(Delta::decode(&d.encode()), Ok(d));
        let empty = Delta { changes: Vec::new(), next_leg_id: 5 };
        assert_eq!(Delta::decode(&empty.encode()), Ok(empty));
    }

    #[test]
    fn a_truncated_or_strange_journal_record_is_an_error_not_a_panic() {
        let b = delta().encode();
        for n in 0..b.len() {
            // every cut either ends on a change boundary (a shorter delta) or is refused
            if let Ok(d) = Delta::decode(&b[..n]) {
                assert!(d.changes.len() < 4 && n >= 8, "cut at {n}");
            }
        }
        let mut bad = b.clone();
        bad[8] = 9;
        assert!(Delta::decode(&bad).unwrap_err().contains("table 9"));
    }

    /// [`Delta::encode_records`] gives the changes of [`Delta::encode`]'s one record, in order,
    /// cut into records within the bound (a change longer than the bound alone in its own),
    /// each a record of its own with the next leg id.
    #[test]
    fn records_of_a_bounded_size_hold_the_same_changes() {
        let mut rng = crate::testkit::Rng(5);
        for _ in 0..200 {
            let changes: Vec<Change> = (0..rng.below(60))
                .map(|i| Change {
                    table: Table::ALL[rng.below(4) as usize],
                    key: i,
                    value: (rng.below(5) != 0).then(|| vec![i as u8; rng.below(700) as usize]),
                })
                .collect();
            let d = Delta { changes, next_leg_id: rng.below(1000) };
            let max = 13 + rng.below(1500) as usize;
            let mut records = Vec::new();
            let r: Result<(), ()> = d.encode_records(max, |r| {
                records.push(r.to_vec());
                Ok(())
            });
            r.unwrap();
            assert!(!records.is_empty());
            let mut got = Vec::new();
            for r in &records {
                let one = Delta::decode(r).unwrap();
                assert_eq!(one.next_leg_id, d.next_leg_id);
                assert!(r.len() <= max || one.changes.len() == 1, "{} bytes over {max}", r.len());
                got.extend(one.changes);
            }
            assert_eq!(got, d.changes);
            assert_eq!(Delta::decode(&d.encode()).unwrap(), d);
            assert_eq!(d.encode().len(), d.encoded_len());
        }
    }
}
