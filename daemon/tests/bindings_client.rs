//! The Rust client's and mechactl's bindings calls through the real daemon:
//! a `bindings.localstorage` output binding (create, get, list, delete) and
//! a `bindings.cron` input binding (events with a `time` entry, acked,
//! nacked and delivered again, and a subscription that subscribes again by
//! itself across a hot restart of the bindings module).

mod common;

use std::time::{Duration, Instant};

use common::{component, Daemon};
use mecha_client::{BindingEvent, Status};

/// How long a test waits for something that should happen promptly (a tick
/// comes every second); it only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(20);

/// A daemon serving output binding `files` (over an empty directory of its
/// temporary directory) and input binding `ticks` (every second).
fn start() -> Daemon {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("files");
    std::fs::create_dir(&root).expect("creating rootPath");
    let root = root.to_str().expect("temporary paths are UTF-8").to_owned();
    let config = [
        component(
            "files",
            "bindings.localstorage",
            &[("rootPath", root), ("allowedTenants", "*".into())],
        ),
        component(
            "ticks",
            "bindings.cron",
            &[("schedule", "@every 1s".into())],
        ),
    ]
    .join("---\n");
    Daemon::start_in(dir, Some(&config), Vec::new())
}

fn file(name: &str) -> Vec<(String, String)> {
    vec![("fileName".to_owned(), name.to_owned())]
}

fn meta<'a>(metadata: &'a [(String, String)], name: &str) -> Option<&'a str> {
    metadata
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_localstorage_file_round_trips_through_the_client() {
    let d = start();
    let c = d.client();
    let created = c
        .invoke_binding("files", "create", b"hello, files".to_vec(), file("a.txt"))
        .expect("create");
    assert!(created.data.is_empty());
    assert_eq!(meta(&created.metadata, "fileName"), Some("a.txt"));

    let got = c
        .invoke_binding("files", "get", Vec::new(), file("a.txt"))
        .expect("get");
    assert_eq!(got.data, b"hello, files");

    let listed = c
        .invoke_binding("files", "list", Vec::new(), Vec::new())
        .expect("list");
    assert_eq!(String::from_utf8_lossy(&listed.data), r#"["a.txt"]"#);

    c.invoke_binding("files", "delete", Vec::new(), file("a.txt"))
        .expect("delete");
    let gone = c
        .invoke_binding("files", "get", Vec::new(), file("a.txt"))
        .expect_err("a deleted file is gone");
    assert_eq!(gone.status(), Some(Status::NotFound), "{gone}");

    // An input binding cannot be invoked, and an unknown one is not found.
    let wrong = c
        .invoke_binding("ticks", "get", Vec::new(), Vec::new())
        .expect_err("an input binding");
    assert_eq!(wrong.status(), Some(Status::InvalidArgument), "{wrong}");
    let unknown = c
        .invoke_binding("nope", "get", Vec::new(), Vec::new())
        .expect_err("an unknown binding");
    assert_eq!(unknown.status(), Some(Status::NotFound), "{unknown}");
}

/// Waits for the next event of `sub` whose offset `wanted` accepts.
fn next_matching(
    sub: &mut mecha_client::BlockingBindingSubscription<'_>,
    wanted: impl Fn(&BindingEvent) -> bool,
) -> BindingEvent {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = sub
            .next_timeout(left)
            .expect("an event within the deadline")
            .expect("the subscription delivers");
        if wanted(&event) {
            return event;
        }
        // Other ticks are acknowledged so they do not come back.
        sub.ack(&event).expect("ack");
    }
}

#[test]
fn cron_ticks_are_delivered_acked_nacked_and_survive_a_module_restart() {
    let d = start();
    let c = d.client();
    let mut sub = c
        .subscribe_binding(
            "ticks",
            mecha_client::Client::binding_subscribe_options().max_in_flight(8),
        )
        .expect("subscribe");
    assert_eq!(sub.name(), "ticks");

    let tick = next_matching(&mut sub, |_| true);
    assert_eq!(tick.name, "ticks");
    assert_eq!(tick.attempt, 1);
    assert!(tick.data.is_empty());
    let time = meta(&tick.metadata, "time").expect("a time entry");
    assert!(time.len() >= 20 && time.ends_with('Z'), "{time}");
    assert!(sub.ack(&tick).expect("ack"), "the ack took effect");
    assert!(!sub.ack(&tick).expect("ack"), "a second ack does not");

    // A nacked event comes again, one attempt later.
    let nacked = next_matching(&mut sub, |_| true);
    assert!(sub.nack(&nacked).expect("nack"));
    let again = next_matching(&mut sub, |e| e.offset == nacked.offset);
    assert_eq!(again.attempt, nacked.attempt + 1);
    assert!(sub.ack(&again).expect("ack"));

    // An event left unacknowledged across a hot restart is delivered again
    // on the stream the subscription opened by itself.
    let held = next_matching(&mut sub, |_| true);
    d.restart_module("bindings");
    let redelivered = next_matching(&mut sub, |e| e.offset == held.offset);
    // A module restart is not the subscriber's failure, so (as for pub/sub,
    // SPEC §7.3.4) it need not raise the attempt; the delivery must not go
    // backwards.
    assert!(
        redelivered.attempt >= held.attempt,
        "held {held:?}, redelivered {redelivered:?}"
    );
    assert!(sub.resubscribes() >= 1, "the subscription subscribed again");
    assert!(sub.ack(&redelivered).expect("ack"));
    sub.cancel().expect("cancel");
    assert!(sub.next_timeout(Duration::from_secs(5)).is_none());
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn mechactl_invokes_and_subscribes() {
    let d = start();
    let out = d.mechactl(&[
        "binding",
        "invoke",
        "files",
        "create",
        "from the CLI",
        "--metadata",
        "fileName=cli.txt",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    // No data, then the metadata as NAME=VALUE lines.
    assert_eq!(stdout(&out), "fileName=cli.txt\n");

    let out = d.mechactl(&[
        "binding",
        "invoke",
        "files",
        "get",
        "--metadata",
        "fileName=cli.txt",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out), "from the CLI\n");

    let out = d.mechactl(&["binding", "invoke", "files", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let doc: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(doc["data"], r#"["cli.txt"]"#);
    assert_eq!(doc["metadata"], serde_json::json!({}));

    let out = d.mechactl(&[
        "binding",
        "invoke",
        "files",
        "get",
        "--metadata",
        "fileName=missing.txt",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    let out = d.mechactl(&["binding", "subscribe", "ticks", "--count", "1"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let first = lines.next().unwrap_or_default();
    assert!(
        first.starts_with("event ") && first.contains(" of ticks (attempt "),
        "{text}"
    );
    assert!(
        lines.any(|l| l.starts_with("time=")),
        "a time= line: {text}"
    );

    let out = d.mechactl(&["binding", "subscribe", "ticks", "--count", "1", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let event: serde_json::Value = serde_json::from_str(stdout(&out).trim()).expect("JSON");
    assert_eq!(event["name"], "ticks");
    assert!(event["metadata"]["time"].is_string(), "{event}");
}
