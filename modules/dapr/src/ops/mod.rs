//! What the gRPC and HTTP servers share, capability by capability: Dapr's
//! options turned into mecha requests, the calls on the caller's native
//! session, and Dapr's errors ([`dapr_error`]), so nothing is written
//! twice.

pub mod bindings;
pub mod callee;
pub mod configuration;
pub mod dapr_error;
pub mod delivery;
pub mod forward;
pub mod hints;
pub mod invoke;
pub mod lock;
pub mod metadata;
pub mod pubsub;
pub mod secrets;
pub mod state;
