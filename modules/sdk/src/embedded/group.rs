//! Group commit: one writer thread per redb database runs every request's
//! write transaction and makes a whole batch of them durable with one fsync.
//!
//! redb allows one write transaction at a time, and a transaction committed
//! with `Durability::Immediate` costs a disk sync. Committing every request
//! that way caps a store at one sync per write, however many clients wait.
//! [`GroupCommit`] instead takes the requests from a bounded queue and, while
//! more are already waiting, commits each one in its own transaction with
//! `Durability::None` (no sync; redb persists such a commit with the next
//! `Immediate` one). The request that finds the queue empty, or that reaches
//! the batch's bound, commits with `Durability::Immediate`, and that single
//! sync makes the whole batch durable. Only then is any request of the batch
//! answered, so no acknowledged write can be lost.
//!
//! Each request keeps its own transaction, so it stays all-or-nothing: one
//! that fails (an ETag mismatch, a quota refusal) aborts its transaction and
//! leaves the other requests of its batch alone, and a later request of the
//! batch sees the effects of the earlier ones, as if they had run one by one.
//! A batch of one costs what a lone `Immediate` transaction costs.
//!
//! Other transactions opened on the same database (a periodic sweep) simply
//! wait for redb's write lock between two requests; an `Immediate` commit of
//! theirs persists the batch's earlier commits too, which is harmless.
//! Readers may see a request's commit before the batch is durable and before
//! the request is answered (Redis with `appendfsync always` behaves the same
//! way); a crash then loses only writes that were never acknowledged.

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

/// What a request's work decided about its transaction.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish<T> {
    /// Commit the transaction and answer `T` once it is durable.
    Commit(T),
    /// Abort the transaction (it changed nothing worth keeping, e.g. a lock
    /// release refused because the caller does not hold the lock) and answer
    /// `T`, still after the batch is durable, since `T` may depend on what
    /// earlier requests of the batch wrote.
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
}

/// The writer's counters, shared with its thread.
#[derive(Debug, Default)]
struct Counters {
    jobs: AtomicU64,
    batches: AtomicU64,
    durable_commits: AtomicU64,
}

/// How a request's transaction ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Committed (durably or not, as the writer asked).
    Committed,
    /// Aborted or never begun: nothing of it needs to be made durable.
    Unchanged,
    /// Its commit failed; if it was to make the batch durable, the batch is
    /// not.
    CommitFailed,
}

/// A request's answer, held until its batch is durable; given the batch's
/// outcome, it sends the answer (or the batch's error) to the caller.
type Deliver = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// A request's work, as the writer thread runs it with the durability it
/// chooses.
type Run = Box<dyn FnOnce(&Database, Durability) -> (Ended, Deliver) + Send>;

/// One queued request.
struct Job {
    /// What the caller estimates the request writes, for the batch bound.
    bytes: usize,
    /// The work.
    run: Run,
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

    /// Runs `work` in a write transaction of its own on the writer thread and
    /// answers once the transaction is durable: `Ok` commits, `Err` aborts.
    /// `bytes` estimates what it writes, for the batch bound. See
    /// [`Self::write_or_abort`] for work that may decide to abort with an
    /// answer.
    pub async fn write<T, E, F>(&self, bytes: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<T, E> + Send + 'static,
    {
        self.write_or_abort(bytes, move |txn| work(txn).map(Finish::Commit))
            .await
    }

    /// Like [`Self::write`], with the work deciding whether its transaction
    /// commits ([`Finish::Commit`]) or aborts ([`Finish::Abort`]) with an
    /// answer; `Err` aborts and answers the error.
    ///
    /// Waits for room when the queue is full. If this future is dropped once
    /// the request is queued, the request still runs; its answer is dropped.
    pub async fn write_or_abort<T, E, F>(&self, bytes: usize, work: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<Error> + Send + 'static,
        F: FnOnce(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
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
        F: FnOnce(&WriteTransaction) -> Result<Finish<T>, E> + Send + 'static,
        D: FnOnce(Result<T, E>) + Send + 'static,
    {
        let run: Run = Box::new(move |db: &Database, durability| {
            let (ended, held) = run_one(db, durability, work);
            let deliver: Deliver = Box::new(move |batch: Result<(), Error>| {
                done(batch.map_err(E::from).and(held));
            });
            (ended, deliver)
        });
        let queue = self.queue.as_ref().ok_or_else(stopped)?;
        queue
            .send(Job { bytes, run })
            .await
            .map_err(|_| E::from(stopped()))
    }

    /// What the writer has done so far.
    pub fn stats(&self) -> Stats {
        Stats {
            jobs: self.counters.jobs.load(Ordering::Relaxed),
            batches: self.counters.batches.load(Ordering::Relaxed),
            durable_commits: self.counters.durable_commits.load(Ordering::Relaxed),
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
        run_batch(db, &mut queue, first, limits, counters);
    }
}

/// Runs `first` and whatever is queued behind it, up to the batch bounds,
/// makes the batch durable with one `Immediate` commit, and answers all.
fn run_batch(
    db: &Database,
    queue: &mut mpsc::Receiver<Job>,
    first: Job,
    limits: Limits,
    counters: &Counters,
) {
    let mut answers: Vec<Deliver> = Vec::new();
    // A commit of this batch that only the next `Immediate` one persists.
    let mut pending = false;
    // Why the batch could not be made durable, if it could not.
    let mut failure: Option<Error> = None;
    let (mut jobs, mut bytes) = (0usize, 0usize);
    let mut next = Some(first);
    while let Some(job) = next.take() {
        jobs += 1;
        bytes = bytes.saturating_add(job.bytes);
        // The job that finds nobody waiting behind it, or that fills the
        // batch, makes the batch durable with its own commit, which saves a
        // second transaction; a batch of one is then exactly one durable
        // transaction, as without group commit.
        let last = jobs >= limits.batch_jobs || bytes >= limits.batch_bytes || queue.is_empty();
        let durability = if last {
            Durability::Immediate
        } else {
            Durability::None
        };
        let (ended, deliver) = (job.run)(db, durability);
        answers.push(deliver);
        match (ended, last) {
            (Ended::Committed, true) => {
                pending = false;
                counters.durable_commits.fetch_add(1, Ordering::Relaxed);
            }
            (Ended::Committed, false) => pending = true,
            (Ended::CommitFailed, true) if pending => {
                failure = Some(Error::Failed(
                    "redb: the commit that makes a batch of writes durable failed".to_owned(),
                ));
                pending = false;
            }
            (Ended::Unchanged | Ended::CommitFailed, _) => {}
        }
        if !last {
            next = queue.try_recv().ok();
        }
    }
    counters.jobs.fetch_add(jobs as u64, Ordering::Relaxed);
    counters.batches.fetch_add(1, Ordering::Relaxed);
    if pending {
        // The last request did not commit (it failed, or aborted), so an
        // empty `Immediate` transaction persists the batch's earlier ones.
        match make_durable(db) {
            Ok(()) => {
                counters.durable_commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => failure = Some(e),
        }
    }
    if let Some(e) = &failure {
        tracing::error!(error = %e, requests = jobs, "a batch of redb writes is not durable");
    }
    for deliver in answers {
        deliver(failure.clone().map_or(Ok(()), Err));
    }
}

/// Commits an empty `Immediate` transaction, which persists every earlier
/// commit made with `Durability::None`.
fn make_durable(db: &Database) -> Result<(), Error> {
    let txn = db
        .begin_write()
        .map_err(failed("begin the transaction that makes a batch durable"))?;
    txn.commit()
        .map_err(failed("commit the transaction that makes a batch durable"))
}

/// Runs `work` in a new write transaction of `durability` and commits or
/// aborts it as the work decides. A panic in the work aborts its transaction
/// and fails only its request, as a panic in a blocking task would.
fn run_one<T, E, F>(db: &Database, durability: Durability, work: F) -> (Ended, Result<T, E>)
where
    E: From<Error>,
    F: FnOnce(&WriteTransaction) -> Result<Finish<T>, E>,
{
    let mut txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(e) => {
            let e = failed("begin a write transaction")(e);
            return (Ended::Unchanged, Err(e.into()));
        }
    };
    if let Err(e) = txn.set_durability(durability) {
        let e = failed("set a write transaction's durability")(e);
        return (Ended::Unchanged, Err(e.into()));
    }
    // Any return below that does not commit drops `txn`, which makes redb
    // abort it: that is what keeps a failed request all-or-nothing.
    match catch_unwind(AssertUnwindSafe(|| work(&txn))) {
        Ok(Ok(Finish::Commit(answer))) => match txn.commit() {
            Ok(()) => (Ended::Committed, Ok(answer)),
            Err(e) => (
                Ended::CommitFailed,
                Err(failed("commit a write transaction")(e).into()),
            ),
        },
        Ok(Ok(Finish::Abort(answer))) => (Ended::Unchanged, Ok(answer)),
        Ok(Err(e)) => (Ended::Unchanged, Err(e)),
        Err(_) => (
            Ended::Unchanged,
            Err(Error::Failed("redb: a write panicked; it was rolled back".to_owned()).into()),
        ),
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
        let job = writer.write(0, move |txn| {
            let _ = entered_tx.send(());
            let _ = released.recv();
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
        // The gate's batch, and the one batch of the 32 queued behind it.
        assert_eq!(stats.durable_commits, 2, "{stats:?}");
        assert_eq!(stats.batches, 2, "{stats:?}");
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
            // The last request aborts, so the batch needs its own durable
            // commit.
            let mut aborted = Box::pin(writer.write_or_abort(8, |txn| {
                put(txn, "aborted", 1)?;
                Ok::<_, TestError>(Finish::Abort("refused"))
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
        assert_eq!(aborted, Ok("refused"));
        assert_eq!(get(&db, "failed"), None);
        assert_eq!(get(&db, "aborted"), None);
        assert_eq!((get(&db, "a"), get(&db, "b")), (Some(1), Some(2)));
        let stats = writer.stats();
        // The gate's own commit, then the batch's empty durable commit.
        assert_eq!(stats.durable_commits, 2, "{stats:?}");
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
        // Ten small requests, at most four a batch: 4 + 4 + 2, after the
        // gate's own batch.
        let by_count = Limits {
            queue: 64,
            batch_jobs: 4,
            batch_bytes: 1 << 20,
        };
        let stats = batches_of(by_count, &[8; 10]);
        assert_eq!((stats.batches, stats.durable_commits), (4, 4), "{stats:?}");
        // Five requests of 400 bytes, a batch ending once it reaches 1000
        // bytes: 3 (1200 bytes) + 2, after the gate's own batch.
        let by_bytes = Limits {
            queue: 64,
            batch_jobs: 100,
            batch_bytes: 1000,
        };
        let stats = batches_of(by_bytes, &[400; 5]);
        assert_eq!((stats.batches, stats.durable_commits), (3, 3), "{stats:?}");
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
