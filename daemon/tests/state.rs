//! State through the real daemon and the Rust client: round trips, ETags,
//! TTLs, transactions, bulk operations and pipelining.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, Raw};
use mecha_abi::msg::{DeleteItem, GetRequest, SetItem, SetRequest, StateEntry, TxOp};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::SetOptions;

fn item(key: &str, value: &str, etag: Option<String>) -> SetItem {
    SetItem {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        etag,
        ttl_ms: None,
    }
}

#[test]
fn set_get_delete_round_trip() {
    let d = Daemon::start();
    let c = d.client();
    assert!(c.tenant().starts_with("uid:"));
    let etag = c
        .set("", "greeting", b"hello".to_vec(), SetOptions::default())
        .unwrap();
    let got = c.get("", "greeting").unwrap().expect("key exists");
    assert_eq!(
        got,
        StateEntry {
            value: b"hello".to_vec(),
            etag
        }
    );
    assert!(c.delete("", "greeting", None).unwrap());
    assert_eq!(c.get("", "greeting").unwrap(), None);
    assert!(
        !c.delete("", "greeting", None).unwrap(),
        "second delete finds nothing"
    );
    // The named default store is the same store as "".
    c.set("statestore", "k", b"v".to_vec(), SetOptions::default())
        .unwrap();
    assert_eq!(c.get("", "k").unwrap().unwrap().value, b"v");
}

#[test]
fn etag_first_write_wins_and_last_write_wins_without_one() {
    let d = Daemon::start();
    let c = d.client();
    let e1 = c
        .set("", "doc", b"v1".to_vec(), SetOptions::default())
        .unwrap();
    let e2 = c
        .set(
            "",
            "doc",
            b"v2".to_vec(),
            SetOptions {
                etag: Some(e1.clone()),
                ttl: None,
            },
        )
        .unwrap();
    assert_ne!(e1, e2);
    let stale = c
        .set(
            "",
            "doc",
            b"v3".to_vec(),
            SetOptions {
                etag: Some(e1.clone()),
                ttl: None,
            },
        )
        .unwrap_err();
    assert_eq!(stale.status(), Some(Status::EtagMismatch), "{stale}");
    assert_eq!(
        c.get("", "doc").unwrap().unwrap().value,
        b"v2",
        "the stale write changed nothing"
    );
    let del = c.delete("", "doc", Some(e1)).unwrap_err();
    assert_eq!(del.status(), Some(Status::EtagMismatch));
    // Without an ETag the last write wins.
    c.set("", "doc", b"v4".to_vec(), SetOptions::default())
        .unwrap();
    assert_eq!(c.get("", "doc").unwrap().unwrap().value, b"v4");
    // An ETag on a missing key never matches.
    let missing = c
        .set(
            "",
            "nope",
            b"x".to_vec(),
            SetOptions {
                etag: Some("1".into()),
                ttl: None,
            },
        )
        .unwrap_err();
    assert_eq!(missing.status(), Some(Status::EtagMismatch));
}

#[test]
fn ttl_expires_keys() {
    let d = Daemon::start();
    let c = d.client();
    let short = SetOptions {
        etag: None,
        ttl: Some(Duration::from_millis(300)),
    };
    c.set("", "session", b"abc".to_vec(), short).unwrap();
    c.set("", "forever", b"x".to_vec(), SetOptions::default())
        .unwrap();
    assert!(
        c.get("", "session").unwrap().is_some(),
        "readable before its TTL"
    );
    wait_until(Duration::from_secs(5), "the TTL key to expire", || {
        c.get("", "session").unwrap().is_none()
    });
    assert!(c.get("", "forever").unwrap().is_some());
}

#[test]
fn transactions_apply_all_or_nothing() {
    let d = Daemon::start();
    let c = d.client();
    let ea = c
        .set("", "a", b"a0".to_vec(), SetOptions::default())
        .unwrap();
    c.set("", "c", b"c0".to_vec(), SetOptions::default())
        .unwrap();
    // The last op carries a stale ETag, so nothing may change.
    let ops = vec![
        TxOp::Set(item("a", "a1", Some(ea.clone()))),
        TxOp::Set(item("b", "b1", None)),
        TxOp::Delete(DeleteItem {
            key: "c".into(),
            etag: Some("999999".into()),
        }),
    ];
    let err = c.transact("", ops).unwrap_err();
    assert_eq!(err.status(), Some(Status::EtagMismatch), "{err}");
    assert_eq!(c.get("", "a").unwrap().unwrap().value, b"a0");
    assert_eq!(c.get("", "b").unwrap(), None);
    assert_eq!(c.get("", "c").unwrap().unwrap().value, b"c0");
    // The same transaction with valid ETags applies every op.
    let ops = vec![
        TxOp::Set(item("a", "a1", Some(ea))),
        TxOp::Set(item("b", "b1", None)),
        TxOp::Delete(DeleteItem {
            key: "c".into(),
            etag: None,
        }),
    ];
    let etags = c.transact("", ops).unwrap();
    assert!(etags[0].is_some() && etags[1].is_some() && etags[2].is_none());
    assert_eq!(c.get("", "a").unwrap().unwrap().value, b"a1");
    assert_eq!(c.get("", "b").unwrap().unwrap().value, b"b1");
    assert_eq!(c.get("", "c").unwrap(), None);
}

#[test]
fn bulk_get_and_bulk_set() {
    let d = Daemon::start();
    let c = d.client();
    let etags = c
        .bulk_set("", vec![item("x", "1", None), item("y", "2", None)])
        .unwrap();
    assert_eq!(etags.len(), 2);
    let items = c
        .bulk_get("", vec!["y".into(), "missing".into(), "x".into()])
        .unwrap();
    let keys: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    assert_eq!(keys, ["y", "missing", "x"]);
    assert_eq!(items[0].entry.as_ref().unwrap().value, b"2");
    assert!(items[1].entry.is_none());
    assert_eq!(items[2].entry.as_ref().unwrap().etag, etags[0]);
    // A bulk set with one stale ETag writes nothing.
    let err = c
        .bulk_set(
            "",
            vec![item("x", "9", None), item("y", "9", Some("1".into()))],
        )
        .unwrap_err();
    assert_eq!(err.status(), Some(Status::EtagMismatch));
    assert_eq!(c.get("", "x").unwrap().unwrap().value, b"1");
}

#[test]
fn hundred_pipelined_requests_on_one_async_connection() {
    let d = Daemon::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = mecha_client::Client::connect(&d.socket).await.unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..100 {
            let c = c.clone();
            tasks.spawn(async move {
                let key = format!("k{i}");
                c.set(
                    "",
                    &key,
                    format!("v{i}").into_bytes(),
                    SetOptions::default(),
                )
                .await
                .unwrap();
                let got = c.get("", &key).await.unwrap().unwrap();
                assert_eq!(got.value, format!("v{i}").into_bytes());
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    });
}

#[test]
fn hundred_frames_in_one_write_are_all_answered_by_id() {
    let d = Daemon::start();
    let (mut raw, _) = Raw::hello(&d.socket);
    let mut burst = Vec::new();
    for id in 100..200u32 {
        let req = SetRequest {
            store: String::new(),
            item: item(&format!("p{id}"), "v", None),
        };
        let frame = mecha_abi::encode_frame(
            Header::request(Opcode::STATE_SET, id),
            &mecha_abi::encode(&req).unwrap(),
        )
        .unwrap();
        burst.extend_from_slice(&frame);
    }
    raw.send_bytes(&burst);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let (h, _) = raw.recv().expect("an answer per request");
        assert_eq!(Status::from_code(h.status), Status::Ok);
        assert_eq!(h.opcode, Opcode::STATE_SET);
        assert!(
            seen.insert(h.request_id),
            "duplicate answer {}",
            h.request_id
        );
    }
    assert_eq!(seen, (100..200).collect());
    // And every write landed.
    let req = GetRequest {
        store: String::new(),
        key: "p150".into(),
    };
    let (status, _) = raw.call(
        Header::request(Opcode::STATE_GET, 7),
        &mecha_abi::encode(&req).unwrap(),
    );
    assert_eq!(status, Status::Ok);
}

#[test]
fn the_deploy_example_config_serves_both_stores() {
    let example = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/mecha.yaml"),
    )
    .unwrap();
    let d = Daemon::start_with(Some(&example));
    let c = d.client();
    c.set("cache", "k", b"volatile".to_vec(), SetOptions::default())
        .unwrap();
    c.set("", "k", b"durable".to_vec(), SetOptions::default())
        .unwrap();
    assert_eq!(c.get("cache", "k").unwrap().unwrap().value, b"volatile");
    assert_eq!(c.get("statestore", "k").unwrap().unwrap().value, b"durable");
    assert!(d.data_dir.join("state/statestore.redb").exists());
    let err = c.get("nosuch", "k").unwrap_err();
    assert_eq!(err.status(), Some(Status::InvalidArgument));
    assert!(err.to_string().contains("nosuch"), "{err}");
}
