//! IPv4 and IPv6 fragment reassembly with a bounded table and a timeout.
//!
//! Large INVITEs (SDP with many codecs, or ICE candidates) exceed the MTU and arrive as IP
//! fragments. Fragments may come out of order, twice, or overlapping; the first copy of each byte
//! wins (as on most stacks). A datagram whose fragments never all arrive is dropped at the timeout
//! or when the table is full (oldest first), and counted.
use crate::capture::Micros;
use std::collections::HashMap;
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
    pub oversized: u64,
}

struct Pending {
    first_ts: Micros,
    /// (offset, bytes), kept sorted by offset
    pieces: Vec<(usize, Vec<u8>)>,
    total: Option<usize>,
    bytes: usize,
}

pub struct Defrag {
    table: HashMap<FragKey, Pending>,
    max_datagrams: usize,
    max_bytes: usize,
    timeout: Micros,
    pub stats: DefragStats,
}

impl Defrag {
    pub fn new(max_datagrams: usize, timeout_secs: u64) -> Self {
        Defrag {
            table: HashMap::new(),
            max_datagrams: max_datagrams.max(1),
            max_bytes: 65_535 + 8,
            timeout: timeout_secs as Micros * 1_000_000,
            stats: DefragStats::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Adds one fragment; returns the whole upper-layer payload when the datagram is complete.
    pub fn push(&mut self, ts: Micros, key: FragKey, offset: usize, more: bool, data: &[u8]) -> Option<Vec<u8>> {
        self.stats.fragments += 1;
        let end = offset + data.len();
        if end > self.max_bytes {
            self.stats.oversized += 1;
            self.table.remove(&key);
            return None;
        }
        if !self.table.contains_key(&key) && self.table.len() >= self.max_datagrams {
            self.expire(ts);
            if self.table.len() >= self.max_datagrams {
                let oldest = self.table.iter().min_by_key(|(_, p)| p.first_ts).map(|(k, _)| *k);
                if let Some(k) = oldest {
                    self.table.remove(&k);
                    self.stats.evicted += 1;
                }
            }
        }
        let p = self.table.entry(key).or_insert_with(|| Pending {
            first_ts: ts,
            pieces: Vec::new(),
            total: None,
            bytes: 0,
        });
        if !more {
            p.total = Some(end);
        }
        p.bytes += data.len();
        if p.bytes > 4 * self.max_bytes {
            // an endless stream of duplicates
            self.table.remove(&key);
            self.stats.oversized += 1;
            return None;
        }
        let at = p.pieces.partition_point(|(o, _)| *o <= offset);
        p.pieces.insert(at, (offset, data.to_vec()));
        let total = p.total?;
        // complete when the pieces cover [0, total) without a hole
        let mut covered = 0;
        for (o, d) in &p.pieces {
            if *o > covered {
                return None;
            }
            covered = covered.max(o + d.len());
        }
        if covered < total {
            return None;
        }
        let p = self.table.remove(&key)?;
        let mut out = vec![0u8; total];
        let mut filled = vec![false; total];
        for (o, d) in &p.pieces {
            for (i, b) in d.iter().enumerate() {
                let j = o + i;
                if j < total && !filled[j] {
                    out[j] = *b;
                    filled[j] = true;
                }
            }
        }
        self.stats.reassembled += 1;
        Some(out)
    }

    /// Drops datagrams whose first fragment is older than the timeout.
    pub fn expire(&mut self, now: Micros) {
        let timeout = self.timeout;
        let before = self.table.len();
        self.table.retain(|_, p| now - p.first_ts <= timeout);
        self.stats.timed_out += (before - self.table.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FragKey {
        FragKey { src: "127.0.0.1".parse().unwrap(), dst: "127.0.0.2".parse().unwrap(), id: 7, proto: 17 }
    }

    #[test]
    fn out_of_order_duplicate_overlap() {
        let mut d = Defrag::new(10, 30);
        let data: Vec<u8> = (0..100u8).collect();
        assert!(d.push(0, key(), 80, false, &data[80..]).is_none());
        assert!(d.push(1, key(), 0, true, &data[..48]).is_none());
        assert!(d.push(2, key(), 0, true, &data[..48]).is_none()); // duplicate
        let out = d.push(3, key(), 40, true, &data[40..88]).unwrap(); // overlapping
        assert_eq!(out, data);
        assert_eq!(d.stats.reassembled, 1);
        assert!(d.is_empty());
    }

    #[test]
    fn timeout_and_bound() {
        let mut d = Defrag::new(2, 30);
        d.push(0, key(), 0, true, &[1; 8]);
        d.push(1, FragKey { id: 8, ..key() }, 0, true, &[1; 8]);
        d.push(2, FragKey { id: 9, ..key() }, 0, true, &[1; 8]);
        assert_eq!(d.len(), 2);
        assert_eq!(d.stats.evicted, 1);
        d.expire(40_000_000);
        assert_eq!(d.stats.timed_out, 2);
        assert!(d.is_empty());
    }
}
