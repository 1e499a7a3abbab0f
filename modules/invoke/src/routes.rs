//! Direct routes (SPEC §8 LINK_ROUTE): once a local call has been delivered,
//! the module may let the daemon deliver later calls with the same tenant,
//! app id, method and caller app id straight to the same instance — but only
//! when nothing the module does on its path could decide such a call
//! differently, and it revokes them (LINK_UNROUTE) when that changes.

use std::time::Duration;

use mecha_abi::msg::{InvokeCall, RouteGrant, RouteRevoke};
use mecha_module::Opcode;

use crate::resiliency::Policy;
use crate::Core;

/// Grants the daemon a route for calls like `call`, which instance `stream`
/// has just answered OK, when every decision of the module's path is fixed
/// for them: no retries and no circuit breaker (their state is the
/// module's), a caller app id the tenant holds by configuration (a run-time
/// hold lapses without the daemon seeing it), and exactly one local instance
/// serving the method (otherwise calls take turns). Access control depends
/// only on the route's key (the callee app id and method, the caller's app
/// id, tenant and node — this node), and changes only with a new module
/// instance, whose link starts without routes.
pub fn grant(core: &Core, call: &InvokeCall, stream: u32, policy: &Policy) {
    if !core.settings.direct_routes || policy.retry.is_some() || policy.circuit_breaker.is_some() {
        return;
    }
    if !call.caller_app_id.is_empty()
        && !core
            .settings
            .tenant_app_ids
            .get(&call.caller_tenant)
            .is_some_and(|ids| ids.contains(&call.caller_app_id))
    {
        return;
    }
    let Some(daemon) = core.daemon.get() else {
        return;
    };
    let attempt = policy
        .timeout_ms
        .map_or(core.settings.call_timeout, Duration::from_millis);
    let grant = RouteGrant {
        tenant: call.caller_tenant.clone(),
        app_id: call.app_id.clone(),
        method: call.method.clone(),
        caller_app_id: call.caller_app_id.clone(),
        stream,
        node: core.settings.node.clone(),
        attempt_ms: u32::try_from(attempt.as_millis()).unwrap_or(u32::MAX),
        max_calls: u32::try_from(core.settings.max_calls_per_tenant).unwrap_or(u32::MAX),
    };
    // The check and the send happen under the lock registrations take to
    // revoke, so a grant decided before a second instance registered is on
    // the link before that registration's revocation, never after it.
    let _order = core.route_order.lock();
    if core.registry.sole_instance(&call.app_id, &call.method) == Some(stream) {
        daemon.notify(Opcode::LINK_ROUTE, &grant);
    }
}

/// Revokes every route to `app_id`: its set of instances changed, so calls
/// must take turns again. Called with `route_order` held, right after the
/// registry changed.
pub fn revoke(core: &Core, app_id: &str) {
    if !core.settings.direct_routes {
        return;
    }
    if let Some(daemon) = core.daemon.get() {
        daemon.notify(
            Opcode::LINK_UNROUTE,
            &RouteRevoke {
                app_id: app_id.to_string(),
            },
        );
    }
}
