//! The core path in one place: frame -> decode -> sip -> state -> events -> tenant routing.
//! Sans-IO: sources push frames in, sinks take routed events out.
use crate::capture::{Frame, Micros};
use crate::config::Config;
use crate::decode::{DecodeLimits, Decoder};
use crate::event::Event;
use crate::sip;
use crate::state::Tracker;
use crate::state::fingerprint::{Fingerprinter, MessageKeys};
use crate::state::users::KnownUsers;
use crate::tenant::{Route, Router};
use std::sync::Arc;

/// An event with its tenant and the tenant's name for it.
#[derive(Debug, Clone)]
pub struct Routed {
    pub tenant: Arc<str>,
    pub name: Arc<str>,
    pub event: Event,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct PipelineStats {
    pub sip_messages: u64,
    pub malformed: u64,
    pub events: u64,
    pub unrouted: u64,
    pub disabled: u64,
}

/// Parsed messages on their way from the front half to the back half (`replay --threads 2`):
/// each message's head copied into an arena, its fields as offsets into it; the batch crosses
/// to the other thread in one piece. Heads that are text (nearly all) go into a `String`, so the
/// other side takes them as text without checking them again.
#[derive(Default)]
pub struct Batch {
    text: String,
    /// Heads with bytes that are not UTF-8.
    raw: Vec<u8>,
    items: Vec<Item>,
    /// The latest frame time seen (frames without SIP still move time on, for the timers).
    pub last_ts: Option<Micros>,
    /// Frames and SIP messages decoded, and messages that did not parse.
    pub frames: u64,
    pub messages: u64,
    pub malformed: u64,
}

struct Item {
    ts: Micros,
    src: std::net::SocketAddr,
    dst: std::net::SocketAddr,
    /// Where the head is: `text` or `raw`, from `at`, `len` bytes.
    in_text: bool,
    at: usize,
    len: usize,
    msg: sip::parse::MessageOffsets,
    keys: MessageKeys,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    /// Whether it holds `messages` messages or `bytes` bytes (or more): time to hand it on.
    pub fn full(&self, messages: usize, bytes: usize) -> bool {
        self.len() >= messages || self.bytes() >= bytes
    }
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.text.len() + self.raw.len() + self.items.len() * std::mem::size_of::<Item>()
    }
    /// Counts a frame fed to it and moves its latest time on (frames without SIP move time too).
    fn saw(&mut self, ts: Micros) {
        self.frames += 1;
        self.last_ts = Some(self.last_ts.map_or(ts, |t| t.max(ts)));
    }

    /// Asks the cache for what the state machines will read a little after message `i`: the
    /// head of the message [`PREFETCH_HEAD`] after it, and the item [`PREFETCH_ITEM`] after it.
    ///
    /// A batch filled on the decoding thread is in that core's cache. Read on the state thread,
    /// each message's first touch of its item and its head was a miss: a sampling profile of
    /// two-thread replay put half of `Back::apply`'s samples on the first byte of each head, and
    /// `Back::apply` with the offsets' views took 1,105 samples against 210 at one thread, nearly
    /// half of what two threads spent beyond one. The state thread spends about a microsecond
    /// per message, time enough for the lines asked for to arrive.
    #[inline]
    fn prefetch(&self, i: usize) {
        self.prefetch_head(i + PREFETCH_HEAD);
        self.prefetch_item(i + PREFETCH_ITEM);
    }

    /// The first messages, which have nothing before them to hide behind: asked for at once.
    fn prefetch_first(&self) {
        (0..PREFETCH_HEAD).for_each(|j| self.prefetch_head(j));
        (0..PREFETCH_ITEM).for_each(|j| self.prefetch_item(j));
    }

    fn prefetch_head(&self, i: usize) {
        if let Some(n) = self.items.get(i) {
            let head = if n.in_text { self.text.as_bytes() } else { &self.raw[..] };
            if let Some(h) = head.get(n.at..n.at + n.len.min(PREFETCH_HEAD_BYTES)) {
                crate::bytes::prefetch(h);
            }
        }
    }

    fn prefetch_item(&self, i: usize) {
        if let Some(n) = self.items.get(i) {
            crate::bytes::prefetch_value(n);
        }
    }

    pub fn clear(&mut self) {
        self.text.clear();
        self.raw.clear();
        self.items.clear();
        self.last_ts = None;
        self.frames = 0;
        self.messages = 0;
        self.malformed = 0;
    }
}

/// How far ahead [`Batch::prefetch`] asks for heads and items, in messages, and how much of a
/// head (most are shorter). With them, two-thread replay of the large capture took 0.881 of the
/// time (10 paired rounds), and two threads ran 1.72x and 1.83x one thread against 1.51x and
/// 1.50x (8 and 10 rounds of alternating runs); one thread, which does not prefetch, was
/// unchanged. Distances of 1, 2 and 4 heads did as well as each other within the host's noise
/// (0.86-0.90 of the time without).
const PREFETCH_HEAD: usize = 2;
const PREFETCH_ITEM: usize = 4;
const PREFETCH_HEAD_BYTES: usize = 1024;

/// The front half: frames -> decoded, parsed SIP messages, into a batch.
pub struct Front {
    pub decoder: Decoder,
    unfolded: Vec<u8>,
    /// The state's fingerprinter (the same key): batched messages carry their [`MessageKeys`].
    fp: Fingerprinter,
}

impl Front {
    pub fn new(decoder: Decoder, fp: Fingerprinter) -> Self {
        Front { decoder, unfolded: Vec::new(), fp }
    }

    /// Decodes one captured frame into `batch` (for the other thread).
    pub fn frame(&mut self, frame: Frame<'_>, batch: &mut Batch) {
        batch.saw(frame.ts);
        let Front { decoder, unfolded, fp } = self;
        decoder.decode(frame, &mut |m| add_message(batch, unfolded, fp, m));
    }

    /// One HEP packet received by a listener (no link, IP or UDP header around it), decoded
    /// into `batch` as in [`Front::frame`].
    pub fn hep(&mut self, ts: Micros, sender: std::net::IpAddr, data: &[u8], batch: &mut Batch) {
        batch.saw(ts);
        let Front { decoder, unfolded, fp } = self;
        decoder.hep(ts, sender, data, &mut |m| add_message(batch, unfolded, fp, m));
    }
}

/// One SIP message's bytes from the decoder: parsed into the batch, or counted as malformed.
fn add_message(batch: &mut Batch, unfolded: &mut Vec<u8>, fp: &Fingerprinter, m: crate::decode::SipBytes<'_>) {
    batch.messages += 1;
    match sip::parse::parse_folded_with(m.data, unfolded, m.start) {
        Ok(msg) => {
            let (in_text, at) = match msg.head_text {
                Some(t) => {
                    let at = batch.text.len();
                    batch.text.push_str(t);
                    (true, at)
                }
                None => {
                    let at = batch.raw.len();
                    batch.raw.extend_from_slice(msg.head);
                    (false, at)
                }
            };
            let len = msg.head.len();
            let keys = MessageKeys::of(fp, &msg);
            batch.items.push(Item { ts: m.ts, src: m.src, dst: m.dst, in_text, at, len, msg: msg.offsets(), keys });
        }
        Err(e) => {
            batch.malformed += 1;
            malformed(&m, e);
        }
    }
}

fn malformed(m: &crate::decode::SipBytes<'_>, e: sip::parse::ParseError) {
    tracing::debug!(error = ?e, src = %m.src, dst = %m.dst, "malformed SIP message skipped");
}

/// The back half: parsed messages -> state machines -> routed events.
pub struct Back {
    pub tracker: Tracker,
    router: Router,
    pub stats: PipelineStats,
    scratch: Vec<Event>,
    last_ts: Option<Micros>,
}

impl Back {
    /// Feeds a batch's messages, in order; routed events go to `out` in time order. For a batch
    /// made on another thread ([`Back::apply_staged`] for this thread's own).
    pub fn apply(&mut self, batch: &Batch, out: &mut dyn FnMut(Routed)) {
        self.apply_batch(batch, true, out);
    }

    /// [`Back::apply`] for a batch this thread has just filled, whose heads are still in this
    /// core's cache: nothing to prefetch.
    pub fn apply_staged(&mut self, batch: &Batch, out: &mut dyn FnMut(Routed)) {
        self.apply_batch(batch, false, out);
    }

    fn apply_batch(&mut self, batch: &Batch, prefetch: bool, out: &mut dyn FnMut(Routed)) {
        self.stats.sip_messages += batch.messages;
        self.stats.malformed += batch.malformed;
        if prefetch {
            batch.prefetch_first();
        }
        for (i, it) in batch.items.iter().enumerate() {
            if prefetch {
                batch.prefetch(i);
            }
            let r = it.at..it.at + it.len;
            let msg = if it.in_text { it.msg.view_text(&batch.text[r]) } else { it.msg.view(&batch.raw[r]) };
            self.message(it.ts, it.src, it.dst, &msg, &it.keys);
        }
        // the timers fire at message times only (and at `finish` and clock ticks), never at a
        // batch's end: where a batch ends must not change the events (it did when packet time
        // went backwards, as between capture files replayed one after another)
        if let Some(t) = batch.last_ts {
            self.saw(t);
        }
        // the batch's events, formatted together by the sink (see `STAGE_MESSAGES`)
        self.drain(out);
    }

    /// A frame's time (frames without SIP still move the replay's "now" on).
    fn saw(&mut self, ts: Micros) {
        self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));
    }

    /// One parsed message through the state machines: the timers due before it fire first
    /// (with their own times). Its events wait in `scratch` for the end of the batch.
    fn message(
        &mut self,
        ts: Micros,
        src: std::net::SocketAddr,
        dst: std::net::SocketAddr,
        msg: &sip::parse::Message<'_>,
        keys: &MessageKeys,
    ) {
        self.tracker.tick(ts, &mut self.scratch);
        self.tracker.message(ts, src, dst, msg, keys, &mut self.scratch);
    }

    /// Fires the timers that are due at `now`.
    pub fn tick(&mut self, now: Micros, out: &mut dyn FnMut(Routed)) {
        self.tracker.tick(now, &mut self.scratch);
        self.drain(out);
    }

    /// Applies a reloaded configuration without losing state: tenants, event names, server
    /// addresses, push proxies and identity names change; table bounds keep their start values.
    /// (The front half's part, the HEP trust, is the decoder's `set_hep_trust`.)
    pub fn reload(&mut self, cfg: &Config) {
        self.router = Router::new(cfg);
        self.tracker.reconfigure(cfg.tracker_config([0, 0]));
    }

    fn drain(&mut self, out: &mut dyn FnMut(Routed)) {
        for event in self.scratch.drain(..) {
            match self.router.route(&event) {
                Route::To { tenant, name } => {
                    self.stats.events += 1;
                    out(Routed { tenant, name, event });
                }
                Route::Unrouted => self.stats.unrouted += 1,
                Route::Disabled => self.stats.disabled += 1,
            }
        }
    }
}

/// A one-thread pipeline's batches, at most: messages, and bytes of heads.
///
/// One thread runs the halves in turns: it decodes and parses this many messages into a batch,
/// then runs the state machines over the batch, then the sink formats the batch's events.
/// Each stage's code then stays in the instruction cache for the whole batch. Handing each
/// message on as it was parsed ran all the code for every message. Callgrind's cache simulation
/// of a one-thread replay showed the instruction cache missed on 2.6% of instructions that way,
/// and on 1.1% with these batches. The batch copies each head (6.4% more instructions), and the
/// time was still 0.94-0.98 of what it was (the README's performance section). Batches of 1,024
/// messages gained less: their heads no longer fit the second-level cache. The events are the
/// same, in the same order (`tests::where_batches_end_does_not_change_the_events`).
pub const STAGE_MESSAGES: usize = 128;
pub const STAGE_BYTES: usize = 64 << 10;

/// Both halves on one thread, in turns over small batches ([`STAGE_MESSAGES`]): the same code
/// as on two threads, where the batches cross to the other thread.
pub struct Pipeline {
    pub front: Front,
    pub back: Back,
    /// Messages decoded and parsed, not yet through the state machines.
    stage: Batch,
}

impl Pipeline {
    /// `known_users` answers who signed up before; `fingerprint_key` is the state's (see
    /// `state::fingerprint`).
    pub fn new(cfg: &Config, known_users: Box<dyn KnownUsers>, fingerprint_key: [u64; 2]) -> Self {
        let l = &cfg.limits;
        let limits = DecodeLimits {
            max_fragments: l.max_fragments,
            max_fragment_bytes: l.max_fragment_bytes,
            max_fragments_per_datagram: l.max_fragments_per_datagram,
            fragment_timeout_secs: 30,
            max_tcp_streams: l.max_tcp_streams,
            max_tcp_buffer: l.max_tcp_buffer_bytes,
            max_tcp_total_bytes: l.max_tcp_total_bytes,
            max_sctp_bytes: l.max_sctp_bytes,
            duplicate_window: cfg.duplicate_window_ms as Micros * 1000,
            hep_ports: cfg.hep.ports.clone(),
            hep_trust: cfg.hep.trust(),
        };
        let mut ports = cfg.sip_ports.clone();
        ports.extend(cfg.servers.iter().filter_map(|(_, p)| *p));
        Pipeline::from_halves(
            Front::new(Decoder::new(limits, ports), Fingerprinter::new(fingerprint_key)),
            Back {
                tracker: Tracker::new(cfg.tracker_config(fingerprint_key), known_users),
                router: Router::new(cfg),
                stats: PipelineStats::default(),
                scratch: Vec::new(),
                last_ts: None,
            },
        )
    }

    /// The halves together again, after a replay ran them on two threads.
    pub fn from_halves(front: Front, back: Back) -> Self {
        Pipeline { front, back, stage: Batch::default() }
    }

    /// The halves apart, to run on two threads (nothing may wait in the batch).
    pub fn into_halves(self) -> (Front, Back) {
        debug_assert_eq!(self.stage.frames, 0, "messages waiting");
        (self.front, self.back)
    }

    /// Feeds one captured frame; routed events go to `out` in time order, when the batch it
    /// joined is full, or at [`Pipeline::flush`] or [`Pipeline::finish`].
    pub fn frame(&mut self, frame: Frame<'_>, out: &mut dyn FnMut(Routed)) {
        self.front.frame(frame, &mut self.stage);
        if self.stage.full(STAGE_MESSAGES, STAGE_BYTES) {
            self.flush(out);
        }
    }

    /// Runs the messages fed so far through the state machines and hands on their events:
    /// nothing is left waiting (before the state is saved).
    pub fn flush(&mut self, out: &mut dyn FnMut(Routed)) {
        if self.stage.frames > 0 {
            self.back.apply_staged(&self.stage, out);
            self.stage.clear();
        }
    }

    /// Frames fed and not yet through the state machines (none after [`Pipeline::flush`]).
    pub fn waiting(&self) -> u64 {
        self.stage.frames
    }

    /// End of input: legs whose timeout passed within the capture's time end; others stay open.
    pub fn finish(&mut self, out: &mut dyn FnMut(Routed)) {
        self.flush(out);
        if let Some(t) = self.back.last_ts {
            self.back.tick(t, out);
        }
    }

    /// Users that signed up since the last call, to persist.
    pub fn take_new_users(&mut self) -> Vec<(String, Micros)> {
        self.tracker().registrations.known_mut().take_new()
    }

    /// The latest packet time seen (the replay's "now").
    pub fn last_ts(&self) -> Option<Micros> {
        self.back.last_ts.max(self.stage.last_ts)
    }

    /// The state machines (for the state store). Nothing may wait in the batch then: a state
    /// saved ahead of the events handed on would lose them in a crash (flush first).
    pub fn tracker(&mut self) -> &mut Tracker {
        debug_assert_eq!(self.stage.frames, 0, "the state taken with messages waiting");
        &mut self.back.tracker
    }

    /// Every counter, as `(name, value)`, for `--stats` and metrics.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        counters(&FrontCounters::of(&self.front), &self.back)
    }
}

/// The front half's counters, copied: on two threads the state thread reports them from the
/// copy the decoding thread last sent.
#[derive(Debug, Clone, Default)]
pub struct FrontCounters {
    decode: crate::decode::DecodeStats,
    defrag: crate::decode::defrag::DefragStats,
    tcp: crate::decode::tcp::TcpStats,
    tcp_streams: usize,
    tcp_bytes: usize,
    fragment_datagrams: usize,
    fragment_bytes: usize,
}

impl FrontCounters {
    pub fn of(front: &Front) -> Self {
        let d = &front.decoder;
        FrontCounters {
            decode: d.stats,
            defrag: d.defrag.stats,
            tcp: d.tcp.stats,
            tcp_streams: d.tcp.len(),
            tcp_bytes: d.tcp.bytes(),
            fragment_datagrams: d.defrag.len(),
            fragment_bytes: d.defrag.bytes(),
        }
    }
}

/// Every counter of the two halves, as `(name, value)`.
pub fn counters(front: &FrontCounters, back: &Back) -> Vec<(&'static str, u64)> {
    {
        let tracker = &back.tracker;
        let d = &front.decode;
        let f = &front.defrag;
        let t = &front.tcp;
        let r = &tracker.registrations.stats;
        let c = &tracker.calls.stats;
        let p = &back.stats;
        vec![
            ("frames", d.frames),
            ("frames_unknown_linktype", d.unknown_linktype),
            ("frames_truncated", d.truncated),
            ("frames_not_ip", d.not_ip),
            ("frames_tunnelled", d.tunnelled),
            ("frames_too_deep", d.too_deep),
            ("frames_duplicate", d.duplicates),
            ("hep_packets", d.hep_packets),
            ("hep_not_sip", d.hep_not_sip),
            ("hep_malformed", d.hep_malformed),
            ("hep_refused", d.hep_refused),
            ("ip_other_protocol", d.other_ip_proto),
            ("udp_datagrams", d.udp),
            ("udp_not_sip", d.udp_not_sip),
            ("sctp_sip_chunks", d.sctp_chunks),
            ("sctp_messages_dropped", d.sctp_dropped),
            ("ip_fragments", f.fragments),
            ("ip_reassembled", f.reassembled),
            ("ip_fragments_timed_out", f.timed_out),
            ("ip_fragments_evicted", f.evicted),
            ("ip_fragments_oversized", f.oversized),
            ("ip_fragments_empty", f.empty),
            ("ip_fragments_overlapping", f.overlapping),
            ("tcp_segments", t.segments),
            ("tcp_messages", t.messages),
            ("tcp_retransmitted", t.retransmitted),
            ("tcp_out_of_order", t.out_of_order),
            ("tcp_gaps", t.gaps),
            ("tcp_skipped_bytes", t.skipped_bytes),
            ("tcp_buffer_overflows", t.overflows),
            ("tcp_streams_evicted", t.evicted),
            ("tcp_not_sip_messages", t.not_sip_messages),
            ("websocket_upgrades", t.websocket_upgrades),
            ("websocket_messages", t.websocket_messages),
            ("websocket_too_long", t.websocket_too_long),
            ("sip_messages", p.sip_messages),
            ("sip_malformed", p.malformed),
            ("sip_server_to_server", tracker.stats.server_to_server),
            ("sip_client_to_client", tracker.stats.client_to_client),
            ("sip_oversized_fields", tracker.stats.oversized_fields),
            ("register_requests", r.registers),
            ("register_accepted", r.accepted),
            ("register_challenged", r.challenged),
            ("register_rejected", r.rejected),
            ("register_push_proxy", r.push_proxy),
            ("register_unmatched_2xx", r.unmatched_responses),
            ("register_unanswered", r.pending_expired),
            ("register_pending_evicted", r.pending_evicted),
            ("contacts_evicted", r.contacts_evicted),
            ("devices_evicted", r.devices_evicted),
            ("devices_evicted_active", r.devices_evicted_active),
            ("register_contacts_dropped", r.contacts_dropped),
            ("register_shared_decisions", r.shared_decisions),
            ("register_shared_late", r.shared_late),
            ("register_shared_local", r.shared_local),
            ("invites_initial", c.invites),
            ("call_legs", c.legs),
            ("invite_retransmissions", c.retransmissions),
            ("call_attempts_unauthenticated", c.unauthenticated),
            ("call_attempts_unaccepted", c.unaccepted),
            ("call_timeouts", c.timeouts),
            ("call_legs_evicted", c.evicted),
            ("call_legs_evicted_answered", c.evicted_answered),
            ("sip_outside_calls", c.orphan_messages),
            ("events", p.events),
            ("events_unrouted", p.unrouted),
            ("events_disabled", p.disabled),
            ("open_call_legs", tracker.calls.open_legs() as u64),
            ("call_legs_bytes", tracker.calls.bytes() as u64),
            ("registrations_bytes", tracker.registrations.bytes().0 as u64),
            ("pending_registers", tracker.registrations.pending() as u64),
            ("pending_registers_bytes", tracker.registrations.bytes().1 as u64),
            ("tcp_streams_open", front.tcp_streams as u64),
            ("tcp_bytes_held", front.tcp_bytes as u64),
            ("ip_fragment_datagrams", front.fragment_datagrams as u64),
            ("ip_fragment_bytes_held", front.fragment_bytes as u64),
            ("active_devices", tracker.registrations.active_devices(back.last_ts.unwrap_or(0)) as u64),
            ("known_users", tracker.registrations.known_users()),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::users::MemoryUsers;

    /// Messages wait in the one-thread pipeline's batch until it is full or flushed: a flush
    /// (replay's, before it saves its state) leaves none waiting and hands on all their events.
    /// The capture: bob registers, alice calls him through the proxy, and hangs up (20 frames).
    #[test]
    fn a_flush_hands_on_every_event_of_what_was_fed() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = Config::load(&root.join("config.toml.example")).unwrap();
        let mut p = Pipeline::new(&cfg, Box::new(MemoryUsers::new([])), [1, 2]);
        let mut names = Vec::new();
        let capture = root.join("fixtures/lab/captures/call_caller_bye.pcap");
        crate::capture::file::read_file(&capture, |f| p.frame(f, &mut |r| names.push(r.name.to_string()))).unwrap();
        assert!(names.is_empty(), "20 frames are fewer than a batch: {names:?}");
        assert_eq!(p.waiting(), 20);
        p.flush(&mut |r| names.push(format!("{} {}", r.name, r.event.user)));
        assert_eq!(p.waiting(), 0);
        assert_eq!(
            names,
            [
                "signup bob@lab.example",
                "app_start bob@lab.example",
                "login bob@lab.example",
                "callin bob@lab.example",
                "callout alice@lab.example",
                "callend alice@lab.example",
                "callend bob@lab.example",
            ]
        );
        p.finish(&mut |r| names.push(r.name.to_string()));
        assert_eq!(names.len(), 7, "nothing was left for the end");
    }

    /// Where the batches between the halves end (1024 messages in a two-thread replay,
    /// `STAGE_MESSAGES` or a flush in a one-thread replay, 512 messages or the end of a burst of
    /// input in the daemon) must not change the events, even where packet time goes backwards:
    /// the lab captures, replayed one after another, jump back hours between files.
    #[test]
    fn where_batches_end_does_not_change_the_events() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let cfg = Config::load(&root.join("config.toml.example")).unwrap();
        let captures = crate::testkit::lab_captures();
        // batches of `batch_messages`, or (0) `Pipeline::frame`'s own
        let run = |batch_messages: usize| -> (Vec<String>, Vec<(&'static str, u64)>) {
            let mut p = Pipeline::new(&cfg, Box::new(MemoryUsers::new([])), [1, 2]);
            // the front half's message keys are the state's fingerprints
            assert_eq!(p.front.fp, *p.back.tracker.fp());
            let mut batch = Batch::default();
            let mut lines = Vec::new();
            let mut out = |r: Routed| lines.push(format!("{} {} {:?}", r.tenant, r.name, r.event));
            for c in &captures {
                crate::capture::file::read_file(c, |f| {
                    if batch_messages == 0 {
                        p.frame(f, &mut out);
                        return;
                    }
                    p.front.frame(f, &mut batch);
                    if batch.len() >= batch_messages {
                        p.back.apply(&batch, &mut out);
                        batch.clear();
                    }
                })
                .unwrap();
            }
            p.back.apply(&batch, &mut out);
            p.finish(&mut out);
            let counters = p.counters();
            (lines, counters)
        };
        let reference = run(usize::MAX);
        assert!(reference.0.len() > 100, "too few events to compare: {}", reference.0.len());
        for n in [0, 1, 3, 64, 1024] {
            let (lines, counters) = run(n);
            assert!(lines == reference.0, "the events change with batches of {n} messages (0: the pipeline's)");
            assert_eq!(counters, reference.1, "the counters change with batches of {n} messages (0: the pipeline's)");
        }
    }
}
