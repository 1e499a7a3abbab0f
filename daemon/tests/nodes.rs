//! Several nodes: two mechad daemons (two sockets, two data directories, as
//! on two machines) whose components share one real Redis and one real
//! PostgreSQL. What one node writes the other reads with the same ETag, a lock
//! held through one excludes the other, a consumer group spread over both
//! receives each message once, and sequence ids never collide. Also: a
//! backend killed in the middle of a load and started again loses no write it
//! had acknowledged, and service resumes by itself.

mod common;

#[path = "conformance/servers.rs"]
mod servers;

// Only the component builder and the PostgreSQL URL are used here.
#[allow(dead_code)]
#[path = "conformance/support.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{wait_until, Daemon};
use mecha_client::{SetOptions, Status};
use support::{component, postgres_url};

/// Two daemons started with the same configuration: the same components on
/// the same servers, as every node of a cluster would have.
fn two_nodes(config: &str) -> (Daemon, Daemon) {
    (
        Daemon::start_with(Some(config)),
        Daemon::start_with(Some(config)),
    )
}

/// Both shared servers, or `None` (the test skips) when one is not installed.
fn servers() -> Option<(&'static servers::Server, &'static servers::Server)> {
    Some((servers::redis()?, servers::postgres()?))
}

/// A state store on each backend, under a prefix or table of its own.
fn state_config(redis: &servers::Server, pg: &servers::Server) -> String {
    [
        component(
            "onredis",
            "state.redis",
            &[
                ("redisHost", redis.host_port()),
                ("keyPrefix", servers::unique("nodes")),
            ],
        ),
        component(
            "onpg",
            "state.postgresql",
            &[
                ("connectionString", postgres_url(pg.port())),
                ("tableName", servers::unique("nodes")),
            ],
        ),
    ]
    .join("---\n")
}

#[test]
fn state_written_on_one_node_is_read_on_the_other_with_its_etag() {
    let Some((redis, pg)) = servers() else { return };
    let (a, b) = two_nodes(&state_config(redis, pg));
    let (ca, cb) = (a.client(), b.client());
    for store in ["onredis", "onpg"] {
        let etag = ca
            .set(store, "order-7", b"from a".to_vec(), SetOptions::default())
            .unwrap();
        let seen = cb.get(store, "order-7").unwrap().expect("b sees a's write");
        assert_eq!(
            (seen.value.as_slice(), &seen.etag),
            (&b"from a"[..], &etag),
            "{store}"
        );
        // First write wins across nodes: b updates with the ETag it read,
        // then a's now stale ETag is refused.
        let newer = cb
            .set(
                store,
                "order-7",
                b"from b".to_vec(),
                SetOptions {
                    etag: Some(etag.clone()),
                    ttl: None,
                },
            )
            .unwrap();
        let stale = ca
            .set(
                store,
                "order-7",
                b"stale".to_vec(),
                SetOptions {
                    etag: Some(etag),
                    ttl: None,
                },
            )
            .unwrap_err();
        assert_eq!(stale.status(), Some(Status::EtagMismatch), "{store}");
        let seen = ca.get(store, "order-7").unwrap().expect("still there");
        assert_eq!(
            (seen.value.as_slice(), &seen.etag),
            (&b"from b"[..], &newer),
            "{store}"
        );
    }
}

#[test]
fn a_lock_held_through_one_node_excludes_the_other() {
    let Some((redis, _)) = servers() else { return };
    let config = component(
        "locks",
        "lock.redis",
        &[
            ("redisHost", redis.host_port()),
            ("keyPrefix", servers::unique("nodes")),
        ],
    );
    let (a, b) = two_nodes(&config);
    let (ca, cb) = (a.client(), b.client());
    let ttl = Duration::from_secs(30);
    let first = ca
        .try_lock("locks", "invoice-9", "worker-a", ttl, None)
        .unwrap()
        .expect("a takes the free lock");
    assert_eq!(
        cb.try_lock("locks", "invoice-9", "worker-b", ttl, None)
            .unwrap(),
        None,
        "b is excluded while a holds it"
    );
    ca.unlock("locks", "invoice-9", "worker-a").unwrap();
    let second = cb
        .try_lock("locks", "invoice-9", "worker-b", ttl, None)
        .unwrap()
        .expect("b takes it once a let go");
    assert!(
        second > first,
        "fencing tokens grow across nodes: {first} then {second}"
    );
}

#[test]
fn sequence_ids_never_collide_across_nodes() {
    let Some((redis, pg)) = servers() else { return };
    let config = [
        component(
            "seqredis",
            "sequencer.redis",
            &[
                ("redisHost", redis.host_port()),
                ("keyPrefix", servers::unique("nodes")),
            ],
        ),
        component(
            "seqpg",
            "sequencer.postgresql",
            &[
                ("connectionString", postgres_url(pg.port())),
                ("tableName", servers::unique("nodes")),
            ],
        ),
    ]
    .join("---\n");
    let (a, b) = two_nodes(&config);
    for store in ["seqredis", "seqpg"] {
        let ids = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = [&a, &b, &a, &b]
            .iter()
            .map(|d| {
                let c = d.client();
                let ids = Arc::clone(&ids);
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let id = c.next_id(store, "invoice").unwrap();
                        ids.lock().unwrap().push(id);
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().expect("a worker panicked");
        }
        let ids = ids.lock().unwrap();
        let distinct: HashSet<u64> = ids.iter().copied().collect();
        assert_eq!(
            distinct.len(),
            ids.len(),
            "{store}: no id was handed out twice"
        );
        assert_eq!(ids.len(), 200);
    }
}

#[test]
fn a_consumer_group_spread_over_both_nodes_gets_each_message_once() {
    let Some((redis, _)) = servers() else { return };
    // No consumerID: each node names its own consumer within the group, as
    // Dapr sidecars on different hosts do.
    let config = component(
        "events",
        "pubsub.redis",
        &[("redisHost", redis.host_port())],
    );
    let (a, b) = two_nodes(&config);
    let topic = servers::unique("orders");
    let received = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let members: Vec<_> = [&a, &b]
        .iter()
        .map(|d| {
            let c = d.client();
            let (topic, received, stop) = (topic.clone(), Arc::clone(&received), Arc::clone(&stop));
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let member = std::thread::spawn(move || {
                let mut sub = c
                    .subscribe("events", &topic, "billing", Default::default())
                    .unwrap();
                ready_tx.send(()).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if let Some(delivery) = sub.next_timeout(Duration::from_millis(200)) {
                        let delivery = delivery.unwrap();
                        sub.ack(&delivery).unwrap();
                        received.lock().unwrap().push(delivery.data);
                    }
                }
            });
            ready_rx.recv().expect("the member subscribed");
            member
        })
        .collect();
    let publisher = a.client();
    let total = 60;
    for i in 0..total {
        publisher
            .publish(
                "events",
                &topic,
                format!("m{i}").into_bytes(),
                Default::default(),
            )
            .unwrap();
    }
    wait_until(Duration::from_secs(30), "every message to arrive", || {
        received.lock().unwrap().len() >= total
    });
    // Give a duplicate, if there were one, the time to show up.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.join().expect("a member panicked");
    }
    let got = received.lock().unwrap();
    let distinct: HashSet<&Vec<u8>> = got.iter().collect();
    assert_eq!(got.len(), total, "each message was received exactly once");
    assert_eq!(distinct.len(), total);
}

/// A Redis that keeps its data (fsync'd append-only file) is killed while
/// writes stream in through mechad, then started again on the same port and
/// data. While it is down, writes fail with UNAVAILABLE; every write that was
/// acknowledged before, during or after the outage is there afterwards; and
/// writes succeed again without restarting mechad or the module.
#[test]
fn a_backend_killed_mid_load_loses_no_acknowledged_write() {
    let Some(mut server) = servers::Restartable::redis() else {
        return;
    };
    server.start();
    let config = component(
        "durable",
        "state.redis",
        &[("redisHost", format!("127.0.0.1:{}", server.port))],
    );
    let d = Daemon::start_with(Some(&config));
    let (daemon_pid, module_pid) = (d.pid(), d.module_pid("state"));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let unavailable = Arc::new(Mutex::new(0usize));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let mut c = d.client();
        c.set_retries(mecha_client::RetryPolicy::disabled());
        let (acked, unavailable, stop) = (
            Arc::clone(&acked),
            Arc::clone(&unavailable),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("k{i}");
                match c.set(
                    "durable",
                    &key,
                    i.to_le_bytes().to_vec(),
                    SetOptions::default(),
                ) {
                    Ok(_) => acked.lock().unwrap().push(i),
                    Err(e) => {
                        // Only the outage may fail a write, and only as
                        // UNAVAILABLE (or the client's own deadline).
                        assert!(
                            matches!(
                                e.status(),
                                Some(Status::Unavailable | Status::DeadlineExceeded)
                            ),
                            "write {i}: {e}"
                        );
                        *unavailable.lock().unwrap() += 1;
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
                i += 1;
            }
        })
    };
    wait_until(Duration::from_secs(20), "writes to flow", || {
        acked.lock().unwrap().len() >= 100
    });
    server.stop();
    wait_until(
        Duration::from_secs(20),
        "writes to fail while Redis is down",
        || *unavailable.lock().unwrap() >= 3,
    );
    let before_restart = acked.lock().unwrap().len();
    server.start();
    wait_until(Duration::from_secs(30), "writes to resume", || {
        acked.lock().unwrap().len() >= before_restart + 100
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("the writer panicked");

    let c = d.client();
    let acked = acked.lock().unwrap();
    for i in acked.iter() {
        let entry = c
            .get("durable", &format!("k{i}"))
            .unwrap()
            .unwrap_or_else(|| panic!("acknowledged write k{i} was lost"));
        assert_eq!(entry.value, i.to_le_bytes());
    }
    assert_eq!(
        (d.pid(), d.module_pid("state")),
        (daemon_pid, module_pid),
        "service resumed without restarting mechad or the module"
    );
}
