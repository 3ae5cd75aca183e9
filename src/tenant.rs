//! Routing events to tenants by the user's domain, and naming them the tenant's way.
use crate::config::Config;
use crate::event::{Event, Kind};
use std::collections::HashMap;
use std::sync::Arc;

/// A tenant's id and its name for each kind (`None`: disabled).
type TenantNames = (Arc<str>, HashMap<Kind, Option<Arc<str>>>);

pub struct Router {
    by_domain: HashMap<String, usize>,
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

impl Router {
    pub fn new(cfg: &Config) -> Router {
        let mut by_domain = HashMap::new();
        let mut tenants = Vec::new();
        for (i, t) in cfg.tenants.iter().enumerate() {
            for d in &t.domains {
                by_domain.insert(d.clone(), i);
            }
            // every kind named once here, so that routing an event allocates nothing
            let names = Kind::ALL
                .into_iter()
                .map(|k| match t.names.get(&k) {
                    Some(v) => (k, v.as_deref().map(Arc::from)),
                    None => (k, Some(Arc::from(k.default_name()))),
                })
                .collect();
            tenants.push((Arc::from(t.id.as_str()), names));
        }
        let default = cfg.default_tenant.as_ref().and_then(|d| cfg.tenants.iter().position(|t| &t.id == d));
        Router { by_domain, default, tenants }
    }

    pub fn route(&self, ev: &Event) -> Route {
        let domain = ev.domain();
        let i = if domain.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_domain.get(&domain.to_ascii_lowercase())
        } else {
            self.by_domain.get(domain)
        };
        let Some(i) = i.copied().or(self.default) else {
            return Route::Unrouted;
        };
        let (id, names) = &self.tenants[i];
        match names.get(&ev.kind) {
            Some(Some(name)) => Route::To { tenant: id.clone(), name: name.clone() },
            Some(None) | None => Route::Disabled,
        }
    }
}
