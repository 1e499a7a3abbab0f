//! Group commit: one writer thread per redb database runs the write
//! transactions of many requests together and makes them durable with one
//! fsync.
//!
//! redb allows one write transaction at a time, and a transaction committed
//! with `Durability::Immediate` costs a disk sync. Committing every request
//! that way caps a store at one sync per write, however many clients wait.
//! [`GroupCommit`] instead takes requests from a bounded queue and runs
//! every request already waiting, up to a bound, in one write transaction,
//! which it then commits with `Durability::Immediate`: one sync for the
//! whole batch. Only then is any request of the batch answered, so no
//! acknowledged write can be lost. A batch of one is exactly one durable
//! transaction, as without group commit.
//!
//! Each request stays all-or-nothing. A request that fails (an ETag
//! mismatch, a quota refusal) may already have written part of its work
//! into the shared transaction, so the writer aborts the transaction, runs
//! the batch's earlier successful requests again in a fresh one (their work
//! is deterministic given the same state, which the replay restores),
//! commits that with `Durability::None` (no sync; redb persists it with the
//! batch's final `Immediate` commit) and goes on with the next request in
//! another transaction. A failure thus costs one replay of the requests
//! before it since the last such commit; each request is replayed at most
//! once per failure after it, and a failure after a replay starts from an
//! empty prefix, so a tenant sending failing requests cannot make a batch
//! quadratic. A later request of a batch sees the effects of the earlier
//! ones, as if they had run one by one, so ETags and quotas chain.
//!
//! Shared transactions are what make this pay: a redb commit, even without
//! a sync, rewrites and checksums the b-tree pages a transaction touched,
//! which costs far more than the writes of a small request, so committing
//! each request on its own (even with `Durability::None`) would make the
//! writer thread, not the disk, the limit (see BENCHMARKS.md, "Group
//! commit").
//!
//! Other transactions opened on the same database (a periodic sweep) wait
//! for redb's write lock between two batches; an `Immediate` commit of
//! theirs also persists a batch's non-durable prefix, which is harmless.
//! After a failure, readers may see the batch's replayed prefix before the
//! batch is durable and before its requests are answered (Redis with
//! `appendfsync always` behaves the same way); a crash then loses only
//! writes that were never acknowledged.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::{mpsc, oneshot};

use super::{failed, Error};

/// How much a writer queues and how much one durable commit covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests waiting for the writer. When the queue is full, a caller
    /// waits (asynchronously) for room: backpressure, never unbounded memory.
    pub queue: usize,
    /// The most requests one durable commit covers, so the answer to a
    /// request never waits for more than this many others.
    pub batch_jobs: usize,
    /// The most bytes (as the callers estimate them) one durable commit
    /// covers, so a flood of large transactions still ends its batch soon
    /// and the requests queued behind it get their turn.
    pub batch_bytes: usize,
}

impl Limits {
    /// The limits every embedded store uses. The queue holds requests that
    /// the module's request slots (4096) already bound; 1024 keeps a burst
    /// from waiting on the queue at the loads the benchmarks run (256
    /// connections) while bounding what waits here. A batch of 256 requests
    /// or 4 MiB amortises a sync over many requests and keeps the wait for
    /// one batch to a few milliseconds.
    pub const DEFAULT: Self = Self {
        queue: 1024,
        batch_jobs: 256,
        batch_bytes: 4 << 20,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What a request's work decided about its writes.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish<T> {
    /// Keep the writes and answer `T` once they are durable.
    Commit(T),
    /// The work wrote nothing (e.g. a lock release refused because the
    /// caller does not hold the lock): answer `T`, still after the batch is
    /// durable, since `T` may depend on what earlier requests of the batch
    /// wrote. Work that has written must return `Err` to undo it instead.
    Abort(T),
}

/// What the writer has done so far; a snapshot of [`GroupCommit`]'s counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Requests run.
    pub jobs: u64,
    /// Batches run: each ends with one durable commit, unless none of its
    /// requests changed anything.
    pub batches: u64,
    /// `Immediate` commits made: one per batch that changed something.
    pub durable_commits: u64,
    /// Requests run again after a later request of their batch failed.
    pub replays: u64,
}

/// The writer's counters, shared with its thread.
#[derive(Debug, Default)]
struct Counters {
    jobs: AtomicU64,
    batches: AtomicU64,
    durable_commits: AtomicU64,
    replays: AtomicU64,
}

/// What running a request's work in a transaction came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ran {
    /// It wrote what it meant to; keep it.
    Kept,
    /// It wrote nothing; nothing to undo.
    Unchanged,
    /// It failed (or panicked) and may have written part of its work, which
    /// must be undone.
    Failed,
}

/// A queued request's work and answer, with its types erased.
trait Request: Send {
    /// Runs the work in `txn`, holding its answer (a later run replaces it).
    fn run(&mut self, txn: &WriteTransaction) -> Ran;

    /// Sends the held answer, or the batch's error if the batch is not
    /// durable.
    fn answer(self: Box<Self>, batch: Result<(), Error>);
}

/// A request as its caller made it.
struct Typed<T, E, F, D> {
    work: F,
    held: Option<Result<T, E>>,
    done: D,
}

impl<T, E, F, D> Request for Typed<T, E, F, D>
where
    T: Send,
    E: From<Error> + Send,
    F: FnMut(&WriteTransaction) -> Result<Finish<T>, E> + Send,
    D: FnOnce(Result<T, E>) + Send,
{
    fn run(&mut self, txn: &WriteTransaction) -> Ran {
        // A panic in the work fails only its request, as a panic in a
        // blocking task would, and its writes are undone like a failure's.
        let (ran, held) = match catch_unwind(AssertUnwindSafe(|| (self.work)(txn))) {
            Ok(Ok(Finish::Commit(answer))) => (Ran::Kept, Ok(answer)),
            Ok(Ok(Finish::Abort(answer))) => (Ran::Unchanged, Ok(answer)),
            Ok(Err(e)) => (Ran::Failed, Err(e)),
            Err(_) => (
                Ran::Failed,
                Err(Error::Failed("redb: a write panicked; it was rolled back".to_owned()).into()),
            ),
        };
        self.held = Some(held);
        ran
    }

    fn answer(self: Box<Self>, batch: Result<(), Error>) {
        let held = self.held.unwrap_or_else(|| Err(stopped().into()));
        (self.done)(batch.map_err(E::from).and(held));
    }
}

/// One queued request.
struct Job {
    /// What the caller estimates the request writes, for the batch bound.
    bytes: usize,
    /// The work and its answer.
    request: Box<dyn Request>,
}

/// The writer of one database: a thread fed by a bounded queue (see the
/// module documentation). Dropping it closes the queue and waits for the
/// thread to finish the requests already queued, so the database file is
/// released by the time the drop returns.
pub struct GroupCommit {
    /// The queue; `None` only while dropping.
    queue: Option<mpsc::Sender<Job>>,
    /// The writer thread; `None` only while dropping.
    thread: Option<JoinHandle<()>>,
    /// What the thread has done.
    counters: Arc<Counters>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl GroupCommit {
    /// Starts the writer thread of `db`.
    pub fn start(db: Arc<Database>, limits: Limits) -> Result<Self, Error> {
        // Zero would make a queue that holds nothing (tokio panics on it) or
        // batches that end before they begin; one is the smallest that works.
        let limits = Limits {
            queue: limits.queue.max(1),
            batch_jobs: limits.batch_jobs.max(1),
            batch_bytes: limits.batch_bytes.max(1),
        };
        let (sender, receiver) = mpsc::channel(limits.queue);
        let counters = Arc::new(Counters::default());
        let shared = Arc::clone(&counters);
        let thread = std::thread::Builder::new()
            .name("redb-writer".to_owned())
            .spawn(move || serve(&db, receiver, limits, &shared))
            .map_err(|e| Error::Failed(format!("starting the redb writer thread: {e}")))?;
        Ok(Self {
            queue: Some(sender),
            thread: Some(thread),
            counters,
        })
    }

    /// Runs `work` in the writer's transaction and answers once a durable
    /// commit holds its writes: `Ok` keeps them, `Err` undoes them. `bytes`
    /// estimates what it writes, for the batch bound. The work may run more
    /// than once (see the module documentation), so it must not consume what
    /// it captures; only its last run's answer counts. See
    /// [`Self::write_or_abort`] for work that may decide to write nothing.
    pub async fn write<T, E, F>(&self, bytes: usize, mut work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        self.write_or_abort(bytes, move |txn| work(txn).map(Finish::Commit))
            .await
    }

    /// Like [`Self::write`], with the work able to answer without writing
    /// ([`Finish::Abort`]).
    ///
    /// Waits for room when the queue is full. If this future is dropped once
    /// the request is queued, the request still runs; its answer is dropped.
    pub async fn write_or_abort<T, E, F>(&self, bytes: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel::<Result<T, E>>();
        self.queue(bytes, work, move |result| {
            // The caller may have gone away; its answer then goes nowhere.
            let _ = answer.send(result);
        })
        .await?;
        answered.await.map_err(|_| E::from(stopped()))?
    }

    /// Queues `work` (as [`Self::write_or_abort`] runs it) and returns as
    /// soon as it is queued, waiting for room when the queue is full; `done`
    /// is called on the writer thread with the answer once the batch holding
    /// the work is durable (or has failed). Requests queued one after
    /// another run, and become durable, in that order.
    ///
    /// This lets a caller that must order its requests (a topic's appends)
    /// queue the next one while this one waits for its disk sync. If this
    /// returns an error, nothing was queued and `done` is dropped uncalled;
    /// otherwise `done` is called exactly once, unless the writer thread
    /// dies, in which case it is dropped uncalled.
    pub async fn queue<T, E, F, D>(&self, bytes: usize, work: F, done: D) -> Result<(), E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnMut(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        let request = Box::new(Typed {
            work,
            held: None,
            done,
        });
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue
            .send(Job { bytes, request })
            .await
            .map_err(|_| E::from(stopped()))
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> Stats {
        Stats {
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
            replays: self.counters.replays.load(Ordering::Relaxed),
        }
    }

    /// How many more requests the queue takes before callers wait.
    pub fn room(&self) -> usize {
        self.queue.as_ref().map_or(0, mpsc::Sender::capacity)
    }
}

impl Drop for GroupCommit {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has run what is queued;
        // joining it releases its handle on the database before we return,
        // so the file can be opened again at once (a restart in tests, or
        // the next instance of a module).
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the redb writer thread panicked");
            }
        }
    }
}

/// The error of a request the writer can no longer take.
fn stopped() -> Error {
    Error::Failed("the redb writer has stopped".to_owned())
}

/// The writer thread: batch after batch until the queue is closed.
fn serve(db: &Database, mut queue: mpsc::Receiver<Job>, limits: Limits, counters: &Counters) {
    while let Some(first) = queue.blocking_recv() {
        let mut batch = Batch {
            db,
            counters,
            requests: Vec::new(),
            txn: None,
            kept: Vec::new(),
            pending: false,
        };
        let outcome = batch.run(queue_drain(&mut queue, first, limits));
        let durable = outcome.and_then(|()| batch.make_durable());
        if let Err(e) = &durable {
            tracing::error!(error = %e, requests = batch.requests.len(), "a batch of redb writes is not durable");
        }
        counters
            .jobs
            .fetch_add(batch.requests.len() as u64, Ordering::Relaxed);
        counters.batches.fetch_add(1, Ordering::Relaxed);
        for request in std::mem::take(&mut batch.requests) {
            request.answer(durable.clone());
        }
    }
}

/// `first` and then whatever is queued behind it, until the queue is empty
/// or the batch reaches its bounds. Taken lazily, so requests that arrive
/// while the batch runs join it.
fn queue_drain(
    queue: &mut mpsc::Receiver<Job>,
    first: Job,
    limits: Limits,
) -> impl Iterator<Item = Job> + '_ {
    let (mut jobs, mut bytes) = (0usize, 0usize);
    let mut next = Some(first);
    std::iter::from_fn(move || {
        let job = next.take().or_else(|| {
            let full = jobs >= limits.batch_jobs || bytes >= limits.batch_bytes;
            if full {
                None
            } else {
                queue.try_recv().ok()
            }
        })?;
        jobs += 1;
        bytes = bytes.saturating_add(job.bytes);
        Some(job)
    })
}

/// The transaction in `slot`, begun if there is none.
fn open<'t>(
    db: &Database,
    slot: &'t mut Option<WriteTransaction>,
) -> Result<&'t WriteTransaction, Error> {
    if slot.is_none() {
        let mut txn = db
            .begin_write()
            .map_err(failed("begin a write transaction"))?;
        // The batch's last commit is made durable in `make_durable`; until
        // then nothing needs a sync.
        txn.set_durability(Durability::None)
            .map_err(failed("set a write transaction's durability"))?;
        *slot = Some(txn);
    }
    slot.as_ref()
        .ok_or_else(|| Error::Failed("redb: no write transaction".to_owned()))
}

/// One batch being run.
struct Batch<'a> {
    db: &'a Database,
    counters: &'a Counters,
    /// Every request of the batch, in order.
    requests: Vec<Box<dyn Request>>,
    /// The transaction the next request runs in; opened on first need.
    txn: Option<WriteTransaction>,
    /// The requests (indices into `requests`) whose writes `txn` holds.
    kept: Vec<usize>,
    /// Whether an earlier transaction of the batch was committed without a
    /// sync, so the batch must end with a durable commit even if `txn`
    /// holds nothing.
    pending: bool,
}

impl Batch<'_> {
    /// Runs every job in turn; an error is a failure of the database itself
    /// (a transaction cannot be begun or committed), which fails the batch.
    fn run(&mut self, jobs: impl Iterator<Item = Job>) -> Result<(), Error> {
        for job in jobs {
            let index = self.requests.len();
            self.requests.push(job.request);
            let txn = open(self.db, &mut self.txn)?;
            match self.requests[index].run(txn) {
                Ran::Kept => self.kept.push(index),
                Ran::Unchanged => {}
                Ran::Failed => self.undo()?,
            }
        }
        Ok(())
    }

    /// Undoes a failed request: aborts the transaction (dropping it makes
    /// redb roll it back) and runs the requests it held again in a fresh
    /// one, which is committed without a sync so that a later failure does
    /// not replay them again. A request that fails when run again (its
    /// outcome depended on the clock) is left out as well, and the replay
    /// starts over without it.
    fn undo(&mut self) -> Result<(), Error> {
        drop(self.txn.take());
        let mut replay = std::mem::take(&mut self.kept);
        while !replay.is_empty() {
            let txn = open(self.db, &mut self.txn)?;
            let mut failed_again = None;
            for (position, &index) in replay.iter().enumerate() {
                self.counters.replays.fetch_add(1, Ordering::Relaxed);
                if self.requests[index].run(txn) == Ran::Failed {
                    failed_again = Some(position);
                    break;
                }
            }
            match failed_again {
                Some(position) => {
                    drop(self.txn.take());
                    replay.remove(position);
                }
                None => break,
            }
        }
        if replay.is_empty() {
            return Ok(());
        }
        if let Some(txn) = self.txn.take() {
            txn.commit()
                .map_err(failed("commit the replayed part of a batch"))?;
            self.pending = true;
        }
        Ok(())
    }

    /// Commits what the batch holds with `Durability::Immediate`, which also
    /// persists its earlier commits; does nothing if nothing changed.
    fn make_durable(&mut self) -> Result<(), Error> {
        let mut txn = match self.txn.take() {
            Some(txn) if !self.kept.is_empty() || self.pending => txn,
            None if self.pending => self
                .db
                .begin_write()
                .map_err(failed("begin the transaction that makes a batch durable"))?,
            // Nothing changed: dropping an unused transaction aborts it, and
            // no sync is needed.
            _ => return Ok(()),
        };
        txn.set_durability(Durability::Immediate)
            .map_err(failed("make a write transaction durable"))?;
        txn.commit()
            .map_err(failed("commit a batch of writes durably"))?;
        self.counters
            .durable_commits
            .fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::pin;
    use std::sync::mpsc as std_mpsc;
    use std::task::{Context, Poll, Waker};

    use redb::{ReadableDatabase, ReadableTable, TableDefinition};

    use super::*;

    const T: TableDefinition<&str, u64> = TableDefinition::new("t");

    /// A test's failure, or the writer's.
    #[derive(Debug, PartialEq, Eq)]
    enum TestError {
        Refused(String),
        Writer(Error),
    }

    impl From<Error> for TestError {
        fn from(e: Error) -> Self {
            Self::Writer(e)
        }
    }

    fn open(dir: &tempfile::TempDir, limits: Limits) -> (Arc<Database>, GroupCommit) {
        let db = Arc::new(Database::create(dir.path().join("g.redb")).expect("create"));
        let txn = db.begin_write().expect("begin");
        txn.open_table(T).expect("create the table");
        txn.commit().expect("commit");
        let writer = GroupCommit::start(Arc::clone(&db), limits).expect("start");
        (db, writer)
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// Sets `key` to `value` in `txn`.
    fn put(txn: &WriteTransaction, key: &str, value: u64) -> Result<(), TestError> {
        let mut table = txn
            .open_table(T)
            .map_err(|e| TestError::Refused(e.to_string()))?;
        table
            .insert(key, value)
            .map_err(|e| TestError::Refused(e.to_string()))?;
        Ok(())
    }

    fn get(db: &Database, key: &str) -> Option<u64> {
        let txn = db.begin_read().expect("read");
        let table = txn.open_table(T).expect("table");
        table.get(key).expect("get").map(|g| g.value())
    }

    /// Holds the writer thread inside a job until released, so that the
    /// test can queue requests behind it deterministically.
    struct Gate {
        entered: std_mpsc::Receiver<()>,
        release: std_mpsc::Sender<()>,
    }

    /// Queues a job that signals it has started and then waits for the gate.
    fn blocker<'a>(
        writer: &'a GroupCommit,
    ) -> (impl Future<Output = Result<(), TestError>> + 'a, Gate) {
        let (entered_tx, entered) = std_mpsc::channel();
        let (release, released) = std_mpsc::channel::<()>();
        // Only the first run waits: a replay (after a failure later in the
        // batch) runs straight through.
        let mut first = true;
        let job = writer.write(0, move |txn| {
            if std::mem::take(&mut first) {
                let _ = entered_tx.send(());
                let _ = released.recv();
            }
            put(txn, "gate", 1)
        });
        (job, Gate { entered, release })
    }

    /// Polls `future` once.
    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn concurrent_requests_share_durable_commits() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (db, writer) = open(&dir, Limits::DEFAULT);
        let rt = runtime();
        rt.block_on(async {
            // Hold the writer so that every request below is queued while it
            // is busy: they must then be committed in one batch.
            let (gate_job, gate) = blocker(&writer);
            let mut gate_job = pin!(gate_job);
            assert!(poll_once(gate_job.as_mut()).is_pending());
            gate.entered.recv().expect("the gate job runs");
            let mut requests = Vec::new();
            for i in 0..32u64 {
                let mut request =
                    Box::pin(writer.write(8, move |txn| put(txn, &format!("k{i}"), i)));
                assert!(poll_once(request.as_mut()).is_pending(), "queued");
                requests.push(request);
            }
            gate.release.send(()).expect("release the gate");
            gate_job.await.expect("the gate job");
            for request in requests {
                request.await.expect("a request");
            }
        });
        for i in 0..32u64 {
            assert_eq!(get(&db, &format!("k{i}")), Some(i));
        }
        let stats = writer.stats();
        assert_eq!(stats.jobs, 33);
        // The 32 queued while the gate ran joined its batch: one sync.
        assert_eq!(stats.durable_commits, 1, "{stats:?}");
        assert_eq!(stats.batches, 1, "{stats:?}");
    }

    #[test]
    fn a_failing_request_fails_alone_and_later_ones_see_earlier_ones() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (db, writer) = open(&dir, Limits::DEFAULT);
        let rt = runtime();
        let (a, failing, b, reader, aborted) = rt.block_on(async {
            let (gate_job, gate) = blocker(&writer);
            let mut gate_job = pin!(gate_job);
            assert!(poll_once(gate_job.as_mut()).is_pending());
            gate.entered.recv().expect("the gate job runs");
            let mut a = Box::pin(writer.write(8, |txn| put(txn, "a", 1)));
            // Writes, then fails: none of its writes may stay.
            let mut failing = Box::pin(writer.write(8, |txn| {
                put(txn, "failed", 1)?;
                Err::<(), _>(TestError::Refused("no".into()))
            }));
            let mut b = Box::pin(writer.write(8, |txn| put(txn, "b", 2)));
            // Sees `a` and `b`, committed earlier in the same batch.
            let mut reader = Box::pin(writer.write(8, |txn| {
                let table = txn
                    .open_table(T)
                    .map_err(|e| TestError::Refused(e.to_string()))?;
                let sum = ["a", "b"]
                    .iter()
                    .map(|k| table.get(*k).ok().flatten().map_or(0, |g| g.value()))
                    .sum::<u64>();
                Ok::<_, TestError>(sum)
            }));
            // The last request answers without writing.
            let mut aborted = Box::pin(writer.write_or_abort(8, |txn| {
                let table = txn
                    .open_table(T)
                    .map_err(|e| TestError::Refused(e.to_string()))?;
                let seen = table.get("a").ok().flatten().map(|g| g.value());
                Ok::<_, TestError>(Finish::Abort(seen))
            }));
            for pending in [
                poll_once(a.as_mut()).is_pending(),
                poll_once(failing.as_mut()).is_pending(),
                poll_once(b.as_mut()).is_pending(),
                poll_once(reader.as_mut()).is_pending(),
                poll_once(aborted.as_mut()).is_pending(),
            ] {
                assert!(pending, "queued");
            }
            gate.release.send(()).expect("release the gate");
            gate_job.await.expect("the gate job");
            (a.await, failing.await, b.await, reader.await, aborted.await)
        });
        assert_eq!(a, Ok(()));
        assert_eq!(failing, Err(TestError::Refused("no".into())));
        assert_eq!(b, Ok(()));
        assert_eq!(reader, Ok(3));
        assert_eq!(aborted, Ok(Some(1)));
        assert_eq!(get(&db, "failed"), None);
        assert_eq!((get(&db, "a"), get(&db, "b")), (Some(1), Some(2)));
        let stats = writer.stats();
        // One batch, one sync; the gate and `a` were replayed once to undo
        // the failed request.
        assert_eq!(stats.durable_commits, 1, "{stats:?}");
        assert_eq!(stats.replays, 2, "{stats:?}");
        drop(writer);
        drop(db);
        // Everything acknowledged is in the file.
        let reopened = Database::create(dir.path().join("g.redb")).expect("reopen");
        assert_eq!(
            (get(&reopened, "a"), get(&reopened, "b")),
            (Some(1), Some(2))
        );
    }

    #[test]
    fn answers_come_only_after_a_durable_commit_that_covers_them() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (_db, writer) = open(&dir, Limits::DEFAULT);
        let writer = Arc::new(writer);
        let rt = runtime();
        let mut tasks = Vec::new();
        for client in 0..8u64 {
            let writer = Arc::clone(&writer);
            tasks.push(rt.spawn(async move {
                for i in 0..50u64 {
                    let counters = Arc::clone(&writer.counters);
                    // The durable commits made before the request ran.
                    let before = writer
                        .write(8, move |txn| {
                            let before = counters.durable_commits.load(Ordering::SeqCst);
                            put(txn, &format!("c{client}-{i}"), i)?;
                            Ok::<_, TestError>(before)
                        })
                        .await
                        .expect("a request");
                    let after = writer.stats().durable_commits;
                    assert!(
                        after > before,
                        "answered before a durable commit ({before} -> {after})"
                    );
                }
            }));
        }
        rt.block_on(async {
            for task in tasks {
                task.await.expect("a client");
            }
        });
        let stats = writer.stats();
        assert_eq!(stats.jobs, 400);
        assert!(stats.durable_commits <= stats.jobs, "{stats:?}");
    }

    /// A request whose replay fails (its outcome changed since its first
    /// run) is undone too and answers that failure, and the others of the
    /// batch keep their writes.
    #[test]
    fn a_request_that_fails_on_replay_is_undone_too() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (db, writer) = open(&dir, Limits::DEFAULT);
        let rt = runtime();
        let (kept, fickle, failing) = rt.block_on(async {
            let (gate_job, gate) = blocker(&writer);
            let mut gate_job = pin!(gate_job);
            assert!(poll_once(gate_job.as_mut()).is_pending());
            gate.entered.recv().expect("the gate job runs");
            let mut kept = Box::pin(writer.write(8, |txn| put(txn, "kept", 1)));
            let mut runs = 0;
            let mut fickle = Box::pin(writer.write(8, move |txn| {
                runs += 1;
                put(txn, "fickle", runs)?;
                if runs > 1 {
                    return Err(TestError::Refused(format!("run {runs}")));
                }
                Ok(())
            }));
            let mut failing = Box::pin(writer.write(8, |txn| {
                put(txn, "failing", 1)?;
                Err::<(), _>(TestError::Refused("no".into()))
            }));
            for pending in [
                poll_once(kept.as_mut()).is_pending(),
                poll_once(fickle.as_mut()).is_pending(),
                poll_once(failing.as_mut()).is_pending(),
            ] {
                assert!(pending, "queued");
            }
            gate.release.send(()).expect("release the gate");
            gate_job.await.expect("the gate job");
            (kept.await, fickle.await, failing.await)
        });
        assert_eq!(kept, Ok(()));
        assert_eq!(fickle, Err(TestError::Refused("run 2".into())));
        assert_eq!(failing, Err(TestError::Refused("no".into())));
        assert_eq!(get(&db, "kept"), Some(1));
        assert_eq!((get(&db, "fickle"), get(&db, "failing")), (None, None));
    }

    /// Queues requests of `sizes` bytes behind a held writer with `limits`,
    /// releases it, and returns what the writer did.
    fn batches_of(limits: Limits, sizes: &[usize]) -> Stats {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (_db, writer) = open(&dir, limits);
        let rt = runtime();
        rt.block_on(async {
            let (gate_job, gate) = blocker(&writer);
            let mut gate_job = pin!(gate_job);
            assert!(poll_once(gate_job.as_mut()).is_pending());
            gate.entered.recv().expect("the gate job runs");
            let mut requests = Vec::new();
            for (i, &bytes) in sizes.iter().enumerate() {
                let mut request =
                    Box::pin(writer.write(bytes, move |txn| put(txn, &format!("k{i}"), 1)));
                assert!(poll_once(request.as_mut()).is_pending(), "queued");
                requests.push(request);
            }
            gate.release.send(()).expect("release the gate");
            gate_job.await.expect("the gate job");
            for request in requests {
                request.await.expect("a request");
            }
        });
        writer.stats()
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_bytes() {
        // The gate and ten small requests, at most four a batch: 4 + 4 + 3.
        let by_count = Limits {
            queue: 64,
            batch_jobs: 4,
            batch_bytes: 1 << 20,
        };
        let stats = batches_of(by_count, &[8; 10]);
        assert_eq!((stats.batches, stats.durable_commits), (3, 3), "{stats:?}");
        // The gate (0 bytes) and five requests of 400 bytes, a batch ending
        // once it reaches 1000 bytes: gate + 3 (1200 bytes), then 2.
        let by_bytes = Limits {
            queue: 64,
            batch_jobs: 100,
            batch_bytes: 1000,
        };
        let stats = batches_of(by_bytes, &[400; 5]);
        assert_eq!((stats.batches, stats.durable_commits), (2, 2), "{stats:?}");
    }

    #[test]
    fn a_full_queue_makes_callers_wait_instead_of_growing() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let limits = Limits {
            queue: 2,
            ..Limits::DEFAULT
        };
        let (db, writer) = open(&dir, limits);
        let rt = runtime();
        rt.block_on(async {
            let (gate_job, gate) = blocker(&writer);
            let mut gate_job = pin!(gate_job);
            assert!(poll_once(gate_job.as_mut()).is_pending());
            // The writer took the gate job off the queue and is stuck in it.
            gate.entered.recv().expect("the gate job runs");
            assert_eq!(writer.room(), 2);
            let mut queued = Vec::new();
            for i in 0..2u64 {
                let mut request =
                    Box::pin(writer.write(8, move |txn| put(txn, &format!("q{i}"), i)));
                assert!(poll_once(request.as_mut()).is_pending());
                queued.push(request);
            }
            assert_eq!(writer.room(), 0, "the queue is full");
            // A third request cannot enter: it waits, and takes no room.
            let mut waiting = Box::pin(writer.write(8, |txn| put(txn, "w", 9)));
            for _ in 0..3 {
                assert!(poll_once(waiting.as_mut()).is_pending());
                assert_eq!(writer.room(), 0);
            }
            gate.release.send(()).expect("release the gate");
            gate_job.await.expect("the gate job");
            for request in queued {
                request.await.expect("a queued request");
            }
            waiting
                .await
                .expect("the waiting request, once there was room");
        });
        assert_eq!(get(&db, "w"), Some(9));
        assert_eq!(writer.stats().jobs, 4);
    }

    #[test]
    fn a_panicking_request_fails_alone() {
        let dir = tempfile::TempDir::new().expect("temporary directory");
        let (db, writer) = open(&dir, Limits::DEFAULT);
        let rt = runtime();
        let (panicked, fine) = rt.block_on(async {
            let panicked = writer
                .write(8, |txn| {
                    put(txn, "p", 1)?;
                    let bug = true;
                    if bug {
                        panic!("a bug in a driver");
                    }
                    Ok::<(), TestError>(())
                })
                .await;
            let fine = writer.write(8, |txn| put(txn, "f", 2)).await;
            (panicked, fine)
        });
        assert!(
            matches!(panicked, Err(TestError::Writer(Error::Failed(_)))),
            "{panicked:?}"
        );
        assert_eq!(fine, Ok(()));
        assert_eq!((get(&db, "p"), get(&db, "f")), (None, Some(2)));
    }
}
