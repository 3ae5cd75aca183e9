//! The derived events: what a softphone would have reported about itself.
use crate::capture::Micros;
use serde::Serialize;

/// The canonical kinds, independent of any tenant's naming.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    AccountCreated,
    AppStarted,
    AccountRegistered,
    OutgoingCall,
    IncomingCall,
    CallEnded,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::AccountCreated,
        Kind::AccountRegistered,
        Kind::AppStarted,
        Kind::OutgoingCall,
        Kind::IncomingCall,
        Kind::CallEnded,
    ];

    pub fn canonical(self) -> &'static str {
        match self {
            Kind::AccountCreated => "account_created",
            Kind::AccountRegistered => "account_registered",
            Kind::AppStarted => "app_started",
            Kind::OutgoingCall => "outgoing_call",
            Kind::IncomingCall => "incoming_call",
            Kind::CallEnded => "call_ended",
        }
    }

    /// The Cloud Softphone event-tracking names, which tenants may rename.
    pub fn default_name(self) -> &'static str {
        match self {
            Kind::AccountCreated => "signup",
            Kind::AccountRegistered => "login",
            Kind::AppStarted => "app_start",
            Kind::OutgoingCall => "callout",
            Kind::IncomingCall => "callin",
            Kind::CallEnded => "callend",
        }
    }

    pub fn from_default_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.default_name() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Out,
    In,
}

/// Why a call leg ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndReason {
    Bye,
    Cancel,
    Rejected,
    Timeout,
}

/// Who ended it, seen from the leg's own user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndedBy {
    User,
    Peer,
    Server,
}

/// Event parameters; absent ones are left out of the JSON.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Params {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub answered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<EndReason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<EndedBy>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_sec: Option<f64>,
    /// Registration events: the device (`+sip.instance`, else the Contact URI).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Registration events: the REGISTER Call-ID, which names the app's boot cycle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reg_call_id: Option<String>,
}

/// One derived event, before a tenant's naming is applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Timestamp of the packet that decided it (or the deadline that passed, for a timeout).
    pub ts: Micros,
    pub kind: Kind,
    /// Address of record `user@domain`.
    pub user: String,
    pub params: Params,
    /// Which app instance it concerns, as far as the signalling shows (for delivery).
    pub origin: Origin,
}

/// The app behind an event: its device, the start of its boot cycle (the session) and an id the
/// app sent itself. Not part of the replay output; the Firebase sink builds its ids from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Origin {
    pub device: Option<String>,
    pub session_start: Option<Micros>,
    pub app_instance: Option<String>,
}

impl Event {
    /// The domain part of the user, for tenant routing.
    pub fn domain(&self) -> &str {
        self.user.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }

    /// A deterministic id (32 hex digits): the same on every process and every sensor that derives
    /// this event from the same SIP messages, so that a replay queued again, or a second sensor
    /// watching the same traffic, is recognised as the same event. A hash (SHA-256, 128 bits) of
    /// the tenant, kind, user, time and what names the leg or registration.
    pub fn id(&self, tenant: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        let p = &self.params;
        for part in [
            tenant,
            self.kind.canonical(),
            &self.user,
            &self.ts.to_string(),
            p.call_id.as_deref().unwrap_or(""),
            match p.direction {
                Some(Direction::In) => "in",
                Some(Direction::Out) => "out",
                None => "",
            },
            p.reg_call_id.as_deref().unwrap_or(""),
            p.device.as_deref().unwrap_or(""),
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        h.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}
