//! A [`Failure`] of the protocol-neutral layer as a gRPC status, with the
//! code Dapr's runtime answers (`code_of`).

use crate::ops::Failure;

/// The gRPC status of `f`.
pub(crate) fn status_of(f: Failure) -> tonic::Status {
    tonic::Status::new(super::code_of(f.status), f.message)
}
