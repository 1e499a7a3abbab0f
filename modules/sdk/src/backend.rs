//! What the networked-backend helpers (`redis_backend`, `postgres_backend`)
//! share: their error type and Dapr-style duration fields.

use std::time::Duration;

use crate::metadata::{Metadata, MetadataError};

/// Why a request to a networked backend failed. Drivers map it onto their
/// own error types; both messages name the component, its type and server.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The server cannot be reached or cannot serve right now; retrying
    /// later may succeed, and the connection heals on its own.
    #[error("{0}")]
    Unavailable(String),
    /// The server answered with an error that retrying will not fix.
    #[error("{0}")]
    Failed(String),
}

/// The duration field `name`, if given: a whole number with a unit (`500ms`,
/// `5s`, `2m`, `1h`), or a bare whole number of seconds, as Dapr accepts for
/// `timeoutInSeconds`-style fields.
pub fn duration(metadata: &Metadata<'_>, name: &str) -> Result<Option<Duration>, MetadataError> {
    let Some(raw) = metadata.get(name) else {
        return Ok(None);
    };
    let value = raw.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let scale = match unit {
        "" | "s" => Some(1000),
        "ms" => Some(1),
        "m" => Some(60_000),
        "h" => Some(3_600_000),
        _ => None,
    };
    match (number.parse::<u64>(), scale) {
        (Ok(n), Some(scale)) => Ok(Some(Duration::from_millis(n.saturating_mul(scale)))),
        _ => Err(metadata.error(format!(
            "metadata field {name:?} must be a duration such as 500ms, 5s, 2m or a whole number \
             of seconds, not {raw:?}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use mecha_abi::msg::ComponentSpec;

    use super::*;

    #[test]
    fn durations_take_units_or_seconds() {
        let spec = ComponentSpec {
            name: "c".into(),
            kind: "x.y".into(),
            metadata: [
                ("a", "5"),
                ("b", "250ms"),
                ("c", "2m"),
                ("d", "5 s"),
                ("e", "-1"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        };
        let m = Metadata::lenient(&spec).expect("metadata");
        assert_eq!(duration(&m, "a"), Ok(Some(Duration::from_secs(5))));
        assert_eq!(duration(&m, "b"), Ok(Some(Duration::from_millis(250))));
        assert_eq!(duration(&m, "c"), Ok(Some(Duration::from_secs(120))));
        assert_eq!(duration(&m, "none"), Ok(None));
        for bad in ["d", "e"] {
            let e = duration(&m, bad).expect_err("a bad duration");
            assert!(
                e.reason.contains(&format!("{bad:?} must be a duration")),
                "{e}"
            );
        }
    }
}
