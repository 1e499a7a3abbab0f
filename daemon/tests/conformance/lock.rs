//! Lock store conformance: exclusive leases, owner-checked unlock and
//! extend, expiry, strictly increasing fencing tokens (also across a module
//! restart), concurrent contenders, and for server-backed drivers an outage
//! of the server while mechad keeps running.

use std::time::{Duration, Instant};

use mecha_abi::msg::UnlockStatus;
use mecha_client::blocking::Client;
use mecha_client::RetryPolicy;

use crate::common::{wait_until, Daemon};
use crate::servers;
use crate::support::{self, component, retry_unavailable, unavailable_soon};

/// The component name every lock conformance test uses.
const STORE: &str = "locks";

const LONG: Duration = Duration::from_secs(3600);

/// What a driver claims: with `durable`, held leases survive a restart of
/// the lock module.
pub type Features = support::Durability;

/// A lock driver under test.
pub type Driver = support::Driver<Features>;

pub mod drivers {
    use super::*;

    pub fn memory() -> Option<Driver> {
        Some(Driver::new(
            "lock.memory",
            STORE,
            &[],
            Features { durable: false },
        ))
    }

    pub fn redb() -> Option<Driver> {
        Some(Driver::new(
            "lock.redb",
            STORE,
            &[],
            Features { durable: true },
        ))
    }

    pub fn redis() -> Option<Driver> {
        let s = servers::redis()?;
        Some(Driver::new(
            "lock.redis",
            STORE,
            &[
                ("redisHost", s.host_port()),
                ("keyPrefix", format!("{}:", servers::unique("lock"))),
            ],
            Features { durable: true },
        ))
    }

    pub fn etcd() -> Option<Driver> {
        let s = servers::etcd()?;
        Some(Driver::new(
            "lock.etcd",
            STORE,
            &[
                ("endpoints", s.host_port()),
                ("keyPrefixPath", format!("{}/", servers::unique("lock"))),
            ],
            Features { durable: true },
        ))
    }
}

conformance! {
    drivers: [memory, redb, redis, etcd],
    tests: [
        acquire_is_exclusive,
        unlock_by_owner_only,
        lease_expiry_frees_the_lock,
        extend_renews_and_keeps_the_token,
        fencing_tokens_increase_across_owners_and_restarts,
        only_one_concurrent_contender_wins,
    ]
}

fn acquire_is_exclusive(driver: &Driver) {
    let (_d, c) = driver.start();
    let r = servers::unique("r");
    let token = c.try_lock(STORE, &r, "a", LONG, None).unwrap();
    assert!(token.is_some_and(|t| t >= 1), "{}: granted", driver.name);
    assert_eq!(c.try_lock(STORE, &r, "b", LONG, None).unwrap(), None);
    assert_eq!(
        c.try_lock(STORE, &r, "a", LONG, None).unwrap(),
        None,
        "{}: re-acquiring a held lock is not a grant, also for its holder",
        driver.name
    );
}

fn unlock_by_owner_only(driver: &Driver) {
    let (_d, c) = driver.start();
    let r = servers::unique("r");
    assert_eq!(
        c.unlock(STORE, &r, "a").unwrap(),
        UnlockStatus::LockDoesNotExist
    );
    c.try_lock(STORE, &r, "a", LONG, None)
        .unwrap()
        .expect("granted");
    assert_eq!(
        c.unlock(STORE, &r, "b").unwrap(),
        UnlockStatus::LockBelongsToOthers,
        "{}",
        driver.name
    );
    assert_eq!(c.unlock(STORE, &r, "a").unwrap(), UnlockStatus::Success);
    assert_eq!(
        c.unlock(STORE, &r, "a").unwrap(),
        UnlockStatus::LockDoesNotExist
    );
    assert!(c.try_lock(STORE, &r, "b", LONG, None).unwrap().is_some());
}

fn lease_expiry_frees_the_lock(driver: &Driver) {
    let (_d, c) = driver.start();
    let r = servers::unique("r");
    let first = c
        .try_lock(STORE, &r, "a", Duration::from_millis(300), None)
        .unwrap()
        .expect("granted");
    let mut second = None;
    wait_until(Duration::from_secs(10), "the lease to pass", || {
        second = c.try_lock(STORE, &r, "b", LONG, None).unwrap();
        second.is_some()
    });
    assert!(
        second > Some(first),
        "{}: a new grant, a greater token",
        driver.name
    );
    assert_eq!(
        c.unlock(STORE, &r, "a").unwrap(),
        UnlockStatus::LockBelongsToOthers
    );
    let ext = c.extend_lock(STORE, &r, "a", LONG).unwrap();
    assert_eq!(ext.status, UnlockStatus::LockBelongsToOthers);
}

fn extend_renews_and_keeps_the_token(driver: &Driver) {
    let (_d, c) = driver.start();
    let r = servers::unique("r");
    let free = c.extend_lock(STORE, &r, "a", LONG).unwrap();
    assert_eq!(
        (free.status, free.fencing_token),
        (UnlockStatus::LockDoesNotExist, 0)
    );
    let token = c
        .try_lock(STORE, &r, "a", Duration::from_millis(400), None)
        .unwrap()
        .expect("granted");
    let ext = c.extend_lock(STORE, &r, "a", LONG).unwrap();
    assert_eq!(
        (ext.status, ext.fencing_token),
        (UnlockStatus::Success, token),
        "{}",
        driver.name
    );
    let other = c.extend_lock(STORE, &r, "b", LONG).unwrap();
    assert_eq!(other.status, UnlockStatus::LockBelongsToOthers);
    // Past the original lease, the extended one still holds.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(800) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        c.try_lock(STORE, &r, "b", LONG, None).unwrap(),
        None,
        "{}: the extended lease is still held",
        driver.name
    );
}

fn fencing_tokens_increase_across_owners_and_restarts(driver: &Driver) {
    let (d, c) = driver.start();
    let r = servers::unique("r");
    let mut last = 0;
    for owner in ["a", "b", "c", "a"] {
        let token = c
            .try_lock(STORE, &r, owner, LONG, None)
            .unwrap()
            .expect("granted");
        assert!(token > last, "{}: {token} follows {last}", driver.name);
        last = token;
        assert_eq!(c.unlock(STORE, &r, owner).unwrap(), UnlockStatus::Success);
    }
    let held = servers::unique("held");
    let held_token = c
        .try_lock(STORE, &held, "h", LONG, None)
        .unwrap()
        .expect("granted");
    last = last.max(held_token);
    d.restart_module("lock");
    let token = retry_unavailable(|| c.try_lock(STORE, &r, "z", LONG, None)).expect("granted");
    assert!(
        token > last,
        "{}: after a restart {token} still follows {last}",
        driver.name
    );
    let again = retry_unavailable(|| c.try_lock(STORE, &held, "other", LONG, None));
    if driver.features.durable {
        assert_eq!(again, None, "{}: a held lease survives", driver.name);
    }
}

fn only_one_concurrent_contender_wins(driver: &Driver) {
    let (d, _c) = driver.start();
    let r = servers::unique("r");
    let winners: Vec<Option<u64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (d, r) = (&d, &r);
                s.spawn(move || {
                    d.client()
                        .try_lock(STORE, r, &format!("owner{i}"), LONG, None)
                        .unwrap()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("contender"))
            .collect()
    });
    assert_eq!(
        winners.iter().filter(|w| w.is_some()).count(),
        1,
        "{}: {winners:?}",
        driver.name
    );
}

/// Server-backed drivers: the module starts while the server is down,
/// answers UNAVAILABLE naming the component and server while it is down,
/// and serves again once it returns, without restarting mecha.
mod outage {
    use super::*;

    fn assert_unavailable(c: &Client, r: &str) {
        unavailable_soon(STORE, || c.try_lock(STORE, r, "x", LONG, None));
    }

    fn run(kind: &str, mut server: servers::Restartable, metadata: Vec<(&str, String)>) {
        let d = Daemon::start_with(Some(&component(STORE, kind, &metadata)));
        let mut c = d.client();
        c.set_retries(RetryPolicy::disabled());
        let r = servers::unique("r");
        // Down from the start: the module is up and says why it cannot serve.
        assert_unavailable(&c, &r);
        server.start();
        let mut token = None;
        wait_until(Duration::from_secs(30), "the server to be used", || {
            token = c.try_lock(STORE, &r, "a", LONG, None).ok().flatten();
            token.is_some()
        });
        server.stop();
        assert_unavailable(&c, &r);
        server.start();
        let r2 = servers::unique("r");
        wait_until(Duration::from_secs(30), "the driver to reconnect", || {
            matches!(c.try_lock(STORE, &r2, "b", LONG, None), Ok(Some(_)))
        });
    }

    #[test]
    fn redis_outage_is_unavailable_then_recovers() {
        let Some(server) = servers::Restartable::redis() else {
            return;
        };
        let host = format!("127.0.0.1:{}", server.port);
        run("lock.redis", server, vec![("redisHost", host)]);
    }

    #[test]
    fn etcd_outage_is_unavailable_then_recovers() {
        let Some(server) = servers::Restartable::etcd() else {
            return;
        };
        let endpoint = format!("127.0.0.1:{}", server.port);
        run("lock.etcd", server, vec![("endpoints", endpoint)]);
    }
}
