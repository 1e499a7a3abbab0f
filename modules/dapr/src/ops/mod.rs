//! What the gRPC and HTTP servers share: Dapr's semantics of each
//! capability translated into native calls, independent of the protocol the
//! request came in on, and the failures those calls end in.

pub mod bindings;
pub mod callee;
pub mod delivery;
pub mod failure;
pub mod forward;
pub mod invoke;
pub mod pubsub;

pub use failure::Failure;
