//! Call legs: one per INVITE dialog between a client and the server, in either direction.
//! Decides `callout`, `callin` and exactly one `callend` for each of them.
//!
//! A leg is keyed by Call-ID, the caller's From tag and the client's address, so that the two
//! legs of a call through a record-routing proxy (same Call-ID and From tag) stay apart, and a
//! retransmitted or re-authenticated INVITE stays the same attempt.
use crate::capture::Micros;
use crate::event::{Direction, EndReason, EndedBy, Event, Kind, Origin, Params};
use crate::sip::Message;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;

/// 64*T1: an INVITE client transaction with no response gives up after this (RFC 3261 17.1.1.2).
pub const TIMER_B: Micros = 32_000_000;
/// Timer C: a proxy gives up on a ringing leg after this (RFC 3261 16.6 step 11: > 3 min).
pub const TIMER_C: Micros = 180_000_000;
/// An ended leg is remembered this long, so retransmissions do not start it again.
const LINGER: Micros = 32_000_000;

#[derive(Debug, Clone, Copy, PartialEq)]
enum LegState {
    /// INVITE sent, nothing shows the server accepted it yet. `challenged`: got 401/403/407;
    /// `trying_at`: a 100 Trying came (the transaction proceeds: Timer C, not Timer B, applies).
    Trying { challenged: bool, trying_at: Option<Micros> },
    /// Accepted (callout/callin emitted), not answered.
    Early { last_provisional: Micros },
    /// 2xx seen.
    Answered { at: Micros, last_activity: Micros, session_expires: Option<u32> },
    /// callend emitted (or dropped unaccepted); kept to absorb retransmissions.
    Ended { at: Micros },
}

#[derive(Debug, Clone)]
struct Leg {
    dir: Direction,
    call_id: String,
    caller_tag: String,
    client: SocketAddr,
    user: String,
    state: LegState,
    invite_cseq: u32,
    last_invite: Micros,
    /// CANCEL seen on this leg (client's own for `out`, towards the client for `in`).
    cancelled: bool,
    /// The final status the client answered with (`in` legs), for the other leg's `ended_by`.
    client_final: Option<u16>,
    origin: Origin,
    /// The last message seen on the leg (for eviction: the longest idle goes first).
    last_seen: Micros,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct CallStats {
    pub invites: u64,
    pub legs: u64,
    pub retransmissions: u64,
    pub unauthenticated: u64,
    pub unaccepted: u64,
    pub orphan_messages: u64,
    pub timeouts: u64,
    pub evicted: u64,
}

/// Limits and timers of the call table.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    pub max_legs: usize,
    /// An answered call with no in-dialog traffic for this long ends (unless Session-Expires says less).
    pub max_call: Micros,
}

pub struct Calls {
    legs: HashMap<u64, Leg>,
    by_call_id: HashMap<String, Vec<u64>>,
    /// (deadline, leg id); stale entries are skipped when popped.
    deadlines: BinaryHeap<Reverse<(Micros, u64)>>,
    next_id: u64,
    limits: CallLimits,
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
    pub fn new(limits: CallLimits) -> Self {
        Calls {
            legs: HashMap::new(),
            by_call_id: HashMap::new(),
            deadlines: BinaryHeap::new(),
            next_id: 0,
            limits,
            stats: CallStats::default(),
        }
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

    /// Finds the leg a message belongs to: same Call-ID, the caller's tag as From (caller to
    /// callee) or To (callee to caller), and the same client. A client whose port changed (a new
    /// TCP connection) is still recognised by its IP; one whose address changed altogether (NAT:
    /// in-dialog requests go to the Contact's public address) by the tags, when only one leg of
    /// the call has them.
    fn find(&self, call_id: &str, client: SocketAddr, tags: [Option<&str>; 2], dir: Option<Direction>) -> Option<u64> {
        let ids = self.by_call_id.get(call_id)?;
        let fits = |l: &Leg| dir.is_none_or(|d| d == l.dir) && tags.contains(&Some(l.caller_tag.as_str()));
        let matching = |pred: &dyn Fn(&Leg) -> bool| {
            ids.iter().copied().find(|id| self.legs.get(id).is_some_and(|l| fits(l) && pred(l)))
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
    /// direction, and the app behind it.
    pub fn message(
        &mut self,
        ts: Micros,
        msg: &Message<'_>,
        hop: Hop,
        resolve: impl FnOnce(Direction) -> (String, Origin),
        out: &mut Vec<Event>,
    ) {
        let to_tag = msg.to.tag();
        if msg.method() == Some("INVITE") && to_tag.is_none() {
            return self.initial_invite(ts, msg, hop, resolve, out);
        }
        // everything else belongs to a leg we follow, or is counted and ignored
        let Some(id) = self.find(msg.call_id, hop.client, [msg.from.tag(), to_tag], None) else {
            self.stats.orphan_messages += 1;
            return;
        };
        self.seen(id, ts);
        match (msg.method(), msg.status()) {
            (Some("CANCEL"), _) => {
                if let Some(l) = self.legs.get_mut(&id) {
                    l.cancelled = true;
                }
            }
            (Some("BYE"), _) => self.bye(ts, id, hop, out),
            (None, Some(code)) if msg.cseq_method.eq_ignore_ascii_case("INVITE") => {
                self.invite_response(ts, id, code, msg, hop, out)
            }
            _ => self.touch(ts, id),
        }
    }

    fn initial_invite(
        &mut self,
        ts: Micros,
        msg: &Message<'_>,
        hop: Hop,
        resolve: impl FnOnce(Direction) -> (String, Origin),
        out: &mut Vec<Event>,
    ) {
        self.stats.invites += 1;
        let dir = if hop.from_client { Direction::Out } else { Direction::In };
        let from_tag = msg.from.tag().unwrap_or("");
        if let Some(id) = self.find(msg.call_id, hop.client, [Some(from_tag), None], Some(dir)) {
            // a retransmission, or the retry with credentials after a challenge
            self.stats.retransmissions += 1;
            self.seen(id, ts);
            let l = self.legs.get_mut(&id).expect("found");
            if matches!(l.state, LegState::Trying { .. } | LegState::Early { .. }) {
                if msg.cseq != l.invite_cseq && matches!(l.state, LegState::Trying { .. }) {
                    // a new transaction (the retry with credentials): judged on its own responses
                    l.state = LegState::Trying { challenged: false, trying_at: None };
                }
                l.last_invite = ts;
                l.invite_cseq = msg.cseq;
                let d = self.deadline_of(id);
                self.schedule(id, d);
            }
            return;
        }
        let (user, mut origin) = resolve(dir);
        // without a known boot cycle, the call itself is the session
        origin.session_start.get_or_insert(ts);
        if user.is_empty() {
            self.stats.orphan_messages += 1;
            return;
        }
        if self.legs.len() >= self.limits.max_legs {
            self.evict(ts, out);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.stats.legs += 1;
        let mut leg = Leg {
            dir,
            call_id: msg.call_id.to_string(),
            caller_tag: from_tag.to_string(),
            client: hop.client,
            user,
            state: LegState::Trying { challenged: false, trying_at: None },
            invite_cseq: msg.cseq,
            last_invite: ts,
            cancelled: false,
            client_final: None,
            origin,
            last_seen: ts,
        };
        if dir == Direction::In {
            // an INVITE the server sends to a client is a call the client's user receives
            out.push(leg_event(ts, Kind::IncomingCall, &leg, Params::default()));
            leg.state = LegState::Early { last_provisional: ts };
        }
        self.legs.insert(id, leg);
        self.by_call_id.entry(msg.call_id.to_string()).or_default().push(id);
        let d = self.deadline_of(id);
        self.schedule(id, d);
    }

    fn invite_response(&mut self, ts: Micros, id: u64, code: u16, msg: &Message<'_>, hop: Hop, out: &mut Vec<Event>) {
        let Some(leg) = self.legs.get(&id) else {
            return;
        };
        // responses travel towards the leg's caller side: to the client on `out`, from it on `in`
        let expected_from_client = leg.dir == Direction::In;
        if hop.from_client != expected_from_client {
            return;
        }
        let state = leg.state;
        match state {
            LegState::Ended { .. } => {}
            LegState::Answered { .. } => {
                // a re-INVITE's response or a retransmitted 2xx
                self.touch(ts, id);
                if (200..300).contains(&code)
                    && let Some(se) = msg.session_expires
                    && let Some(l) = self.legs.get_mut(&id)
                    && let LegState::Answered { session_expires, .. } = &mut l.state
                {
                    *session_expires = Some(se);
                    let d = self.deadline_of(id);
                    self.schedule(id, d);
                }
            }
            LegState::Trying { .. } | LegState::Early { .. } => {
                if code == 100 {
                    if let LegState::Trying { challenged, .. } = state {
                        self.legs.get_mut(&id).expect("present").state =
                            LegState::Trying { challenged, trying_at: Some(ts) };
                        let d = self.deadline_of(id);
                        self.schedule(id, d);
                    }
                    return;
                }
                if matches!(state, LegState::Trying { .. }) {
                    if matches!(code, 401 | 403 | 407) {
                        // a challenge or refusal proves nothing about the call
                        if let Some(l) = self.legs.get_mut(&id) {
                            l.state = LegState::Trying { challenged: true, trying_at: None };
                        }
                        return;
                    }
                    self.accept(ts, id, out);
                }
                let leg = self.legs.get_mut(&id).expect("present");
                if leg.dir == Direction::In && code >= 200 {
                    leg.client_final = Some(code);
                }
                match code {
                    101..=199 => {
                        leg.state = LegState::Early { last_provisional: ts };
                        let d = self.deadline_of(id);
                        self.schedule(id, d);
                    }
                    200..=299 => {
                        leg.state =
                            LegState::Answered { at: ts, last_activity: ts, session_expires: msg.session_expires };
                        let d = self.deadline_of(id);
                        self.schedule(id, d);
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
                .get(&leg.call_id)
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
        let leg = self.legs.get_mut(&id).expect("present");
        if let LegState::Trying { .. } = leg.state {
            leg.state = LegState::Early { last_provisional: ts };
            if leg.dir == Direction::Out {
                out.push(leg_event(ts, Kind::OutgoingCall, leg, Params::default()));
            }
        }
    }

    fn bye(&mut self, ts: Micros, id: u64, hop: Hop, out: &mut Vec<Event>) {
        let Some(leg) = self.legs.get(&id) else {
            return;
        };
        let ended_by = if hop.from_client { EndedBy::User } else { EndedBy::Peer };
        match leg.state {
            LegState::Answered { at, .. } => {
                let dur = (ts - at) as f64 / 1e6;
                self.end(ts, id, 200, EndReason::Bye, ended_by, dur, out);
            }
            // a BYE before any 2xx we saw: the 2xx was not captured, or the leg never was accepted
            LegState::Early { .. } => self.end(ts, id, 408, EndReason::Bye, ended_by, 0.0, out),
            LegState::Trying { .. } => {
                self.accept(ts, id, out);
                self.end(ts, id, 408, EndReason::Bye, ended_by, 0.0, out);
            }
            LegState::Ended { .. } => {}
        }
    }

    fn touch(&mut self, ts: Micros, id: u64) {
        if let Some(l) = self.legs.get_mut(&id)
            && let LegState::Answered { last_activity, .. } = &mut l.state
        {
            *last_activity = ts;
            // the deadline moved later; the heap keeps the old entry, which is skipped when due
            let d = self.deadline_of(id);
            self.schedule(id, d);
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
        let Some(leg) = self.legs.get_mut(&id) else {
            return;
        };
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
        leg.state = LegState::Ended { at: ts };
        let d = self.deadline_of(id);
        self.schedule(id, d);
    }

    /// When the leg's next timer fires.
    fn deadline_of(&self, id: u64) -> Micros {
        let l = &self.legs[&id];
        match l.state {
            LegState::Trying { trying_at: None, .. } => l.last_invite + TIMER_B,
            LegState::Trying { trying_at: Some(t), .. } => (l.last_invite + TIMER_B).max(t + TIMER_C),
            LegState::Early { last_provisional } => (l.last_invite + TIMER_B).max(last_provisional + TIMER_C),
            LegState::Answered { last_activity, session_expires, .. } => {
                let limit = session_expires
                    .map(|s| (i64::from(s) * 1_000_000).min(self.limits.max_call))
                    .unwrap_or(self.limits.max_call);
                last_activity + limit
            }
            LegState::Ended { at } => at + LINGER,
        }
    }

    fn schedule(&mut self, id: u64, deadline: Micros) {
        self.deadlines.push(Reverse((deadline, id)));
    }

    /// The earliest time something may be due (a lower bound).
    pub fn next_deadline(&self) -> Option<Micros> {
        self.deadlines.peek().map(|Reverse((d, _))| *d)
    }

    /// Fires every timer due at or before `now`, in deadline order.
    pub fn tick(&mut self, now: Micros, out: &mut Vec<Event>) {
        while let Some(&Reverse((due, id))) = self.deadlines.peek() {
            if due > now {
                break;
            }
            self.deadlines.pop();
            if !self.legs.contains_key(&id) || self.deadline_of(id) != due {
                continue; // stale entry
            }
            self.expire(due, id, out);
        }
    }

    fn expire(&mut self, due: Micros, id: u64, out: &mut Vec<Event>) {
        let leg = &self.legs[&id];
        match leg.state {
            LegState::Ended { .. } => self.forget(id),
            LegState::Trying { challenged, .. } => {
                // never accepted: no event at all
                if challenged {
                    self.stats.unauthenticated += 1;
                } else {
                    self.stats.unaccepted += 1;
                }
                self.forget(id);
            }
            LegState::Early { .. } => {
                self.stats.timeouts += 1;
                let reason = if leg.cancelled { EndReason::Cancel } else { EndReason::Timeout };
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
        if let Some(l) = self.legs.get_mut(&id) {
            l.last_seen = l.last_seen.max(ts);
        }
    }

    /// Makes room: forgets the hundredth of the legs idle the longest (ended legs first), in one
    /// batch so that a full table does not cost a scan per new leg. An accepted leg still gets its
    /// `callend` (timeout), so that analytics stay balanced.
    fn evict(&mut self, now: Micros, out: &mut Vec<Event>) {
        let n = (self.legs.len() / 100).max(1);
        let mut order: Vec<((bool, Micros), u64)> =
            self.legs.iter().map(|(id, l)| ((!matches!(l.state, LegState::Ended { .. }), l.last_seen), *id)).collect();
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
                LegState::Early { .. } => self.end(now, id, 408, EndReason::Timeout, EndedBy::Server, 0.0, out),
                LegState::Answered { at, last_activity, .. } => {
                    let dur = (last_activity - at) as f64 / 1e6;
                    self.end(now, id, 200, EndReason::Timeout, EndedBy::Server, dur, out)
                }
                LegState::Trying { .. } | LegState::Ended { .. } => {}
            }
            self.forget(id);
        }
    }

    fn forget(&mut self, id: u64) {
        if let Some(l) = self.legs.remove(&id)
            && let Some(v) = self.by_call_id.get_mut(&l.call_id)
        {
            v.retain(|x| *x != id);
            if v.is_empty() {
                self.by_call_id.remove(&l.call_id);
            }
        }
    }
}

fn leg_event(ts: Micros, kind: Kind, leg: &Leg, mut params: Params) -> Event {
    params.call_id = Some(leg.call_id.clone());
    params.direction = Some(leg.dir);
    Event { ts, kind, user: leg.user.clone(), params, origin: leg.origin.clone() }
}
