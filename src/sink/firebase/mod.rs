//! Delivery to Firebase (the GA4 Measurement Protocol for app streams): ids and params applied
//! when an event is queued (`identity`, `mp`), a durable queue (`outbox`), and the HTTP shell that
//! empties it (`sender`).
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
use std::io::Write;

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
    tenants: HashMap<String, (Identity, Target)>,
}

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
            tenants.insert(t.id.clone(), (identity, target));
        }
        Delivery { tenants }
    }

    pub fn targets(&self) -> Vec<Target> {
        let mut v: Vec<Target> = self.tenants.values().map(|(_, t)| t.clone()).collect();
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

    /// The queued form of an event, for a tenant that delivers.
    pub fn queue(&self, r: &Routed) -> Option<QueuedEvent> {
        let (id, _) = self.tenants.get(&*r.tenant)?;
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
        let session = e.origin.session_start.unwrap_or(e.ts) / 1_000_000;
        params.insert("session_id".into(), Value::from(session));
        // a call's engagement is its talk time; every other event counts as a moment of use
        let engagement = match (e.kind, p.duration_sec) {
            (Kind::CallEnded, Some(d)) => ((d * 1000.0) as u64).max(1),
            _ => 1,
        };
        params.insert("engagement_time_msec".into(), Value::from(engagement));
        Some(QueuedEvent {
            tenant: r.tenant.to_string(),
            app_instance_id: id.app_instance_id(e),
            user_id: id.user_id(&e.user),
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
    let tmp = dir.join("identity.key.tmp");
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(&k)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &p)?;
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
