//! Each tenant's share of a module's request slots (issue #16).
//!
//! A module serves at most `MAX_CONCURRENT` requests at once. Without shares,
//! one tenant holding slow requests (lock waiters, calls to a callee that
//! never answers) could occupy every slot, and every other tenant would be
//! refused. Each tenant may therefore hold at most `Module::TENANT_SLOTS`
//! of them; a request over its tenant's share is answered RESOURCE_EXHAUSTED
//! at once.
//!
//! Refusing rather than queueing is deliberate. A queue inside the module
//! would hold the requests' payloads (up to the frame limit each) behind the
//! daemon's own bounded per-tenant lanes, so it would need a bound of its
//! own and would refuse at that bound anyway; and a module that waits instead
//! of reading its link leaves the health pings unread. Waiting is the
//! daemon's business: its per-tenant and per-connection in-flight quotas make
//! a caller wait or refuse it before a request reaches the module.

use std::collections::HashMap;
use std::sync::Arc;

use mecha_abi::Status;
use parking_lot::Mutex;

use crate::Reply;

/// The default share of one tenant, in requests served at once; see
/// `Module::TENANT_SLOTS`.
pub const DEFAULT_TENANT_SLOTS: usize = 512;

/// A per-tenant bound on something a tenant holds (request slots, lock
/// waiters, subscriptions): each tenant may hold at most `limit` at once, and
/// one tenant at its bound leaves every other tenant's untouched. Tenants
/// holding nothing are removed, so the table is no larger than what is held.
#[derive(Clone, Debug)]
pub struct TenantLimit {
    limit: usize,
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

/// One unit held by one tenant, given back when dropped. It owns what it
/// needs, so it can move into a task that outlives the request.
#[derive(Debug)]
pub struct TenantPermit {
    tenant: Arc<str>,
    held: Arc<Mutex<HashMap<Arc<str>, usize>>>,
}

impl TenantLimit {
    /// A bound of `limit` per tenant (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            held: Arc::default(),
        }
    }

    /// The bound per tenant.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// How many units `tenant` holds now.
    pub fn held(&self, tenant: &str) -> usize {
        self.held.lock().get(tenant).copied().unwrap_or(0)
    }

    /// Takes one unit for `tenant`, or `None` when it holds `limit` already.
    pub fn try_take(&self, tenant: &str) -> Option<TenantPermit> {
        let mut held = self.held.lock();
        // The entry's key is shared with the permit, so a request of a
        // tenant already known allocates nothing (this runs for every request
        // a module serves); entries stay at zero when their tenant holds
        // nothing, and idle ones are pruned once there are many.
        let key = match held.get_key_value(tenant) {
            Some((_, count)) if *count >= self.limit => return None,
            Some((key, _)) => Arc::clone(key),
            None => {
                if held.len() >= MAX_ENTRIES {
                    held.retain(|_, count| *count > 0);
                }
                Arc::from(tenant)
            }
        };
        *held.entry(Arc::clone(&key)).or_insert(0) += 1;
        Some(TenantPermit {
            tenant: key,
            held: Arc::clone(&self.held),
        })
    }
}

/// Tenants remembered before those holding nothing are forgotten.
const MAX_ENTRIES: usize = 1024;

impl Drop for TenantPermit {
    fn drop(&mut self) {
        if let Some(count) = self.held.lock().get_mut(&self.tenant) {
            *count = count.saturating_sub(1);
        }
    }
}

/// The request slots of one module instance, shared out by tenant.
pub(crate) struct TenantSlots {
    module: &'static str,
    limit: TenantLimit,
}

impl TenantSlots {
    pub(crate) fn new(module: &'static str, share: usize) -> Self {
        Self {
            module,
            limit: TenantLimit::new(share),
        }
    }

    /// Takes one of `tenant`'s slots, or yields the RESOURCE_EXHAUSTED reply
    /// naming the share when the tenant holds all of its own.
    pub(crate) fn take(&self, tenant: &str) -> Result<TenantPermit, Reply> {
        self.limit.try_take(tenant).ok_or_else(|| {
            Reply::error(
                Status::ResourceExhausted,
                format!(
                    "tenant {tenant:?} already has {} requests in progress in the {} module, \
                     its share of the module's request slots; try again when some are answered",
                    self.limit.limit(),
                    self.module
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_share_does_not_take_another_tenants_slots() {
        let slots = TenantSlots::new("test", 2);
        let a1 = slots.take("a").expect("first slot");
        let _a2 = slots.take("a").expect("second slot");
        let refused = slots.take("a").expect_err("a is at its share");
        assert_eq!(refused.status, Status::ResourceExhausted);
        let message = mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&refused.payload)
            .expect("an error body")
            .message;
        assert!(message.contains("2 requests"), "{message}");
        let _b = slots.take("b").expect("b has its own share");
        drop(a1);
        let _a3 = slots
            .take("a")
            .expect("a slot given back can be taken again");
    }

    #[test]
    fn tenants_holding_nothing_are_forgotten_once_there_are_many() {
        let slots = TenantSlots::new("test", 4);
        drop(slots.take("a").expect("a slot"));
        assert_eq!(slots.limit.held("a"), 0);
        for i in 0..2 * MAX_ENTRIES {
            drop(slots.take(&format!("t{i}")).expect("a slot"));
        }
        assert!(slots.limit.held.lock().len() <= MAX_ENTRIES + 1);
    }
}
