//! Fault isolation and hot restart through the real daemon: crashes under
//! load, restart intensity, hung modules, memory limits, zero-error restarts
//! and upgrades, bad upgrades, and configuration reload.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use common::{bin_dir, signal, wait_until, Daemon};
use mecha_client::{SetOptions, Status};

/// What a load thread saw.
#[derive(Debug, Default)]
struct LoadReport {
    ok: u64,
    errors: Vec<String>,
    unavailable: u64,
    /// Keys whose write was acknowledged, with the value written.
    acked: Vec<(String, String)>,
}

/// A client hammering the state module with writes and reads until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<LoadReport>>,
}

impl Load {
    fn start(d: &Daemon, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|t| {
                let socket = d.socket.clone();
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let client = mecha_client::blocking::Client::connect(&socket).unwrap();
                    let mut report = LoadReport::default();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        i += 1;
                        let key = format!("load-{t}-{i}");
                        let value = format!("value-{i}");
                        match client.set(
                            "",
                            &key,
                            value.clone().into_bytes(),
                            SetOptions::default(),
                        ) {
                            Ok(_) => {
                                report.ok += 1;
                                report.acked.push((key.clone(), value.clone()));
                            }
                            Err(e) if e.status() == Some(Status::Unavailable) => {
                                report.unavailable += 1
                            }
                            Err(e) => report.errors.push(format!("set {key}: {e}")),
                        }
                        match client.get("", &key) {
                            Ok(_) => report.ok += 1,
                            Err(e) if e.status() == Some(Status::Unavailable) => {
                                report.unavailable += 1
                            }
                            Err(e) => report.errors.push(format!("get {key}: {e}")),
                        }
                    }
                    report
                })
            })
            .collect();
        Self { stop, threads }
    }

    fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for t in self.threads {
            let r = t.join().expect("load thread");
            total.ok += r.ok;
            total.unavailable += r.unavailable;
            total.errors.extend(r.errors);
            total.acked.extend(r.acked);
        }
        total
    }
}

fn state_module(d: &Daemon) -> mecha_client::ModuleStatus {
    d.client()
        .status()
        .unwrap()
        .modules
        .into_iter()
        .find(|m| m.name == "state")
        .unwrap()
}

fn wait_for_new_state_pid(d: &Daemon, old: u32) -> u32 {
    let mut pid = 0;
    wait_until(
        Duration::from_secs(15),
        "a new state module instance",
        || {
            let m = state_module(d);
            pid = m.pid;
            m.state == "running" && m.pid != old && m.pid != 0
        },
    );
    pid
}

fn wait_for_some_progress(load_ok: impl Fn() -> bool) {
    wait_until(
        Duration::from_secs(10),
        "the load to make progress",
        load_ok,
    );
}

#[test]
fn kill_9_under_load_answers_every_request_and_keeps_acked_writes() {
    let d = Daemon::start();
    let load = Load::start(&d, 3);
    let c = d.client();
    wait_for_some_progress(|| c.get("", "load-0-20").unwrap().is_some());
    let mut pid = d.module_pid("state");
    for _ in 0..3 {
        signal(pid, libc::SIGKILL);
        pid = wait_for_new_state_pid(&d, pid);
    }
    let report = load.finish();
    assert!(
        report.errors.is_empty(),
        "only OK or UNAVAILABLE allowed: {:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert!(report.ok > 0);
    assert_eq!(state_module(&d).restarts, 3);
    // Every acknowledged write on redb survived the crashes.
    let c = d.client();
    for (key, value) in &report.acked {
        let got = c
            .get("", key)
            .unwrap()
            .unwrap_or_else(|| panic!("acked key {key} lost"));
        assert_eq!(got.value, value.as_bytes(), "key {key}");
    }
}

#[test]
fn past_its_restart_intensity_a_module_backs_off_and_a_manual_restart_recovers_at_once() {
    let d = Daemon::start_with(Some(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  maxRestarts: 2\n  restartWindowSecs: 60\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\nspec: {type: state.redb, version: v1, metadata: []}\n",
    ));
    d.client()
        .set("", "kept", b"1".to_vec(), SetOptions::default())
        .unwrap();
    // Crashes 1 and 2 restart quickly; 3 and 4 exceed the intensity and are
    // restarted after about 1 s and 2 s: the module is never given up on.
    let mut pid = d.module_pid("state");
    for _ in 0..4 {
        signal(pid, libc::SIGKILL);
        pid = wait_for_new_state_pid(&d, pid);
    }
    // Crash 5 backs off for about 4 s (3 to 5 s with jitter): long enough to
    // see requests refused at once with the reason, not left waiting.
    signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(10), "the module to back off", || {
        state_module(&d).state == "backoff"
    });
    // Without retries: the client would otherwise retry UNAVAILABLE until the
    // backoff ends, which is what an application wants but not what this
    // test looks at.
    let mut c = d.client();
    c.set_retries(mecha_client::RetryPolicy::disabled());
    let err = c.get("", "kept").unwrap_err();
    assert_eq!(err.status(), Some(Status::Unavailable));
    assert!(
        err.to_string().contains("state") && err.to_string().contains("crash-looping"),
        "{err}"
    );
    let out = d.mechactl(&["module", "restart", "state"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(state_module(&d).state, "running");
    assert_eq!(d.client().get("", "kept").unwrap().unwrap().value, b"1");
}

#[test]
fn a_hung_module_is_detected_and_replaced() {
    let d = Daemon::start_with(Some(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  healthIntervalMs: 100\n  healthTimeoutMs: 600\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\nspec: {type: state.redb, version: v1, metadata: []}\n",
    ));
    d.client()
        .set("", "k", b"v".to_vec(), SetOptions::default())
        .unwrap();
    let old = d.module_pid("state");
    // A stopped process reads nothing and answers no ping: the definition of hung.
    signal(old, libc::SIGSTOP);
    let new = wait_for_new_state_pid(&d, old);
    assert_ne!(new, old);
    assert_eq!(d.client().get("", "k").unwrap().unwrap().value, b"v");
}

#[test]
fn a_module_over_its_memory_limit_dies_and_is_restarted() {
    let d = Daemon::start_with(Some(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  modules:\n    state:\n      memoryLimitMb: 256\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: cache}\nspec: {type: state.memory, version: v1, metadata: []}\n",
    ));
    let old = d.module_pid("state");
    let c = d.client();
    let big = vec![7u8; 3 * 1024 * 1024];
    let mut died = false;
    for i in 0..200 {
        if let Err(e) = c.set("", &format!("big{i}"), big.clone(), SetOptions::default()) {
            assert_eq!(e.status(), Some(Status::Unavailable), "{e}");
            died = true;
            break;
        }
    }
    assert!(died, "600 MiB of values never hit a 256 MiB limit");
    let new = wait_for_new_state_pid(&d, old);
    assert_ne!(new, old);
    c.set("", "after", b"ok".to_vec(), SetOptions::default())
        .unwrap();
}

#[test]
fn module_restart_and_upgrade_under_load_fail_no_request() {
    let d = Daemon::start();
    // The upgrade target: a copy of the module binary at another path.
    let upgraded = d.dir.path().join("mecha-mod-state-v2");
    std::fs::copy(bin_dir().join("mecha-mod-state"), &upgraded).unwrap();
    let load = Load::start(&d, 3);
    let c = d.client();
    wait_for_some_progress(|| c.get("", "load-0-20").unwrap().is_some());
    let mut pid = d.module_pid("state");
    for _ in 0..3 {
        let out = d.mechactl(&["module", "restart", "state"]);
        assert!(out.status.success(), "{out:?}");
        let new = d.module_pid("state");
        assert_ne!(new, pid);
        pid = new;
    }
    let out = d.mechactl(&[
        "module",
        "upgrade",
        "state",
        "--binary",
        upgraded.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{out:?}");
    let exe = std::fs::read_link(format!("/proc/{}/exe", d.module_pid("state"))).unwrap();
    assert_eq!(exe, upgraded, "the upgraded binary serves");
    let report = load.finish();
    assert!(
        report.errors.is_empty(),
        "errors: {:?}",
        &report.errors[..report.errors.len().min(5)]
    );
    assert_eq!(
        report.unavailable, 0,
        "a hot restart must not fail any request"
    );
    assert!(report.ok > 0);
    let c = d.client();
    for (key, value) in &report.acked {
        assert_eq!(
            c.get("", key).unwrap().expect("acked key").value,
            value.as_bytes()
        );
    }
}

#[test]
fn a_bad_upgrade_binary_leaves_the_old_instance_serving() {
    let d = Daemon::start();
    d.client()
        .set("", "k", b"v".to_vec(), SetOptions::default())
        .unwrap();
    let old = d.module_pid("state");
    for bad in ["/bin/false", "/nonexistent/mecha-mod-state"] {
        let out = d.mechactl(&["module", "upgrade", "state", "--binary", bad]);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("UNAVAILABLE") && stderr.contains("state"),
            "{stderr}"
        );
        assert_eq!(d.module_pid("state"), old, "the old instance keeps serving");
        assert_eq!(d.client().get("", "k").unwrap().unwrap().value, b"v");
    }
    let unknown = d.mechactl(&["module", "restart", "nosuch"]);
    assert!(
        String::from_utf8_lossy(&unknown.stderr).contains("NOT_FOUND"),
        "{unknown:?}"
    );
}

#[test]
fn admin_operations_are_denied_to_other_users() {
    common::require_root();
    let d = Daemon::start();
    common::open_to_nobody(&d);
    let out = common::mechactl_as_nobody(&d, &["module", "restart", "state"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("PERMISSION_DENIED"),
        "{stderr}"
    );
}

const MEMORY_ONLY: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: cache}\nspec: {type: state.memory, version: v1, metadata: []}\n";

#[test]
fn reload_adds_changes_and_removes_components() {
    let d = Daemon::start_with(Some(MEMORY_ONLY));
    let config = d.dir.path().join("config.yaml");
    let first = d.module_pid("state");
    // Unchanged configuration: nothing restarts.
    let out = d.mechactl(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("unchanged: state"),
        "{out:?}"
    );
    assert_eq!(d.module_pid("state"), first);
    // A broken configuration is rejected and changes nothing.
    std::fs::write(&config, "kind: Nonsense\n").unwrap();
    let out = d.mechactl(&["reload"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config.yaml"),
        "{out:?}"
    );
    assert_eq!(d.module_pid("state"), first);
    // Adding a component restarts the state module with both stores.
    let both = format!("{MEMORY_ONLY}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: disk}}\nspec: {{type: state.redb, version: v1, metadata: []}}\n");
    std::fs::write(&config, both).unwrap();
    signal(d.pid(), libc::SIGHUP);
    wait_until(Duration::from_secs(15), "SIGHUP to reload", || {
        state_module(&d).components.len() == 2
    });
    assert_ne!(d.module_pid("state"), first);
    let c = d.client();
    c.set("disk", "k", b"on disk".to_vec(), SetOptions::default())
        .unwrap();
    assert_eq!(c.get("disk", "k").unwrap().unwrap().value, b"on disk");
    // Removing every state component stops the module.
    std::fs::write(
        &config,
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec: {}\n",
    )
    .unwrap();
    let out = d.mechactl(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped: state"),
        "{out:?}"
    );
    assert!(d.client().status().unwrap().modules.is_empty());
    let err = c.get("", "k").unwrap_err();
    assert_eq!(err.status(), Some(Status::UnknownOpcode), "{err}");
    // And adding it back starts it again.
    std::fs::write(&config, MEMORY_ONLY).unwrap();
    let out = d.mechactl(&["reload"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("started: state"),
        "{out:?}"
    );
    c.set("", "k", b"back".to_vec(), SetOptions::default())
        .unwrap();
}

#[test]
fn a_request_past_its_deadline_gets_deadline_exceeded() {
    let d = Daemon::start();
    let holder = d.client();
    let token = holder
        .try_lock("", "busy", "holder", Duration::from_secs(30), None)
        .unwrap();
    assert!(token.is_some());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = mecha_client::Client::connect(&d.socket)
            .await
            .unwrap()
            .with_timeout(Duration::from_millis(300));
        // A blocking acquire that would wait 20 s, sent with a 300 ms deadline:
        // the daemon answers for the module when the deadline passes.
        let req = mecha_abi::msg::TryLockRequest {
            store: String::new(),
            resource: "busy".into(),
            owner: "waiter".into(),
            ttl_ms: 1000,
            wait_ms: 20_000,
        };
        let (status, body) = c
            .call_raw(
                mecha_abi::Opcode::LOCK_TRY_LOCK,
                mecha_abi::encode(&req).unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(
            status,
            Status::DeadlineExceeded,
            "{}",
            common::error_message(&body)
        );
        assert!(common::error_message(&body).contains("lock"));
        // The connection is still usable afterwards.
        c.with_timeout(Duration::from_secs(5)).ping().await.unwrap();
    });
}
