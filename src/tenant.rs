//! Routing events to tenants by the user's domain, and naming them the tenant's way.
use crate::config::Config;
use crate::event::{Event, Kind};
use std::collections::HashMap;
use std::sync::Arc;

/// A tenant's id and its name for each kind, in the order of `Kind` (`None`: disabled).
type TenantNames = (Arc<str>, [Option<Arc<str>>; Kind::ALL.len()]);

/// Hashes a domain with FxHash's step, eight bytes at a time. The table is the configuration's
/// and never grows from traffic, so chosen collisions cost an attacker's event a few compares
/// at most; SipHash showed in replay profiles.
#[derive(Default)]
struct DomainHasher(u64);

impl std::hash::Hasher for DomainHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut chunks = bytes.chunks(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(w)).wrapping_mul(K);
        }
    }
}

pub struct Router {
    by_domain: HashMap<String, usize, std::hash::BuildHasherDefault<DomainHasher>>,
    default: Option<usize>,
    tenants: Vec<TenantNames>,
}

/// Where an event goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    To {
        tenant: Arc<str>,
        name: Arc<str>,
    },
    /// The user's domain belongs to no tenant and there is no default tenant.
    Unrouted,
    /// The tenant disabled this event.
    Disabled,
}

/// The kind whose discriminant is `i`.
fn kind_at(i: usize) -> Kind {
    Kind::ALL.into_iter().find(|k| *k as usize == i).expect("every discriminant is in Kind::ALL")
}

impl Router {
    pub fn new(cfg: &Config) -> Router {
        let mut by_domain = HashMap::default();
        let mut tenants = Vec::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            for d in &t.domains {
                by_domain.insert(d.clone(), i);
            }
            // every kind named once here, so that routing an event allocates nothing
            let names = std::array::from_fn(|i| {
                let k = kind_at(i);
                match t.names.get(&k) {
                    Some(v) => v.as_deref().map(Arc::from),
                    None => Some(Arc::from(k.default_name())),
                }
            });
            tenants.push((Arc::from(t.id.as_str()), names));
        }
        let default = cfg.default_tenant.as_ref().and_then(|d| cfg.tenants.iter().position(|t| &t.id == d));
        Router { by_domain, default, tenants }
    }

    pub fn route(&self, ev: &Event) -> Route {
        let i = self.by_domain.get(&*crate::bytes::ascii_lowercase(ev.domain()));
        let Some(i) = i.copied().or(self.default) else {
            return Route::Unrouted;
        };
        let (id, names) = &self.tenants[i];
        match &names[ev.kind as usize] {
            Some(name) => Route::To { tenant: id.clone(), name: name.clone() },
            None => Route::Disabled,
        }
    }
}
