//! W3C trace context: every call carries a `traceparent`; one is generated
//! when the caller sent none (or an invalid one).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

/// `traceparent` if it is a valid version-00 value, else a fresh one.
pub fn ensure(traceparent: &str) -> String {
    if is_valid(traceparent) {
        traceparent.to_string()
    } else {
        format!("00-{:016x}{:016x}-{:016x}-01", random(), random(), random())
    }
}

/// `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, ids not all zero.
pub fn is_valid(tp: &str) -> bool {
    let parts: Vec<&str> = tp.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && parts[0] == "00"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
        && parts[1].bytes().any(|b| b != b'0')
        && parts[2].bytes().any(|b| b != b'0')
}

/// A non-zero 64-bit value. Trace ids need uniqueness, not secrecy: the
/// standard library's randomly keyed hasher over a counter provides it
/// without another dependency.
fn random() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_values_pass_and_others_are_replaced() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(ensure(tp), tp);
        let fresh = ensure("");
        assert!(is_valid(&fresh), "{fresh}");
        assert_ne!(fresh, ensure(""));
        assert!(!is_valid(
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01"
        ));
    }
}
