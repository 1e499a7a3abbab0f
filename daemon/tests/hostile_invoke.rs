//! Service invocation attacked by a hostile tenant: each test runs the attack
//! as uid 65534 (nobody, tenant `uid:65534`) against the real mechad and
//! invoke module, next to a victim tenant (root), and checks that the attack
//! is refused and the victim does not notice: spoofed caller app ids, app ids
//! taken after a module crash, stale callees, unbounded registrations and
//! listings, and calls that are never answered.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{
    billing_access_control, connect_as, error_message, invoke_component, invoke_reply,
    open_to_nobody, require_root, Daemon, Raw, CONFIGURATION, NOBODY,
};
use mecha_abi::msg::{AppsReply, Hello, InvokeCall, RegisterRequest};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::{handler, Client, Error, InvokeOptions, InvokeReply};

/// The invoke component with `extra` metadata lines, accessControl in the
/// shape of `deploy/config/mecha.yaml` (only `checkout` may call `billing`),
/// and root as tenant `shop`, which the configuration gives `billing` and
/// `checkout`. Nobody is tenant `uid:65534`, with no `appIds` list.
fn config(extra: &str) -> String {
    let access = billing_access_control("        - appId: checkout\n          action: allow\n");
    let component = invoke_component("node-a", &format!("{access}{extra}"));
    format!(
        "{component}---\n{CONFIGURATION}  tenants:\n  - name: shop\n    uids: [0]\n    \
         appIds: [billing, checkout]\n"
    )
}

fn start(extra: &str) -> Daemon {
    require_root();
    let d = Daemon::start_with(Some(&config(extra)));
    open_to_nobody(&d);
    d
}

/// The invoke component alone: no tenant rules, so root is tenant `uid:0`
/// and nobody `uid:65534`, and neither has an `appIds` list.
fn start_without_tenant_rules() -> Daemon {
    require_root();
    let yaml = "apiVersion: mecha.io/v1alpha1\nkind: Component\nmetadata: {name: invoke}\nspec: {type: invoke.mesh, metadata: []}\n";
    let d = Daemon::start_with(Some(yaml));
    open_to_nobody(&d);
    d
}

/// An async client connected as the root tenant (`shop`).
async fn victim(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("client connects")
}

/// An async client connected as nobody (tenant `uid:65534`).
async fn attacker(d: &Daemon) -> Client {
    let socket = d.socket.clone();
    let stream = tokio::task::spawn_blocking(move || connect_as(&socket, NOBODY, NOBODY))
        .await
        .expect("connecting thread")
        .expect("connecting as nobody");
    let c = Client::from_stream(stream, &d.socket)
        .await
        .expect("client negotiates as nobody");
    assert_eq!(c.tenant(), "uid:65534");
    c
}

fn reply(data: &[u8]) -> Result<InvokeReply, (Status, String)> {
    Ok(invoke_reply(data.to_vec()))
}

fn status_of<T>(r: &Result<T, Error>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(e) => e.status().unwrap_or(Status::Internal),
    }
}

fn as_app(caller_app_id: &str) -> InvokeOptions {
    InvokeOptions {
        caller_app_id: caller_app_id.into(),
        ..Default::default()
    }
}

/// The invoke module's pid, from STATUS.
async fn invoke_pid(c: &Client) -> u32 {
    let status = c.status().await.expect("status");
    status
        .modules
        .iter()
        .find(|m| m.name == "invoke")
        .map(|m| m.pid)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_app_id_is_believed_only_from_the_tenant_that_holds_it() {
    let d = start("");
    let shop = victim(&d).await;
    let _billing = serve_billing(&shop, b"charged").await;
    let evil = attacker(&d).await;

    // Calling billing as checkout would pass its access control: refused,
    // naming the id.
    let r = evil
        .invoke("billing", "charge", vec![], as_app("checkout"))
        .await;
    assert_eq!(status_of(&r), Status::PermissionDenied, "{r:?}");
    let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("\"checkout\""), "{msg}");
    // Nor may the attacker register an app id the configuration gives shop.
    let r = evil
        .register(
            "checkout",
            vec![],
            handler(|_c: InvokeCall| async { reply(b"stolen") }),
        )
        .await;
    assert_eq!(status_of(&r), Status::PermissionDenied);
    // The tenant holding checkout by the configuration calls as it.
    let ok = shop
        .invoke("billing", "charge", vec![], as_app("checkout"))
        .await
        .expect("shop calls billing as checkout");
    assert_eq!(ok.data, b"charged");
    // An app id registered at run time is the registering tenant's to call
    // as, and no one else's.
    let _mine = evil
        .register(
            "scratch",
            vec![],
            handler(|_c: InvokeCall| async { reply(b"s") }),
        )
        .await
        .expect("the attacker registers an unclaimed app id");
    evil.invoke("scratch", "m", vec![], as_app("scratch"))
        .await
        .expect("calling as an app id the tenant registered");
    let r = shop.invoke("scratch", "m", vec![], as_app("scratch")).await;
    assert_eq!(status_of(&r), Status::PermissionDenied, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_id_stays_its_owners_across_a_kill_of_the_invoke_module() {
    let d = start_without_tenant_rules();
    let owner = victim(&d).await;
    let thief = attacker(&d).await;
    let name = "checkout";
    let reg = owner
        .register(
            name,
            vec![],
            handler(|_c: InvokeCall| async { reply(b"owner") }),
        )
        .await
        .expect("owner registers");
    let before = invoke_pid(&thief).await;
    common::signal(before, libc::SIGKILL);
    // The thief tries as soon as the module answers again; every try must
    // be refused (during the restart the daemon answers UNAVAILABLE).
    let deadline = Instant::now() + Duration::from_secs(30);
    let first_answer = loop {
        let r = thief
            .register(
                name,
                vec![],
                handler(|_c: InvokeCall| async { reply(b"thief") }),
            )
            .await;
        match status_of(&r) {
            Status::Unavailable => {
                assert!(
                    Instant::now() < deadline,
                    "the invoke module never came back"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            s => break (s, r.err().map(|e| e.to_string())),
        }
    };
    assert_eq!(
        first_answer.0,
        Status::PermissionDenied,
        "the thief took the owner's app id after the restart: {first_answer:?}"
    );
    assert_ne!(invoke_pid(&thief).await, before, "the module restarted");
    drop(reg);
    let _again = owner
        .register(
            name,
            vec![],
            handler(|_c: InvokeCall| async { reply(b"owner") }),
        )
        .await
        .expect("the owner registers its app id again");
    let r = thief
        .register(
            name,
            vec![],
            handler(|_c: InvokeCall| async { reply(b"thief") }),
        )
        .await;
    assert_eq!(status_of(&r), Status::PermissionDenied);
    let got = thief
        .invoke(name, "m", vec![], Default::default())
        .await
        .expect("a call reaches the owner");
    assert_eq!(got.data, b"owner");
}

/// A raw connection as nobody, after HELLO.
fn raw_as_nobody(socket: &std::path::Path) -> Raw {
    let stream = connect_as(socket, NOBODY, NOBODY).expect("connect as nobody");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut raw = Raw { stream };
    let body = mecha_abi::encode(&Hello {
        min_version: 1,
        max_version: 1,
        client: "hostile-invoke".into(),
    })
    .expect("encode hello");
    let (status, p) = raw.call(Header::request(Opcode::HELLO, 1), &body);
    assert_eq!(status, Status::Ok, "{}", error_message(&p));
    raw
}

/// Registers `app_id` on a raw connection as nobody; the connection is the
/// instance.
/// The victim's `billing` app, answering every call with `answer`.
async fn serve_billing(shop: &Client, answer: &'static [u8]) -> mecha_client::Registration {
    shop.register(
        "billing",
        vec![],
        handler(move |_c: InvokeCall| async move { reply(answer) }),
    )
    .await
    .expect("shop registers billing")
}

fn raw_register(socket: &std::path::Path, app_id: &str) -> Raw {
    let mut raw = raw_as_nobody(socket);
    let body = mecha_abi::encode(&RegisterRequest {
        app_id: app_id.into(),
        methods: vec![],
    })
    .expect("encode");
    raw.send(Header::request(Opcode::INVOKE_REGISTER, 1), &body);
    let (h, p) = raw.recv().expect("register answer");
    assert_eq!(
        Status::from_code(h.status),
        Status::Ok,
        "{}",
        error_message(&p)
    );
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_stops_is_not_found_by_the_next_call() {
    let d = start("");
    let caller = victim(&d).await;
    for i in 0..200 {
        let name = "flap";
        if i % 2 == 0 {
            // Unregisters: STREAM_CANCEL, answered once the module was told.
            let callee = attacker(&d).await;
            let reg = callee
                .register(
                    name,
                    vec![],
                    handler(|_c: InvokeCall| async { reply(b"up") }),
                )
                .await
                .expect("register");
            let up = caller.invoke(name, "m", vec![], Default::default()).await;
            assert_eq!(status_of(&up), Status::Ok, "round {i}: {up:?}");
            reg.cancel().await.expect("cancel the registration");
        } else {
            // Its connection closes: shut down, the way the Python client
            // stops serving.
            let raw = raw_register(&d.socket, name);
            raw.stream
                .shutdown(std::net::Shutdown::Both)
                .expect("shutdown");
        }
        let r = caller.invoke(name, "m", vec![], Default::default()).await;
        // A connection shut down before the call is seen as closing even
        // before its session has read its end, so no call is handed to it.
        assert!(
            status_of(&r) == Status::NotFound,
            "round {i}: a callee that stopped must be gone at once: {:?}",
            r.err()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_app_ids_and_the_app_listing_are_bounded() {
    let d = start("");
    let shop = victim(&d).await;
    let _billing = serve_billing(&shop, b"b").await;
    let before = invoke_pid(&shop).await;
    // A 1 KB app id was accepted before; app ids are short names now.
    let evil = attacker(&d).await;
    let r = evil
        .register(
            &"x".repeat(1000),
            vec![],
            handler(|_c: InvokeCall| async { reply(b"") }),
        )
        .await;
    assert_eq!(status_of(&r), Status::InvalidArgument, "{:?}", r.err());
    // The attacker registers long ids until refused, pipelined over a few
    // connections (each has an in-flight limit).
    let long = |n: usize| format!("{n:06}-{}", "a".repeat(240));
    let accepted = tokio::task::spawn_blocking({
        let socket = d.socket.clone();
        move || {
            let mut accepted = 0usize;
            let mut refused = None;
            let mut conns = Vec::new();
            for c in 0..5 {
                let mut raw = raw_as_nobody(&socket);
                for k in 0..250 {
                    let n = c * 250 + k;
                    let body = mecha_abi::encode(&RegisterRequest {
                        app_id: long(n),
                        methods: vec![],
                    })
                    .expect("encode");
                    raw.send(
                        Header::request(Opcode::INVOKE_REGISTER, 1 + k as u32),
                        &body,
                    );
                }
                for _ in 0..250 {
                    let (h, p) = raw.recv().expect("register answer");
                    match Status::from_code(h.status) {
                        Status::Ok => accepted += 1,
                        s => refused = Some((s, error_message(&p))),
                    }
                }
                conns.push(raw);
            }
            (accepted, refused, conns)
        }
    })
    .await
    .expect("registering thread");
    let (accepted, refused, _conns) = accepted;
    assert_eq!(accepted, 1024, "the default per-tenant limit");
    let (status, msg) = refused.expect("registrations past the limit are refused");
    assert_eq!(status, Status::ResourceExhausted, "{msg}");
    assert!(msg.contains("maxRegistrationsPerTenant"), "{msg}");
    // Listing is answered, bounded, and shows each tenant its own app ids.
    let apps = shop.apps().await.expect("the victim lists apps");
    assert!(apps.iter().any(|a| a.app_id == "billing"));
    assert!(apps.len() <= 4096);
    let theirs = evil.apps().await.expect("the attacker lists apps");
    assert_eq!(
        theirs.iter().filter(|a| a.app_id.len() > 200).count(),
        1024,
        "a tenant sees all of its own registrations"
    );
    let raw_apps = Raw::hello(&d.socket)
        .0
        .call(Header::request(Opcode::INVOKE_APPS, 9), &[]);
    assert_eq!(raw_apps.0, Status::Ok);
    let listed: AppsReply = mecha_abi::decode(&raw_apps.1).expect("AppsReply");
    assert!(
        raw_apps.1.len() <= (1 << 20) + 4096 * 64,
        "{}",
        raw_apps.1.len()
    );
    assert!(!listed.apps.is_empty());
    // Nothing above restarted the module, and the victim is still served.
    assert_eq!(invoke_pid(&shop).await, before);
    shop.invoke("billing", "m", vec![], as_app("checkout"))
        .await
        .expect("the victim's call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_never_answers_does_not_take_the_module_down() {
    let d = start("");
    let shop = victim(&d).await;
    let _mine = shop
        .register(
            "billing",
            vec![],
            handler(|c: InvokeCall| async move { reply(&c.data) }),
        )
        .await
        .expect("shop registers its callee");
    let before = invoke_pid(&shop).await;
    // The attacker's callee registers and then never reads its connection.
    let sink = raw_register(&d.socket, "sink");
    // 1,100 calls of it with a 30 s deadline, over five connections.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..5 {
        let c = attacker(&d).await.with_timeout(Duration::from_secs(30));
        for _ in 0..220 {
            let c = c.clone();
            flood.spawn(async move {
                status_of(&c.invoke("sink", "m", vec![0; 64], Default::default()).await)
            });
        }
    }
    // Meanwhile the victim's calls of its own callee keep working, until
    // every attacking call has been answered and a health timeout more.
    let flooding = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let victim_calls = {
        let shop = shop.clone();
        let flooding = Arc::clone(&flooding);
        tokio::spawn(async move {
            let mut n = 0u32;
            while flooding.load(std::sync::atomic::Ordering::Relaxed) || n < 50 {
                let r = shop
                    .with_timeout(Duration::from_secs(10))
                    .invoke("billing", "m", b"v".to_vec(), as_app("checkout"))
                    .await;
                assert_eq!(status_of(&r), Status::Ok, "victim call {n}: {r:?}");
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            n
        })
    };
    let mut statuses = std::collections::BTreeMap::<String, u32>::new();
    while let Some(s) = flood.join_next().await {
        *statuses
            .entry(s.expect("flood task").name().to_string())
            .or_default() += 1;
    }
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let served = victim_calls.await.expect("victim task");
    assert!(served >= 50);
    // The module stayed up: the attacker's calls ended by deadline or were
    // refused at the tenant's share, never by the module going away.
    assert_eq!(invoke_pid(&shop).await, before, "statuses: {statuses:?}");
    assert!(
        !statuses.contains_key("UNAVAILABLE"),
        "no call saw the module go away: {statuses:?}"
    );
    drop(sink);
}
