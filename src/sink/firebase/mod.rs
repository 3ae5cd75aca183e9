//! Delivery to Firebase (the GA4 Measurement Protocol for app streams): ids and params applied
//! when an event is queued (`identity`, `mp`), a durable queue (`outbox`), and the HTTP shell that
//! empties it (`sender`).
pub mod consumer;
pub mod identity;
pub mod mp;
pub mod outbox;
pub mod sender;

use crate::config::Config;
use crate::event::Kind;
use crate::pipeline::Routed;
use anyhow::Context;
use identity::Identity;
use mp::QueuedEvent;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// A secret (API secret, identity key): its Debug and Display never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Secret(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// How a tenant's events show in GA4's session and engagement reports (see the README,
/// "Sessions and engagement").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GaSemantics {
    pub session: SessionMode,
    /// A session ends after this long without an event (GA4's default is 30 minutes).
    pub session_timeout_micros: i64,
    pub engagement: EngagementMode,
    /// The most engagement one event reports (a call's talk time), in milliseconds.
    pub max_engagement_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    /// A session starts when the app starts or comes to the foreground (app_start, login), or
    /// with the first event after `session_timeout_secs` of inactivity: GA4's own definition.
    Activity,
    /// A session is the registration boot cycle (days long for an app that stays registered).
    BootCycle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EngagementMode {
    /// A call's end reports its talk time as engagement (the app in the foreground, in use);
    /// every other event 1 ms, so that the user counts as active.
    TalkTime,
    /// Every event reports 1 ms: active users, no engagement time.
    None,
}

impl Default for GaSemantics {
    fn default() -> Self {
        GaSemantics {
            session: SessionMode::Activity,
            session_timeout_micros: 1800 * 1_000_000,
            engagement: EngagementMode::TalkTime,
            max_engagement_ms: None,
        }
    }
}

/// Where and how one tenant's events are sent.
#[derive(Debug, Clone)]
pub struct Target {
    pub tenant: String,
    pub base_url: String,
    pub app_id: String,
    pub api_secret: Secret,
}

/// Turns routed events into queued Measurement Protocol events for the tenants that deliver.
pub struct Delivery {
    tenants: HashMap<String, (Identity, Target, GaSemantics)>,
    /// Each app instance's current session: (session id, last event), as last seen here; read
    /// from the outbox's copy on a miss, written back with the next push.
    sessions: HashMap<String, (i64, i64)>,
    dirty_sessions: HashMap<String, (i64, i64)>,
}

/// Sessions kept in memory (the rest are read from the outbox when needed).
const MAX_SESSIONS: usize = 100_000;

impl Delivery {
    /// `install_key`: the installation's identity key (state directory), used by tenants that
    /// set no identity secret of their own.
    pub fn new(cfg: &Config, install_key: &[u8]) -> Delivery {
        let mut tenants = HashMap::new();
        for t in &cfg.tenants {
            let Some(fb) = t.firebase.as_ref().filter(|f| f.enabled) else { continue };
            let key = fb
                .identity_secret
                .as_ref()
                .map(|s| s.expose().as_bytes().to_vec())
                .unwrap_or_else(|| install_key.to_vec());
            let identity = Identity::new(&t.id, key, fb.user_id, fb.app_instance_map.clone());
            let target = Target {
                tenant: t.id.clone(),
                base_url: fb.base_url.clone(),
                app_id: fb.app_id.clone(),
                api_secret: fb.api_secret.clone(),
            };
            tenants.insert(t.id.clone(), (identity, target, fb.semantics));
        }
        Delivery { tenants, sessions: HashMap::new(), dirty_sessions: HashMap::new() }
    }

    /// The sessions changed since the last call, to push with the events.
    pub fn take_sessions(&mut self) -> Vec<(String, i64, i64)> {
        self.dirty_sessions.drain().map(|(k, (a, b))| (k, a, b)).collect()
    }

    /// The session of an app instance's event at `ts` (GA4: a new one after the timeout, or when
    /// the app starts or comes to the foreground).
    fn session(&mut self, app: &str, ts: i64, kind: Kind, sem: &GaSemantics, outbox: Option<&outbox::Outbox>) -> i64 {
        let prev = match self.sessions.get(app) {
            Some(p) => Some(*p),
            None => outbox.and_then(|o| o.session(app).ok().flatten()),
        };
        let foreground = matches!(kind, Kind::AppStarted | Kind::AccountRegistered | Kind::AccountCreated);
        let (sid, last) = match prev {
            Some((sid, last)) if !(ts - last > sem.session_timeout_micros || foreground && ts > last) => {
                (sid, last.max(ts))
            }
            Some((sid, last)) if foreground && ts == last => (sid, last),
            _ => (ts.div_euclid(1_000_000), ts),
        };
        if self.sessions.len() >= MAX_SESSIONS {
            self.sessions.clear();
        }
        self.sessions.insert(app.to_string(), (sid, last));
        self.dirty_sessions.insert(app.to_string(), (sid, last));
        sid
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut v: Vec<Target> = self.tenants.values().map(|(_, t, _)| t.clone()).collect();
        v.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Whether a tenant delivers to Firebase (else its events go to the JSON-lines sink).
    pub fn delivers(&self, tenant: &str) -> bool {
        self.tenants.contains_key(tenant)
    }

    /// The queued form of an event, for a tenant that delivers. `outbox`: where sessions are
    /// kept between runs.
    pub fn queue(&mut self, r: &Routed, outbox: Option<&outbox::Outbox>) -> Option<QueuedEvent> {
        let (id, _, sem) = self.tenants.get(&*r.tenant)?;
        let sem = *sem;
        let e = &r.event;
        let p = &e.params;
        let mut params = Map::new();
        // the Call-ID often names a host; a keyed hash still joins a call's events
        if let Some(c) = &p.call_id {
            params.insert("call_id".into(), Value::String(id.pseudonym(c)));
        }
        if let Some(d) = p.direction {
            params.insert("direction".into(), serde_json::to_value(d).expect("enum"));
        }
        if let Some(a) = p.answered {
            params.insert("answered".into(), Value::from(u8::from(a)));
        }
        if let Some(s) = p.status {
            params.insert("status".into(), Value::from(s));
        }
        if let Some(x) = p.reason {
            params.insert("reason".into(), serde_json::to_value(x).expect("enum"));
        }
        if let Some(x) = p.ended_by {
            params.insert("ended_by".into(), serde_json::to_value(x).expect("enum"));
        }
        if let Some(d) = p.duration_sec {
            params.insert("duration_sec".into(), Value::from(d));
        }
        let app_instance_id = id.app_instance_id(e);
        let user_id = id.user_id(&e.user);
        let session = match sem.session {
            SessionMode::BootCycle => e.origin.session_start.unwrap_or(e.ts).div_euclid(1_000_000),
            SessionMode::Activity => self.session(&app_instance_id, e.ts, e.kind, &sem, outbox),
        };
        params.insert("session_id".into(), Value::from(session));
        // a call's engagement is its talk time; every other event counts as a moment of use
        let engagement = match (sem.engagement, e.kind, p.duration_sec) {
            (EngagementMode::TalkTime, Kind::CallEnded, Some(d)) => {
                ((d * 1000.0) as u64).clamp(1, sem.max_engagement_ms.unwrap_or(u64::MAX).max(1))
            }
            _ => 1,
        };
        params.insert("engagement_time_msec".into(), Value::from(engagement));
        Some(QueuedEvent {
            id: e.id(&r.tenant),
            kind: e.kind.canonical().to_string(),
            tenant: r.tenant.to_string(),
            app_instance_id,
            user_id,
            timestamp_micros: e.ts,
            name: r.name.to_string(),
            params,
        })
    }
}

/// The installation's identity key (keyed hashes of users and devices), made on first use.
pub fn identity_key(dir: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    crate::store::private_dir(dir)?;
    let p = dir.join("identity.key");
    if let Ok(k) = std::fs::read(&p) {
        if k.len() >= 16 {
            return Ok(k);
        }
        anyhow::bail!("{}: identity key too short", p.display());
    }
    let k = random_bytes(32)?;
    crate::store::write_private(&p, &k)?;
    Ok(k)
}

pub fn random_bytes(n: usize) -> anyhow::Result<Vec<u8>> {
    let mut b = vec![0u8; n];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(anyhow::Error::from)
        .context("cannot read /dev/urandom")?;
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, Origin, Params};
    use std::sync::Arc;

    fn cfg(extra: &str) -> Config {
        let secret = std::env::temp_dir().join(format!("siptap-unit-secret-{}", random_bytes(8).unwrap()[0]));
        std::fs::write(&secret, "s").unwrap();
        Config::parse(
            &format!(
                "sip_servers = [\"127.0.0.10\"]\n[tenants.lab]\ndomains = [\"lab.example\"]\n[tenants.lab.firebase]\n\
                 app_id = \"1:1:android:1\"\napi_secret_file = \"{}\"\n{extra}",
                secret.display()
            ),
            std::path::Path::new("/x/siptap.toml"),
        )
        .unwrap()
    }

    fn routed(kind: Kind, secs: i64, duration: Option<f64>) -> Routed {
        let event = Event {
            ts: secs * 1_000_000,
            kind,
            user: "alice@lab.example".into(),
            params: Params { duration_sec: duration, ..Params::default() },
            origin: Origin { device: Some("d".into()), session_start: Some(5_000_000), app_instance: None },
        };
        Routed { tenant: Arc::from("lab"), name: Arc::from(kind.default_name()), event }
    }

    fn session(q: &QueuedEvent) -> i64 {
        q.params["session_id"].as_i64().unwrap()
    }

    #[test]
    fn a_session_is_an_app_in_use_with_gaps_under_thirty_minutes() {
        let c = cfg("");
        let mut d = Delivery::new(&c, b"0123456789abcdef");
        let start = d.queue(&routed(Kind::AppStarted, 1000, None), None).unwrap();
        let call = d.queue(&routed(Kind::OutgoingCall, 1600, None), None).unwrap();
        let end = d.queue(&routed(Kind::CallEnded, 1700, Some(100.0)), None).unwrap();
        assert_eq!((session(&start), session(&call), session(&end)), (1000, 1000, 1000));
        // 31 minutes without an event: a new session
        let later = d.queue(&routed(Kind::OutgoingCall, 1700 + 31 * 60, None), None).unwrap();
        assert_eq!(session(&later), 1700 + 31 * 60);
        // the app comes back to the foreground (a login): a new session at once
        let login = d.queue(&routed(Kind::AccountRegistered, 1700 + 32 * 60, None), None).unwrap();
        assert_eq!(session(&login), 1700 + 32 * 60);
        // the sessions changed are handed over for the outbox to keep
        assert!(!d.take_sessions().is_empty());
        // a call's end reports its talk time as engagement
        assert_eq!(end.params["engagement_time_msec"], 100_000);
        assert_eq!(call.params["engagement_time_msec"], 1);
    }

    #[test]
    fn boot_cycle_sessions_no_engagement_and_a_cap_are_per_tenant_choices() {
        let c = cfg("session = \"boot_cycle\"\nengagement = \"none\"\n");
        let mut d = Delivery::new(&c, b"0123456789abcdef");
        let end = d.queue(&routed(Kind::CallEnded, 90_000, Some(3600.0)), None).unwrap();
        assert_eq!(session(&end), 5, "the boot cycle's start");
        assert_eq!(end.params["engagement_time_msec"], 1);
        let c = cfg("max_engagement_secs = 600\nsession_timeout_secs = 60\n");
        let mut d = Delivery::new(&c, b"0123456789abcdef");
        let a = d.queue(&routed(Kind::CallEnded, 100, Some(3600.0)), None).unwrap();
        assert_eq!(a.params["engagement_time_msec"], 600_000);
        let b = d.queue(&routed(Kind::OutgoingCall, 170, None), None).unwrap();
        assert_eq!(session(&b), 170, "a 61 s gap is past this tenant's 60 s timeout");
    }
}
