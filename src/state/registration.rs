//! Registrations: which app (a device in one boot cycle) registered which address of record, from
//! where, and whether its binding is active. Decides `signup`, `app_start` and `login` on a 2xx to
//! REGISTER.
//!
//! One REGISTER is one app in one boot cycle (RFC 3261 10.2.4: a UA keeps its Call-ID until it
//! reboots), however many Contacts it lists: events are decided per app, bindings are kept per
//! contact (for naming callees and for expiry). An app is found again by its boot cycle's Call-ID,
//! else by its `+sip.instance`, else by a contact it registered before.
use super::fingerprint::{DirtySet, Fingerprinter, Fp, FpMap, FpSet};
use super::shared::{Decision, Prev, SharedContact, SharedDevice, SharedRegistry, decide, device_key};
use super::users::KnownUsers;
use crate::capture::Micros;
use crate::event::{Event, Kind, Origin, Params};
use crate::sip::Message;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::net::SocketAddr;

/// A REGISTER transaction without a final response is forgotten after 64*T1.
pub const TRANSACTION_TIMEOUT: Micros = 32_000_000;
const DEFAULT_EXPIRES: u32 = 3600;
/// An app is forgotten this long after its binding lapsed (a later REGISTER is a new app then).
pub const DEVICE_MEMORY: Micros = 7 * 86_400 * 1_000_000;
/// A contact still names its user this long after its binding lapsed (a late INVITE to it).
const CONTACT_GRACE: Micros = 3600 * 1_000_000;
/// How often the app and contact tables are swept for lapsed entries (packet time).
const SWEEP_EVERY: Micros = 300 * 1_000_000;
/// `expires_at` of a binding that was removed.
const REMOVED: Micros = Micros::MIN;

/// A REGISTER seen from a client, waiting for its final response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PendingRegister {
    pub ts: Micros,
    pub aor: Box<str>,
    /// Where the REGISTER came from (a later INVITE from there is this user's).
    pub src: SocketAddr,
    /// The app's name for events: its `+sip.instance`, else its first contact `user@host:port`.
    pub device: Box<str>,
    pub has_instance: bool,
    /// An id the app sent for itself (a configured Contact parameter or header).
    pub app_instance: Option<Box<str>>,
    /// (contact, expires parameter) per Contact.
    pub bindings: Vec<(Fp, Option<u32>)>,
    pub header_expires: Option<u32>,
    pub star: bool,
    pub push_proxy: bool,
}

/// One app: a device in its current boot cycle, and its binding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct App {
    pub device: Box<str>,
    pub has_instance: bool,
    /// The REGISTER Call-ID of the current boot cycle.
    pub boot_call_id: Fp,
    /// When that boot cycle started (its first accepted REGISTER): the session.
    pub boot_start: Micros,
    pub app_instance: Option<Box<str>>,
    /// The contacts it registered.
    pub contacts: Box<[Fp]>,
    /// The binding is active until then; `Micros::MIN` once removed.
    pub expires_at: Micros,
    pub last_seen: Micros,
    /// The source (fingerprint of address and port) of its last accepted REGISTER.
    pub reg_from: Fp,
    /// A push proxy's REGISTER kept the binding alive since the app's own last one (the app is in
    /// the background; its next own REGISTER is a `login`).
    pub push_kept: bool,
}

impl App {
    fn active(&self, now: Micros) -> bool {
        self.expires_at >= now
    }
    /// Forgotten: lapsed for longer than the device memory.
    fn stale(&self, now: Micros) -> bool {
        self.expires_at != REMOVED && now - self.expires_at > DEVICE_MEMORY
            || self.expires_at == REMOVED && now - self.last_seen > DEVICE_MEMORY
    }
}

/// The apps of one address of record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AorState {
    pub aor: Box<str>,
    pub apps: Vec<App>,
    /// Bytes it costs in memory, as last counted (derived; not persisted).
    #[serde(skip)]
    size: usize,
}

impl AorState {
    /// Its bytes in memory: the struct, its strings and vectors, and the map entries for it.
    fn cost(&self) -> usize {
        std::mem::size_of::<AorState>()
            + self.aor.len()
            + MAP_ENTRY
            + ALLOC
            + self.apps.capacity() * std::mem::size_of::<App>()
            + self
                .apps
                .iter()
                .map(|a| {
                    a.device.len()
                        + a.app_instance.as_ref().map_or(0, |i| i.len() + ALLOC)
                        + a.contacts.len() * 8
                        + 3 * ALLOC
                })
                .sum::<usize>()
    }
}

impl PendingRegister {
    fn cost(&self) -> usize {
        std::mem::size_of::<PendingRegister>()
            + self.aor.len()
            + self.device.len()
            + self.app_instance.as_ref().map_or(0, |i| i.len())
            + self.bindings.capacity() * std::mem::size_of::<(Fp, Option<u32>)>()
            + MAP_ENTRY
            + 24
    }
}

/// What a hash-map entry costs beside its key and value (control byte, load factor, key).
const MAP_ENTRY: usize = 24;
/// What the allocator keeps beside each heap block (glibc: a 16-byte header and rounding).
const ALLOC: usize = 16;
/// A contact's bytes: its map entry.
const CONTACT_COST: usize = std::mem::size_of::<ContactEntry>() + MAP_ENTRY;

/// A registered contact: whose it is, which app's, until when.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ContactEntry {
    pub aor: Fp,
    /// The app (fingerprint of its device name) when the contact came in its own REGISTER.
    pub device: Option<Fp>,
    pub expires_at: Micros,
    pub last_seen: Micros,
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
    /// Of those, devices whose binding was still active (their next refresh will look new).
    pub devices_evicted_active: u64,
    pub contacts_evicted: u64,
    /// Contacts beyond `max_contacts_per_register` in one REGISTER or 2xx, ignored.
    pub contacts_dropped: u64,
    /// Cluster mode: decisions won through the shared registry, REGISTERs another sensor had
    /// already gone past (nothing decided), decisions made locally because the registry could not
    /// be asked.
    pub shared_decisions: u64,
    pub shared_late: u64,
    pub shared_local: u64,
}

/// Bounds of the registration tables.
#[derive(Debug, Clone, Copy)]
pub struct RegLimits {
    /// Apps (devices) remembered, and contacts.
    pub max_devices: usize,
    /// REGISTER transactions awaiting their final response.
    pub max_pending: usize,
    pub max_contacts_per_register: usize,
    /// Bytes of apps and contacts together.
    pub max_bytes: usize,
    /// Bytes of REGISTERs awaiting their response.
    pub max_pending_bytes: usize,
}

/// Which persisted records changed since the last [`Registrations::take_dirty`].
#[derive(Debug, Default)]
pub struct RegDirty {
    pub aors: DirtySet,
    pub contacts: DirtySet,
    pub pending: DirtySet,
}

/// Keys of records, per table.
#[derive(Debug, Default)]
pub struct RegKeys {
    pub aors: FpSet,
    pub contacts: FpSet,
    pub pending: FpSet,
}

pub struct Registrations {
    fp: Fingerprinter,
    pending: FpMap<PendingRegister>,
    /// Pending keys in arrival order, to evict the oldest when the table is full.
    pending_order: VecDeque<(Micros, Fp)>,
    aors: FpMap<AorState>,
    contacts: FpMap<ContactEntry>,
    apps: usize,
    /// Bytes of apps and contacts, and of pending REGISTERs.
    bytes: usize,
    pending_bytes: usize,
    bytes_logged: bool,
    last_sweep: Micros,
    /// Contact parameters or headers by which apps name their own instance.
    identity_names: Vec<String>,
    known: Box<dyn KnownUsers>,
    /// Cluster mode: the facts shared with other sensors.
    shared: Option<Box<dyn SharedRegistry>>,
    /// The last contact asked of the shared registry (a call asks twice: its user, its app).
    remote_memo: std::sync::Mutex<Option<(Fp, Micros, Option<SharedContact>)>>,
    limits: RegLimits,
    dirty: RegDirty,
    pub stats: RegistrationStats,
}

impl Registrations {
    pub fn new(fp: Fingerprinter, known: Box<dyn KnownUsers>, limits: RegLimits, identity_names: Vec<String>) -> Self {
        Registrations {
            fp,
            pending: FpMap::default(),
            pending_order: VecDeque::new(),
            aors: FpMap::default(),
            contacts: FpMap::default(),
            apps: 0,
            bytes: 0,
            pending_bytes: 0,
            bytes_logged: false,
            last_sweep: Micros::MIN / 2,
            identity_names,
            known,
            shared: None,
            remote_memo: std::sync::Mutex::new(None),
            limits: RegLimits {
                max_devices: limits.max_devices.max(1),
                max_pending: limits.max_pending.max(1),
                max_contacts_per_register: limits.max_contacts_per_register.max(1),
                max_bytes: limits.max_bytes.max(1 << 16),
                max_pending_bytes: limits.max_pending_bytes.max(1 << 16),
            },
            dirty: RegDirty::default(),
            stats: RegistrationStats::default(),
        }
    }

    pub fn active_devices(&self, now: Micros) -> usize {
        self.aors.values().flat_map(|a| &a.apps).filter(|a| a.active(now)).count()
    }
    pub fn devices(&self) -> usize {
        self.apps
    }
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    pub fn contacts(&self) -> usize {
        self.contacts.len()
    }
    /// Bytes held by apps and contacts, and by pending REGISTERs.
    pub fn bytes(&self) -> (usize, usize) {
        (self.bytes, self.pending_bytes)
    }

    /// Marks an address of record changed: to save, and to count its bytes again.
    fn touched(&mut self, k: Fp) {
        self.dirty.aors.insert(k);
        if let Some(s) = self.aors.get_mut(&k) {
            let now = s.cost();
            self.bytes = self.bytes + now - s.size;
            s.size = now;
        }
    }

    fn remove_pending(&mut self, k: Fp) -> Option<PendingRegister> {
        let p = self.pending.remove(&k)?;
        self.pending_bytes -= p.cost();
        self.dirty.pending.insert(k);
        Some(p)
    }

    fn remove_contact(&mut self, k: Fp) {
        if self.contacts.remove(&k).is_some() {
            self.bytes -= CONTACT_COST;
            self.dirty.contacts.insert(k);
        }
    }
    pub fn known_users(&self) -> u64 {
        self.known.count()
    }
    pub fn known_mut(&mut self) -> &mut dyn KnownUsers {
        &mut *self.known
    }

    /// Cluster mode: decide through the facts shared with other sensors.
    /// The keyed hash the tables use, for callers that look contacts up.
    pub fn fp(&self) -> &Fingerprinter {
        &self.fp
    }

    pub fn set_shared(&mut self, shared: Box<dyn SharedRegistry>) {
        self.shared = Some(shared);
    }

    pub fn set_identity_names(&mut self, names: Vec<String>) {
        self.identity_names = names;
    }

    /// A registered contact, unless it lapsed longer ago than the grace (whether or not the
    /// periodic cleanup has run: events must not depend on when it does).
    fn contact(&self, contact: Fp, now: Micros) -> Option<&ContactEntry> {
        self.contacts.get(&contact).filter(|c| now - c.expires_at <= CONTACT_GRACE)
    }

    /// A contact another sensor registered (cluster mode), unless it lapsed longer ago than the
    /// grace; asked once per contact and packet time.
    fn remote_contact(&self, key: Fp, now: Micros) -> Option<SharedContact> {
        let sh = self.shared.as_ref()?;
        let mut memo = self.remote_memo.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, t, c)) = &*memo
            && *k == key
            && *t == now
        {
            return c.clone();
        }
        let c = sh.contact(key).filter(|c| now - c.expires_at <= CONTACT_GRACE);
        *memo = Some((key, now, c.clone()));
        c
    }

    /// The address of record whose registered contact this is, if any.
    pub fn aor_for_contact(&self, contact: Fp, now: Micros) -> Option<std::borrow::Cow<'_, str>> {
        if let Some(c) = self.contact(contact, now) {
            return self.aors.get(&c.aor).map(|a| std::borrow::Cow::Borrowed(&*a.aor));
        }
        self.remote_contact(contact, now).map(|c| std::borrow::Cow::Owned(c.aor))
    }

    /// The app behind a contact, when that contact is registered for `aor`.
    pub fn origin_for_contact(&self, aor: &str, contact: Fp, now: Micros) -> Origin {
        let aor_fp = self.fp.of(aor);
        let Some(c) = self.contact(contact, now).filter(|c| c.aor == aor_fp) else {
            return self.remote_origin(aor, aor_fp, contact, now);
        };
        let Some(dev) = c.device else { return Origin::default() };
        let app =
            self.aors.get(&aor_fp).and_then(|s| s.apps.iter().find(|a| !a.stale(now) && self.fp.of(&a.device) == dev));
        match app {
            Some(a) => Origin {
                device: Some(String::from(&*a.device)),
                session_start: Some(a.boot_start),
                app_instance: a.app_instance.as_deref().map(str::to_string),
            },
            None => Origin::default(),
        }
    }

    /// The app behind a contact another sensor registered (cluster mode).
    fn remote_origin(&self, aor: &str, aor_fp: Fp, contact: Fp, now: Micros) -> Origin {
        let (Some(sh), Some(c)) = (&self.shared, self.remote_contact(contact, now)) else {
            return Origin::default();
        };
        let (true, Some(dev)) = (c.aor == aor, c.device) else { return Origin::default() };
        match sh.device(device_key(aor_fp, dev)) {
            Some(d) if d.expires_at != REMOVED || now - d.last_seen <= DEVICE_MEMORY => {
                Origin { device: Some(d.device), session_start: Some(d.boot_start), app_instance: d.app_instance }
            }
            _ => Origin::default(),
        }
    }

    /// Whether `aor` has an active binding registered from `src` (a device the server trusts by
    /// address, or an authenticated one, sends its INVITEs from where it registered).
    pub fn registered_from(&self, aor: &str, src: SocketAddr, now: Micros) -> bool {
        self.aors
            .get(&self.fp.of(aor))
            .is_some_and(|s| s.apps.iter().any(|a| a.active(now) && a.reg_from == self.fp.of_addr(&src)))
    }

    fn pending_key(&self, call_id: &str, cseq: u32) -> Fp {
        self.fp.of(call_id) ^ u64::from(cseq).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    }

    /// A REGISTER from client `src`. `push_proxy`: its User-Agent is a push proxy's.
    pub fn request(&mut self, ts: Micros, src: SocketAddr, msg: &Message<'_>, push_proxy: bool) {
        self.stats.registers += 1;
        let Some(to) = msg.to.parsed_uri() else {
            return;
        };
        let max = self.limits.max_contacts_per_register;
        let contacts = usable_contacts(msg, &mut self.stats);
        if contacts.len() > max {
            self.stats.contacts_dropped += (contacts.len() - max) as u64;
        }
        // the first contact's key names the device when no contact has an instance id
        let mut first_uri = None;
        let mut instance = None;
        let mut app_instance = None;
        let mut bindings = Vec::with_capacity(contacts.len().min(max));
        for c in contacts.iter().take(max) {
            let Some(uri) = c.addr.parsed_uri() else { continue };
            first_uri.get_or_insert(uri);
            if instance.is_none() {
                instance = c.instance();
            }
            if app_instance.is_none() {
                app_instance = self.identity_names.iter().find_map(|n| {
                    crate::sip::parse::param(c.addr.params, n)
                        .or_else(|| msg.header(n))
                        .map(|v| v.trim_matches(|ch| ch == '"' || ch == '<' || ch == '>').into())
                });
            }
            bindings.push((self.fp.of_contact(&uri), c.expires()));
        }
        let key = self.pending_key(msg.call_id, msg.cseq);
        let device: Box<str> = match instance {
            Some(i) => i.into(),
            None => first_uri.map(|u| u.contact_key()).unwrap_or_default().into(),
        };
        let p = PendingRegister {
            ts,
            aor: to.aor().into(),
            src,
            device,
            has_instance: instance.is_some(),
            app_instance,
            bindings,
            header_expires: msg.expires,
            star: msg.contact_star,
            push_proxy,
        };
        let cost = p.cost();
        if self.remove_pending(key).is_none() {
            self.pending_order.push_back((ts, key));
            // answered REGISTERs leave their place in the queue behind: drop those now and then,
            // so that the queue follows the table, not the REGISTER rate
            if self.pending_order.len() > 2 * self.pending.len() + 1024 {
                let pending = &self.pending;
                self.pending_order.retain(|(t, k)| pending.get(k).is_some_and(|p| p.ts == *t));
                self.pending_order.shrink_to(2 * self.pending_order.len() + 1024);
            }
        }
        while self.pending.len() >= self.limits.max_pending || self.pending_bytes + cost > self.limits.max_pending_bytes
        {
            let Some((t, old)) = self.pending_order.pop_front() else {
                break;
            };
            if old != key && self.pending.get(&old).is_some_and(|p| p.ts == t) {
                self.remove_pending(old);
                if self.stats.pending_evicted == 0 {
                    tracing::warn!(
                        max = self.limits.max_pending,
                        max_bytes = self.limits.max_pending_bytes,
                        "table of REGISTERs awaiting a response full: forgetting the oldest (limits.max_pending_transactions)"
                    );
                }
                self.stats.pending_evicted += 1;
            } else if old == key {
                self.pending_order.push_back((t, old));
                break;
            }
        }
        self.pending_bytes += cost;
        self.pending.insert(key, p);
        self.dirty.pending.insert(key);
    }

    /// A final response to REGISTER sent to client `dst`; appends the events it decides.
    pub fn response(&mut self, ts: Micros, dst: SocketAddr, msg: &Message<'_>, out: &mut Vec<Event>) {
        let Some(code) = msg.status() else { return };
        if code < 200 {
            return;
        }
        let key = self.pending_key(msg.call_id, msg.cseq);
        let pending = match self.remove_pending(key) {
            Some(p) => {
                if ts - p.ts > TRANSACTION_TIMEOUT {
                    // a response this late answers nothing the client still waits for
                    self.stats.pending_expired += 1;
                    None
                } else {
                    Some(p)
                }
            }
            None => None,
        };
        if code >= 300 {
            if matches!(code, 401 | 407) {
                self.stats.challenged += 1;
            } else {
                self.stats.rejected += 1;
            }
            return;
        }
        // the 2xx lists every current binding of the address of record: learn them all
        let resp_aor = msg.to.parsed_uri().map(|u| u.aor());
        let max = self.limits.max_contacts_per_register;
        let contacts = usable_contacts(msg, &mut self.stats);
        if contacts.len() > max {
            self.stats.contacts_dropped += (contacts.len() - max) as u64;
        }
        let mut granted: Vec<(Fp, u32)> = Vec::new();
        for c in contacts.iter().take(max) {
            let Some(uri) = c.addr.parsed_uri() else { continue };
            let k = self.fp.of_contact(&uri);
            let e = c.expires().or(msg.expires).unwrap_or(DEFAULT_EXPIRES);
            if c.expires().is_some() {
                granted.push((k, e));
            }
            if let Some(aor) = &resp_aor
                && e != 0
            {
                let aor_fp = self.fp.of(aor);
                self.learn_contact(ts, k, aor_fp, None, ts + i64::from(e) * 1_000_000);
            }
        }
        let p = match pending {
            Some(p) => p,
            None => {
                // the request was not captured: follow a 2xx that names exactly one binding
                self.stats.unmatched_responses += 1;
                let (Some(aor), [c]) = (resp_aor, contacts.as_slice()) else {
                    return;
                };
                let Some(uri) = c.addr.parsed_uri() else {
                    return;
                };
                let key = uri.contact_key();
                let k = self.fp.of(&key);
                PendingRegister {
                    ts,
                    aor: aor.into(),
                    src: dst,
                    device: c.instance().map(Into::into).unwrap_or_else(|| key.into()),
                    has_instance: c.instance().is_some(),
                    app_instance: None,
                    bindings: vec![(k, c.expires())],
                    header_expires: msg.expires,
                    star: false,
                    push_proxy: false,
                }
            }
        };
        self.stats.accepted += 1;
        if p.push_proxy {
            self.stats.push_proxy += 1;
        }
        self.accepted(ts, msg.call_id, p, &granted, out);
    }

    /// A REGISTER the server accepted.
    fn accepted(&mut self, ts: Micros, call_id: &str, p: PendingRegister, granted: &[(Fp, u32)], out: &mut Vec<Event>) {
        let aor_fp = self.fp.of(&p.aor);
        if p.star {
            if let Some(s) = self.aors.get_mut(&aor_fp) {
                for a in &mut s.apps {
                    a.expires_at = REMOVED;
                    a.last_seen = ts;
                }
                let devices: Vec<Fp> = s.apps.iter().map(|a| self.fp.of(&a.device)).collect();
                for d in devices {
                    self.shared_touch(aor_fp, d, ts, |r| r.expires_at = REMOVED);
                }
                self.touched(aor_fp);
            }
            let gone: Vec<Fp> = self.contacts.iter().filter(|(_, c)| c.aor == aor_fp).map(|(k, _)| *k).collect();
            for k in gone {
                self.remove_contact(k);
            }
            return;
        }
        let expires_of = |(k, e): &(Fp, Option<u32>)| {
            granted.iter().find(|(g, _)| g == k).map(|(_, x)| *x).or(*e).or(p.header_expires).unwrap_or(DEFAULT_EXPIRES)
        };
        let bindings: Vec<(Fp, u32)> = p.bindings.iter().map(|b| (b.0, expires_of(b))).collect();
        for (k, _) in bindings.iter().filter(|(_, e)| *e == 0) {
            self.remove_contact(*k);
            if let Some(sh) = &self.shared {
                sh.put_contact(
                    *k,
                    &SharedContact { aor: String::from(&*p.aor), device: None, expires_at: REMOVED / 2 },
                );
            }
        }
        let kept: Vec<(Fp, u32)> = bindings.iter().copied().filter(|(_, e)| *e > 0).collect();
        let cid = self.fp.of(call_id);
        let found = self.find_app(aor_fp, cid, &p, ts);
        if kept.is_empty() {
            // de-registration: the app's binding ends once none of its contacts is left
            if let Some(i) = found {
                let s = self.aors.get_mut(&aor_fp).expect("found");
                let a = &mut s.apps[i];
                a.contacts = a.contacts.iter().copied().filter(|c| !bindings.iter().any(|(k, _)| k == c)).collect();
                let removed = a.contacts.is_empty() || p.bindings.is_empty();
                if removed {
                    a.expires_at = REMOVED;
                }
                a.last_seen = ts;
                let dev = self.fp.of(&a.device);
                if removed {
                    self.shared_touch(aor_fp, dev, ts, |r| r.expires_at = REMOVED);
                }
                self.touched(aor_fp);
            }
            return;
        }
        let device_fp = self.fp.of(&p.device);
        for (k, e) in &kept {
            let until = ts + i64::from(*e) * 1_000_000;
            self.learn_contact(ts, *k, aor_fp, Some(device_fp), until);
            if let Some(sh) = &self.shared {
                sh.put_contact(
                    *k,
                    &SharedContact { aor: String::from(&*p.aor), device: Some(device_fp), expires_at: until },
                );
            }
        }
        let expires_at = ts + i64::from(kept.iter().map(|(_, e)| *e).max().unwrap_or(0)) * 1_000_000;
        if p.push_proxy {
            // the proxy keeps the address of record reachable while its apps are in the background
            if let Some(s) = self.aors.get_mut(&aor_fp) {
                for a in &mut s.apps {
                    a.push_kept = true;
                }
                if let Some(i) = found {
                    let a = &mut s.apps[i];
                    a.expires_at = a.expires_at.max(expires_at);
                    a.last_seen = ts;
                }
                let devices: Vec<Fp> = s.apps.iter().map(|a| self.fp.of(&a.device)).collect();
                for d in devices {
                    self.shared_touch(aor_fp, d, ts, |r| {
                        r.push_kept = true;
                        r.expires_at = r.expires_at.max(expires_at);
                    });
                }
                self.touched(aor_fp);
            }
            return;
        }
        // the app's own REGISTER
        let prev = found.and_then(|i| self.aors.get(&aor_fp).map(|s| &s.apps[i]));
        let local = prev.map(|a| Prev {
            boot: a.boot_call_id,
            boot_start: a.boot_start,
            expires_at: a.expires_at,
            push_kept: a.push_kept,
        });
        let device: Box<str> = match prev {
            Some(a) if !p.has_instance => a.device.clone(),
            _ => p.device.clone(),
        };
        let app_instance = p.app_instance.clone().or_else(|| prev.and_then(|a| a.app_instance.clone()));
        let has_instance = p.has_instance || prev.is_some_and(|a| a.has_instance);
        let mut contacts: Vec<Fp> = prev.map(|a| a.contacts.to_vec()).unwrap_or_default();
        contacts.retain(|c| !bindings.iter().any(|(k, e)| k == c && *e == 0));
        for (k, _) in &kept {
            if !contacts.contains(k) {
                contacts.push(*k);
            }
        }
        let excess = contacts.len().saturating_sub(self.limits.max_contacts_per_register);
        contacts.drain(..excess);
        // the binding lasts as long as its longest-lived contact
        let expires_at = contacts
            .iter()
            .filter_map(|c| self.contacts.get(c).filter(|e| e.aor == aor_fp).map(|e| e.expires_at))
            .fold(expires_at, Micros::max);
        let Decision { app_start, login, boot_start } = match &self.shared {
            None => decide(local, cid, ts),
            Some(sh) => {
                let key = device_key(aor_fp, self.fp.of(&device));
                let local_push = local.is_some_and(|l| l.push_kept);
                let mut decided = None;
                let r = sh.update_device(key, local.is_none(), &mut |cur| {
                    if let Some(c) = cur
                        && c.last_seen >= ts
                    {
                        // another sensor has decided this REGISTER (or gone past it)
                        let boot_start = if c.boot == cid { c.boot_start } else { ts };
                        decided = Some((false, Decision { app_start: false, login: false, boot_start }));
                        return None;
                    }
                    let known = cur.filter(|c| !shared_stale(c, ts)).map(|c| Prev {
                        boot: c.boot,
                        boot_start: c.boot_start,
                        expires_at: c.expires_at,
                        push_kept: c.push_kept || local_push,
                    });
                    let d = decide(known, cid, ts);
                    decided = Some((true, d));
                    Some(SharedDevice {
                        device: String::from(&*device),
                        boot: cid,
                        boot_start: d.boot_start,
                        expires_at,
                        last_seen: ts,
                        app_instance: app_instance.as_deref().map(str::to_string).or_else(|| cur?.app_instance.clone()),
                        push_kept: false,
                    })
                });
                match (r, decided) {
                    (Ok(()), Some((true, d))) => {
                        self.stats.shared_decisions += 1;
                        d
                    }
                    (Ok(()), Some((false, d))) => {
                        self.stats.shared_late += 1;
                        d
                    }
                    _ => {
                        self.stats.shared_local += 1;
                        decide(local, cid, ts)
                    }
                }
            }
        };
        let origin = Origin {
            device: Some(String::from(&*device)),
            session_start: Some(boot_start),
            app_instance: app_instance.as_deref().map(str::to_string),
        };
        // an address of record with apps in memory is known; otherwise ask
        if !self.aors.contains_key(&aor_fp) && self.known.sign_up(&p.aor, ts) {
            out.push(reg_event(ts, Kind::AccountCreated, &p.aor, &device, call_id, &origin));
        }
        if app_start {
            out.push(reg_event(ts, Kind::AppStarted, &p.aor, &device, call_id, &origin));
        }
        if login {
            out.push(reg_event(ts, Kind::AccountRegistered, &p.aor, &device, call_id, &origin));
        }
        let app = App {
            device,
            has_instance,
            boot_call_id: cid,
            boot_start,
            app_instance,
            contacts: contacts.into_boxed_slice(),
            expires_at,
            last_seen: ts,
            reg_from: self.fp.of_addr(&p.src),
            push_kept: false,
        };
        match found {
            Some(i) => self.aors.get_mut(&aor_fp).expect("found").apps[i] = app,
            None => {
                if self.apps >= self.limits.max_devices {
                    self.evict_apps(ts);
                }
                self.apps += 1;
                let apps = &mut self
                    .aors
                    .entry(aor_fp)
                    .or_insert_with(|| AorState { aor: p.aor.clone(), apps: Vec::new(), size: 0 })
                    .apps;
                // one app per address is the rule: no spare room (a Vec would reserve four)
                apps.reserve_exact(1);
                apps.push(app);
            }
        }
        self.touched(aor_fp);
        while self.bytes > self.limits.max_bytes && self.apps > 1 {
            if !self.bytes_logged {
                self.bytes_logged = true;
                tracing::warn!(
                    max_bytes = self.limits.max_bytes,
                    "registration table at its byte bound: evicting devices (limits.max_registration_bytes)"
                );
            }
            self.evict_apps(ts);
        }
    }

    /// Cluster mode: changes a device's shared record (a removal, a push proxy's refresh), unless
    /// another sensor has gone past this packet.
    fn shared_touch(&self, aor: Fp, device: Fp, ts: Micros, change: impl Fn(&mut SharedDevice)) {
        let Some(sh) = &self.shared else { return };
        let _ = sh.update_device(device_key(aor, device), false, &mut |cur| {
            let mut r = cur.filter(|c| c.last_seen <= ts)?.clone();
            change(&mut r);
            r.last_seen = ts;
            Some(r)
        });
    }

    /// The app a REGISTER belongs to: same boot cycle (Call-ID), else same `+sip.instance`, else
    /// a contact it registered before (an app without an instance id, rebooted).
    fn find_app(&self, aor: Fp, call_id: Fp, p: &PendingRegister, now: Micros) -> Option<usize> {
        let apps = &self.aors.get(&aor)?.apps;
        let live = |a: &App| !a.stale(now);
        if let Some(i) = apps.iter().position(|a| live(a) && a.boot_call_id == call_id) {
            return Some(i);
        }
        if p.has_instance {
            return apps.iter().position(|a| live(a) && a.has_instance && a.device == p.device);
        }
        apps.iter().position(|a| {
            live(a) && !a.has_instance && a.contacts.iter().any(|c| p.bindings.iter().any(|(k, _)| k == c))
        })
    }

    /// Makes room for one app: forgets a tenth of them at once (so a full table costs O(1) per
    /// insert, amortised), lapsed and removed bindings first, then the least recently seen.
    fn evict_apps(&mut self, now: Micros) {
        let n = (self.apps / 10).max(1);
        let fp = self.fp;
        let mut all: Vec<((bool, Micros), Fp, Fp)> = self
            .aors
            .iter()
            .flat_map(|(k, s)| s.apps.iter().map(move |a| ((a.active(now), a.last_seen), *k, fp.of(&a.device))))
            .collect();
        let n = n.min(all.len());
        if n == 0 {
            return;
        }
        all.select_nth_unstable_by_key(n - 1, |(rank, _, _)| *rank);
        for ((active, _), aor, dev) in all.into_iter().take(n) {
            let Some(s) = self.aors.get_mut(&aor) else { continue };
            let before = s.apps.len();
            s.apps.retain(|a| fp.of(&a.device) != dev);
            let removed = before - s.apps.len();
            self.apps -= removed;
            self.stats.devices_evicted += removed as u64;
            if active {
                if self.stats.devices_evicted_active == 0 {
                    tracing::warn!(
                        max_devices = self.limits.max_devices,
                        "registration table full: evicting registered devices (their next refresh will look like an app start); raise limits.max_devices"
                    );
                }
                self.stats.devices_evicted_active += removed as u64;
            }
            if s.apps.is_empty() {
                let gone = self.aors.remove(&aor).expect("present");
                self.bytes -= gone.size;
                self.dirty.aors.insert(aor);
            } else {
                self.touched(aor);
            }
        }
    }

    fn learn_contact(&mut self, ts: Micros, contact: Fp, aor: Fp, device: Option<Fp>, expires_at: Micros) {
        if !self.contacts.contains_key(&contact) && self.contacts.len() >= self.limits.max_devices {
            let n = (self.contacts.len() / 10).max(1);
            let mut all: Vec<((bool, Micros), Fp)> =
                self.contacts.iter().map(|(k, c)| ((c.expires_at >= ts, c.last_seen), *k)).collect();
            all.select_nth_unstable_by_key(n - 1, |(r, _)| *r);
            for (_, k) in all.into_iter().take(n) {
                self.remove_contact(k);
                self.stats.contacts_evicted += 1;
            }
        }
        if !self.contacts.contains_key(&contact) {
            self.bytes += CONTACT_COST;
        }
        let e = self.contacts.entry(contact).or_insert(ContactEntry { aor, device: None, expires_at, last_seen: ts });
        if e.aor != aor {
            *e = ContactEntry { aor, device: None, expires_at, last_seen: ts };
        }
        if device.is_some() {
            e.device = device;
        }
        e.expires_at = expires_at;
        e.last_seen = ts;
        self.dirty.contacts.insert(contact);
    }

    /// Forgets unanswered REGISTER transactions (from the front of their queue: cheap), and
    /// long-lapsed apps and contacts (a sweep of the tables, at most every five minutes of packet
    /// time: the lookups check lapse themselves, the sweep only gives memory back).
    pub fn expire(&mut self, now: Micros) {
        while let Some(&(t, k)) = self.pending_order.front() {
            if now - t <= TRANSACTION_TIMEOUT {
                break;
            }
            self.pending_order.pop_front();
            if self.pending.get(&k).is_some_and(|p| p.ts == t) {
                self.remove_pending(k);
                self.stats.pending_expired += 1;
            }
        }
        if now - self.last_sweep < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let mut changed = Vec::new();
        let (dirty, apps, bytes) = (&mut self.dirty, &mut self.apps, &mut self.bytes);
        self.aors.retain(|k, s| {
            let before = s.apps.len();
            s.apps.retain(|a| !a.stale(now));
            if s.apps.len() != before {
                *apps -= before - s.apps.len();
                changed.push(*k);
            }
            if s.apps.is_empty() {
                *bytes -= s.size;
                dirty.aors.insert(*k);
            }
            !s.apps.is_empty()
        });
        for k in changed {
            self.touched(k);
        }
        let gone: Vec<Fp> =
            self.contacts.iter().filter(|(_, c)| now - c.expires_at > CONTACT_GRACE).map(|(k, _)| *k).collect();
        for k in gone {
            self.remove_contact(k);
        }
    }

    /// The records changed since the last call (for the state store).
    pub fn take_dirty(&mut self) -> RegKeys {
        RegKeys {
            aors: self.dirty.aors.take(),
            contacts: self.dirty.contacts.take(),
            pending: self.dirty.pending.take(),
        }
    }

    /// Whether changes are tracked for the state store (off where nothing is saved).
    pub fn set_tracking(&mut self, on: bool) {
        self.dirty.aors.set_tracking(on);
        self.dirty.contacts.set_tracking(on);
        self.dirty.pending.set_tracking(on);
    }
    pub fn aor_record(&self, k: Fp) -> Option<&AorState> {
        self.aors.get(&k)
    }
    pub fn contact_record(&self, k: Fp) -> Option<&ContactEntry> {
        self.contacts.get(&k)
    }
    pub fn pending_record(&self, k: Fp) -> Option<&PendingRegister> {
        self.pending.get(&k)
    }
    pub fn all_keys(&self) -> RegKeys {
        RegKeys {
            aors: self.aors.keys().copied().collect(),
            contacts: self.contacts.keys().copied().collect(),
            pending: self.pending.keys().copied().collect(),
        }
    }

    /// Takes records loaded from the state store (at start, before any message).
    pub fn restore_aor(&mut self, k: Fp, mut s: AorState) {
        self.apps += s.apps.len();
        s.size = s.cost();
        self.bytes += s.size;
        if let Some(old) = self.aors.insert(k, s) {
            self.apps -= old.apps.len();
            self.bytes -= old.size;
        }
    }
    pub fn restore_contact(&mut self, k: Fp, c: ContactEntry) {
        if self.contacts.insert(k, c).is_none() {
            self.bytes += CONTACT_COST;
        }
    }
    pub fn restore_pending(&mut self, k: Fp, p: PendingRegister) {
        let t = p.ts;
        self.pending_bytes += p.cost();
        if let Some(old) = self.pending.insert(k, p) {
            self.pending_bytes -= old.cost();
        } else {
            // kept in time order by the caller's sort in `finish_restore`
            self.pending_order.push_back((t, k));
        }
    }
    pub fn finish_restore(&mut self) {
        self.pending_order.make_contiguous().sort_unstable();
    }
}

/// A shared record forgotten as a local app is: lapsed for longer than the device memory.
fn shared_stale(d: &SharedDevice, now: Micros) -> bool {
    if d.expires_at == REMOVED { now - d.last_seen > DEVICE_MEMORY } else { now - d.expires_at > DEVICE_MEMORY }
}

/// A message's Contacts that siptap follows: those whose URI and parameters are of a sane
/// length (longer ones are counted as dropped: they would only cost memory).
fn usable_contacts<'a>(msg: &Message<'a>, stats: &mut RegistrationStats) -> Vec<crate::sip::parse::Contact<'a>> {
    let mut v = msg.contacts();
    let before = v.len();
    v.retain(|c| c.addr.uri.len() <= super::tracker::MAX_FIELD && c.addr.params.len() <= 4 * super::tracker::MAX_FIELD);
    stats.contacts_dropped += (before - v.len()) as u64;
    stats.contacts_dropped += msg.contact_values.extra_lines as u64;
    v
}

fn reg_event(ts: Micros, kind: Kind, aor: &str, device: &str, call_id: &str, origin: &Origin) -> Event {
    Event {
        ts,
        kind,
        user: aor.to_string(),
        origin: origin.clone(),
        params: Params {
            device: Some(device.to_string()),
            reg_call_id: Some(call_id.to_string()),
            ..Params::default()
        },
    }
}
