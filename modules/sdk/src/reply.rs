//! The answer a module gives to one request: a status and payload bytes.

use mecha_abi::msg::ErrorBody;
use mecha_abi::Status;
use serde::Serialize;

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

    /// Refuses an empty request field: the INVALID_ARGUMENT reply "`what`
    /// must not be empty" when `value` is empty.
    pub fn non_empty(what: &str, value: &str) -> Result<(), Reply> {
        if value.is_empty() {
            return Err(Reply::error(
                Status::InvalidArgument,
                format!("{what} must not be empty"),
            ));
        }
        Ok(())
    }

    /// Decodes a request payload, or yields the INVALID_ARGUMENT reply to send.
    pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, Reply> {
        mecha_abi::decode(payload).map_err(|e| Reply::error(Status::InvalidArgument, e.to_string()))
    }
}
