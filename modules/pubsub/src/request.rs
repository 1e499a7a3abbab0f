//! The checks and defaults every pubsub store applies to what a request
//! names: topic and group names, a subscriber's in-flight limit and its ack
//! deadline. Both delivery engines (the module's own broker and the
//! server-delivered stores) use these, so a request is judged the same
//! whichever kind of store serves it.

use std::time::Duration;

use mecha_abi::msg::PUBSUB_MAX_IN_FLIGHT;

use crate::error::PubsubError;

/// The deliveries a subscriber may hold unacknowledged when it names no limit.
pub const DEFAULT_MAX_IN_FLIGHT: u32 = 64;

/// The name of the group a subscriber joins when it names none.
pub const DEFAULT_GROUP: &str = "default";

/// The longest topic or group name, in bytes. Names are stored in every
/// key of the durable log, so they are kept short.
pub const MAX_NAME: usize = 1024;

/// Rejects an empty or over-long topic or group name; `what` says which it
/// is, for the message.
pub fn check_name(what: &str, name: &str) -> Result<(), PubsubError> {
    if name.is_empty() {
        return Err(PubsubError::Invalid(format!("{what} must not be empty")));
    }
    if name.len() > MAX_NAME {
        return Err(PubsubError::Invalid(format!(
            "{what} is {} bytes long, more than the limit of {MAX_NAME}",
            name.len()
        )));
    }
    Ok(())
}

/// The group a request names, or `default` for the empty name.
pub fn group_name(group: &str, default: &str) -> Result<String, PubsubError> {
    if group.is_empty() {
        return Ok(default.to_owned());
    }
    check_name("group", group)?;
    Ok(group.to_owned())
}

/// The in-flight limit a subscriber asked for: [`DEFAULT_MAX_IN_FLIGHT`]
/// for 0, refused above the protocol's limit.
pub fn max_in_flight(asked: u32) -> Result<u32, PubsubError> {
    match asked {
        0 => Ok(DEFAULT_MAX_IN_FLIGHT),
        n if n > PUBSUB_MAX_IN_FLIGHT => Err(PubsubError::Invalid(format!(
            "max_in_flight {n} is above the limit of {PUBSUB_MAX_IN_FLIGHT}"
        ))),
        n => Ok(n),
    }
}

/// The ack deadline a subscriber asked for in milliseconds, or the store's
/// `default` for 0.
pub fn ack_deadline(asked_ms: u32, default: Duration) -> Duration {
    match asked_ms {
        0 => default,
        ms => Duration::from_millis(u64::from(ms)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_limits_are_checked() {
        assert!(check_name("topic", "").is_err());
        assert!(check_name("topic", &"x".repeat(MAX_NAME)).is_ok());
        assert!(check_name("topic", &"x".repeat(MAX_NAME + 1)).is_err());
        assert_eq!(group_name("", DEFAULT_GROUP), Ok("default".to_owned()));
        assert_eq!(group_name("g", DEFAULT_GROUP), Ok("g".to_owned()));
        assert_eq!(max_in_flight(0), Ok(DEFAULT_MAX_IN_FLIGHT));
        assert!(max_in_flight(PUBSUB_MAX_IN_FLIGHT + 1).is_err());
        let default = Duration::from_secs(30);
        assert_eq!(ack_deadline(0, default), default);
        assert_eq!(ack_deadline(5, default), Duration::from_millis(5));
    }
}
