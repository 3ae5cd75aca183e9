//! TCP stream reassembly into SIP messages (RFC 3261 18.3: framed by Content-Length).
//!
//! One flow per direction. Segments are put in sequence order (retransmissions and overlaps
//! trimmed, a bounded number held out of order); a stream first seen mid-message, or after a
//! gap, is resynchronised on the next SIP start line. Each stream's buffer has a byte cap.
use super::ws::{self, WsFrame};
use crate::capture::Micros;
use crate::sip::frame::{Framed, frame, leading_crlf};
use crate::sip::parse::{header_end, looks_like_start_line, starts_with_sip};
use memchr::memchr;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

#[derive(Debug, Default, Clone, Copy)]
pub struct TcpStats {
    pub segments: u64,
    pub messages: u64,
    pub retransmitted: u64,
    pub out_of_order: u64,
    pub gaps: u64,
    pub skipped_bytes: u64,
    pub overflows: u64,
    pub evicted: u64,
    pub websocket_upgrades: u64,
    pub websocket_messages: u64,
    pub websocket_too_long: u64,
    pub not_sip_messages: u64,
}

/// One direction of a connection, as the decoder names it (source and destination).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A flow's key as the tables keep it: both addresses in [`super::addr_bytes`]'s form, 38 bytes
/// where two `SocketAddr`s take 64 (a registered TCP phone keeps two flows, one per direction,
/// in the flow table and its LRU queue), hashed in one write (the tables keep std's keyed
/// SipHash, the flows coming from the network).
#[derive(Clone, Copy, PartialEq, Eq)]
struct Packed([u8; 38]);

impl Packed {
    fn of(k: &FlowKey) -> Packed {
        let mut b = [0u8; 38];
        b[..19].copy_from_slice(&super::addr_bytes(k.src));
        b[19..].copy_from_slice(&super::addr_bytes(k.dst));
        Packed(b)
    }

    fn key(&self) -> FlowKey {
        let half = |b: &[u8]| super::addr_from_bytes(b.try_into().expect("19 bytes"));
        FlowKey { src: half(&self.0[..19]), dst: half(&self.0[19..]) }
    }
}

impl std::hash::Hash for Packed {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write(&self.0);
    }
}

/// One direction of a connection. Kept small (64 bytes): an idle connection, one per
/// registered TCP phone and direction, holds only this; what few flows need (segments held
/// behind a gap, a WebSocket connection's state) is boxed in [`Rare`].
struct Flow {
    next_seq: u32,
    /// The first sequence number seen: the origin of the keys of [`Rare::ahead`].
    base: u32,
    buf: Vec<u8>,
    rare: Option<Box<Rare>>,
    last_ts: Micros,
    /// The flow's current place in the LRU order.
    stamp: u64,
    /// Bytes it holds (buffered and held behind a gap), as last counted: under 4 GiB, since
    /// its buffer, the bytes behind a gap and a WebSocket message are each held to the
    /// per-stream cap, at most 1 GiB (`limits.max_tcp_buffer_bytes`, clamped in `new`).
    bytes: u32,
    /// Whether `buf` starts at a message boundary.
    synced: bool,
    /// Used since it took that place (it gets a second chance when it reaches the front).
    touched: bool,
}

/// What few flows hold: segments behind a gap, or a WebSocket connection's state.
#[derive(Default)]
struct Rare {
    /// Segments ahead of `next_seq`, keyed by their offset from `base` (so that the order holds
    /// across the 2^32 wrap of sequence numbers).
    ahead: BTreeMap<u32, Vec<u8>>,
    /// Since when the bytes at `next_seq` are missing.
    gap_since: Option<Micros>,
    /// After an HTTP upgrade: the fragmented message being reassembled.
    websocket: Option<Vec<u8>>,
}

impl Flow {
    fn held(&self) -> usize {
        self.buf.len()
            + self
                .rare
                .as_ref()
                .map_or(0, |r| r.ahead.values().map(Vec::len).sum::<usize>() + r.websocket.as_ref().map_or(0, Vec::len))
    }

    fn gap_since(&self) -> Option<Micros> {
        self.rare.as_ref().and_then(|r| r.gap_since)
    }

    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Drops the box once it holds nothing.
    fn tidy(&mut self) {
        if self.rare.as_ref().is_some_and(|r| r.ahead.is_empty() && r.gap_since.is_none() && r.websocket.is_none()) {
            self.rare = None;
        }
    }
}

pub struct TcpReassembly {
    flows: HashMap<Packed, Flow>,
    /// Flows in the order they were queued (the second-chance "clock" approximation of least
    /// recently used): (stamp, key), current when the flow's stamp matches (entries of removed
    /// flows are skipped, and compacted away now and then). A segment only marks its flow
    /// touched; a touched flow reaching the front is queued again instead of being evicted or
    /// expired. So the queue holds about one entry per flow, and eviction and idle expiry cost
    /// O(1) per flow, amortised.
    lru: VecDeque<(u64, Packed)>,
    stamp: u64,
    /// Flows waiting for missing bytes (for the periodic give-up).
    gapped: HashSet<Packed>,
    /// Connections opened on a SIP port that carried no data yet: their initial sequence number,
    /// so that a stream whose first data segments arrive out of order still starts at its
    /// beginning. Small and bounded (oldest forgotten first): a SYN flood only churns it.
    syns: HashMap<Packed, u32>,
    syn_order: VecDeque<Packed>,
    max_syns: usize,
    max_flows: usize,
    max_buffer: usize,
    max_ahead: usize,
    /// Bytes all streams may hold together (checked on every segment).
    max_total_bytes: usize,
    /// Bytes all streams hold.
    held: usize,
    idle_timeout: Micros,
    full_logged: bool,
    pub stats: TcpStats,
}

/// A TCP segment's fields that reassembly needs.
pub struct Segment<'a> {
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: &'a [u8],
}

impl TcpReassembly {
    /// `max_total_bytes`: what all streams may hold together.
    pub fn new(max_flows: usize, max_buffer: usize, max_total_bytes: usize) -> Self {
        TcpReassembly {
            flows: HashMap::new(),
            lru: VecDeque::new(),
            stamp: 0,
            gapped: HashSet::new(),
            syns: HashMap::new(),
            syn_order: VecDeque::new(),
            max_syns: (max_flows / 16).clamp(256, 4096),
            max_flows: max_flows.max(1),
            // (at most 1 GiB: a flow's count of bytes held is 32 bits)
            max_buffer: max_buffer.clamp(1024, 1 << 30),
            max_ahead: 64,
            max_total_bytes: max_total_bytes.max(max_buffer.clamp(1024, 1 << 30)),
            held: 0,
            idle_timeout: 300 * 1_000_000,
            full_logged: false,
            stats: TcpStats::default(),
        }
    }

    /// Bytes all streams hold.
    pub fn bytes(&self) -> usize {
        self.held
    }

    /// Queues a flow at the back (a new one, or one given a second chance).
    fn enqueue(&mut self, key: Packed) {
        self.stamp += 1;
        if let Some(f) = self.flows.get_mut(&key) {
            f.stamp = self.stamp;
            f.touched = false;
            self.lru.push_back((self.stamp, key));
        }
        if self.lru.len() > 2 * self.flows.len() + 1024 {
            let flows = &self.flows;
            self.lru.retain(|(s, k)| flows.get(k).is_some_and(|f| f.stamp == *s));
            self.lru.shrink_to(2 * self.lru.len() + 1024);
        }
    }

    fn remove(&mut self, key: &Packed) {
        if let Some(f) = self.flows.remove(key) {
            self.held -= f.bytes as usize;
            if !self.gapped.is_empty() {
                self.gapped.remove(key);
            }
        }
    }

    fn remember_syn(&mut self, key: Packed, isn: u32) {
        if self.syns.insert(key, isn).is_none() {
            self.syn_order.push_back(key);
            while self.syns.len() > self.max_syns {
                let Some(old) = self.syn_order.pop_front() else { break };
                self.syns.remove(&old);
            }
            if self.syn_order.len() > 2 * self.max_syns {
                let syns = &self.syns;
                self.syn_order.retain(|k| syns.contains_key(k));
            }
        }
    }

    /// Forgets the least recently used flow (the first in the queue not used since queued).
    fn evict_one(&mut self) -> bool {
        while let Some((s, k)) = self.lru.pop_front() {
            let Some(f) = self.flows.get(&k).filter(|f| f.stamp == s) else { continue };
            if f.touched {
                self.enqueue(k);
                continue;
            }
            self.remove(&k);
            self.stats.evicted += 1;
            if !self.full_logged {
                self.full_logged = true;
                tracing::warn!(
                    max_streams = self.max_flows,
                    max_bytes = self.max_total_bytes,
                    "TCP stream table full: forgetting the least recently used streams (limits.max_tcp_streams, limits.max_tcp_total_bytes)"
                );
            }
            return true;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Feeds one segment; calls `out` with each whole SIP message it completes (and whether it
    /// came over WebSocket). `sip_port`: whether the flow is on a SIP port, so that a connection
    /// or a mid-stream start there is worth following.
    pub fn push(
        &mut self,
        ts: Micros,
        key: FlowKey,
        seg: Segment<'_>,
        sip_port: bool,
        out: &mut dyn FnMut(&[u8], bool),
    ) {
        let key = Packed::of(&key);
        self.stats.segments += 1;
        if seg.rst {
            self.remove(&key);
            self.syns.remove(&key);
            return;
        }
        let known = self.flows.contains_key(&key);
        if !known {
            // a stream costs nothing until it carries data that looks like SIP: a SYN flood or
            // a stream of junk to port 5060 leaves no flow
            if seg.payload.is_empty() {
                if seg.syn && sip_port {
                    self.remember_syn(key, seg.seq);
                }
                return;
            }
            let seq = if seg.syn { seg.seq.wrapping_add(1) } else { seg.seq };
            let starts_sip = could_start_sip(seg.payload);
            let upgrade = ws::starts_with_http(seg.payload) && ws::is_upgrade(seg.payload);
            let mid_stream = sip_port && !starts_sip && find_start_line(seg.payload).is_some();
            // the connection's start is known and this segment comes a little after it: the first
            // ones were reordered (a segment at the very start must look like SIP itself)
            // (the tables are looked in only when they hold something: hashing a flow's
            // addresses is most of what a segment costs)
            let isn = if self.syns.is_empty() { None } else { self.syns.get(&key) }
                .map(|i| i.wrapping_add(1))
                .filter(|i| seq != *i && seq.wrapping_sub(*i) < 1 << 16);
            if !starts_sip && !upgrade && !mid_stream && isn.is_none() {
                return;
            }
            if !self.syns.is_empty() {
                self.syns.remove(&key);
            }
            self.expire(ts);
            while self.flows.len() >= self.max_flows && self.evict_one() {}
            let next_seq = isn.unwrap_or(seq);
            let synced = starts_sip || upgrade || isn.is_some();
            self.flows.insert(
                key,
                Flow {
                    next_seq,
                    base: next_seq,
                    buf: Vec::new(),
                    rare: None,
                    last_ts: ts,
                    stamp: 0,
                    bytes: 0,
                    synced,
                    touched: false,
                },
            );
            self.enqueue(key);
        }
        let max_buffer = self.max_buffer;
        let max_ahead = self.max_ahead;
        let stats = &mut self.stats;
        let flow = self.flows.get_mut(&key).expect("inserted above");
        flow.last_ts = ts;
        flow.touched |= known;
        let seq = if seg.syn { seg.seq.wrapping_add(1) } else { seg.seq };
        if !seg.payload.is_empty() {
            let mut give_up = false;
            let off = seq.wrapping_sub(flow.next_seq) as i32;
            if off < 0 {
                // retransmission, possibly carrying new bytes past next_seq
                let skip = (-(off as i64)) as usize;
                if skip >= seg.payload.len() {
                    stats.retransmitted += 1;
                } else {
                    append(&mut flow.buf, &mut flow.next_seq, &seg.payload[skip..]);
                }
            } else if off == 0 {
                append(&mut flow.buf, &mut flow.next_seq, seg.payload);
            } else {
                stats.out_of_order += 1;
                let held: usize = flow.rare.as_ref().map_or(0, |r| r.ahead.values().map(Vec::len).sum());
                if held + seg.payload.len() > max_buffer {
                    // no more room behind the gap: stop waiting for it
                    stats.overflows += 1;
                    give_up = true;
                } else {
                    let base = flow.base;
                    let rare = flow.rare();
                    rare.ahead.entry(seq.wrapping_sub(base)).or_insert_with(|| seg.payload.to_vec());
                    rare.gap_since.get_or_insert(ts);
                }
            }
            settle(flow, stats, ts, give_up, max_ahead, max_buffer, out);
            let now_held = flow.held();
            self.held = self.held + now_held - flow.bytes as usize;
            flow.bytes = now_held as u32;
            if flow.gap_since().is_some() {
                self.gapped.insert(key);
            } else if !self.gapped.is_empty() {
                self.gapped.remove(&key);
            }
            // all streams together stay under the byte budget, on every segment
            while self.held > self.max_total_bytes && self.evict_one() {}
        }
        if seg.fin {
            self.remove(&key);
            if !self.syns.is_empty() {
                self.syns.remove(&key);
            }
        }
    }

    /// Gives up waiting for missing bytes that are not coming (the periodic clock tick: a quiet
    /// stream may have no next segment to notice the gap).
    pub fn flush_gaps(&mut self, now: Micros, out: &mut dyn FnMut(FlowKey, &[u8], bool)) {
        let (max_ahead, max_buffer) = (self.max_ahead, self.max_buffer);
        let gapped: Vec<Packed> = self.gapped.iter().copied().collect();
        for key in gapped {
            let Some(flow) = self.flows.get_mut(&key) else { continue };
            let addrs = key.key();
            settle(flow, &mut self.stats, now, false, max_ahead, max_buffer, &mut |m, ws| out(addrs, m, ws));
            let now_held = flow.held();
            self.held = self.held + now_held - flow.bytes as usize;
            flow.bytes = now_held as u32;
            if flow.gap_since().is_none() {
                self.gapped.remove(&key);
            }
        }
    }

    /// Forgets flows idle for longer than the idle timeout (the least recently used come first:
    /// O(1) per flow forgotten).
    pub fn expire(&mut self, now: Micros) {
        while let Some(&(s, k)) = self.lru.front() {
            match self.flows.get(&k) {
                Some(f) if f.stamp == s => {
                    if now - f.last_ts <= self.idle_timeout {
                        if f.touched {
                            // used since queued: to the back (everything behind was queued later)
                            self.lru.pop_front();
                            self.enqueue(k);
                            continue;
                        }
                        break;
                    }
                    self.lru.pop_front();
                    self.remove(&k);
                    self.stats.evicted += 1;
                }
                _ => {
                    self.lru.pop_front();
                }
            }
        }
    }
}

/// How long missing bytes are waited for before the stream skips them.
const GAP_WAIT: Micros = 1_000_000;

/// Skips a gap that waited too long (or holds too many segments or bytes behind it), pulls in the held
/// segments that are now in order, and frames what can be framed.
fn settle(
    flow: &mut Flow,
    stats: &mut TcpStats,
    now: Micros,
    give_up: bool,
    max_ahead: usize,
    max_buffer: usize,
    out: &mut dyn FnMut(&[u8], bool),
) {
    let Some(rare) = &mut flow.rare else {
        return extract(flow, stats, max_buffer, out);
    };
    if let Some(since) = rare.gap_since
        && (give_up || rare.ahead.len() > max_ahead || now - since > GAP_WAIT)
        && let Some(first) = rare.ahead.keys().next().map(|k| flow.base.wrapping_add(*k))
    {
        // the missing bytes are not coming: drop the partial message, resynchronise after the gap
        stats.gaps += 1;
        stats.skipped_bytes += u64::from(first.wrapping_sub(flow.next_seq)) + flow.buf.len() as u64;
        flow.buf.clear();
        flow.synced = false;
        flow.next_seq = first;
    }
    while let Some(&k) = rare.ahead.keys().next() {
        let off = flow.base.wrapping_add(k).wrapping_sub(flow.next_seq) as i32;
        if off > 0 {
            break;
        }
        let data = rare.ahead.remove(&k).expect("present");
        let skip = (-(off as i64)) as usize;
        if skip < data.len() {
            append(&mut flow.buf, &mut flow.next_seq, &data[skip..]);
        }
    }
    rare.gap_since = if rare.ahead.is_empty() { None } else { rare.gap_since.or(Some(now)) };
    extract(flow, stats, max_buffer, out);
}

/// In-order bytes onto a flow's buffer (its fields, so that its boxed [`Rare`] may be borrowed
/// meanwhile).
fn append(buf: &mut Vec<u8>, next_seq: &mut u32, data: &[u8]) {
    buf.extend_from_slice(data);
    *next_seq = next_seq.wrapping_add(data.len() as u32);
}

fn extract(flow: &mut Flow, stats: &mut TcpStats, max_buffer: usize, out: &mut dyn FnMut(&[u8], bool)) {
    let mut start = 0;
    loop {
        if let Some(partial) = flow.rare.as_mut().and_then(|r| r.websocket.as_mut()) {
            match ws::frame(&flow.buf[start..], max_buffer) {
                WsFrame::Incomplete => break,
                WsFrame::TooLong => {
                    stats.websocket_too_long += 1;
                    stats.skipped_bytes += (flow.buf.len() - start) as u64;
                    start = flow.buf.len();
                    flow.rare().websocket = None;
                    flow.synced = false;
                    break;
                }
                WsFrame::Complete { consumed, fin, opcode, payload } => {
                    start += consumed;
                    // data frames (continuation, text, binary); close, ping and pong carry no SIP
                    if opcode <= 2 {
                        partial.extend_from_slice(&payload);
                        if partial.len() > max_buffer {
                            stats.websocket_too_long += 1;
                            partial.clear();
                        } else if fin {
                            let msg = std::mem::take(partial);
                            if starts_with_sip(&msg) {
                                stats.websocket_messages += 1;
                                out(&msg, true);
                            } else if !msg.is_empty() {
                                stats.not_sip_messages += 1;
                            }
                        }
                    }
                    continue;
                }
            }
        }
        let rest = &flow.buf[start..];
        let crlf = leading_crlf(rest);
        start += crlf;
        let rest = &flow.buf[start..];
        if rest.is_empty() {
            break;
        }
        if !flow.synced {
            // resynchronise on the next line that is a SIP start line
            match find_start_line(rest) {
                Some(at) => {
                    stats.skipped_bytes += at as u64;
                    start += at;
                    flow.synced = true;
                    continue;
                }
                None => {
                    // keep only the last partial line
                    let keep = rest.iter().rposition(|&b| b == b'\n').map(|i| rest.len() - i - 1).unwrap_or(rest.len());
                    stats.skipped_bytes += (rest.len() - keep) as u64;
                    start += rest.len() - keep;
                    break;
                }
            }
        }
        // at a message boundary: an HTTP upgrade to WebSocket, a SIP message, or neither
        if ws::starts_with_http(rest) {
            let Some((_, body)) = header_end(rest) else {
                break;
            };
            if ws::is_upgrade(&rest[..body]) {
                stats.websocket_upgrades += 1;
                flow.rare().websocket = Some(Vec::new());
            } else {
                stats.not_sip_messages += 1;
                flow.synced = false;
            }
            start += body;
            continue;
        }
        match memchr(b'\n', rest) {
            Some(eol) if !looks_like_start_line(&rest[..eol]) => {
                flow.synced = false;
                continue;
            }
            None => break,
            Some(_) => {}
        }
        match frame(rest) {
            Framed::Complete(n) => {
                stats.messages += 1;
                out(&rest[..n], false);
                start += n;
            }
            Framed::Incomplete => break,
        }
    }
    flow.buf.drain(..start);
    flow.tidy();
    if flow.buf.len() > max_buffer {
        stats.overflows += 1;
        stats.skipped_bytes += flow.buf.len() as u64;
        flow.buf.clear();
        flow.synced = false;
    }
    // an idle connection (one per registered TCP phone) holds no buffer between messages
    if flow.buf.is_empty() {
        flow.buf = Vec::new();
    } else if flow.buf.capacity() > 4 * flow.buf.len().max(1024) {
        flow.buf.shrink_to_fit();
    }
}

/// Offset of the first line in `buf` that is a SIP start line (only whole lines are judged).
fn find_start_line(buf: &[u8]) -> Option<usize> {
    let mut pos = 0;
    while pos < buf.len() {
        let end = memchr(b'\n', &buf[pos..])? + pos;
        if looks_like_start_line(&buf[pos..end]) {
            return Some(pos);
        }
        pos = end + 1;
    }
    None
}

/// Whether a segment can be the beginning of a SIP message: a whole SIP start line, or (when the
/// segment ends inside the first line) the beginning of one: `SIP/2.0 ` or a method token, a
/// space and the beginning of a `sip:`, `sips:` or `tel:` URI.
fn could_start_sip(p: &[u8]) -> bool {
    if memchr(b'\n', &p[..p.len().min(512)]).is_some() || p.len() >= 512 {
        return starts_with_sip(p);
    }
    let prefix_of =
        |whole: &[u8], part: &[u8]| whole.len() >= part.len() && whole[..part.len()].eq_ignore_ascii_case(part);
    if prefix_of(b"SIP/2.0 ", &p[..p.len().min(8)]) {
        return true;
    }
    let Some(sp) = memchr(b' ', p) else {
        return !p.is_empty() && p.iter().all(u8::is_ascii_uppercase);
    };
    let (method, uri) = (&p[..sp], &p[sp + 1..]);
    !method.is_empty()
        && method.iter().all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(b))
        && [b"sip:".as_slice(), b"sips:", b"tel:"]
            .iter()
            .any(|s| prefix_of(s, &uri[..uri.len().min(s.len())]) || prefix_of(uri, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: &[u8] = b"OPTIONS sip:a SIP/2.0\r\nCall-ID: 1\r\nContent-Length: 3\r\n\r\nabc";
    const M2: &[u8] = b"SIP/2.0 200 OK\r\nCall-ID: 1\r\nl: 0\r\n\r\n";

    fn key() -> FlowKey {
        FlowKey { src: "127.0.0.1:5060".parse().unwrap(), dst: "127.0.0.2:40000".parse().unwrap() }
    }

    fn run(segs: &[(u32, &[u8])]) -> (Vec<Vec<u8>>, TcpStats) {
        let mut t = TcpReassembly::new(10, 1 << 16, 1 << 20);
        let mut got = Vec::new();
        for (i, (seq, p)) in segs.iter().enumerate() {
            let seg = Segment { seq: *seq, syn: false, fin: false, rst: false, payload: p };
            t.push(i as i64, key(), seg, true, &mut |m, _| got.push(m.to_vec()));
        }
        (got, t.stats)
    }

    #[test]
    fn several_messages_per_segment_and_split_message() {
        let mut all = M1.to_vec();
        all.extend_from_slice(b"\r\n\r\n"); // keep-alive
        all.extend_from_slice(M2);
        let (got, _) = run(&[(1000, &all[..30]), (1030, &all[30..])]);
        assert_eq!(got, vec![M1.to_vec(), M2.to_vec()]);
    }

    #[test]
    fn out_of_order_and_retransmitted() {
        let mut all = M1.to_vec();
        all.extend_from_slice(M2);
        let (got, st) = run(&[(1000, &all[..20]), (1040, &all[40..]), (1000, &all[..20]), (1020, &all[20..40])]);
        assert_eq!(got, vec![M1.to_vec(), M2.to_vec()]);
        assert_eq!(st.out_of_order, 1);
        assert_eq!(st.retransmitted, 1);
    }

    #[test]
    fn a_gap_that_never_fills_is_skipped_and_counted() {
        // M1 loses its middle bytes; M2 follows; a segment 2 s later lets the stream give up
        let mut all = M1.to_vec();
        all.extend_from_slice(M2);
        let m2_at = 1000 + M1.len() as u32;
        let mut t = TcpReassembly::new(10, 1 << 16, 1 << 20);
        let mut got = Vec::new();
        let seg = |seq, payload| Segment { seq, syn: false, fin: false, rst: false, payload };
        t.push(0, key(), seg(1000, &all[..10]), true, &mut |m, _| got.push(m.to_vec()));
        t.push(1, key(), seg(m2_at, &all[M1.len()..]), true, &mut |m, _| got.push(m.to_vec()));
        assert!(got.is_empty());
        t.flush_gaps(2_000_000, &mut |_, m, _| got.push(m.to_vec()));
        assert_eq!(got, vec![M2.to_vec()]);
        assert_eq!(t.stats.gaps, 1);
    }

    #[test]
    fn bytes_held_behind_a_gap_are_capped() {
        // 4 KiB per stream; a SIP start, a gap, then 3 segments of 1.5 KiB: the third does not
        // fit, the stream stops waiting, skips the gap and resynchronises
        let mut t = TcpReassembly::new(10, 4096, 1 << 20);
        let junk = vec![b'x'; 1536];
        let first = Segment { seq: 1_000, syn: false, fin: false, rst: false, payload: b"OPTIONS sip:a SIP/2.0\r\n" };
        t.push(0, key(), first, true, &mut |_, _| {});
        for i in 0..3u32 {
            let seg = Segment { seq: 10_000 + i * 1536, syn: false, fin: false, rst: false, payload: &junk };
            t.push(0, key(), seg, true, &mut |_, _| {});
        }
        assert_eq!(t.stats.overflows, 1);
        assert_eq!(t.stats.gaps, 1);
    }

    #[test]
    fn reordering_across_the_sequence_number_wrap() {
        let mut all = M1.to_vec();
        all.extend_from_slice(M2);
        // offsets 0..30 lie before the 2^32 wrap, 31.. after it; two segments wait behind a
        // gap, one before the wrap (20..40) and one after it (40..): the earlier must go first
        let start = u32::MAX - 30;
        let at = |o: usize| start.wrapping_add(o as u32);
        let (got, st) =
            run(&[(at(0), &all[..10]), (at(40), &all[40..]), (at(20), &all[20..40]), (at(10), &all[10..20])]);
        assert_eq!(got, vec![M1.to_vec(), M2.to_vec()]);
        assert_eq!(st.gaps, 0);
    }

    #[test]
    fn syn_floods_and_junk_leave_no_state() {
        let mut t = TcpReassembly::new(10, 1 << 16, 1 << 20);
        for i in 0..1000u16 {
            let key = FlowKey { src: SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 40000)), dst: key().src };
            t.push(0, key, Segment { seq: 1, syn: true, fin: false, rst: false, payload: b"" }, true, &mut |_, _| {});
            t.push(
                0,
                key,
                Segment { seq: 2, syn: false, fin: false, rst: false, payload: b"junk\r\n" },
                true,
                &mut |_, _| {},
            );
        }
        assert!(t.is_empty());
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn the_least_recently_used_stream_goes_first_and_bytes_are_bounded_on_every_segment() {
        // room for 3 streams and 8 KiB in all
        let mut t = TcpReassembly::new(3, 4096, 8192);
        let k = |i: u8| FlowKey { src: SocketAddr::from(([10, 0, 0, i], 40000)), dst: key().src };
        let head = b"INVITE sip:a SIP/2.0\r\nContent-Length: 100000\r\n\r\n";
        for i in 1..=3 {
            t.push(
                i64::from(i),
                k(i),
                Segment { seq: 1, syn: false, fin: false, rst: false, payload: head },
                true,
                &mut |_, _| {},
            );
        }
        // stream 1 is used again: stream 2 is now the least recently used
        t.push(
            4,
            k(1),
            Segment { seq: 1 + head.len() as u32, syn: false, fin: false, rst: false, payload: &[b'x'; 100] },
            true,
            &mut |_, _| {},
        );
        t.push(5, k(4), Segment { seq: 1, syn: false, fin: false, rst: false, payload: head }, true, &mut |_, _| {});
        assert_eq!(t.len(), 3);
        assert_eq!(t.stats.evicted, 1);
        assert!(!t.flows.contains_key(&Packed::of(&k(2))));
        // stream 4 grows past what all may hold: the others go, oldest first, at once
        let mut seq = 1 + head.len() as u32;
        for n in 0..3 {
            t.push(
                6 + n,
                k(4),
                Segment { seq, syn: false, fin: false, rst: false, payload: &[b'y'; 2000] },
                true,
                &mut |_, _| {},
            );
            seq += 2000;
            assert!(t.bytes() <= 8192, "{} bytes held", t.bytes());
        }
    }

    #[test]
    fn an_idle_flow_is_small_and_keeps_its_addresses() {
        // the flow table's entry and the LRU queue's, per direction of each registered TCP phone
        assert!(std::mem::size_of::<(Packed, Flow)>() <= 104, "{}", std::mem::size_of::<(Packed, Flow)>());
        assert!(std::mem::size_of::<(u64, Packed)>() <= 48);
        for (src, dst) in [("10.1.2.3:5060", "192.0.2.7:40000"), ("[2001:db8::1]:5061", "[::ffff:10.0.0.1]:1")] {
            let k = FlowKey { src: src.parse().unwrap(), dst: dst.parse().unwrap() };
            assert_eq!(Packed::of(&k).key(), k);
        }
        // a gap holds its segments in the box, which goes once the gap is filled
        let mut t = TcpReassembly::new(16, 65536, 1 << 20);
        let mut got = Vec::new();
        let (a, b) = M1.split_at(20);
        t.push(1, key(), Segment { seq: 100, syn: false, fin: false, rst: false, payload: M2 }, true, &mut |m, _| {
            got.push(m.to_vec())
        });
        let at = 100 + M2.len() as u32;
        for (seq, p) in [(at + 20, b), (at, a)] {
            t.push(2, key(), Segment { seq, syn: false, fin: false, rst: false, payload: p }, true, &mut |m, _| {
                got.push(m.to_vec())
            });
            let flow = &t.flows[&Packed::of(&key())];
            assert_eq!(flow.rare.is_some(), seq != at, "boxed while the gap is open, freed after");
        }
        assert_eq!(got, [M2.to_vec(), M1.to_vec()]);
        assert_eq!(t.bytes(), 0);
    }

    #[test]
    fn mid_message_start_resyncs() {
        let mut all = b"a=rtpmap:0 PCMU/8000\r\n".to_vec();
        all.extend_from_slice(M2);
        let (got, st) = run(&[(5, &all)]);
        assert_eq!(got, vec![M2.to_vec()]);
        assert_eq!(st.skipped_bytes, 22);
    }
}
