//! Admission of calls: how many INVOKE requests may wait in this module at
//! once, per tenant and in all. A call waits as long as its callee takes to
//! answer, holding one of the request slots of the module SDK, which stops
//! reading the daemon link while every slot is busy; so no tenant may hold
//! more than its share, and calls together never hold every slot.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

/// Calls waiting at once, all tenants together. The SDK serves 1024 requests
/// at once (`mecha_module`'s `MAX_CONCURRENT`); this stays below it so that
/// registrations, listings and the link itself are never starved by calls.
pub const MAX_CALLS: usize = 896;

/// Counts waiting calls per tenant.
pub struct Admission {
    per_tenant: usize,
    counts: Mutex<Counts>,
}

#[derive(Default)]
struct Counts {
    total: usize,
    /// Tenants with calls waiting; a tenant at zero is removed.
    by_tenant: HashMap<String, usize>,
}

/// Why a call was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The tenant has this many calls waiting already.
    Tenant(usize),
    /// The module has this many calls waiting already.
    Module(usize),
}

/// One admitted call; dropping it frees its place.
pub struct Admitted {
    admission: Arc<Admission>,
    tenant: String,
}

impl Admission {
    /// Admits up to `per_tenant` calls per tenant (and [`MAX_CALLS`] in all).
    pub fn new(per_tenant: usize) -> Arc<Self> {
        Arc::new(Self {
            per_tenant,
            counts: Mutex::default(),
        })
    }

    /// Admits a call of `tenant`, or says which limit it hit.
    pub fn admit(self: &Arc<Self>, tenant: &str) -> Result<Admitted, Refused> {
        let mut c = self.counts.lock();
        let mine = c.by_tenant.get(tenant).copied().unwrap_or(0);
        if mine >= self.per_tenant {
            return Err(Refused::Tenant(self.per_tenant));
        }
        if c.total >= MAX_CALLS {
            return Err(Refused::Module(MAX_CALLS));
        }
        c.total += 1;
        *c.by_tenant.entry(tenant.to_string()).or_default() += 1;
        Ok(Admitted {
            admission: Arc::clone(self),
            tenant: tenant.to_string(),
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut c = self.admission.counts.lock();
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_tenant.get_mut(&self.tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.by_tenant.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_share_is_refused_and_others_are_not() {
        let a = Admission::new(2);
        let one = a.admit("t").unwrap();
        let _two = a.admit("t").unwrap();
        assert_eq!(a.admit("t").err(), Some(Refused::Tenant(2)));
        assert!(a.admit("u").is_ok());
        drop(one);
        assert!(a.admit("t").is_ok());
        let many = Admission::new(usize::MAX);
        let held: Vec<Admitted> = (0..MAX_CALLS)
            .filter_map(|_| many.admit("x").ok())
            .collect();
        assert_eq!(held.len(), MAX_CALLS);
        assert_eq!(many.admit("y").err(), Some(Refused::Module(MAX_CALLS)));
    }
}
