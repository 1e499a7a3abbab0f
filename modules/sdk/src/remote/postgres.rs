//! PostgreSQL connections for drivers: Dapr's `connectionString`, a small
//! bounded pool that connects lazily and replaces broken connections, a
//! deadline on every operation, and errors that tell outages apart.

use std::future::Future;
use std::time::{Duration, Instant};

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime, TimeoutType,
};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use super::{duration, Backoff, Origin, RemoteError};
use crate::metadata::{Metadata, MetadataError};

/// The connection fields every PostgreSQL-backed driver accepts, named as
/// Dapr names them (`timeout` and `timeoutInSeconds` are the newer and older
/// spelling of one setting). Drivers add their own fields to this list.
pub const FIELDS: [&str; 4] = [
    "connectionString",
    "timeout",
    "timeoutInSeconds",
    "maxConns",
];

/// Dapr's default operation timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);

/// The default pool size. A module serves many requests concurrently, but a
/// handful of connections keep a PostgreSQL server (whose connections are
/// processes) comfortable when every node runs a mecha.
const DEFAULT_MAX_CONNS: u64 = 8;

/// A connection borrowed from the pool; it goes back when dropped.
pub type Client = Object;

/// The first pause after a failed connection attempt; it doubles with every
/// further failure up to [`MAX_BACKOFF`] and resets on success.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Reconnect pacing. After a failed connection attempt, requests fail fast
/// with UNAVAILABLE until the pause is over, instead of each one dialling a
/// server that is down (which, for a server that drops packets rather than
/// refusing, would hold every request for the whole connect timeout).
#[derive(Debug)]
struct Pacing {
    /// No attempt before this instant; `None` when the last attempt worked.
    until: Option<Instant>,
    /// The pauses, doubling with each failure.
    backoff: Backoff,
    /// Why the last attempt failed, repeated while failing fast.
    reason: String,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            until: None,
            backoff: Backoff::new(MIN_BACKOFF, MAX_BACKOFF),
            reason: String::new(),
        }
    }
}

/// One component's PostgreSQL connections.
///
/// A deadpool pool: bounded (`maxConns`), opening connections only when a
/// request needs one (so the module starts while the server is down), and
/// dropping a connection found closed, so the next request opens a fresh
/// one: the component recovers on its own when the server returns.
pub struct Postgres {
    pool: Pool,
    timeout: Duration,
    /// Paces connection attempts after a failure; see [`Pacing`].
    pacing: parking_lot::Mutex<Pacing>,
    origin: Origin,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("origin", &self.origin)
            .finish()
    }
}

impl Postgres {
    /// Validates the connection fields of `metadata` (a component of type
    /// `kind`) and prepares the pool without connecting.
    pub fn from_metadata(kind: &str, metadata: &Metadata<'_>) -> Result<Self, MetadataError> {
        let text = metadata.required("connectionString")?;
        // The parse error may quote the string, which can hold a password,
        // so only its kind is reported.
        let mut config: tokio_postgres::Config = text.parse().map_err(|_| {
            metadata.error(
                "metadata field \"connectionString\" is not a valid PostgreSQL connection \
                 string (key=value pairs or a postgres:// URL)",
            )
        })?;
        if config.get_ssl_mode() == SslMode::Require {
            return Err(metadata.error(
                "metadata field \"connectionString\" requires TLS (sslmode=require), but this \
                 build of mecha does not speak TLS to PostgreSQL; use sslmode=disable or prefer",
            ));
        }
        if config.get_hosts().is_empty() {
            return Err(metadata.error("metadata field \"connectionString\" names no host"));
        }
        let timeout =
            match (
                duration(metadata, "timeout")?,
                duration(metadata, "timeoutInSeconds")?,
            ) {
                (Some(_), Some(_)) => return Err(metadata.error(
                    "metadata fields \"timeout\" and \"timeoutInSeconds\" are one setting; give \
                     only one",
                )),
                (a, b) => a.or(b).unwrap_or(DEFAULT_TIMEOUT),
            };
        if timeout.is_zero() {
            return Err(metadata.error("the operation timeout must be more than 0 seconds"));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(timeout);
        }
        let max = metadata
            .whole("maxConns", 1..=1000)?
            .unwrap_or(DEFAULT_MAX_CONNS);
        let origin = Origin {
            component: metadata.component().to_owned(),
            kind: kind.to_owned(),
            server: server(&config),
        };
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(usize::try_from(max).unwrap_or(usize::MAX))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(timeout))
            .create_timeout(Some(timeout))
            .recycle_timeout(Some(timeout))
            .build()
            .map_err(|e| metadata.error(format!("cannot prepare the connection pool: {e}")))?;
        Ok(Self {
            pool,
            timeout,
            pacing: parking_lot::Mutex::new(Pacing::default()),
            origin,
        })
    }

    /// The component this pool serves.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The deadline of one operation (`timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A pooled connection, opened now if none is idle.
    ///
    /// While a pause after a failed attempt lasts, this fails at once with
    /// the failure that started it; see [`Pacing`].
    pub async fn client(&self) -> Result<Object, RemoteError> {
        {
            let pacing = self.pacing.lock();
            if let Some(until) = pacing.until {
                let left = until.saturating_duration_since(Instant::now());
                if !left.is_zero() {
                    return Err(RemoteError::Unavailable(format!(
                        "{} (retrying in {left:?})",
                        pacing.reason
                    )));
                }
            }
        }
        match self.pool.get().await {
            Ok(client) => {
                *self.pacing.lock() = Pacing::default();
                Ok(client)
            }
            Err(e) => {
                // Only a failed or timed-out connection attempt says the
                // server is away; a wait for a busy pool says nothing of it.
                let dialled = matches!(
                    e,
                    PoolError::Backend(_) | PoolError::Timeout(TimeoutType::Create)
                );
                let error = match e {
                    PoolError::Backend(e) => self.error("connect", &e),
                    other => self.origin.unavailable(format!("cannot connect: {other}")),
                };
                if let (true, RemoteError::Unavailable(reason)) = (dialled, &error) {
                    let mut pacing = self.pacing.lock();
                    pacing.until = Some(Instant::now() + pacing.backoff.next_pause());
                    pacing.reason.clone_from(reason);
                }
                Err(error)
            }
        }
    }

    /// Runs `work` with the operation timeout; running out of time is
    /// `Unavailable`, since a server that does not answer cannot serve.
    pub async fn deadline<T>(
        &self,
        doing: &str,
        work: impl Future<Output = Result<T, RemoteError>>,
    ) -> Result<T, RemoteError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(result) => result,
            Err(_) => Err(self.origin.unavailable(format!(
                "cannot {doing}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Column `index` of `row` as a `T`. A mismatch means the table is not
    /// laid out as the driver expects (say one another program created under
    /// the same name): a failure, not a panic and not an outage.
    pub fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
        &self,
        row: &'a tokio_postgres::Row,
        index: usize,
    ) -> Result<T, RemoteError> {
        row.try_get(index).map_err(|e| {
            self.origin.failed(format!(
                "the table has an unexpected layout (column {index}): {e}"
            ))
        })
    }

    /// Classifies a failed statement: a connection that failed or closed, or
    /// a server shutting down or refusing connections, is `Unavailable`;
    /// anything else is `Failed`. `doing` says what was attempted.
    pub fn error(&self, doing: &str, e: &tokio_postgres::Error) -> RemoteError {
        let message = format!("cannot {doing}: {}", describe(e));
        if is_unavailable(e) {
            self.origin.unavailable(message)
        } else {
            self.origin.failed(message)
        }
    }
}

/// A PostgreSQL error with its cause: tokio-postgres's own message for an I/O
/// failure is only "error connecting to server", which hides the reason.
fn describe(e: &tokio_postgres::Error) -> String {
    match (e.as_db_error(), std::error::Error::source(e)) {
        (Some(db), _) => format!("{} ({})", db.message(), db.code().code()),
        (None, Some(source)) => format!("{e}: {source}"),
        (None, None) => e.to_string(),
    }
}

/// Whether `e` means "the server cannot serve right now".
fn is_unavailable(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        // No SQLSTATE: the failure happened below SQL (I/O, closed connection).
        None => true,
        Some(code) => {
            code.code().starts_with("08")
                || [
                    SqlState::ADMIN_SHUTDOWN,
                    SqlState::CRASH_SHUTDOWN,
                    SqlState::CANNOT_CONNECT_NOW,
                    SqlState::TOO_MANY_CONNECTIONS,
                    // Conflicts with concurrent transactions: retrying is the cure.
                    SqlState::T_R_SERIALIZATION_FAILURE,
                    SqlState::T_R_DEADLOCK_DETECTED,
                ]
                .contains(code)
        }
    }
}

/// The first host and port of `config`, for messages.
fn server(config: &tokio_postgres::Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "?".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

/// The table-name field `field` (default `default`): an SQL identifier,
/// optionally schema-qualified, of letters, digits and underscores, since it
/// is spliced into statements and must not carry SQL.
pub fn table_name(
    metadata: &Metadata<'_>,
    field: &str,
    default: &str,
) -> Result<String, MetadataError> {
    let name = metadata.str(field)?.unwrap_or(default);
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 63
            && p.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    let parts: Vec<&str> = name.split('.').collect();
    if parts.len() <= 2 && parts.iter().all(|p| part_ok(p)) {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(metadata.error(format!(
            "metadata field {field:?} must be a table name of letters, digits and underscores \
             (optionally schema.table), at most 63 characters each, not {name:?}"
        )))
    }
}
