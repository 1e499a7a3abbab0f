//! The direct path of service invocation: an INVOKE matching a route the
//! invoke module granted (`routes`, SPEC §8 LINK_ROUTE) is delivered by the
//! daemon itself as INVOKE_CALL on the callee's connection, and the callee's
//! answer goes straight back to the caller — four socket crossings instead
//! of eight. Everything the module would decide differently for this call
//! than it did for the call that earned the route leaves it on the module's
//! path instead.

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{InvokeCall, InvokeRequest};
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::OutFrame;

use crate::answer::ConnOut;
use crate::caller::Caller;
use crate::calls::OnAnswer;
use crate::deadlines::Deadlines;
use crate::handle::ConnHandle;
use crate::link::Link;
use crate::ratelog::RateLimited;
use crate::routes::Key;

/// Delivers `payload`, an INVOKE of the caller's, on a granted route and
/// answers it when the callee does. Hands the permit back when no route
/// applies, for the module's path. The caller's tenant quota and allow list
/// were checked before, as for every request.
pub fn try_route(
    caller: &Caller,
    link: &Link,
    header: &Header,
    payload: &Bytes,
    mut permit: ConnOut,
    timeout: Duration,
) -> Result<(), ConnOut> {
    if link.route_count() == 0 {
        return Err(permit);
    }
    // Undecodable requests are the module's to refuse, with its message.
    let Ok(req) = mecha_abi::decode::<InvokeRequest>(payload) else {
        return Err(permit);
    };
    let key = Key {
        tenant: caller.tenant.clone(),
        app_id: req.app_id,
        method: req.method,
        caller_app_id: req.caller_app_id,
    };
    let Some((callee, target)) = link.route_for(&key) else {
        return Err(permit);
    };
    // A callee shutting its connection down is the module's to judge: it
    // answers NOT_FOUND or picks another instance.
    if callee.tx.peer_closed() {
        return Err(permit);
    }
    let Ok(slot) = Arc::clone(&target.calls).try_acquire_owned() else {
        let msg = format!(
            "tenant {:?} has {} calls waiting, its limit (maxCallsPerTenant)",
            caller.tenant_name(),
            target.max_calls
        );
        caller.error(header, Status::ResourceExhausted, &msg, permit);
        return Ok(());
    };
    // The trace context is the one the module would have received: the
    // daemon's span as parent when the request is traced, else the
    // caller's own field, else a fresh trace.
    let trace_parent = match permit.trace_context() {
        Some(ctx) => ctx.to_string(),
        None => crate::trace::traceparent_or_fresh(req.trace_parent),
    };
    let call = InvokeCall {
        app_id: key.app_id,
        method: key.method,
        data: req.data,
        content_type: req.content_type,
        metadata: req.metadata,
        caller_app_id: key.caller_app_id,
        caller_tenant: caller.tenant_name().into_owned(),
        caller_node: target.node.to_string(),
        trace_parent,
    };
    let Ok(body) = mecha_abi::encode(&call) else {
        return Err(permit);
    };
    permit.set_module(&link.module);
    caller.daemon.metrics.invoke_routed();
    let attempt = target.attempt.min(timeout);
    let (conn, request) = (Arc::clone(&caller.conn), *header);
    let deadline = deadlines().key(tokio::time::Instant::now() + attempt);
    // The answer is written to the caller by whichever task reads it — the
    // callee's session, normally — with no task of its own in between.
    let on_answer: OnAnswer = Box::new(move |(status, body)| {
        deadlines().remove(&deadline);
        drop(slot);
        answer(&conn, &request, status, body, permit);
    });
    let calls = &callee.calls;
    let (pushes, bytes) = (&callee.pushes, &callee.budget);
    let body = Bytes::from(body);
    let weak = Arc::downgrade(&callee);
    let armed = move |id| deadlines().insert(deadline, (weak, id));
    let op = Opcode::INVOKE_CALL;
    match calls.start(
        &callee.tx, pushes, bytes, op, body, attempt, on_answer, armed,
    ) {
        Ok(()) => {}
        Err((body, on_answer)) => {
            // The callee's push budget is spent: the call waits for room
            // within its deadline, in a task, as a LINK_DELIVER does.
            tokio::spawn(async move {
                let (pushes, bytes) = (&callee.pushes, &callee.budget);
                let op = Opcode::INVOKE_CALL;
                let answer = callee
                    .calls
                    .call(&callee.tx, pushes, bytes, op, body, attempt)
                    .await;
                on_answer(answer);
            });
        }
    }
    Ok(())
}

/// A routed call waiting for its callee: the callee's connection and the
/// call's id there.
type Waiting = (Weak<ConnHandle>, u32);

/// The deadlines of routed calls, swept by one task for the whole daemon.
fn deadlines() -> &'static Deadlines<Waiting> {
    static DEADLINES: OnceLock<Deadlines<Waiting>> = OnceLock::new();
    DEADLINES.get_or_init(|| {
        // Routed calls are only made on the daemon's runtime, where the
        // first one starts the sweeper.
        tokio::spawn(async {
            let expire = |(conn, id): Waiting| {
                if let Some(conn) = conn.upgrade() {
                    conn.calls.expire(id);
                }
            };
            deadlines().sweep(expire).await;
        });
        Deadlines::default()
    })
}

/// Sends the callee's answer to the caller, as the router sends a module's:
/// an answer the caller's byte budget cannot hold closes the caller's
/// connection, which does not read its answers.
fn answer(conn: &ConnHandle, request: &Header, status: Status, body: Bytes, permit: ConnOut) {
    let held = match conn.budget.take(body.len()) {
        Ok(held) => held,
        Err(spent) => {
            static CUT_OFF: RateLimited = RateLimited::new();
            if let Some(held) = CUT_OFF.allow() {
                tracing::warn!(
                    conn = conn.id,
                    held_back = held,
                    "closing a connection that does not read its answers: {spent}"
                );
            }
            drop(permit);
            conn.tx.shutdown();
            return;
        }
    };
    let guard = permit.answered(status.code()).holding(held);
    let mut out = request.response(status);
    out.deadline_ms = 0;
    let _ = conn
        .tx
        .send(OutFrame::guarded(out, Bytes::new(), body, guard));
}
