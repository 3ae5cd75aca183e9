//! Who an event is about, in the form GA4 takes, without sending personal data by default.
//!
//! `app_instance_id` (32 hex digits): the id the app sent in its REGISTER (a configured Contact
//! parameter or header) when it is 32 hex digits, else the operator's mapping file
//! (address of record -> id), else a keyed hash of tenant, user and device. The last is stable
//! per device but is not the Firebase SDK's own id, so these events form their own app instance
//! in GA4 and do not join the app's client-side events.
//! `user_id`: an HMAC of the address of record with the tenant's identity key (default), the
//! plain user part (opt-in), or none.
use crate::event::Event;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserIdMode {
    Hashed,
    Plain,
    None,
}

pub struct Identity {
    tenant: String,
    key: Vec<u8>,
    user_id: UserIdMode,
    /// address of record -> app_instance_id, from the operator's mapping file
    mapping: HashMap<String, String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the key
        f.debug_struct("Identity").field("tenant", &self.tenant).field("user_id", &self.user_id).finish()
    }
}

pub fn is_app_instance_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Identity {
    pub fn new(tenant: &str, key: Vec<u8>, user_id: UserIdMode, mapping: HashMap<String, String>) -> Self {
        Identity { tenant: tenant.to_string(), key, user_id, mapping }
    }

    fn mac(&self, parts: &[&str]) -> [u8; 32] {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            m.update(p.as_bytes());
            m.update(&[0]);
        }
        m.finalize().into_bytes().into()
    }

    pub fn app_instance_id(&self, ev: &Event) -> String {
        if let Some(id) = ev.origin.app_instance.as_deref().filter(|i| is_app_instance_id(i)) {
            return id.to_ascii_lowercase();
        }
        if let Some(id) = self.mapping.get(&ev.user) {
            return id.clone();
        }
        let device = ev.origin.device.as_deref().unwrap_or("");
        hex(&self.mac(&["app_instance", &self.tenant, &ev.user, device])[..16])
    }

    /// A keyed 16-hex-digit pseudonym of any value (a Call-ID, say).
    pub fn pseudonym(&self, value: &str) -> String {
        hex(&self.mac(&["value", &self.tenant, value])[..8])
    }

    pub fn user_id(&self, user: &str) -> Option<String> {
        match self.user_id {
            UserIdMode::Hashed => Some(hex(&self.mac(&["user", &self.tenant, user])[..16])),
            UserIdMode::Plain => Some(user.split('@').next().unwrap_or(user).to_string()),
            UserIdMode::None => None,
        }
    }
}

/// Reads an `address-of-record id` mapping (whitespace or `->` separated, `#` comments).
pub fn parse_mapping(text: &str, file: &str) -> Result<HashMap<String, String>, String> {
    let mut m = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let l = line.split('#').next().unwrap_or("").trim();
        if l.is_empty() {
            continue;
        }
        let l = l.replace("->", " ");
        let mut it = l.split_whitespace();
        let (Some(aor), Some(id), None) = (it.next(), it.next(), it.next()) else {
            return Err(format!("{file}:{}: expected `user@domain app_instance_id`", n + 1));
        };
        if !is_app_instance_id(id) {
            return Err(format!("{file}:{}: `{id}` is not an app_instance_id (32 hex digits)", n + 1));
        }
        let aor = aor.trim_start_matches("sip:");
        let aor = match aor.split_once('@') {
            Some((u, d)) => format!("{u}@{}", d.to_ascii_lowercase()),
            None => return Err(format!("{file}:{}: `{aor}` is not an address of record", n + 1)),
        };
        m.insert(aor, id.to_ascii_lowercase());
    }
    Ok(m)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, Origin, Params};

    fn ev(app: Option<&str>, device: &str) -> Event {
        Event {
            ts: 0,
            kind: Kind::OutgoingCall,
            user: "alice@lab.example".into(),
            params: Params::default(),
            origin: Origin { device: Some(device.into()), session_start: None, app_instance: app.map(String::from) },
        }
    }

    #[test]
    fn derived_ids_are_stable_keyed_and_hex() {
        let a = Identity::new("lab", b"k1".to_vec(), UserIdMode::Hashed, HashMap::new());
        let b = Identity::new("lab", b"k2".to_vec(), UserIdMode::Hashed, HashMap::new());
        let id = a.app_instance_id(&ev(None, "d1"));
        assert!(is_app_instance_id(&id));
        assert_eq!(id, a.app_instance_id(&ev(None, "d1")));
        assert_ne!(id, a.app_instance_id(&ev(None, "d2")));
        assert_ne!(id, b.app_instance_id(&ev(None, "d1")));
        let u = a.user_id("alice@lab.example").unwrap();
        assert!(is_app_instance_id(&u) && !u.contains("alice"));
        assert_ne!(u, b.user_id("alice@lab.example").unwrap());
    }

    #[test]
    fn app_sent_id_then_mapping_then_hash() {
        let sent = "0123456789ABCDEF0123456789abcdef";
        let map = parse_mapping("# ids\nalice@LAB.example -> ffffffffffffffffffffffffffffffff\n", "m").unwrap();
        let i = Identity::new("lab", b"k".to_vec(), UserIdMode::Plain, map);
        assert_eq!(i.app_instance_id(&ev(Some(sent), "d")), sent.to_ascii_lowercase());
        assert_eq!(i.app_instance_id(&ev(Some("not-hex"), "d")), "f".repeat(32));
        assert_eq!(i.user_id("alice@lab.example").as_deref(), Some("alice"));
        assert!(parse_mapping("alice@x 123\n", "m").unwrap_err().contains("m:1"));
    }
}
