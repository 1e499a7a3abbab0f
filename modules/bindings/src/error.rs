//! The error every part of the bindings module answers with: the module's
//! own failures, and the ones every capability shares ([`DriverError`], into
//! which the errors of the SDK's layers convert).

use mecha_abi::Status;
use mecha_module::{DriverError, Reply, Wording};

/// Why a binding operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BindingError {
    /// The request is malformed: an operation the type does not define, a
    /// missing or malformed parameter, the wrong direction.
    #[error("{0}")]
    Invalid(String),
    /// The tenant may not use the binding (`allowedTenants`).
    #[error("{0}")]
    Denied(String),
    /// A result over `maxResponseBytes`, or a per-binding bound reached
    /// (`maxTenants`).
    #[error("{0}")]
    TooLarge(String),
    /// The request's deadline passed while the outside system worked.
    #[error("{0}")]
    Deadline(String),
    /// A file or key the operation names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The outside system answered with an error of its own (an HTTP status
    /// outside 2xx with `errorIfNot2XX`, an SQL error).
    #[error("{0}")]
    Failed(String),
    /// The metadata is unusable, the outside system cannot be reached, or
    /// the module's own storage failed.
    #[error("{}", .0.worded(Wording::store("binding")))]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(BindingError);

impl From<mecha_mod_pubsub::error::PubsubError> for BindingError {
    fn from(e: mecha_mod_pubsub::error::PubsubError) -> Self {
        use mecha_mod_pubsub::error::PubsubError as P;
        match e {
            P::Invalid(message) => Self::Invalid(message),
            P::Full { .. } => Self::TooLarge(e.to_string()),
            P::Driver(driver) => Self::Driver(driver),
        }
    }
}

impl BindingError {
    /// The status this error is answered with (SPEC §7.9).
    pub fn status(&self) -> Status {
        match self {
            Self::Invalid(_) => Status::InvalidArgument,
            Self::Denied(_) => Status::PermissionDenied,
            Self::TooLarge(_) => Status::ResourceExhausted,
            Self::Deadline(_) => Status::DeadlineExceeded,
            Self::NotFound(_) => Status::NotFound,
            // The outside system's own error is not mecha's fault, and a
            // retry would most likely fail the same way.
            Self::Failed(_) => Status::Internal,
            Self::Driver(driver) => driver.status(),
        }
    }

    /// The error answer for this error.
    pub fn reply(&self) -> Reply {
        Reply::error(self.status(), self.to_string())
    }
}
