//! The tracker: feed it `(timestamp, endpoints, SIP message)`, get events back. No sockets,
//! files, threads or wall clock: time is the packet's, timeouts fire from [`Tracker::tick`].
use super::call::{CallLimits, Calls, Hop};
use super::registration::Registrations;
use crate::capture::Micros;
use crate::event::{Direction, Event, Origin};
use crate::sip::Message;
use crate::sip::uri::Uri;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

/// The SIP servers siptap sits beside: an address, optionally with a port.
#[derive(Debug, Clone, Default)]
pub struct Servers(pub Vec<(IpAddr, Option<u16>)>);

impl Servers {
    pub fn contains(&self, a: SocketAddr) -> bool {
        let ip = canonical_ip(a.ip());
        self.0.iter().any(|(sip, port)| canonical_ip(*sip) == ip && port.is_none_or(|p| p == a.port()))
    }
}

fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// User-Agent patterns of push proxies (case-insensitive substrings), per user domain.
#[derive(Debug, Clone, Default)]
pub struct PushProxyAgents {
    pub by_domain: HashMap<String, Vec<String>>,
    pub default: Vec<String>,
}

impl PushProxyAgents {
    pub fn matches(&self, domain: &str, user_agent: Option<&str>) -> bool {
        let Some(ua) = user_agent else { return false };
        let ua = ua.to_ascii_lowercase();
        let pats = self.by_domain.get(domain).unwrap_or(&self.default);
        pats.iter().any(|p| ua.contains(&p.to_ascii_lowercase()))
    }
}

#[derive(Debug, Clone)]
pub struct TrackerConfig {
    pub servers: Servers,
    pub push_proxies: PushProxyAgents,
    pub max_call_secs: u64,
    pub max_legs: usize,
    pub max_devices: usize,
    /// REGISTER transactions awaiting their final response.
    pub max_pending: usize,
    /// Contact parameters or REGISTER headers by which apps send their own instance id.
    pub identity_names: Vec<String>,
}

impl TrackerConfig {
    pub fn new(servers: Servers) -> Self {
        TrackerConfig {
            servers,
            push_proxies: PushProxyAgents { by_domain: HashMap::new(), default: vec!["Acrobits SIPIS".into()] },
            max_call_secs: 4 * 3600,
            max_legs: 1_000_000,
            max_devices: 1_000_000,
            max_pending: 100_000,
            identity_names: Vec::new(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerStats {
    pub messages: u64,
    pub server_to_server: u64,
    pub client_to_client: u64,
}

pub struct Tracker {
    servers: Servers,
    push_proxies: PushProxyAgents,
    pub registrations: Registrations,
    pub calls: Calls,
    pub stats: TrackerStats,
    last_expire: Micros,
}

impl Tracker {
    /// `known_users`: addresses of record that already signed up (from the persistent store).
    pub fn new(cfg: TrackerConfig, known_users: HashSet<String>) -> Self {
        Tracker {
            servers: cfg.servers,
            push_proxies: cfg.push_proxies,
            registrations: Registrations::new(
                known_users,
                cfg.max_devices,
                cfg.max_pending,
                cfg.identity_names.clone(),
            ),
            calls: Calls::new(CallLimits {
                max_legs: cfg.max_legs.max(1),
                max_call: cfg.max_call_secs as Micros * 1_000_000,
            }),
            stats: TrackerStats::default(),
            last_expire: Micros::MIN,
        }
    }

    /// Takes a new configuration's servers, push proxies and identity names; keeps all state.
    pub fn reconfigure(&mut self, cfg: TrackerConfig) {
        self.servers = cfg.servers;
        self.push_proxies = cfg.push_proxies;
        self.registrations.set_identity_names(cfg.identity_names);
    }

    /// Fires the timers due at `now`. Call before feeding a message stamped `now`, so that
    /// events come out in time order.
    pub fn tick(&mut self, now: Micros, out: &mut Vec<Event>) {
        if self.calls.next_deadline().is_some_and(|d| d <= now) {
            self.calls.tick(now, out);
        }
        if now.saturating_sub(self.last_expire) > 10_000_000 {
            self.registrations.expire(now);
            self.last_expire = now;
        }
    }

    /// One parsed SIP message seen going from `src` to `dst`.
    pub fn message(&mut self, ts: Micros, src: SocketAddr, dst: SocketAddr, msg: &Message<'_>, out: &mut Vec<Event>) {
        self.stats.messages += 1;
        let (src_srv, dst_srv) = (self.servers.contains(src), self.servers.contains(dst));
        let hop = match (src_srv, dst_srv) {
            (false, true) => Hop { client: src, from_client: true },
            (true, false) => Hop { client: dst, from_client: false },
            (true, true) => {
                self.stats.server_to_server += 1;
                return;
            }
            (false, false) => {
                self.stats.client_to_client += 1;
                return;
            }
        };
        let is_register = match msg.method() {
            Some(m) => m.eq_ignore_ascii_case("REGISTER"),
            None => msg.cseq_method.eq_ignore_ascii_case("REGISTER"),
        };
        if is_register {
            match (msg.status(), hop.from_client) {
                (None, true) => {
                    let domain = msg.to.parsed_uri().map(|u| u.host.to_ascii_lowercase()).unwrap_or_default();
                    let push = self.push_proxies.matches(&domain, msg.user_agent);
                    self.registrations.request(ts, msg, push);
                }
                (Some(_), false) => self.registrations.response(ts, msg, out),
                _ => {}
            }
            return;
        }
        let regs = &self.registrations;
        let resolve = |dir: Direction| -> (String, Origin) {
            match dir {
                Direction::Out => {
                    let user = msg.from.parsed_uri().map(|u| u.aor()).unwrap_or_default();
                    let contact = msg.contacts.first().and_then(|c| c.addr.parsed_uri());
                    let origin = contact.map(|u| regs.origin_for_contact(&user, &u)).unwrap_or_default();
                    (user, origin)
                }
                Direction::In => {
                    let ruri = match msg.start {
                        crate::sip::StartLine::Request { uri, .. } => Uri::parse(uri),
                        crate::sip::StartLine::Response { .. } => None,
                    };
                    let user = ruri
                        .and_then(|u| regs.aor_for_contact(&u).map(str::to_string))
                        .or_else(|| msg.to.parsed_uri().map(|u| u.aor()))
                        .unwrap_or_default();
                    let origin = ruri.map(|u| regs.origin_for_contact(&user, &u)).unwrap_or_default();
                    (user, origin)
                }
            }
        };
        self.calls.message(ts, msg, hop, resolve, out);
    }
}
