//! The fixed-size, little-endian frame header that every ABI frame starts with.

use crate::opcode::Opcode;
use crate::status::Status;

/// Length of the header in bytes. It never changes between ABI versions, so a
/// reader can always find the magic, version and payload length.
pub const HEADER_LEN: usize = 24;
/// The four magic bytes `MCHA` at offset 0 of every frame.
pub const MAGIC: [u8; 4] = *b"MCHA";
/// The ABI version this crate speaks.
pub const VERSION: u8 = 1;
/// Default maximum payload length accepted on a connection (4 MiB).
pub const DEFAULT_MAX_FRAME: u32 = 4 * 1024 * 1024;
/// Hard upper bound for a configured maximum payload length (64 MiB).
pub const MAX_FRAME_CAP: u32 = 64 * 1024 * 1024;

/// Bits of the header's flags byte.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(pub u8);

impl Flags {
    /// Set on every frame that answers a request.
    pub const RESPONSE: u8 = 0x01;
    /// On a response (with RESPONSE): the request opened a stream, whose id is
    /// the request id. Without RESPONSE: a server push on that stream.
    pub const STREAM: u8 = 0x02;
    /// With STREAM: the last frame of the stream; its status says why it ended
    /// (OK: finished or cancelled; UNAVAILABLE: reset, resubscribe).
    pub const END: u8 = 0x04;
    /// On a request: the payload starts with a 26-byte binary trace context
    /// (`trace::TraceContext`, SPEC.md §2.1), after the tenant prefix on a
    /// module link. Only sent to a daemon whose HELLO reply advertises
    /// [`Features::TRACE`].
    pub const TRACE: u8 = 0x08;
    /// Every bit that v1 defines; any other bit set is invalid.
    pub const KNOWN: u8 = Self::RESPONSE | Self::STREAM | Self::END | Self::TRACE;

    /// True when the RESPONSE bit is set.
    pub fn is_response(self) -> bool {
        self.0 & Self::RESPONSE != 0
    }

    /// True when the STREAM bit is set.
    pub fn is_stream(self) -> bool {
        self.0 & Self::STREAM != 0
    }

    /// True for a server push (STREAM without RESPONSE), including the END frame.
    pub fn is_push(self) -> bool {
        self.is_stream() && !self.is_response()
    }

    /// True when the TRACE bit is set.
    pub fn is_traced(self) -> bool {
        self.0 & Self::TRACE != 0
    }

    /// True when the END bit is set.
    pub fn is_end(self) -> bool {
        self.0 & Self::END != 0
    }
}

/// Feature bits a daemon advertises in the `ext` field of its OK answer to
/// HELLO (SPEC.md §7.1.1). A daemon that predates a feature sends 0 there, so
/// a client uses a feature only when its bit is set, and ignores unknown bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Features(pub u16);

impl Features {
    /// The daemon accepts the TRACE request flag ([`Flags::TRACE`]).
    pub const TRACE: u16 = 0x0001;

    /// True when the daemon accepts trace context on requests.
    pub fn trace(self) -> bool {
        self.0 & Self::TRACE != 0
    }
}

/// A decoded frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version of this frame; v1 peers send 1.
    pub version: u8,
    /// Flag bits, see [`Flags`].
    pub flags: Flags,
    /// The operation ("syscall number").
    pub opcode: Opcode,
    /// Chosen by the requester; echoed in the response.
    pub request_id: u32,
    /// Raw status code; 0 in requests. See [`Status`].
    pub status: u16,
    /// Must be 0 on application connections. On module links it is the length of
    /// the tenant prefix at the start of the payload (see SPEC.md §8).
    pub ext: u16,
    /// Requests: relative deadline in milliseconds, 0 meaning the daemon default.
    pub deadline_ms: u32,
    /// Number of payload bytes that follow the header.
    pub payload_len: u32,
}

/// Why a header could not be accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HeaderError {
    /// The first four bytes were not `MCHA`; the stream cannot be resynchronised.
    #[error("bad magic {found:02x?}: expected \"MCHA\"")]
    BadMagic {
        /// The four bytes that were found.
        found: [u8; 4],
    },
    /// The payload is longer than the receiver accepts.
    #[error("payload of {len} bytes exceeds the maximum frame size of {max} bytes")]
    TooLarge {
        /// Declared payload length.
        len: u64,
        /// The receiver's limit.
        max: u32,
        /// The request id of the oversized frame, so it can be answered.
        request_id: u32,
    },
}

impl Header {
    /// A request header for `opcode` with the given request id and no payload yet.
    pub fn request(opcode: Opcode, request_id: u32) -> Self {
        Self {
            version: crate::VERSION,
            flags: Flags(0),
            opcode,
            request_id,
            status: 0,
            ext: 0,
            deadline_ms: 0,
            payload_len: 0,
        }
    }

    /// The response header that answers `self` with `status`.
    pub fn response(&self, status: Status) -> Self {
        Self {
            version: self.version,
            flags: Flags(Flags::RESPONSE),
            opcode: self.opcode,
            request_id: self.request_id,
            status: status.code(),
            ext: 0,
            deadline_ms: 0,
            payload_len: 0,
        }
    }

    /// A push frame on stream `stream_id` (opened by a request with `opcode`).
    pub fn push(opcode: Opcode, stream_id: u32) -> Self {
        let mut h = Self::request(opcode, stream_id);
        h.flags = Flags(Flags::STREAM);
        h
    }

    /// The frame that ends stream `stream_id` with `status`.
    pub fn end(opcode: Opcode, stream_id: u32, status: Status) -> Self {
        let mut h = Self::request(opcode, stream_id);
        h.flags = Flags(Flags::STREAM | Flags::END);
        h.status = status.code();
        h
    }

    /// Serialises the header into its 24 wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = self.version;
        b[5] = self.flags.0;
        b[6..8].copy_from_slice(&self.opcode.0.to_le_bytes());
        b[8..12].copy_from_slice(&self.request_id.to_le_bytes());
        b[12..14].copy_from_slice(&self.status.to_le_bytes());
        b[14..16].copy_from_slice(&self.ext.to_le_bytes());
        b[16..20].copy_from_slice(&self.deadline_ms.to_le_bytes());
        b[20..24].copy_from_slice(&self.payload_len.to_le_bytes());
        b
    }

    /// Parses 24 header bytes and checks the magic and the length limit.
    ///
    /// The length is checked here, before the caller allocates anything for the
    /// payload. The version, flags and `ext` are *not* judged here: the receiver
    /// answers those with a status while keeping the connection.
    pub fn decode(b: &[u8; HEADER_LEN], max_payload: u32) -> Result<Self, HeaderError> {
        let magic = [b[0], b[1], b[2], b[3]];
        if magic != MAGIC {
            return Err(HeaderError::BadMagic { found: magic });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let header = Self {
            version: b[4],
            flags: Flags(b[5]),
            opcode: Opcode(u16_at(6)),
            request_id: u32_at(8),
            status: u16_at(12),
            ext: u16_at(14),
            deadline_ms: u32_at(16),
            payload_len: u32_at(20),
        };
        if header.payload_len > max_payload {
            return Err(HeaderError::TooLarge {
                len: u64::from(header.payload_len),
                max: max_payload,
                request_id: header.request_id,
            });
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn header_round_trips(version: u8, flags: u8, op: u16, id: u32, status: u16, ext: u16, dl: u32, len in 0u32..=DEFAULT_MAX_FRAME) {
            let h = Header { version, flags: Flags(flags), opcode: Opcode(op), request_id: id, status, ext, deadline_ms: dl, payload_len: len };
            prop_assert_eq!(Header::decode(&h.encode(), DEFAULT_MAX_FRAME), Ok(h));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: [u8; HEADER_LEN]) {
            let _ = Header::decode(&bytes, DEFAULT_MAX_FRAME);
        }
    }

    #[test]
    fn bad_magic_and_oversize_are_rejected() {
        let mut b = Header::request(Opcode::PING, 1).encode();
        b[0] = b'X';
        assert!(matches!(
            Header::decode(&b, 16),
            Err(HeaderError::BadMagic { .. })
        ));
        let mut h = Header::request(Opcode::PING, 1);
        h.payload_len = 17;
        assert_eq!(
            Header::decode(&h.encode(), 16),
            Err(HeaderError::TooLarge {
                len: 17,
                max: 16,
                request_id: 1
            })
        );
    }
}
