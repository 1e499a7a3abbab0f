//! Payloads of the secrets family (`0x06`).
//!
//! The reply types carry secret values, so their `Debug` output is written by
//! hand and shows only the names and keys: a reply that ends up in a log line
//! or a panic message must not leak what it protects.

use std::fmt;

use serde::{Deserialize, Serialize};

/// SECRET_GET request. An empty `store` names the default secret store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGetRequest {
    /// Component name; empty for the default (the first secret store).
    pub store: String,
    /// The secret's name; must not be empty.
    pub name: String,
}

/// SECRET_GET response: the secret, a map of keys to values.
///
/// A single-value secret (an environment variable, a file of a secret
/// directory, a leaf of a flattened secrets file) is one pair whose key is
/// the secret's name, as in Dapr.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretReply {
    /// The secret's (key, value) pairs, sorted by key in byte order.
    pub data: Vec<(String, String)>,
}

/// SECRET_BULK_GET request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBulkGetRequest {
    /// Component name; empty for the default (the first secret store).
    pub store: String,
}

/// SECRET_BULK_GET response: every secret of the store the caller may read.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretBulkReply {
    /// (secret name, the secret's (key, value) pairs), sorted by name in byte
    /// order; each secret's pairs are sorted by key like [`SecretReply::data`].
    pub secrets: Vec<(String, Vec<(String, String)>)>,
}

/// Stands in for a secret value in `Debug` output.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The pairs of one secret, printed as a map from each key to a redaction
/// marker.
struct RedactedPairs<'a>(&'a [(String, String)]);

impl fmt::Debug for RedactedPairs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(key, _)| (key, Redacted)))
            .finish()
    }
}

impl fmt::Debug for SecretReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretReply")
            .field("data", &RedactedPairs(&self.data))
            .finish()
    }
}

impl fmt::Debug for SecretBulkReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secrets = Secrets(&self.secrets);
        f.debug_struct("SecretBulkReply")
            .field("secrets", &secrets)
            .finish()
    }
}

/// The secrets of a bulk reply, printed by name with their values redacted.
struct Secrets<'a>(&'a [(String, Vec<(String, String)>)]);

impl fmt::Debug for Secrets<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, pairs)| (name, RedactedPairs(pairs))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_names_keys_but_never_values() {
        let reply = SecretReply {
            data: vec![("user".into(), "s3cr3t-value".into())],
        };
        let text = format!("{reply:?} {reply:#?}");
        assert!(text.contains("user"), "{text}");
        assert!(!text.contains("s3cr3t-value"), "{text}");

        let bulk = SecretBulkReply {
            secrets: vec![(
                "db".into(),
                vec![("password".into(), "hunter2-value".into())],
            )],
        };
        let text = format!("{bulk:?} {bulk:#?}");
        assert!(text.contains("db") && text.contains("password"), "{text}");
        assert!(!text.contains("hunter2-value"), "{text}");
    }

    #[test]
    fn wire_layout_is_field_order() {
        let request = SecretGetRequest {
            store: "s".into(),
            name: "n".into(),
        };
        let bytes = crate::encode(&request).expect("encodes");
        assert_eq!(
            bytes,
            [1, 0, 0, 0, 0, 0, 0, 0, b's', 1, 0, 0, 0, 0, 0, 0, 0, b'n']
        );

        let reply = SecretReply {
            data: vec![("k".into(), "v".into())],
        };
        let bytes = crate::encode(&reply).expect("encodes");
        let mut expected = vec![1, 0, 0, 0, 0, 0, 0, 0];
        expected.extend([1, 0, 0, 0, 0, 0, 0, 0, b'k']);
        expected.extend([1, 0, 0, 0, 0, 0, 0, 0, b'v']);
        assert_eq!(bytes, expected);
        assert_eq!(crate::decode::<SecretReply>(&bytes).ok(), Some(reply));
    }

    /// The payloads of the worked examples in `SPEC.md §7.7 and §10`.
    #[test]
    fn spec_draft_examples_encode_as_written() {
        let hex = |bytes: Vec<u8>| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let request = SecretGetRequest {
            store: "vault".into(),
            name: "db-password".into(),
        };
        assert_eq!(
            hex(crate::encode(&request).expect("encodes")),
            "05000000000000007661756c740b0000000000000064622d70617373776f7264"
        );
        let bulk = SecretBulkReply {
            secrets: vec![
                (
                    "db".into(),
                    vec![
                        ("password".into(), "pw".into()),
                        ("user".into(), "app".into()),
                    ],
                ),
                ("token".into(), vec![("token".into(), "t0k".into())]),
            ],
        };
        assert_eq!(
            hex(crate::encode(&bulk).expect("encodes")),
            "0200000000000000020000000000000064620200000000000000080000000000000070617373\
             776f72640200000000000000707704000000000000007573657203000000000000006170700500\
             000000000000746f6b656e01000000000000000500000000000000746f6b656e03000000000000\
             0074306b"
        );
    }
}
