//! Input delivery, driven directly (no cron task): every enrolled tenant
//! gets each event once, a tenant's subscribers compete, a nack or an
//! expired ack deadline redelivers, a tenant that never acknowledges loses
//! only its own events, `maxTenants` bounds enrollment, and the ledger
//! completes a fan-out a crash interrupted without doubling or losing an
//! event.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::{AckItem, Delivery};
use mecha_mod_bindings::drivers::{self, Role};
use mecha_mod_bindings::error::BindingError;
use mecha_mod_bindings::input::ledger::{Ledger, Pending};
use mecha_mod_bindings::input::Input;
use mecha_mod_pubsub::broker::Subscriber;
use mecha_module::testing::{runtime, spec};

fn open(dir: &Path, extra: &[(&str, &str)]) -> Arc<Input> {
    let mut metadata = vec![("schedule", "@yearly")];
    metadata.extend_from_slice(extra);
    let mut ledger = None;
    let binding = drivers::open(&spec("ticks", "bindings.cron", &metadata), dir, &mut ledger)
        .unwrap_or_else(|e| panic!("opens: {e}"));
    match binding.role {
        Role::Input(input, _) => input,
        Role::Output(_) => panic!("an input binding"),
    }
}

async fn fire(input: &Input, cursor: u64) {
    input
        .fire(
            cursor,
            format!("event {cursor}").into_bytes(),
            vec![("time".into(), cursor.to_string())],
        )
        .await
        .expect("fired");
}

async fn next(sub: &Subscriber) -> Delivery {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("a delivery in time")
        .expect("a delivery")
}

/// Nothing more is delivered to `sub` for a moment.
async fn quiet(sub: &Subscriber) {
    let more = tokio::time::timeout(Duration::from_millis(200), sub.next()).await;
    assert!(more.is_err(), "an unexpected delivery: {more:?}");
}

async fn ack(input: &Input, tenant: &str, d: &Delivery, nack: bool) -> u32 {
    let item = AckItem {
        offset: d.offset,
        attempt: d.attempt,
    };
    input
        .ack(tenant, vec![item], nack)
        .await
        .expect("ack")
        .applied
}

fn time(d: &Delivery) -> &str {
    &d.metadata[0].1
}

#[test]
fn each_tenant_gets_each_event_once_and_its_subscribers_compete() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let input = open(dir.path(), &[]);
        let a1 = input.subscribe("a", 1, 0).await.expect("subscribe");
        let a2 = input.subscribe("a", 1, 0).await.expect("subscribe");
        let b = input.subscribe("b", 0, 0).await.expect("subscribe");
        fire(&input, 1).await;
        fire(&input, 2).await;
        // Each of a's subscribers holds one event at a time: they share
        // a's two events, one each.
        let (x, y) = (next(&a1).await, next(&a2).await);
        let mut times = [time(&x).to_owned(), time(&y).to_owned()];
        times.sort();
        assert_eq!(times, ["1", "2"]);
        assert_eq!(
            (
                ack(&input, "a", &x, false).await,
                ack(&input, "a", &y, false).await
            ),
            (1, 1)
        );
        quiet(&a1).await;
        let (b1, b2) = (next(&b).await, next(&b).await);
        assert_eq!((time(&b1), time(&b2)), ("1", "2"));
        assert_eq!(b1.data, b"event 1");
        quiet(&b).await;
        // A tenant that never subscribed has nothing to acknowledge.
        assert_eq!(ack(&input, "c", &b1, false).await, 0);
    });
}

#[test]
fn a_nack_or_an_expired_ack_deadline_delivers_again() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let input = open(dir.path(), &[]);
        let sub = input.subscribe("a", 0, 100).await.expect("subscribe");
        fire(&input, 1).await;
        let first = next(&sub).await;
        assert_eq!(first.attempt, 1);
        assert_eq!(ack(&input, "a", &first, true).await, 1);
        let again = next(&sub).await;
        assert_eq!((again.offset, again.attempt), (first.offset, 2));
        // Not acknowledged within its 100 ms deadline: delivered again.
        let third = next(&sub).await;
        assert_eq!((third.offset, third.attempt), (first.offset, 3));
        assert_eq!(ack(&input, "a", &third, false).await, 1);
        quiet(&sub).await;
    });
}

#[test]
fn a_tenant_that_never_acknowledges_loses_only_its_own_events() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let input = open(dir.path(), &[("maxMessages", "2")]);
        let stuck = input.subscribe("stuck", 0, 0).await.expect("subscribe");
        let fine = input.subscribe("fine", 0, 0).await.expect("subscribe");
        for cursor in 1..=4 {
            fire(&input, cursor).await;
            let d = next(&fine).await;
            assert_eq!(time(&d), cursor.to_string());
            ack(&input, "fine", &d, false).await;
        }
        // The stuck tenant's topic kept its first two events; the other
        // two were dropped for it alone.
        assert_eq!(input.dropped(), 2);
        assert_eq!(time(&next(&stuck).await), "1");
        assert_eq!(time(&next(&stuck).await), "2");
        quiet(&stuck).await;
    });
}

#[test]
fn enrollment_is_bounded_by_max_tenants() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let input = open(dir.path(), &[("maxTenants", "1")]);
        drop(input.subscribe("a", 0, 0).await.expect("the first tenant"));
        drop(
            input
                .subscribe("a", 0, 0)
                .await
                .expect("the same tenant again"),
        );
        match input.subscribe("b", 0, 0).await {
            Err(BindingError::TooLarge(message)) => assert!(message.contains("maxTenants")),
            other => panic!("a second tenant: {other:?}"),
        }
    });
}

/// A fan-out that a crash interrupted, as the ledger records it: tenant
/// `a`'s topic has moved past the recorded offset (its append was stored),
/// `b`'s has not. The restarted binding appends the event to `b` only, then
/// carries on; events, enrollment and the cursor survive the restart.
#[test]
fn an_interrupted_fan_out_is_completed_once_after_a_restart() {
    let rt = runtime();
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        let input = open(dir.path(), &[]);
        drop(input.subscribe("a", 0, 0).await.expect("subscribe"));
        drop(input.subscribe("b", 0, 0).await.expect("subscribe"));
        fire(&input, 1).await;
        assert_eq!(input.ready().await.expect("ready"), Some(1));
    });
    // The module "crashes": the binding and its files close.
    drop(rt);
    let rt = runtime();
    rt.block_on(async {
        let ledger = Ledger::open(dir.path().join("ledger.redb")).expect("ledger");
        let pending = Pending {
            cursor: 2,
            data: b"event 2".to_vec(),
            metadata: vec![("time".into(), "2".into())],
            tenants: vec![("a".into(), 1), ("b".into(), 2)],
        };
        ledger.begin("ticks", &pending).await.expect("recorded");
    });
    drop(rt);
    let rt = runtime();
    rt.block_on(async {
        let input = open(dir.path(), &[]);
        assert_eq!(input.ready().await.expect("recovered"), Some(2));
        fire(&input, 3).await;
        let a = input.subscribe("a", 0, 0).await.expect("subscribe");
        let b = input.subscribe("b", 0, 0).await.expect("subscribe");
        let mut got_a = Vec::new();
        for _ in 0..2 {
            got_a.push(time(&next(&a).await).to_owned());
        }
        quiet(&a).await;
        let mut got_b = Vec::new();
        for _ in 0..3 {
            got_b.push(time(&next(&b).await).to_owned());
        }
        quiet(&b).await;
        assert_eq!(got_a, ["1", "3"]);
        assert_eq!(got_b, ["1", "2", "3"]);
    });
}
