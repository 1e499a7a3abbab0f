//! The answer a module gives to one request: a status and payload bytes.

use mecha_abi::msg::ErrorBody;
use mecha_abi::Status;
use serde::Serialize;

/// The longest key, resource or name a request may carry (SPEC §7, "Names"):
/// long enough for any real key, and short enough, with the tenant prefix
/// added, for every backend's key index (PostgreSQL's B-tree entries stop at
/// about 2.7 KB) — and so that a key is never a way to store data.
pub const MAX_NAME_BYTES: usize = 1024;

/// A response to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The status placed in the response header.
    pub status: Status,
    /// The encoded response payload (an `ErrorBody` unless the status is OK).
    pub payload: Vec<u8>,
    /// True when this OK answer opens a stream (see `Ctx::open_stream`).
    pub opens_stream: bool,
}

impl Reply {
    /// An OK reply carrying `value`. An encoding failure becomes INTERNAL, so a
    /// module never panics on its own output.
    pub fn ok<T: Serialize>(value: &T) -> Self {
        match mecha_abi::encode(value) {
            Ok(payload) => Self {
                status: Status::Ok,
                payload,
                opens_stream: false,
            },
            Err(e) => Self::error(Status::Internal, format!("encoding the reply failed: {e}")),
        }
    }

    /// An OK reply with an empty payload.
    pub fn empty() -> Self {
        Self {
            status: Status::Ok,
            payload: Vec::new(),
            opens_stream: false,
        }
    }

    /// An OK answer carrying `value` that opens the stream the handler got
    /// from `Ctx::open_stream`.
    pub fn stream_ok<T: Serialize>(value: &T) -> Self {
        let mut reply = Self::ok(value);
        reply.opens_stream = reply.status == Status::Ok;
        reply
    }

    /// A non-OK reply with a human-readable message.
    pub fn error(status: Status, message: impl Into<String>) -> Self {
        let body = ErrorBody {
            message: message.into(),
        };
        // An ErrorBody of a String always encodes; fall back to an empty payload
        // rather than panicking if that ever changes.
        Self {
            status,
            payload: mecha_abi::encode(&body).unwrap_or_default(),
            opens_stream: false,
        }
    }

    /// Checks a key-like request field (a state key, a lock resource, a
    /// sequence key, a secret or item name) by SPEC §7's rule for names: it
    /// must not be empty, must be at most [`MAX_NAME_BYTES`] bytes, and must
    /// not hold a NUL byte (which C clients and several backends cannot carry
    /// or would cut short). Otherwise INVALID_ARGUMENT naming the field and
    /// the rule.
    pub fn valid_name(what: &str, value: &str) -> Result<(), Reply> {
        let problem = if value.is_empty() {
            format!("{what} must not be empty")
        } else if value.len() > MAX_NAME_BYTES {
            format!(
                "{what} is {} bytes, more than the limit of {MAX_NAME_BYTES}",
                value.len()
            )
        } else if value.contains('\0') {
            format!("{what} must not contain a NUL byte")
        } else {
            return Ok(());
        };
        Err(Reply::error(Status::InvalidArgument, problem))
    }

    /// Decodes a request payload, or yields the INVALID_ARGUMENT reply to send.
    pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Reply> {
        mecha_abi::decode(payload).map_err(|e| Reply::error(Status::InvalidArgument, e.to_string()))
    }
}

/// Checks that a frame payload of `size` bytes fits the link's frame limit
/// ([`mecha_abi::MAX_FRAME_CAP`]); the error completes a sentence about the
/// frame ("the answer to STATE_BULK_GET …"), naming the size and the limit.
pub(crate) fn check_frame_size(size: usize) -> Result<(), String> {
    let limit = mecha_abi::MAX_FRAME_CAP as usize;
    if size <= limit {
        Ok(())
    } else {
        Err(format!(
            "would be {size} bytes, more than the module link's frame limit of {limit} bytes"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_up_to_the_link_limit_pass_and_larger_ones_name_both_sizes() {
        let limit = mecha_abi::MAX_FRAME_CAP as usize;
        assert!(check_frame_size(limit).is_ok());
        let message = check_frame_size(limit + 1).expect_err("one byte over");
        assert!(message.contains(&(limit + 1).to_string()), "{message}");
        assert!(message.contains(&limit.to_string()), "{message}");
    }
}
