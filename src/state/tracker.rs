//! The tracker: feed it `(timestamp, endpoints, SIP message)`, get events back. No sockets,
//! files, threads or wall clock: time is the packet's, timeouts fire from [`Tracker::tick`].
use super::call::{CallLimits, Calls, Hop, Resolved};
use super::fingerprint::{Fingerprinter, MessageKeys};
use super::registration::{RegLimits, Registrations};
use super::users::KnownUsers;
use crate::capture::Micros;
use crate::event::{Direction, Event};
use crate::sip::Message;
use crate::sip::uri::Uri;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// The SIP servers siptap sits beside: an address, optionally with a port.
#[derive(Debug, Clone, Default)]
pub struct Servers(Vec<(IpAddr, Option<u16>)>);

impl Servers {
    /// The addresses kept in canonical form (IPv4-mapped IPv6 as IPv4), so that each message's
    /// two lookups compare them as they are.
    pub fn new(servers: Vec<(IpAddr, Option<u16>)>) -> Self {
        Servers(servers.into_iter().map(|(ip, port)| (canonical_ip(ip), port)).collect())
    }

    pub fn contains(&self, a: SocketAddr) -> bool {
        let (ip, port) = (canonical_ip(a.ip()), a.port());
        self.0.iter().any(|(sip, p)| *sip == ip && p.is_none_or(|p| p == port))
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
    /// Whether `user_agent` is a push proxy's for users of `domain` (in any case).
    pub fn matches(&self, domain: &str, user_agent: &str) -> bool {
        let pats = self.by_domain.get(&*crate::bytes::ascii_lowercase(domain)).unwrap_or(&self.default);
        let ua = user_agent.as_bytes();
        pats.iter().any(|p| {
            let p = p.as_bytes();
            p.is_empty() || ua.windows(p.len()).any(|w| w.eq_ignore_ascii_case(p))
        })
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
    pub max_contacts_per_register: usize,
    /// Bytes of registrations (apps and contacts), of pending REGISTERs, of call legs.
    pub max_registration_bytes: usize,
    pub max_pending_bytes: usize,
    pub max_call_legs_bytes: usize,
    /// Contact parameters or REGISTER headers by which apps send their own instance id.
    pub identity_names: Vec<String>,
    /// The key of the state's fingerprints (kept with the state; random without one).
    pub fingerprint_key: [u64; 2],
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
            max_contacts_per_register: 16,
            max_registration_bytes: 160 << 20,
            max_pending_bytes: 32 << 20,
            max_call_legs_bytes: 96 << 20,
            identity_names: Vec::new(),
            fingerprint_key: [0x5349_5054_4150, 0x006b_6579],
        }
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct TrackerStats {
    pub messages: u64,
    pub server_to_server: u64,
    pub client_to_client: u64,
    /// Messages skipped because a field siptap keeps is longer than [`MAX_FIELD`].
    pub oversized_fields: u64,
}

/// The longest Call-ID, From/To/Request URI or Contact siptap keeps: real ones are far shorter,
/// and this bounds what one table entry can cost whatever senders put in them.
pub const MAX_FIELD: usize = 256;

pub struct Tracker {
    servers: Servers,
    push_proxies: PushProxyAgents,
    pub registrations: Registrations,
    pub calls: Calls,
    pub stats: TrackerStats,
    last_expire: Micros,
}

impl Tracker {
    /// The fingerprinter of this state (its key).
    pub fn fp(&self) -> &Fingerprinter {
        self.registrations.fp()
    }

    /// `known_users`: who already signed up (answered from memory, the store or the cluster).
    pub fn new(cfg: TrackerConfig, known_users: Box<dyn KnownUsers>) -> Self {
        let fp = Fingerprinter::new(cfg.fingerprint_key);
        Tracker {
            servers: cfg.servers,
            push_proxies: cfg.push_proxies,
            registrations: Registrations::new(
                fp,
                known_users,
                RegLimits {
                    max_devices: cfg.max_devices,
                    max_pending: cfg.max_pending,
                    max_contacts_per_register: cfg.max_contacts_per_register,
                    max_bytes: cfg.max_registration_bytes,
                    max_pending_bytes: cfg.max_pending_bytes,
                },
                cfg.identity_names.clone(),
            ),
            calls: Calls::new(
                fp,
                CallLimits {
                    max_legs: cfg.max_legs.max(1),
                    max_bytes: cfg.max_call_legs_bytes.max(1 << 16),
                    max_call: cfg.max_call_secs as Micros * 1_000_000,
                },
            ),
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
    /// `keys`: the message's [`MessageKeys`], taken with this tracker's fingerprinter.
    pub fn message(
        &mut self,
        ts: Micros,
        src: SocketAddr,
        dst: SocketAddr,
        msg: &Message<'_>,
        keys: &MessageKeys,
        out: &mut Vec<Event>,
    ) {
        self.stats.messages += 1;
        let ruri_len = match msg.start {
            crate::sip::StartLine::Request { uri, .. } => uri.len(),
            crate::sip::StartLine::Response { .. } => 0,
        };
        if [
            msg.call_id.len(),
            msg.from.uri.len(),
            msg.to.uri.len(),
            ruri_len,
            msg.from.params.len(),
            msg.to.params.len(),
        ]
        .iter()
        .any(|l| *l > MAX_FIELD)
        {
            self.stats.oversized_fields += 1;
            return;
        }
        let (src_srv, dst_srv) = (self.servers.contains(src), self.servers.contains(dst));
        let hop = match (src_srv, dst_srv) {
            (false, true) => Hop { client: src, from_client: true },
            (true, false) => Hop { client: dst, from_client: false },
            (true, true) => {
                self.stats.server_to_server += 1;
                // a proxy relaying an INVITE to another server (a gateway, a trunk) accepted it
                if msg.method() == Some("INVITE") && msg.to.tag().is_none() {
                    self.calls.relayed(keys);
                }
                return;
            }
            (false, false) => {
                self.stats.client_to_client += 1;
                return;
            }
        };
        if msg.is_register() {
            match (msg.status(), hop.from_client) {
                (None, true) => {
                    // (no User-Agent, no push proxy: the domain is not needed then)
                    let push = msg
                        .user_agent
                        .is_some_and(|ua| self.push_proxies.matches(msg.to.parsed_uri().map_or("", |u| u.host), ua));
                    self.registrations.request(ts, src, msg, push);
                }
                (Some(_), false) => self.registrations.response(ts, dst, msg, out),
                _ => {}
            }
            return;
        }
        let regs = &self.registrations;
        let resolve = |dir: Direction| -> Resolved {
            match dir {
                Direction::Out => {
                    let user = msg.from.parsed_uri().map(|u| u.aor()).unwrap_or_default();
                    let contact = msg.first_contact().and_then(|c| c.addr.parsed_uri());
                    let origin = contact
                        .map(|u| regs.origin_for_contact(&user, regs.fp().of_contact(&u), ts))
                        .unwrap_or_default();
                    let registered_source = regs.registered_from(&user, hop.client, ts);
                    Resolved { user, origin, registered_source }
                }
                Direction::In => {
                    let ruri = match msg.start {
                        crate::sip::StartLine::Request { uri, .. } => Uri::parse(uri),
                        crate::sip::StartLine::Response { .. } => None,
                    };
                    let key = ruri.map(|u| regs.fp().of_contact(&u));
                    let user = key
                        .and_then(|k| regs.aor_for_contact(k, ts).map(std::borrow::Cow::into_owned))
                        .or_else(|| msg.to.parsed_uri().map(|u| u.aor()))
                        .unwrap_or_default();
                    let origin = key.map(|k| regs.origin_for_contact(&user, k, ts)).unwrap_or_default();
                    Resolved { user, origin, registered_source: false }
                }
            }
        };
        self.calls.message(ts, msg, keys, hop, resolve, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_proxies_match_by_domain_in_any_case() {
        let p = PushProxyAgents {
            by_domain: HashMap::from([("lab.example".to_string(), vec!["PushGW".to_string()])]),
            default: vec!["Acrobits SIPIS".into()],
        };
        assert!(p.matches("lab.example", "x pushgw/1.0"));
        assert!(p.matches("Lab.EXAMPLE", "PushGW"), "the domain's case does not matter");
        assert!(!p.matches("LAB.example", "Acrobits SIPIS/1.0"), "a known domain's own list, not the default");
        assert!(p.matches("other.example", "acrobits sipis/1.0"), "the default for other domains");
        assert!(!p.matches("other.example", "PushGW"));
    }

    #[test]
    fn servers_match_by_address_in_either_form_and_by_port_when_given() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let servers = Servers::new(vec![
            (ip("127.0.0.10"), None),
            (ip("::ffff:127.0.0.11"), Some(5070)),
            (ip("::1"), Some(5060)),
        ]);
        for (a, want) in [
            ("127.0.0.10:5060", true),
            ("127.0.0.10:1", true),
            ("[::ffff:127.0.0.10]:5080", true),
            ("127.0.0.11:5070", true),
            ("[::ffff:127.0.0.11]:5070", true),
            ("127.0.0.11:5060", false),
            ("[::1]:5060", true),
            ("[::1]:5061", false),
            ("127.0.0.1:5060", false),
            ("127.0.0.12:5070", false),
        ] {
            assert_eq!(servers.contains(at(a)), want, "{a}");
        }
    }
}
