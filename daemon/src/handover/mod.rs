//! Daemon hand-over: a new mechad takes the listening sockets, every live
//! connection with its state, and the modules' places from the running one,
//! so that upgrading the daemon drops nothing (ARCHITECTURE.md, "Daemon
//! hand-over"). `give` is the old daemon's side, `take` the new one's,
//! `freeze` what connections see of it, `wire` the protocol between the two,
//! `upgrade` how an admin starts one and `waiter` who waits for its outcome.

pub mod freeze;
pub mod give;
pub mod take;
pub mod upgrade;
pub mod waiter;
pub mod wire;
