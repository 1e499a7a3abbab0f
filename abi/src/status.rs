//! Status codes carried in the header of every response.

/// The outcome of a request. Every non-OK response carries an
/// [`ErrorBody`](crate::msg::ErrorBody) with a human-readable message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Status {
    /// The operation succeeded.
    Ok = 0,
    /// The key (or other named object) does not exist.
    NotFound = 1,
    /// The supplied ETag does not match the stored one.
    EtagMismatch = 2,
    /// The request was malformed: undecodable payload, bad field, bad header bits.
    InvalidArgument = 3,
    /// The opcode is not defined or not served by this daemon.
    UnknownOpcode = 4,
    /// The frame's ABI version is not supported.
    UnsupportedVersion = 5,
    /// The caller's tenant may not do this.
    PermissionDenied = 6,
    /// A limit was hit (frame size, in-flight requests, quota).
    ResourceExhausted = 7,
    /// The serving module is down or restarting; retrying may succeed.
    Unavailable = 8,
    /// The request's deadline passed before it was answered.
    DeadlineExceeded = 9,
    /// A bug or an unexpected failure inside mecha.
    Internal = 10,
    /// The component's driver does not support this operation or option
    /// (for example a TTL on a store without expiry).
    Unsupported = 11,
}

impl Status {
    /// Every defined status, in code order.
    pub const ALL: [Status; 12] = [
        Status::Ok,
        Status::NotFound,
        Status::EtagMismatch,
        Status::InvalidArgument,
        Status::UnknownOpcode,
        Status::UnsupportedVersion,
        Status::PermissionDenied,
        Status::ResourceExhausted,
        Status::Unavailable,
        Status::DeadlineExceeded,
        Status::Internal,
        Status::Unsupported,
    ];

    /// The wire code.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Maps a wire code to a status; codes this version does not know map to
    /// `Internal`, as SPEC.md tells clients to do.
    pub fn from_code(code: u16) -> Self {
        Self::ALL
            .get(usize::from(code))
            .copied()
            .unwrap_or(Status::Internal)
    }

    /// The upper-case name used in SPEC.md and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::NotFound => "NOT_FOUND",
            Status::EtagMismatch => "ETAG_MISMATCH",
            Status::InvalidArgument => "INVALID_ARGUMENT",
            Status::UnknownOpcode => "UNKNOWN_OPCODE",
            Status::UnsupportedVersion => "UNSUPPORTED_VERSION",
            Status::PermissionDenied => "PERMISSION_DENIED",
            Status::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Status::Unavailable => "UNAVAILABLE",
            Status::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Status::Internal => "INTERNAL",
            Status::Unsupported => "UNSUPPORTED",
        }
    }

    /// True when repeating the same request later may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, Status::Unavailable)
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
