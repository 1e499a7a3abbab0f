//! The failures every capability's drivers share ([`DriverError`]), the one
//! place that decides which ABI status each of them is answered with, and the
//! wording a capability gives them in its messages ([`Wording`]).
//!
//! It lives beside the metadata reader, rather than in the module runtime,
//! because the secret-store drivers use it too and mechad links those: the
//! daemon must not link the module runtime (see ARCHITECTURE.md, "Code map").

use std::fmt;

use mecha_abi::Status;

use crate::MetadataError;

/// Why a driver operation failed, in the terms every capability shares.
///
/// Each capability's own error wraps it in a `Driver` variant and adds only
/// what is its own, such as the state store's ETag mismatch. The module runtime converts the
/// errors of its layers (`remote::RemoteError`, `embedded::Error`) into it,
/// and [`MetadataError`] becomes [`DriverError::Config`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DriverError {
    /// The component's metadata (or its source, for a store read from files)
    /// is unusable.
    Config {
        /// The component name.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// The backing store cannot be reached right now; the client may retry.
    Unavailable(String),
    /// The driver does not implement a feature the request needs. Nothing
    /// was changed.
    Unsupported {
        /// The component name.
        component: String,
        /// The component's type, e.g. `state.redis`.
        kind: String,
        /// The missing feature, e.g. "transactions".
        feature: String,
    },
    /// The backing store failed in a way that is not the caller's fault.
    Internal(String),
    /// The request would take its tenant past one of the store's per-tenant
    /// limits (a stored-data quota). Nothing was changed.
    Quota {
        /// The component name.
        component: String,
        /// The metadata field of the limit, e.g. `maxLocksPerTenant`.
        field: &'static str,
        /// The limit.
        limit: u64,
        /// What would pass it, e.g. `lock "c"` or `a total of 1234 bytes`.
        what: String,
    },
}

impl DriverError {
    /// The status a client is answered with: the one mapping every module
    /// uses, as `abi/SPEC.md` §5 and §7 document it. A configuration error
    /// that surfaces in a request is mecha's fault, not the caller's, so it
    /// is INTERNAL; only an outage is retryable.
    pub fn status(&self) -> Status {
        match self {
            Self::Unavailable(_) => Status::Unavailable,
            Self::Unsupported { .. } => Status::Unsupported,
            Self::Config { .. } | Self::Internal(_) => Status::Internal,
            Self::Quota { .. } => Status::ResourceExhausted,
        }
    }

    /// This error as a capability words it in its messages; see [`Wording`].
    pub fn worded(&self, wording: Wording) -> Worded<'_> {
        Worded {
            error: self,
            wording,
        }
    }
}

/// The message of a [`DriverError`] is its [`Wording::STORE`] wording.
impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.worded(Wording::STORE).fmt(f)
    }
}

impl From<MetadataError> for DriverError {
    fn from(e: MetadataError) -> Self {
        Self::Config {
            component: e.component,
            reason: e.reason,
        }
    }
}

/// How a capability names its backing store in the message of an outage
/// ([`DriverError::Unavailable`], "<outage> unavailable: …") or of another
/// failure ([`DriverError::Internal`], "<failure> failure: …").
///
/// Clients see these messages, and the capabilities worded them differently
/// before they shared one error type ("lock store unavailable: …", "secret
/// source unavailable: …"), so each keeps its wording rather than have its
/// messages change under its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wording {
    /// What an outage's message says is unavailable, e.g. "store".
    pub outage: &'static str,
    /// What another failure's message says failed, e.g. "store".
    pub failure: &'static str,
}

impl Wording {
    /// The wording of the state, sequencer and configuration stores, and of
    /// a bare [`DriverError`].
    pub const STORE: Self = Self::store("store");

    /// The same name in both messages, e.g. "lock store".
    pub const fn store(name: &'static str) -> Self {
        Self {
            outage: name,
            failure: name,
        }
    }
}

/// A [`DriverError`] displayed with a capability's [`Wording`].
#[derive(Clone, Copy, Debug)]
pub struct Worded<'a> {
    /// The error.
    error: &'a DriverError,
    /// How its capability words it.
    wording: Wording,
}

impl fmt::Display for Worded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.error {
            DriverError::Config { component, reason } => {
                write!(f, "component {component:?}: {reason}")
            }
            DriverError::Unavailable(message) => {
                write!(f, "{} unavailable: {message}", self.wording.outage)
            }
            DriverError::Unsupported {
                component,
                kind,
                feature,
            } => write!(
                f,
                "component {component:?} of type {kind} does not support {feature}"
            ),
            DriverError::Quota {
                component,
                field,
                limit,
                what,
            } => write!(
                f,
                "component {component:?}: {what} would pass the tenant's {field} ({limit}); \
                 nothing was changed"
            ),
            DriverError::Internal(message) => {
                write!(f, "{} failure: {message}", self.wording.failure)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_keep_each_capability_s_wording() {
        let lock = Wording::store("lock store");
        let down = DriverError::Unavailable("redis is down".to_owned());
        assert_eq!(down.to_string(), "store unavailable: redis is down");
        assert_eq!(
            down.worded(lock).to_string(),
            "lock store unavailable: redis is down"
        );
        let broken = DriverError::Internal("disk full".to_owned());
        assert_eq!(
            broken.worded(lock).to_string(),
            "lock store failure: disk full"
        );
        let config = DriverError::from(MetadataError {
            component: "locks".to_owned(),
            reason: "field \"x\" is unknown".to_owned(),
        });
        assert_eq!(config.worded(lock).to_string(), config.to_string());
        assert_eq!(
            config.to_string(),
            "component \"locks\": field \"x\" is unknown"
        );
    }

    #[test]
    fn statuses_follow_the_spec() {
        let unsupported = DriverError::Unsupported {
            component: "cache".to_owned(),
            kind: "state.example".to_owned(),
            feature: "transactions".to_owned(),
        };
        assert_eq!(unsupported.status(), Status::Unsupported);
        assert_eq!(
            unsupported.to_string(),
            "component \"cache\" of type state.example does not support transactions"
        );
        assert_eq!(
            DriverError::Unavailable(String::new()).status(),
            Status::Unavailable
        );
        assert_eq!(
            DriverError::Internal(String::new()).status(),
            Status::Internal
        );
        let config = DriverError::Config {
            component: String::new(),
            reason: String::new(),
        };
        assert_eq!(config.status(), Status::Internal);
    }
}
