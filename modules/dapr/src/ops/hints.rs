//! Request metadata (Dapr's per-request `metadata` map, or `metadata.*`
//! query parameters over HTTP): the keys an API accepts. Dapr hands these
//! maps to its components, and what a key means depends on the component;
//! mecha's stores understand none of them except the ones an API maps
//! (`ttlInSeconds` for state). A key Dapr documents as an optional hint to
//! the store, which mecha can ignore without changing what the caller gets,
//! is accepted; any other key is refused with its name, so that a request
//! whose meaning depends on it is never served silently without it.

use std::collections::HashMap;

use super::dapr_error::DaprError;

/// Hints every state operation accepts and ignores: `contentType` (Dapr
/// passes it so that a store may index JSON; mecha stores values as opaque
/// bytes, and returns them as they were saved either way) and
/// `partitionKey` (a partitioned store's placement hint; mecha's stores are
/// not partitioned by the caller).
pub const STATE_HINTS: &[&str] = &["contentType", "partitionKey"];

/// Checks that `metadata` holds only `mapped` keys (which the caller
/// translates) and `hints`; otherwise INVALID_ARGUMENT naming the first
/// other key, in sorted order so that the answer does not depend on the
/// map's order.
pub fn check(
    metadata: &HashMap<String, String>,
    mapped: &[&str],
    hints: &[&str],
    api: &str,
) -> Result<(), DaprError> {
    let mut unknown: Vec<&String> = metadata
        .keys()
        .filter(|k| !mapped.contains(&k.as_str()) && !hints.contains(&k.as_str()))
        .collect();
    unknown.sort();
    match unknown.first() {
        None => Ok(()),
        Some(key) => Err(DaprError::malformed(format!(
            "the {api} request metadata {key:?} is not supported by mecha (supported: {})",
            supported(mapped, hints)
        ))),
    }
}

fn supported(mapped: &[&str], hints: &[&str]) -> String {
    let all: Vec<&str> = mapped.iter().chain(hints).copied().collect();
    if all.is_empty() {
        "none".into()
    } else {
        all.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(keys: &[&str]) -> HashMap<String, String> {
        keys.iter()
            .map(|k| (k.to_string(), "v".to_string()))
            .collect()
    }

    #[test]
    fn known_keys_pass_and_others_are_named() {
        assert!(check(
            &map(&["ttlInSeconds", "contentType"]),
            &["ttlInSeconds"],
            STATE_HINTS,
            "state"
        )
        .is_ok());
        let e = check(&map(&["zeta", "alpha"]), &[], STATE_HINTS, "state").unwrap_err();
        assert_eq!(e.http, 400);
        assert!(e.message.contains("\"alpha\""), "{}", e.message);
        let e = check(&map(&["x"]), &[], &[], "secrets").unwrap_err();
        assert!(e.message.contains("supported: none"), "{}", e.message);
    }
}
