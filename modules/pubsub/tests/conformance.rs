//! Conformance tests: one set of behaviour tests, run against every pubsub
//! driver (through the broker every driver sits under), in the manner of
//! Dapr's components-contrib conformance suite.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use mecha_abi::msg::{
    AckItem, AckRequest, ComponentSpec, Delivery, PublishReply, PublishRequest, SubscribeRequest,
};
use mecha_mod_pubsub::broker::{Broker, Subscriber};
use mecha_mod_pubsub::drivers;
use mecha_mod_pubsub::error::PubsubError;
use mecha_module::testing::{self, temp_dir};
use mecha_module::DriverError;

/// How long a test watches for a delivery that must not come. Deliveries
/// that are due come within microseconds, so this is ample without slowing
/// the suite.
const QUIET: Duration = Duration::from_millis(200);

/// A short ack deadline, for waiting out.
const SHORT_ACK_MS: u32 = 150;

mecha_module::suite_harness! {
    /// One store under test (the SDK's harness over the broker every embedded
    /// driver sits under), with the pubsub operations the suite uses.
    struct Harness(Broker);
}

impl Harness {
    /// Opens a store of `kind` through the factory, so the factory is tested too.
    fn new(kind: &str, metadata: &[(&str, &str)]) -> Self {
        Self(testing::Harness::open(
            spec(kind, metadata),
            |spec: &ComponentSpec, dir: &Path| drivers::open_embedded(spec, dir).map(Box::new),
        ))
    }

    fn broker(&self) -> &Broker {
        self.store()
    }

    fn publish_req(&self, tenant: &str, req: &PublishRequest) -> Result<PublishReply, PubsubError> {
        self.block(self.broker().publish(tenant, req))
    }

    /// Publishes `data` with `metadata`; must succeed.
    fn publish_meta(
        &self,
        tenant: &str,
        topic: &str,
        data: &str,
        metadata: &[(&str, &str)],
    ) -> PublishReply {
        let req = PublishRequest {
            store: String::new(),
            topic: topic.to_owned(),
            data: data.as_bytes().to_vec(),
            content_type: "text/plain".to_owned(),
            metadata: metadata
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            raw: false,
        };
        self.publish_req(tenant, &req).expect("publish succeeds")
    }

    fn publish(&self, tenant: &str, topic: &str, data: &str) -> PublishReply {
        self.publish_meta(tenant, topic, data, &[])
    }

    fn subscribe_with(
        &self,
        tenant: &str,
        topic: &str,
        group: &str,
        max_in_flight: u32,
        ack_deadline_ms: u32,
    ) -> Subscriber {
        let req = SubscribeRequest {
            store: String::new(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            max_in_flight,
            ack_deadline_ms,
        };
        self.block(self.broker().subscribe(tenant, &req))
            .expect("subscribe succeeds")
    }

    /// A subscriber with default limits and a long ack deadline.
    fn subscribe(&self, tenant: &str, topic: &str, group: &str) -> Subscriber {
        self.subscribe_with(tenant, topic, group, 0, 0)
    }

    /// The next delivery, which must come within the harness's deadline.
    fn next(&self, sub: &Subscriber) -> Delivery {
        self.block_until("a delivery", sub.next())
            .expect("next succeeds")
    }

    /// Asserts that no delivery comes for `QUIET`.
    fn nothing(&self, sub: &Subscriber) {
        if let Some(got) = self.block_for(QUIET, sub.next()) {
            panic!("expected no delivery, got {got:?}");
        }
    }

    fn ack_items(&self, tenant: &str, d: &Delivery, items: Vec<AckItem>, nack: bool) -> u32 {
        let req = AckRequest {
            store: String::new(),
            topic: d.topic.clone(),
            group: d.group.clone(),
            items,
            nack,
        };
        self.block(self.broker().ack(tenant, &req))
            .expect("ack succeeds")
            .applied
    }

    fn ack(&self, tenant: &str, d: &Delivery) -> u32 {
        let item = AckItem {
            offset: d.offset,
            attempt: d.attempt,
        };
        self.ack_items(tenant, d, vec![item], false)
    }

    fn nack(&self, tenant: &str, d: &Delivery) -> u32 {
        let item = AckItem {
            offset: d.offset,
            attempt: d.attempt,
        };
        self.ack_items(tenant, d, vec![item], true)
    }
}

fn text(d: &Delivery) -> &str {
    std::str::from_utf8(&d.data).expect("UTF-8 test data")
}

fn meta<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.metadata
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

// ---- The behaviours every driver must show. ----

fn published_messages_are_delivered_in_an_envelope_and_acked(h: Harness) {
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let first = h.publish_meta("t", "orders", "one", &[("traceparent", tp), ("k", "v")]);
    let second = h.publish_meta("t", "orders", "two", &[("cloudevent.type", "order.paid")]);
    assert_eq!((first.offset, second.offset), (1, 2), "offsets start at 1");
    assert_ne!(first.id, second.id, "ids are unique");
    let sub = h.subscribe("t", "orders", "");
    assert_eq!(sub.group(), "default");
    let a = h.next(&sub);
    assert_eq!((a.offset, a.attempt, text(&a)), (1, 1, "one"));
    assert_eq!(a.id, first.id);
    assert_eq!(
        (a.store.as_str(), a.topic.as_str(), a.group.as_str()),
        ("events", "orders", "default")
    );
    assert_eq!(a.spec_version, "1.0");
    assert_eq!(a.source, "mecha://t");
    assert_eq!(a.event_type, "com.mecha.pubsub.message");
    assert_eq!(a.data_content_type, "text/plain");
    assert_eq!(a.trace_parent, tp);
    assert_eq!(meta(&a, "k"), Some("v"));
    assert!(!a.raw);
    // RFC 3339, UTC, milliseconds: 2026-11-27T11:25:39.123Z.
    assert_eq!(a.time.len(), 24, "{}", a.time);
    assert!(
        a.time.ends_with('Z') && a.time.as_bytes()[10] == b'T',
        "{}",
        a.time
    );
    let b = h.next(&sub);
    assert_eq!(
        (b.offset, text(&b), b.event_type.as_str()),
        (2, "two", "order.paid")
    );
    assert_eq!(h.ack("t", &a), 1);
    assert_eq!(h.ack("t", &b), 1);
    assert_eq!(h.ack("t", &a), 0, "acking twice changes nothing");
    h.nothing(&sub);
    drop(sub);
    // The group's progress is kept: a new member does not get them again.
    let again = h.subscribe("t", "orders", "default");
    h.nothing(&again);
    let c = h.publish("t", "orders", "three");
    assert_eq!(h.next(&again).offset, c.offset);
}

fn raw_messages_carry_no_envelope(h: Harness) {
    let req = PublishRequest {
        store: "events".to_owned(),
        topic: "raw".to_owned(),
        data: b"\x00\x01binary".to_vec(),
        content_type: String::new(),
        metadata: vec![("cloudevent.type".to_owned(), "ignored".to_owned())],
        raw: true,
    };
    let published = h.publish_req("t", &req).expect("publish");
    let sub = h.subscribe("t", "raw", "g");
    let d = h.next(&sub);
    assert!(d.raw);
    assert_eq!(d.id, published.id);
    assert_eq!(d.data, req.data);
    assert_eq!(d.data_content_type, "application/octet-stream");
    assert_eq!(
        (
            d.source.as_str(),
            d.event_type.as_str(),
            d.spec_version.as_str(),
            d.time.as_str()
        ),
        ("", "", "", "")
    );
}

fn unacked_deliveries_come_again_after_the_ack_deadline(h: Harness) {
    h.publish("t", "slow", "m");
    let sub = h.subscribe_with("t", "slow", "g", 0, SHORT_ACK_MS);
    let first = h.next(&sub);
    assert_eq!(first.attempt, 1);
    // Not acked: the deadline passes and the same message comes again.
    let second = h.next(&sub);
    assert_eq!((second.offset, second.attempt), (first.offset, 2));
    assert_eq!(second.id, first.id);
    assert_eq!(h.ack("t", &second), 1);
    h.nothing(&sub);
}

fn a_nack_makes_the_message_come_again_at_once(h: Harness) {
    h.publish("t", "n", "m");
    let sub = h.subscribe("t", "n", "g");
    let first = h.next(&sub);
    assert_eq!(h.nack("t", &first), 1);
    let second = h.next(&sub);
    assert_eq!((second.offset, second.attempt), (first.offset, 2));
    // A nack of an earlier delivery of the message is stale and ignored.
    assert_eq!(h.nack("t", &first), 0);
    h.nothing(&sub);
    // An ack of the stale delivery still acknowledges the message: whoever
    // processed it, it was processed.
    assert_eq!(h.ack("t", &first), 1);
    h.nothing(&sub);
}

fn messages_go_to_the_dead_letter_topic_after_max_deliveries(h: Harness) {
    // The harness for this case sets maxDeliveries to 3.
    let published = h.publish_meta("t", "jobs", "poison", &[("k", "v")]);
    h.publish("t", "jobs", "fine");
    let sub = h.subscribe_with("t", "jobs", "workers", 1, 0);
    for attempt in 1..=3 {
        let d = h.next(&sub);
        assert_eq!((d.offset, d.attempt), (published.offset, attempt));
        assert_eq!(h.nack("t", &d), 1);
    }
    // Dead-lettered and acknowledged on the original topic: the next message
    // is delivered, the poison one never again.
    let fine = h.next(&sub);
    assert_eq!(text(&fine), "fine");
    assert_eq!(h.ack("t", &fine), 1);
    h.nothing(&sub);
    let dlq = h.subscribe("t", "jobs.dlq", "ops");
    let dead = h.next(&dlq);
    assert_eq!(text(&dead), "poison");
    assert_eq!(dead.id, published.id, "the same event, moved");
    assert_eq!(meta(&dead, "k"), Some("v"));
    assert_eq!(meta(&dead, "deadletter.topic"), Some("jobs"));
    assert_eq!(meta(&dead, "deadletter.group"), Some("workers"));
    assert_eq!(meta(&dead, "deadletter.offset"), Some("1"));
    assert_eq!(meta(&dead, "deadletter.deliveries"), Some("3"));
}

fn every_group_gets_every_message(h: Harness) {
    let a = h.subscribe("t", "fan", "a");
    let b = h.subscribe("t", "fan", "b");
    for i in 0..5 {
        h.publish("t", "fan", &format!("m{i}"));
    }
    for sub in [&a, &b] {
        let got: Vec<String> = (0..5).map(|_| text(&h.next(sub)).to_owned()).collect();
        assert_eq!(got, ["m0", "m1", "m2", "m3", "m4"]);
        h.nothing(sub);
    }
}

fn members_of_a_group_compete_for_messages(h: Harness) {
    let a = h.subscribe_with("t", "work", "g", 5, 0);
    let b = h.subscribe_with("t", "work", "g", 5, 0);
    for i in 0..10 {
        h.publish("t", "work", &format!("m{i}"));
    }
    // Each holds at most 5 unacknowledged, so each gets exactly 5.
    let from_a: Vec<Delivery> = (0..5).map(|_| h.next(&a)).collect();
    h.nothing(&a);
    let from_b: Vec<Delivery> = (0..5).map(|_| h.next(&b)).collect();
    h.nothing(&b);
    let offsets: BTreeSet<u64> = from_a.iter().chain(&from_b).map(|d| d.offset).collect();
    assert_eq!(
        offsets,
        (1..=10).collect(),
        "each message went to exactly one member"
    );
    for d in from_a.iter().chain(&from_b) {
        assert_eq!(h.ack("t", d), 1);
    }
    h.nothing(&a);
    h.nothing(&b);
}

fn messages_of_a_partition_key_are_delivered_one_at_a_time_in_order(h: Harness) {
    for (data, key) in [
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
        ("a3", "a"),
        ("b2", "b"),
        ("n", ""),
    ] {
        let metadata: &[(&str, &str)] = if key.is_empty() {
            &[]
        } else {
            &[("partitionKey", key)]
        };
        h.publish_meta("t", "keyed", data, metadata);
    }
    let sub = h.subscribe_with("t", "keyed", "g", 10, 0);
    // One in flight per key; an unkeyed message is not held back.
    let first: Vec<Delivery> = (0..3).map(|_| h.next(&sub)).collect();
    let names: Vec<&str> = first.iter().map(text).collect();
    assert_eq!(names, ["a1", "b1", "n"]);
    h.nothing(&sub);
    assert_eq!(h.ack("t", &first[1]), 1);
    let b2 = h.next(&sub);
    assert_eq!(text(&b2), "b2");
    assert_eq!(h.ack("t", &first[0]), 1);
    let a2 = h.next(&sub);
    assert_eq!(text(&a2), "a2");
    h.nothing(&sub);
    // A redelivery keeps its place: a3 still waits for a2.
    assert_eq!(h.nack("t", &a2), 1);
    let a2_again = h.next(&sub);
    assert_eq!((text(&a2_again), a2_again.attempt), ("a2", 2));
    h.nothing(&sub);
    assert_eq!(h.ack("t", &a2_again), 1);
    assert_eq!(text(&h.next(&sub)), "a3");
}

fn a_subscriber_at_max_in_flight_pauses_until_it_acks(h: Harness) {
    for i in 0..5 {
        h.publish("t", "paced", &format!("m{i}"));
    }
    let sub = h.subscribe_with("t", "paced", "g", 2, 0);
    let a = h.next(&sub);
    let b = h.next(&sub);
    h.nothing(&sub);
    assert_eq!(h.ack("t", &b), 1);
    let c = h.next(&sub);
    assert_eq!(c.offset, 3);
    h.nothing(&sub);
    assert_eq!(h.ack("t", &a), 1);
    assert_eq!(h.ack("t", &c), 1);
    assert_eq!(h.next(&sub).offset, 4);
    assert_eq!(h.next(&sub).offset, 5);
}

fn a_departed_subscriber_hands_its_deliveries_to_the_group(h: Harness) {
    h.publish("t", "handover", "m");
    let first = h.subscribe("t", "handover", "g");
    let d = h.next(&first);
    let second = h.subscribe("t", "handover", "g");
    h.nothing(&second);
    drop(first);
    let again = h.next(&second);
    assert_eq!((again.offset, again.attempt), (d.offset, 2));
}

fn tenants_are_isolated(h: Harness) {
    let theirs = h.subscribe("u", "shared", "g");
    let published = h.publish("t", "shared", "mine");
    h.nothing(&theirs);
    let mine = h.subscribe("t", "shared", "g");
    let d = h.next(&mine);
    assert_eq!(d.offset, published.offset);
    assert_eq!(d.source, "mecha://t");
    // Another tenant cannot ack (or even see) this tenant's delivery.
    assert_eq!(h.ack("u", &d), 0);
    assert_eq!(h.nack("u", &d), 0);
    // Offsets are per tenant too.
    assert_eq!(h.publish("u", "shared", "theirs").offset, 1);
    assert_eq!(text(&h.next(&theirs)), "theirs");
    h.nothing(&mine);
}

fn a_full_topic_refuses_publishes_until_its_groups_catch_up(h: Harness) {
    // The harness for this case sets maxMessages to 3.
    let sub = h.subscribe("t", "small", "g");
    for i in 0..3 {
        h.publish("t", "small", &format!("m{i}"));
    }
    let req = PublishRequest {
        store: String::new(),
        topic: "small".to_owned(),
        data: b"m3".to_vec(),
        content_type: String::new(),
        metadata: Vec::new(),
        raw: false,
    };
    match h.publish_req("t", &req) {
        Err(PubsubError::Full {
            group, retained, ..
        }) => {
            assert_eq!((group.as_str(), retained), ("g", 3));
        }
        other => panic!("expected a full topic, got {other:?}"),
    }
    let d = h.next(&sub);
    assert_eq!(h.ack("t", &d), 1);
    assert_eq!(h.publish_req("t", &req).expect("room again").offset, 4);
}

fn a_topic_without_groups_keeps_its_newest_messages(h: Harness) {
    // The harness for this case sets maxMessages to 3.
    for i in 1..=5 {
        h.publish("t", "nobody", &format!("m{i}"));
    }
    let sub = h.subscribe("t", "nobody", "late");
    let got: Vec<String> = (0..3).map(|_| text(&h.next(&sub)).to_owned()).collect();
    assert_eq!(got, ["m3", "m4", "m5"]);
    h.nothing(&sub);
}

fn bad_names_and_limits_are_invalid(h: Harness) {
    let req = SubscribeRequest {
        store: String::new(),
        topic: String::new(),
        group: String::new(),
        max_in_flight: 0,
        ack_deadline_ms: 0,
    };
    let invalid = |r: Result<Subscriber, PubsubError>| matches!(r, Err(PubsubError::Invalid(_)));
    assert!(invalid(h.block(h.broker().subscribe("t", &req))));
    let too_many = SubscribeRequest {
        topic: "x".to_owned(),
        max_in_flight: 100_000,
        ..req.clone()
    };
    assert!(invalid(h.block(h.broker().subscribe("t", &too_many))));
    let long_group = SubscribeRequest {
        topic: "x".to_owned(),
        group: "g".repeat(2000),
        ..req
    };
    assert!(invalid(h.block(h.broker().subscribe("t", &long_group))));
    let publish = PublishRequest {
        store: String::new(),
        topic: String::new(),
        data: Vec::new(),
        content_type: String::new(),
        metadata: Vec::new(),
        raw: false,
    };
    assert!(matches!(
        h.publish_req("t", &publish),
        Err(PubsubError::Invalid(_))
    ));
}

/// A tenant that has `maxTopicsPerTenant` topics is refused a new
/// one (publishing or subscribing alike) and keeps using its own; another
/// tenant has its own count.
fn a_tenant_at_its_topic_quota_gets_no_new_topic(h: Harness) {
    h.publish("t", "a", "1");
    h.publish("t", "b", "2");
    let req = PublishRequest {
        store: String::new(),
        topic: "c".to_owned(),
        data: b"3".to_vec(),
        content_type: "text/plain".to_owned(),
        metadata: Vec::new(),
        raw: false,
    };
    match h.publish_req("t", &req) {
        Err(PubsubError::Driver(DriverError::Quota {
            field, limit, what, ..
        })) => {
            assert_eq!((field, limit), ("maxTopicsPerTenant", 2));
            assert!(what.contains("\"c\""), "{what}");
        }
        other => panic!("expected a topic quota refusal, got {other:?}"),
    }
    h.publish("t", "a", "4");
    h.publish("other", "c", "5");
}

mecha_module::conformance! {
    drivers(metadata): {
        memory => Harness::new("pubsub.memory", metadata),
        redb => Harness::new("pubsub.redb", metadata),
    }
    cases: [
    published_messages_are_delivered_in_an_envelope_and_acked,
    raw_messages_carry_no_envelope,
    unacked_deliveries_come_again_after_the_ack_deadline,
    a_nack_makes_the_message_come_again_at_once,
    messages_go_to_the_dead_letter_topic_after_max_deliveries with &[("maxDeliveries", "3")],
    every_group_gets_every_message,
    members_of_a_group_compete_for_messages,
    messages_of_a_partition_key_are_delivered_one_at_a_time_in_order,
    a_subscriber_at_max_in_flight_pauses_until_it_acks,
    a_departed_subscriber_hands_its_deliveries_to_the_group,
    tenants_are_isolated,
    a_full_topic_refuses_publishes_until_its_groups_catch_up with &[("maxMessages", "3")],
    a_topic_without_groups_keeps_its_newest_messages with &[("MaxMessages", "3")],
    a_tenant_at_its_topic_quota_gets_no_new_topic with &[("maxTopicsPerTenant", "2")],
    bad_names_and_limits_are_invalid,
    ]
}

// ---- Behaviour with metadata that only makes sense for one case. ----

#[test]
fn the_dead_letter_topic_can_be_named() {
    let h = Harness::new(
        "pubsub.memory",
        &[("maxDeliveries", "1"), ("deadLetterTopic", "graveyard")],
    );
    h.publish("t", "a", "from-a");
    let sub = h.subscribe("t", "a", "g");
    let d = h.next(&sub);
    assert_eq!(h.nack("t", &d), 1);
    let grave = h.subscribe("t", "graveyard", "g");
    let dead = h.next(&grave);
    assert_eq!(text(&dead), "from-a");
    // The dead-letter topic itself never dead-letters (into itself).
    assert_eq!(h.nack("t", &dead), 1);
    let again = h.next(&grave);
    assert_eq!((again.offset, again.attempt), (dead.offset, 2));
}

#[test]
fn a_zero_max_deliveries_never_dead_letters() {
    let h = Harness::new("pubsub.memory", &[("maxDeliveries", "0")]);
    h.publish("t", "a", "m");
    let sub = h.subscribe("t", "a", "g");
    for attempt in 1..=8 {
        let d = h.next(&sub);
        assert_eq!(d.attempt, attempt);
        assert_eq!(h.nack("t", &d), 1);
    }
}

// ---- Durability: the redb driver across restarts. ----

#[test]
fn redb_log_and_group_progress_survive_reopen() {
    let mut h = Harness::new("pubsub.redb", &[]);
    for i in 1..=5 {
        h.publish_meta("t", "durable", &format!("m{i}"), &[("n", &i.to_string())]);
    }
    let sub = h.subscribe("t", "durable", "g");
    // A second group, which acknowledges nothing, keeps every message.
    let other = h.subscribe("t", "durable", "other");
    let got: Vec<Delivery> = (0..5).map(|_| h.next(&sub)).collect();
    // Acked out of order: 1, 2 and 4; 3 and 5 stay unacknowledged.
    for i in [0, 1, 3] {
        assert_eq!(h.ack("t", &got[i]), 1);
    }
    drop(sub);
    drop(other);
    h.reopen();
    // Offsets go on where they were.
    assert_eq!(h.publish("t", "durable", "m6").offset, 6);
    let sub = h.subscribe("t", "durable", "g");
    let again: Vec<Delivery> = (0..3).map(|_| h.next(&sub)).collect();
    let names: Vec<&str> = again.iter().map(text).collect();
    assert_eq!(
        names,
        ["m3", "m5", "m6"],
        "acked messages are never redelivered"
    );
    assert_eq!(
        again[0],
        Delivery {
            attempt: again[0].attempt,
            ..got[2].clone()
        }
    );
    h.nothing(&sub);
    // The group that acked nothing still has the whole log.
    let other = h.subscribe("t", "durable", "other");
    let all: Vec<u64> = (0..6).map(|_| h.next(&other).offset).collect();
    assert_eq!(all, [1, 2, 3, 4, 5, 6]);
}

#[test]
fn redb_failure_counts_survive_reopen() {
    let mut h = Harness::new("pubsub.redb", &[("maxDeliveries", "2")]);
    h.publish("t", "flaky", "poison");
    let sub = h.subscribe("t", "flaky", "g");
    let d = h.next(&sub);
    assert_eq!(h.nack("t", &d), 1);
    // The redelivery is handed out; the module "crashes" before it fails.
    let _ = h.next(&sub);
    drop(sub);
    h.reopen();
    let sub = h.subscribe("t", "flaky", "g");
    let d = h.next(&sub);
    assert_eq!(
        d.attempt, 2,
        "one failure was stored; the interrupted delivery is not counted"
    );
    assert_eq!(h.nack("t", &d), 1);
    h.nothing(&sub);
    let dlq = h.subscribe("t", "flaky.dlq", "g");
    assert_eq!(text(&h.next(&dlq)), "poison");
}

#[test]
fn redb_trims_messages_every_group_acknowledged() {
    let mut h = Harness::new("pubsub.redb", &[]);
    let sub = h.subscribe("t", "trim", "g");
    for i in 0..3 {
        h.publish("t", "trim", &format!("m{i}"));
    }
    for _ in 0..3 {
        let d = h.next(&sub);
        assert_eq!(h.ack("t", &d), 1);
    }
    drop(sub);
    h.reopen();
    // A group created now starts at the oldest retained message: none are.
    let late = h.subscribe("t", "trim", "late");
    h.nothing(&late);
    assert_eq!(h.publish("t", "trim", "m3").offset, 4);
    assert_eq!(h.next(&late).offset, 4);
}

/// Component "events" of type `kind` with `metadata`.
fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("events", kind, metadata)
}

fn open_error(spec: &ComponentSpec, dir: &Path) -> PubsubError {
    testing::refused(spec, drivers::open(spec, dir))
}

#[test]
fn redb_file_location_follows_the_spec() {
    let dir = temp_dir();
    drop(drivers::open(&spec("pubsub.redb", &[]), dir.path()).expect("open the store"));
    assert!(dir.path().join("events.redb").is_file());
    drop(
        drivers::open(
            &spec("pubsub.redb", &[("Path", "nested/p.redb")]),
            dir.path(),
        )
        .expect("open the store"),
    );
    assert!(dir.path().join("nested/p.redb").is_file());
}

#[test]
fn bad_metadata_is_a_config_error() {
    let dir = temp_dir();
    for spec in [
        spec("pubsub.redb", &[("path", "a.redb"), ("cacheSize", "10")]),
        spec("pubsub.redb", &[("path", "a.redb"), ("PATH", "b.redb")]),
        spec("pubsub.redb", &[("path", "")]),
        spec("pubsub.memory", &[("path", "a.redb")]),
        spec("pubsub.memory", &[("maxDeliveries", "many")]),
        spec(
            "pubsub.memory",
            &[("maxDeliveries", "3"), ("MAXDELIVERIES", "4")],
        ),
        spec("pubsub.memory", &[("maxMessages", "0")]),
        spec("pubsub.memory", &[("ackDeadlineMs", "0")]),
        spec("pubsub.memory", &[("maxBytesPerTenant", "0")]),
        spec("pubsub.redb", &[("maxGroupsPerTopic", "some")]),
        spec("pubsub.redb", &[("maxTopicsPerTenant", "-1")]),
        spec("pubsub.memory", &[("deadLetterTopic", "")]),
        ComponentSpec {
            name: "../escape".to_owned(),
            ..spec("pubsub.redb", &[])
        },
    ] {
        match open_error(&spec, dir.path()) {
            PubsubError::Driver(DriverError::Config { .. }) => {}
            other => panic!("{spec:?}: expected a config error, got {other:?}"),
        }
    }
}

#[test]
fn the_factory_rejects_an_unknown_type() {
    let dir = temp_dir();
    match open_error(&spec("pubsub.kafka", &[]), dir.path()) {
        PubsubError::Driver(DriverError::Config { component, reason }) => {
            assert_eq!(component, "events");
            assert!(reason.contains("pubsub.kafka"), "{reason:?} names the type");
        }
        other => panic!("expected a config error, got {other:?}"),
    }
}
