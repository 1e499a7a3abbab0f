//! Who is calling, and the handles needed to answer: what a session hands the
//! router with every request. Identity here comes only from the kernel (the
//! peer's credentials, the socket it connected to), never from a request.

use std::sync::Arc;

use bytes::Bytes;
use mecha_abi::{Header, Status};
use mecha_wire::{OutFrame, Unflushed};

use crate::answer::{error_frame, ConnOut};
use crate::daemon::Daemon;
use crate::handle::ConnHandle;
use crate::peer::{Allow, Peer};
use crate::quota::TenantState;

/// One session's caller: its identity, its tenant's rules and quotas, and
/// its connection's queues.
pub struct Caller {
    /// The daemon's shared state.
    pub daemon: Arc<Daemon>,
    /// What the kernel said about the peer.
    pub peer: Peer,
    /// The tenant every request of this session is scoped to.
    pub tenant: Bytes,
    /// What the tenant may use; `None` means everything.
    pub allow: Option<Arc<Allow>>,
    /// The tenant's quota state, shared by its connections.
    pub quota: Arc<TenantState>,
    /// The connection's queues, shared with the module links.
    pub conn: Arc<ConnHandle>,
    /// Module links this session's requests were queued on since the last
    /// flush (see `Link::forward`).
    pub unflushed: Unflushed,
}

impl Caller {
    /// The tenant's name, for messages.
    pub fn tenant_name(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.tenant)
    }

    /// Queues an answer; the session flushes.
    pub fn reply(&self, frame: OutFrame<ConnOut>) {
        // The queue has room for every permit, so this fails only when the
        // connection's writer is gone, and then nobody is left to answer.
        let _ = self.conn.tx.push(frame);
    }

    /// Queues an error answer to `request`.
    pub fn error(&self, request: &Header, status: Status, message: &str, permit: ConnOut) {
        self.reply(error_frame(request, status, message, permit));
    }

    /// Queues an OK answer carrying `value`, or INTERNAL if it cannot be
    /// encoded.
    pub fn ok<T: serde::Serialize>(&self, request: &Header, value: &T, permit: ConnOut) {
        match mecha_abi::encode(value) {
            Ok(body) => self.reply(OutFrame::guarded(
                request.response(Status::Ok),
                Bytes::new(),
                body.into(),
                permit,
            )),
            Err(e) => self.error(request, Status::Internal, &e.to_string(), permit),
        }
    }

    /// Writes what this session queued on its module links and on itself.
    pub fn flush(&mut self) {
        self.unflushed.flush();
        self.conn.tx.flush();
    }
}
