//! mechactl against the real daemon: state commands, exit codes, status.

mod common;

use common::{parent_pid, Daemon};

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn state_set_get_delete_through_mechactl() {
    let d = Daemon::start();
    let set = d.mechactl(&["state", "set", "greeting", "hello"]);
    assert!(set.status.success(), "{set:?}");
    let get = d.mechactl(&["state", "get", "greeting"]);
    assert!(get.status.success());
    assert_eq!(stdout(&get), "hello\n");
    let etag = stdout(&set).trim().to_string();
    let stale = d.mechactl(&["state", "set", "greeting", "hi", "--etag", "0"]);
    assert_eq!(stale.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&stale.stderr).contains("ETAG_MISMATCH"),
        "{stale:?}"
    );
    let ok = d.mechactl(&["state", "set", "greeting", "hi", "--etag", &etag]);
    assert!(ok.status.success(), "{ok:?}");
    let del = d.mechactl(&["state", "delete", "greeting"]);
    assert!(del.status.success());
    let missing = d.mechactl(&["state", "get", "greeting"]);
    assert_eq!(missing.status.code(), Some(3), "a missing key exits 3");
    assert!(stdout(&missing).is_empty());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));
}

#[test]
fn status_json_lists_the_state_module_as_a_child_process() {
    let d = Daemon::start();
    let out = d.mechactl(&["status", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["pid"].as_u64(), Some(u64::from(d.pid())));
    let state = doc["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "state")
        .expect("the state module is listed");
    assert_eq!(state["state"], "running");
    let pid = state["pid"].as_u64().unwrap() as u32;
    assert_ne!(pid, d.pid(), "the module is its own process");
    assert_eq!(parent_pid(pid), d.pid(), "the module's parent is mechad");
    let human = d.mechactl(&["status"]);
    assert!(stdout(&human).contains("state") && stdout(&human).contains("running"));
}

#[test]
fn unreachable_daemon_is_a_clear_error() {
    let d = Daemon::start();
    let out = d
        .mechactl_cmd(&["state", "get", "k"])
        .args(["--socket", "/nonexistent/mecha.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/mecha.sock"));
}
