//! Pubsub conformance: publish and delivery, ordering, fan-out across groups,
//! competing consumers within a group, acks, nacks and ack deadlines, groups
//! that subscribe after the fact, large and raw messages, per-key ordering,
//! and recovery after the backing server goes away — for every pubsub
//! driver, through mechad and the pubsub module. Tenant isolation is the
//! daemon's business (it stamps the tenant) and is tested in `tenants.rs`.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mecha_abi::msg::Delivery;
use mecha_abi::Status;
use mecha_client::blocking::Client;
use mecha_client::Client as AsyncClient;

use crate::common::{wait_until, Daemon};
use crate::servers;
use crate::support::{self, component};

/// The component name every pubsub conformance test uses.
const STORE: &str = "conf";

/// How long a test waits for something that should happen; it only bounds a
/// failure.
const PATIENCE: Duration = Duration::from_secs(20);

/// How long a test watches for a delivery that must not come.
const QUIET: Duration = Duration::from_millis(400);

/// What a driver claims.
#[derive(Clone, Copy, Debug, Default)]
pub struct Features {
    /// One member receives a publisher's messages in publish order.
    pub ordering: bool,
    /// Messages with the same `partitionKey` are handed out one at a time;
    /// without it, such a publish is UNSUPPORTED.
    pub partition_key: bool,
    /// A group that subscribes after messages were published still gets
    /// them (at-least-once for groups, durable positions).
    pub retains_for_new_groups: bool,
    /// A nack makes the message come again.
    pub redelivery_on_nack: bool,
    /// A delivery not acked within the member's ack deadline comes again.
    pub ack_deadline_redelivery: bool,
    /// Every group gets every message.
    pub fan_out: bool,
    /// Members of one group share its messages, one delivery each.
    pub competing_consumers: bool,
    /// Offsets of a topic are 1, 2, 3, … (servers number messages their
    /// own way: increasing, but not consecutive).
    pub consecutive_offsets: bool,
}

/// How a driver's backing server is started privately, for the test that
/// stops and restarts it.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Embedded,
    Redis,
    Nats,
}

/// A driver under test.
pub struct Driver {
    pub name: &'static str,
    pub kind: &'static str,
    pub component: String,
    pub features: Features,
    pub backend: Backend,
}

impl Driver {
    fn start(&self) -> (Daemon, Client) {
        support::start(&self.component)
    }
}

/// Everything the embedded broker does.
const EMBEDDED: Features = Features {
    ordering: true,
    partition_key: true,
    retains_for_new_groups: true,
    redelivery_on_nack: true,
    ack_deadline_redelivery: true,
    fan_out: true,
    competing_consumers: true,
    consecutive_offsets: true,
};

/// What the server-delivered drivers do.
const SERVER: Features = Features {
    partition_key: false,
    consecutive_offsets: false,
    ..EMBEDDED
};

/// The metadata of a Redis component at `host`, with short timeouts so the
/// redelivery tests run quickly.
fn redis_metadata(host: String) -> Vec<(&'static str, String)> {
    vec![
        ("redisHost", host),
        ("processingTimeout", "3s".into()),
        ("redeliverInterval", "500ms".into()),
    ]
}

/// The metadata of a JetStream component at `host`, on a stream of its own.
fn nats_metadata(host: String) -> Vec<(&'static str, String)> {
    vec![
        ("natsURL", format!("nats://{host}")),
        ("streamName", servers::unique("conf")),
        ("ackWait", "3s".into()),
    ]
}

/// The drivers this suite runs against.
pub mod drivers {
    use super::*;

    fn driver(
        name: &'static str,
        kind: &'static str,
        metadata: &[(&str, String)],
        features: Features,
        backend: Backend,
    ) -> Driver {
        Driver {
            name,
            kind,
            component: component(STORE, kind, metadata),
            features,
            backend,
        }
    }

    pub fn memory() -> Option<Driver> {
        Some(driver(
            "pubsub.memory",
            "pubsub.memory",
            &[],
            EMBEDDED,
            Backend::Embedded,
        ))
    }

    pub fn redb() -> Option<Driver> {
        Some(driver(
            "pubsub.redb",
            "pubsub.redb",
            &[],
            EMBEDDED,
            Backend::Embedded,
        ))
    }

    pub fn redis() -> Option<Driver> {
        let s = servers::redis()?;
        let md = redis_metadata(s.host_port());
        Some(driver(
            "pubsub.redis",
            "pubsub.redis",
            &md,
            SERVER,
            Backend::Redis,
        ))
    }

    pub fn jetstream() -> Option<Driver> {
        let s = servers::nats()?;
        let md = nats_metadata(s.host_port());
        Some(driver(
            "pubsub.jetstream",
            "pubsub.jetstream",
            &md,
            SERVER,
            Backend::Nats,
        ))
    }

    /// The same driver under its alias.
    pub fn nats() -> Option<Driver> {
        let s = servers::nats()?;
        let md = nats_metadata(s.host_port());
        Some(driver(
            "pubsub.nats",
            "pubsub.nats",
            &md,
            SERVER,
            Backend::Nats,
        ))
    }
}

conformance! {
    drivers: [memory, redb, redis, jetstream, nats],
    tests: [
        published_messages_are_delivered,
        one_member_receives_in_publish_order,
        every_group_gets_every_message,
        members_of_a_group_share_its_messages,
        a_nack_redelivers,
        a_missed_ack_deadline_redelivers,
        an_ack_is_final,
        a_new_group_gets_earlier_messages,
        large_payloads_round_trip,
        raw_messages_have_no_envelope,
        partition_keys_order_or_are_unsupported,
        publish_recovers_after_the_server_returns,
    ]
}

fn publish(c: &Client, topic: &str, data: &str) -> u64 {
    c.publish(
        STORE,
        topic,
        data.as_bytes().to_vec(),
        AsyncClient::publish_options().content_type("text/plain"),
    )
    .expect("publish succeeds")
    .offset
}

fn text(d: &Delivery) -> String {
    String::from_utf8_lossy(&d.data).into_owned()
}

macro_rules! next {
    ($sub:expr) => {
        $sub.next_timeout(PATIENCE)
            .expect("a delivery within the deadline")
            .expect("the subscription delivers")
    };
}

macro_rules! nothing {
    ($sub:expr) => {
        if let Some(got) = $sub.next_timeout(QUIET) {
            panic!("expected no delivery, got {got:?}");
        }
    };
}

fn published_messages_are_delivered(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("t");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    let offset = publish(&c, &topic, "hello");
    let got = next!(sub);
    assert_eq!(
        (text(&got), got.offset, got.attempt),
        ("hello".into(), offset, 1)
    );
    assert_eq!(got.spec_version, "1.0", "{}", driver.name);
    assert_eq!(got.data_content_type, "text/plain");
    assert_eq!(got.source, format!("mecha://{}", c.tenant()));
    assert_eq!((got.store.as_str(), got.group.as_str()), (STORE, "g"));
    assert!(
        sub.ack(&got).unwrap(),
        "{}: the ack takes effect",
        driver.name
    );
    if driver.features.consecutive_offsets {
        assert_eq!(offset, 1);
    }
}

fn one_member_receives_in_publish_order(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("order");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    let offsets: Vec<u64> = (0..20)
        .map(|i| publish(&c, &topic, &format!("m{i}")))
        .collect();
    assert!(offsets.windows(2).all(|w| w[0] < w[1]), "offsets increase");
    let got: Vec<String> = (0..20)
        .map(|_| {
            let d = next!(sub);
            assert!(sub.ack(&d).unwrap());
            text(&d)
        })
        .collect();
    if driver.features.ordering {
        let expected: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        assert_eq!(got, expected, "{}", driver.name);
    }
}

fn every_group_gets_every_message(driver: &Driver) {
    if !driver.features.fan_out {
        return;
    }
    let (d, c) = driver.start();
    let topic = servers::unique("fan");
    let (ca, cb) = (d.client(), d.client());
    let mut a = ca
        .subscribe(STORE, &topic, "a", Default::default())
        .unwrap();
    let mut b = cb
        .subscribe(STORE, &topic, "b", Default::default())
        .unwrap();
    for i in 0..10 {
        publish(&c, &topic, &format!("n{i}"));
    }
    for sub in [&mut a, &mut b] {
        let got: BTreeSet<String> = (0..10)
            .map(|_| {
                let d = next!(sub);
                assert!(sub.ack(&d).unwrap());
                text(&d)
            })
            .collect();
        assert_eq!(got.len(), 10, "{}: each group gets all ten", driver.name);
        nothing!(sub);
    }
}

fn members_of_a_group_share_its_messages(driver: &Driver) {
    if !driver.features.competing_consumers {
        return;
    }
    const MESSAGES: usize = 40;
    let (d, c) = driver.start();
    let topic = servers::unique("work");
    let received: Arc<Mutex<Vec<u64>>> = Arc::default();
    let ready = Arc::new(std::sync::Barrier::new(3));
    let members: Vec<_> = (0..2)
        .map(|_| {
            let (socket, topic) = (d.socket.clone(), topic.clone());
            let (received, ready) = (Arc::clone(&received), Arc::clone(&ready));
            std::thread::spawn(move || {
                let c = Client::connect(&socket).expect("connect");
                let options = AsyncClient::subscribe_options().max_in_flight(4);
                let mut sub = c.subscribe(STORE, &topic, "workers", options).unwrap();
                ready.wait();
                while received.lock().unwrap().len() < MESSAGES {
                    let Some(delivery) = sub.next_timeout(Duration::from_millis(200)) else {
                        continue;
                    };
                    let delivery = delivery.expect("the subscription delivers");
                    assert_eq!(delivery.attempt, 1, "nothing is delivered twice");
                    received.lock().unwrap().push(delivery.offset);
                    assert!(sub.ack(&delivery).unwrap());
                }
            })
        })
        .collect();
    ready.wait();
    let published: BTreeSet<u64> = (0..MESSAGES)
        .map(|i| publish(&c, &topic, &format!("w{i}")))
        .collect();
    wait_until(PATIENCE, "every message to be received", || {
        received.lock().unwrap().len() >= MESSAGES
    });
    for m in members {
        m.join().expect("a member thread");
    }
    let received = received.lock().unwrap().clone();
    assert_eq!(
        received.len(),
        MESSAGES,
        "{}: one delivery each",
        driver.name
    );
    assert_eq!(received.into_iter().collect::<BTreeSet<_>>(), published);
}

fn a_nack_redelivers(driver: &Driver) {
    if !driver.features.redelivery_on_nack {
        return;
    }
    let (_d, c) = driver.start();
    let topic = servers::unique("nack");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    publish(&c, &topic, "again");
    let first = next!(sub);
    assert!(
        sub.nack(&first).unwrap(),
        "{}: the nack takes effect",
        driver.name
    );
    let second = next!(sub);
    assert_eq!(
        (second.offset, second.id.as_str()),
        (first.offset, first.id.as_str())
    );
    assert!(second.attempt > first.attempt, "{}", driver.name);
    assert!(sub.ack(&second).unwrap());
}

fn a_missed_ack_deadline_redelivers(driver: &Driver) {
    if !driver.features.ack_deadline_redelivery {
        return;
    }
    let (_d, c) = driver.start();
    let topic = servers::unique("late");
    let options = AsyncClient::subscribe_options().ack_deadline(Duration::from_millis(300));
    let mut sub = c.subscribe(STORE, &topic, "g", options).unwrap();
    publish(&c, &topic, "slow");
    let first = next!(sub);
    // No ack: the deadline passes and the message comes again.
    let second = next!(sub);
    assert_eq!(second.offset, first.offset, "{}", driver.name);
    assert!(second.attempt > first.attempt);
    assert!(sub.ack(&second).unwrap());
}

fn an_ack_is_final(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("acked");
    let options = AsyncClient::subscribe_options().ack_deadline(Duration::from_millis(300));
    let mut sub = c.subscribe(STORE, &topic, "g", options).unwrap();
    publish(&c, &topic, "done");
    let got = next!(sub);
    assert!(sub.ack(&got).unwrap());
    // Longer than the deadline: an acked message must not come back, nor to a
    // member that joins later.
    nothing!(sub);
    sub.cancel().unwrap();
    let mut later = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    nothing!(later);
}

fn a_new_group_gets_earlier_messages(driver: &Driver) {
    if !driver.features.retains_for_new_groups {
        return;
    }
    let (_d, c) = driver.start();
    let topic = servers::unique("early");
    publish(&c, &topic, "before");
    let mut sub = c
        .subscribe(STORE, &topic, "late", Default::default())
        .unwrap();
    let got = next!(sub);
    assert_eq!(text(&got), "before", "{}", driver.name);
    assert!(sub.ack(&got).unwrap());
}

fn large_payloads_round_trip(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("big");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    // Below NATS's default 1 MiB payload limit, with the envelope.
    let data: Vec<u8> = (0..768 * 1024).map(|i| (i % 251) as u8).collect();
    c.publish(STORE, &topic, data.clone(), AsyncClient::publish_options())
        .unwrap();
    let got = next!(sub);
    assert!(got.data == data, "{}: the payload round-trips", driver.name);
    assert!(sub.ack(&got).unwrap());
}

fn raw_messages_have_no_envelope(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("raw");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    let options = AsyncClient::publish_options().raw(true).metadata("k", "v");
    c.publish(STORE, &topic, b"bare".to_vec(), options).unwrap();
    let got = next!(sub);
    assert!(got.raw, "{}", driver.name);
    assert_eq!((got.spec_version.as_str(), got.source.as_str()), ("", ""));
    assert_eq!(got.metadata, vec![("k".to_owned(), "v".to_owned())]);
    assert!(sub.ack(&got).unwrap());
}

fn partition_keys_order_or_are_unsupported(driver: &Driver) {
    let (_d, c) = driver.start();
    let topic = servers::unique("keyed");
    let keyed = || AsyncClient::publish_options().metadata("partitionKey", "k");
    let first = c.publish(STORE, &topic, b"k1".to_vec(), keyed());
    if !driver.features.partition_key {
        let e = first.expect_err("a keyed publish is refused");
        assert_eq!(
            e.status(),
            Some(Status::Unsupported),
            "{}: {e}",
            driver.name
        );
        let message = e.to_string();
        assert!(
            message.contains(STORE)
                && message.contains(driver.kind)
                && message.contains("partitionKey"),
            "the message names the component, type and feature: {message}"
        );
        return;
    }
    first.unwrap();
    c.publish(STORE, &topic, b"k2".to_vec(), keyed()).unwrap();
    let mut a = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    let got = next!(a);
    assert_eq!(text(&got), "k1");
    // While k1 is outstanding, k2 is held back.
    nothing!(a);
    assert!(a.ack(&got).unwrap());
    assert_eq!(text(&next!(a)), "k2");
}

/// Stops the driver's server, checks that publishing is UNAVAILABLE (naming
/// the component and the server) while it is down and works again once it
/// is back — without restarting the module or mechad — and that a
/// subscription opened before the outage delivers again afterwards.
fn publish_recovers_after_the_server_returns(driver: &Driver) {
    let port = servers::free_port();
    let dir = tempfile::tempdir().expect("a server directory");
    let (cmd, metadata): (fn(u16, &std::path::Path) -> Option<Command>, _) = match driver.backend {
        Backend::Embedded => return,
        Backend::Redis => (
            servers::redis_command,
            redis_metadata(format!("127.0.0.1:{port}")),
        ),
        Backend::Nats => (
            servers::nats_command,
            nats_metadata(format!("127.0.0.1:{port}")),
        ),
    };
    let server_cmd = || cmd(port, dir.path()).expect("the server is installed");
    let mut server = Some(servers::private(driver.name, server_cmd(), port));
    servers::wait_port(SocketAddr::from(([127, 0, 0, 1], port)), PATIENCE);
    let d = Daemon::start_with(Some(&component(STORE, driver.kind, &metadata)));
    let c = d.client();
    let module = d.module_pid("pubsub");
    let topic = servers::unique("outage");
    let mut sub = c.subscribe(STORE, &topic, "g", Default::default()).unwrap();
    publish(&c, &topic, "before");
    let got = next!(sub);
    assert!(sub.ack(&got).unwrap());

    drop(server.take());
    let deadline = Instant::now() + PATIENCE;
    let error = loop {
        match c.publish(
            STORE,
            &topic,
            b"down".to_vec(),
            AsyncClient::publish_options(),
        ) {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    Instant::now() < deadline,
                    "publish keeps succeeding with the server down"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    };
    assert_eq!(
        error.status(),
        Some(Status::Unavailable),
        "{}: {error}",
        driver.name
    );
    let message = error.to_string();
    assert!(
        message.contains(STORE) && message.contains(&port.to_string()),
        "the message names the component and the server: {message}"
    );

    server = Some(servers::private(driver.name, server_cmd(), port));
    servers::wait_port(SocketAddr::from(([127, 0, 0, 1], port)), PATIENCE);
    let deadline = Instant::now() + PATIENCE;
    loop {
        match c.publish(
            STORE,
            &topic,
            b"after".to_vec(),
            AsyncClient::publish_options(),
        ) {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.status(), Some(Status::Unavailable), "{e}");
                assert!(Instant::now() < deadline, "publish did not recover: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // The subscription survived (or was resubscribed by the client) and
    // receives what was published after the server came back.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got = next!(sub);
        assert!(sub.ack(&got).unwrap_or(false) || text(&got) != "after");
        if text(&got) == "after" {
            break;
        }
        assert!(Instant::now() < deadline, "the subscription recovers");
    }
    assert_eq!(
        d.module_pid("pubsub"),
        module,
        "the module was not restarted"
    );
    drop(server);
}
