//! Per-tenant quotas through the real daemon: connections, request rate,
//! payload size and requests in flight, each refused with RESOURCE_EXHAUSTED
//! naming the limit, and a flooding tenant that cannot starve another.

mod common;

use std::time::Duration;

use common::{error_message, Daemon, Raw};
use mecha_abi::msg::{SetItem, SetRequest, TryLockRequest};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::SetOptions;

fn config(quota: &str) -> String {
    format!(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {{name: m}}\nspec:\n  quotas:\n    default: {{{quota}}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\nspec: {{type: state.memory, version: v1, metadata: []}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: lockstore}}\nspec: {{type: lock.memory, version: v1, metadata: []}}\n"
    )
}

fn set_frame(id: u32, key: &str, value: &[u8]) -> (Header, Vec<u8>) {
    let req = SetRequest {
        store: String::new(),
        item: SetItem {
            key: key.into(),
            value: value.to_vec(),
            etag: None,
            ttl_ms: None,
        },
    };
    (
        Header::request(Opcode::STATE_SET, id),
        mecha_abi::encode(&req).unwrap(),
    )
}

#[test]
fn max_connections_refuses_the_extra_connection_naming_the_quota() {
    let d = Daemon::start_with(Some(&config("maxConnections: 2")));
    // The start-up probe's connection holds a slot until the daemon has read
    // its end, so two connections are admitted once that has happened.
    let mut held = Vec::new();
    common::wait_until(Duration::from_secs(5), "two connections admitted", || {
        held.clear();
        for _ in 0..2 {
            let mut raw = Raw::connect(&d.socket);
            if raw.hello_status().0 != Status::Ok {
                return false;
            }
            held.push(raw);
        }
        true
    });
    let mut c = Raw::connect(&d.socket);
    let (h, p) = c.recv().expect("an error frame before the close");
    assert_eq!(Status::from_code(h.status), Status::ResourceExhausted);
    assert_eq!(h.request_id, 0);
    assert!(
        error_message(&p).contains("maxConnections"),
        "{}",
        error_message(&p)
    );
    assert!(c.recv().is_none(), "then the connection closes");
    // Closing one connection frees its slot.
    held.pop();
    common::wait_until(Duration::from_secs(5), "the slot to be released", || {
        let mut raw = Raw::connect(&d.socket);
        let hello = mecha_abi::encode(&mecha_abi::msg::Hello {
            min_version: 1,
            max_version: 1,
            client: "t".into(),
        })
        .unwrap();
        raw.send(Header::request(Opcode::HELLO, 1), &hello);
        matches!(raw.recv(), Some((h, _)) if h.status == 0)
    });
}

#[test]
fn request_rate_is_limited_by_a_token_bucket() {
    let d = Daemon::start_with(Some(&config("requestsPerSecond: 1, burst: 5")));
    let (mut raw, _) = Raw::hello(&d.socket);
    let mut refused = 0;
    for id in 1..=20u32 {
        let (h, p) = set_frame(id, "k", b"v");
        let (status, body) = raw.call(h, &p);
        match status {
            Status::Ok => {}
            Status::ResourceExhausted => {
                refused += 1;
                assert!(error_message(&body).contains("requestsPerSecond"));
            }
            other => panic!("unexpected {other}: {}", error_message(&body)),
        }
    }
    assert!(
        refused >= 10,
        "a 5-request burst at 1/s must refuse most of 20 quick requests, refused {refused}"
    );
    // Control requests are not rate limited: the connection stays usable.
    let (status, _) = raw.call(Header::request(Opcode::PING, 99), b"");
    assert_eq!(status, Status::Ok);
}

#[test]
fn payload_size_quota_refuses_big_values_and_keeps_the_connection() {
    let d = Daemon::start_with(Some(&config("maxPayloadBytes: 100")));
    let c = d.client();
    let err = c
        .set("", "big", vec![0u8; 200], SetOptions::default())
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::ResourceExhausted));
    assert!(err.to_string().contains("maxPayloadBytes"), "{err}");
    c.set("", "small", b"ok".to_vec(), SetOptions::default())
        .unwrap();
    assert_eq!(
        c.get("", "big").unwrap(),
        None,
        "the refused write did not land"
    );
}

#[test]
fn in_flight_quota_refuses_beyond_the_cap() {
    let d = Daemon::start_with(Some(&config("maxInFlight: 1")));
    let holder = d.client();
    holder
        .try_lock("", "r", "holder", Duration::from_secs(30), None)
        .unwrap()
        .unwrap();
    let (mut raw, _) = Raw::hello(&d.socket);
    // One request waits on the held lock, so the tenant's only slot is taken.
    let wait = TryLockRequest {
        store: String::new(),
        resource: "r".into(),
        owner: "w".into(),
        ttl_ms: 1000,
        wait_ms: 3000,
    };
    raw.send(
        Header::request(Opcode::LOCK_TRY_LOCK, 1),
        &mecha_abi::encode(&wait).unwrap(),
    );
    let (h, p) = set_frame(2, "k", b"v");
    let mut saw_refusal = false;
    let mut saw_wait_answer = false;
    raw.send(h, &p);
    for _ in 0..2 {
        let (h, body) = raw.recv().expect("answers");
        match h.request_id {
            2 => {
                assert_eq!(
                    Status::from_code(h.status),
                    Status::ResourceExhausted,
                    "{}",
                    error_message(&body)
                );
                assert!(error_message(&body).contains("maxInFlight"));
                saw_refusal = true;
            }
            1 => saw_wait_answer = true,
            other => panic!("unexpected answer {other}"),
        }
    }
    assert!(saw_refusal && saw_wait_answer);
    // With the slot free again, requests pass.
    let (h, p) = set_frame(3, "k", b"v");
    assert_eq!(raw.call(h, &p).0, Status::Ok);
}

#[test]
fn a_flooding_tenant_does_not_starve_another() {
    common::require_root();
    // Tenant "noisy" (root) is capped; the victim (nobody) has the default.
    let cfg = "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  tenants:\n  - name: noisy\n    uids: [0]\n  quotas:\n    tenants:\n      noisy: {maxInFlight: 8}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\nspec: {type: state.memory, version: v1, metadata: []}\n";
    let d = Daemon::start_with(Some(cfg));
    common::open_to_nobody(&d);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooders: Vec<_> = (0..4)
        .map(|t| {
            let socket = d.socket.clone();
            let stop = std::sync::Arc::clone(&stop);
            std::thread::spawn(move || {
                let (mut raw, _) = Raw::hello(&socket);
                let mut id = 1u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Pipeline 32 writes, then read their answers.
                    for _ in 0..32 {
                        let (h, p) = set_frame(id, &format!("flood-{t}-{id}"), &[1u8; 512]);
                        raw.send(h, &p);
                        id += 1;
                    }
                    for _ in 0..32 {
                        raw.recv().expect("flood answer");
                    }
                }
            })
        })
        .collect();
    // The victim's requests all succeed while the flood runs.
    for i in 0..20 {
        let key = format!("victim-{i}");
        let out = common::mechactl_as_nobody(&d, &["state", "set", &key, "v"]);
        assert!(
            out.status.success(),
            "victim write {i} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
}
