//! Live hand-over of mechad under load (issue #18): four clients keep working
//! while `mechactl daemon upgrade` (and SIGUSR2) replaces the daemon, and none
//! of them sees a failed request or a new connection; a broken new binary
//! changes nothing; and a daemon hands over to a build with a bumped hand-over
//! version.
//!
//! The load is four clients at once, each on one connection for the whole
//! test: a Rust client writing and reading state, the Python client doing the
//! same (a python3 script using `clients/python`), a pub/sub subscriber that
//! acknowledges numbered messages a publisher sends throughout, and a
//! registered invoke callee answering a caller that calls it in a loop.
//!
//! The version-bump test runs a mechad built with the `handover-next`
//! feature, which bumps the hand-over version: the one `MECHA_NEXT_MECHAD`
//! names (CI builds it), or else one the test builds, once, in
//! `target/handover-next` (a few minutes the first time).

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{alive, bin_dir, invoke_component, signal, wait_until, Daemon};
use mecha_client::{Client, InvokeOptions, InvokeReply, RetryPolicy, SetOptions};

/// How long the test waits for something that should happen promptly; it
/// only bounds a failure, it is never a measured time.
const PATIENCE: Duration = Duration::from_secs(60);

/// How many more successful requests every client must make before the test
/// counts the load as running (at the start, and after each hand-over).
const PROGRESS: u64 = 5;

/// The app id the callee serves.
const APP: &str = "handover-echo";

/// The pub/sub topic the publisher numbers its messages on.
const TOPIC: &str = "handover";

/// A durable state store, a durable pub/sub store and local service
/// invocation: the capabilities the four clients use. No personality, so
/// tests running side by side do not compete for loopback ports.
fn config() -> String {
    let invoke = invoke_component("node-a", "");
    format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\n\
         spec: {{type: state.redb, version: v1, metadata: []}}\n---\n\
         apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: pubsub}}\n\
         spec: {{type: pubsub.redb, version: v1, metadata: []}}\n---\n{invoke}"
    )
}

/// What one client of the load did: its successful requests and a line for
/// every failed one.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Tally {
    fn ok(&self) {
        self.ok.fetch_add(1, Ordering::Relaxed);
    }

    fn fail(&self, what: String) {
        self.failures.lock().expect("tally lock").push(what);
    }

    fn count(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }
}

/// The Python client's report, printed by its script when it stops.
#[derive(Default, Debug)]
struct PythonReport {
    /// How many times the script's client opened a connection (HELLO
    /// included); 1 means it never reconnected.
    connects: u64,
    /// Answers with a non-OK status, retried by the client or not.
    refusals: Vec<String>,
}

/// The script the Python client runs: state set and get on one
/// `mecha.Client` until the stop file appears. It counts the connections
/// the client opens (an override of `_ensure`, which connects when there is
/// no socket) and every non-OK answer (an override of `_exchange`), so that
/// neither a reconnect nor a retried UNAVAILABLE can hide behind the
/// client's own recovery.
const PYTHON: &str = r#"
import json, os, sys
import mecha

class Counting(mecha.Client):
    connects = 0
    refusals = []

    def _ensure(self, remaining):
        if self._sock is None:
            Counting.connects += 1
        return super()._ensure(remaining)

    def _exchange(self, op, remaining, sock=None):
        h, payload = super()._exchange(op, remaining, sock)
        if h.status != 0:
            Counting.refusals.append(f"opcode {h.opcode:#x} answered status {h.status}")
        return h, payload

socket_path, stop = sys.argv[1], sys.argv[2]
client = Counting(socket_path)
ok, i = 0, 0
while not os.path.exists(stop):
    key, value = f"py-{i % 64}", f"value-{i}".encode()
    try:
        client.set(key, value, retry=False)
        entry = client.get(key)
        if entry is None or entry.value != value:
            print(f"failed get {key}: {entry!r}, wanted {value!r}", flush=True)
        else:
            ok += 1
            print(f"ok {ok}", flush=True)
    except Exception as e:
        print(f"failed {type(e).__name__}: {e}", flush=True)
    i += 1
print("report " + json.dumps({"connects": Counting.connects, "refusals": Counting.refusals}),
      flush=True)
"#;

/// The four clients, running until [`Load::stop`].
struct Load {
    stop: Arc<AtomicBool>,
    /// Every client's tally, by name.
    tallies: Vec<(&'static str, Arc<Tally>)>,
    threads: Vec<JoinHandle<()>>,
    /// The numbers the publisher published successfully.
    published: Arc<Mutex<BTreeSet<u64>>>,
    /// The numbers the subscriber received (each acknowledged).
    received: Arc<Mutex<BTreeSet<u64>>>,
    /// Deliveries the subscriber received a second time.
    redeliveries: Arc<AtomicU64>,
    /// Why the callee's registration ended, if it did.
    registration_ended: Arc<Mutex<Option<String>>>,
    /// How many times the subscription subscribed again after a reset.
    resubscribes: Arc<AtomicU64>,
    python: Child,
    python_stop: PathBuf,
    python_reader: Option<JoinHandle<Option<PythonReport>>>,
    /// The Rust state client, kept by the test: STATUS on this very
    /// connection names the daemon serving it.
    rust_state: Arc<mecha_client::blocking::Client>,
}

/// A blocking client that makes exactly one attempt per call, so a
/// retryable failure is seen rather than retried away.
fn one_attempt(socket: &Path) -> mecha_client::blocking::Client {
    let mut c = mecha_client::blocking::Client::connect(socket).expect("client connects");
    c.set_retries(RetryPolicy::disabled());
    c
}

impl Load {
    /// Starts the four clients against `d` and waits until each has made
    /// progress.
    fn start(d: &Daemon) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut load = Self {
            stop: Arc::clone(&stop),
            tallies: Vec::new(),
            threads: Vec::new(),
            published: Default::default(),
            received: Default::default(),
            redeliveries: Default::default(),
            registration_ended: Default::default(),
            resubscribes: Default::default(),
            python: start_python(d, &d.dir.path().join("python.stop")),
            python_stop: d.dir.path().join("python.stop"),
            python_reader: None,
            rust_state: Arc::new(one_attempt(&d.socket)),
        };
        load.start_rust_state();
        load.start_python_reader();
        load.start_pubsub(d);
        load.start_invoke(d);
        load.wait_progress("the load to start");
        load
    }

    fn tally(&mut self, name: &'static str) -> Arc<Tally> {
        let t = Arc::new(Tally::default());
        self.tallies.push((name, Arc::clone(&t)));
        t
    }

    /// The Rust client: set a key, read it back, on one connection.
    fn start_rust_state(&mut self) {
        let tally = self.tally("rust state");
        let (stop, client) = (Arc::clone(&self.stop), Arc::clone(&self.rust_state));
        self.threads.push(std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("rust-{}", i % 64);
                let value = format!("value-{i}").into_bytes();
                match client.set("", &key, value.clone(), SetOptions::default()) {
                    Err(e) => tally.fail(format!("set {key}: {e}")),
                    Ok(_) => match client.get("", &key) {
                        Ok(Some(entry)) if entry.value == value => tally.ok(),
                        Ok(other) => tally.fail(format!("get {key}: {other:?}")),
                        Err(e) => tally.fail(format!("get {key}: {e}")),
                    },
                }
                i += 1;
            }
        }));
    }

    /// Reads the Python script's lines: `ok N` as it goes, `failed ...` for
    /// a failed request, and its report at the end.
    fn start_python_reader(&mut self) {
        let tally = self.tally("python state");
        let stdout = self.python.stdout.take().expect("python's stdout is piped");
        self.python_reader = Some(std::thread::spawn(move || {
            let mut report = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ok ") {
                    tally.ok.store(n.parse().unwrap_or(0), Ordering::Relaxed);
                } else if let Some(json) = line.strip_prefix("report ") {
                    let v: serde_json::Value =
                        serde_json::from_str(json).expect("the python report is JSON");
                    report = Some(PythonReport {
                        connects: v["connects"].as_u64().unwrap_or(0),
                        refusals: v["refusals"]
                            .as_array()
                            .map(|a| a.iter().map(|r| r.to_string()).collect())
                            .unwrap_or_default(),
                    });
                } else {
                    tally.fail(line);
                }
            }
            report
        }));
    }

    /// A subscriber mid-stream and a publisher publishing numbered messages
    /// throughout.
    fn start_pubsub(&mut self, d: &Daemon) {
        let subscribed = Arc::new(AtomicBool::new(false));
        let tally = self.tally("pubsub subscriber");
        let socket = d.socket.clone();
        let (received, again, resubscribes) = (
            Arc::clone(&self.received),
            Arc::clone(&self.redeliveries),
            Arc::clone(&self.resubscribes),
        );
        let ready = Arc::clone(&subscribed);
        let published = Arc::clone(&self.published);
        // Set once the publisher has stopped, so the subscriber does not
        // stop reading before the last number was published.
        let publisher_done = Arc::new(AtomicBool::new(false));
        let all_published = Arc::clone(&publisher_done);
        self.threads.push(std::thread::spawn(move || {
            let client = one_attempt(&socket);
            let mut sub = client
                .subscribe("", TOPIC, "g", Default::default())
                .expect("subscribe");
            ready.store(true, Ordering::Relaxed);
            // After the stop, it keeps reading until every published number
            // has come (or PATIENCE passes without a delivery).
            loop {
                let done = all_published.load(Ordering::Relaxed) && {
                    let published = published.lock().expect("lock");
                    let received = received.lock().expect("lock");
                    published.is_subset(&received)
                };
                if done {
                    break;
                }
                let wait = if all_published.load(Ordering::Relaxed) {
                    PATIENCE
                } else {
                    Duration::from_millis(100)
                };
                match sub.next_timeout(wait) {
                    None if all_published.load(Ordering::Relaxed) => break,
                    None => {}
                    Some(Err(e)) => {
                        tally.fail(format!("subscription ended: {e}"));
                        break;
                    }
                    Some(Ok(delivery)) => {
                        let n = String::from_utf8_lossy(&delivery.data).parse::<u64>();
                        let Ok(n) = n else {
                            tally.fail(format!("a delivery that is no number: {delivery:?}"));
                            continue;
                        };
                        if !received.lock().expect("lock").insert(n) {
                            again.fetch_add(1, Ordering::Relaxed);
                        }
                        match sub.ack(&delivery) {
                            Ok(_) => tally.ok(),
                            Err(e) => tally.fail(format!("ack of {n}: {e}")),
                        }
                    }
                }
            }
            resubscribes.store(sub.resubscribes(), Ordering::Relaxed);
        }));
        self.wait_started("the subscriber to subscribe", &subscribed);

        let tally = self.tally("pubsub publisher");
        let (stop, socket) = (Arc::clone(&self.stop), d.socket.clone());
        let published = Arc::clone(&self.published);
        let publisher_done = Arc::clone(&publisher_done);
        self.threads.push(std::thread::spawn(move || {
            let client = one_attempt(&socket);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let options = Client::publish_options().content_type("text/plain");
                match client.publish("", TOPIC, n.to_string().into_bytes(), options) {
                    Ok(_) => {
                        published.lock().expect("lock").insert(n);
                        tally.ok();
                    }
                    Err(e) => tally.fail(format!("publish {n}: {e}")),
                }
                n += 1;
                // A steady trickle rather than a flood: the subscriber is
                // mid-stream through every hand-over either way.
                std::thread::sleep(Duration::from_millis(2));
            }
            publisher_done.store(true, Ordering::Relaxed);
        }));
    }

    /// A callee registered for [`APP`] on its own connection, and a caller
    /// calling it in a loop.
    fn start_invoke(&mut self, d: &Daemon) {
        let registered = Arc::new(AtomicBool::new(false));
        let ready = Arc::clone(&registered);
        let (stop, socket) = (Arc::clone(&self.stop), d.socket.clone());
        let ended = Arc::clone(&self.registration_ended);
        self.threads.push(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("the callee's runtime");
            rt.block_on(async move {
                let callee = Client::connect(&socket)
                    .await
                    .expect("callee connects")
                    .with_retries(RetryPolicy::disabled());
                let echo = mecha_client::handler(|call| async move {
                    Ok(InvokeReply {
                        data: call.data,
                        content_type: String::new(),
                        metadata: vec![],
                    })
                });
                let mut reg = callee
                    .register(APP, vec![], echo)
                    .await
                    .expect("register the callee");
                ready.store(true, Ordering::Relaxed);
                // The registration must outlive every hand-over: if it
                // ends, the app id was dropped.
                loop {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    tokio::select! {
                        why = reg.ended() => {
                            *ended.lock().expect("lock") =
                                Some(why.map_or("cancelled".into(), |e| e.to_string()));
                            break;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            });
        }));
        self.wait_started("the callee to register", &registered);

        let tally = self.tally("invoke caller");
        let (stop, socket) = (Arc::clone(&self.stop), d.socket.clone());
        self.threads.push(std::thread::spawn(move || {
            let client = one_attempt(&socket);
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let data = format!("call-{i}").into_bytes();
                match client.invoke(APP, "echo", data.clone(), InvokeOptions::default()) {
                    Ok(reply) if reply.data == data => tally.ok(),
                    Ok(reply) => tally.fail(format!("call {i} answered {:?}", reply.data)),
                    Err(e) => tally.fail(format!("call {i}: {e}")),
                }
                i += 1;
            }
        }));
    }

    /// Waits until the thread started last sets `flag`; if it ends first
    /// (its panic is printed above), says so at once.
    fn wait_started(&self, what: &str, flag: &AtomicBool) {
        let thread = self.threads.last().expect("a thread was started");
        wait_until(PATIENCE, what, || {
            assert!(!thread.is_finished(), "the thread ended before {what}");
            flag.load(Ordering::Relaxed)
        });
    }

    /// Waits until every client has made [`PROGRESS`] more successful
    /// requests than now: the load is running, whatever the daemon does.
    /// A failed request ends the wait at once with the failures, and so
    /// does a client that makes no progress within [`PATIENCE`], with every
    /// client's count, so that the panic says what went wrong.
    fn wait_progress(&self, what: &str) {
        let before: Vec<u64> = self.tallies.iter().map(|(_, t)| t.count()).collect();
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let failures: Vec<String> = self
                .tallies
                .iter()
                .flat_map(|(name, t)| {
                    let list = t.failures.lock().expect("lock");
                    list.iter()
                        .take(10)
                        .map(|f| format!("{name}: {f}"))
                        .collect::<Vec<_>>()
                })
                .collect();
            assert!(
                failures.is_empty(),
                "{what}: requests failed; each client's first:\n{}",
                failures.join("\n")
            );
            let behind: Vec<String> = self
                .tallies
                .iter()
                .zip(&before)
                .filter(|((_, t), &b)| t.count() < b + PROGRESS)
                .map(|((name, t), b)| format!("{name} ({} ok, {b} before)", t.count()))
                .collect();
            if behind.is_empty() {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: no progress within {PATIENCE:?} from {}",
                behind.join(", ")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `f` (a hand-over) and says how many requests the clients
    /// completed meanwhile: a record that the load ran through it, not an
    /// assertion, since how many fit in depends on the machine.
    fn during<T>(&self, what: &str, f: impl FnOnce() -> T) -> T {
        let total = || self.tallies.iter().map(|(_, t)| t.count()).sum::<u64>();
        let before = total();
        let out = f();
        eprintln!("{what}: {} requests completed meanwhile", total() - before);
        out
    }

    /// Stops every client, waits for them, and asserts that none failed a
    /// request or reconnected, that the subscriber received every published
    /// number, and that the callee's registration never ended.
    fn stop_and_check(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        std::fs::write(&self.python_stop, b"").expect("writing the python stop file");
        for t in self.threads.drain(..) {
            t.join().expect("a load thread panicked");
        }
        let status = self.python.wait().expect("waiting for python");
        let report = self
            .python_reader
            .take()
            .and_then(|r| r.join().expect("the python reader panicked"));
        assert!(status.success(), "the python client exited with {status}");
        let report = report.expect("the python client printed its report");

        // A client whose connection closed fails every request at once and
        // in a loop, so only each client's first failures are shown.
        let (mut failed, mut shown) = (0, Vec::new());
        let refusals = report.refusals.iter().map(|r| format!("refused: {r}"));
        let python = ("python state (answers)", refusals.collect::<Vec<_>>());
        let lists = self
            .tallies
            .iter()
            .map(|(name, t)| (*name, t.failures.lock().expect("lock").clone()))
            .chain(std::iter::once(python));
        for (name, list) in lists {
            failed += list.len();
            shown.extend(list.iter().take(10).map(|f| format!("{name}: {f}")));
        }
        assert!(
            failed == 0,
            "{failed} failed requests; each client's first:\n{}",
            shown.join("\n")
        );
        assert_eq!(
            report.connects, 1,
            "the python client connected {} times",
            report.connects
        );
        assert_eq!(
            *self.registration_ended.lock().expect("lock"),
            None,
            "the callee's registration ended"
        );
        // The daemon re-opens the stream on the new pubsub module itself: the
        // subscription never sees its stream end, so it never subscribes
        // again.
        assert_eq!(
            self.resubscribes.load(Ordering::Relaxed),
            0,
            "the subscription's stream was reset"
        );
        let published = self.published.lock().expect("lock");
        let received = self.received.lock().expect("lock");
        let missing: Vec<_> = published.difference(&received).collect();
        assert!(
            missing.is_empty(),
            "{} of {} published messages never arrived (at-least-once, no gap): {:?}",
            missing.len(),
            published.len(),
            &missing[..missing.len().min(20)]
        );
        eprintln!(
            "load: {}; {} messages, {} redelivered, {} resubscribes",
            self.tallies
                .iter()
                .map(|(n, t)| format!("{n} {} ok", t.count()))
                .collect::<Vec<_>>()
                .join(", "),
            published.len(),
            self.redeliveries.load(Ordering::Relaxed),
            self.resubscribes.load(Ordering::Relaxed),
        );
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // On a failed assertion the clients stop too, and the Python
        // process does not outlive the test.
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.python.kill();
        let _ = self.python.wait();
    }
}

/// Starts the Python client's script against `d`; it stops when `stop`
/// exists.
fn start_python(d: &Daemon, stop: &Path) -> Child {
    let script = d.dir.path().join("handover_load.py");
    std::fs::write(&script, PYTHON).expect("writing the python script");
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the daemon crate is in the workspace")
        .join("clients/python/src");
    Command::new("python3")
        .arg(&script)
        .arg(&d.socket)
        .arg(stop)
        .env("PYTHONPATH", src)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("running python3 (the Python client's tests need it too)")
}

/// A daemon whose process changes with every hand-over: the first is the
/// test's child, later ones are children of their predecessors. Dropping it
/// kills whichever runs, so none outlives a failed test.
struct Node {
    d: Daemon,
    /// The pid of the daemon serving now.
    pid: u32,
}

impl Node {
    fn start() -> Self {
        let d = Daemon::start_with(Some(&config()));
        let pid = d.pid();
        Self { d, pid }
    }

    /// The pid in STATUS, asked on a new connection.
    fn status_pid(&self) -> u32 {
        self.d.client().status().expect("status").pid
    }

    /// Runs `mechactl daemon upgrade --binary binary`.
    fn upgrade(&self, binary: &Path) -> Output {
        let binary = binary.to_str().expect("a UTF-8 binary path");
        self.d.mechactl(&["daemon", "upgrade", "--binary", binary])
    }

    /// Upgrades to `binary`, which must succeed: mechactl names the old and
    /// the new pid, STATUS answers from the new one, and the old one exits.
    /// Returns the new pid.
    fn upgrade_ok(&mut self, binary: &Path) -> u32 {
        let old = self.pid;
        let out = self.upgrade(binary);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "mechactl daemon upgrade failed: {}{}",
            stdout,
            String::from_utf8_lossy(&out.stderr)
        );
        let new = self.status_pid();
        assert_ne!(new, old, "the daemon's pid did not change");
        assert!(
            stdout.contains(&format!("mechad upgraded: pid {old} -> {new}")),
            "mechactl said {stdout:?}; expected the pids {old} -> {new}"
        );
        self.pid = new;
        wait_until(PATIENCE, "the old daemon to exit", || self.exited(old));
        new
    }

    /// Hands over with `kill -USR2`, which starts the daemon's own binary:
    /// waits until STATUS answers from another pid and the old one exits.
    /// Returns the new pid.
    fn upgrade_by_signal(&mut self) -> u32 {
        let old = self.pid;
        signal(old, libc::SIGUSR2);
        let mut new = old;
        wait_until(PATIENCE, "a new daemon to take over after SIGUSR2", || {
            new = self.status_pid();
            new != old
        });
        self.pid = new;
        wait_until(PATIENCE, "the old daemon to exit", || self.exited(old));
        new
    }

    /// Whether daemon `pid` has exited. The first daemon is the test's
    /// child, reaped here (it must exit 0); a later one is reaped by
    /// whoever inherited it, so a zombie counts as exited.
    fn exited(&mut self, pid: u32) -> bool {
        if pid == self.d.pid() {
            let child = self.d.child.as_mut().expect("the first daemon's child");
            return match child.try_wait().expect("waiting for the first daemon") {
                None => false,
                Some(status) => {
                    assert!(status.success(), "the old daemon exited with {status}");
                    true
                }
            };
        }
        !alive(pid)
    }

    /// Stops the daemon serving now with SIGTERM and waits for it to exit.
    fn stop(&mut self) {
        if self.pid == self.d.pid() {
            let status = self.d.stop();
            assert!(status.success(), "mechad exited with {status}");
        } else {
            signal(self.pid, libc::SIGTERM);
            let pid = self.pid;
            wait_until(PATIENCE, "the daemon to exit after SIGTERM", || !alive(pid));
        }
        self.pid = 0;
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The first daemon is the Daemon's to kill; a later one is killed
        // here, if it still runs and is this test's (its command line names
        // this test's socket), never a process that reused the pid.
        if self.pid != 0 && self.pid != self.d.pid() && alive(self.pid) {
            let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
            let socket = self.d.socket.to_string_lossy().into_owned();
            if String::from_utf8_lossy(&cmdline).contains(&socket) {
                // SAFETY: kill(2) takes plain integers.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            }
        }
    }
}

#[test]
fn an_upgrade_under_load_fails_no_request_and_reconnects_no_client() {
    let mut node = Node::start();
    let load = Load::start(&node.d);
    let mechad = bin_dir().join("mechad");
    let first = node.pid;

    let second = load.during("the first hand-over", || node.upgrade_ok(&mechad));
    load.wait_progress("after the first hand-over");
    let third = load.during("the second hand-over", || node.upgrade_ok(&mechad));
    load.wait_progress("after the second hand-over");
    // SIGUSR2 does the same with the binary the daemon was started from.
    let fourth = load.during("the hand-over by SIGUSR2", || node.upgrade_by_signal());
    load.wait_progress("after the hand-over by SIGUSR2");
    let pids = BTreeSet::from([first, second, third, fourth]);
    assert_eq!(pids.len(), 4, "every daemon had a pid of its own: {pids:?}");

    // The Rust client's one connection (it has no reconnect: a closed
    // connection fails every later call) is now served by the fourth daemon.
    let on_same_connection = load.rust_state.status().expect("status").pid;
    assert_eq!(on_same_connection, fourth);
    // The callee is reachable by its app id from a new connection too.
    let fresh = one_attempt(&node.d.socket);
    assert!(
        fresh.apps().expect("apps").iter().any(|a| a.app_id == APP),
        "{APP} is no longer listed"
    );
    let reply = fresh
        .invoke(APP, "echo", b"after".to_vec(), InvokeOptions::default())
        .expect("a call after the hand-overs");
    assert_eq!(reply.data, b"after");
    load.stop_and_check();
    node.stop();
}

/// A script that fails at start, as a broken binary would; owned by the
/// test's user (root or the daemon's uid) and writable by nobody else, so
/// that it passes the daemon's check of an upgrade binary and really runs.
fn broken_binary(dir: &Path) -> PathBuf {
    let path = dir.join("mechad-broken");
    std::fs::write(
        &path,
        "#!/bin/sh\necho 'this mechad is broken on purpose' >&2\nexit 1\n",
    )
    .expect("writing the broken binary");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the broken binary");
    path
}

#[test]
fn a_broken_new_binary_leaves_the_old_daemon_serving_without_a_failed_request() {
    let mut node = Node::start();
    let load = Load::start(&node.d);
    let broken = broken_binary(node.d.dir.path());
    let before = node.pid;

    for _ in 0..2 {
        let out = node.upgrade(&broken);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "mechactl daemon upgrade succeeded with a broken binary: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // The reason names what went wrong: the new process exited.
        assert!(
            stderr.contains("exit"),
            "mechactl did not say why the upgrade failed: {stderr:?}"
        );
        load.wait_progress("after the failed upgrade");
        assert!(!node.exited(before), "the old daemon exited");
        assert_eq!(node.status_pid(), before, "the daemon's pid changed");
    }
    assert_eq!(load.rust_state.status().expect("status").pid, before);
    load.stop_and_check();
    // The daemon that refused the broken binary still stops cleanly.
    node.stop();
}

/// The mechad built with the `handover-next` feature: `MECHA_NEXT_MECHAD`
/// when set (CI builds it beside the normal one), or else built here, once,
/// in a target directory of its own beside the normal one (so the normal
/// `mechad` the other tests run is never replaced).
fn next_mechad() -> PathBuf {
    if let Some(path) = std::env::var_os("MECHA_NEXT_MECHAD") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "MECHA_NEXT_MECHAD={} is not a file",
            path.display()
        );
        return path;
    }
    let profile_dir = common::bin_dir();
    let target = profile_dir
        .parent()
        .expect("the profile directory has a parent")
        .join("handover-next");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "mechad",
        "--features",
        "handover-next",
        "--target-dir",
    ])
    .arg(&target);
    let profile = if profile_dir.ends_with("release") {
        cmd.arg("--release");
        "release"
    } else {
        "debug"
    };
    let status = cmd
        .status()
        .expect("running cargo build for the next mechad");
    assert!(
        status.success(),
        "building mechad with --features handover-next failed"
    );
    target.join(profile).join("mechad")
}

#[test]
fn a_daemon_hands_over_under_load_to_a_build_with_a_bumped_handover_version() {
    let next = next_mechad();
    let mut node = Node::start();
    let load = Load::start(&node.d);
    let new = node.upgrade_ok(&next);
    load.wait_progress("after the hand-over to the next version");
    // The daemon serving now runs the other build.
    let exe = std::fs::read_link(format!("/proc/{new}/exe")).expect("the new daemon's binary");
    assert_eq!(
        exe,
        next.canonicalize().expect("resolving MECHA_NEXT_MECHAD"),
        "the new daemon runs another binary"
    );
    assert_eq!(load.rust_state.status().expect("status").pid, new);
    load.stop_and_check();
    node.stop();
}
