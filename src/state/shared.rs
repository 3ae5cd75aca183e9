//! Registration facts shared by several sensors (cluster mode): each device's boot cycle and
//! binding, and the contact -> address-of-record map. The state machines ask through
//! [`SharedRegistry`], answered synchronously by the shell (the cluster store, which talks to NATS
//! JetStream key-value buckets); nothing here touches a socket. Without a cluster there is no
//! registry and every decision is the local one, exactly as before.
//!
//! A decision that must be made once across sensors (is this REGISTER an `app_start`? a
//! `login`?) is a compare-and-set on the device's record: the registry reads it, the state
//! machine decides from it with [`decide`], and the registry writes the result only if nobody
//! wrote in between (else it reads again and the state machine decides again). Exactly one sensor
//! wins each decision; the others see its result and decide "nothing new".
use super::fingerprint::Fp;
use crate::capture::Micros;
use serde::{Deserialize, Serialize};

/// One device (app) as every sensor knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedDevice {
    pub device: String,
    /// Fingerprint (with the cluster's key) of the REGISTER Call-ID of its boot cycle.
    pub boot: Fp,
    pub boot_start: Micros,
    /// The binding is active until then; `Micros::MIN` once removed.
    pub expires_at: Micros,
    /// Packet time of the last REGISTER that changed it: an older one does not change it again.
    pub last_seen: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_instance: Option<String>,
    /// A push proxy kept the binding alive since the app's own last REGISTER.
    #[serde(default)]
    pub push_kept: bool,
}

/// A registered contact as every sensor knows it: whose it is, which device's, until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SharedContact {
    pub aor: String,
    /// Fingerprint of the device name, when the contact came in the device's own REGISTER.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Fp>,
    pub expires_at: Micros,
}

/// The registry could not be asked (NATS unreachable or too slow): the caller decides locally,
/// and the shell counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

/// Shared registration facts. Keys are fingerprints made with the cluster's key (the same on
/// every sensor).
pub trait SharedRegistry: Send {
    /// Compare-and-set of a device record: `decide` gets the current record and returns the new
    /// one (or `None`: leave it as it is); it may be called again when another sensor wrote
    /// meanwhile. `Err(Unreachable)`: nothing was decided through the registry. `likely_new`:
    /// this sensor has never seen the device (the registry may then try creating its record
    /// before reading it: one round trip instead of two when it is indeed new).
    fn update_device(
        &self,
        key: Fp,
        likely_new: bool,
        decide: &mut dyn FnMut(Option<&SharedDevice>) -> Option<SharedDevice>,
    ) -> Result<(), Unreachable>;
    /// A device record, if the registry has it.
    fn device(&self, key: Fp) -> Option<SharedDevice>;
    /// Records a contact (fire and forget: a lost write costs only a callee name).
    fn put_contact(&self, key: Fp, contact: &SharedContact);
    /// A contact, if the registry has it.
    fn contact(&self, key: Fp) -> Option<SharedContact>;
}

/// The key of a device's record: its address of record and its name.
pub fn device_key(aor: Fp, device: Fp) -> Fp {
    aor ^ device.rotate_left(29).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// What a REGISTER decides, from the device's previous record (local or shared).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub app_start: bool,
    pub login: bool,
    pub boot_start: Micros,
}

/// The facts of the previous record a decision needs.
#[derive(Debug, Clone, Copy)]
pub struct Prev {
    pub boot: Fp,
    pub boot_start: Micros,
    pub expires_at: Micros,
    pub push_kept: bool,
}

/// The rule for an app's own accepted REGISTER: a new boot cycle (Call-ID) is an `app_start`
/// and a `login`; the same one is a `login` only when its binding had lapsed or been removed, or
/// a push proxy kept it alive meanwhile (the app comes back from the background).
pub fn decide(prev: Option<Prev>, boot: Fp, ts: Micros) -> Decision {
    let app_start = prev.is_none_or(|p| p.boot != boot);
    let login = app_start || prev.is_some_and(|p| p.expires_at < ts || p.push_kept);
    let boot_start = match prev {
        Some(p) if !app_start => p.boot_start,
        _ => ts,
    };
    Decision { app_start, login, boot_start }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        let p = Prev { boot: 7, boot_start: 100, expires_at: 1_000, push_kept: false };
        assert_eq!(decide(None, 7, 50), Decision { app_start: true, login: true, boot_start: 50 });
        // a refresh of the same boot cycle while bound: nothing
        assert_eq!(decide(Some(p), 7, 500), Decision { app_start: false, login: false, boot_start: 100 });
        // lapsed: login only
        assert_eq!(decide(Some(p), 7, 1_001), Decision { app_start: false, login: true, boot_start: 100 });
        // a new Call-ID: a new boot cycle
        assert_eq!(decide(Some(p), 8, 500), Decision { app_start: true, login: true, boot_start: 500 });
        let pushed = Prev { push_kept: true, ..p };
        assert_eq!(decide(Some(pushed), 7, 500), Decision { app_start: false, login: true, boot_start: 100 });
    }

    #[test]
    fn device_keys_differ_by_both_parts() {
        assert_ne!(device_key(1, 2), device_key(2, 1));
        assert_ne!(device_key(1, 2), device_key(1, 3));
    }
}
