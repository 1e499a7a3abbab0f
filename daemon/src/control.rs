//! Control opcodes the daemon answers itself: PING, STATUS, STREAM_CANCEL,
//! and the admin operations MODULE_RESTART, RELOAD and DAEMON_UPGRADE (the
//! router has checked that the caller is an admin).

use std::sync::Arc;

use bytes::Bytes;
use mecha_abi::msg::{
    DaemonUpgradeReply, DaemonUpgradeRequest, ModuleRestartReply, ModuleRestartRequest,
    StreamCancel,
};
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::OutFrame;

use crate::answer::{error_frame, ConnOut};
use crate::caller::Caller;
use crate::daemon::{ReloadError, RestartError};
use crate::supervisor::{ModuleSlot, Route};

/// Answers one control frame.
pub fn serve(caller: &Caller, header: &Header, payload: &Bytes, permit: ConnOut) {
    match header.opcode {
        Opcode::HELLO => {
            let msg = "HELLO was already negotiated on this connection";
            caller.error(header, Status::InvalidArgument, msg, permit);
        }
        Opcode::PING | Opcode::STATUS | Opcode::RELOAD if !payload.is_empty() => {
            let msg = format!("{} takes an empty payload", header.opcode);
            caller.error(header, Status::InvalidArgument, &msg, permit);
        }
        Opcode::PING => caller.reply(empty_ok(header, permit)),
        Opcode::STATUS => caller.ok(header, &caller.daemon.status(), permit),
        Opcode::STREAM_CANCEL => cancel_stream(caller, header, payload, permit),
        Opcode::MODULE_RESTART | Opcode::RELOAD | Opcode::DAEMON_UPGRADE => {
            admin(caller, *header, payload.clone(), permit)
        }
        other => {
            let msg = format!("unknown control opcode {other}");
            caller.error(header, Status::UnknownOpcode, &msg, permit);
        }
    }
}

fn empty_ok(header: &Header, permit: ConnOut) -> OutFrame<ConnOut> {
    OutFrame::guarded(
        header.response(Status::Ok),
        Bytes::new(),
        Bytes::new(),
        permit,
    )
}

/// STREAM_CANCEL: ends one of this connection's streams, in whichever module
/// serves it.
fn cancel_stream(caller: &Caller, header: &Header, payload: &[u8], permit: ConnOut) {
    let req: StreamCancel = match mecha_abi::decode(payload) {
        Ok(r) => r,
        Err(e) => return caller.error(header, Status::InvalidArgument, &e.to_string(), permit),
    };
    let modules: Vec<Arc<ModuleSlot>> = caller.daemon.modules.read().clone();
    let found = modules.iter().any(|m| match m.route() {
        Route::Up(link) => link.cancel_stream(caller.conn.id, req.stream_id),
        _ => false,
    });
    if found {
        caller.reply(empty_ok(header, permit));
    } else {
        let msg = format!("no open stream {} on this connection", req.stream_id);
        caller.error(header, Status::NotFound, &msg, permit);
    }
}

/// Runs an admin operation in its own task, since it takes as long as a
/// module start, and answers when done.
fn admin(caller: &Caller, header: Header, payload: Bytes, permit: ConnOut) {
    let daemon = Arc::clone(&caller.daemon);
    let tx = caller.conn.tx.clone();
    tokio::spawn(async move {
        let result = match header.opcode {
            Opcode::MODULE_RESTART => match mecha_abi::decode::<ModuleRestartRequest>(&payload) {
                Ok(req) => daemon
                    .restart_module(&req.module, req.binary.map(Into::into))
                    .await
                    .map(|pid| mecha_abi::encode(&ModuleRestartReply { pid }))
                    .map_err(|e| match e {
                        RestartError::NoSuchModule(_) => (Status::NotFound, e.to_string()),
                        RestartError::Failed(_) => (Status::Unavailable, e.to_string()),
                    }),
                Err(e) => Err((Status::InvalidArgument, e.to_string())),
            },
            Opcode::DAEMON_UPGRADE => match mecha_abi::decode::<DaemonUpgradeRequest>(&payload) {
                Ok(req) => crate::handover::upgrade::start(&daemon, req.binary.map(Into::into))
                    .await
                    .map(|new_pid| {
                        mecha_abi::encode(&DaemonUpgradeReply {
                            old_pid: std::process::id(),
                            new_pid,
                        })
                    })
                    .map_err(|e| (Status::Unavailable, e)),
                Err(e) => Err((Status::InvalidArgument, e.to_string())),
            },
            _ => daemon
                .reload()
                .await
                .map(|r| mecha_abi::encode(&r))
                .map_err(|e| match e {
                    ReloadError::Config(m) => (Status::InvalidArgument, m),
                    ReloadError::Apply(m) => (Status::Unavailable, m),
                }),
        };
        let frame = match result {
            Ok(Ok(body)) => OutFrame::guarded(
                header.response(Status::Ok),
                Bytes::new(),
                body.into(),
                permit,
            ),
            Ok(Err(e)) => error_frame(&header, Status::Internal, &e.to_string(), permit),
            Err((status, msg)) => error_frame(&header, status, &msg, permit),
        };
        let _ = tx.send(frame);
    });
}
