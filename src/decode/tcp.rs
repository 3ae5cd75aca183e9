//! TCP stream reassembly into SIP messages (RFC 3261 18.3: framed by Content-Length).
//!
//! One flow per direction. Segments are put in sequence order (retransmissions and overlaps
//! trimmed, a bounded number held out of order); a stream first seen mid-message, or after a
//! gap, is resynchronised on the next SIP start line. Each stream's buffer has a byte cap.
use super::ws::{self, WsFrame};
use crate::capture::Micros;
use crate::sip::frame::{Framed, frame, leading_crlf};
use crate::sip::parse::{header_end, looks_like_start_line};
use memchr::memchr;
use std::collections::{BTreeMap, HashMap};
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

/// What the bytes of a stream are, at its current position.
#[derive(Debug)]
enum Mode {
    Sip,
    /// After an HTTP upgrade; holds a fragmented message being reassembled.
    WebSocket {
        partial: Vec<u8>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

struct Flow {
    next_seq: u32,
    buf: Vec<u8>,
    /// Segments ahead of `next_seq`, keyed by their offset from `base` (so that the order holds
    /// across the 2^32 wrap of sequence numbers).
    ahead: BTreeMap<u32, Vec<u8>>,
    /// The first sequence number seen: the origin of the `ahead` keys.
    base: u32,
    /// Since when the bytes at `next_seq` are missing.
    gap_since: Option<Micros>,
    /// Whether `buf` starts at a message boundary.
    synced: bool,
    mode: Mode,
    last_ts: Micros,
}

pub struct TcpReassembly {
    flows: HashMap<FlowKey, Flow>,
    max_flows: usize,
    max_buffer: usize,
    max_ahead: usize,
    /// Bytes all streams may hold together (checked once a second of packet time).
    max_total_bytes: usize,
    idle_timeout: Micros,
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
    pub fn new(max_flows: usize, max_buffer: usize) -> Self {
        TcpReassembly {
            flows: HashMap::new(),
            max_flows: max_flows.max(1),
            max_buffer: max_buffer.max(1024),
            max_ahead: 64,
            max_total_bytes: 64 << 20,
            idle_timeout: 300 * 1_000_000,
            stats: TcpStats::default(),
        }
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
        self.stats.segments += 1;
        if seg.rst {
            self.flows.remove(&key);
            return;
        }
        if !self.flows.contains_key(&key) {
            if seg.payload.is_empty() && !(seg.syn && sip_port) {
                return;
            }
            let starts_sip = starts_with_sip(seg.payload);
            let upgrade = ws::starts_with_http(seg.payload) && ws::is_upgrade(seg.payload);
            if !sip_port && !starts_sip && !upgrade {
                return; // not a SIP stream as far as we can tell
            }
            if self.flows.len() >= self.max_flows {
                self.evict(ts);
            }
            let next_seq = if seg.syn { seg.seq.wrapping_add(1) } else { seg.seq };
            self.flows.insert(
                key,
                Flow {
                    next_seq,
                    buf: Vec::new(),
                    ahead: BTreeMap::new(),
                    base: next_seq,
                    gap_since: None,
                    synced: seg.syn || starts_sip || upgrade,
                    mode: Mode::Sip,
                    last_ts: ts,
                },
            );
        }
        let max_buffer = self.max_buffer;
        let max_ahead = self.max_ahead;
        let stats = &mut self.stats;
        let flow = self.flows.get_mut(&key).expect("inserted above");
        flow.last_ts = ts;
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
                    append(flow, &seg.payload[skip..]);
                }
            } else if off == 0 {
                append(flow, seg.payload);
            } else {
                stats.out_of_order += 1;
                let held: usize = flow.ahead.values().map(Vec::len).sum();
                if held + seg.payload.len() > max_buffer {
                    // no more room behind the gap: stop waiting for it
                    stats.overflows += 1;
                    give_up = true;
                } else {
                    flow.ahead.entry(seq.wrapping_sub(flow.base)).or_insert_with(|| seg.payload.to_vec());
                    flow.gap_since.get_or_insert(ts);
                }
            }
            settle(flow, stats, ts, give_up, max_ahead, max_buffer, out);
        }
        if seg.fin {
            self.flows.remove(&key);
        }
    }

    /// Gives up waiting for missing bytes that are not coming (the periodic clock tick: a quiet
    /// stream may have no next segment to notice the gap).
    pub fn flush_gaps(&mut self, now: Micros, out: &mut dyn FnMut(FlowKey, &[u8], bool)) {
        let (max_ahead, max_buffer) = (self.max_ahead, self.max_buffer);
        for (key, flow) in self.flows.iter_mut().filter(|(_, f)| f.gap_since.is_some()) {
            settle(flow, &mut self.stats, now, false, max_ahead, max_buffer, &mut |m, ws| out(*key, m, ws));
        }
    }

    /// Forgets flows idle for longer than the idle timeout.
    pub fn expire(&mut self, now: Micros) {
        let t = self.idle_timeout;
        let before = self.flows.len();
        self.flows.retain(|_, f| now - f.last_ts <= t);
        self.stats.evicted += (before - self.flows.len()) as u64;
        // all streams together stay under the byte budget: the longest idle go first
        let bytes = |f: &Flow| f.buf.len() + f.ahead.values().map(Vec::len).sum::<usize>();
        let mut total: usize = self.flows.values().map(bytes).sum();
        if total > self.max_total_bytes {
            let mut by_age: Vec<(Micros, FlowKey, usize)> =
                self.flows.iter().map(|(k, f)| (f.last_ts, *k, bytes(f))).collect();
            by_age.sort_unstable_by_key(|(t, _, _)| *t);
            for (_, k, b) in by_age {
                if total <= self.max_total_bytes {
                    break;
                }
                self.flows.remove(&k);
                self.stats.evicted += 1;
                total -= b;
            }
        }
    }

    fn evict(&mut self, now: Micros) {
        self.expire(now);
        while self.flows.len() >= self.max_flows {
            let oldest = self.flows.iter().min_by_key(|(_, f)| f.last_ts).map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.flows.remove(&k);
                    self.stats.evicted += 1;
                }
                None => break,
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
    if let Some(since) = flow.gap_since
        && (give_up || flow.ahead.len() > max_ahead || now - since > GAP_WAIT)
        && let Some(first) = flow.ahead.keys().next().map(|k| flow.base.wrapping_add(*k))
    {
        // the missing bytes are not coming: drop the partial message, resynchronise after the gap
        stats.gaps += 1;
        stats.skipped_bytes += u64::from(first.wrapping_sub(flow.next_seq)) + flow.buf.len() as u64;
        flow.buf.clear();
        flow.synced = false;
        flow.next_seq = first;
    }
    while let Some(&k) = flow.ahead.keys().next() {
        let off = flow.base.wrapping_add(k).wrapping_sub(flow.next_seq) as i32;
        if off > 0 {
            break;
        }
        let data = flow.ahead.remove(&k).expect("present");
        let skip = (-(off as i64)) as usize;
        if skip < data.len() {
            append(flow, &data[skip..]);
        }
    }
    flow.gap_since = if flow.ahead.is_empty() { None } else { flow.gap_since.or(Some(now)) };
    extract(flow, stats, max_buffer, out);
}

fn append(flow: &mut Flow, data: &[u8]) {
    flow.buf.extend_from_slice(data);
    flow.next_seq = flow.next_seq.wrapping_add(data.len() as u32);
}

fn extract(flow: &mut Flow, stats: &mut TcpStats, max_buffer: usize, out: &mut dyn FnMut(&[u8], bool)) {
    let mut start = 0;
    loop {
        if let Mode::WebSocket { partial } = &mut flow.mode {
            match ws::frame(&flow.buf[start..], max_buffer) {
                WsFrame::Incomplete => break,
                WsFrame::TooLong => {
                    stats.websocket_too_long += 1;
                    stats.skipped_bytes += (flow.buf.len() - start) as u64;
                    start = flow.buf.len();
                    flow.mode = Mode::Sip;
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
                flow.mode = Mode::WebSocket { partial: Vec::new() };
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
    if flow.buf.len() > max_buffer {
        stats.overflows += 1;
        stats.skipped_bytes += flow.buf.len() as u64;
        flow.buf.clear();
        flow.synced = false;
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

/// Whether a payload begins with a SIP start line (cheap test before following a new flow).
pub fn starts_with_sip(p: &[u8]) -> bool {
    let end = memchr(b'\n', &p[..p.len().min(512)]).unwrap_or(p.len().min(512));
    looks_like_start_line(&p[..end])
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
        let mut t = TcpReassembly::new(10, 1 << 16);
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
        let mut t = TcpReassembly::new(10, 1 << 16);
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
        // 4 KiB per stream; a gap then 3 segments of 1.5 KiB: the third does not fit, the
        // stream stops waiting, skips the gap and resynchronises (none of it is SIP here)
        let mut t = TcpReassembly::new(10, 4096);
        let junk = vec![b'x'; 1536];
        let first = Segment { seq: 1_000, syn: false, fin: false, rst: false, payload: b"x\r\n" };
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
    fn mid_message_start_resyncs() {
        let mut all = b"a=rtpmap:0 PCMU/8000\r\n".to_vec();
        all.extend_from_slice(M2);
        let (got, st) = run(&[(5, &all)]);
        assert_eq!(got, vec![M2.to_vec()]);
        assert_eq!(st.skipped_bytes, 22);
    }
}
