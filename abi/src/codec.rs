//! The one pinned payload encoding: bincode 2 with little-endian, fixed-width
//! integers, behind [`encode`] and [`decode`].
//!
//! Everything that encodes or decodes a payload goes through these two functions,
//! so the byte format (written out in SPEC.md §4) can move to another
//! format-compatible crate by changing this file alone.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Upper bound on what one decode may claim. bincode sizes byte and string
/// buffers from their length prefix, so this limit keeps a hostile prefix from
/// allocating more than the largest frame the daemon can be configured to accept.
pub const MAX_DECODE_BYTES: usize = crate::header::MAX_FRAME_CAP as usize;

/// The pinned configuration, with a decode limit of `LIMIT` bytes.
fn config<const LIMIT: usize>() -> impl bincode::config::Config {
    bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<LIMIT>()
}

/// Decodes with the smallest limit bucket that fits `bytes`.
///
/// bincode sizes a string or byte buffer from its length prefix before reading
/// it, charging the claim against the configured limit. A limit tied to the
/// payload's real size (within a factor of four, plus 1 KiB) keeps an 11-byte
/// payload that claims a 60 MiB string from allocating 60 MiB.
fn decode_bounded<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    macro_rules! buckets {
        ($($limit:expr),*) => {
            $(if bytes.len() <= $limit / 4 {
                return bincode::serde::decode_from_slice(bytes, config::<{ $limit }>());
            })*
        };
    }
    buckets!(
        1 << 12,
        1 << 14,
        1 << 16,
        1 << 18,
        1 << 20,
        1 << 22,
        1 << 24
    );
    bincode::serde::decode_from_slice(bytes, config::<MAX_DECODE_BYTES>())
}

/// Why a payload could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// The bytes do not form a valid payload of the expected type.
    #[error("undecodable payload: {0}")]
    Decode(String),
    /// The payload decoded but bytes were left over.
    #[error("undecodable payload: {extra} trailing bytes after the value")]
    Trailing {
        /// How many bytes were not consumed.
        extra: usize,
    },
    /// The value could not be encoded (for example, over the size limit).
    #[error("cannot encode payload: {0}")]
    Encode(String),
}

/// Encodes a payload value.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, PayloadError> {
    bincode::serde::encode_to_vec(value, config::<MAX_DECODE_BYTES>())
        .map_err(|e| PayloadError::Encode(e.to_string()))
}

/// Decodes a payload value, rejecting trailing bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, PayloadError> {
    let (value, used) = decode_bounded(bytes).map_err(|e| PayloadError::Decode(e.to_string()))?;
    if used != bytes.len() {
        return Err(PayloadError::Trailing {
            extra: bytes.len() - used,
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{GetRequest, SetItem, SetRequest};
    use proptest::prelude::*;

    #[test]
    fn huge_length_prefix_is_an_error_not_an_allocation() {
        // A store name claiming 2^62 bytes must fail cleanly.
        let mut bytes = (1u64 << 62).to_le_bytes().to_vec();
        bytes.extend_from_slice(b"abc");
        assert!(decode::<GetRequest>(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let mut bytes = encode(&GetRequest {
            store: String::new(),
            key: "k".into(),
        })
        .unwrap();
        bytes.push(0);
        assert!(matches!(
            decode::<GetRequest>(&bytes),
            Err(PayloadError::Trailing { extra: 1 })
        ));
    }

    proptest! {
        #[test]
        fn set_request_round_trips(store: String, key: String, value: Vec<u8>, etag: Option<String>, ttl: Option<u64>) {
            let req = SetRequest { store, item: SetItem { key, value, etag, ttl_ms: ttl } };
            let back: SetRequest = decode(&encode(&req).unwrap()).unwrap();
            prop_assert_eq!(back, req);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = decode::<SetRequest>(&bytes);
            let _ = decode::<crate::msg::TransactRequest>(&bytes);
        }
    }
}
