//! Connections to backing servers (Redis, PostgreSQL, etcd) shared by every
//! driver that uses one: metadata read the way Dapr spells it, connections
//! that are made lazily (a module starts while its server is down) and re-made
//! with backoff after the server goes away, and one error type that tells an
//! outage (UNAVAILABLE, retryable) from any other failure.

#[cfg(feature = "etcd")]
pub mod etcd;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;

use std::time::Duration;

use crate::metadata::{Metadata, MetadataError};
use crate::DriverError;

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

/// An outage stays an outage: only it is answered UNAVAILABLE, which clients
/// retry.
impl From<RemoteError> for DriverError {
    fn from(e: RemoteError) -> Self {
        match e {
            RemoteError::Unavailable(message) => Self::Unavailable(message),
            RemoteError::Failed(message) => Self::Internal(message),
        }
    }
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

/// The duration field `name`, if given. Dapr's networked components read a
/// bare number as seconds (`timeoutInSeconds`), so this one does too; see
/// [`Metadata::duration`] for the rest of the notation.
pub fn duration(metadata: &Metadata<'_>, name: &str) -> Result<Option<Duration>, MetadataError> {
    metadata.duration(name, Duration::from_secs(1))
}

/// Splits `host:port` (`[v6]:port` for IPv6 literals), refusing a missing
/// host or a missing, bad or zero port.
#[cfg_attr(not(any(feature = "redis", feature = "etcd")), allow(dead_code))]
pub(crate) fn split_host_port(text: &str) -> Option<(&str, u16)> {
    let (host, port) = text.trim().rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok().filter(|&p| p != 0)?;
    (!host.is_empty()).then_some((host, port))
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
    fn host_ports_are_checked() {
        assert_eq!(split_host_port("localhost:6379"), Some(("localhost", 6379)));
        assert_eq!(split_host_port("[::1]:7000"), Some(("::1", 7000)));
        assert_eq!(split_host_port("localhost"), None);
        assert_eq!(split_host_port(":6379"), None);
        assert_eq!(split_host_port("h:0"), None);
        assert_eq!(split_host_port("h:x"), None);
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
