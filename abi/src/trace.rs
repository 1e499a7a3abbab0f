//! W3C trace context carried in a frame (SPEC.md §2.1): when a request's
//! header has the TRACE flag, its payload starts with [`TRACE_LEN`] bytes —
//! the binary form of a `traceparent` — before the operation's payload.

use std::fmt;

/// Bytes of the binary trace context: version, trace id, parent id, flags.
pub const TRACE_LEN: usize = 26;
/// The only trace-context version this ABI accepts.
pub const TRACE_VERSION: u8 = 0;
/// The W3C `sampled` bit of the trace flags.
pub const SAMPLED: u8 = 0x01;

/// A W3C trace context (`traceparent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    /// 16 bytes identifying the whole trace; never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes identifying the caller's span (the parent); never all zero.
    pub parent_id: [u8; 8],
    /// W3C trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// Why bytes or text are not a valid trace context.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TraceError {
    /// Fewer bytes than [`TRACE_LEN`] follow the header.
    #[error(
        "the TRACE flag is set but the payload has {0} bytes, fewer than the 26 of a trace context"
    )]
    Short(usize),
    /// A version other than 0 (0xff is forbidden by W3C; others are unknown here).
    #[error("trace context version 0x{0:02x} is not supported (expected 0x00)")]
    Version(u8),
    /// The trace id is all zero.
    #[error("trace context has an all-zero trace id")]
    ZeroTraceId,
    /// The parent id is all zero.
    #[error("trace context has an all-zero parent id")]
    ZeroParentId,
    /// Text that is not `00-<32 hex>-<16 hex>-<2 hex>`.
    #[error("malformed traceparent {0:?}: expected 00-<32 hex>-<16 hex>-<2 hex>")]
    Text(String),
}

impl TraceContext {
    /// Decodes and validates the first [`TRACE_LEN`] bytes of `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, TraceError> {
        let Some(b) = bytes.first_chunk::<TRACE_LEN>() else {
            return Err(TraceError::Short(bytes.len()));
        };
        if b[0] != TRACE_VERSION {
            return Err(TraceError::Version(b[0]));
        }
        let mut trace_id = [0u8; 16];
        trace_id.copy_from_slice(&b[1..17]);
        let mut parent_id = [0u8; 8];
        parent_id.copy_from_slice(&b[17..25]);
        let ctx = Self {
            trace_id,
            parent_id,
            flags: b[25],
        };
        ctx.check()
    }

    fn check(self) -> Result<Self, TraceError> {
        if self.trace_id == [0; 16] {
            return Err(TraceError::ZeroTraceId);
        }
        if self.parent_id == [0; 8] {
            return Err(TraceError::ZeroParentId);
        }
        Ok(self)
    }

    /// The 26 wire bytes.
    pub fn encode(&self) -> [u8; TRACE_LEN] {
        let mut b = [0u8; TRACE_LEN];
        b[0] = TRACE_VERSION;
        b[1..17].copy_from_slice(&self.trace_id);
        b[17..25].copy_from_slice(&self.parent_id);
        b[25] = self.flags;
        b
    }

    /// Parses the text form `00-<trace id>-<parent id>-<flags>` (lowercase hex).
    pub fn parse(text: &str) -> Result<Self, TraceError> {
        let bad = || TraceError::Text(text.chars().take(80).collect());
        let parts: Vec<&str> = text.split('-').collect();
        let [version, trace, parent, flags] = parts[..] else {
            return Err(bad());
        };
        if version != "00" || trace.len() != 32 || parent.len() != 16 || flags.len() != 2 {
            return Err(bad());
        }
        let mut trace_id = [0u8; 16];
        let mut parent_id = [0u8; 8];
        let mut flag = [0u8; 1];
        hex_into(trace, &mut trace_id).ok_or_else(bad)?;
        hex_into(parent, &mut parent_id).ok_or_else(bad)?;
        hex_into(flags, &mut flag).ok_or_else(bad)?;
        Self {
            trace_id,
            parent_id,
            flags: flag[0],
        }
        .check()
    }

    /// True when the `sampled` flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

/// The text form, `00-<32 hex>-<16 hex>-<2 hex>`.
impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Fills `out` from lowercase hex; `None` on any other character.
fn hex_into(text: &str, out: &mut [u8]) -> Option<()> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let bytes = text.as_bytes();
    if bytes.len() != out.len() * 2 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = digit(bytes[2 * i])? << 4 | digit(bytes[2 * i + 1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn text_and_binary_round_trip() {
        let ctx = TraceContext::parse(TP).unwrap();
        assert_eq!(ctx.to_string(), TP);
        assert_eq!(TraceContext::decode(&ctx.encode()).unwrap(), ctx);
        assert!(ctx.sampled());
    }

    #[test]
    fn invalid_contexts_are_refused() {
        let mut b = TraceContext::parse(TP).unwrap().encode();
        assert_eq!(TraceContext::decode(&b[..10]), Err(TraceError::Short(10)));
        b[0] = 0xff;
        assert_eq!(TraceContext::decode(&b), Err(TraceError::Version(0xff)));
        b[0] = 0;
        b[1..17].fill(0);
        assert_eq!(TraceContext::decode(&b), Err(TraceError::ZeroTraceId));
        assert!(TraceContext::parse("00-xyz").is_err());
        assert!(TraceContext::parse(&TP.to_uppercase()).is_err());
    }
}
