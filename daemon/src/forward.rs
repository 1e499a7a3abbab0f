//! Forwarding a capability request to its module: the tenant's quota and
//! allow list first, then the module's running instance — waiting, within
//! the request's deadline, for one that is restarting.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::{Family, Header, Opcode, Status};
use mecha_wire::Outbox;

use crate::answer::{error_frame, ConnOut};
use crate::caller::Caller;
use crate::crashes::{Refusal, Suspect};
use crate::events::{self, Kind};
use crate::handle::ConnHandle;
use crate::supervisor::{ModuleSlot, Route};

/// Forwards one request of `family` to its module, or answers why not.
pub async fn forward(
    caller: &mut Caller,
    family: Family,
    header: Header,
    payload: Bytes,
    mut permit: ConnOut,
) {
    if let Err(msg) = caller.quota.admit(header.payload_len, permit.quota_mut()) {
        events::record(Kind::QuotaRefused, &caller.tenant_name(), &msg);
        return caller.error(&header, Status::ResourceExhausted, &msg, permit);
    }
    if let Some(allow) = &caller.allow {
        if !allow.permits(header.opcode) {
            let msg = format!(
                "tenant {} may not use {}: it is not in the tenant's allow list",
                caller.tenant_name(),
                header.opcode
            );
            return caller.error(&header, Status::PermissionDenied, &msg, permit);
        }
    }
    let Some(module) = caller.daemon.module_for(family) else {
        let msg = match family {
            Family::Link | Family::Peer | Family::Unknown(_) => {
                format!("unknown opcode {}", header.opcode)
            }
            f => format!(
                "opcode {} belongs to the {} family, which has no configured component",
                header.opcode,
                f.name()
            ),
        };
        return caller.error(&header, Status::UnknownOpcode, &msg, permit);
    };
    let fingerprint = crate::crashes::fingerprint(header.opcode, &payload);
    if let Some(refusal) = module.refusal(&caller.tenant, fingerprint) {
        let status = match refusal {
            Refusal::Poison { .. } => Status::Internal,
            Refusal::Throttled { .. } => Status::ResourceExhausted,
        };
        let msg = refusal.message(&module.name);
        events::record(Kind::CrashRefused, &caller.tenant_name(), &msg);
        return caller.error(&header, status, &msg, permit);
    }
    let timeout = match header.deadline_ms {
        0 => caller.daemon.default_timeout,
        ms => Duration::from_millis(u64::from(ms)),
    };
    // A call the invoke module granted a direct route for goes straight to
    // its callee (`direct`); any other takes the module's path.
    if header.opcode == Opcode::INVOKE {
        if let Route::Up(link) = module.route() {
            match crate::direct::try_route(caller, &link, &header, &payload, permit, timeout) {
                Ok(()) => return,
                Err(back) => permit = back,
            }
        }
    }
    let request = Routed {
        conn: Arc::clone(&caller.conn),
        tenant: caller.tenant.clone(),
        deadline: tokio::time::Instant::now() + timeout,
        permit,
        header,
        payload,
        fingerprint,
    };
    // The common case forwards inline. A module that is restarting makes the
    // request wait for the new instance in its own task, so one waiting
    // request does not stall the rest of this connection's pipeline.
    if let Route::Up(_) = module.route() {
        if let Some(link) = request.dispatch(&module).await {
            caller.unflushed.add(&link);
        }
    } else {
        tokio::spawn(async move {
            if let Some(link) = request.dispatch(&module).await {
                link.flush();
            }
        });
    }
}

/// A request on its way to a module, carrying everything needed to answer it.
struct Routed {
    conn: Arc<ConnHandle>,
    tenant: Bytes,
    deadline: tokio::time::Instant,
    permit: ConnOut,
    header: Header,
    payload: Bytes,
    fingerprint: u64,
}

impl Routed {
    /// Forwards to the module's running instance. A request that finds the
    /// module restarting waits for the new instance until its deadline; one
    /// refused by a draining instance was never sent and is routed again.
    /// Returns the link's outbox when the request was queued on it, for the
    /// caller to flush; errors are answered and written here.
    async fn dispatch(self, module: &ModuleSlot) -> Option<Outbox> {
        let Routed {
            conn,
            tenant,
            deadline,
            mut permit,
            mut header,
            mut payload,
            fingerprint,
        } = self;
        permit.set_module(&module.name);
        let tx = &conn.tx;
        // Each pass either forwards, answers, or observes a route change, so a
        // few passes suffice; the bound only guards against a flapping module.
        for _ in 0..8 {
            match module.route() {
                Route::Up(link) => {
                    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
                    match link
                        .forward(
                            &conn,
                            permit,
                            header,
                            payload,
                            remaining,
                            Suspect {
                                tenant: tenant.clone(),
                                fingerprint,
                            },
                        )
                        .await
                    {
                        Ok(link) => return Some(link),
                        Err(back) => {
                            // The instance is draining or dead; its successor
                            // (or a Starting/Down route) is about to replace it.
                            (permit, header, payload) = (back.guard, back.header, back.payload);
                            module.route_moved_from(&link, deadline).await;
                        }
                    }
                }
                route @ (Route::Starting | Route::Idle) => {
                    // A lazy module starts at its first request.
                    if let Route::Idle = route {
                        module.wake();
                    }
                    if let Route::Starting | Route::Idle = module.settled_route(deadline).await {
                        let msg = format!(
                            "module {} did not come back before the deadline",
                            module.name
                        );
                        let _ =
                            tx.send(error_frame(&header, Status::DeadlineExceeded, &msg, permit));
                        return None;
                    }
                }
                Route::Down(why) => {
                    let _ = tx.send(error_frame(&header, Status::Unavailable, &why, permit));
                    return None;
                }
            }
        }
        let msg = format!("module {} is restarting repeatedly; retry", module.name);
        let _ = tx.send(error_frame(&header, Status::Unavailable, &msg, permit));
        None
    }
}
