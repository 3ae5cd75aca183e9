//! Registrations: who registered which device, in which boot cycle (REGISTER Call-ID), and
//! whether its binding is active. Decides `signup`, `app_start` and `login` on a 2xx to REGISTER.
use crate::capture::Micros;
use crate::event::{Event, Kind, Origin, Params};
use crate::sip::Message;
use crate::sip::uri::Uri;
use std::collections::{HashMap, HashSet, VecDeque};

/// A REGISTER seen from a client, waiting for its final response.
#[derive(Debug, Clone)]
struct PendingRegister {
    ts: Micros,
    aor: String,
    bindings: Vec<RequestedBinding>,
    header_expires: Option<u32>,
    star: bool,
    push_proxy: bool,
}

#[derive(Debug, Clone)]
struct RequestedBinding {
    device: String,
    contact_key: String,
    expires: Option<u32>,
    /// An id the app sent for itself (a configured Contact parameter or header).
    app_instance: Option<String>,
}

/// The state of one device's binding, enough to tell a refresh from a new login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BindingState {
    Active { expires_at: Micros },
    Removed,
}

#[derive(Debug, Clone)]
struct Device {
    /// The REGISTER Call-ID of the app's current boot cycle.
    call_id: String,
    /// When that boot cycle started (its first accepted REGISTER): the session.
    boot_start: Micros,
    app_instance: Option<String>,
    state: BindingState,
    last_seen: Micros,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RegistrationStats {
    pub registers: u64,
    pub accepted: u64,
    pub challenged: u64,
    pub rejected: u64,
    pub push_proxy: u64,
    pub unmatched_responses: u64,
    pub pending_expired: u64,
    pub pending_evicted: u64,
    pub devices_evicted: u64,
    pub contacts_evicted: u64,
}

pub struct Registrations {
    pending: HashMap<(String, u32), PendingRegister>,
    /// Pending keys in arrival order, to evict the oldest when the table is full.
    pending_order: VecDeque<(Micros, (String, u32))>,
    max_pending: usize,
    devices: HashMap<(String, String), Device>,
    /// Registered contact (user@host:port) -> (address of record, device, last seen), for naming
    /// the callee and finding the app behind a call.
    contacts: HashMap<String, (String, Option<String>, Micros)>,
    /// Contact parameters or headers by which apps name their own instance.
    identity_names: Vec<String>,
    known_users: HashSet<String>,
    /// Users that signed up during this run (for the persistent store).
    new_users: Vec<String>,
    max_devices: usize,
    pub stats: RegistrationStats,
}

const TRANSACTION_TIMEOUT: Micros = 32_000_000;
const DEFAULT_EXPIRES: u32 = 3600;
/// A device is forgotten this long after its binding lapsed.
const DEVICE_MEMORY: Micros = 7 * 86_400 * 1_000_000;

impl Registrations {
    pub fn new(
        known_users: HashSet<String>,
        max_devices: usize,
        max_pending: usize,
        identity_names: Vec<String>,
    ) -> Self {
        Registrations {
            identity_names,
            pending: HashMap::new(),
            pending_order: VecDeque::new(),
            max_pending: max_pending.max(1),
            devices: HashMap::new(),
            contacts: HashMap::new(),
            known_users,
            new_users: Vec::new(),
            max_devices: max_devices.max(1),
            stats: RegistrationStats::default(),
        }
    }

    pub fn active_devices(&self) -> usize {
        self.devices.values().filter(|d| matches!(d.state, BindingState::Active { .. })).count()
    }
    pub fn devices(&self) -> usize {
        self.devices.len()
    }
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    pub fn known_users(&self) -> usize {
        self.known_users.len()
    }

    pub fn set_identity_names(&mut self, names: Vec<String>) {
        self.identity_names = names;
    }

    /// Users that signed up since the last call (to persist).
    pub fn take_new_users(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_users)
    }

    /// The address of record whose registered contact is this Request-URI, if any.
    pub fn aor_for_contact(&self, uri: &Uri<'_>) -> Option<&str> {
        self.contacts.get(&uri.contact_key()).map(|(a, _, _)| a.as_str())
    }

    /// The app behind a contact, when that contact is registered for `aor`.
    pub fn origin_for_contact(&self, aor: &str, uri: &Uri<'_>) -> Origin {
        let Some((a, Some(device), _)) = self.contacts.get(&uri.contact_key()) else {
            return Origin::default();
        };
        if a != aor {
            return Origin::default();
        }
        match self.devices.get(&(a.clone(), device.clone())) {
            Some(d) => Origin {
                device: Some(device.clone()),
                session_start: Some(d.boot_start),
                app_instance: d.app_instance.clone(),
            },
            None => Origin { device: Some(device.clone()), ..Origin::default() },
        }
    }

    /// A REGISTER from a client. `push_proxy`: its User-Agent is a push proxy's.
    pub fn request(&mut self, ts: Micros, msg: &Message<'_>, push_proxy: bool) {
        self.stats.registers += 1;
        let Some(to) = msg.to.parsed_uri() else {
            return;
        };
        let bindings = msg
            .contacts
            .iter()
            .filter_map(|c| {
                let uri = c.addr.parsed_uri()?;
                let contact_key = uri.contact_key();
                let device = c.instance().map(str::to_string).unwrap_or_else(|| contact_key.clone());
                let app_instance = self.identity_names.iter().find_map(|n| {
                    crate::sip::parse::param(c.addr.params, n)
                        .or_else(|| msg.header(n))
                        .map(|v| v.trim_matches(|ch| ch == '"' || ch == '<' || ch == '>').to_string())
                });
                Some(RequestedBinding { device, contact_key, expires: c.expires(), app_instance })
            })
            .collect();
        let key = (msg.call_id.to_string(), msg.cseq);
        if !self.pending.contains_key(&key) {
            while self.pending.len() >= self.max_pending {
                let Some((_, old)) = self.pending_order.pop_front() else {
                    break;
                };
                if self.pending.remove(&old).is_some() {
                    self.stats.pending_evicted += 1;
                }
            }
            self.pending_order.push_back((ts, key.clone()));
        }
        self.pending.insert(
            key,
            PendingRegister {
                ts,
                aor: to.aor(),
                bindings,
                header_expires: msg.expires,
                star: msg.contact_star,
                push_proxy,
            },
        );
    }

    /// A final response to REGISTER sent to a client; appends the events it decides.
    pub fn response(&mut self, ts: Micros, msg: &Message<'_>, out: &mut Vec<Event>) {
        let Some(code) = msg.status() else { return };
        if code < 200 {
            return;
        }
        let key = (msg.call_id.to_string(), msg.cseq);
        let pending = self.pending.remove(&key);
        if code >= 300 {
            if matches!(code, 401 | 407) {
                self.stats.challenged += 1;
            } else {
                self.stats.rejected += 1;
            }
            return;
        }
        // the 2xx lists every current binding of the AOR: learn them for naming callees
        let resp_aor = msg.to.parsed_uri().map(|u| u.aor());
        let mut granted: HashMap<String, u32> = HashMap::new();
        for c in &msg.contacts {
            if let Some(uri) = c.addr.parsed_uri() {
                let k = uri.contact_key();
                if let Some(e) = c.expires() {
                    granted.insert(k.clone(), e);
                }
                if let Some(aor) = &resp_aor
                    && c.expires() != Some(0)
                {
                    self.learn_contact(ts, k, aor, None);
                }
            }
        }
        let pending = match pending {
            Some(p) => p,
            None => {
                // the request was not captured: follow a 2xx that names exactly one binding
                self.stats.unmatched_responses += 1;
                let (Some(aor), [c]) = (resp_aor, msg.contacts.as_slice()) else {
                    return;
                };
                let Some(uri) = c.addr.parsed_uri() else {
                    return;
                };
                let contact_key = uri.contact_key();
                let device = c.instance().map(str::to_string).unwrap_or_else(|| contact_key.clone());
                PendingRegister {
                    ts,
                    aor,
                    bindings: vec![RequestedBinding { device, contact_key, expires: c.expires(), app_instance: None }],
                    header_expires: msg.expires,
                    star: false,
                    push_proxy: false,
                }
            }
        };
        self.stats.accepted += 1;
        if pending.push_proxy {
            self.stats.push_proxy += 1;
        }
        let call_id = msg.call_id;
        if pending.star {
            for ((aor, _), dev) in self.devices.iter_mut() {
                if *aor == pending.aor {
                    dev.state = BindingState::Removed;
                }
            }
            self.contacts.retain(|_, (a, _, _)| *a != pending.aor);
            return;
        }
        let mut signed_up = false;
        for b in &pending.bindings {
            let expires = granted
                .get(&b.contact_key)
                .copied()
                .or(b.expires)
                .or(pending.header_expires)
                .unwrap_or(DEFAULT_EXPIRES);
            let key = (pending.aor.clone(), b.device.clone());
            if expires == 0 {
                if let Some(d) = self.devices.get_mut(&key) {
                    d.state = BindingState::Removed;
                    d.last_seen = ts;
                }
                self.contacts.remove(&b.contact_key);
                continue;
            }
            self.learn_contact(ts, b.contact_key.clone(), &pending.aor, Some(&b.device));
            let expires_at = ts + i64::from(expires) * 1_000_000;
            if pending.push_proxy {
                // keeps the binding alive; the app did not start
                if let Some(d) = self.devices.get_mut(&key) {
                    d.state = BindingState::Active { expires_at };
                    d.last_seen = ts;
                }
                continue;
            }
            let prev = self.devices.get(&key);
            let app_start = prev.is_none_or(|d| d.call_id != call_id);
            let was_active =
                prev.is_some_and(|d| matches!(d.state, BindingState::Active { expires_at } if expires_at >= ts));
            let login = app_start || !was_active;
            let boot_start = match prev {
                Some(d) if !app_start => d.boot_start,
                _ => ts,
            };
            let app_instance = b.app_instance.clone().or_else(|| prev.and_then(|d| d.app_instance.clone()));
            let origin = Origin {
                device: Some(b.device.clone()),
                session_start: Some(boot_start),
                app_instance: app_instance.clone(),
            };
            if !signed_up && self.known_users.insert(pending.aor.clone()) {
                self.new_users.push(pending.aor.clone());
                out.push(reg_event(ts, Kind::AccountCreated, &pending.aor, b, call_id, &origin));
                signed_up = true;
            }
            if app_start {
                out.push(reg_event(ts, Kind::AppStarted, &pending.aor, b, call_id, &origin));
            }
            if login {
                out.push(reg_event(ts, Kind::AccountRegistered, &pending.aor, b, call_id, &origin));
            }
            if !self.devices.contains_key(&key) && self.devices.len() >= self.max_devices {
                self.evict_device();
            }
            self.devices.insert(
                key,
                Device {
                    call_id: call_id.to_string(),
                    boot_start,
                    app_instance,
                    state: BindingState::Active { expires_at },
                    last_seen: ts,
                },
            );
        }
    }

    /// Makes room by forgetting the least recently seen tenth of the devices at once (so that a
    /// full table costs O(log n) per insert, not a scan each time).
    fn evict_device(&mut self) {
        let n = (self.devices.len() / 10).max(1);
        for k in oldest_keys(self.devices.iter().map(|(k, d)| (k, d.last_seen)), n) {
            self.devices.remove(&k);
            self.stats.devices_evicted += 1;
        }
    }

    fn learn_contact(&mut self, ts: Micros, contact: String, aor: &str, device: Option<&str>) {
        if !self.contacts.contains_key(&contact) && self.contacts.len() >= self.max_devices {
            let n = (self.contacts.len() / 10).max(1);
            for k in oldest_keys(self.contacts.iter().map(|(k, (_, _, t))| (k, *t)), n) {
                self.contacts.remove(&k);
                self.stats.contacts_evicted += 1;
            }
        }
        let entry = self.contacts.entry(contact).or_insert_with(|| (aor.to_string(), None, ts));
        if entry.0 != aor {
            *entry = (aor.to_string(), None, ts);
        }
        if let Some(d) = device {
            entry.1 = Some(d.to_string());
        }
        entry.2 = ts;
    }

    /// Forgets unanswered REGISTER transactions and long-lapsed devices.
    pub fn expire(&mut self, now: Micros) {
        let before = self.pending.len();
        self.pending.retain(|_, p| now - p.ts <= TRANSACTION_TIMEOUT);
        self.stats.pending_expired += (before - self.pending.len()) as u64;
        self.devices.retain(|_, d| match d.state {
            BindingState::Active { expires_at } => now - expires_at <= DEVICE_MEMORY,
            BindingState::Removed => now - d.last_seen <= DEVICE_MEMORY,
        });
    }
}

/// The `n` keys with the oldest timestamps.
fn oldest_keys<'a, K: Clone + 'a>(it: impl Iterator<Item = (&'a K, Micros)>, n: usize) -> Vec<K> {
    let mut v: Vec<(Micros, &K)> = it.map(|(k, t)| (t, k)).collect();
    let n = n.min(v.len());
    if n == 0 {
        return Vec::new();
    }
    v.select_nth_unstable_by_key(n - 1, |(t, _)| *t);
    v[..n].iter().map(|(_, k)| (*k).clone()).collect()
}

fn reg_event(ts: Micros, kind: Kind, aor: &str, b: &RequestedBinding, call_id: &str, origin: &Origin) -> Event {
    Event {
        ts,
        kind,
        user: aor.to_string(),
        origin: origin.clone(),
        params: Params { device: Some(b.device.clone()), reg_call_id: Some(call_id.to_string()), ..Params::default() },
    }
}
