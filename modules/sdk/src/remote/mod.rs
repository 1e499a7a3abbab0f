//! Connections to backing servers (Redis, etcd) shared by every driver that
//! uses one: metadata read the way Dapr spells it, connections that are made
//! lazily (a module starts while its server is down) and re-made with backoff
//! after the server goes away, and one error type that tells an outage
//! (UNAVAILABLE, retryable) from any other failure.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

use crate::metadata::{Metadata, MetadataError};

/// Why a call to a backing server failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The server cannot be reached (refused, reset, timed out). The message
    /// names the component, its type and the server.
    #[error("{0}")]
    Unavailable(String),
    /// The server answered, but with a failure that is not an outage.
    #[error("{0}")]
    Failed(String),
}

/// Which component a connection serves, for error messages: every message
/// about a backing server names the component, its type and the server, so an
/// operator reading a client's error knows where to look.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The component name.
    pub component: String,
    /// The component type, such as `lock.redis`.
    pub kind: String,
    /// The server(s), as configured (`host:port`, comma-separated).
    pub server: String,
}

impl Origin {
    /// An outage of this component's server.
    pub fn unavailable(&self, what: impl std::fmt::Display) -> RemoteError {
        RemoteError::Unavailable(format!(
            "component {:?} ({}): server {} is unavailable: {what}",
            self.component, self.kind, self.server
        ))
    }

    /// A failure of this component's server that is not an outage.
    pub fn failed(&self, what: impl std::fmt::Display) -> RemoteError {
        RemoteError::Failed(format!(
            "component {:?} ({}): server {} failed: {what}",
            self.component, self.kind, self.server
        ))
    }
}

/// Reads the duration field `name` (Go's notation, as Dapr uses: `500ms`,
/// `5s`, `1m`; a bare `0` is zero), if given.
pub fn duration(metadata: &Metadata<'_>, name: &str) -> Result<Option<Duration>, MetadataError> {
    let Some(value) = metadata.get(name) else {
        return Ok(None);
    };
    parse_duration(value.trim()).map(Some).ok_or_else(|| {
        metadata.error(format!(
            "metadata field {name:?} must be a duration such as 500ms, 5s or 1m, not {value:?}"
        ))
    })
}

/// Parses one number followed by one unit (`ns`, `us`, `ms`, `s`, `m`, `h`).
/// Compound forms (`1m30s`) are not needed by any field here and are refused.
fn parse_duration(text: &str) -> Option<Duration> {
    if text == "0" {
        return Some(Duration::ZERO);
    }
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ns" => number / 1e9,
        "us" | "µs" => number / 1e6,
        "ms" => number / 1e3,
        "s" => number,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

/// Exponential backoff with jitter between reconnect attempts of a
/// background task (a watch), so a server that is down is not hammered and
/// many watchers do not retry in lockstep.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `min`, doubling up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        Self {
            next: min,
            min,
            max,
        }
    }

    /// The pause before the next attempt (±25 % jitter), doubling the one after.
    pub fn next_pause(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        // The sub-second clock is random enough to spread retries; a real
        // random number generator would be one more dependency for nothing.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = f64::from(nanos % 1000) / 1000.0 * 0.5 + 0.75;
        base.mul_f64(jitter)
    }

    /// Back to the shortest pause, after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("5 parsecs"), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(300));
        let first = b.next_pause();
        assert!(first >= Duration::from_millis(75) && first <= Duration::from_millis(125));
        b.next_pause();
        let capped = b.next_pause();
        assert!(capped <= Duration::from_millis(375), "{capped:?}");
        b.reset();
        assert!(b.next_pause() <= Duration::from_millis(125));
    }
}
