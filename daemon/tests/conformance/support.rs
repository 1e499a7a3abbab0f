//! What every conformance suite shares: the driver under test, the component
//! document that selects it, retrying while a module or server comes back,
//! and the scaffolding of the outage tests of server-backed drivers.

use std::time::{Duration, Instant};

use mecha_abi::Status;
use mecha_client::blocking::Client;
use mecha_client::{Error, RetryPolicy};

pub use crate::common::component;
use crate::common::Daemon;
use crate::servers;

/// A driver under test: its type, the component document that selects it,
/// and what it claims (`F`, each suite's own `Features`).
pub struct Driver<F> {
    pub name: &'static str,
    pub component: String,
    pub features: F,
}

impl<F> Driver<F> {
    /// The driver of type `kind` as component `store`, with `metadata`.
    pub fn new(kind: &'static str, store: &str, metadata: &[(&str, String)], features: F) -> Self {
        Self {
            name: kind,
            component: component(store, kind, metadata),
            features,
        }
    }

    /// Starts mechad with this driver's component; see [`start`].
    pub fn start(&self) -> (Daemon, Client) {
        start(&self.component)
    }
}

/// What a driver claims in the suites whose only claim is durability (lock
/// and sequencer).
#[derive(Clone, Copy, Debug, Default)]
pub struct Durability {
    /// What the driver holds (leases, sequences) survives a restart of its
    /// module.
    pub durable: bool,
}

/// Starts mechad with `component` and returns it with a client.
pub fn start(component: &str) -> (Daemon, Client) {
    let d = Daemon::start_with(Some(component));
    let c = d.client();
    (d, c)
}

/// A connection string for the test PostgreSQL on `port`.
pub fn postgres_url(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2")
}

/// Retries a call while the module or its server is coming back
/// (UNAVAILABLE), for up to 20 s; any other answer is returned, or panics.
pub fn retry_unavailable<T>(mut call: impl FnMut() -> Result<T, Error>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match call() {
            Err(e) if e.status() == Some(Status::Unavailable) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            other => return other.unwrap(),
        }
    }
}

/// Asserts that `call` answers UNAVAILABLE naming component `store` within a
/// few attempts (the first after a loss may still find the old connection).
pub fn unavailable_soon<T: std::fmt::Debug>(
    store: &str,
    mut call: impl FnMut() -> Result<T, Error>,
) {
    let mut last = None;
    for _ in 0..30 {
        match call() {
            Err(e) if e.status() == Some(Status::Unavailable) => {
                let text = e.to_string();
                assert!(text.contains(store), "names the component: {text}");
                return;
            }
            other => last = Some(format!("{other:?}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("expected UNAVAILABLE, got {last:?}");
}

/// A store of `kind` on `server` (a private one, not started yet), in
/// module `module`: with the server down — also from the start, since the
/// module starts without it — `probe` answers UNAVAILABLE naming the
/// component and the server; after the server is started, `recovered` (given
/// the round's name) must wait for and check the store's recovery. Two rounds,
/// and neither mechad nor the module may have restarted.
pub fn survives_an_outage(
    mut server: servers::Restartable,
    (module, store, kind): (&str, &str, &str),
    metadata: &[(&str, String)],
    mut probe: impl FnMut(&Client) -> Result<(), Error>,
    mut recovered: impl FnMut(&Client, &str),
) {
    let d = Daemon::start_with(Some(&component(store, kind, metadata)));
    let mut c = d.client();
    c.set_retries(RetryPolicy::disabled());
    let (daemon, module_pid) = (d.pid(), d.module_pid(module));
    for round in ["at start", "after a restart of the server"] {
        let err = probe(&c).unwrap_err();
        assert_eq!(err.status(), Some(Status::Unavailable), "{round}: {err}");
        let message = err.to_string();
        let addr = format!("127.0.0.1:{}", server.port);
        assert!(
            message.contains(&format!("{store:?}")) && message.contains(&addr),
            "{round}: the message names the component and {addr}: {message}"
        );
        server.start();
        recovered(&c, round);
        server.stop();
    }
    assert_eq!(
        (d.pid(), d.module_pid(module)),
        (daemon, module_pid),
        "{kind} recovered without restarting mechad or the module"
    );
}
