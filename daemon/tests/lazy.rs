//! Lazy modules (`start: lazy`, `moduleStart: lazy`): checked at boot, then
//! no process until the first request, which starts one and is answered; the
//! daemon is ready meanwhile, a configuration error still stops its start,
//! and a networked invoke module is never lazy.

mod common;

use std::time::Duration;

use common::{wait_until, Daemon, CONFIGURATION};
use mecha_client::SetOptions;

/// A redb state store and an in-memory lock store, both lazy.
fn config(extra: &str) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\n\
         spec: {{type: state.redb, version: v1, metadata: []}}\n---\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: lockstore}}\n\
         spec: {{type: lock.memory, version: v1, metadata: []}}\n---\n\
         {CONFIGURATION}  moduleStart: lazy\n{extra}"
    )
}

fn state_of(d: &Daemon, module: &str) -> (String, u32) {
    let status = d.client().status().expect("status");
    let m = status
        .modules
        .iter()
        .find(|m| m.name == module)
        .unwrap_or_else(|| panic!("no module {module}"));
    (m.state.clone(), m.pid)
}

#[test]
fn a_lazy_module_starts_at_its_first_request() {
    let d = Daemon::start_with(Some(&config("")));
    assert_eq!(state_of(&d, "state"), ("idle".to_string(), 0));
    assert_eq!(state_of(&d, "lock"), ("idle".to_string(), 0));
    // No module process runs: the boot check's instances have exited.
    wait_until(
        Duration::from_secs(10),
        "the checked instances to exit",
        || common::child_pids(d.pid()).is_empty(),
    );
    // Ready: an idle module is started by its first request.
    let out = d.mechactl(&["wait", "--ready", "--timeout", "5s"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let client = d.client();
    let etag = client
        .set("", "k", b"v".to_vec(), SetOptions::default())
        .expect("the first request starts the module and is answered");
    let got = client.get("", "k").expect("get").expect("found");
    assert_eq!((got.value, got.etag), (b"v".to_vec(), etag));
    let (state, pid) = state_of(&d, "state");
    assert_eq!(state, "running");
    assert_ne!(pid, 0);
    // The other lazy module is still idle.
    assert_eq!(state_of(&d, "lock"), ("idle".to_string(), 0));

    // A lazy module, once started, is supervised like any other.
    common::signal(pid, libc::SIGKILL);
    wait_until(Duration::from_secs(10), "a restart", || {
        let (state, now) = state_of(&d, "state");
        state == "running" && now != pid && now != 0
    });
    assert_eq!(
        client.get("", "k").expect("get").map(|e| e.value),
        Some(b"v".to_vec())
    );

    // An admin restart of an idle module starts it.
    d.restart_module("lock");
    assert_eq!(state_of(&d, "lock").0, "running");
}

#[test]
fn a_lazy_module_with_a_bad_component_stops_the_start() {
    let bad = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\n\
         spec: {{type: state.redb, version: v1, metadata: [{{name: nonsense, value: x}}]}}\n---\n\
         {CONFIGURATION}  moduleStart: lazy\n"
    );
    let err = common::start_fails(&bad);
    assert!(err.contains("nonsense"), "{err}");
}

#[test]
fn a_networked_invoke_module_is_never_lazy() {
    let invoke = common::invoke_component(
        "node-a",
        "  - name: listenAddress\n    value: \"127.0.0.1:0\"\n",
    );
    let text = format!("{invoke}\n---\n{}", config(""));
    let d = Daemon::start_with(Some(&text));
    assert_eq!(state_of(&d, "invoke").0, "running");
    assert_eq!(state_of(&d, "state").0, "idle");

    let forced = format!("{text}  modules:\n    invoke:\n      start: lazy\n");
    let err = common::start_fails(&forced);
    assert!(err.contains("called by other nodes"), "{err}");
}
