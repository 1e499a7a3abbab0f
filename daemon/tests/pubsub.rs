//! Pubsub through the real daemon: at-least-once delivery when a consumer
//! dies before acking, dead letters, fan-out across groups and competition
//! within one, a durable log across a module `kill -9`, a hot restart and a
//! daemon restart, stream cancellation, a consumer that never reads, the raw
//! wire shape, and `mechactl pubsub`.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{signal, wait_until, Daemon, Raw};
use mecha_abi::msg::{Delivery, SubscribeReply, SubscribeRequest};
use mecha_abi::{Header, Opcode, Status};

/// A durable store `events` (the default, dead-lettering after 3 failed
/// deliveries) and a memory store `fast` for the high-volume test (where a
/// stuck consumer makes messages fail a few times before others get them).
const CONFIG: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: events}\n\
spec: {type: pubsub.redb, version: v1, metadata: [{name: maxDeliveries, value: \"3\"}]}\n\
---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: fast}\n\
spec: {type: pubsub.memory, version: v1, metadata: [{name: maxDeliveries, value: \"10\"}]}\n";

/// How long a test waits for something that should happen promptly; it
/// only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(20);

/// How long a test watches for a delivery that must not come.
const QUIET: Duration = Duration::from_millis(300);

fn start() -> Daemon {
    Daemon::start_with(Some(CONFIG))
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

fn meta<'a>(d: &'a Delivery, name: &str) -> Option<&'a str> {
    d.metadata
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn publish(c: &mecha_client::blocking::Client, store: &str, topic: &str, data: &str) -> u64 {
    c.publish(
        store,
        topic,
        data.as_bytes().to_vec(),
        mecha_client::Client::publish_options().content_type("text/plain"),
    )
    .expect("publish succeeds")
    .offset
}

/// The next delivery of a blocking subscription, which must come within
/// [`PATIENCE`]. A macro because the client crate does not export a name for
/// its blocking subscription type.
macro_rules! next {
    ($sub:expr) => {
        $sub.next_timeout(PATIENCE)
            .expect("a delivery within the deadline")
            .expect("the subscription delivers")
    };
}

/// Asserts that no delivery comes for [`QUIET`].
macro_rules! nothing {
    ($sub:expr) => {
        if let Some(got) = $sub.next_timeout(QUIET) {
            panic!("expected no delivery, got {got:?}");
        }
    };
}

/// A raw connection with a PUBSUB_SUBSCRIBE stream open as request 7.
fn raw_subscribe(d: &Daemon, req: &SubscribeRequest) -> (Raw, SubscribeReply) {
    let (mut raw, _) = Raw::hello(&d.socket);
    let payload = mecha_abi::encode(req).expect("encode");
    raw.send(Header::request(Opcode::PUBSUB_SUBSCRIBE, 7), &payload);
    let (h, p) = raw.recv().expect("the opening answer");
    assert_eq!(h.request_id, 7);
    assert_eq!(
        Status::from_code(h.status),
        Status::Ok,
        "{}",
        common::error_message(&p)
    );
    assert!(
        h.flags.is_response() && h.flags.is_stream(),
        "flags {:?}",
        h.flags
    );
    (raw, mecha_abi::decode(&p).expect("a SubscribeReply"))
}

/// The next push on a raw subscription.
fn raw_push(raw: &mut Raw) -> Delivery {
    let (h, p) = raw.recv().expect("a push");
    assert!(
        h.flags.is_push() && !h.flags.is_end(),
        "flags {:?}",
        h.flags
    );
    assert_eq!((h.opcode, h.request_id), (Opcode::PUBSUB_SUBSCRIBE, 7));
    mecha_abi::decode(&p).expect("a Delivery")
}

fn subscribe_request(store: &str, topic: &str, group: &str) -> SubscribeRequest {
    SubscribeRequest {
        store: store.into(),
        topic: topic.into(),
        group: group.into(),
        max_in_flight: 0,
        ack_deadline_ms: 0,
    }
}

#[test]
fn a_message_whose_consumer_dies_before_acking_goes_to_another_member() {
    let d = start();
    let publisher = d.client();
    let (mut crashing, opened) = raw_subscribe(&d, &subscribe_request("", "orders", "billing"));
    assert_eq!(
        (opened.store.as_str(), opened.group.as_str()),
        ("events", "billing")
    );
    publish(&publisher, "", "orders", "order-1");
    let first = raw_push(&mut crashing);
    assert_eq!((text(&first), first.attempt), ("order-1".to_owned(), 1));
    assert_eq!(first.spec_version, "1.0");
    assert_eq!(first.source, format!("mecha://{}", publisher.tenant()));

    let survivor = d.client();
    let mut sub = survivor
        .subscribe("", "orders", "billing", Default::default())
        .expect("subscribe");
    nothing!(sub);
    // The consumer "crashes": its connection closes without an ack.
    drop(crashing);
    let again = next!(sub);
    assert_eq!((again.offset, again.attempt), (first.offset, 2));
    assert_eq!(again.id, first.id);
    // Acks name the delivery, not the stream: any connection of the tenant
    // may send them.
    assert!(d.client().ack(&again).expect("ack from another connection"));
    nothing!(sub);
}

#[test]
fn nacked_messages_reach_the_dead_letter_topic() {
    let d = start();
    let c = d.client();
    let offset = publish(&c, "", "jobs", "poison");
    let mut sub = c
        .subscribe("", "jobs", "workers", Default::default())
        .expect("subscribe");
    for attempt in 1..=3 {
        let d = next!(sub);
        assert_eq!((d.offset, d.attempt), (offset, attempt));
        assert!(sub.nack(&d).expect("nack"));
    }
    nothing!(sub);
    let mut dlq = c
        .subscribe("", "jobs.dlq", "ops", Default::default())
        .expect("subscribe to the dead-letter topic");
    let dead = next!(dlq);
    assert_eq!(text(&dead), "poison");
    assert_eq!(meta(&dead, "deadletter.topic"), Some("jobs"));
    assert_eq!(meta(&dead, "deadletter.group"), Some("workers"));
    assert_eq!(meta(&dead, "deadletter.deliveries"), Some("3"));
    assert!(dlq.ack(&dead).expect("ack"));
}

#[test]
fn every_group_gets_every_message() {
    let d = start();
    let (ca, cb) = (d.client(), d.client());
    let mut a = ca
        .subscribe("", "news", "a", Default::default())
        .expect("subscribe");
    let mut b = cb
        .subscribe("", "news", "b", Default::default())
        .expect("subscribe");
    let publisher = d.client();
    for i in 0..20 {
        publish(&publisher, "", "news", &format!("n{i}"));
    }
    for sub in [&mut a, &mut b] {
        let got: Vec<String> = (0..20)
            .map(|_| {
                let d = next!(sub);
                assert!(sub.ack(&d).expect("ack"));
                text(&d)
            })
            .collect();
        let expected: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        assert_eq!(got, expected);
        nothing!(sub);
    }
}

#[test]
fn members_of_a_group_share_its_messages_exactly_once() {
    const MESSAGES: usize = 200;
    let d = start();
    let received: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    // Both members subscribe before anything is published, so both compete
    // from the first message on.
    let ready = Arc::new(std::sync::Barrier::new(3));
    let members: Vec<_> = (0..2)
        .map(|member| {
            let socket = d.socket.clone();
            let (received, ready) = (Arc::clone(&received), Arc::clone(&ready));
            std::thread::spawn(move || {
                let c = mecha_client::blocking::Client::connect(&socket).expect("connect");
                let options = mecha_client::Client::subscribe_options().max_in_flight(5);
                let mut sub = c
                    .subscribe("", "work", "workers", options)
                    .expect("subscribe");
                ready.wait();
                loop {
                    if received.lock().expect("lock").len() >= MESSAGES {
                        break;
                    }
                    // A short wait, so each member notices when the other
                    // took the last message.
                    let Some(delivery) = sub.next_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let delivery = delivery.expect("the subscription delivers");
                    assert_eq!(delivery.attempt, 1, "nothing is delivered twice");
                    received
                        .lock()
                        .expect("lock")
                        .push((member, delivery.offset));
                    assert!(sub.ack(&delivery).expect("ack"));
                }
            })
        })
        .collect();
    ready.wait();
    let publisher = d.client();
    for i in 0..MESSAGES {
        publish(&publisher, "", "work", &format!("w{i}"));
    }
    wait_until(PATIENCE, "every message to be received", || {
        received.lock().expect("lock").len() >= MESSAGES
    });
    for m in members {
        m.join().expect("a member thread");
    }
    let received = received.lock().expect("lock").clone();
    let offsets: BTreeSet<u64> = received.iter().map(|&(_, o)| o).collect();
    assert_eq!(received.len(), MESSAGES, "no message was received twice");
    assert_eq!(offsets, (1..=MESSAGES as u64).collect());
    for member in 0..2 {
        let n = received.iter().filter(|&&(m, _)| m == member).count();
        assert!(
            n > 0,
            "member {member} received nothing: the group did not share"
        );
    }
}

#[test]
fn the_durable_log_survives_a_module_kill_and_a_daemon_restart() {
    let mut d = start();
    let c = d.client();
    let mut sub = c
        .subscribe("", "ledger", "g", Default::default())
        .expect("subscribe");
    for i in 1..=10 {
        assert_eq!(publish(&c, "", "ledger", &format!("e{i}")), i);
    }
    let first: Vec<Delivery> = (0..10).map(|_| next!(sub)).collect();
    for delivery in &first[..5] {
        assert!(sub.ack(delivery).expect("ack"));
    }

    // kill -9: the stream is reset, the subscription subscribes again on
    // its own, and the new instance delivers exactly what was not acked.
    let old = d.module_pid("pubsub");
    signal(old, libc::SIGKILL);
    let mut after_kill = Vec::new();
    for _ in 0..5 {
        after_kill.push(next!(sub));
    }
    assert!(sub.resubscribes() >= 1, "the subscription resubscribed");
    assert_ne!(d.module_pid("pubsub"), old);
    let offsets: BTreeSet<u64> = after_kill.iter().map(|d| d.offset).collect();
    assert_eq!(
        offsets,
        (6..=10).collect(),
        "acked messages are not redelivered"
    );
    nothing!(sub);
    for delivery in &after_kill[..3] {
        assert!(sub.ack(delivery).expect("ack"));
    }
    drop(sub);
    drop(c);

    // A daemon restart: the log, the group's position and the offsets stay.
    d.restart();
    let c = d.client();
    let mut sub = c
        .subscribe("", "ledger", "g", Default::default())
        .expect("subscribe");
    let rest: BTreeSet<String> = (0..2).map(|_| text(&next!(sub))).collect();
    let expected: BTreeSet<String> = after_kill[3..].iter().map(text).collect();
    assert_eq!(rest, expected);
    nothing!(sub);
    assert_eq!(publish(&c, "", "ledger", "e11"), 11, "offsets go on");
    assert_eq!(text(&next!(sub)), "e11");
    // A group created now starts at the oldest retained message: the two
    // still unacknowledged by "g", and the new one.
    let mut late = c
        .subscribe("", "ledger", "late", Default::default())
        .expect("subscribe");
    let all: Vec<u64> = (0..3).map(|_| next!(late).offset).collect();
    assert_eq!(all, [9, 10, 11]);
}

#[test]
fn a_hot_restart_resubscribes_without_losing_messages() {
    let d = start();
    let c = d.client();
    let mut sub = c
        .subscribe("", "hot", "g", Default::default())
        .expect("subscribe");
    publish(&c, "", "hot", "before");
    let before = next!(sub);
    assert!(sub.ack(&before).expect("ack"));
    publish(&c, "", "hot", "held");
    let held = next!(sub);
    let old = d.module_pid("pubsub");
    let new = c.module_restart("pubsub", None).expect("module restart");
    assert_ne!(new, old);
    publish(&c, "", "hot", "after");
    // The unacknowledged message comes again from the new instance, then
    // the new one; the acknowledged one never.
    let again = next!(sub);
    assert_eq!(
        (text(&again), again.offset),
        ("held".to_owned(), held.offset)
    );
    // The retired instance's members did nothing wrong: the delivery it
    // held does not count as failed.
    assert_eq!(again.attempt, 1);
    assert_eq!(text(&next!(sub)), "after");
    assert!(sub.resubscribes() >= 1);
    nothing!(sub);
}

#[test]
fn cancelling_a_subscription_ends_it_and_frees_its_deliveries() {
    let d = start();
    let (ca, cb) = (d.client(), d.client());
    let options = mecha_client::Client::subscribe_options().max_in_flight(1);
    let mut a = ca.subscribe("", "tasks", "g", options).expect("subscribe");
    publish(&ca, "", "tasks", "t1");
    let taken = next!(a);
    let mut b = cb.subscribe("", "tasks", "g", options).expect("subscribe");
    nothing!(b);
    a.cancel().expect("cancel");
    assert!(
        a.next_timeout(PATIENCE).is_none(),
        "a cancelled subscription ends"
    );
    let again = next!(b);
    assert_eq!((again.offset, again.attempt), (taken.offset, 2));
}

/// The resident memory of process `pid`, in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).expect("reading /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("a VmRSS line")
}

#[test]
fn a_consumer_that_never_reads_or_acks_does_not_grow_memory() {
    const MESSAGES: u64 = 5_000;
    // Bounds far above what the processes need (a few MiB of messages and
    // buffers) yet far below what buffering every push would take.
    const MODULE_LIMIT_KIB: u64 = 64 * 1024;
    const DAEMON_LIMIT_KIB: u64 = 48 * 1024;
    let d = start();
    // The stuck connection takes the largest in-flight allowance on two
    // streams (groups "g" and "h") and never reads: their 2048 pushes
    // exceed the daemon's per-connection push budget (1024) plus what the
    // socket buffers, so the daemon drops pushes and ends a stream with
    // RESOURCE_EXHAUSTED, and the module gives that stream's deliveries
    // back to its group. The short ack deadline returns the deliveries of a
    // stream that survives.
    let stuck_req = |group: &str| SubscribeRequest {
        max_in_flight: mecha_abi::msg::PUBSUB_MAX_IN_FLIGHT,
        ack_deadline_ms: 200,
        ..subscribe_request("fast", "flood", group)
    };
    let (mut stuck, _) = raw_subscribe(&d, &stuck_req("g"));
    let payload = mecha_abi::encode(&stuck_req("h")).expect("encode");
    stuck.send(Header::request(Opcode::PUBSUB_SUBSCRIBE, 8), &payload);
    let publisher = d.client();
    let body = "x".repeat(1024);
    for i in 1..=MESSAGES {
        assert_eq!(publish(&publisher, "fast", "flood", &body), i);
    }
    // Nothing is lost meanwhile: a well-behaved member of group "g" gets
    // every message, including those the stuck member held.
    let c = d.client();
    let mut good = c
        .subscribe("fast", "flood", "g", Default::default())
        .expect("subscribe");
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < MESSAGES {
        let delivery = good
            .next_timeout(PATIENCE)
            .unwrap_or_else(|| panic!("only {} of {MESSAGES} messages came", seen.len()))
            .expect("the subscription delivers");
        assert!(good.ack(&delivery).expect("ack"));
        seen.insert(delivery.offset);
    }
    let module = rss_kib(d.module_pid("pubsub"));
    let daemon = rss_kib(d.pid());
    eprintln!(
        "VmRSS after {MESSAGES} messages past a stuck consumer: module {module} KiB, daemon {daemon} KiB"
    );
    assert!(module < MODULE_LIMIT_KIB, "module VmRSS {module} KiB");
    assert!(daemon < DAEMON_LIMIT_KIB, "daemon VmRSS {daemon} KiB");
    // What the stuck connection was sent: the answer to its second
    // subscribe, pushes, and the END of a stream the daemon gave up on.
    let mut pushes = 0;
    let ended = loop {
        let (h, p) = stuck.recv().expect("frames up to the END");
        if h.flags.is_end() {
            break (Status::from_code(h.status), common::error_message(&p));
        }
        pushes += 1;
        assert!(pushes < 100_000, "no END among {pushes} frames");
    };
    assert_eq!(ended.0, Status::ResourceExhausted, "{}", ended.1);
    assert!(ended.1.contains("resubscribe"), "{}", ended.1);
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn mechactl_publishes_and_subscribes() {
    let d = start();
    let mut ids = BTreeSet::new();
    for line in ["one", "two", "three"] {
        let out = d.mechactl(&["pubsub", "publish", "cli", line]);
        assert!(out.status.success(), "{}", stderr(&out));
        let id = stdout(&out).trim().to_owned();
        assert!(!id.is_empty());
        ids.insert(id);
    }
    assert_eq!(ids.len(), 3, "ids are unique");
    let out = d.mechactl(&["pubsub", "subscribe", "cli", "--group", "g", "--count", "3"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "one\ntwo\nthree\n");

    let out = d.mechactl(&[
        "pubsub",
        "publish",
        "cli",
        "{\"n\":4}",
        "--store",
        "events",
        "--content-type",
        "application/json",
        "--metadata",
        "partitionKey=k",
        "--raw",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let c = d.client();
    let mut sub = c
        .subscribe("events", "cli", "inspect", Default::default())
        .expect("subscribe");
    // Group "g" acknowledged the first three, and no other group existed,
    // so they are gone: a group created now starts at the raw one.
    let raw = &next!(sub);
    assert!(raw.raw);
    assert_eq!(raw.data_content_type, "application/json");
    assert_eq!(meta(raw, "partitionKey"), Some("k"));
    // The acked group "g" gets only the new one.
    let out = d.mechactl(&["pubsub", "subscribe", "cli", "--group", "g", "--count", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "{\"n\":4}\n");
    // A bad topic is a usage error of the daemon: exit 1 with the reason.
    let out = d.mechactl(&["pubsub", "publish", "", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("topic"), "{}", stderr(&out));
}
