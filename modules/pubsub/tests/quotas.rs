//! The per-tenant quotas of the embedded brokers (issue #16), run against
//! every embedded driver: the bytes a tenant's messages take
//! (`maxBytesPerTenant`), consumer groups per topic (`maxGroupsPerTopic`),
//! and, for `pubsub.redb`, that they and the topic count
//! (`maxTopicsPerTenant`) hold across a reopen.

use std::path::Path;

use mecha_abi::msg::{AckItem, AckRequest, ComponentSpec, Delivery, PublishRequest};
use mecha_abi::msg::{PublishReply, SubscribeRequest};
use mecha_mod_pubsub::broker::{Broker, Subscriber};
use mecha_mod_pubsub::drivers;
use mecha_mod_pubsub::error::PubsubError;
use mecha_module::testing;
use mecha_module::DriverError;

/// A payload of which two fit the byte quota the cases set (10,000), with
/// their envelopes, and three do not.
const BIG: usize = 4_000;

/// The byte quota the cases set.
const QUOTA: &str = "10000";

mecha_module::suite_harness! {
    /// One store under test, with the operations the cases use.
    struct Harness(Broker);
}

impl Harness {
    fn new(kind: &str, metadata: &[(&str, &str)]) -> Self {
        Self(testing::Harness::open(
            testing::spec("events", kind, metadata),
            |spec: &ComponentSpec, dir: &Path| drivers::open_embedded(spec, dir).map(Box::new),
        ))
    }

    fn try_publish(
        &self,
        tenant: &str,
        topic: &str,
        bytes: usize,
    ) -> Result<PublishReply, PubsubError> {
        let req = PublishRequest {
            store: String::new(),
            topic: topic.to_owned(),
            data: vec![b'x'; bytes],
            content_type: "text/plain".to_owned(),
            metadata: Vec::new(),
            raw: false,
        };
        self.block(self.store().publish(tenant, &req))
    }

    /// Publishes a `BIG` payload; answers its offset.
    fn publish(&self, tenant: &str, topic: &str) -> u64 {
        self.try_publish(tenant, topic, BIG)
            .expect("publish succeeds")
            .offset
    }

    fn try_subscribe(
        &self,
        tenant: &str,
        topic: &str,
        group: &str,
    ) -> Result<Subscriber, PubsubError> {
        let req = SubscribeRequest {
            store: String::new(),
            topic: topic.to_owned(),
            group: group.to_owned(),
            max_in_flight: 0,
            ack_deadline_ms: 0,
        };
        self.block(self.store().subscribe(tenant, &req))
    }

    fn next(&self, sub: &Subscriber) -> Delivery {
        self.block_until("a delivery", sub.next())
            .expect("next succeeds")
    }

    fn ack(&self, tenant: &str, d: &Delivery) {
        let req = AckRequest {
            store: String::new(),
            topic: d.topic.clone(),
            group: d.group.clone(),
            items: vec![AckItem {
                offset: d.offset,
                attempt: d.attempt,
            }],
            nack: false,
        };
        let reply = self.block(self.store().ack(tenant, &req)).expect("ack");
        assert_eq!(reply.applied, 1);
    }
}

/// Asserts that `result` is a quota refusal naming `field`.
fn refused<T: std::fmt::Debug>(result: Result<T, PubsubError>, field: &str) {
    match result {
        Err(PubsubError::Driver(DriverError::Quota { field: got, .. })) if got == field => {}
        other => panic!("expected a refusal naming {field}, got {other:?}"),
    }
}

/// A publish that would take its tenant past `maxBytesPerTenant`, on any of
/// its topics, is refused without taking an offset; another tenant
/// publishes as before; and the bytes an ack's trim deletes make room
/// again, with nothing lost.
fn a_publish_past_the_byte_quota_is_refused_until_a_trim_makes_room(h: Harness) {
    let sub = h.try_subscribe("t", "big", "g").expect("subscribe");
    assert_eq!(h.publish("t", "big"), 1);
    assert_eq!(h.publish("t", "big"), 2);
    refused(h.try_publish("t", "big", BIG), "maxBytesPerTenant");
    refused(h.try_publish("t", "elsewhere", BIG), "maxBytesPerTenant");
    for offset in 1..=2 {
        assert_eq!(h.publish("other", "big"), offset, "its own quota");
    }
    let first = h.next(&sub);
    assert_eq!(first.offset, 1);
    h.ack("t", &first);
    assert_eq!(
        h.publish("t", "big"),
        3,
        "room again, and no offset was lost"
    );
    assert_eq!(h.next(&sub).offset, 2);
    assert_eq!(h.next(&sub).offset, 3);
}

/// A topic without groups drops its oldest message with each publish past
/// `maxMessages`: at the byte quota that makes room for the new one, so
/// the topic keeps rolling over, while a new topic's publish is refused.
fn a_topic_without_groups_rolls_over_at_the_byte_quota(h: Harness) {
    for offset in 1..=5 {
        assert_eq!(h.publish("t", "roll"), offset);
    }
    refused(h.try_publish("t", "fresh", BIG), "maxBytesPerTenant");
    assert!(h.try_publish("t", "fresh", 10).is_ok(), "small ones fit");
}

/// A subscribe that would create a group past `maxGroupsPerTopic` is
/// refused; existing groups, other topics and other tenants are not.
fn groups_past_the_limit_are_refused(h: Harness) {
    let _a = h.try_subscribe("t", "x", "a").expect("first group");
    let _b = h.try_subscribe("t", "x", "b").expect("second group");
    refused(h.try_subscribe("t", "x", "c"), "maxGroupsPerTopic");
    let _again = h.try_subscribe("t", "x", "a").expect("an existing group");
    let _elsewhere = h.try_subscribe("t", "y", "c").expect("another topic");
    let _other = h.try_subscribe("u", "x", "c").expect("another tenant");
}

mecha_module::conformance! {
    drivers(metadata): {
        memory => Harness::new("pubsub.memory", metadata),
        redb => Harness::new("pubsub.redb", metadata),
    }
    cases: [
    a_publish_past_the_byte_quota_is_refused_until_a_trim_makes_room
        with &[("maxBytesPerTenant", QUOTA)],
    a_topic_without_groups_rolls_over_at_the_byte_quota
        with &[("maxBytesPerTenant", QUOTA), ("maxMessages", "2")],
    groups_past_the_limit_are_refused with &[("maxGroupsPerTopic", "2")],
    ]
}

/// The file holds what counts against the quotas, so a reopen is no way
/// around them: a full tenant stays full, its topics (one only subscribed
/// to) still count, and its groups too.
#[test]
fn redb_quotas_hold_across_a_reopen() {
    let mut h = Harness::new(
        "pubsub.redb",
        &[
            ("maxBytesPerTenant", QUOTA),
            ("maxTopicsPerTenant", "2"),
            ("maxGroupsPerTopic", "1"),
        ],
    );
    h.publish("t", "a");
    h.publish("t", "a");
    drop(
        h.try_subscribe("t", "b", "g")
            .expect("a topic with a group only"),
    );
    h.reopen();
    refused(h.try_publish("t", "c", 10), "maxTopicsPerTenant");
    refused(h.try_publish("t", "a", BIG), "maxBytesPerTenant");
    refused(h.try_subscribe("t", "b", "h"), "maxGroupsPerTopic");
    let sub = h
        .try_subscribe("t", "a", "g")
        .expect("the first group of a");
    let first = h.next(&sub);
    h.ack("t", &first);
    assert_eq!(h.publish("t", "a"), 3, "the trim made room");
    assert!(h.try_publish("u", "c", BIG).is_ok(), "another tenant");
}

/// `Broker::next_offset`, which the bindings module's ledger relies on: the
/// offset the next publish takes, 1 for an untouched topic, per tenant, and
/// the same after a reopen, since it comes from what the file stored.
#[test]
fn next_offset_is_the_offset_the_next_publish_takes() {
    let mut h = Harness::new("pubsub.redb", &[]);
    assert_eq!(h.block(h.store().next_offset("t", "a")).expect("read"), 1);
    assert_eq!(h.publish("t", "a"), 1);
    assert_eq!(h.publish("t", "a"), 2);
    assert_eq!(h.block(h.store().next_offset("t", "a")).expect("read"), 3);
    assert_eq!(h.block(h.store().next_offset("u", "a")).expect("read"), 1);
    h.reopen();
    assert_eq!(h.block(h.store().next_offset("t", "a")).expect("read"), 3);
    assert_eq!(h.publish("t", "a"), 3);
    assert!(h.block(h.store().next_offset("t", "")).is_err());
}
