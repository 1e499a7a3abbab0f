//! The status codes of the C API (`mecha_status` in `include/mecha.h`): the
//! ABI's status codes unchanged, then negative codes for failures that happen
//! in this library, and the conversion of client errors into them.

use mecha_abi::Status;
use mecha_client::Error;

/// `mecha_status`. `#[repr(C)]` gives it the size and ABI of a C enum (an
/// `int`), so it can be returned to C by value. It is only ever produced by
/// the library; values coming from C are taken as plain `int`s (see
/// `mecha_status_name`), because an out-of-range value in a Rust enum would
/// be undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    /// MECHA_OK
    Ok = 0,
    /// MECHA_NOT_FOUND
    NotFound = 1,
    /// MECHA_ETAG_MISMATCH
    EtagMismatch = 2,
    /// MECHA_INVALID_ARGUMENT
    InvalidArgument = 3,
    /// MECHA_UNKNOWN_OPCODE
    UnknownOpcode = 4,
    /// MECHA_UNSUPPORTED_VERSION
    UnsupportedVersion = 5,
    /// MECHA_PERMISSION_DENIED
    PermissionDenied = 6,
    /// MECHA_RESOURCE_EXHAUSTED
    ResourceExhausted = 7,
    /// MECHA_UNAVAILABLE
    Unavailable = 8,
    /// MECHA_DEADLINE_EXCEEDED
    DeadlineExceeded = 9,
    /// MECHA_INTERNAL
    Internal = 10,
    /// MECHA_UNSUPPORTED
    Unsupported = 11,
    /// MECHA_ERR_CONNECT: the socket could not be connected.
    ErrConnect = -1,
    /// MECHA_ERR_IO: the connection was lost.
    ErrIo = -2,
    /// MECHA_ERR_INVALID: a NULL or non-UTF-8 argument, or a result C cannot carry.
    ErrInvalid = -3,
    /// MECHA_ERR_PROTOCOL: an undecodable answer.
    ErrProtocol = -4,
    /// MECHA_ERR_NOMEM: a result buffer could not be allocated.
    ErrNomem = -5,
    /// MECHA_ERR_PANIC: a bug in this library, caught at the boundary.
    ErrPanic = -6,
}

impl Code {
    /// Every code, in header order; the header drift test compares the
    /// header's enum with this list.
    pub const ALL: [Code; 18] = [
        Code::Ok,
        Code::NotFound,
        Code::EtagMismatch,
        Code::InvalidArgument,
        Code::UnknownOpcode,
        Code::UnsupportedVersion,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::Unavailable,
        Code::DeadlineExceeded,
        Code::Internal,
        Code::Unsupported,
        Code::ErrConnect,
        Code::ErrIo,
        Code::ErrInvalid,
        Code::ErrProtocol,
        Code::ErrNomem,
        Code::ErrPanic,
    ];

    /// The code of a daemon status. The match is exhaustive on purpose: a
    /// status added to the ABI does not compile here until the C API (and
    /// its header) has a code for it.
    pub fn from_status(status: Status) -> Self {
        match status {
            Status::Ok => Code::Ok,
            Status::NotFound => Code::NotFound,
            Status::EtagMismatch => Code::EtagMismatch,
            Status::InvalidArgument => Code::InvalidArgument,
            Status::UnknownOpcode => Code::UnknownOpcode,
            Status::UnsupportedVersion => Code::UnsupportedVersion,
            Status::PermissionDenied => Code::PermissionDenied,
            Status::ResourceExhausted => Code::ResourceExhausted,
            Status::Unavailable => Code::Unavailable,
            Status::DeadlineExceeded => Code::DeadlineExceeded,
            Status::Internal => Code::Internal,
            Status::Unsupported => Code::Unsupported,
        }
    }

    /// The name after `MECHA_` in the header, also what `mecha_status_name`
    /// returns. The ABI statuses reuse the ABI's own names.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => Status::Ok.name(),
            Code::NotFound => Status::NotFound.name(),
            Code::EtagMismatch => Status::EtagMismatch.name(),
            Code::InvalidArgument => Status::InvalidArgument.name(),
            Code::UnknownOpcode => Status::UnknownOpcode.name(),
            Code::UnsupportedVersion => Status::UnsupportedVersion.name(),
            Code::PermissionDenied => Status::PermissionDenied.name(),
            Code::ResourceExhausted => Status::ResourceExhausted.name(),
            Code::Unavailable => Status::Unavailable.name(),
            Code::DeadlineExceeded => Status::DeadlineExceeded.name(),
            Code::Internal => Status::Internal.name(),
            Code::Unsupported => Status::Unsupported.name(),
            Code::ErrConnect => "ERR_CONNECT",
            Code::ErrIo => "ERR_IO",
            Code::ErrInvalid => "ERR_INVALID",
            Code::ErrProtocol => "ERR_PROTOCOL",
            Code::ErrNomem => "ERR_NOMEM",
            Code::ErrPanic => "ERR_PANIC",
        }
    }

    /// The same name as a NUL-terminated static string, for C.
    pub(crate) fn c_name(self) -> &'static std::ffi::CStr {
        match self {
            Code::Ok => c"OK",
            Code::NotFound => c"NOT_FOUND",
            Code::EtagMismatch => c"ETAG_MISMATCH",
            Code::InvalidArgument => c"INVALID_ARGUMENT",
            Code::UnknownOpcode => c"UNKNOWN_OPCODE",
            Code::UnsupportedVersion => c"UNSUPPORTED_VERSION",
            Code::PermissionDenied => c"PERMISSION_DENIED",
            Code::ResourceExhausted => c"RESOURCE_EXHAUSTED",
            Code::Unavailable => c"UNAVAILABLE",
            Code::DeadlineExceeded => c"DEADLINE_EXCEEDED",
            Code::Internal => c"INTERNAL",
            Code::Unsupported => c"UNSUPPORTED",
            Code::ErrConnect => c"ERR_CONNECT",
            Code::ErrIo => c"ERR_IO",
            Code::ErrInvalid => c"ERR_INVALID",
            Code::ErrProtocol => c"ERR_PROTOCOL",
            Code::ErrNomem => c"ERR_NOMEM",
            Code::ErrPanic => c"ERR_PANIC",
        }
    }

    /// The code whose value is `value`, if any.
    pub fn from_value(value: i32) -> Option<Self> {
        Self::ALL.into_iter().find(|c| *c as i32 == value)
    }
}

/// A failed call: the code returned to C and the message kept for
/// `mecha_last_error`.
#[derive(Debug)]
pub struct Failure {
    /// The status the call returns.
    pub code: Code,
    /// The text `mecha_last_error` returns.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// MECHA_ERR_INVALID: the caller passed something unusable.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::ErrInvalid, message)
    }
}

impl From<Error> for Failure {
    fn from(err: Error) -> Self {
        let code = match &err {
            Error::Connect { .. } => Code::ErrConnect,
            Error::Closed(_) => Code::ErrIo,
            Error::Protocol(_) => Code::ErrProtocol,
            // A local timeout is the same outcome as the daemon's own
            // DEADLINE_EXCEEDED, which the Rust client also reports it as.
            Error::Timeout(_) => Code::DeadlineExceeded,
            Error::Status { status, .. } => Code::from_status(*status),
        };
        let message = match &err {
            // The hint every mecha client gives when the daemon is absent
            // (issue 9), with the OS's reason after it.
            Error::Connect { path, error } => {
                format!("is mechad running? socket: {} ({error})", path.display())
            }
            other => other.to_string(),
        };
        Self { code, message }
    }
}

/// What every call returns internally before it becomes a [`Code`].
pub type Outcome = Result<(), Failure>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abi_statuses_keep_their_codes_and_names() {
        for status in Status::ALL {
            let code = Code::from_status(status);
            assert_eq!(code as i32, i32::from(status.code()));
            assert_eq!(code.name(), status.name());
        }
    }

    #[test]
    fn names_and_values_are_unique_and_c_names_agree() {
        for (i, a) in Code::ALL.iter().enumerate() {
            assert_eq!(a.c_name().to_str().ok(), Some(a.name()));
            assert_eq!(Code::from_value(*a as i32), Some(*a));
            for b in &Code::ALL[i + 1..] {
                assert_ne!(*a as i32, *b as i32);
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(Code::from_value(12), None);
    }

    #[test]
    fn client_errors_map_to_codes_and_messages() {
        let connect = Failure::from(Error::Connect {
            path: "/tmp/x.sock".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        });
        assert_eq!(connect.code, Code::ErrConnect);
        assert!(connect
            .message
            .starts_with("is mechad running? socket: /tmp/x.sock ("));
        let status = Failure::from(Error::Status {
            status: Status::EtagMismatch,
            message: "key k".into(),
        });
        assert_eq!(status.code, Code::EtagMismatch);
        assert_eq!(status.message, "ETAG_MISMATCH: key k");
        let timeout = Failure::from(Error::Timeout(std::time::Duration::from_secs(1)));
        assert_eq!(timeout.code, Code::DeadlineExceeded);
        assert_eq!(Failure::from(Error::Closed("x".into())).code, Code::ErrIo);
        assert_eq!(
            Failure::from(Error::Protocol("x".into())).code,
            Code::ErrProtocol
        );
    }
}
