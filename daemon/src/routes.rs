//! Direct routes of service invocation (SPEC §8 LINK_ROUTE): the calls the
//! invoke module has decided where to send, which the daemon may then deliver
//! straight to the callee's connection without a round trip through the
//! module. The table is bounded per tenant and in all, and lives inside the
//! invoke module's link, so it dies with the module instance that granted it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::RouteGrant;
use tokio::sync::Semaphore;

/// Routes one tenant may hold. Routes are keyed by method and caller app id,
/// so a tenant can make the module grant many of them; past this bound a
/// new grant replaces one of the tenant's own routes, never another's.
pub const MAX_ROUTES_PER_TENANT: usize = 64;
/// Routes all tenants together may hold; past it grants are ignored and
/// calls take the module's path, which is slower but never refused for it.
pub const MAX_ROUTES: usize = 4096;
/// The largest per-tenant call bound a grant may set: the module's own
/// bound of calls waiting in it, in all tenants.
const MAX_CALLS_CAP: u32 = 896;

/// What a routed call must match exactly: the tenant the kernel identified,
/// and the fields of the INVOKE request the module's decision depended on.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Key {
    /// The caller's tenant.
    pub tenant: Bytes,
    /// The callee's app id.
    pub app_id: String,
    /// The method.
    pub method: String,
    /// The caller app id the request carries.
    pub caller_app_id: String,
}

/// Where a routed call goes, and how it is bounded.
#[derive(Clone)]
pub struct Target {
    /// The link id of the callee's registration stream.
    pub stream: u32,
    /// The node name INVOKE_CALL carries as `caller_node`.
    pub node: Arc<str>,
    /// The longest one delivery waits (the module's attempt timeout).
    pub attempt: Duration,
    /// The tenant's routed calls in flight, bounded like the module bounds
    /// the calls waiting in it.
    pub calls: Arc<Semaphore>,
    /// That bound, for the refusal's message.
    pub max_calls: u32,
}

/// One tenant's share of the table.
struct Share {
    routes: usize,
    calls: Arc<Semaphore>,
    max_calls: u32,
}

/// The routes one module instance granted.
#[derive(Default)]
pub struct Routes {
    map: HashMap<Key, Target>,
    shares: HashMap<Bytes, Share>,
}

impl Routes {
    /// How many routes exist.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Records a grant whose stream the caller has checked is open. Returns
    /// false when the table is full and the grant was ignored.
    pub fn grant(&mut self, g: RouteGrant) -> bool {
        let key = Key {
            tenant: Bytes::from(g.tenant),
            app_id: g.app_id,
            method: g.method,
            caller_app_id: g.caller_app_id,
        };
        let max_calls = g.max_calls.clamp(1, MAX_CALLS_CAP);
        let fresh = !self.map.contains_key(&key);
        if fresh {
            let held = self.shares.get(&key.tenant).map_or(0, |s| s.routes);
            if held >= MAX_ROUTES_PER_TENANT {
                // The tenant's own oldest-found route makes room, so a tenant
                // cycling through methods only churns its own routes.
                let victim = self.map.keys().find(|k| k.tenant == key.tenant).cloned();
                if let Some(victim) = victim {
                    self.remove(&victim);
                }
            } else if self.map.len() >= MAX_ROUTES {
                return false;
            }
        }
        let share = self
            .shares
            .entry(key.tenant.clone())
            .or_insert_with(|| Share {
                routes: 0,
                calls: Arc::new(Semaphore::new(max_calls as usize)),
                max_calls,
            });
        if fresh {
            share.routes += 1;
        }
        let target = Target {
            stream: g.stream,
            node: Arc::from(g.node),
            attempt: Duration::from_millis(u64::from(g.attempt_ms.max(1))),
            calls: Arc::clone(&share.calls),
            max_calls: share.max_calls,
        };
        self.map.insert(key, target);
        true
    }

    /// The route for `key`, if granted.
    pub fn get(&self, key: &Key) -> Option<&Target> {
        self.map.get(key)
    }

    /// Forgets the routes to `app_id`, or all routes when it is empty.
    pub fn revoke(&mut self, app_id: &str) {
        if app_id.is_empty() {
            self.map.clear();
            self.shares.clear();
            return;
        }
        self.retain(|k, _| k.app_id != app_id);
    }

    /// Forgets the routes to registration stream `stream`: it ended.
    pub fn drop_stream(&mut self, stream: u32) {
        if !self.map.is_empty() {
            self.retain(|_, t| t.stream != stream);
        }
    }

    /// Removes one route, keeping the tenant's count.
    pub fn remove(&mut self, key: &Key) {
        if self.map.remove(key).is_some() {
            self.release(&key.tenant);
        }
    }

    fn retain(&mut self, keep: impl Fn(&Key, &Target) -> bool) {
        let gone: Vec<Key> = self
            .map
            .iter()
            .filter(|(k, t)| !keep(k, t))
            .map(|(k, _)| k.clone())
            .collect();
        for k in gone {
            self.remove(&k);
        }
    }

    /// One route of `tenant` fewer; a tenant with none leaves the table.
    /// Its semaphore lives on in the calls that hold permits of it.
    fn release(&mut self, tenant: &Bytes) {
        if let Some(share) = self.shares.get_mut(tenant) {
            share.routes = share.routes.saturating_sub(1);
            if share.routes == 0 {
                self.shares.remove(tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(tenant: &str, app: &str, method: &str, stream: u32) -> RouteGrant {
        RouteGrant {
            tenant: tenant.into(),
            app_id: app.into(),
            method: method.into(),
            caller_app_id: String::new(),
            stream,
            node: "n".into(),
            attempt_ms: 2000,
            max_calls: 256,
        }
    }

    fn key(tenant: &str, app: &str, method: &str) -> Key {
        Key {
            tenant: Bytes::from(tenant.to_string()),
            app_id: app.into(),
            method: method.into(),
            caller_app_id: String::new(),
        }
    }

    #[test]
    fn a_tenant_fills_only_its_own_share() {
        let mut r = Routes::default();
        assert!(r.grant(grant("victim", "a", "m", 1)));
        for i in 0..(MAX_ROUTES_PER_TENANT * 3) {
            assert!(r.grant(grant("attacker", "a", &format!("m{i}"), 1)));
        }
        assert_eq!(r.len(), MAX_ROUTES_PER_TENANT + 1);
        assert!(r.get(&key("victim", "a", "m")).is_some());
    }

    #[test]
    fn the_table_is_bounded_in_all() {
        let mut r = Routes::default();
        let tenants = MAX_ROUTES / MAX_ROUTES_PER_TENANT;
        for t in 0..tenants {
            for i in 0..MAX_ROUTES_PER_TENANT {
                assert!(r.grant(grant(&format!("t{t}"), "a", &format!("m{i}"), 1)));
            }
        }
        assert!(!r.grant(grant("late", "a", "m", 1)));
        assert_eq!(r.len(), MAX_ROUTES);
    }

    #[test]
    fn revocation_and_a_stream_end_remove_routes() {
        let mut r = Routes::default();
        r.grant(grant("t", "a", "m", 1));
        r.grant(grant("t", "b", "m", 2));
        r.grant(grant("u", "b", "m", 2));
        r.drop_stream(2);
        assert!(r.get(&key("t", "b", "m")).is_none());
        assert!(r.get(&key("u", "b", "m")).is_none());
        assert!(r.get(&key("t", "a", "m")).is_some());
        r.revoke("a");
        assert_eq!(r.len(), 0);
        assert!(r.shares.is_empty());
    }
}
