//! State store conformance: CRUD, ETags (first-write-wins), TTL, bulk
//! operations, transactions and durability across a module restart, for every
//! state driver, through mechad and the state module.

use std::time::{Duration, Instant};

use mecha_abi::msg::{DeleteItem, SetItem, TxOp};
use mecha_abi::Status;
use mecha_client::{Error, SetOptions};

use crate::common::{wait_until, Daemon};
use crate::servers;
use crate::support::{self, component, postgres_url, retry_unavailable};

/// The component name every state conformance test uses.
const STORE: &str = "conf";

/// What a driver claims to support.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// Keys can carry a TTL and disappear after it.
    pub ttl: bool,
    /// TRANSACT applies several operations atomically.
    pub transactions: bool,
    /// Data survives a restart of the state module.
    pub durable: bool,
}

/// A state driver under test.
pub type Driver = support::Driver<Features>;

/// The drivers this suite runs against. Each function returns `None` only
/// when the server its driver needs is missing (see `servers`).
pub mod drivers {
    use super::*;

    pub fn memory() -> Option<Driver> {
        Some(Driver::new(
            "state.memory",
            STORE,
            &[],
            Features {
                ttl: true,
                transactions: true,
                durable: false,
            },
        ))
    }

    pub fn redb() -> Option<Driver> {
        Some(Driver::new(
            "state.redb",
            STORE,
            &[],
            Features {
                ttl: true,
                transactions: true,
                durable: true,
            },
        ))
    }

    /// The shared Redis, with a key prefix of this test's own, so tests
    /// running at once never see each other's keys or revision counter.
    pub fn redis() -> Option<Driver> {
        let server = servers::redis()?;
        Some(Driver::new(
            "state.redis",
            STORE,
            &[
                ("redisHost", server.host_port()),
                ("keyPrefix", servers::unique("conf")),
            ],
            Features {
                ttl: true,
                transactions: true,
                durable: true,
            },
        ))
    }

    /// The shared PostgreSQL, with a table of this test's own.
    pub fn postgresql() -> Option<Driver> {
        let server = servers::postgres()?;
        Some(Driver::new(
            "state.postgresql",
            STORE,
            &[
                ("connectionString", postgres_url(server.port())),
                ("tableName", servers::unique("state")),
            ],
            Features {
                ttl: true,
                transactions: true,
                durable: true,
            },
        ))
    }
}

conformance! {
    drivers: [memory, redb, redis, postgresql],
    tests: [
        set_get_delete_round_trip,
        get_missing_is_none,
        last_write_wins_without_etag,
        etag_first_write_wins,
        etag_on_missing_key_mismatches,
        delete_with_etag,
        bulk_get_keeps_order_and_reports_missing,
        bulk_set_returns_etags,
        large_value_round_trips,
        ttl_expires_or_is_unsupported,
        transaction_is_atomic_or_unsupported,
        data_survives_module_restart_when_durable,
    ]
}

fn opts(etag: Option<&str>, ttl: Option<Duration>) -> SetOptions {
    SetOptions {
        etag: etag.map(str::to_owned),
        ttl,
    }
}

fn status(e: Error) -> Option<Status> {
    e.status()
}

fn set_get_delete_round_trip(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("k");
    let etag = c
        .set(STORE, &key, b"hello".to_vec(), opts(None, None))
        .unwrap();
    assert!(!etag.is_empty(), "{}: a write returns an ETag", driver.name);
    let got = c.get(STORE, &key).unwrap().expect("the key exists");
    assert_eq!(got.value, b"hello");
    assert_eq!(
        got.etag, etag,
        "{}: get returns the write's ETag",
        driver.name
    );
    assert!(c.delete(STORE, &key, None).unwrap(), "delete finds the key");
    assert_eq!(c.get(STORE, &key).unwrap(), None);
    assert!(
        !c.delete(STORE, &key, None).unwrap(),
        "a second delete finds nothing"
    );
}

fn get_missing_is_none(driver: &Driver) {
    let (_d, c) = driver.start();
    assert_eq!(c.get(STORE, &servers::unique("missing")).unwrap(), None);
}

fn last_write_wins_without_etag(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("lww");
    let e1 = c
        .set(STORE, &key, b"one".to_vec(), opts(None, None))
        .unwrap();
    let e2 = c
        .set(STORE, &key, b"two".to_vec(), opts(None, None))
        .unwrap();
    assert_ne!(e1, e2, "{}: every write gets a new ETag", driver.name);
    assert_eq!(c.get(STORE, &key).unwrap().unwrap().value, b"two");
}

fn etag_first_write_wins(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("etag");
    let e1 = c
        .set(STORE, &key, b"v1".to_vec(), opts(None, None))
        .unwrap();
    let e2 = c
        .set(STORE, &key, b"v2".to_vec(), opts(Some(&e1), None))
        .unwrap();
    // The first writer's ETag is now stale: its write must be refused and
    // must change nothing.
    let err = c
        .set(STORE, &key, b"stale".to_vec(), opts(Some(&e1), None))
        .unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "{}", driver.name);
    let got = c.get(STORE, &key).unwrap().unwrap();
    assert_eq!(
        (got.value.as_slice(), got.etag.as_str()),
        (&b"v2"[..], e2.as_str())
    );
}

fn etag_on_missing_key_mismatches(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("ghost");
    let err = c
        .set(STORE, &key, b"v".to_vec(), opts(Some("1"), None))
        .unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "{}", driver.name);
    assert_eq!(c.get(STORE, &key).unwrap(), None, "nothing was written");
}

fn delete_with_etag(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("del");
    let e1 = c
        .set(STORE, &key, b"v1".to_vec(), opts(None, None))
        .unwrap();
    let e2 = c
        .set(STORE, &key, b"v2".to_vec(), opts(None, None))
        .unwrap();
    let err = c.delete(STORE, &key, Some(e1)).unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "{}", driver.name);
    assert!(
        c.get(STORE, &key).unwrap().is_some(),
        "a refused delete keeps the key"
    );
    assert!(c.delete(STORE, &key, Some(e2)).unwrap());
    assert_eq!(c.get(STORE, &key).unwrap(), None);
}

fn bulk_get_keeps_order_and_reports_missing(driver: &Driver) {
    let (_d, c) = driver.start();
    let a = servers::unique("a");
    let b = servers::unique("b");
    let missing = servers::unique("none");
    c.set(STORE, &a, b"A".to_vec(), opts(None, None)).unwrap();
    c.set(STORE, &b, b"B".to_vec(), opts(None, None)).unwrap();
    let items = c
        .bulk_get(STORE, vec![b.clone(), missing.clone(), a.clone()])
        .unwrap();
    let got: Vec<(String, Option<Vec<u8>>)> = items
        .into_iter()
        .map(|i| (i.key, i.entry.map(|e| e.value)))
        .collect();
    assert_eq!(
        got,
        vec![
            (b, Some(b"B".to_vec())),
            (missing, None),
            (a, Some(b"A".to_vec())),
        ],
        "{}",
        driver.name
    );
}

fn bulk_set_returns_etags(driver: &Driver) {
    let (_d, c) = driver.start();
    let keys: Vec<String> = (0..5)
        .map(|i| servers::unique(&format!("bulk{i}")))
        .collect();
    let items = keys
        .iter()
        .map(|k| SetItem {
            key: k.clone(),
            value: k.as_bytes().to_vec(),
            etag: None,
            ttl_ms: None,
        })
        .collect();
    let etags = c.bulk_set(STORE, items).unwrap();
    assert_eq!(etags.len(), keys.len());
    for (k, etag) in keys.iter().zip(etags) {
        let got = c
            .get(STORE, k)
            .unwrap()
            .expect("every bulk item was written");
        assert_eq!((got.value, got.etag), (k.as_bytes().to_vec(), etag));
    }
}

fn large_value_round_trips(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("big");
    let value: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    c.set(STORE, &key, value.clone(), opts(None, None)).unwrap();
    assert_eq!(
        c.get(STORE, &key).unwrap().unwrap().value,
        value,
        "{}",
        driver.name
    );
}

fn ttl_expires_or_is_unsupported(driver: &Driver) {
    let (_d, c) = driver.start();
    let key = servers::unique("ttl");
    let long = servers::unique("long");
    let result = c.set(
        STORE,
        &key,
        b"brief".to_vec(),
        opts(None, Some(Duration::from_millis(300))),
    );
    if !driver.features.ttl {
        assert_eq!(
            status(result.unwrap_err()),
            Some(Status::Unsupported),
            "{}",
            driver.name
        );
        assert_eq!(
            c.get(STORE, &key).unwrap(),
            None,
            "an unsupported write changes nothing"
        );
        return;
    }
    result.unwrap();
    c.set(
        STORE,
        &long,
        b"stays".to_vec(),
        opts(None, Some(Duration::from_secs(3600))),
    )
    .unwrap();
    assert!(c.get(STORE, &key).unwrap().is_some(), "live before its TTL");
    let start = Instant::now();
    wait_until(Duration::from_secs(10), "the TTL to expire the key", || {
        c.get(STORE, &key).unwrap().is_none()
    });
    assert!(start.elapsed() > Duration::ZERO);
    assert!(
        c.get(STORE, &long).unwrap().is_some(),
        "{}: a long TTL keeps its key",
        driver.name
    );
}

fn transaction_is_atomic_or_unsupported(driver: &Driver) {
    let (_d, c) = driver.start();
    let a = servers::unique("txa");
    let b = servers::unique("txb");
    let ea = c.set(STORE, &a, b"a0".to_vec(), opts(None, None)).unwrap();
    let ops = |etag: &str| {
        vec![
            TxOp::Set(SetItem {
                key: a.clone(),
                value: b"a1".to_vec(),
                etag: Some(etag.to_owned()),
                ttl_ms: None,
            }),
            TxOp::Set(SetItem {
                key: b.clone(),
                value: b"b1".to_vec(),
                etag: None,
                ttl_ms: None,
            }),
        ]
    };
    let good = c.transact(STORE, ops(&ea));
    if !driver.features.transactions {
        assert_eq!(
            status(good.unwrap_err()),
            Some(Status::Unsupported),
            "{}",
            driver.name
        );
        assert_eq!(
            c.get(STORE, &b).unwrap(),
            None,
            "an unsupported transaction changes nothing"
        );
        return;
    }
    let etags = good.unwrap();
    assert_eq!(etags.len(), 2);
    assert_eq!(c.get(STORE, &b).unwrap().unwrap().value, b"b1");
    // Now with a stale ETag on the first op: neither op may be applied.
    c.delete(STORE, &b, None).unwrap();
    let err = c.transact(STORE, ops(&ea)).unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "{}", driver.name);
    assert_eq!(c.get(STORE, &a).unwrap().unwrap().value, b"a1");
    assert_eq!(
        c.get(STORE, &b).unwrap(),
        None,
        "{}: a failed transaction is all-or-nothing",
        driver.name
    );
    // A delete inside a transaction.
    let ea1 = c.get(STORE, &a).unwrap().unwrap().etag;
    c.transact(
        STORE,
        vec![TxOp::Delete(DeleteItem {
            key: a.clone(),
            etag: Some(ea1),
        })],
    )
    .unwrap();
    assert_eq!(c.get(STORE, &a).unwrap(), None);
}

fn data_survives_module_restart_when_durable(driver: &Driver) {
    let (d, c) = driver.start();
    let key = servers::unique("durable");
    let etag = c
        .set(STORE, &key, b"kept".to_vec(), opts(None, None))
        .unwrap();
    d.restart_module("state");
    let got = retry_unavailable(|| c.get(STORE, &key));
    if driver.features.durable {
        let got = got.expect("a durable store keeps the key");
        assert_eq!(
            (got.value.as_slice(), got.etag.as_str()),
            (&b"kept"[..], etag.as_str())
        );
    } else {
        assert_eq!(
            got, None,
            "{}: claims no durability, so should lose the key",
            driver.name
        );
    }
}

/// A store on `server` survives its outage (see
/// [`support::survives_an_outage`]): once the server is back, writes and
/// reads work again.
fn survives_an_outage(server: servers::Restartable, kind: &str, metadata: &[(&str, String)]) {
    let key = servers::unique("outage");
    support::survives_an_outage(
        server,
        ("state", STORE, kind),
        metadata,
        |c| c.get(STORE, &key).map(drop),
        |c, round| {
            wait_until(Duration::from_secs(30), "the store to recover", || {
                c.set(STORE, &key, round.as_bytes().to_vec(), opts(None, None))
                    .is_ok()
            });
            assert_eq!(c.get(STORE, &key).unwrap().unwrap().value, round.as_bytes());
        },
    );
}

#[test]
fn redis_outage_is_unavailable_then_recovers() {
    let Some(server) = servers::Restartable::redis() else {
        return;
    };
    let host = format!("127.0.0.1:{}", server.port);
    survives_an_outage(server, "state.redis", &[("redisHost", host)]);
}

#[test]
fn postgresql_outage_is_unavailable_then_recovers() {
    let Some(server) = servers::Restartable::postgres() else {
        return;
    };
    let url = postgres_url(server.port);
    survives_an_outage(server, "state.postgresql", &[("connectionString", url)]);
}

/// `ttlInSeconds` gives sets without a TTL of their own one.
#[test]
fn redis_default_ttl_applies_to_sets_without_one() {
    let Some(server) = servers::redis() else {
        return;
    };
    let doc = component(
        STORE,
        "state.redis",
        &[
            ("redisHost", server.host_port()),
            ("keyPrefix", servers::unique("ttl")),
            ("ttlInSeconds", "1".to_owned()),
        ],
    );
    let d = Daemon::start_with(Some(&doc));
    let c = d.client();
    let key = servers::unique("default_ttl");
    c.set(STORE, &key, b"brief".to_vec(), opts(None, None))
        .unwrap();
    assert!(c.get(STORE, &key).unwrap().is_some(), "live at first");
    wait_until(Duration::from_secs(10), "the default TTL to expire", || {
        c.get(STORE, &key).unwrap().is_none()
    });
}

/// The sweeper deletes expired rows every `cleanupIntervalInSeconds`; reads
/// ignore them before that.
#[test]
fn postgresql_sweeper_deletes_expired_rows() {
    let Some(server) = servers::postgres() else {
        return;
    };
    let table = servers::unique("swept");
    let doc = component(
        STORE,
        "state.postgresql",
        &[
            ("connectionString", postgres_url(server.port())),
            ("tableName", table.clone()),
            ("cleanupIntervalInSeconds", "1".to_owned()),
        ],
    );
    let d = Daemon::start_with(Some(&doc));
    let c = d.client();
    let (brief, kept) = (servers::unique("brief"), servers::unique("kept"));
    c.set(
        STORE,
        &brief,
        b"x".to_vec(),
        opts(None, Some(Duration::from_millis(100))),
    )
    .unwrap();
    c.set(STORE, &kept, b"y".to_vec(), opts(None, None))
        .unwrap();
    let rows = || {
        servers::psql(
            server.port(),
            &format!("SELECT key FROM {table} ORDER BY key"),
        )
    };
    wait_until(
        Duration::from_secs(15),
        "the sweeper to delete the row",
        || rows() == kept,
    );
    assert_eq!(c.get(STORE, &brief).unwrap(), None);
}

/// Checks what every networked store promises about its ETags on the first
/// writes of a tenant whose store already has an old store-wide counter at
/// `floor`: the first set is above it, ETag-checked sets and deletes (one
/// statement or script each) take the exact ETag and refuse any other
/// spelling of the same number, and a failed check changes nothing.
fn revisions_start_above(c: &mecha_client::blocking::Client, floor: u64) {
    let key = servers::unique("floor");
    let first = c
        .set(STORE, &key, b"v1".to_vec(), opts(None, None))
        .unwrap();
    assert_eq!(first, (floor + 1).to_string(), "above the old counter");
    let padded = format!("0{first}");
    let err = c
        .set(STORE, &key, b"no".to_vec(), opts(Some(&padded), None))
        .unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch));
    let err = c.delete(STORE, &key, Some(padded)).unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch));
    let second = c
        .set(STORE, &key, b"v2".to_vec(), opts(Some(&first), None))
        .unwrap();
    assert_eq!(
        second,
        (floor + 2).to_string(),
        "a mismatch takes no revision"
    );
    let entry = c.get(STORE, &key).unwrap().unwrap();
    assert_eq!(
        (entry.value.as_slice(), entry.etag.as_str()),
        (&b"v2"[..], second.as_str())
    );
    let err = c
        .set(STORE, &key, b"no".to_vec(), opts(Some(&first), None))
        .unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "an old ETag");
    assert!(c.delete(STORE, &key, Some(second)).unwrap());
    assert!(!c.delete(STORE, &key, None).unwrap(), "already gone");
    let err = c
        .set(STORE, &key, b"no".to_vec(), opts(Some(&first), None))
        .unwrap_err();
    assert_eq!(status(err), Some(Status::EtagMismatch), "a deleted key");
    let again = c
        .set(STORE, &key, b"v3".to_vec(), opts(None, None))
        .unwrap();
    assert_eq!(again, (floor + 3).to_string(), "never handed out before");
}

/// `state.redis` on a store whose old store-wide counter
/// `<prefix>|mecha-revision` is at 1000: a tenant's counter starts above it.
#[test]
fn redis_revisions_start_above_the_old_store_wide_counter() {
    let Some(server) = servers::redis() else {
        return;
    };
    let prefix = servers::unique("floor");
    let client =
        ::redis::Client::open(format!("redis://{}/", server.host_port())).expect("redis url");
    let mut con = client.get_connection().expect("connect to redis");
    ::redis::cmd("SET")
        .arg(format!("{prefix}|||mecha-revision"))
        .arg(1000)
        .query::<()>(&mut con)
        .expect("SET");
    let doc = component(
        STORE,
        "state.redis",
        &[("redisHost", server.host_port()), ("keyPrefix", prefix)],
    );
    let d = Daemon::start_with(Some(&doc));
    revisions_start_above(&d.client(), 1000);
}

/// `state.postgresql` on a table whose old store-wide sequence is at 5000:
/// a tenant's counter starts above it.
#[test]
fn postgresql_revisions_start_above_the_old_sequence() {
    let Some(server) = servers::postgres() else {
        return;
    };
    let table = servers::unique("floor");
    let doc = component(
        STORE,
        "state.postgresql",
        &[
            ("connectionString", postgres_url(server.port())),
            ("tableName", table.clone()),
        ],
    );
    let d = Daemon::start_with(Some(&doc));
    let c = d.client();
    // A read creates the tables and the sequence without a revision.
    assert_eq!(c.get(STORE, "nothing").unwrap(), None);
    servers::psql(
        server.port(),
        &format!("SELECT setval('{table}_revision', 5000)"),
    );
    revisions_start_above(&c, 5000);
}
