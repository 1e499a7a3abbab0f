//! [`Failure`]: why a Dapr request failed, with everything either protocol
//! needs to answer it the way Dapr's runtime does (a native status for the
//! gRPC code, an HTTP status and one of Dapr's `ERR_…` codes).

use mecha_abi::Status;

/// A failed Dapr request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    /// The native status, from which the gRPC code follows
    /// (`grpc::code_of`).
    pub status: Status,
    /// The HTTP status Dapr answers this failure with.
    pub http: u16,
    /// Dapr's error code (`errorCode` of the HTTP error body).
    pub code: &'static str,
    /// What to tell the caller.
    pub message: String,
}

impl Failure {
    /// A failure with every part given.
    pub fn new(status: Status, http: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            http,
            code,
            message: message.into(),
        }
    }

    /// A malformed request or an option the personality refuses: gRPC
    /// INVALID_ARGUMENT, HTTP 400.
    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(Status::InvalidArgument, 400, code, message)
    }

    /// A Dapr feature mecha has no equivalent for: gRPC UNIMPLEMENTED, HTTP
    /// 501, with a message that names it.
    pub fn unsupported(what: impl std::fmt::Display) -> Self {
        Self::new(
            Status::Unsupported,
            501,
            "ERR_NOT_SUPPORTED",
            format!("the mecha Dapr personality does not support {what}"),
        )
    }

    /// A native call's failure, reported under Dapr's error `code` for the
    /// operation. The HTTP status follows the native status where Dapr
    /// distinguishes the case (a bad argument, a refusal, a limit, an
    /// unsupported option) and is Dapr's 500 otherwise.
    pub fn native(e: &mecha_client::Error, code: &'static str) -> Self {
        let status = e.status().unwrap_or(Status::Unavailable);
        let http = match status {
            Status::InvalidArgument => 400,
            Status::PermissionDenied => 403,
            Status::ResourceExhausted => 429,
            Status::UnknownOpcode | Status::Unsupported => 501,
            _ => 500,
        };
        Self::new(status, http, code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn native_failures_keep_their_status_and_take_the_operations_code() {
        let e = mecha_client::Error::Status {
            status: Status::PermissionDenied,
            message: "no".into(),
        };
        let f = Failure::native(&e, "ERR_PUBSUB_PUBLISH_MESSAGE");
        assert_eq!(f.status, Status::PermissionDenied);
        assert_eq!(f.http, 403);
        assert_eq!(f.code, "ERR_PUBSUB_PUBLISH_MESSAGE");
        let gone = mecha_client::Error::Closed("bye".into());
        assert_eq!(Failure::native(&gone, "X").status, Status::Unavailable);
        assert_eq!(Failure::native(&gone, "X").http, 500);
    }

    #[test]
    fn unsupported_names_what() {
        let f = Failure::unsupported("the metadata ttlInSeconds");
        assert_eq!(f.http, 501);
        assert!(f.message.contains("ttlInSeconds"));
    }
}
