//! Test support for modules (feature `testing`): the harness every module's
//! conformance suite opens its drivers with, the `conformance!` macro that
//! runs one suite against every driver, a module served without a link, the
//! deadline-bounded waits the suites share, and helpers for drivers' tests
//! of metadata checks.
//!
//! It is compiled only with the `testing` feature, which module crates turn
//! on in their `[dev-dependencies]`, so neither this code nor `tempfile`
//! enters a module binary.

use std::fmt::Display;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ComponentSpec, LinkHello};
use tempfile::TempDir;
use tokio::runtime::Runtime;

use crate::{Ctx, InitError, Module, Opcode, Reply};

/// How long a test waits for something that should happen (a lease or TTL
/// to pass, a delivery, a reload) before failing. Generous, since it only
/// bounds a failure: a passing test waits just as long as the event takes.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// How often the synchronous waits poll their condition.
const POLL: Duration = Duration::from_millis(5);

/// How often [`wait_until_async`] polls: the futures it runs beside are
/// usually quick, so a short pause keeps the test from idling.
const ASYNC_POLL: Duration = Duration::from_millis(1);

/// Component `name` of type `kind` with `metadata`.
pub fn spec(name: &str, kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    ComponentSpec {
        name: name.to_owned(),
        kind: kind.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// A current-thread Tokio runtime with I/O and timers, the one most tests
/// drive their stores on.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// A runtime with `workers` threads, for tests whose concurrent callers must
/// really run in parallel.
pub fn multi_thread_runtime(workers: usize) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

/// A fresh temporary directory, removed when the value is dropped.
pub fn temp_dir() -> TempDir {
    TempDir::new().expect("create a temporary directory")
}

/// Runs `open` inside a Tokio runtime, as a module opens its components at
/// init (networked drivers prepare their connections on the runtime).
pub fn open_in_runtime<T>(open: impl FnOnce() -> T) -> T {
    let rt = runtime();
    let _guard = rt.enter();
    open()
}

/// The error of an open of `spec` that must fail; panics naming the spec if
/// it succeeded. (The opened value need not be `Debug`, as `expect_err`
/// would want: stores behind trait objects are not.)
pub fn refused<T, E>(spec: &ComponentSpec, opened: Result<T, E>) -> E {
    match opened {
        Ok(_) => panic!("opening {spec:?} should fail"),
        Err(e) => e,
    }
}

/// Asserts that opening `spec` failed with a configuration error of its
/// component whose reason mentions `mentions`. `config` picks the component
/// and reason out of the driver's error when it is a configuration error.
pub fn assert_refused<T, E: Display>(
    spec: &ComponentSpec,
    opened: Result<T, E>,
    config: fn(&E) -> Option<(&str, &str)>,
    mentions: &str,
) {
    match opened {
        Err(e) => match config(&e) {
            Some((component, reason)) => {
                assert_eq!(component, spec.name);
                assert!(
                    reason.contains(mentions),
                    "{reason:?} mentions {mentions:?}"
                );
            }
            None => panic!("{spec:?}: expected a configuration error, got {e}"),
        },
        Ok(_) => panic!("{spec:?} was accepted"),
    }
}

/// Polls `cond` until it holds, failing the test with `what` (what was
/// awaited) after [`DEADLINE`].
pub fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    poll_until(what, || cond().then_some(()));
}

/// Polls `poll` until it gives a value and returns that value, failing the
/// test with `what` after [`DEADLINE`].
pub fn poll_until<T>(what: &str, mut poll: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = poll() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// [`wait_until`] inside a future: polls `cond` without blocking the
/// runtime, so the futures beside it go on running.
pub async fn wait_until_async(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        tokio::time::sleep(ASYNC_POLL).await;
    }
}

/// How a harness opens its store: a driver factory with its error turned
/// into text, so the harness's type names only the store.
type Opener<S> = Box<dyn Fn(&ComponentSpec, &Path) -> Result<Box<S>, String>>;

/// One driver under test: the store opened through its module's factory (so
/// the factory is tested too), the runtime that drives it, and the data
/// directory its files live in, kept for as long as the harness is, so the
/// store can be reopened from it as a module restart would.
///
/// `S` is the store, usually a driver trait object (`dyn StateStore`).
/// Module suites wrap the harness in a type of their own that adds the
/// capability's operations.
pub struct Harness<S: ?Sized> {
    // Fields drop in order: the store closes before its directory goes and
    // while its runtime is still there.
    store: Option<Arc<S>>,
    open: Opener<S>,
    spec: ComponentSpec,
    dir: TempDir,
    rt: Runtime,
}

/// What a [`Harness`] is built from, for the tests that need more than
/// [`Harness::open`] gives: a runtime with worker threads, or files in the
/// data directory before the store opens.
pub struct Setup {
    spec: ComponentSpec,
    dir: TempDir,
    rt: Option<Runtime>,
}

impl Setup {
    /// The start of a harness for component `spec`, with a fresh data
    /// directory and a current-thread runtime unless told otherwise.
    pub fn new(spec: ComponentSpec) -> Self {
        Self {
            spec,
            dir: temp_dir(),
            rt: None,
        }
    }

    /// The data directory the store will open in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds the metadata field `name` with `value` to the component.
    pub fn metadata(mut self, name: &str, value: &str) -> Self {
        self.spec.metadata.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Drives the store on a runtime with `workers` threads instead of the
    /// current thread.
    pub fn workers(mut self, workers: usize) -> Self {
        self.rt = Some(multi_thread_runtime(workers));
        self
    }

    /// Writes `contents` to `name` in the data directory before the store
    /// opens (a store that reads a file at open needs it there).
    pub fn file(self, name: &str, contents: &str) -> Self {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        self
    }

    /// Opens the store with `open`, a module's driver factory; panics if it
    /// fails.
    pub fn open<S, E>(
        self,
        open: impl Fn(&ComponentSpec, &Path) -> Result<Box<S>, E> + 'static,
    ) -> Harness<S>
    where
        S: ?Sized,
        E: Display,
    {
        let mut harness = Harness {
            store: None,
            open: Box::new(move |spec, dir| open(spec, dir).map_err(|e| e.to_string())),
            spec: self.spec,
            dir: self.dir,
            rt: self.rt.unwrap_or_else(runtime),
        };
        harness.store = Some(harness.open_store("open"));
        harness
    }
}

impl<S: ?Sized> Harness<S> {
    /// The store of component `spec`, opened with `open` (a module's driver
    /// factory) in a fresh data directory, on a current-thread runtime.
    pub fn open<E: Display>(
        spec: ComponentSpec,
        open: impl Fn(&ComponentSpec, &Path) -> Result<Box<S>, E> + 'static,
    ) -> Self {
        Setup::new(spec).open(open)
    }

    /// Opens the store inside the runtime, as a module opens its components
    /// at init (a driver may spawn its background work there).
    fn open_store(&self, doing: &str) -> Arc<S> {
        let _guard = self.rt.enter();
        match (self.open)(&self.spec, self.dir.path()) {
            Ok(store) => Arc::from(store),
            Err(e) => panic!("{doing} {} ({}): {e}", self.spec.name, self.spec.kind),
        }
    }

    /// The store under test.
    pub fn store(&self) -> &S {
        self.store.as_deref().expect("the store is open")
    }

    /// The store, shared, for tasks that must own it. Drop every clone
    /// before [`Harness::reopen`].
    pub fn shared(&self) -> Arc<S> {
        Arc::clone(self.store.as_ref().expect("the store is open"))
    }

    /// The component the store was opened as.
    pub fn spec(&self) -> &ComponentSpec {
        &self.spec
    }

    /// The store's data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Closes the store and opens it again from the same directory, as a
    /// module restart would.
    pub fn reopen(&mut self) {
        let old = self.store.take().expect("the store is open");
        // A clone still alive would keep the old store (and its file lock)
        // open beside the new one, which no restart does.
        assert_eq!(
            Arc::strong_count(&old),
            1,
            "every clone of the store is dropped before it reopens"
        );
        drop(old);
        self.store = Some(self.open_store("reopen"));
    }

    /// Runs `future` to completion on the harness's runtime.
    pub fn block<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Runs `future` for at most `limit`: its output, or `None` if it was
    /// not done by then (for checking that nothing comes).
    pub fn block_for<F: Future>(&self, limit: Duration, future: F) -> Option<F::Output> {
        self.rt
            .block_on(async { tokio::time::timeout(limit, future).await })
            .ok()
    }

    /// Runs `future`, which must complete within [`DEADLINE`]; `what` says
    /// what it waits for when it does not.
    pub fn block_until<F: Future>(&self, what: &str, future: F) -> F::Output {
        self.block_for(DEADLINE, future)
            .unwrap_or_else(|| panic!("timed out after {DEADLINE:?} waiting for {what}"))
    }
}

/// A module started from a handshake like the daemon's and called without a
/// link, for suites that test a module's request handling.
pub struct Served<M> {
    module: M,
    rt: Runtime,
}

impl<M: Module> Served<M> {
    /// Starts `M` with `components` and `data_dir`, as the daemon's
    /// LINK_HELLO would; the module's reason if it refuses to start.
    pub fn start(data_dir: &Path, components: Vec<ComponentSpec>) -> Result<Self, InitError> {
        let data_dir = data_dir
            .to_str()
            .ok_or_else(|| InitError(format!("{} is not UTF-8", data_dir.display())))?;
        let hello = LinkHello {
            version: 1,
            module: M::NAME.to_owned(),
            data_dir: data_dir.to_owned(),
            components,
        };
        let rt = runtime();
        let module = rt.block_on(M::init(hello))?;
        Ok(Self { module, rt })
    }

    /// The module.
    pub fn module(&self) -> &M {
        &self.module
    }

    /// Runs `future` to completion on the module's runtime.
    pub fn block<F: Future>(&self, future: F) -> F::Output {
        self.rt.block_on(future)
    }

    /// Serves one request with the raw `payload` as `tenant`.
    pub fn handle(&self, tenant: &str, opcode: Opcode, payload: &[u8]) -> Reply {
        self.block(self.module.handle(Ctx::detached(tenant, opcode), payload))
    }

    /// Serves one request, `request` encoded as the ABI encodes payloads.
    pub fn call<T: serde::Serialize>(&self, tenant: &str, opcode: Opcode, request: &T) -> Reply {
        let payload = mecha_abi::encode(request).expect("encode the request");
        self.handle(tenant, opcode, &payload)
    }
}

/// Declares a suite's own harness type, a wrapper of [`Harness`] over the
/// given store that dereferences to it, so the suite can add its
/// capability's operations as methods while keeping `store()`, `reopen()`,
/// `block()` and the rest.
///
/// ```ignore
/// mecha_module::suite_harness! {
///     /// One lock driver under test.
///     struct Harness(dyn LockStore);
/// }
/// ```
#[macro_export]
macro_rules! suite_harness {
    ($(#[$attr:meta])* $vis:vis struct $name:ident($store:ty);) => {
        $(#[$attr])*
        $vis struct $name($crate::testing::Harness<$store>);

        impl ::std::ops::Deref for $name {
            type Target = $crate::testing::Harness<$store>;

            fn deref(&self) -> &Self::Target {
                &self.0
            }
        }

        impl ::std::ops::DerefMut for $name {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.0
            }
        }
    };
}

/// Generates one `#[test]` per behaviour per driver, in a module per driver,
/// so a failure names both; each test hands a fresh harness to the
/// behaviour's function (a function of the test file of the same name,
/// taking the harness by value).
///
/// ```ignore
/// mecha_module::conformance! {
///     drivers: { memory => Harness::memory(), redb => Harness::redb() }
///     cases: [grant_then_deny, tenants_are_isolated]
/// }
/// ```
///
/// With `drivers(metadata)`, each driver's expression may use `metadata`
/// (a `&[(&str, &str)]`), which a case sets with `with`:
///
/// ```ignore
/// mecha_module::conformance! {
///     drivers(metadata): { memory => Harness::new("pubsub.memory", metadata) }
///     cases: [every_group_gets_every_message, small_topics with &[("maxMessages", "3")]]
/// }
/// ```
#[macro_export]
macro_rules! conformance {
    (
        drivers: { $($driver:ident => $make:expr),+ $(,)? }
        cases: $cases:tt $(,)?
    ) => {
        $(
            mod $driver {
                #[allow(unused_imports)]
                use super::*;
                $crate::__conformance_cases! { ($make) $cases }
            }
        )+
    };
    (
        drivers($metadata:ident): { $($driver:ident => $make:expr),+ $(,)? }
        cases: $cases:tt $(,)?
    ) => {
        $(
            mod $driver {
                #[allow(unused_imports)]
                use super::*;
                $crate::__conformance_cases! { ($metadata, $make) $cases }
            }
        )+
    };
}

/// The tests of one driver's module; see [`conformance!`].
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    (($make:expr) [$($case:ident),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                super::$case($make);
            }
        )*
    };
    (($metadata:ident, $make:expr) [$($case:ident $(with $with:expr)?),* $(,)?]) => {
        $(
            #[test]
            fn $case() {
                #[allow(unused_mut, unused_assignments)]
                let mut $metadata: &[(&str, &str)] = &[];
                $( $metadata = $with; )?
                super::$case($make);
            }
        )*
    };
}
