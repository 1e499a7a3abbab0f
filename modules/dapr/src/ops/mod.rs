//! What the gRPC and HTTP servers share, capability by capability: Dapr's
//! options turned into mecha requests, the calls on the caller's native
//! session, and Dapr's errors ([`dapr_error`]), so nothing is written
//! twice.

pub mod configuration;
pub mod dapr_error;
pub mod hints;
pub mod lock;
pub mod metadata;
pub mod secrets;
pub mod state;
