//! Sequencer conformance: strictly increasing ids, batch allocation,
//! independent keys, no id reused across a module restart, disjoint ids for
//! concurrent clients, and recovery after the backing server was down, for
//! every sequencer driver, through mechad and the sequencer module.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::wait_until;
use crate::servers;
use crate::support::{self, component, postgres_url, retry_unavailable};

/// The component name every sequencer conformance test uses.
const SEQ: &str = "ids";

/// What a sequencer driver claims: with `durable`, sequences survive a
/// restart of the module.
pub type Features = support::Durability;

/// A sequencer driver under test.
pub type Driver = support::Driver<Features>;

/// The drivers this suite runs against; `None` only when a server is
/// missing (see `servers`). The networked ones run with small segments, so
/// that segment boundaries are crossed, and with a prefix or table of their
/// own per test.
pub mod drivers {
    use super::*;

    pub fn memory() -> Option<Driver> {
        Some(Driver::new(
            "sequencer.memory",
            SEQ,
            &[],
            Features { durable: false },
        ))
    }

    pub fn redb() -> Option<Driver> {
        Some(Driver::new(
            "sequencer.redb",
            SEQ,
            &[("segmentSize", "10".to_owned())],
            Features { durable: true },
        ))
    }

    pub fn redis() -> Option<Driver> {
        let server = servers::redis()?;
        Some(Driver::new(
            "sequencer.redis",
            SEQ,
            &[
                ("redisHost", server.host_port()),
                ("keyPrefix", servers::unique("seq")),
                ("segmentSize", "10".to_owned()),
            ],
            Features { durable: true },
        ))
    }

    pub fn postgresql() -> Option<Driver> {
        let server = servers::postgres()?;
        Some(Driver::new(
            "sequencer.postgresql",
            SEQ,
            &[
                ("connectionString", postgres_url(server.port())),
                ("tableName", servers::unique("seq")),
                ("segmentSize", "10".to_owned()),
            ],
            Features { durable: true },
        ))
    }
}

conformance! {
    drivers: [memory, redb, redis, postgresql],
    tests: [
        ids_strictly_increase,
        batches_are_consecutive,
        keys_are_independent,
        no_id_is_reused_across_a_module_restart,
        concurrent_clients_get_disjoint_ids,
    ]
}

fn ids_strictly_increase(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("inc");
    let ids: Vec<u64> = (0..25).map(|_| c.next_id(SEQ, &key).unwrap()).collect();
    assert_eq!(ids[0], 1, "{}: a new sequence starts at 1", driver.name);
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "{}: {ids:?}", driver.name);
    }
}

fn batches_are_consecutive(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("batch");
    let first = c.next_ids(SEQ, &key, 5).unwrap();
    assert_eq!(first.end - first.start, 5, "{}", driver.name);
    // Larger than a segment, so it needs a reservation of its own.
    let second = c.next_ids(SEQ, &key, 37).unwrap();
    assert_eq!(second.end - second.start, 37, "{}", driver.name);
    assert!(
        second.start >= first.end,
        "{}: {first:?} {second:?}",
        driver.name
    );
    let third = c.next_id(SEQ, &key).unwrap();
    assert!(third >= second.end, "{}", driver.name);
}

fn keys_are_independent(driver: &Driver) {
    let (_d, c) = driver.start();
    let a = servers::unique("a");
    let b = servers::unique("b");
    assert_eq!(c.next_ids(SEQ, &a, 3).unwrap(), 1..4);
    assert_eq!(c.next_id(SEQ, &b).unwrap(), 1, "{}", driver.name);
    assert_eq!(c.next_id(SEQ, &a).unwrap(), 4, "{}", driver.name);
}

fn no_id_is_reused_across_a_module_restart(driver: &Driver) {
    let (d, c) = driver.start();
    let key = servers::unique("restart");
    let before = c.next_ids(SEQ, &key, 3).unwrap();
    d.restart_module("sequencer");
    let after = retry_unavailable(|| c.next_id(SEQ, &key));
    if driver.features.durable {
        assert!(
            after >= before.end,
            "{}: {after} repeats an id of {before:?}",
            driver.name
        );
    } else {
        assert_eq!(after, 1, "{}: claims no durability", driver.name);
    }
}

fn concurrent_clients_get_disjoint_ids(driver: &Driver) {
    let (d, _c) = driver.start();
    let key = servers::unique("conc");
    let all: Vec<Vec<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = d.client();
                let key = key.clone();
                s.spawn(move || {
                    let mut ids = Vec::new();
                    for i in 0..20 {
                        ids.extend(c.next_ids(SEQ, &key, 1 + i % 3).unwrap());
                    }
                    ids
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut seen = HashSet::new();
    for ids in &all {
        for pair in ids.windows(2) {
            assert!(
                pair[0] < pair[1],
                "{}: one client's ids increase",
                driver.name
            );
        }
        for id in ids {
            assert!(
                seen.insert(*id),
                "{}: id {id} handed out twice",
                driver.name
            );
        }
    }
}

/// A sequencer on `server` answers UNAVAILABLE naming the component and the
/// server while it is down (also from the start), and hands out ids above
/// every earlier one once it returns, with neither mechad nor the module
/// restarted.
fn survives_an_outage(server: servers::Restartable, kind: &str, metadata: &[(&str, String)]) {
    let key = servers::unique("outage");
    let mut last = 0;
    support::survives_an_outage(
        server,
        ("sequencer", SEQ, kind),
        metadata,
        |c| c.next_id(SEQ, &key).map(drop),
        |c, round| {
            let mut id = 0;
            wait_until(Duration::from_secs(30), "the sequencer to recover", || {
                c.next_id(SEQ, &key).map(|got| id = got).is_ok()
            });
            assert!(id > last, "{round}: {id} follows {last}");
            last = id;
        },
    );
}

#[test]
fn redis_outage_is_unavailable_then_recovers() {
    let Some(server) = servers::Restartable::redis() else {
        return;
    };
    let host = format!("127.0.0.1:{}", server.port);
    survives_an_outage(server, "sequencer.redis", &[("redisHost", host)]);
}

#[test]
fn postgresql_outage_is_unavailable_then_recovers() {
    let Some(server) = servers::Restartable::postgres() else {
        return;
    };
    let url = postgres_url(server.port);
    survives_an_outage(server, "sequencer.postgresql", &[("connectionString", url)]);
}

/// Unusable metadata of a networked driver is refused when the module loads
/// it (no server is needed to find out), and mechad reports the rejection
/// naming the component and the field.
#[test]
fn bad_metadata_is_rejected_at_load() {
    let cases = [
        (
            "state.redis",
            vec![("keyPrefix", "p")],
            "\"redisHost\" is required",
        ),
        (
            "state.postgresql",
            vec![("connectionString", "host=h"), ("tableName", "a-b")],
            "\"tableName\"",
        ),
        (
            "sequencer.redis",
            vec![("redisHost", "h:1"), ("enableTLS", "true")],
            "\"enableTLS\"",
        ),
        (
            "sequencer.postgresql",
            vec![("connectionString", "host=h"), ("segmentSize", "0")],
            "\"segmentSize\"",
        ),
    ];
    for (kind, metadata, field) in cases {
        let metadata: Vec<(&str, String)> = metadata
            .iter()
            .map(|(k, v)| (*k, (*v).to_owned()))
            .collect();
        let dir = tempfile::tempdir().expect("a temp dir");
        let config = dir.path().join("config.yaml");
        std::fs::write(&config, component("broken", kind, &metadata)).expect("config");
        let out = std::process::Command::new(crate::common::bin_dir().join("mechad"))
            .arg("--socket")
            .arg(dir.path().join("s.sock"))
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--module-dir")
            .arg(crate::common::bin_dir())
            .arg("--config")
            .arg(&config)
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("running mechad");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{kind}: mechad must refuse to start");
        assert!(
            stderr.contains("rejected its configuration")
                && stderr.contains("\"broken\"")
                && stderr.contains(field),
            "{kind}: the error names the component and {field}: {stderr}"
        );
    }
}
