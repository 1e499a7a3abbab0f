//! The error every part of the pubsub module answers with, and how the
//! errors of the SDK's layers (metadata, servers, embedded files) become it.

use mecha_module::embedded;
use mecha_module::metadata::MetadataError;
use mecha_module::remote::RemoteError;

/// Why a pubsub operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PubsubError {
    /// The component's metadata is unusable.
    #[error("component {component:?}: {reason}")]
    Config {
        /// The component name.
        component: String,
        /// What is wrong.
        reason: String,
    },
    /// The request names something invalid (an empty topic, a limit out of
    /// range).
    #[error("{0}")]
    Invalid(String),
    /// The topic holds `maxMessages` messages that some consumer group still
    /// needs, so a publish is refused rather than a message dropped.
    #[error(
        "topic {topic:?} is full: it retains {retained} messages (maxMessages) and consumer \
         group {group:?} has not acknowledged the oldest; publish again once it catches up"
    )]
    Full {
        /// The topic.
        topic: String,
        /// How many messages it retains.
        retained: u64,
        /// The group furthest behind.
        group: String,
    },
    /// The component's driver cannot honour an option of the request; the
    /// message names the component, its type and the feature.
    #[error("{0}")]
    Unsupported(String),
    /// The backing store cannot be reached right now.
    #[error("pubsub store unavailable: {0}")]
    Unavailable(String),
    /// The backing store failed in a way that is not the caller's fault.
    #[error("pubsub store failure: {0}")]
    Internal(String),
}

impl From<MetadataError> for PubsubError {
    fn from(e: MetadataError) -> Self {
        Self::Config {
            component: e.component,
            reason: e.reason,
        }
    }
}

impl From<RemoteError> for PubsubError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Unavailable(message) => Self::Unavailable(message),
            RemoteError::Failed(message) => Self::Internal(message),
        }
    }
}

impl From<embedded::Error> for PubsubError {
    fn from(e: embedded::Error) -> Self {
        match e {
            embedded::Error::Held(message) => Self::Unavailable(message),
            embedded::Error::Failed(message) => Self::Internal(message),
        }
    }
}
