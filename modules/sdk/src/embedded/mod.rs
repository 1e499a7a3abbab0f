//! An embedded redb database that survives a hot restart (feature `redb`).
//!
//! redb lets one process at a time open a file. During a hot restart the
//! daemon starts the new instance while the old one still serves, so the new
//! one must not insist on the file at start: [`SharedDb`] opens it eagerly
//! when it can (a first start, or the old instance is gone), and otherwise on
//! first use, retrying until the old instance has exited and released it,
//! for at most [`RELEASE_WAIT`]. Every request's write goes through the
//! database's [`GroupCommit`] writer ([`SharedDb::write`]), which makes
//! concurrent writes durable together with one disk sync. Everything else a
//! driver needs around that lives here too: [`blocking`] for redb's other
//! blocking calls (reads, sweeps), [`redb_file`] for the file a component
//! names, [`ExpiryIndex`] for tables whose rows expire, and
//! [`count_once`]/[`add_count`] for per-tenant row counts.

mod counts;
mod expiry;
mod group;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{Builder, Database, DatabaseError, WriteTransaction};

use crate::DriverError;

pub use counts::{add_count, count_once, Counts};
pub use expiry::{ExpiryIndex, ExpiryKey, ScopedKey, SweepObserver};
pub use group::{Finish, GroupCommit, Limits, Stats};

/// How long a request waits for the previous module instance to release the
/// file during a hot restart. Draining takes milliseconds; this is a bound.
pub const RELEASE_WAIT: Duration = Duration::from_secs(10);

/// Why the database could not be had. It becomes a [`DriverError`]
/// (`From<Error>`): [`Error::Held`] an outage, [`Error::Failed`] an internal
/// failure; capability errors take it through `wraps_driver_error!`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Another process (the previous instance) still holds the file after
    /// [`RELEASE_WAIT`]; a later request may succeed.
    #[error("{0}")]
    Held(String),
    /// The file or its directory cannot be created or opened, or a blocking
    /// task failed.
    #[error("{0}")]
    Failed(String),
}

/// A file still held is an outage: the previous instance releases it within
/// [`RELEASE_WAIT`], so the client's retry may succeed.
impl From<Error> for DriverError {
    fn from(e: Error) -> Self {
        match e {
            Error::Held(message) => Self::Unavailable(message),
            Error::Failed(message) => Self::Internal(message),
        }
    }
}

/// Creates a driver's tables (and migrates old files) on the freshly opened
/// database, before anyone else uses it.
pub type Prepare<E> = fn(&Database) -> Result<(), E>;

/// One redb file, opened now or, while another process holds it, on first
/// use; shared with the blocking tasks that do the I/O (which may outlive a
/// dropped future).
pub struct SharedDb<E> {
    /// The file.
    path: PathBuf,
    /// Adjusts redb's settings (cache size) before each open.
    configure: fn(&mut Builder),
    /// Runs once on the opened database.
    prepare: Prepare<E>,
    /// The open database and its writer; empty only while another process
    /// holds the file.
    db: tokio::sync::OnceCell<Opened>,
}

/// An open database and the one writer thread that commits its requests'
/// writes.
struct Opened {
    /// The database, shared with the blocking tasks that read it.
    db: Arc<Database>,
    /// The writer; dropping it waits for its thread, so the file is released
    /// when the [`SharedDb`] is dropped.
    writer: GroupCommit,
}

impl Opened {
    /// Starts the writer of a freshly opened database.
    fn start(db: Database) -> Result<Self, Error> {
        let db = Arc::new(db);
        let writer = GroupCommit::start(Arc::clone(&db), Limits::DEFAULT)?;
        Ok(Self { db, writer })
    }
}

impl<E> std::fmt::Debug for SharedDb<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedDb")
            .field("path", &self.path)
            .field("opened", &self.db.initialized())
            .finish_non_exhaustive()
    }
}

impl<E: From<Error> + Send + 'static> SharedDb<E> {
    /// Opens (creating it and its directory if needed) and prepares the file
    /// at `path` with redb's default settings. See [`Self::open_with`].
    pub fn open(path: PathBuf, prepare: Prepare<E>) -> Result<Self, E> {
        Self::open_with(path, |_| {}, prepare)
    }

    /// Opens (creating it and its directory if needed) and prepares the file
    /// at `path`, with `configure` adjusting redb's settings.
    ///
    /// A hot-restart successor (see [`crate::is_handoff`]) does not touch the
    /// file here, and neither does anyone while another process holds it:
    /// the first [`Self::db`] opens it then. This blocks on file I/O; it runs
    /// once, when the module starts.
    pub fn open_with(
        path: PathBuf,
        configure: fn(&mut Builder),
        prepare: Prepare<E>,
    ) -> Result<Self, E> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                Error::Failed(format!("creating directory {}: {e}", parent.display()))
            })?;
        }
        let db = tokio::sync::OnceCell::new();
        let eager = if crate::is_handoff() {
            None
        } else {
            open_file(&path, configure, prepare)?
        };
        match eager {
            Some(opened) => {
                let _ = db.set(Opened::start(opened)?);
            }
            None => tracing::info!(
                path = %path.display(),
                "redb file is held by the previous instance; opening it once released"
            ),
        }
        Ok(Self {
            path,
            configure,
            prepare,
            db,
        })
    }

    /// The database, opened on first use if another process held it when
    /// this one started (a hot restart: redb allows one process per file).
    /// Concurrent callers share one opening; a failed one is retried by the
    /// next caller.
    pub async fn db(&self) -> Result<Arc<Database>, E> {
        Ok(Arc::clone(&self.opened_now().await?.db))
    }

    /// Runs `work` in a write transaction on the database's writer thread,
    /// shared with the other requests of its batch, and answers once a
    /// durable commit contains it (see [`GroupCommit::write`]): `Ok` keeps
    /// its writes, `Err` undoes them. The work may run more than once, so it
    /// must not consume what it captures. `bytes` estimates what it writes,
    /// for the bound on one batch.
    pub async fn write<T, F>(&self, bytes: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        self.opened_now().await?.writer.write(bytes, work).await
    }

    /// Like [`Self::write`], with the work deciding whether its transaction
    /// commits or aborts with an answer (see [`GroupCommit::write_or_abort`]).
    pub async fn write_or_abort<T, F>(&self, bytes: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
    {
        self.opened_now()
            .await?
            .writer
            .write_or_abort(bytes, work)
            .await
    }

    /// Queues `work` on the database's writer and returns once it is
    /// queued; `done` gets the answer once a durable commit contains it (see
    /// [`GroupCommit::queue`]). If this returns an error, `done` is dropped
    /// uncalled.
    pub async fn queue<T, F, D>(&self, bytes: usize, work: F, done: D) -> Result<(), E>
    where
        T: Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        self.opened_now()
            .await?
            .writer
            .queue(bytes, work, done)
            .await
    }

    /// The open database and its writer, opening the file first if needed.
    async fn opened_now(&self) -> Result<&Opened, E> {
        self.db
            .get_or_try_init(|| async {
                let deadline = Instant::now() + RELEASE_WAIT;
                let mut pause = Duration::from_millis(2);
                loop {
                    let (path, configure, prepare) =
                        (self.path.clone(), self.configure, self.prepare);
                    if let Some(db) = blocking(move || open_file(&path, configure, prepare)).await?
                    {
                        return Ok(Opened::start(db)?);
                    }
                    if Instant::now() >= deadline {
                        return Err(Error::Held(format!(
                            "redb file {} is still held by another process after {RELEASE_WAIT:?}",
                            self.path.display()
                        ))
                        .into());
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
            })
            .await
    }
}

impl<E> SharedDb<E> {
    /// The database if it is open already; never waits. Periodic work (a
    /// sweep) uses this: until the file is ours there is nothing to do.
    pub fn opened(&self) -> Option<&Arc<Database>> {
        self.db.get().map(|opened| &opened.db)
    }

    /// What the database's writer has done, if the file is open: for tests
    /// and diagnostics.
    pub fn writer_stats(&self) -> Option<Stats> {
        self.db.get().map(|opened| opened.writer.stats())
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens and prepares the file; `None` when another process holds it.
fn open_file<E: From<Error>>(
    path: &Path,
    configure: fn(&mut Builder),
    prepare: Prepare<E>,
) -> Result<Option<Database>, E> {
    let mut builder = Builder::new();
    configure(&mut builder);
    match builder.create(path) {
        Ok(db) => {
            prepare(&db)?;
            Ok(Some(db))
        }
        Err(DatabaseError::DatabaseAlreadyOpen) => Ok(None),
        Err(e) => Err(Error::Failed(format!("opening redb file {}: {e}", path.display())).into()),
    }
}

/// Maps a redb error to [`Error::Failed`], saying which operation failed.
fn failed<E: std::fmt::Display>(operation: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Failed(format!("redb: cannot {operation}: {e}"))
}

/// Runs blocking redb work on tokio's blocking pool, so a slow disk never
/// stalls the module's runtime thread, which also answers health pings.
pub async fn blocking<T, E, F>(work: F) -> Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| E::from(Error::Failed(format!("redb worker task failed: {e}"))))?
}

/// The file a component keeps its data in: `path` (the value of its `path`
/// metadata field: absolute, or relative to `data_dir`), or
/// `<data_dir>/<component>.redb` without it. The error (for the driver's
/// configuration error) says why the component name cannot be a file name.
pub fn redb_file(component: &str, path: Option<&str>, data_dir: &Path) -> Result<PathBuf, String> {
    if let Some(path) = path {
        // `join` keeps an absolute path as it is, which is what we want.
        return Ok(data_dir.join(path));
    }
    // The name becomes a file name, so it must not be able to climb out of
    // the data directory or name a subdirectory.
    let usable = !component.is_empty()
        && component != "."
        && component != ".."
        && !component.contains(['/', '\\', '\0']);
    if usable {
        Ok(data_dir.join(format!("{component}.redb")))
    } else {
        Err(format!(
            "the component name {component:?} cannot be used as a file name; \
             set the metadata field \"path\""
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepare(_: &Database) -> Result<(), Error> {
        Ok(())
    }

    #[test]
    fn a_held_file_is_opened_once_released() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let path = dir.path().join("nested/x.redb");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let old = SharedDb::open(path.clone(), prepare).expect("first open");
        assert!(old.opened().is_some(), "opened eagerly");
        let new = SharedDb::<Error>::open_with(
            path,
            |b| {
                b.set_cache_size(1 << 20);
            },
            prepare,
        )
        .expect("deferred open");
        assert!(new.opened().is_none(), "the file is still held");
        let got = rt.block_on(async {
            let release = async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(old);
            };
            let (_, got) = tokio::join!(release, new.db());
            got
        });
        assert!(got.is_ok(), "{got:?}");
        assert!(new.opened().is_some());
    }

    #[test]
    fn a_failing_prepare_fails_the_open() {
        let dir = tempfile::TempDir::new().expect("create a temporary directory");
        let failing: Prepare<Error> = |_| Err(Error::Failed("no tables".into()));
        let e = SharedDb::open(dir.path().join("x.redb"), failing).expect_err("refused");
        assert_eq!(e, Error::Failed("no tables".into()));
    }

    #[test]
    fn the_file_follows_the_path_or_the_component_name() {
        let data = Path::new("/data");
        assert_eq!(redb_file("s", None, data), Ok(data.join("s.redb")));
        assert_eq!(
            redb_file("s", Some("a/b.db"), data),
            Ok(data.join("a/b.db"))
        );
        assert_eq!(redb_file("s", Some("/abs.db"), data), Ok("/abs.db".into()));
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            let e = redb_file(bad, None, data).expect_err("not a file name");
            assert!(e.contains("\"path\""), "{e}");
        }
    }
}
