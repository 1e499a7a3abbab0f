//! The error every part of the pubsub module answers with: the module's own
//! failures, and the ones every capability shares ([`DriverError`], into
//! which the errors of the SDK's layers convert).

use mecha_module::{DriverError, Wording};

/// Why a pubsub operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PubsubError {
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
    /// The metadata is unusable, the store cannot be reached, its driver
    /// cannot honour an option of the request, or it failed; worded as the
    /// pubsub store's ("pubsub store unavailable: …"), as clients have always
    /// seen it.
    #[error("{}", .0.worded(Wording::store("pubsub store")))]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(PubsubError);
