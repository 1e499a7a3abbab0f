//! The client's error type: transport failures and daemon statuses.

use mecha_abi::Status;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be connected.
    // The OS error is part of the message rather than a `source`, so that
    // printing the error chain does not repeat it.
    #[error("cannot connect: is mechad running? socket: {path}: {error}")]
    Connect {
        /// The socket path.
        path: std::path::PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The connection closed before the answer arrived.
    #[error("connection to mechad closed: {0}")]
    Closed(String),
    /// The daemon answered with a non-OK status.
    #[error("{status}: {message}")]
    Status {
        /// The status code.
        status: Status,
        /// The daemon's explanation.
        message: String,
    },
    /// The answer could not be decoded, or broke the protocol.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// No answer arrived within the call's deadline.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
}

impl Error {
    /// The daemon's status, when the failure is one.
    pub fn status(&self) -> Option<Status> {
        match self {
            Error::Status { status, .. } => Some(*status),
            Error::Timeout(_) => Some(Status::DeadlineExceeded),
            _ => None,
        }
    }

    /// True when the daemon reported that the key or store does not exist.
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(Status::NotFound)
    }
}
