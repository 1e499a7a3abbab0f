//! `mecha-abi`: the wire contract between applications, `mechad` and modules.
//!
//! This crate holds no I/O. It defines the fixed 24-byte frame header, the opcode
//! table ("syscall numbers"), the status codes, the payload types of every opcode,
//! and the single pinned payload encoding. `abi/SPEC.md` is the normative text;
//! the golden vectors in `abi/vectors/` pin it byte for byte.
#![forbid(unsafe_code)]

pub mod codec;
pub mod header;
pub mod msg;
pub mod opcode;
pub mod status;
pub mod trace;

pub use codec::{decode, encode, PayloadError, MAX_DECODE_BYTES};
pub use header::{
    Features, Flags, Header, HeaderError, DEFAULT_MAX_FRAME, HEADER_LEN, MAGIC, MAX_FRAME_CAP,
    VERSION,
};
pub use opcode::{Family, Opcode};
pub use status::Status;
pub use trace::{TraceContext, TraceError, TRACE_LEN};

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` while the frame is incomplete (read more bytes), the
/// header once `buf` holds the header and its whole payload, and an error as
/// soon as the header is invalid — before any payload byte is waited for.
pub fn parse_frame(buf: &[u8], max_payload: u32) -> Result<Option<Header>, HeaderError> {
    let Some(head) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let header = Header::decode(head, max_payload)?;
    // payload_len is at most MAX_FRAME_CAP here, so the sum cannot overflow.
    let total = HEADER_LEN + header.payload_len as usize;
    Ok((buf.len() >= total).then_some(header))
}

/// Encodes a complete frame (header followed by payload) into one buffer.
///
/// The header's `payload_len` is overwritten with the real payload length so
/// that a caller can never send a frame whose length disagrees with its body.
pub fn encode_frame(mut header: Header, payload: &[u8]) -> Result<Vec<u8>, HeaderError> {
    header.payload_len = u32::try_from(payload.len()).map_err(|_| HeaderError::TooLarge {
        len: u64::try_from(payload.len()).unwrap_or(u64::MAX),
        max: u32::MAX,
        request_id: header.request_id,
    })?;
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&header.encode());
    out.extend_from_slice(payload);
    Ok(out)
}
