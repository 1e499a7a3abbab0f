//! One call's path: resiliency (breaker, attempts, retries) around routing to
//! a local instance (delivered by the daemon on the callee's connection) or to
//! the peer node that announced the app id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::InvokeCall;
use mecha_module::{Opcode, Status};

use crate::acl::Caller;
use crate::registry::{Miss, Target};
use crate::resiliency::{is_failure, Policy};
use crate::Core;

/// A status and its payload (the reply type, or an `ErrorBody`).
pub type Answer = (Status, Vec<u8>);

/// Calls `call` under the callee's resiliency policy, within `deadline`.
pub async fn invoke(core: &Arc<Core>, call: &InvokeCall, deadline: Instant) -> Answer {
    let policy = core.settings.resiliency.policy(&call.app_id).clone();
    let payload = match mecha_abi::encode(call) {
        Ok(p) => p,
        Err(e) => return error(Status::Internal, &e.to_string()),
    };
    let mut retries = 0u32;
    loop {
        if let Some(b) = &policy.circuit_breaker {
            if !core.breakers.allow(&call.app_id, b) {
                return error(
                    Status::Unavailable,
                    &format!(
                        "circuit breaker for app {:?} is open after repeated failures; retry later",
                        call.app_id
                    ),
                );
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return error(Status::DeadlineExceeded, "the call's deadline passed");
        }
        // Without a policy timeout an attempt gets the module's call timeout,
        // which is below the daemon's health timeout: a callee that never
        // answers must not hold the caller's request slot for long.
        let budget = policy
            .timeout_ms
            .map_or(core.settings.call_timeout, Duration::from_millis)
            .min(left);
        let (status, body) = attempt(core, call, &payload, budget, &policy).await;
        let failed = is_failure(status);
        if let Some(b) = &policy.circuit_breaker {
            core.breakers.record(&call.app_id, b, failed);
        }
        if !failed {
            return (status, body);
        }
        match &policy.retry {
            Some(r) if retries < r.max_retries => {
                retries += 1;
                let pause = r.pause(retries);
                if Instant::now() + pause >= deadline {
                    return (status, body);
                }
                tracing::debug!(app_id = %call.app_id, retries, ?status, "retrying");
                tokio::time::sleep(pause).await;
            }
            _ => return (status, body),
        }
    }
}

/// One attempt: a local instance first, else a peer node. A local call the
/// instance answered OK may earn a direct route for the calls like it
/// (`routes::grant`).
async fn attempt(
    core: &Arc<Core>,
    call: &InvokeCall,
    payload: &[u8],
    budget: Duration,
    policy: &Policy,
) -> Answer {
    settle().await;
    match core.registry.pick(&call.app_id, &call.method) {
        Ok(Target::Local(stream)) => {
            let (answer, delivered) =
                deliver_local(core, call, payload, budget, Some(stream)).await;
            if let (Status::Ok, Some(stream)) = (answer.0, delivered) {
                crate::routes::grant(core, call, stream, policy);
            }
            answer
        }
        Ok(Target::Remote(node)) => match core.mesh.get() {
            Some(mesh) => mesh.invoke(&node, payload.to_vec(), budget).await,
            None => error(Status::Unavailable, "peer links are not configured"),
        },
        Err(miss) => not_found(call, miss),
    }
}

/// Serves a call with a local instance (`picked`, or the next one round
/// robin): access control, then delivery by the daemon on the instance's
/// connection. Calls from peers enter here too.
pub async fn serve_local(
    core: &Arc<Core>,
    call: &InvokeCall,
    payload: &[u8],
    budget: Duration,
    picked: Option<u32>,
) -> Answer {
    deliver_local(core, call, payload, budget, picked).await.0
}

/// [`serve_local`], also saying which instance the call was delivered to.
async fn deliver_local(
    core: &Arc<Core>,
    call: &InvokeCall,
    payload: &[u8],
    budget: Duration,
    picked: Option<u32>,
) -> (Answer, Option<u32>) {
    let caller = Caller {
        app_id: &call.caller_app_id,
        tenant: &call.caller_tenant,
        node: &call.caller_node,
    };
    if let Err(why) = core
        .settings
        .access
        .check(&call.app_id, &call.method, &caller)
    {
        return (error(Status::PermissionDenied, &why), None);
    }
    let Some(daemon) = core.daemon.get() else {
        let why = "the module is not attached to the daemon yet";
        return (error(Status::Unavailable, why), None);
    };
    if picked.is_none() {
        settle().await;
    }
    let mut picked = picked;
    // Each instance found gone costs one more pick. A gone instance has
    // already left the registry when its probe fails, so picks never repeat
    // one; the loop still stops at the first repeat, to be sure it ends.
    let mut gone: Vec<u32> = Vec::new();
    loop {
        let stream =
            match picked.map_or_else(|| core.registry.pick_local(&call.app_id, &call.method), Ok) {
                Ok(s) if !gone.contains(&s) => s,
                Ok(_) => return (not_found(call, Miss::NoApp), None),
                Err(miss) => return (not_found(call, miss), None),
            };
        let (status, body) = daemon
            .deliver(stream, Opcode::INVOKE_CALL, payload.to_vec(), budget)
            .await;
        // NOT_FOUND is the daemon's answer when the instance's stream is not
        // open any more (its connection closed before the call was
        // delivered); a callee may answer it too. Asking the instance's
        // registration task tells the two apart: the daemon cancels a stream
        // on the link before it refuses deliveries to it.
        if status != Status::NotFound || instance_open(core, &call.app_id, stream).await {
            return ((status, body), Some(stream));
        }
        tracing::debug!(app_id = %call.app_id, stream, "instance gone before the call was delivered");
        gone.push(stream);
        picked = None;
    }
}

/// Lets registration tasks whose stream the daemon cancelled run before a
/// pick: the SDK reads a LINK_CANCEL (which wakes the task) and the next
/// request in one go, so without this a callee that unregistered or
/// disconnected just before the call was made would still be picked.
async fn settle() {
    tokio::task::yield_now().await;
}

/// Whether the registration stream `stream` of `app_id` is still open, as
/// far as this module has read the link.
async fn instance_open(core: &Arc<Core>, app_id: &str, stream: u32) -> bool {
    let Some(probe) = core.registry.probe(app_id, stream) else {
        return false;
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    if probe.send(tx).await.is_err() {
        return false;
    }
    rx.await.is_ok()
}

fn not_found(call: &InvokeCall, miss: Miss) -> Answer {
    let msg = match miss {
        Miss::NoApp => format!(
            "no app is registered as {:?} on this node or any known peer",
            call.app_id
        ),
        Miss::NoMethod => format!("app {:?} serves no method {:?}", call.app_id, call.method),
    };
    error(Status::NotFound, &msg)
}

/// An `ErrorBody` answer.
pub fn error(status: Status, message: &str) -> Answer {
    mecha_module::DaemonLink::error_answer(status, message)
}
