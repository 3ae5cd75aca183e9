//! IPv4 and IPv6 fragment reassembly with bounded tables and a timeout.
//!
//! Large INVITEs (SDP with many codecs, or ICE candidates) exceed the MTU and arrive as IP
//! fragments. Fragments may come out of order, twice, or overlapping; the first copy of each byte
//! wins (as on most stacks), and what a later piece repeats is dropped and counted. Each datagram
//! holds at most `max_pieces` fragments and `max_bytes` bytes; all datagrams together at most
//! `max_datagrams` entries and `max_total_bytes` bytes. A datagram whose fragments never all
//! arrive is dropped at the timeout or when the table is full (oldest first), and counted.
//! Every step costs O(log n) in the pieces of a datagram; eviction is O(1).
use crate::capture::Micros;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
    pub proto: u8,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct DefragStats {
    pub fragments: u64,
    pub reassembled: u64,
    pub timed_out: u64,
    pub evicted: u64,
    /// Datagrams dropped for going past the byte or piece bound of one datagram.
    pub oversized: u64,
    /// Fragments with no payload.
    pub empty: u64,
    /// Fragments wholly repeating bytes already held (duplicates and overlaps).
    pub overlapping: u64,
}

struct Pending {
    first_ts: Micros,
    /// Disjoint pieces by offset: a new fragment only adds the bytes not held yet.
    pieces: BTreeMap<usize, Vec<u8>>,
    total: Option<usize>,
    /// Bytes held (the sum of the pieces, which never overlap).
    held: usize,
}

/// Bounds of the fragment table.
#[derive(Debug, Clone, Copy)]
pub struct DefragLimits {
    pub max_datagrams: usize,
    pub max_total_bytes: usize,
    pub max_pieces: usize,
    pub timeout: Micros,
}

pub struct Defrag {
    table: HashMap<FragKey, Pending>,
    /// Datagrams in arrival order, to evict the oldest and expire in O(1).
    order: VecDeque<(Micros, FragKey)>,
    limits: DefragLimits,
    /// Largest datagram (an IPv4 total length, or an IPv6 jumbo-free payload plus headers).
    max_bytes: usize,
    held: usize,
    full_logged: bool,
    pub stats: DefragStats,
}

impl Defrag {
    pub fn new(limits: DefragLimits) -> Self {
        Defrag {
            table: HashMap::new(),
            order: VecDeque::new(),
            limits: DefragLimits {
                max_datagrams: limits.max_datagrams.max(1),
                max_total_bytes: limits.max_total_bytes.max(1 << 16),
                max_pieces: limits.max_pieces.max(2),
                timeout: limits.timeout,
            },
            max_bytes: 65_535 + 8,
            held: 0,
            full_logged: false,
            stats: DefragStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes held by all datagrams waiting for fragments.
    pub fn bytes(&self) -> usize {
        self.held
    }

    fn drop_datagram(&mut self, key: &FragKey) {
        if let Some(p) = self.table.remove(key) {
            self.held -= p.held;
        }
    }

    /// Makes room for `need` more bytes or one more datagram: the oldest go first.
    fn make_room(&mut self, new_datagram: bool, need: usize) {
        while (new_datagram && self.table.len() >= self.limits.max_datagrams)
            || self.held + need > self.limits.max_total_bytes
        {
            let Some((t, k)) = self.order.pop_front() else { break };
            if self.table.get(&k).is_some_and(|p| p.first_ts == t) {
                self.drop_datagram(&k);
                self.stats.evicted += 1;
                if !self.full_logged {
                    self.full_logged = true;
                    tracing::warn!(
                        max_datagrams = self.limits.max_datagrams,
                        max_bytes = self.limits.max_total_bytes,
                        "IP fragment table full: dropping the oldest incomplete datagrams (limits.max_fragments)"
                    );
                }
            }
        }
    }

    /// Adds one fragment; returns the whole upper-layer payload when the datagram is complete.
    pub fn push(&mut self, ts: Micros, key: FragKey, offset: usize, more: bool, data: &[u8]) -> Option<Vec<u8>> {
        self.stats.fragments += 1;
        if data.is_empty() {
            self.stats.empty += 1;
            return None;
        }
        let end = offset + data.len();
        if end > self.max_bytes {
            self.stats.oversized += 1;
            self.drop_datagram(&key);
            return None;
        }
        self.expire(ts);
        self.make_room(!self.table.contains_key(&key), data.len());
        // (making room may have dropped this very datagram, if it was the oldest)
        if !self.table.contains_key(&key) {
            self.order.push_back((ts, key));
            self.table.insert(key, Pending { first_ts: ts, pieces: BTreeMap::new(), total: None, held: 0 });
        }
        let p = self.table.get_mut(&key).expect("present");
        if !more {
            p.total = Some(end);
        }
        // keep only the bytes of [offset, end) that no held piece covers (first copy wins)
        let mut added = 0;
        let mut at = offset;
        let mut new_pieces: Vec<(usize, usize)> = Vec::new();
        // a held piece starting before `offset` may cover its beginning
        if let Some((&o, d)) = p.pieces.range(..=offset).next_back() {
            at = at.max(o + d.len());
        }
        for (&o, d) in p.pieces.range(offset..end) {
            if o > at {
                new_pieces.push((at, o));
            }
            at = at.max(o + d.len());
            if at >= end {
                break;
            }
        }
        if at < end {
            new_pieces.push((at, end));
        }
        if new_pieces.is_empty() {
            self.stats.overlapping += 1;
            return self.complete(key);
        }
        if p.pieces.len() + new_pieces.len() > self.limits.max_pieces {
            self.stats.oversized += 1;
            self.drop_datagram(&key);
            return None;
        }
        for (a, b) in new_pieces {
            p.pieces.insert(a, data[a - offset..b - offset].to_vec());
            added += b - a;
        }
        p.held += added;
        self.held += added;
        self.complete(key)
    }

    /// The datagram, when its pieces cover `[0, total)`.
    fn complete(&mut self, key: FragKey) -> Option<Vec<u8>> {
        let p = self.table.get(&key)?;
        let total = p.total?;
        // the pieces are disjoint: they cover [0, total) exactly when they hold total bytes
        // below it and none reaches past it
        let below: usize = p.held;
        if below < total || p.pieces.iter().next_back().is_some_and(|(o, d)| o + d.len() > total) {
            return None;
        }
        let p = self.table.remove(&key)?;
        self.held -= p.held;
        let mut out = Vec::with_capacity(total);
        for (_, d) in p.pieces {
            out.extend_from_slice(&d);
        }
        self.stats.reassembled += 1;
        Some(out)
    }

    /// Drops datagrams whose first fragment is older than the timeout.
    pub fn expire(&mut self, now: Micros) {
        while let Some(&(t, k)) = self.order.front() {
            if now - t <= self.limits.timeout {
                break;
            }
            self.order.pop_front();
            if self.table.get(&k).is_some_and(|p| p.first_ts == t) {
                self.drop_datagram(&k);
                self.stats.timed_out += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FragKey {
        FragKey { src: "127.0.0.1".parse().unwrap(), dst: "127.0.0.2".parse().unwrap(), id: 7, proto: 17 }
    }

    fn limits(n: usize) -> DefragLimits {
        DefragLimits { max_datagrams: n, max_total_bytes: 1 << 20, max_pieces: 64, timeout: 30_000_000 }
    }

    #[test]
    fn out_of_order_duplicate_overlap() {
        let mut d = Defrag::new(limits(10));
        let data: Vec<u8> = (0..100u8).collect();
        assert!(d.push(0, key(), 80, false, &data[80..]).is_none());
        assert!(d.push(1, key(), 0, true, &data[..48]).is_none());
        assert!(d.push(2, key(), 0, true, &data[..48]).is_none()); // duplicate
        let out = d.push(3, key(), 40, true, &data[40..88]).unwrap(); // overlapping
        assert_eq!(out, data);
        assert_eq!(d.stats.reassembled, 1);
        assert_eq!(d.stats.overlapping, 1);
        assert!(d.is_empty());
        assert_eq!(d.bytes(), 0);
    }

    #[test]
    fn first_copy_wins() {
        let mut d = Defrag::new(limits(10));
        assert!(d.push(0, key(), 0, true, &[1; 16]).is_none());
        let out = d.push(1, key(), 8, false, &[2; 16]).unwrap();
        assert_eq!(out, [[1u8; 16].as_slice(), &[2u8; 8]].concat());
    }

    #[test]
    fn timeout_and_bound() {
        let mut d = Defrag::new(limits(2));
        d.push(0, key(), 0, true, &[1; 8]);
        d.push(1, FragKey { id: 8, ..key() }, 0, true, &[1; 8]);
        d.push(2, FragKey { id: 9, ..key() }, 0, true, &[1; 8]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.stats.evicted, 1);
        d.expire(40_000_000);
        assert_eq!(d.stats.timed_out, 2);
        assert!(d.is_empty());
    }

    #[test]
    fn empty_and_too_many_pieces_are_counted() {
        let mut d = Defrag::new(DefragLimits { max_pieces: 4, ..limits(10) });
        assert!(d.push(0, key(), 8, true, &[]).is_none());
        assert_eq!((d.stats.empty, d.len()), (1, 0));
        for i in 0..5 {
            d.push(0, key(), i * 16, true, &[1; 8]);
        }
        assert_eq!(d.stats.oversized, 1);
        assert!(d.is_empty());
    }

    #[test]
    fn bytes_of_all_datagrams_are_bounded() {
        let mut d = Defrag::new(DefragLimits { max_total_bytes: 1 << 16, ..limits(1000) });
        for id in 0..100 {
            d.push(id, FragKey { id: id as u32, ..key() }, 0, true, &[0; 1400]);
        }
        assert!(d.bytes() <= 1 << 16);
        assert!(d.stats.evicted >= 50);
    }
}
