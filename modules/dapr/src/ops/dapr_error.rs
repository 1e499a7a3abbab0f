//! Errors the way Dapr's runtime answers them, for both protocols: one
//! [`DaprError`] carries the gRPC code, the HTTP status and Dapr's
//! `errorCode` (`ERR_…`), so that a capability decides each failure once and
//! the gRPC and HTTP servers only render it. (It names no type of the
//! session layer, which holds per-connection state of `ops`, so that the
//! two do not import each other.)

use mecha_abi::Status;

/// A failure as Dapr reports it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct DaprError {
    /// The gRPC status code.
    pub grpc: tonic::Code,
    /// The HTTP status.
    pub http: u16,
    /// Dapr's error code, the `errorCode` of an HTTP error body.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
}

impl DaprError {
    /// A failure with all three parts given.
    pub fn new(
        grpc: tonic::Code,
        http: u16,
        code: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            grpc,
            http,
            code,
            message: message.into(),
        }
    }

    /// A malformed request (`ERR_MALFORMED_REQUEST`, 400, INVALID_ARGUMENT).
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(
            tonic::Code::InvalidArgument,
            400,
            "ERR_MALFORMED_REQUEST",
            message,
        )
    }

    /// A request refused for a reason Dapr names with `code` (INVALID_ARGUMENT,
    /// 400), such as metadata or an option mecha cannot honour.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(tonic::Code::InvalidArgument, 400, code, message)
    }

    /// A Dapr feature mecha does not serve (`ERR_API_UNIMPLEMENTED`, 501,
    /// UNIMPLEMENTED).
    pub fn unimplemented(message: impl Into<String>) -> Self {
        Self::new(
            tonic::Code::Unimplemented,
            501,
            "ERR_API_UNIMPLEMENTED",
            message,
        )
    }

    /// The gRPC status of this failure.
    pub fn to_status(&self) -> tonic::Status {
        tonic::Status::new(self.grpc, self.message.clone())
    }
}

impl From<DaprError> for tonic::Status {
    fn from(e: DaprError) -> Self {
        e.to_status()
    }
}

/// The Dapr error codes of one API: what a missing store, a failed
/// operation and a stale ETag are called there.
#[derive(Clone, Copy, Debug)]
pub struct Api {
    /// The code of a store the request names that is not configured.
    pub store_not_found: &'static str,
    /// The HTTP status Dapr gives a missing store of this API (400, except
    /// 401 for secret stores).
    pub store_not_found_http: u16,
    /// The code of any other failure of the operation.
    pub failed: &'static str,
}

/// Refuses an empty store name the way Dapr refuses a store it does not
/// know. (Mecha reads an empty name as "the default store"; a Dapr
/// application always names its store, so an empty one is a mistake that
/// must not quietly reach the default.)
pub fn require_store(api: Api, store: &str) -> Result<(), DaprError> {
    if store.is_empty() {
        return Err(DaprError::new(
            tonic::Code::InvalidArgument,
            api.store_not_found_http,
            api.store_not_found,
            "the request names no store",
        ));
    }
    Ok(())
}

/// How a native failure reads as Dapr's: `what` names the operation in
/// the message.
pub fn native(api: Api, what: &str, e: mecha_client::Error) -> DaprError {
    let message = format!("{what}: {e}");
    match e.status() {
        Some(status) => from_status(api, status, message),
        // The connection to mechad failed: retryable, as UNAVAILABLE is.
        None => DaprError::new(tonic::Code::Unavailable, 500, api.failed, message),
    }
}

/// A native status (of a failed call, or of a caller mechad refused) as
/// Dapr's code, HTTP status and error code.
pub fn from_status(api: Api, status: Status, message: String) -> DaprError {
    use tonic::Code;
    match status {
        // Dapr answers a stale ETag ABORTED / 409 with the operation's code.
        Status::EtagMismatch => DaprError::new(Code::Aborted, 409, api.failed, message),
        Status::InvalidArgument if names_unknown_store(&message) => DaprError::new(
            Code::InvalidArgument,
            api.store_not_found_http,
            api.store_not_found,
            message,
        ),
        Status::InvalidArgument => DaprError::malformed(message),
        Status::PermissionDenied => DaprError::new(
            Code::PermissionDenied,
            403,
            "ERR_PERMISSION_DENIED",
            message,
        ),
        Status::ResourceExhausted => {
            DaprError::new(Code::ResourceExhausted, 429, api.failed, message)
        }
        Status::UnknownOpcode | Status::Unsupported => DaprError::unimplemented(message),
        Status::Unavailable => DaprError::new(Code::Unavailable, 500, api.failed, message),
        Status::DeadlineExceeded => {
            DaprError::new(Code::DeadlineExceeded, 500, api.failed, message)
        }
        Status::NotFound => DaprError::new(Code::NotFound, 404, api.failed, message),
        _ => DaprError::new(Code::Internal, 500, api.failed, message),
    }
}

/// Whether an INVALID_ARGUMENT message is the one every module gives a
/// store name that is not configured (`no state store named "x" is
/// configured`, from `mecha-module`'s component table). Dapr gives that
/// case a code of its own, so the wording is matched here; the HTTP tests
/// of an unknown store pin it.
fn names_unknown_store(message: &str) -> bool {
    message.contains("no ") && message.contains(" named ") && message.ends_with("is configured")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATE: Api = Api {
        store_not_found: "ERR_STATE_STORE_NOT_FOUND",
        store_not_found_http: 400,
        failed: "ERR_STATE_SAVE",
    };

    fn status(status: Status, message: &str) -> mecha_client::Error {
        mecha_client::Error::Status {
            status,
            message: message.into(),
        }
    }

    #[test]
    fn a_stale_etag_is_aborted_and_409() {
        let e = native(STATE, "save", status(Status::EtagMismatch, "key \"k\""));
        assert_eq!(
            (e.grpc, e.http, e.code),
            (tonic::Code::Aborted, 409, "ERR_STATE_SAVE")
        );
    }

    #[test]
    fn an_unknown_store_has_the_apis_code() {
        let e = native(
            STATE,
            "save",
            status(
                Status::InvalidArgument,
                "no state store named \"nope\" is configured",
            ),
        );
        assert_eq!(
            (e.grpc, e.http, e.code),
            (
                tonic::Code::InvalidArgument,
                400,
                "ERR_STATE_STORE_NOT_FOUND"
            )
        );
        let e = native(STATE, "save", status(Status::InvalidArgument, "empty key"));
        assert_eq!(e.code, "ERR_MALFORMED_REQUEST");
    }

    #[test]
    fn a_lost_connection_is_retryable() {
        let e = native(STATE, "save", mecha_client::Error::Closed("eof".into()));
        assert_eq!(e.grpc, tonic::Code::Unavailable);
    }
}
