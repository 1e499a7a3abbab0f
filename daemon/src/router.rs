//! Where a negotiated request goes: admin operations need an admin, control
//! opcodes are answered by the daemon itself (`control`), and every
//! capability opcode is forwarded to its module (`forward`).

use bytes::Bytes;
use mecha_abi::{Family, Header, Status};

use crate::answer::ConnOut;
use crate::caller::Caller;
use crate::{control, forward};

/// Routes one request of a negotiated session.
pub async fn route(caller: &mut Caller, header: Header, payload: Bytes, permit: ConnOut) {
    if header.opcode.is_admin() && !caller.daemon.is_admin(&caller.peer, &caller.tenant_name()) {
        let msg = format!(
            "{} is an admin operation; uid {} is not an admin of this daemon (see `admins` in the Configuration)",
            header.opcode, caller.peer.uid
        );
        let tenant = caller.tenant_name();
        crate::events::record(crate::events::Kind::AdminRefused, &tenant, &msg);
        return caller.error(&header, Status::PermissionDenied, &msg, permit);
    }
    match header.opcode.family() {
        Family::Control => control::serve(caller, &header, &payload, permit),
        family => forward::forward(caller, family, header, payload, permit).await,
    }
}
