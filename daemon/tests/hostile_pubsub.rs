//! Hostile tenants and pub/sub: what one tenant can learn of another's
//! publishing from the answers to its own publishes, and the per-tenant
//! quotas of the embedded brokers (topics, stored bytes, groups per topic)
//! that keep one tenant from filling the module for everyone. Connecting as
//! a second uid (`nobody`) needs root, so these tests must run as root.

mod common;

use std::time::Duration;

use common::{
    assert_exhausted, component, open_to_nobody, require_root, signal, wait_until, Daemon, NOBODY,
};
use mecha_client::blocking::Client;
use mecha_client::{PublishOptions, RetryPolicy};

/// One in-memory pub/sub store shared by every tenant of the node.
const CONFIG: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: events}\n\
spec: {type: pubsub.memory, version: v1, metadata: []}\n";

/// How many messages the other tenant publishes between two of the
/// watcher's publishes.
const BURST: u64 = 300;

/// Publishes one message to `topic`; answers its id and offset.
fn publish(c: &mecha_client::blocking::Client, topic: &str) -> (String, u64) {
    let reply = c
        .publish(
            "events",
            topic,
            b"x".to_vec(),
            mecha_client::Client::publish_options(),
        )
        .expect("publish succeeds");
    (reply.id, reply.offset)
}

/// The runs of hexadecimal digits in an id, as numbers: whatever counter an
/// id might carry is in one of them.
fn numbers(id: &str) -> Vec<u128> {
    id.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|run| !run.is_empty())
        .map(|run| {
            assert!(run.len() <= 32, "{id:?} has a run of {} digits", run.len());
            u128::from_str_radix(run, 16).expect("hexadecimal digits")
        })
        .collect()
}

/// How each number of `to` differs from the same number of `from`: `None`
/// when it did not change, else whether the change is small (below 2^32,
/// as a counter's would be between two ids).
fn moves(from: &str, to: &str) -> Vec<Option<bool>> {
    let (from, to) = (numbers(from), numbers(to));
    assert_eq!(from.len(), to.len(), "ids of one shape");
    from.iter()
        .zip(&to)
        .map(|(a, b)| (a != b).then(|| a.abs_diff(*b) < 1 << 32))
        .collect()
}

/// The watcher (uid 0) publishes twice in a row, then twice around a burst
/// of publishes by another tenant (nobody) to a topic of the same name. Its
/// ids must not tell the two pairs apart: no part of them may count the
/// other tenant's messages, as a node-wide counter in the id did. Its
/// offsets count only its own topic's messages.
#[test]
fn one_tenants_message_ids_reveal_nothing_of_anothers_publishing() {
    require_root();
    let d = Daemon::start_with(Some(CONFIG));
    open_to_nobody(&d);
    let watcher = d.client();
    let other = d.client_as(NOBODY);
    assert_ne!(watcher.tenant(), other.tenant(), "two tenants");

    let (first, first_offset) = publish(&watcher, "orders");
    let (second, _) = publish(&watcher, "orders");
    for _ in 0..BURST {
        publish(&other, "orders");
    }
    let (third, third_offset) = publish(&watcher, "orders");

    let ids = [&first, &second, &third];
    for (i, a) in ids.iter().enumerate() {
        for b in &ids[i + 1..] {
            assert_ne!(a, b, "ids are unique");
        }
    }
    let quiet = moves(&first, &second);
    let busy = moves(&second, &third);
    assert_eq!(
        quiet, busy,
        "ids {first} → {second} (nothing between) and {second} → {third} ({BURST} publishes \
         by another tenant between) change alike"
    );
    assert!(
        busy.iter().all(|m| *m != Some(true)),
        "no part of {second} → {third} moves like a counter"
    );
    assert_eq!(
        third_offset,
        first_offset + 2,
        "offsets count only the tenant's own messages"
    );
}

fn no_retries(mut c: Client) -> Client {
    c.set_retries(RetryPolicy::disabled());
    c
}

/// Publishes `size` bytes to `topic` of the only pub/sub component.
fn send(c: &Client, topic: &str, size: usize) -> Result<u64, mecha_client::Error> {
    c.publish("", topic, vec![b'x'; size], PublishOptions::default())
        .map(|reply| reply.offset)
}

/// Kills the pub/sub module with SIGKILL and waits for the daemon to start
/// a new instance.
fn kill_pubsub(d: &Daemon) {
    let old = d.module_pid("pubsub");
    assert_ne!(old, 0, "a pubsub module runs");
    signal(old, libc::SIGKILL);
    wait_until(Duration::from_secs(20), "a new pubsub instance", || {
        let status = d.client().status().expect("status");
        status
            .modules
            .iter()
            .any(|m| m.name == "pubsub" && m.state == "running" && m.pid != old && m.pid != 0)
    });
}

/// Payloads of this size: three fit the byte quota the tests set, with
/// their envelopes, and a fourth does not.
const CHUNK: usize = 256 << 10;

/// The byte quota the tests set: 1 MiB.
const BYTES: &str = "1048576";

/// Item 8, stored bytes: retention bounds each topic, not a tenant with many
/// topics of large messages. With `maxBytesPerTenant: 1 MiB`, a tenant's
/// fourth 256 KiB message is refused RESOURCE_EXHAUSTED naming the field,
/// on any of its topics, with nothing stored; another tenant publishes its
/// own; and once the attacker's group acknowledges a message, the trim
/// makes room again, without a gap in the offsets.
#[test]
fn a_tenant_at_its_byte_quota_is_refused_until_a_trim_makes_room() {
    require_root();
    let config = component(
        "events",
        "pubsub.redb",
        &[("maxBytesPerTenant", BYTES.to_owned())],
    );
    let d = Daemon::start_with(Some(&config));
    open_to_nobody(&d);
    let attacker = no_retries(d.client_as(NOBODY));
    let mut sub = attacker
        .subscribe("", "big", "g", Default::default())
        .expect("subscribe");
    for offset in 1..=3 {
        assert_eq!(
            send(&attacker, "big", CHUNK).expect("within the quota"),
            offset
        );
    }
    let refused = send(&attacker, "big", CHUNK).expect_err("past the byte quota");
    assert_exhausted(&refused, "maxBytesPerTenant");
    let refused = send(&attacker, "other", CHUNK).expect_err("on any topic");
    assert_exhausted(&refused, "maxBytesPerTenant");

    let victim = no_retries(d.client());
    for offset in 1..=3 {
        let sent = send(&victim, "big", CHUNK).expect("the victim has a quota of its own");
        assert_eq!(sent, offset);
    }

    let first = sub.next().expect("a delivery").expect("delivered");
    assert_eq!((first.offset, first.data.len()), (1, CHUNK));
    assert!(sub.ack(&first).expect("ack"));
    assert_eq!(
        send(&attacker, "big", CHUNK).expect("room made by the trim"),
        4,
        "the refused publishes took no offset"
    );
    for offset in 2..=4 {
        let got = sub.next().expect("a delivery").expect("delivered");
        assert_eq!(got.offset, offset, "nothing was lost");
    }
}

/// Item 8, consumer groups: each new group name creates durable state. With
/// `maxGroupsPerTopic: 2`, a tenant's third group of a topic is refused
/// RESOURCE_EXHAUSTED naming the field, while its existing groups go on and
/// another tenant creates its own.
#[test]
fn a_topic_at_its_group_quota_gets_no_new_group() {
    require_root();
    let config = component(
        "events",
        "pubsub.redb",
        &[("maxGroupsPerTopic", "2".to_owned())],
    );
    let d = Daemon::start_with(Some(&config));
    open_to_nobody(&d);
    let attacker = no_retries(d.client_as(NOBODY));
    let join =
        |c: &Client, group: &str| c.subscribe("", "jobs", group, Default::default()).map(drop);
    join(&attacker, "a").expect("the first group");
    join(&attacker, "b").expect("the second group");
    let refused = join(&attacker, "c").expect_err("a third group");
    assert_exhausted(&refused, "maxGroupsPerTopic");
    join(&attacker, "a").expect("an existing group");
    let victim = no_retries(d.client());
    join(&victim, "c").expect("the victim's topic has its own groups");
}

/// Item 8, topics: the broker keeps every topic it has served in memory and
/// the file keeps it for good, so a tenant naming new topics without end
/// would grow the pub/sub module for everyone. With `maxTopicsPerTenant: 2`
/// its third topic is refused RESOURCE_EXHAUSTED naming the field, while its
/// topics and another tenant's go on; and the count (like the bytes) is
/// read from the file, so killing the module is no way around it.
#[test]
fn a_tenant_at_its_topic_quota_gets_no_new_topic_even_after_a_crash() {
    require_root();
    let config = component(
        "events",
        "pubsub.redb",
        &[
            ("maxTopicsPerTenant", "2".to_owned()),
            ("maxBytesPerTenant", BYTES.to_owned()),
        ],
    );
    let d = Daemon::start_with(Some(&config));
    open_to_nobody(&d);
    let attacker = no_retries(d.client_as(NOBODY));
    send(&attacker, "a", CHUNK).expect("within the quota");
    // A topic only subscribed to exists too.
    attacker
        .subscribe("", "b", "g", Default::default())
        .map(drop)
        .expect("within the quota");
    let refused = send(&attacker, "c", 1).expect_err("a third topic");
    assert_exhausted(&refused, "maxTopicsPerTenant");
    for _ in 0..2 {
        send(&attacker, "a", CHUNK).expect("its own topic goes on");
    }
    let victim = no_retries(d.client());
    for topic in ["a", "c"] {
        send(&victim, topic, 1).expect("the victim has a quota of its own");
    }

    drop(attacker);
    kill_pubsub(&d);
    let attacker = no_retries(d.client_as(NOBODY));
    let refused = send(&attacker, "c", 1).expect_err("still at the topic quota");
    assert_exhausted(&refused, "maxTopicsPerTenant");
    let refused = send(&attacker, "a", CHUNK).expect_err("still at the byte quota");
    assert_exhausted(&refused, "maxBytesPerTenant");
    send(&attacker, "b", 1).expect("its topics and the room it has left go on");
}
