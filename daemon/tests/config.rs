//! Configuration through the real daemon: a watched file store and an
//! admin-written memory store, read and watched with the Rust client and
//! `mechactl config`, including stream cancellation, admin-only writes,
//! watches that outlive a `kill -9` or hot restart of the config module, and
//! a watcher that never reads.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{mechactl_as_nobody, open_to_nobody, require_root, signal, wait_until, Daemon, Raw};
use mecha_abi::msg::{ConfigGetReply, ConfigSubscribeRequest, ConfigUpdate, StreamCancel};
use mecha_abi::{Header, Opcode};
use mecha_client::Status;

/// How long a test waits for a push, a reload or a restart before failing.
const PATIENCE: Duration = Duration::from_secs(20);

/// The watched file and the configuration that serves it.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn create(content: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let setup = Self { dir };
        std::fs::write(setup.file(), content).expect("writing the configuration file");
        setup
    }

    fn file(&self) -> PathBuf {
        self.dir.path().join("app.yaml")
    }

    /// The file store `appconfig` first (the default), then the memory store
    /// `dynamic`.
    fn config(&self) -> String {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: appconfig}}\n\
             spec:\n  type: configuration.file\n  version: v1\n  metadata:\n  - name: path\n    value: {:?}\n\
             ---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: dynamic}}\n\
             spec: {{type: configuration.memory, version: v1, metadata: []}}\n",
            self.file().to_str().expect("temporary paths are UTF-8")
        )
    }

    /// Replaces the file atomically, as careful tools do.
    fn replace(&self, content: &str) {
        replace_file(&self.file(), content);
    }
}

fn replace_file(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).expect("writing the new file");
    std::fs::rename(&tmp, path).expect("renaming it over the old one");
}

fn start(content: &str) -> (Setup, Daemon) {
    let setup = Setup::create(content);
    let daemon = Daemon::start_with(Some(&setup.config()));
    (setup, daemon)
}

fn keys(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| (*k).to_owned()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Reads updates from a blocking config watch until the caller knows `key`
/// as `value` (`None`: absent), failing after [`PATIENCE`]; evaluates to the
/// updates read. A macro rather than a function because the client crate
/// does not export a name for its watch type.
macro_rules! wait_for_value {
    ($watch:expr, $key:expr, $value:expr) => {{
        let (key, value): (&str, Option<&str>) = ($key, $value);
        let deadline = Instant::now() + PATIENCE;
        let mut seen: Vec<ConfigUpdate> = Vec::new();
        loop {
            let now = $watch
                .current()
                .find(|item| item.key == key)
                .map(|item| item.value.clone());
            if now.as_deref() == value {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "timed out waiting for {key}={value:?}; saw {seen:?}"
            );
            match $watch.next_timeout(left) {
                Some(Ok(update)) => seen.push(update),
                Some(Err(e)) if e.status() == Some(Status::DeadlineExceeded) => {}
                Some(Err(e)) => panic!("the watch failed: {e}; saw {seen:?}"),
                None => panic!("the watch ended; saw {seen:?}"),
            }
        }
        seen
    }};
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

/// The pid of the config module once it differs from `old` (a restart).
fn wait_for_new_pid(d: &Daemon, old: u32) -> u32 {
    let mut pid = 0;
    wait_until(PATIENCE, "the config module to come back", || {
        pid = d.module_pid("config");
        pid != 0 && pid != old
    });
    pid
}

#[test]
fn get_reads_the_file_and_memory_stores() {
    let (_setup, d) = start("region: eu\nfeature:\n  value: \"on\"\n  metadata: {owner: ops}\n");
    let c = d.client();
    let items = c
        .get_config("", Vec::new())
        .expect("get from the default store");
    let pairs: Vec<(&str, &str)> = items
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(pairs, vec![("feature", "on"), ("region", "eu")]);
    assert_eq!(
        items[0].metadata,
        vec![("owner".to_owned(), "ops".to_owned())]
    );
    assert_eq!(
        c.get_config("appconfig", keys(&["missing", "region"]))
            .expect("get")
            .len(),
        1,
        "missing keys are simply absent"
    );

    let version = c
        .set_config_value("dynamic", "k", "v1")
        .expect("an admin may set");
    let items = c.get_config("dynamic", keys(&["k"])).expect("get");
    assert_eq!(
        (items[0].value.as_str(), items[0].version.as_str()),
        ("v1", version.as_str())
    );

    let err = c
        .set_config_value("", "region", "us")
        .expect_err("the file store is read-only");
    assert_eq!(err.status(), Some(Status::InvalidArgument), "{err}");
    assert!(err.to_string().contains("read-only"), "{err}");
    let err = c.get_config("nope", Vec::new()).expect_err("unknown store");
    assert_eq!(err.status(), Some(Status::InvalidArgument), "{err}");

    // mechactl prints key=value lines, JSON on request, and exits 3 for a
    // missing key.
    let out = d.mechactl(&["config", "get", "region", "feature"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "region=eu\nfeature=on\n");
    let out = d.mechactl(&["config", "get", "--store", "dynamic", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(doc[0]["key"], "k");
    assert_eq!(doc[0]["value"], "v1");
    assert_eq!(doc[0]["version"], version.as_str());
    let out = d.mechactl(&["config", "get", "region", "missing"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "region=eu\n");
}

#[test]
fn watch_sees_a_file_edit() {
    let (setup, d) = start("region: eu\nlimit: \"10\"\n");
    let c = d.client();
    let mut watch = c.watch_config("", keys(&["limit"])).expect("watch");
    let snapshot: Vec<(&str, &str)> = watch
        .snapshot()
        .iter()
        .map(|i| (i.key.as_str(), i.value.as_str()))
        .collect();
    assert_eq!(snapshot, vec![("limit", "10")]);
    setup.replace("region: us\nlimit: \"20\"\n");
    let seen = wait_for_value!(watch, "limit", Some("20"));
    assert!(
        seen.iter()
            .all(|u| u.items.iter().all(|i| i.key == "limit")),
        "only the watched key is pushed: {seen:?}"
    );
    // An in-place edit is seen too, and a deleted key is reported.
    std::fs::write(setup.file(), "region: us\n").expect("edit in place");
    wait_for_value!(watch, "limit", None);
}

#[test]
fn watch_sees_mechactl_config_set_on_the_memory_store() {
    let (_setup, d) = start("");
    let c = d.client();
    let mut watch = c.watch_config("dynamic", Vec::new()).expect("watch");
    assert!(watch.snapshot().is_empty());
    let out = d.mechactl(&["config", "set", "greeting", "hello", "--store", "dynamic"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let version = text(&out.stdout).trim().to_owned();
    let seen = wait_for_value!(watch, "greeting", Some("hello"));
    assert_eq!(
        seen.last().map(|u| u.items[0].version.clone()),
        Some(version)
    );
    let out = d.mechactl(&["config", "delete", "greeting", "--store", "dynamic"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen = wait_for_value!(watch, "greeting", None);
    assert_eq!(
        seen.last().map(|u| u.deleted.clone()),
        Some(keys(&["greeting"]))
    );
}

/// Lines a child writes to its stdout, read by a thread so the test can wait
/// for them with a deadline.
fn stdout_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn mechactl_config_watch_prints_the_snapshot_then_each_change() {
    let (_setup, d) = start("");
    let c = d.client();
    c.set_config_value("dynamic", "mode", "a").expect("set");
    let mut child = d
        .mechactl_cmd(&["config", "watch", "mode", "--store", "dynamic"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting mechactl config watch");
    let lines = stdout_lines(&mut child);
    let next = || {
        lines
            .recv_timeout(PATIENCE)
            .expect("a line from mechactl config watch")
    };
    assert_eq!(next(), "mode=a");
    c.set_config_value("dynamic", "mode", "b").expect("set");
    assert_eq!(next(), "mode=b");
    c.delete_config("dynamic", keys(&["mode"])).expect("delete");
    assert_eq!(next(), "mode deleted");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn cancel_ends_the_stream() {
    let (_setup, d) = start("a: \"1\"\n");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = mecha_client::Client::connect(&d.socket)
            .await
            .expect("connect");
        // The raw stream: cancel, and the daemon's END finishes it.
        let req = mecha_abi::encode(&ConfigSubscribeRequest {
            store: String::new(),
            keys: Vec::new(),
        })
        .expect("encode");
        let (body, mut sub) = client
            .open_stream(Opcode::CONFIG_SUBSCRIBE, req)
            .await
            .expect("subscribe");
        let snapshot: ConfigGetReply = mecha_abi::decode(&body).expect("the snapshot");
        assert_eq!(snapshot.items.len(), 1);
        sub.cancel().await.expect("cancel");
        let end = tokio::time::timeout(PATIENCE, sub.next())
            .await
            .expect("the stream ends in time");
        assert!(
            end.is_none(),
            "a cancelled stream finishes cleanly: {end:?}"
        );
        // Cancelling again finds nothing to cancel, and says so politely.
        sub.cancel().await.expect("a second cancel is harmless");

        // The watch: the same through its own cancel.
        let mut watch = client
            .watch_config("dynamic", Vec::new())
            .await
            .expect("watch");
        watch.cancel().await.expect("cancel");
        let end = tokio::time::timeout(PATIENCE, watch.next())
            .await
            .expect("the watch ends in time");
        assert!(end.is_none(), "{end:?}");
    });
}

#[test]
fn only_admins_may_set_and_every_tenant_reads_the_file_store() {
    require_root();
    let (_setup, d) = start("region: eu\n");
    open_to_nobody(&d);
    let out = mechactl_as_nobody(&d, &["config", "set", "k", "v", "--store", "dynamic"]);
    assert!(!out.status.success(), "nobody must not set configuration");
    assert!(
        text(&out.stderr).contains("PERMISSION_DENIED"),
        "{}",
        text(&out.stderr)
    );
    // The file store is node-wide configuration: every tenant reads it.
    let out = mechactl_as_nobody(&d, &["config", "get", "region"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "region=eu\n");
}

#[test]
fn a_watch_outlives_kill_9_of_the_config_module() {
    let (setup, d) = start("limit: \"10\"\n");
    let c = d.client();
    c.set_config_value("dynamic", "k", "before").expect("set");
    let mut file_watch = c
        .watch_config("appconfig", Vec::new())
        .expect("watch the file");
    let writer = d.client();
    let watcher = d.client();
    let mut memory_watch = watcher
        .watch_config("dynamic", keys(&["k"]))
        .expect("watch memory");
    assert_eq!(memory_watch.snapshot()[0].value, "before");

    let old = d.module_pid("config");
    signal(old, libc::SIGKILL);
    wait_for_new_pid(&d, old);

    // A change after the restart arrives on the same watch: it subscribed
    // again by itself when its stream was reset.
    setup.replace("limit: \"30\"\n");
    wait_for_value!(file_watch, "limit", Some("30"));
    // The memory store lost its items with the process; the watch says so
    // (a delete), then sees a write made after the restart.
    wait_for_value!(memory_watch, "k", None);
    writer
        .set_config_value("dynamic", "k", "after")
        .expect("set after the restart");
    wait_for_value!(memory_watch, "k", Some("after"));
}

#[test]
fn a_watch_outlives_a_hot_restart_of_the_config_module() {
    let (setup, d) = start("limit: \"10\"\n");
    let c = d.client();
    let mut watch = c.watch_config("", Vec::new()).expect("watch");
    let old = d.module_pid("config");
    let out = d.mechactl(&["module", "restart", "config"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_for_new_pid(&d, old);
    setup.replace("limit: \"11\"\n");
    let seen = wait_for_value!(watch, "limit", Some("11"));
    assert_eq!(
        seen.len(),
        1,
        "one update, no spurious ones from the restart: {seen:?}"
    );
}

#[test]
fn a_watcher_that_never_reads_does_not_grow_memory() {
    let (_setup, d) = start("");
    let writer = d.client();
    writer
        .set_config_value("dynamic", "hot", "start")
        .expect("set");
    let watcher = d.client();
    let mut watch = watcher.watch_config("dynamic", Vec::new()).expect("watch");
    let module = d.module_pid("config");
    let (module_before, daemon_before) = (rss_kib(module), rss_kib(d.pid()));

    // The blocking watcher reads nothing while it is not in a call, so every
    // push piles up in front of it: in the socket, in the daemon's queue for
    // its connection (until the push budget is spent and the stream is
    // ended), and in the module.
    let rounds = 5_000;
    for i in 0..rounds {
        writer
            .set_config_value("dynamic", "hot", &i.to_string())
            .expect("set");
    }
    let (module_after, daemon_after) = (rss_kib(module), rss_kib(d.pid()));
    let bound_kib = 50 * 1024;
    assert!(
        module_after < module_before + bound_kib,
        "the module grew from {module_before} KiB to {module_after} KiB"
    );
    assert!(
        daemon_after < daemon_before + bound_kib,
        "the daemon grew from {daemon_before} KiB to {daemon_after} KiB"
    );

    // When the watcher reads again, it catches up to the latest value (by
    // resubscribing where pushes were dropped).
    let last = (rounds - 1).to_string();
    // (In practice the watcher replays the 256 pushes its client buffered,
    // then finds its stream ended for falling behind, subscribes again and
    // gets the rest as one update from the new snapshot.)
    wait_for_value!(watch, "hot", Some(last.as_str()));
    writer
        .set_config_value("dynamic", "hot", "after")
        .expect("set");
    wait_for_value!(watch, "hot", Some("after"));
}

#[test]
fn a_stream_whose_client_does_not_read_ends_with_resource_exhausted() {
    let (_setup, d) = start("");
    let (mut raw, _) = Raw::hello(&d.socket);
    let subscribe = mecha_abi::encode(&ConfigSubscribeRequest {
        store: "dynamic".to_owned(),
        keys: Vec::new(),
    })
    .expect("encode");
    let (status, body) = raw.call(Header::request(Opcode::CONFIG_SUBSCRIBE, 7), &subscribe);
    assert_eq!(status, Status::Ok);
    let snapshot: ConfigGetReply = mecha_abi::decode(&body).expect("the snapshot");
    assert!(snapshot.items.is_empty());

    // Large values fill the socket after a few dozen pushes, so the daemon's
    // push budget (1024 queued frames) runs out long before the last write,
    // whatever the kernel's socket buffer sizes.
    let writer = d.client();
    let pad = "x".repeat(4096);
    let rounds = 2_000u64;
    for i in 0..rounds {
        writer
            .set_config_value("dynamic", "big", &format!("{i}:{pad}"))
            .expect("set");
    }

    // What the client finally reads: pushes in order, then the END telling
    // it that it fell behind.
    let mut pushes = 0u64;
    let end = loop {
        let (h, p) = raw.recv().expect("a stream frame");
        assert_eq!(h.request_id, 7, "every frame belongs to the stream");
        assert_eq!(h.opcode, Opcode::CONFIG_SUBSCRIBE);
        if h.flags.is_end() {
            break (h, p);
        }
        assert!(h.flags.is_push(), "flags {:?}", h.flags);
        let update: ConfigUpdate = mecha_abi::decode(&p).expect("a ConfigUpdate");
        pushes += 1;
        assert_eq!(
            update.seq, pushes,
            "pushes arrive in order, none missing before the end"
        );
    };
    let (h, p) = end;
    assert_eq!(Status::from_code(h.status), Status::ResourceExhausted);
    assert!(
        common::error_message(&p).contains("resubscribe"),
        "{}",
        common::error_message(&p)
    );
    assert!(pushes < rounds, "pushes were dropped: {pushes}");

    // The stream is gone in the daemon: cancelling it finds nothing, and a
    // new subscription sees the latest value at once.
    let cancel = mecha_abi::encode(&StreamCancel { stream_id: 7 }).expect("encode");
    let (status, _) = raw.call(Header::request(Opcode::STREAM_CANCEL, 8), &cancel);
    assert_eq!(status, Status::NotFound);
    let (status, body) = raw.call(Header::request(Opcode::CONFIG_SUBSCRIBE, 9), &subscribe);
    assert_eq!(status, Status::Ok);
    let snapshot: ConfigGetReply = mecha_abi::decode(&body).expect("the snapshot");
    assert!(snapshot.items[0]
        .value
        .starts_with(&format!("{}:", rounds - 1)));
}
