//! The conformance suite, modelled on Dapr's components-contrib conformance
//! tests: one set of behaviour tests per capability, run through the real
//! daemon and module processes against every driver, with each driver's
//! claimed features. A driver must pass every test of every feature it claims;
//! for a feature it does not claim, the suite checks that the operation is
//! refused cleanly with UNSUPPORTED.
//!
//! Drivers backed by Redis, PostgreSQL, etcd or NATS use real servers started
//! on loopback by `conformance/servers.rs`.

mod common;

#[path = "conformance/servers.rs"]
mod servers;

#[path = "conformance/support.rs"]
mod support;

/// Expands to one module per driver, holding one `#[test]` per suite test.
/// Each test asks the driver's constructor for a component; a constructor
/// returns `None` (and the test skips with a message) only when the server it
/// needs is not installed and `MECHA_REQUIRE_SERVERS` is not set.
macro_rules! conformance {
    (drivers: [$($driver:ident),* $(,)?], tests: $tests:tt) => {
        $( conformance!(@driver $driver, $tests); )*
    };
    (@driver $driver:ident, [$($test:ident),* $(,)?]) => {
        mod $driver {
            $(
                #[test]
                fn $test() {
                    if let Some(driver) = super::drivers::$driver() {
                        super::$test(&driver);
                    }
                }
            )*
        }
    };
}

#[path = "conformance/state.rs"]
mod state;

/// The server harness itself: every server starts and answers on loopback.
mod harness {
    use std::net::TcpStream;

    use super::servers;

    fn reachable(server: Option<&'static servers::Server>) {
        if let Some(s) = server {
            assert!(
                TcpStream::connect(s.addr).is_ok(),
                "{} listens on {}",
                s.name,
                s.addr
            );
        }
    }

    #[test]
    fn redis_starts() {
        reachable(servers::redis());
    }

    #[test]
    fn postgres_starts() {
        reachable(servers::postgres());
    }

    #[test]
    fn etcd_starts() {
        reachable(servers::etcd());
    }

    #[test]
    fn nats_starts() {
        reachable(servers::nats());
    }
}

#[path = "conformance/sequencer.rs"]
mod sequencer;

#[path = "conformance/pubsub.rs"]
mod pubsub;

#[path = "conformance/lock.rs"]
mod lock;

#[path = "conformance/config.rs"]
mod config;

#[path = "conformance/dapr_files.rs"]
mod dapr_files;
