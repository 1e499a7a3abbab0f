//! Hostile tenants against the modules (issue #16): each attack runs as
//! another uid (nobody) against the real mechad and its module processes,
//! and each test checks that the attacker is refused while the module keeps
//! its pid and other tenants keep being served.
//!
//! The attacks: a bulk read whose answer exceeds the link's frame limit,
//! many slow requests of one tenant (lock waiters), many configuration
//! watches of one tenant, and ETags that would count other tenants' writes.

mod common;

#[path = "conformance/servers.rs"]
mod servers;

use std::collections::HashMap;
use std::time::Duration;

use common::{connect_as, error_message, open_to_nobody, require_root, Daemon, Raw, NOBODY};
use mecha_abi::msg::{
    ConfigSubscribeRequest, Hello, HelloReply, InvokeRequest, RegisterRequest, SetItem,
    TryLockReply, TryLockRequest, TxOp,
};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::SetOptions;

/// How long a test waits for the attack to take hold or for an answer.
const PATIENCE: Duration = Duration::from_secs(30);

/// A Dapr component document, to follow another in one file.
fn component(name: &str, kind: &str, metadata: &[(&str, &str)]) -> String {
    let metadata: Vec<(&str, String)> = metadata
        .iter()
        .map(|(k, v)| (*k, (*v).to_owned()))
        .collect();
    format!("---\n{}", common::component(name, kind, &metadata))
}

/// A configuration whose modules are health-pinged every 100 ms and killed
/// after a silent second, so that a module that stops reading its link is
/// found out within the test; then `components`.
fn config(components: &[String]) -> String {
    let mut doc = "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\n\
                   spec:\n  healthIntervalMs: 100\n  healthTimeoutMs: 1000\n"
        .to_owned();
    for c in components {
        doc.push_str(c);
    }
    doc
}

/// Starts mechad with `components`, its socket reachable by nobody.
fn start(components: &[String]) -> Daemon {
    require_root();
    let d = Daemon::start_with(Some(&config(components)));
    open_to_nobody(&d);
    d
}

/// A raw connection as uid/gid `uid`, past HELLO.
fn raw_as(d: &Daemon, uid: u32) -> Raw {
    let stream = connect_as(&d.socket, uid, uid).expect("connecting as another uid");
    stream
        .set_read_timeout(Some(PATIENCE))
        .expect("read timeout");
    let mut raw = Raw { stream };
    let hello = mecha_abi::encode(&Hello {
        min_version: 1,
        max_version: 1,
        client: "hostile".into(),
    })
    .expect("encode hello");
    let (status, body) = raw.call(Header::request(Opcode::HELLO, 1), &hello);
    assert_eq!(status, Status::Ok, "hello: {}", error_message(&body));
    let _: HelloReply = mecha_abi::decode(&body).expect("hello reply");
    raw
}

/// A request frame header with a deadline.
fn request(opcode: Opcode, id: u32, deadline: Duration) -> Header {
    let mut header = Header::request(opcode, id);
    header.deadline_ms = u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX);
    header
}

fn try_lock(resource: &str, owner: &str, wait: Duration) -> Vec<u8> {
    mecha_abi::encode(&TryLockRequest {
        store: String::new(),
        resource: resource.into(),
        owner: owner.into(),
        ttl_ms: 120_000,
        wait_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
    })
    .expect("encode try-lock")
}

/// The status of a client error, for assertions.
fn status_of<T: std::fmt::Debug>(result: Result<T, mecha_client::Error>) -> Option<Status> {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e.status(),
    }
}

/// 1 and 2: a bulk read whose answer would exceed the link's 64 MiB frame
/// limit (17 values of 4 MiB) is refused with RESOURCE_EXHAUSTED naming the
/// limit, as often as the attacker asks, and the state module is neither
/// restarted nor marked failed; a key named many times is answered once;
/// bulk writes over the documented cap are refused; another tenant's reads
/// keep working throughout.
#[test]
fn an_oversized_bulk_read_is_refused_without_restarting_the_state_module() {
    let d = start(&[component("statestore", "state.memory", &[])]);
    let victim = d.client();
    victim
        .set("", "mine", b"victim's".to_vec(), SetOptions::default())
        .expect("the victim writes");
    let pid = d.module_pid("state");
    assert_ne!(pid, 0, "the state module runs");

    let attacker = d.client_as(NOBODY);
    // Just under the client's default frame limit of 4 MiB, with room for
    // the rest of the request.
    let value = vec![0x5a; 4 * 1024 * 1024 - 4096];
    let keys: Vec<String> = (0..17).map(|i| format!("big{i}")).collect();
    for key in &keys {
        attacker
            .set("", key, value.clone(), SetOptions::default())
            .expect("the attacker stores a large value");
    }
    for round in 0..8 {
        let refused = attacker.bulk_get("", keys.clone());
        let e = refused.expect_err("a 71 MB answer is refused");
        assert_eq!(
            e.status(),
            Some(Status::ResourceExhausted),
            "round {round}: {e}"
        );
        assert!(
            e.to_string()
                .contains(&mecha_abi::MAX_FRAME_CAP.to_string()),
            "the error names the limit: {e}"
        );
        let got = victim.get("", "mine").expect("the victim reads");
        assert_eq!(got.map(|e| e.value), Some(b"victim's".to_vec()));
    }
    // One value named 17 times is read and answered once.
    let items = attacker
        .bulk_get("", vec!["big0".to_owned(); 17])
        .expect("a repeated key is answered once");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0].key, "big0");
    // Writes carrying more operations than the cap are refused before any
    // is applied.
    let items: Vec<SetItem> = (0..1025)
        .map(|i| SetItem {
            key: format!("k{i}"),
            value: Vec::new(),
            etag: None,
            ttl_ms: None,
        })
        .collect();
    assert_eq!(
        status_of(attacker.bulk_set("", items.clone())),
        Some(Status::ResourceExhausted)
    );
    let ops: Vec<TxOp> = items.into_iter().map(TxOp::Set).collect();
    assert_eq!(
        status_of(attacker.transact("", ops)),
        Some(Status::ResourceExhausted)
    );
    assert_eq!(attacker.get("", "k0").expect("a read"), None);

    assert_eq!(
        d.module_pid("state"),
        pid,
        "the state module was not restarted"
    );
    let status = victim.status().expect("status");
    let state = status
        .modules
        .iter()
        .find(|m| m.name == "state")
        .expect("the state module is listed");
    assert_eq!(state.restarts, 0, "{state:?}");
}

/// Sends `count` waiting try-locks of `resource` (held by the attacker
/// itself) over connections of at most 200 requests each, and waits until
/// at least one is refused RESOURCE_EXHAUSTED: from then on the attacker
/// holds all the waiting it may. Returns the connections (the waits hold
/// while they stay open) and the refusals' messages.
fn hold_waiters(d: &Daemon, resource: &str, count: u32) -> (Vec<Raw>, Vec<String>) {
    let mut holder = raw_as(d, NOBODY);
    let (status, body) = holder.call(
        request(Opcode::LOCK_TRY_LOCK, 2, PATIENCE),
        &try_lock(resource, "holder", Duration::ZERO),
    );
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    let reply: TryLockReply = mecha_abi::decode(&body).expect("try-lock reply");
    assert!(reply.acquired, "the attacker holds {resource}");

    let mut conns = vec![holder];
    let mut sent = 0;
    while sent < count {
        let mut raw = raw_as(d, NOBODY);
        let batch = (count - sent).min(200);
        for i in 0..batch {
            raw.send(
                request(Opcode::LOCK_TRY_LOCK, 10 + i, Duration::from_secs(60)),
                &try_lock(
                    resource,
                    &format!("waiter{sent}-{i}"),
                    Duration::from_secs(60),
                ),
            );
        }
        sent += batch;
        conns.push(raw);
    }
    // Refusals come back at once; waiting requests stay unanswered. The
    // last connection's batch is read until a refusal arrives, which
    // proves every waiting place the attacker may take is taken.
    let last = conns.last_mut().expect("a connection");
    let mut refusals = Vec::new();
    while refusals.is_empty() {
        let (h, body) = last.recv().expect("an answer before the deadline");
        match Status::from_code(h.status) {
            Status::ResourceExhausted => refusals.push(error_message(&body)),
            other => panic!("a waiter was answered {other:?}: {}", error_message(&body)),
        }
    }
    (conns, refusals)
}

/// The victim's own held lock and a waiting try-lock for it: answered
/// "not acquired" after waiting, never refused.
fn victim_waits(victim: &mecha_client::blocking::Client) {
    let lease = Duration::from_secs(60);
    let token = victim
        .try_lock("", "victim-lock", "first", lease, None)
        .expect("the victim takes its lock");
    assert!(token.is_some(), "the victim's lock was free");
    let waited = victim
        .try_lock(
            "",
            "victim-lock",
            "second",
            lease,
            Some(Duration::from_millis(200)),
        )
        .expect("the victim may wait while the attacker's waiters hold theirs");
    assert!(waited.is_none(), "the lock was held throughout");
    victim
        .unlock("", "victim-lock", "first")
        .expect("the victim unlocks");
}

/// 4: one tenant's lock waiters are bounded per tenant (the default
/// `maxWaitersPerTenant`, 128): an attacker with 600 waiting try-locks is
/// refused beyond it, and another tenant can still wait for its own lock;
/// the lock module is not restarted. On a node-wide bound (512) the victim
/// was refused.
#[test]
fn one_tenants_lock_waiters_leave_other_tenants_waiting() {
    let d = start(&[component("lockstore", "lock.memory", &[])]);
    let victim = d.client();
    let pid = d.module_pid("lock");
    let (conns, refusals) = hold_waiters(&d, "contended", 600);
    // The module's bound, or a per-tenant quota of the daemon's if that is
    // lower: either way the refusal names the bound that applied.
    assert!(
        (refusals[0].contains("maxWaitersPerTenant") && refusals[0].contains("128"))
            || refusals[0].contains("maxInFlight"),
        "the refusal names the bound: {}",
        refusals[0]
    );
    victim_waits(&victim);
    assert_eq!(
        d.module_pid("lock"),
        pid,
        "the lock module was not restarted"
    );
    drop(conns);
}

/// 3: liveness is not a request. With the waiter bound raised out of the
/// way, an attacker's waiting try-locks take every request slot its tenant
/// may hold in the lock module (its share, 512), and more are refused;
/// meanwhile the daemon's health pings are answered (the module keeps its
/// pid although it would be killed after a second without an answer) and
/// another tenant's requests, waiting ones included, are served.
#[test]
fn a_tenant_holding_its_share_of_request_slots_does_not_stop_pings_or_others() {
    let d = start(&[component(
        "lockstore",
        "lock.memory",
        &[("maxWaitersPerTenant", "100000")],
    )]);
    let victim = d.client();
    let pid = d.module_pid("lock");
    let (conns, refusals) = hold_waiters(&d, "contended", 1100);
    // The module's share, or a per-tenant quota of the daemon's if that is
    // lower: either way the refusal names the bound that applied.
    assert!(
        refusals[0].contains("512 requests in progress") || refusals[0].contains("maxInFlight"),
        "the refusal names the share: {}",
        refusals[0]
    );
    // Health pings go every 100 ms and a module silent for a second is
    // killed: serving the victim for longer than that (its waits end only
    // after their wait) while the attacker holds its slots shows the pings
    // were answered.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        victim_waits(&victim);
    }
    assert_eq!(
        d.module_pid("lock"),
        pid,
        "the lock module was not restarted"
    );
    let status = victim.status().expect("status");
    let lock = status
        .modules
        .iter()
        .find(|m| m.name == "lock")
        .expect("the lock module is listed");
    assert_eq!(lock.restarts, 0, "{lock:?}");
    drop(conns);
}

/// 3, the attack of issue #16: an attacker registers an app id, never
/// answers its calls, and sends 1100 calls to it with a 30 s deadline. Each
/// call holds a request slot of the invoke module while it waits; once the
/// attacker holds its share (512), further calls are refused at once, and
/// the module keeps reading its link: the health pings are answered (the
/// module keeps its pid although a second without an answer would get it
/// killed) and another tenant's invokes are answered. When the module
/// stopped reading at 1024 busy slots, it was killed, restarted and after
/// six rounds marked failed for everyone.
#[test]
fn calls_to_a_callee_that_never_answers_do_not_stop_the_invoke_module() {
    let d = start(&[component(
        "invoke",
        "invoke.mesh",
        &[("nodeName", "node-a")],
    )]);
    let victim = d.client();
    let pid = d.module_pid("invoke");
    assert_ne!(pid, 0, "the invoke module runs");

    // The callee registers and then never reads its connection again.
    let mut callee = raw_as(&d, NOBODY);
    let register = mecha_abi::encode(&RegisterRequest {
        app_id: "trap".into(),
        methods: vec![],
    })
    .expect("encode register");
    let (status, body) = callee.call(request(Opcode::INVOKE_REGISTER, 2, PATIENCE), &register);
    assert_eq!(status, Status::Ok, "{}", error_message(&body));

    let invoke = mecha_abi::encode(&InvokeRequest {
        app_id: "trap".into(),
        method: "m".into(),
        data: Vec::new(),
        content_type: String::new(),
        metadata: Vec::new(),
        caller_app_id: String::new(),
        trace_parent: String::new(),
    })
    .expect("encode invoke");
    // 1100 calls over five connections, each below the daemon's 256
    // requests in flight per connection.
    let mut conns = vec![callee];
    for _ in 0..5 {
        let mut raw = raw_as(&d, NOBODY);
        for i in 0..220 {
            raw.send(
                request(Opcode::INVOKE, 10 + i, Duration::from_secs(30)),
                &invoke,
            );
        }
        conns.push(raw);
    }
    // Calls that wait stay unanswered, so the first answer is a refusal,
    // which shows that the attacker holds every slot it may.
    let last = conns.last_mut().expect("a connection");
    let (h, body) = last.recv().expect("an answer before the deadline");
    assert_eq!(
        Status::from_code(h.status),
        Status::ResourceExhausted,
        "a call was answered otherwise: {}",
        error_message(&body)
    );
    // Health pings go every 100 ms and a module silent for a second is
    // killed: the victim is served for longer than that while the attacker
    // holds its calls.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        let answer = victim.invoke("nobody-serves-this", "m", Vec::new(), Default::default());
        assert_eq!(
            status_of(answer),
            Some(Status::NotFound),
            "the victim's invoke is answered"
        );
    }
    assert_eq!(
        d.module_pid("invoke"),
        pid,
        "the invoke module was not restarted"
    );
    drop(conns);
}

/// 4: configuration watches are bounded per tenant (the default
/// `maxSubscriptionsPerTenant`, 1000): the attacker's next watch is refused,
/// another tenant's is not, and the config module keeps its pid.
#[test]
fn one_tenants_config_watches_leave_other_tenants_watching() {
    let d = start(&[component("configstore", "configuration.memory", &[])]);
    let pid = d.module_pid("config");
    let subscribe = mecha_abi::encode(&ConfigSubscribeRequest {
        store: String::new(),
        keys: vec!["k".into()],
    })
    .expect("encode subscribe");
    // 1000 watches over five connections, each below the daemon's 256
    // requests in flight per connection; each is answered at once.
    let mut conns = Vec::new();
    for _ in 0..5 {
        let mut raw = raw_as(&d, NOBODY);
        for i in 0..200 {
            raw.send(
                request(Opcode::CONFIG_SUBSCRIBE, 10 + i, PATIENCE),
                &subscribe,
            );
        }
        let mut answered = HashMap::new();
        while answered.len() < 200 {
            let (h, body) = raw.recv().expect("a subscribe answer");
            assert!(h.flags.is_response(), "no pushes before a change");
            let status = Status::from_code(h.status);
            assert_eq!(
                status,
                Status::Ok,
                "watch refused: {}",
                error_message(&body)
            );
            answered.insert(h.request_id, status);
        }
        conns.push(raw);
    }
    let mut extra = raw_as(&d, NOBODY);
    let (status, body) = extra.call(request(Opcode::CONFIG_SUBSCRIBE, 7, PATIENCE), &subscribe);
    assert_eq!(
        status,
        Status::ResourceExhausted,
        "{}",
        error_message(&body)
    );
    assert!(
        error_message(&body).contains("maxSubscriptionsPerTenant"),
        "the refusal names the bound: {}",
        error_message(&body)
    );

    let mut victim = Raw::hello(&d.socket).0;
    let (status, body) = victim.call(request(Opcode::CONFIG_SUBSCRIBE, 7, PATIENCE), &subscribe);
    assert_eq!(status, Status::Ok, "{}", error_message(&body));
    assert_eq!(
        d.module_pid("config"),
        pid,
        "the config module was not restarted"
    );
    drop(conns);
}

/// 5: tenant A writes, tenant B writes 100 times, tenant A writes again: A's
/// second ETag follows its first, so A learns nothing of B's writes; for
/// every state driver (Redis and PostgreSQL when their servers exist).
#[test]
fn etags_reveal_nothing_of_other_tenants_writes() {
    let mut components = vec![
        component("memory", "state.memory", &[]),
        component("redb", "state.redb", &[]),
    ];
    let redis = servers::redis().map(|s| s.host_port());
    if let Some(host) = &redis {
        let prefix = servers::unique("hostile");
        components.push(component(
            "redis",
            "state.redis",
            &[("redisHost", host), ("keyPrefix", &prefix)],
        ));
    }
    let postgres = servers::postgres().map(|s| {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=2",
            s.port()
        )
    });
    if let Some(url) = &postgres {
        let table = servers::unique("hostile");
        components.push(component(
            "postgresql",
            "state.postgresql",
            &[("connectionString", url), ("tableName", &table)],
        ));
    }
    let d = start(&components);
    let a = d.client();
    let b = d.client_as(NOBODY);
    let mut stores = vec!["memory", "redb"];
    if redis.is_some() {
        stores.push("redis");
    }
    if postgres.is_some() {
        stores.push("postgresql");
    }
    for store in stores {
        let revision = |etag: String| -> u64 {
            etag.parse()
                .unwrap_or_else(|_| panic!("{store}: etag {etag:?} is not a number"))
        };
        let first = revision(
            a.set(store, "k", b"1".to_vec(), SetOptions::default())
                .expect("A writes"),
        );
        for i in 0..100 {
            b.set(
                store,
                &format!("k{i}"),
                b"x".to_vec(),
                SetOptions::default(),
            )
            .expect("B writes");
        }
        let second = revision(
            a.set(store, "k", b"2".to_vec(), SetOptions::default())
                .expect("A writes again"),
        );
        assert_eq!(
            second,
            first + 1,
            "{store}: A's ETags went from {first} to {second}, counting B's writes"
        );
    }
}
