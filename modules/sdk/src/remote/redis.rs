//! Redis connections for drivers: Dapr's Redis metadata fields, one lazily
//! connected, multiplexed and self-reconnecting `ConnectionManager` per
//! component, operation timeouts, and errors that tell outages apart.

use std::future::Future;
use std::time::Duration;

pub use ::redis as client;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::{ConnectionAddr, IntoConnectionInfo, RedisConnectionInfo, RedisError};

use super::{duration, split_host_port, Origin, RemoteError};
use crate::metadata::{Metadata, MetadataError};

/// The metadata fields of Dapr's Redis components that mecha understands.
/// Drivers add their own (`keyPrefix`, `allowedTenants`) to this list.
pub const FIELDS: [&str; 14] = [
    "redisHost",
    "redisPassword",
    "redisUsername",
    "redisDB",
    "redisType",
    "enableTLS",
    "dialTimeout",
    "readTimeout",
    "writeTimeout",
    "maxRetries",
    "maxRetryBackoff",
    "redisMaxRetries",
    "redisMinRetryInterval",
    "redisMaxRetryInterval",
];

/// Default time to connect (Dapr's `dialTimeout` default is 5 s; a
/// request's own deadline usually ends sooner, so a shorter one answers
/// UNAVAILABLE while the caller still listens).
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Default time for one command to be answered.
const IO_TIMEOUT: Duration = Duration::from_secs(3);

/// One component's Redis server: how to reach it, and its connection.
#[derive(Clone)]
pub struct Redis {
    origin: Origin,
    client: ::redis::Client,
    manager: ConnectionManager,
    db: i64,
    timeout: Duration,
    dial_timeout: Duration,
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password stays out of debug output.
        f.debug_struct("Redis")
            .field("origin", &self.origin)
            .field("db", &self.db)
            .finish_non_exhaustive()
    }
}

impl Redis {
    /// Reads the Redis fields of `metadata` (a component of type `kind`) and
    /// prepares a connection without connecting: the first command connects,
    /// and a lost connection is re-made by the next command, with backoff.
    /// Must be called inside a Tokio runtime.
    ///
    /// Refused at load, naming the field: a missing `redisHost`, a bad
    /// number or duration, `redisType: cluster`, `enableTLS: true` (this
    /// build has no TLS).
    pub fn from_metadata(kind: &str, metadata: &Metadata<'_>) -> Result<Self, MetadataError> {
        let host = metadata.required("redisHost")?;
        let (name, port) = split_host_port(host).ok_or_else(|| {
            metadata.error(format!(
                "metadata field \"redisHost\" must be host:port, not {host:?}"
            ))
        })?;
        if let Some(kind) = metadata.str("redisType")? {
            if !kind.eq_ignore_ascii_case("node") {
                return Err(metadata.error(format!(
                    "metadata field \"redisType\" is {kind:?}; only \"node\" is supported \
                     (Redis Cluster is not)"
                )));
            }
        }
        if metadata.bool("enableTLS")? == Some(true) {
            return Err(metadata.error(
                "metadata field \"enableTLS\" is true, but this build of mecha has no TLS \
                 support for Redis; use a TLS-terminating proxy on loopback or leave it false",
            ));
        }
        let db = metadata
            .whole("redisDB", 0..=(i64::MAX as u64))?
            .unwrap_or(0);
        let db = i64::try_from(db).unwrap_or(0);
        let dial_timeout = duration(metadata, "dialTimeout")?.unwrap_or(DIAL_TIMEOUT);
        let read = duration(metadata, "readTimeout")?;
        let write = duration(metadata, "writeTimeout")?;
        let timeout = match (read, write) {
            (None, None) => IO_TIMEOUT,
            (r, w) => r.unwrap_or(Duration::ZERO).max(w.unwrap_or(Duration::ZERO)),
        };
        let timeout = if timeout.is_zero() {
            IO_TIMEOUT
        } else {
            timeout
        };
        // Dapr has two spellings for the retry settings (the older
        // `maxRetries`/`maxRetryBackoff` and the `redis…` ones); either works.
        let retries = match metadata.whole("redisMaxRetries", 0..=100)? {
            Some(n) => Some(n),
            None => metadata.whole("maxRetries", 0..=100)?,
        }
        .unwrap_or(2);
        let min_delay =
            duration(metadata, "redisMinRetryInterval")?.unwrap_or(Duration::from_millis(8));
        let max_delay = match duration(metadata, "redisMaxRetryInterval")? {
            Some(d) => Some(d),
            None => duration(metadata, "maxRetryBackoff")?,
        }
        .unwrap_or(Duration::from_millis(512));

        let mut redis = RedisConnectionInfo::default().set_db(db);
        if let Some(user) = metadata.str("redisUsername")? {
            redis = redis.set_username(user);
        }
        if let Some(password) = metadata.get("redisPassword").filter(|p| !p.is_empty()) {
            redis = redis.set_password(password);
        }
        let info = ConnectionAddr::Tcp(name.to_owned(), port)
            .into_connection_info()
            .map_err(|e| metadata.error(format!("metadata field \"redisHost\": {e}")))?
            .set_redis_settings(redis);
        let client = ::redis::Client::open(info)
            .map_err(|e| metadata.error(format!("cannot prepare the Redis client: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(dial_timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(usize::try_from(retries).unwrap_or(2))
            .set_min_delay(min_delay)
            .set_max_delay(max_delay);
        let manager = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|e| metadata.error(format!("cannot prepare the Redis connection: {e}")))?;
        Ok(Self {
            origin: Origin {
                component: metadata.component().to_owned(),
                kind: kind.to_owned(),
                server: host.to_owned(),
            },
            client,
            manager,
            db,
            timeout,
            dial_timeout,
        })
    }

    /// The component this connection serves.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The database number (`redisDB`), for keyspace notification channels.
    pub fn db(&self) -> i64 {
        self.db
    }

    /// The shared multiplexed connection. Cloning it is cheap; every clone
    /// uses the same socket.
    pub fn connection(&self) -> ConnectionManager {
        self.manager.clone()
    }

    /// Runs one operation on the shared connection, bounded by the
    /// component's timeout (the connection's own timeouts do not cover the
    /// wait for a reconnect), and maps its error.
    pub async fn run<T, F, Fut>(&self, op: F) -> Result<T, RemoteError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let limit = self.timeout + self.dial_timeout;
        match tokio::time::timeout(limit, op(self.connection())).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(self
                .origin
                .unavailable(format!("no answer within {limit:?}"))),
        }
    }

    /// A new dedicated publish/subscribe connection (subscriptions cannot
    /// share the multiplexed one), within the dial timeout.
    pub async fn pubsub(&self) -> Result<PubSub, RemoteError> {
        match tokio::time::timeout(self.dial_timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => Ok(pubsub),
            Ok(Err(e)) => Err(self.error(&e)),
            Err(_) => Err(self
                .origin
                .unavailable(format!("no connection within {:?}", self.dial_timeout))),
        }
    }

    /// Maps a Redis error: connection-level failures are outages
    /// (UNAVAILABLE), anything the server said is a failure.
    pub fn error(&self, e: &RedisError) -> RemoteError {
        if is_outage(e) {
            self.origin.unavailable(e)
        } else {
            self.origin.failed(e)
        }
    }
}

/// Whether `e` means the server could not be reached or the connection was
/// lost, or the server says it cannot serve yet (still loading its data, a
/// replica without its master), as opposed to any other answer.
pub fn is_outage(e: &RedisError) -> bool {
    use ::redis::ServerErrorKind as S;
    e.is_io_error()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ::redis::ErrorKind::Io
                | ::redis::ErrorKind::Server(S::BusyLoading | S::TryAgain | S::MasterDown)
        )
}
