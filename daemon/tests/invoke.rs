//! Service invocation on one node, against the real mechad and invoke
//! module: round trips, round robin, a callee dying mid-call, deadlines,
//! unknown app ids, access control, tenant app-id policy, retries and the
//! circuit breaker, and the daemon's direct routes (taken, and revoked by a
//! new instance, the callee's end and a reload of access control).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    billing_access_control, error_message, invoke_component, my_uid, wait_until, Daemon, Raw,
    CONFIGURATION,
};
use mecha_abi::msg::{InvokeCall, RegisterRequest};
use mecha_abi::{Header, Opcode, Status};
use mecha_client::{handler, Client, Error, InvokeOptions, InvokeReply};

/// One invoke component with access control and resiliency for named apps;
/// the test's own uid is tenant `me`, which may claim only some app ids.
fn config() -> String {
    config_with("        - appId: web\n          methods: [charge]\n          action: allow\n")
}

/// [`config`] with `callers` as the access rules of app `billing`.
fn config_with(callers: &str) -> String {
    let uid = my_uid();
    let access = billing_access_control(callers);
    let resiliency = r#"  - name: resiliency
    value:
      apps:
        flaky:
          retry: {policy: constant, durationMs: 10, maxRetries: 3}
        broken:
          circuitBreaker: {consecutiveFailures: 2, timeoutMs: 200}
"#;
    let component = invoke_component("node-a", &format!("{access}{resiliency}"));
    format!(
        "{component}---\n{CONFIGURATION}  tenants:\n  - name: me\n    uids: [{uid}]\n    \
         appIds: [echo, lb, slow, crash, billing, web, flaky, broken]\n"
    )
}

fn ok(data: Vec<u8>) -> Result<InvokeReply, (Status, String)> {
    Ok(InvokeReply {
        data,
        content_type: "text/plain".into(),
        metadata: vec![],
    })
}

fn status_of(r: Result<InvokeReply, Error>) -> Status {
    match r {
        Ok(_) => Status::Ok,
        Err(e) => e.status().unwrap_or(Status::Internal),
    }
}

async fn connect(d: &Daemon) -> Client {
    Client::connect(&d.socket).await.expect("client connects")
}

/// The invoke module's pid, from STATUS.
async fn invoke_pid(c: &Client) -> u32 {
    let status = c.status().await.expect("status");
    status
        .modules
        .iter()
        .find(|m| m.name == "invoke")
        .map_or(0, |m| m.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_reaches_the_registered_app_and_its_answer_comes_back() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    let seen: Arc<parking_lot::Mutex<Option<InvokeCall>>> = Default::default();
    let seen2 = Arc::clone(&seen);
    let reg = callee
        .register(
            "echo",
            vec![],
            handler(move |call: InvokeCall| {
                let data = [b"echo:".as_slice(), &call.data].concat();
                *seen2.lock() = Some(call);
                async move { ok(data) }
            }),
        )
        .await
        .expect("register");
    assert_eq!(reg.node(), "node-a");
    let caller = connect(&d).await;
    let options = InvokeOptions {
        content_type: "text/plain".into(),
        metadata: vec![("k".into(), "v".into())],
        caller_app_id: "web".into(),
        trace_parent: String::new(),
    };
    let reply = caller
        .invoke("echo", "say", b"hi".to_vec(), options)
        .await
        .expect("invoke");
    assert_eq!(reply.data, b"echo:hi");
    assert_eq!(reply.content_type, "text/plain");
    let call = seen.lock().clone().expect("the handler ran");
    assert_eq!(
        (call.method.as_str(), call.caller_app_id.as_str()),
        ("say", "web")
    );
    assert_eq!(call.caller_tenant, "me");
    assert_eq!(call.metadata, vec![("k".to_string(), "v".to_string())]);
    assert!(call.trace_parent.starts_with("00-") && call.trace_parent.len() == 55);
    // A traceparent given by the caller is passed through unchanged.
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let options = InvokeOptions {
        trace_parent: tp.into(),
        ..Default::default()
    };
    caller.invoke("echo", "say", vec![], options).await.unwrap();
    assert_eq!(seen.lock().as_ref().unwrap().trace_parent, tp);
    // mechactl sees it and calls it too.
    let out = d.mechactl(&["apps"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("echo"));
    let out = d.mechactl(&["invoke", "echo", "m", "from-cli"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "echo:from-cli");
    // Once the registration is cancelled the app id is gone.
    reg.cancel().await.unwrap();
    wait_until(Duration::from_secs(10), "echo to be unregistered", || {
        !String::from_utf8_lossy(&d.mechactl(&["apps"]).stdout).contains("echo")
    });
    let r = caller
        .invoke("echo", "say", vec![], Default::default())
        .await;
    assert_eq!(status_of(r), Status::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_take_turns_across_instances_and_unknown_apps_are_not_found() {
    let d = Daemon::start_with(Some(&config()));
    let one = connect(&d).await;
    let two = connect(&d).await;
    let _r1 = one
        .register("lb", vec![], handler(|_| async { ok(b"one".to_vec()) }))
        .await
        .unwrap();
    let caller = connect(&d).await;
    // With one instance, the call earns a direct route to it; the second
    // registration must revoke it, or every later call would go to `one`.
    let r = caller.invoke("lb", "m", vec![], Default::default()).await;
    assert_eq!(r.unwrap().data, b"one");
    let _r2 = two
        .register("lb", vec![], handler(|_| async { ok(b"two".to_vec()) }))
        .await
        .unwrap();
    let mut answers = Vec::new();
    for _ in 0..4 {
        let r = caller.invoke("lb", "m", vec![], Default::default()).await;
        answers.push(String::from_utf8(r.unwrap().data).unwrap());
    }
    assert_ne!(answers[0], answers[1], "instances alternate: {answers:?}");
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[1], answers[3]);
    let r = caller
        .invoke("nobody", "m", vec![], Default::default())
        .await;
    assert_eq!(status_of(r), Status::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_that_disconnects_mid_call_gives_unavailable() {
    let d = Daemon::start_with(Some(&config()));
    // The callee speaks raw frames, so the test can drop it at the exact moment.
    let (mut raw, _) = Raw::hello(&d.socket);
    let body = mecha_abi::encode(&RegisterRequest {
        app_id: "crash".into(),
        methods: vec![],
    })
    .unwrap();
    raw.send(Header::request(Opcode::INVOKE_REGISTER, 7), &body);
    let (h, p) = raw.recv().expect("register answer");
    assert_eq!(
        Status::from_code(h.status),
        Status::Ok,
        "{}",
        error_message(&p)
    );
    assert_eq!(h.flags.0, 0x03, "the registration is a stream");
    let caller = connect(&d).await;
    let call = tokio::spawn(async move {
        caller
            .invoke("crash", "m", vec![], Default::default())
            .await
    });
    let (h, p) = tokio::task::spawn_blocking(move || {
        let frame = raw.recv().expect("the call is delivered");
        drop(raw);
        frame
    })
    .await
    .unwrap();
    assert_eq!(
        (h.opcode, h.flags.0),
        (Opcode::INVOKE_CALL, 0),
        "a daemon request"
    );
    assert!(h.deadline_ms > 0);
    let delivered: InvokeCall = mecha_abi::decode(&p).unwrap();
    assert_eq!(delivered.app_id, "crash");
    let r = call.await.unwrap();
    assert_eq!(status_of(r), Status::Unavailable);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callee_slower_than_the_deadline_gives_deadline_exceeded() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    let _reg = callee
        .register(
            "slow",
            vec![],
            handler(|_| async {
                std::future::pending::<()>().await;
                ok(vec![])
            }),
        )
        .await
        .unwrap();
    let caller = connect(&d).await.with_timeout(Duration::from_millis(300));
    let r = caller.invoke("slow", "m", vec![], Default::default()).await;
    assert_eq!(status_of(r), Status::DeadlineExceeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_and_the_tenant_app_id_list_are_enforced() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    let _reg = callee
        .register(
            "billing",
            vec![],
            handler(|_| async { ok(b"paid".to_vec()) }),
        )
        .await
        .unwrap();
    let caller = connect(&d).await;
    let as_web = |method: &str| {
        let c = caller.clone();
        let method = method.to_string();
        async move {
            let o = InvokeOptions {
                caller_app_id: "web".into(),
                ..Default::default()
            };
            c.invoke("billing", &method, vec![], o).await
        }
    };
    assert_eq!(as_web("charge").await.unwrap().data, b"paid");
    match as_web("refund").await {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::PermissionDenied);
            assert!(message.contains("billing"), "{message}");
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    let anonymous = caller
        .invoke("billing", "charge", vec![], Default::default())
        .await;
    assert_eq!(status_of(anonymous), Status::PermissionDenied);
    // Tenant `me` may neither register nor call as an app id outside appIds.
    let r = callee
        .register("stranger", vec![], handler(|_| async { ok(vec![]) }))
        .await;
    assert_eq!(
        r.err().and_then(|e| e.status()),
        Some(Status::PermissionDenied)
    );
    let o = InvokeOptions {
        caller_app_id: "stranger".into(),
        ..Default::default()
    };
    let r = caller.invoke("billing", "charge", vec![], o).await;
    assert_eq!(status_of(r), Status::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_absorb_transient_failures_and_the_breaker_opens_and_probes() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    // `flaky` fails twice, then answers: three retries are configured.
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let n = Arc::clone(&flaky_calls);
    let _f = callee
        .register(
            "flaky",
            vec![],
            handler(move |_| {
                let k = n.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    if k <= 2 {
                        Err((Status::Internal, format!("failure {k}")))
                    } else {
                        ok(b"finally".to_vec())
                    }
                }
            }),
        )
        .await
        .unwrap();
    let caller = connect(&d).await;
    let r = caller
        .invoke("flaky", "m", vec![], Default::default())
        .await;
    assert_eq!(r.unwrap().data, b"finally");
    assert_eq!(
        flaky_calls.load(Ordering::SeqCst),
        3,
        "two retries were needed"
    );

    // `broken` fails until told otherwise; its breaker opens after 2 failures.
    let broken_calls = Arc::new(AtomicU32::new(0));
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (n, h) = (Arc::clone(&broken_calls), Arc::clone(&healthy));
    let _b = callee
        .register(
            "broken",
            vec![],
            handler(move |_| {
                n.fetch_add(1, Ordering::SeqCst);
                let well = h.load(Ordering::SeqCst);
                async move {
                    if well {
                        ok(b"healed".to_vec())
                    } else {
                        Err((Status::Internal, "down".to_string()))
                    }
                }
            }),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let r = caller
            .invoke("broken", "m", vec![], Default::default())
            .await;
        assert_eq!(status_of(r), Status::Internal);
    }
    match caller
        .invoke("broken", "m", vec![], Default::default())
        .await
    {
        Err(Error::Status { status, message }) => {
            assert_eq!(status, Status::Unavailable);
            assert!(message.contains("circuit breaker"), "{message}");
        }
        other => panic!("expected the open breaker, got {other:?}"),
    }
    assert_eq!(
        broken_calls.load(Ordering::SeqCst),
        2,
        "an open breaker sends nothing"
    );
    // After the cool-down one probe reaches the callee; it fails, so the
    // breaker opens again. Then the callee heals and a later probe closes it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while broken_calls.load(Ordering::SeqCst) < 3 {
        assert!(std::time::Instant::now() < deadline, "no probe came");
        let _ = caller
            .invoke("broken", "m", vec![], Default::default())
            .await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    healthy.store(true, Ordering::SeqCst);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the breaker never closed"
        );
        if let Ok(r) = caller
            .invoke("broken", "m", vec![], Default::default())
            .await
        {
            assert_eq!(r.data, b"healed");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = caller
        .invoke("broken", "m", vec![], Default::default())
        .await;
    assert_eq!(
        status_of(r),
        Status::Ok,
        "a closed breaker lets calls through"
    );
}

#[test]
fn mechactl_serves_an_echo_app_and_invokes_it() {
    let d = Daemon::start_with(Some(&config()));
    let mut server = d
        .mechactl_cmd(&["serve", "echo", "--echo"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("mechactl serve starts");
    wait_until(
        Duration::from_secs(20),
        "mechactl serve to register",
        || String::from_utf8_lossy(&d.mechactl(&["apps"]).stdout).contains("echo"),
    );
    let out = d.mechactl(&["invoke", "echo", "anything", "ping-pong"]);
    let _ = server.kill();
    let _ = server.wait();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ping-pong");
    // The server is gone, so is the app id: NOT_FOUND is exit code 3.
    wait_until(Duration::from_secs(20), "echo to disappear", || {
        d.mechactl(&["invoke", "echo", "m"]).status.code() == Some(3)
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_come_back_after_the_invoke_module_restarts() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    // `serve` registers again whenever the registration is reset.
    let serving = tokio::spawn(async move {
        callee
            .serve(
                "echo",
                vec![],
                handler(|c: InvokeCall| async move { ok(c.data) }),
            )
            .await
    });
    let caller = connect(&d).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let call_until_ok = |what: &'static str| {
        let caller = caller.clone();
        async move {
            loop {
                match caller
                    .invoke("echo", "m", b"x".to_vec(), Default::default())
                    .await
                {
                    Ok(r) => return r,
                    Err(e) => assert!(std::time::Instant::now() < deadline, "{what}: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    assert_eq!(call_until_ok("first registration").await.data, b"x");
    let pid =
        |s: mecha_client::StatusReply| s.modules.iter().find(|m| m.name == "invoke").map(|m| m.pid);
    let old = pid(caller.status().await.unwrap());
    let new = caller
        .with_timeout(Duration::from_secs(30))
        .module_restart("invoke", None)
        .await
        .expect("hot restart of the invoke module");
    assert_ne!(old, Some(new));
    assert_eq!(call_until_ok("after the restart").await.data, b"x");
    assert!(
        !serving.is_finished(),
        "serve keeps serving across the restart"
    );
    serving.abort();
}

/// Serves one INVOKE_CALL on a raw callee connection, in a blocking task:
/// answers OK with the call's data, and returns the connection, the call and
/// its header.
fn serve_one(mut raw: Raw) -> tokio::task::JoinHandle<(Raw, InvokeCall, Header)> {
    tokio::task::spawn_blocking(move || {
        let (h, p) = raw.recv().expect("a call is delivered");
        assert_eq!((h.opcode, h.flags.0), (Opcode::INVOKE_CALL, 0));
        let call: InvokeCall = mecha_abi::decode(&p).expect("an InvokeCall");
        let reply = mecha_abi::encode(&common::invoke_reply(call.data.clone())).unwrap();
        raw.send(h.response(Status::Ok), &reply);
        (raw, call, h)
    })
}

/// Registers app id `app_id` on a raw connection.
fn raw_callee(d: &Daemon, app_id: &str) -> Raw {
    let (mut raw, _) = Raw::hello(&d.socket);
    let body = mecha_abi::encode(&RegisterRequest {
        app_id: app_id.into(),
        methods: vec![],
    })
    .unwrap();
    raw.send(Header::request(Opcode::INVOKE_REGISTER, 7), &body);
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
async fn a_routed_call_skips_the_module_and_its_route_ends_with_the_callee() {
    let d = Daemon::start_with(Some(&config()));
    let raw = raw_callee(&d, "echo");
    let caller = connect(&d).await;
    let options = InvokeOptions {
        content_type: "text/plain".into(),
        metadata: vec![("k".into(), "v".into())],
        caller_app_id: "web".into(),
        trace_parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    };
    // The first call takes the module's path, which grants the route.
    let server = serve_one(raw);
    let r = caller
        .invoke("echo", "say", b"1".to_vec(), options.clone())
        .await;
    assert_eq!(r.expect("the first call").data, b"1");
    let (raw, by_module, _) = server.await.unwrap();
    // With the module stopped, only the daemon can deliver the next call.
    let module = invoke_pid(&caller).await;
    common::signal(module, libc::SIGSTOP);
    let server = serve_one(raw);
    let r = caller
        .invoke("echo", "say", b"2".to_vec(), options.clone())
        .await;
    assert_eq!(r.expect("the routed call").data, b"2");
    let (mut raw, by_daemon, header) = server.await.unwrap();
    // It arrives exactly as the module delivers it.
    assert_eq!(
        by_daemon,
        InvokeCall {
            data: b"2".to_vec(),
            ..by_module
        }
    );
    assert!(
        header.deadline_ms > 0 && header.deadline_ms <= 2000,
        "{header:?}"
    );
    // A call the module has not decided (another method) is not routed.
    let short = caller.with_timeout(Duration::from_millis(300));
    let r = short.invoke("echo", "other", vec![], options.clone()).await;
    assert_eq!(status_of(r), Status::DeadlineExceeded);
    // A routed call the callee does not answer ends at its deadline.
    let unanswered = tokio::task::spawn_blocking(move || {
        let frame = raw.recv().expect("the call is delivered");
        (raw, frame)
    });
    let r = short.invoke("echo", "say", vec![], options.clone()).await;
    assert_eq!(status_of(r), Status::DeadlineExceeded);
    let (mut raw, _) = unanswered.await.unwrap();
    // One whose callee's connection closes mid-call is UNAVAILABLE.
    let call = {
        let (caller, options) = (caller.clone(), options.clone());
        tokio::spawn(async move { caller.invoke("echo", "say", vec![], options).await })
    };
    tokio::task::spawn_blocking(move || {
        raw.recv().expect("the call is delivered");
        drop(raw);
    })
    .await
    .unwrap();
    assert_eq!(status_of(call.await.unwrap()), Status::Unavailable);
    // The route went with the callee's connection, at once.
    let r = short.invoke("echo", "say", vec![], options.clone()).await;
    assert_eq!(
        status_of(r),
        Status::DeadlineExceeded,
        "not routed any more"
    );
    common::signal(module, libc::SIGCONT);
    let r = caller.invoke("echo", "say", vec![], options).await;
    assert_eq!(status_of(r), Status::NotFound);
    assert_eq!(
        invoke_pid(&caller).await,
        module,
        "the module was not restarted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_access_control_ends_the_routes_it_allowed() {
    let d = Daemon::start_with(Some(&config()));
    let callee = connect(&d).await;
    // `serve` registers again after the reload restarts the module.
    let serving = tokio::spawn(async move {
        callee
            .serve(
                "billing",
                vec![],
                handler(|_| async { ok(b"paid".to_vec()) }),
            )
            .await
    });
    let caller = connect(&d).await;
    let as_web = InvokeOptions {
        caller_app_id: "web".into(),
        ..Default::default()
    };
    let charge = || caller.invoke("billing", "charge", vec![], as_web.clone());
    let listed = || String::from_utf8_lossy(&d.mechactl(&["apps"]).stdout).contains("billing");
    wait_until(Duration::from_secs(10), "billing to register", listed);
    assert_eq!(charge().await.expect("allowed").data, b"paid");
    let module = invoke_pid(&caller).await;
    common::signal(module, libc::SIGSTOP);
    assert_eq!(charge().await.expect("routed").data, b"paid");
    common::signal(module, libc::SIGCONT);
    // Access control now refuses web; the reload restarts the module.
    let shop_only = "        - appId: shop\n          action: allow\n";
    std::fs::write(d.dir.path().join("config.yaml"), config_with(shop_only)).unwrap();
    let out = d.mechactl(&["reload"]);
    assert!(out.status.success(), "{out:?}");
    assert_ne!(invoke_pid(&caller).await, module);
    wait_until(Duration::from_secs(10), "billing to register again", listed);
    assert_eq!(status_of(charge().await), Status::PermissionDenied);
    serving.abort();
}
