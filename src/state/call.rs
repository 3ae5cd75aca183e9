//! Call legs: one per INVITE dialog between a client and the server, in either direction.
//! Decides `callout`, `callin` and exactly one `callend` for each of them.
//!
//! A leg is keyed by Call-ID, the caller's From tag and the client's address, so that the two
//! legs of a call through a record-routing proxy (same Call-ID and From tag) stay apart, and a
//! retransmitted or re-authenticated INVITE stays the same attempt. A new INVITE transaction
//! (higher CSeq) after a final response is a new attempt: a redirect followed, a retry after 491.
//!
//! An outgoing attempt becomes a `callout` only with evidence that the caller is that user (see
//! [`Evidence`]): scanners send INVITEs from made-up users and get 404/480/503 without ever
//! being challenged, and those are counted, not reported.
use super::deadlines::Deadlines;
use super::fingerprint::{DirtySet, Fingerprinter, Fp, FpMap, FpSet, MessageKeys};
use crate::capture::Micros;
use crate::event::{Direction, EndReason, EndedBy, Event, Kind, Origin, Params};
use crate::sip::Message;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// 64*T1: an INVITE client transaction with no response gives up after this (RFC 3261 17.1.1.2).
pub const TIMER_B: Micros = 32_000_000;
/// Timer C: a proxy gives up on a ringing leg after this (RFC 3261 16.6 step 11: > 3 min).
pub const TIMER_C: Micros = 180_000_000;
/// An ended leg is remembered this long, so retransmissions do not start it again.
const LINGER: Micros = 32_000_000;
/// No timer scheduled.
const UNSCHEDULED: Micros = Micros::MAX;

/// What shows that an outgoing attempt really is its From user's (bit flags).
pub struct Evidence;
impl Evidence {
    /// The INVITE carried credentials for the caller (Authorization or Proxy-Authorization).
    pub const CREDENTIALS: u8 = 1;
    /// It came from the address an active binding of the caller was registered from.
    pub const REGISTERED_SOURCE: u8 = 2;
    /// The server relayed it onwards (its own INVITE with this Call-ID and From tag).
    pub const RELAYED: u8 = 4;
    /// The attempt was challenged (401/407) before: credentials it sends answer the challenge.
    pub const CHALLENGED: u8 = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum LegState {
    /// INVITE sent, nothing shows the server accepted it yet. `challenged`: the current INVITE got
    /// 401/403/407.
    Trying { challenged: bool },
    /// Accepted (callout/callin emitted), not answered.
    Early,
    /// 2xx seen.
    Answered { at: Micros, last_activity: Micros, session_expires: Option<u32> },
    /// Over: `emitted` when its callend went out (else it was never accepted); kept to absorb
    /// retransmissions.
    Ended { at: Micros, emitted: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Leg {
    pub dir: Direction,
    pub call_id: Box<str>,
    pub caller_tag: Fp,
    pub client: SocketAddr,
    pub user: Box<str>,
    pub state: LegState,
    pub invite_cseq: u32,
    /// First transmission of the current INVITE transaction: Timer B runs from it.
    pub invite_at: Micros,
    /// The last provisional response from the leg's answering side (the server on `out` legs,
    /// the client on `in` legs): once there is one, Timer C applies instead of Timer B.
    pub provisional_at: Option<Micros>,
    /// CANCEL seen on this leg (client's own for `out`, towards the client for `in`).
    pub cancelled: bool,
    /// The final status the client answered with (`in` legs), for the other leg's `ended_by`.
    pub client_final: Option<u16>,
    pub origin: Origin,
    /// The last message seen on the leg (for eviction: the longest idle goes first).
    pub last_seen: Micros,
    /// [`Evidence`] flags.
    pub evidence: u8,
    /// The deadline this leg has in the timer heap (derived; not persisted).
    #[serde(skip, default = "unscheduled")]
    scheduled: Micros,
}

fn unscheduled() -> Micros {
    UNSCHEDULED
}

impl Leg {
    /// Its bytes in memory: the struct, its strings, its map, index and timer entries.
    fn cost(&self) -> usize {
        let o = &self.origin;
        std::mem::size_of::<Leg>()
            + self.call_id.len()
            + self.user.len()
            + o.device.as_ref().map_or(0, |d| d.len())
            + o.app_instance.as_ref().map_or(0, |d| d.len())
            + 96
    }

    /// Eviction order: attempts nothing showed to be real go first, then ended legs lingering
    /// for retransmissions, then ringing ones (and attempts with evidence), answered calls last.
    fn value(&self) -> u8 {
        match self.state {
            LegState::Trying { .. } if self.evidence & !Evidence::CHALLENGED == 0 => 0,
            LegState::Ended { emitted: false, .. } => 0,
            LegState::Ended { emitted: true, .. } => 1,
            LegState::Trying { .. } | LegState::Early => 2,
            LegState::Answered { .. } => 3,
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CallStats {
    pub invites: u64,
    pub legs: u64,
    pub retransmissions: u64,
    /// Attempts never shown to be their caller's: challenged and never accepted, or refused
    /// (404, 480, 503...) without evidence that the caller is that user.
    pub unauthenticated: u64,
    /// Attempts that got no response at all.
    pub unaccepted: u64,
    pub orphan_messages: u64,
    pub timeouts: u64,
    pub evicted: u64,
    /// Of those, answered calls (their callend says timeout and comes early).
    pub evicted_answered: u64,
}

/// Limits and timers of the call table.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub max_legs: usize,
    /// Bytes of all legs together.
    pub max_bytes: usize,
    /// An answered call with no in-dialog traffic for this long ends (unless Session-Expires says less).
    pub max_call: Micros,
}

/// What the registrations tell about the user of a new leg.
#[derive(Debug, Default)]
pub struct Resolved {
    pub user: String,
    pub origin: Origin,
    /// The INVITE came from where an active binding of the user was registered from.
    pub registered_source: bool,
}

type CallLegs = smallvec::SmallVec<[u64; 2]>;

pub struct Calls {
    fp: Fingerprinter,
    /// The fingerprint of an absent From tag (an empty one).
    no_tag: Fp,
    legs: FpMap<Leg>,
    /// The legs of each Call-ID, oldest first. Nearly every Call-ID has one or two (a proxy
    /// sees the caller's leg and the callee's), kept inline: one memory access fewer per message
    /// than a list of its own, and no allocation per call.
    by_call_id: FpMap<CallLegs>,
    /// (deadline, leg id); entries whose deadline is not the leg's `scheduled` are stale.
    deadlines: Deadlines,
    next_id: u64,
    limits: CallLimits,
    dirty: DirtySet,
    /// Bytes held by the legs.
    bytes: usize,
    full_logged: bool,
    pub stats: CallStats,
}

/// What the tracker knows about a message's place relative to the servers.
#[derive(Debug, Clone, Copy)]
pub struct Hop {
    /// The endpoint that is not a server.
    pub client: SocketAddr,
    /// The message travels from the client to the server.
    pub from_client: bool,
}

impl Calls {
    pub fn new(fp: Fingerprinter, limits: CallLimits) -> Self {
        Calls {
            fp,
            no_tag: fp.of(""),
            legs: FpMap::default(),
            by_call_id: FpMap::default(),
            deadlines: Deadlines::default(),
            next_id: 0,
            limits,
            dirty: DirtySet::default(),
            bytes: 0,
            full_logged: false,
            stats: CallStats::default(),
        }
    }

    /// Bytes held by the legs (their structs, strings, index and timer entries).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Legs not yet ended.
    pub fn open_legs(&self) -> usize {
        self.legs.values().filter(|l| !matches!(l.state, LegState::Ended { .. })).count()
    }
    pub fn len(&self) -> usize {
        self.legs.len()
    }
    pub fn is_empty(&self) -> bool {
        self.legs.is_empty()
    }
    /// Entries in the timer heap (about one per leg).
    pub fn timer_entries(&self) -> usize {
        self.deadlines.len()
    }

    /// Finds the leg a message belongs to: same Call-ID, the caller's tag as From (caller to
    /// callee) or To (callee to caller), and the same client; the newest such leg, or for a
    /// response the one whose INVITE it answers. A client whose port changed (a new TCP
    /// connection) is still recognised by its IP; one whose address changed altogether (NAT:
    /// in-dialog requests go to the Contact's public address) by the tags, when only one leg of
    /// the call has them.
    fn find(
        &self,
        call_id: Fp,
        client: SocketAddr,
        tags: [Option<Fp>; 2],
        dir: Option<Direction>,
        cseq: Option<u32>,
    ) -> Option<u64> {
        let ids = self.by_call_id.get(&call_id)?;
        let fits = |l: &Leg| dir.is_none_or(|d| d == l.dir) && tags.contains(&Some(l.caller_tag));
        let matching = |pred: &dyn Fn(&Leg) -> bool| {
            let mut it = ids.iter().rev().copied().filter(|id| self.legs.get(id).is_some_and(|l| fits(l) && pred(l)));
            let newest = it.next()?;
            let Some(cseq) = cseq else { return Some(newest) };
            if self.legs[&newest].invite_cseq == cseq {
                return Some(newest);
            }
            Some(it.find(|id| self.legs[id].invite_cseq == cseq).unwrap_or(newest))
        };
        matching(&|l| l.client == client).or_else(|| matching(&|l| l.client.ip() == client.ip())).or_else(|| {
            if dir.is_some() {
                return None; // a new initial INVITE from another address is another leg
            }
            let mut it = ids.iter().copied().filter(|id| self.legs.get(id).is_some_and(fits));
            match (it.next(), it.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        })
    }

    /// One message on a client<->server hop. `resolve`: names the user of a new leg in a
    /// direction, the app behind it, and whether it came from where that user registered.
    pub fn message(
        &mut self,
        ts: Micros,
        msg: &Message<'_>,
        keys: &MessageKeys,
        hop: Hop,
        resolve: impl FnOnce(Direction) -> Resolved,
        out: &mut Vec<Event>,
    ) {
        if msg.method() == Some("INVITE") && keys.to_tag.is_none() {
            return self.initial_invite(ts, msg, keys, hop, resolve, out);
        }
        // everything else belongs to a leg we follow, or is counted and ignored
        let tags = [keys.from_tag, keys.to_tag];
        let is_invite_response = msg.status().is_some() && msg.cseq_method.eq_ignore_ascii_case("INVITE");
        let cseq = is_invite_response.then_some(msg.cseq);
        let Some(id) = self.find(keys.call_id, hop.client, tags, None, cseq) else {
            self.stats.orphan_messages += 1;
            return;
        };
        self.seen(id, ts);
        match (msg.method(), msg.status()) {
            (Some("CANCEL"), _) => self.leg_mut(id).cancelled = true,
            (Some("BYE"), _) => self.bye(ts, id, hop, out),
            (None, Some(code)) if is_invite_response => self.invite_response(ts, id, code, msg, hop, out),
            _ => self.touch(ts, id),
        }
    }

    /// The server sent an initial INVITE onwards (to a client or another server): the caller's
    /// attempt with this Call-ID and From tag was accepted by it.
    pub fn relayed(&mut self, keys: &MessageKeys) {
        let (cid, tag) = (keys.call_id, keys.from_tag.unwrap_or(self.no_tag));
        let Some(ids) = self.by_call_id.get(&cid) else { return };
        for id in ids.clone() {
            let l = self.legs.get_mut(&id).expect("indexed");
            if l.dir == Direction::Out && l.caller_tag == tag && l.evidence & Evidence::RELAYED == 0 {
                l.evidence |= Evidence::RELAYED;
                self.dirty.insert(id);
            }
        }
    }

    fn initial_invite(
        &mut self,
        ts: Micros,
        msg: &Message<'_>,
        keys: &MessageKeys,
        hop: Hop,
        resolve: impl FnOnce(Direction) -> Resolved,
        out: &mut Vec<Event>,
    ) {
        self.stats.invites += 1;
        let dir = if hop.from_client { Direction::Out } else { Direction::In };
        let tag = keys.from_tag.unwrap_or(self.no_tag);
        let cid = keys.call_id;
        if dir == Direction::In {
            self.relayed(keys);
        }
        if let Some(id) = self.find(cid, hop.client, [Some(tag), None], Some(dir), None) {
            let l = &self.legs[&id];
            let (state, cseq) = (l.state, l.invite_cseq);
            let new_attempt = msg.cseq > cseq && matches!(state, LegState::Ended { .. });
            if !new_attempt {
                self.stats.retransmissions += 1;
                self.seen(id, ts);
                if msg.cseq > cseq && matches!(state, LegState::Trying { .. }) {
                    // a new transaction on the same attempt (the retry with credentials): judged
                    // on its own responses, its Timer B from now
                    let credentials = has_credentials(msg);
                    let l = self.leg_mut(id);
                    if matches!(l.state, LegState::Trying { challenged: true }) {
                        l.evidence |= Evidence::CHALLENGED;
                    }
                    l.state = LegState::Trying { challenged: false };
                    l.invite_cseq = msg.cseq;
                    l.invite_at = ts;
                    l.provisional_at = None;
                    if credentials {
                        l.evidence |= Evidence::CREDENTIALS;
                    }
                    self.reschedule(id);
                }
                return;
            }
        }
        let r = resolve(dir);
        if r.user.is_empty() {
            self.stats.orphan_messages += 1;
            return;
        }
        let mut origin = r.origin;
        // without a known boot cycle, the call itself is the session
        origin.session_start.get_or_insert(ts);
        let id = self.next_id;
        self.next_id += 1;
        self.stats.legs += 1;
        let mut evidence = 0;
        if dir == Direction::Out && has_credentials(msg) {
            evidence |= Evidence::CREDENTIALS;
        }
        if r.registered_source {
            evidence |= Evidence::REGISTERED_SOURCE;
        }
        let mut leg = Leg {
            dir,
            call_id: msg.call_id.into(),
            caller_tag: tag,
            client: hop.client,
            user: r.user.into(),
            state: LegState::Trying { challenged: false },
            invite_cseq: msg.cseq,
            invite_at: ts,
            provisional_at: None,
            cancelled: false,
            client_final: None,
            origin,
            last_seen: ts,
            evidence,
            scheduled: UNSCHEDULED,
        };
        let cost = leg.cost();
        while !self.legs.is_empty()
            && (self.legs.len() >= self.limits.max_legs || self.bytes + cost > self.limits.max_bytes)
        {
            if !self.full_logged {
                self.full_logged = true;
                tracing::warn!(
                    max_legs = self.limits.max_legs,
                    max_bytes = self.limits.max_bytes,
                    "call table full: evicting the least valuable legs (limits.max_call_legs, limits.max_call_legs_bytes)"
                );
            }
            self.evict(ts, out);
        }
        if dir == Direction::In {
            // an INVITE the server sends to a client is a call the client's user receives
            out.push(leg_event(ts, Kind::IncomingCall, &leg, Params::default()));
            leg.state = LegState::Early;
        }
        self.bytes += cost;
        self.legs.insert(id, leg);
        self.by_call_id.entry(cid).or_default().push(id);
        self.dirty.insert(id);
        self.reschedule(id);
    }

    fn invite_response(&mut self, ts: Micros, id: u64, code: u16, msg: &Message<'_>, hop: Hop, out: &mut Vec<Event>) {
        let leg = &self.legs[&id];
        let (state, invite_cseq, evidence) = (leg.state, leg.invite_cseq, leg.evidence);
        // responses travel towards the leg's caller side: to the client on `out`, from it on `in`
        let expected_from_client = leg.dir == Direction::In;
        if hop.from_client != expected_from_client {
            return;
        }
        match state {
            LegState::Ended { .. } => {}
            LegState::Answered { .. } => {
                // a re-INVITE's response or a retransmitted 2xx
                self.touch(ts, id);
                if (200..300).contains(&code)
                    && let Some(se) = msg.session_expires
                    && let LegState::Answered { session_expires, .. } = &mut self.leg_mut(id).state
                {
                    *session_expires = Some(se);
                    self.reschedule(id);
                }
            }
            LegState::Trying { .. } | LegState::Early => {
                if msg.cseq != invite_cseq {
                    return; // a late response to an earlier transaction
                }
                let trying = matches!(state, LegState::Trying { .. });
                if code == 100 {
                    let l = self.leg_mut(id);
                    l.provisional_at.get_or_insert(ts);
                    self.reschedule(id);
                    return;
                }
                if trying && matches!(code, 401 | 403 | 407) {
                    // a challenge or refusal proves nothing about the call
                    let l = self.leg_mut(id);
                    l.state = LegState::Trying { challenged: true };
                    l.provisional_at = None;
                    self.reschedule(id);
                    return;
                }
                if trying && code >= 300 && !proven(evidence, code) {
                    // refused before anything showed the caller is that user: a scanner's guess
                    self.stats.unauthenticated += 1;
                    let l = self.leg_mut(id);
                    l.state = LegState::Ended { at: ts, emitted: false };
                    self.reschedule(id);
                    return;
                }
                if trying {
                    self.accept(ts, id, out);
                }
                let leg = self.leg_mut(id);
                if leg.dir == Direction::In && code >= 200 {
                    leg.client_final = Some(code);
                }
                match code {
                    101..=199 => {
                        leg.state = LegState::Early;
                        leg.provisional_at = Some(ts);
                        self.reschedule(id);
                    }
                    200..=299 => {
                        leg.state =
                            LegState::Answered { at: ts, last_activity: ts, session_expires: msg.session_expires };
                        self.reschedule(id);
                    }
                    _ => {
                        let reason = match code {
                            487 => EndReason::Cancel,
                            // the caller's CANCEL answered by a server that timed the INVITE out
                            408 if leg.cancelled && leg.dir == Direction::Out => EndReason::Cancel,
                            // Request Timeout: nobody answered in time (a proxy's no-answer timer)
                            408 => EndReason::Timeout,
                            _ => EndReason::Rejected,
                        };
                        let ended_by = self.ended_by_final(id, code);
                        self.end(ts, id, code, reason, ended_by, 0.0, out);
                    }
                }
            }
        }
    }

    /// Who ended a leg by a final error response.
    fn ended_by_final(&self, id: u64, code: u16) -> EndedBy {
        let leg = &self.legs[&id];
        let others = || {
            self.by_call_id
                .get(&self.fp.of(&leg.call_id))
                .into_iter()
                .flatten()
                .filter(|o| **o != id)
                .filter_map(|o| self.legs.get(o))
        };
        match leg.dir {
            Direction::Out => {
                if matches!(code, 487 | 408) && leg.cancelled {
                    EndedBy::User
                } else if others().any(|o| o.dir == Direction::In && o.client_final == Some(code)) {
                    EndedBy::Peer
                } else {
                    EndedBy::Server
                }
            }
            Direction::In => {
                if code == 487 {
                    if others().any(|o| o.dir == Direction::Out && o.cancelled) {
                        EndedBy::Peer
                    } else {
                        EndedBy::Server
                    }
                } else {
                    EndedBy::User
                }
            }
        }
    }

    /// The server showed it accepted the attempt: emit `callout` once.
    fn accept(&mut self, ts: Micros, id: u64, out: &mut Vec<Event>) {
        let leg = self.leg_mut(id);
        if let LegState::Trying { .. } = leg.state {
            leg.state = LegState::Early;
            if leg.dir == Direction::Out {
                out.push(leg_event(ts, Kind::OutgoingCall, leg, Params::default()));
            }
        }
    }

    fn bye(&mut self, ts: Micros, id: u64, hop: Hop, out: &mut Vec<Event>) {
        let (state, evidence) = (self.legs[&id].state, self.legs[&id].evidence);
        let ended_by = if hop.from_client { EndedBy::User } else { EndedBy::Peer };
        match state {
            LegState::Answered { at, .. } => {
                let dur = (ts - at) as f64 / 1e6;
                self.end(ts, id, 200, EndReason::Bye, ended_by, dur, out);
            }
            // a BYE before any 2xx we saw: the 2xx was not captured, or the leg never was accepted
            LegState::Early => self.end(ts, id, 408, EndReason::Bye, ended_by, 0.0, out),
            LegState::Trying { .. } => {
                // the server's own BYE shows a dialog; the client's needs evidence like a refusal
                if !hop.from_client || proven(evidence, 200) {
                    self.accept(ts, id, out);
                    self.end(ts, id, 408, EndReason::Bye, ended_by, 0.0, out);
                }
            }
            LegState::Ended { .. } => {}
        }
    }

    fn touch(&mut self, ts: Micros, id: u64) {
        let l = self.legs.get_mut(&id).expect("present");
        if let LegState::Answered { last_activity, .. } = &mut l.state {
            *last_activity = ts;
            self.dirty.insert(id);
            // the deadline moved later: the entry in the heap re-arms itself when it comes due
            self.reschedule(id);
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn end(
        &mut self,
        ts: Micros,
        id: u64,
        status: u16,
        reason: EndReason,
        ended_by: EndedBy,
        duration: f64,
        out: &mut Vec<Event>,
    ) {
        let leg = self.leg_mut(id);
        let answered = matches!(leg.state, LegState::Answered { .. });
        let params = Params {
            answered: Some(answered),
            status: Some(status),
            reason: Some(reason),
            ended_by: Some(ended_by),
            duration_sec: Some((duration * 1000.0).round() / 1000.0),
            ..Params::default()
        };
        out.push(leg_event(ts, Kind::CallEnded, leg, params));
        leg.state = LegState::Ended { at: ts, emitted: true };
        self.reschedule(id);
    }

    /// When the leg's next timer fires.
    fn deadline_of(&self, l: &Leg) -> Micros {
        let ringing = |p: Option<Micros>| match p {
            None => l.invite_at + TIMER_B,
            Some(p) => (l.invite_at + TIMER_B).max(p + TIMER_C),
        };
        match l.state {
            LegState::Trying { .. } | LegState::Early => ringing(l.provisional_at),
            LegState::Answered { last_activity, session_expires, .. } => {
                let limit = session_expires
                    .map(|s| (i64::from(s) * 1_000_000).min(self.limits.max_call))
                    .unwrap_or(self.limits.max_call);
                last_activity + limit
            }
            LegState::Ended { at, .. } => at + LINGER,
        }
    }

    /// Puts the leg's deadline in the heap if it is earlier than the one there; a later one is
    /// found when the earlier entry comes due (so the heap holds about one entry per leg).
    fn reschedule(&mut self, id: u64) {
        let d = self.deadline_of(&self.legs[&id]);
        let l = self.legs.get_mut(&id).expect("present");
        if d < l.scheduled {
            l.scheduled = d;
            self.deadlines.push((d, id));
            self.compact_deadlines();
        }
    }

    /// Drops the stale entries of the timer heap once they outnumber the legs: an answered call
    /// that ends leaves its four-hour deadline behind, and at a steady call rate those would pile
    /// up for hours (memory that grows under constant load). Rebuilding is linear and happens
    /// once per as many reschedules: O(1) amortised.
    fn compact_deadlines(&mut self) {
        if self.deadlines.len() > 2 * self.legs.len() + 1024 {
            let live: Vec<(Micros, u64)> = self
                .legs
                .iter()
                .filter(|(_, l)| l.scheduled != UNSCHEDULED)
                .map(|(id, l)| (l.scheduled, *id))
                .collect();
            self.deadlines.rebuild(live);
        }
    }

    /// The earliest time something may be due (a lower bound).
    pub fn next_deadline(&self) -> Option<Micros> {
        self.deadlines.peek().map(|(d, _)| d)
    }

    /// Fires every timer due at or before `now`, in deadline order.
    pub fn tick(&mut self, now: Micros, out: &mut Vec<Event>) {
        while let Some((due, id)) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            let Some(l) = self.legs.get(&id) else { continue };
            if l.scheduled != due {
                continue; // stale entry
            }
            let d = self.deadline_of(l);
            let l = self.legs.get_mut(&id).expect("present");
            l.scheduled = UNSCHEDULED;
            if d > due {
                l.scheduled = d;
                self.deadlines.push((d, id));
                continue;
            }
            self.expire(d, id, out);
        }
    }

    fn expire(&mut self, due: Micros, id: u64, out: &mut Vec<Event>) {
        let leg = &self.legs[&id];
        let cancelled = leg.cancelled;
        match leg.state {
            LegState::Ended { .. } => self.forget(id),
            LegState::Trying { challenged } => {
                // never accepted: no event at all (its current INVITE challenged, or unanswered)
                if challenged {
                    self.stats.unauthenticated += 1;
                } else {
                    self.stats.unaccepted += 1;
                }
                self.forget(id);
            }
            LegState::Early => {
                self.stats.timeouts += 1;
                let reason = if cancelled { EndReason::Cancel } else { EndReason::Timeout };
                self.end(due, id, 408, reason, EndedBy::Server, 0.0, out);
            }
            LegState::Answered { at, last_activity, .. } => {
                self.stats.timeouts += 1;
                let dur = (last_activity - at) as f64 / 1e6;
                self.end(due, id, 200, EndReason::Timeout, EndedBy::Server, dur, out);
            }
        }
    }

    fn seen(&mut self, id: u64, ts: Micros) {
        let l = self.leg_mut(id);
        l.last_seen = l.last_seen.max(ts);
    }

    fn leg_mut(&mut self, id: u64) -> &mut Leg {
        self.dirty.insert(id);
        self.legs.get_mut(&id).expect("present")
    }

    /// Makes room: forgets a hundredth of the legs at once (so that a full table does not cost
    /// a scan per new leg), the least valuable first: attempts that emitted nothing, then ended
    /// legs, then ringing ones, answered calls last; the longest idle first within each. An
    /// accepted leg still gets its `callend` (timeout), so that analytics stay balanced.
    fn evict(&mut self, now: Micros, out: &mut Vec<Event>) {
        let n = (self.legs.len() / 100).max(1);
        let mut order: Vec<((u8, Micros), u64)> =
            self.legs.iter().map(|(id, l)| ((l.value(), l.last_seen), *id)).collect();
        let n = n.min(order.len());
        if n == 0 {
            return;
        }
        order.select_nth_unstable(n - 1);
        let mut victims: Vec<u64> = order[..n].iter().map(|(_, id)| *id).collect();
        victims.sort_unstable();
        for id in victims {
            self.stats.evicted += 1;
            match self.legs[&id].state {
                LegState::Early => self.end(now, id, 408, EndReason::Timeout, EndedBy::Server, 0.0, out),
                LegState::Answered { at, last_activity, .. } => {
                    if self.stats.evicted_answered == 0 {
                        tracing::warn!(
                            max_call_legs = self.limits.max_legs,
                            "call table full of answered calls: evicting some (their callend comes early, reason timeout); raise limits.max_call_legs"
                        );
                    }
                    self.stats.evicted_answered += 1;
                    let dur = (last_activity - at) as f64 / 1e6;
                    self.end(now, id, 200, EndReason::Timeout, EndedBy::Server, dur, out)
                }
                LegState::Trying { .. } | LegState::Ended { .. } => {}
            }
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(l) = self.legs.remove(&id) {
            self.bytes -= l.cost();
            self.dirty.insert(id);
            let cid = self.fp.of(&l.call_id);
            if let Some(v) = self.by_call_id.get_mut(&cid) {
                v.retain(|x| *x != id);
                if v.is_empty() {
                    self.by_call_id.remove(&cid);
                }
            }
        }
    }

    /// Legs changed (or gone) since the last call, for the state store.
    pub fn take_dirty(&mut self) -> FpSet {
        self.dirty.take()
    }
    /// Whether changes are tracked for the state store (off where nothing is saved).
    pub fn set_tracking(&mut self, on: bool) {
        self.dirty.set_tracking(on);
    }
    pub fn leg_record(&self, id: u64) -> Option<&Leg> {
        self.legs.get(&id)
    }
    pub fn leg_ids(&self) -> FpSet {
        self.legs.keys().copied().collect()
    }
    pub fn next_id(&self) -> u64 {
        self.next_id
    }

    /// Takes a leg loaded from the state store (at start): its timer is derived from its state.
    pub fn restore_leg(&mut self, id: u64, mut leg: Leg) {
        leg.scheduled = UNSCHEDULED;
        let cid = self.fp.of(&leg.call_id);
        self.bytes += leg.cost();
        if let Some(old) = self.legs.insert(id, leg) {
            self.bytes -= old.cost();
        }
        let ids = self.by_call_id.entry(cid).or_default();
        ids.push(id);
        ids.sort_unstable();
        self.next_id = self.next_id.max(id + 1);
        self.reschedule(id);
    }
    pub fn set_next_id(&mut self, n: u64) {
        self.next_id = self.next_id.max(n);
    }
}

/// Whether a refused attempt (final `code`) was shown to be its caller's.
fn proven(evidence: u8, code: u16) -> bool {
    if evidence & (Evidence::REGISTERED_SOURCE | Evidence::RELAYED) != 0 {
        return true;
    }
    // credentials the server asked for, or answered with something a rate limiter in front of
    // authentication would not say
    evidence & Evidence::CREDENTIALS != 0 && (evidence & Evidence::CHALLENGED != 0 || code < 500)
}

/// The INVITE carries credentials for its From user.
fn has_credentials(msg: &Message<'_>) -> bool {
    let Some(user) = msg.auth_user else { return false };
    let Some(from) = msg.from.parsed_uri() else { return false };
    from.user.is_some_and(|u| u.eq_ignore_ascii_case(user)) || from.aor().eq_ignore_ascii_case(user)
}

fn leg_event(ts: Micros, kind: Kind, leg: &Leg, mut params: Params) -> Event {
    // (`String::from`, not `to_string`: a `Box<str>` would go through the formatter)
    params.call_id = Some(String::from(&*leg.call_id));
    params.direction = Some(leg.dir);
    Event { ts, kind, user: String::from(&*leg.user), params, origin: leg.origin.clone() }
}
