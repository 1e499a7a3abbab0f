//! Connecting to Redis the way every module's `*.redis` driver does: Dapr's
//! connection metadata, one lazily connected, self-healing multiplexed
//! connection per component, and errors that say whether the server is
//! unreachable (retryable) or refused the request.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use crate::backend::{duration, BackendError};
use crate::metadata::{Metadata, MetadataError};

/// The connection fields every Redis-backed driver accepts, named as Dapr
/// names them. Drivers add their own fields to this list.
pub const FIELDS: [&str; 10] = [
    "redisHost",
    "redisPassword",
    "redisUsername",
    "redisDB",
    "enableTLS",
    "dialTimeout",
    "readTimeout",
    "writeTimeout",
    "maxRetries",
    "maxRetryBackoff",
];

/// Dapr's defaults: a 5 s dial timeout, a 3 s read timeout, 3 retries with
/// backoff of at most 2 s between them.
const DEFAULT_DIAL: Duration = Duration::from_secs(5);
const DEFAULT_READ: Duration = Duration::from_secs(3);
const DEFAULT_RETRIES: u64 = 3;
const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(2);

/// The first reconnect delay (Dapr's `redisMinRetryInterval` default); it
/// doubles per attempt up to `maxRetryBackoff`.
const MIN_BACKOFF: Duration = Duration::from_millis(8);

/// One component's Redis connection.
///
/// The connection is a [`ConnectionManager`]: a multiplexed connection that
/// many requests share, created lazily (so the module starts while Redis is
/// down) and re-established with exponential backoff whenever it breaks, so
/// the component recovers on its own when the server returns.
#[derive(Clone)]
pub struct Redis {
    conn: ConnectionManager,
    /// "component \"x\" (state.redis, redis at host:port)", for messages.
    what: String,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis").field("what", &self.what).finish()
    }
}

impl Redis {
    /// Validates the connection fields of `metadata` (a component of type
    /// `kind`) and prepares the connection without connecting. Must be
    /// called inside a Tokio runtime, since the connection's reconnect task
    /// lives there.
    pub fn open(metadata: &Metadata<'_>, kind: &str) -> Result<Self, MetadataError> {
        let host = metadata.required("redisHost")?;
        let (hostname, port) = split_host_port(host).ok_or_else(|| {
            metadata.error(format!(
                "metadata field \"redisHost\" must be host:port, not {host:?}"
            ))
        })?;
        if metadata.bool("enableTLS")? == Some(true) {
            return Err(metadata.error(
                "metadata field \"enableTLS\" is true, but this build of mecha does not speak \
                 TLS to Redis; use a trusted network or a local TLS tunnel and set it to false",
            ));
        }
        let db = metadata.whole("redisDB", 0..=i64::MAX as u64)?.unwrap_or(0);
        let mut settings = RedisConnectionInfo::default()
            .set_db(i64::try_from(db).map_err(|_| metadata.error("redisDB is too large"))?);
        if let Some(password) = metadata.str("redisPassword")? {
            settings = settings.set_password(password);
        }
        if let Some(username) = metadata.str("redisUsername")? {
            settings = settings.set_username(username);
        }
        // A zero timeout would fail every request at once, so it is refused.
        let timeout = |name: &str| match duration(metadata, name)? {
            Some(d) if d.is_zero() => {
                Err(metadata.error(format!("metadata field {name:?} must be more than 0")))
            }
            d => Ok(d),
        };
        let dial = timeout("dialTimeout")?.unwrap_or(DEFAULT_DIAL);
        let read = timeout("readTimeout")?.unwrap_or(DEFAULT_READ);
        // Dapr's write timeout defaults to the read timeout; a multiplexed
        // connection has one response timeout covering both, so the longer wins.
        let write = timeout("writeTimeout")?.unwrap_or(read);
        let retries = metadata
            .whole("maxRetries", 0..=100)?
            .unwrap_or(DEFAULT_RETRIES);
        let backoff = duration(metadata, "maxRetryBackoff")?.unwrap_or(DEFAULT_MAX_BACKOFF);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(dial))
            .set_response_timeout(Some(read.max(write)))
            .set_number_of_retries(usize::try_from(retries).unwrap_or(usize::MAX))
            .set_min_delay(MIN_BACKOFF)
            .set_max_delay(backoff.max(MIN_BACKOFF));
        let what = format!(
            "component {:?} ({kind}, redis at {host})",
            metadata.component()
        );
        let client = ConnectionAddr::Tcp(hostname.to_owned(), port)
            .into_connection_info()
            .map(|info| info.set_redis_settings(settings))
            .and_then(redis::Client::open)
            .map_err(|e| metadata.error(format!("cannot use redisHost {host:?}: {e}")))?;
        let conn = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| metadata.error(format!("cannot prepare the Redis connection: {e}")))?;
        Ok(Self { conn, what })
    }

    /// A handle to the shared connection (cheap: handles share one socket).
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Who this is, for messages: the component, its type and the server.
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Classifies a failed command: a server that cannot be reached (refused,
    /// dropped, timed out, still loading) is `Unavailable`, anything else
    /// `Failed`. `doing` says what was attempted.
    pub fn error(&self, doing: &str, e: &RedisError) -> BackendError {
        let message = format!("{}: cannot {doing}: {e}", self.what);
        if is_unavailable(e) {
            BackendError::Unavailable(message)
        } else {
            BackendError::Failed(message)
        }
    }
}

/// Whether `e` means "the server cannot serve right now".
fn is_unavailable(e: &RedisError) -> bool {
    use redis::ServerErrorKind as S;
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || matches!(
            e.kind(),
            redis::ErrorKind::Io
                | redis::ErrorKind::Server(S::BusyLoading | S::TryAgain | S::MasterDown)
        )
}

/// Splits `host:port` (or `[v6]:port`), refusing a missing or bad port.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let port = port.parse().ok().filter(|&p| p != 0)?;
    (!host.is_empty()).then_some((host, port))
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
}
