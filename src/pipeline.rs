//! The core path in one place: frame -> decode -> sip -> state -> events -> tenant routing.
//! Sans-IO: sources push frames in, sinks take routed events out.
use crate::capture::{Frame, Micros};
use crate::config::Config;
use crate::decode::{DecodeLimits, Decoder};
use crate::event::Event;
use crate::sip;
use crate::state::Tracker;
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

pub struct Pipeline {
    pub decoder: Decoder,
    pub tracker: Tracker,
    router: Router,
    pub stats: PipelineStats,
    scratch: Vec<Event>,
    last_ts: Option<Micros>,
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
        Pipeline {
            decoder: Decoder::new(limits, ports),
            tracker: Tracker::new(cfg.tracker_config(fingerprint_key), known_users),
            router: Router::new(cfg),
            stats: PipelineStats::default(),
            scratch: Vec::new(),
            last_ts: None,
        }
    }

    /// Feeds one captured frame; routed events go to `out` in time order.
    pub fn frame(&mut self, frame: Frame<'_>, out: &mut dyn FnMut(Routed)) {
        let Pipeline { decoder, tracker, stats, scratch, last_ts, .. } = self;
        *last_ts = Some(last_ts.map_or(frame.ts, |t| t.max(frame.ts)));
        tracker.tick(frame.ts, scratch);
        decoder.decode(frame, &mut |m| sip_message(stats, tracker, scratch, m));
        self.drain(out);
    }

    /// One HEP packet received by a listener (no link, IP or UDP header around it).
    pub fn hep(&mut self, ts: Micros, sender: std::net::IpAddr, data: &[u8], out: &mut dyn FnMut(Routed)) {
        let Pipeline { decoder, tracker, stats, scratch, last_ts, .. } = self;
        *last_ts = Some(last_ts.map_or(ts, |t| t.max(ts)));
        tracker.tick(ts, scratch);
        decoder.hep(ts, sender, data, &mut |m| sip_message(stats, tracker, scratch, m));
        self.drain(out);
    }

    /// Applies a reloaded configuration without losing state: tenants, event names, server
    /// addresses, push proxies and identity names change; table bounds keep their start values.
    pub fn reload(&mut self, cfg: &Config) {
        self.router = Router::new(cfg);
        self.tracker.reconfigure(cfg.tracker_config([0, 0]));
        self.decoder.set_hep_trust(cfg.hep.trust());
    }

    /// Fires the timers that are due at `now` (the end of a capture, or a clock tick when live).
    pub fn tick(&mut self, now: Micros, out: &mut dyn FnMut(Routed)) {
        self.tracker.tick(now, &mut self.scratch);
        self.drain(out);
    }

    /// End of input: legs whose timeout passed within the capture's time end; others stay open.
    pub fn finish(&mut self, out: &mut dyn FnMut(Routed)) {
        if let Some(t) = self.last_ts {
            self.tick(t, out);
        }
    }

    /// Users that signed up since the last call, to persist.
    pub fn take_new_users(&mut self) -> Vec<(String, Micros)> {
        self.tracker.registrations.known_mut().take_new()
    }

    /// The latest packet time seen (the replay's "now").
    pub fn last_ts(&self) -> Option<Micros> {
        self.last_ts
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

    /// Every counter, as `(name, value)`, for `--stats` and metrics.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let d = &self.decoder.stats;
        let f = &self.decoder.defrag.stats;
        let t = &self.decoder.tcp.stats;
        let r = &self.tracker.registrations.stats;
        let c = &self.tracker.calls.stats;
        let p = &self.stats;
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
            ("sip_server_to_server", self.tracker.stats.server_to_server),
            ("sip_client_to_client", self.tracker.stats.client_to_client),
            ("sip_oversized_fields", self.tracker.stats.oversized_fields),
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
            ("open_call_legs", self.tracker.calls.open_legs() as u64),
            ("call_legs_bytes", self.tracker.calls.bytes() as u64),
            ("registrations_bytes", self.tracker.registrations.bytes().0 as u64),
            ("pending_registers", self.tracker.registrations.pending() as u64),
            ("pending_registers_bytes", self.tracker.registrations.bytes().1 as u64),
            ("tcp_streams_open", self.decoder.tcp.len() as u64),
            ("tcp_bytes_held", self.decoder.tcp.bytes() as u64),
            ("ip_fragment_datagrams", self.decoder.defrag.len() as u64),
            ("ip_fragment_bytes_held", self.decoder.defrag.bytes() as u64),
            ("active_devices", self.tracker.registrations.active_devices(self.last_ts.unwrap_or(0)) as u64),
            ("known_users", self.tracker.registrations.known_users()),
        ]
    }
}

/// One SIP message's bytes from the decoder: parsed and fed to the tracker, or counted as malformed.
fn sip_message(
    stats: &mut PipelineStats,
    tracker: &mut Tracker,
    scratch: &mut Vec<Event>,
    m: crate::decode::SipBytes<'_>,
) {
    stats.sip_messages += 1;
    let mut unfolded = Vec::new();
    match sip::parse::parse_folded(m.data, &mut unfolded) {
        Ok(msg) => tracker.message(m.ts, m.src, m.dst, &msg, scratch),
        Err(e) => {
            stats.malformed += 1;
            tracing::debug!(error = ?e, src = %m.src, dst = %m.dst, "malformed SIP message skipped");
        }
    }
}
