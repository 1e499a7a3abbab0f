//! A DaemonSet rollout on one machine: the Helm chart (rendered by
//! `deploy/helm/render.py`) asks for a surge rollout and a live hand-over, and
//! two mechad processes started with the chart's own arguments and sharing the
//! host directories, as the old and the new pod of a node do, go through the
//! hand-over while applications write, read and subscribe without an error.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{bin_dir, child_pids, signal, wait_until};
use mecha_client::{RetryPolicy, SetOptions};
use serde_norway::Value;

/// Every document of the chart rendered with its default values.
fn rendered_chart() -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("python3")
        .arg(root.join("deploy/helm/render.py"))
        .arg(root.join("deploy/helm/mecha"))
        .output()
        .expect("running python3 deploy/helm/render.py");
    assert!(
        out.status.success(),
        "render.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("the rendering is UTF-8");
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| serde::Deserialize::deserialize(doc).expect("the rendering is YAML"))
        .collect()
}

/// The one document of `kind` in the rendering.
fn document<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut found = docs.iter().filter(|d| d["kind"].as_str() == Some(kind));
    let doc = found.next().unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(found.next().is_none(), "more than one {kind} rendered");
    doc
}

/// The DaemonSet's container named `mechad`.
fn mechad_container(daemonset: &Value) -> &Value {
    daemonset["spec"]["template"]["spec"]["containers"]
        .as_sequence()
        .expect("containers")
        .iter()
        .find(|c| c["name"].as_str() == Some("mechad"))
        .expect("a container named mechad")
}

/// The container's arguments.
fn args_of(container: &Value) -> Vec<String> {
    container["args"]
        .as_sequence()
        .expect("mechad has args")
        .iter()
        .map(|a| a.as_str().expect("string args").to_string())
        .collect()
}

/// The mount path of the container's volume `name`.
fn mount_path(container: &Value, name: &str) -> String {
    container["volumeMounts"]
        .as_sequence()
        .expect("volumeMounts")
        .iter()
        .find(|m| m["name"].as_str() == Some(name))
        .and_then(|m| m["mountPath"].as_str())
        .unwrap_or_else(|| panic!("no mount of {name}"))
        .to_string()
}

/// The chart rolls out one node at a time by a live hand-over: the new pod
/// runs beside the old one until it is ready, its mechad takes over and the
/// old one waits to be deleted, and both share the node's directories.
#[test]
fn the_chart_rolls_out_by_live_handover() {
    let docs = rendered_chart();
    let ds = document(&docs, "DaemonSet");
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(strategy["rollingUpdate"]["maxSurge"].as_u64(), Some(1));
    assert_eq!(
        strategy["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0)
    );

    let pod = &ds["spec"]["template"]["spec"];
    // Long enough for a daemon that still serves to drain: connections up
    // to 10 s, then each module up to its 5 s shutdown timeout.
    let grace = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("a termination grace period");
    assert!(grace >= 30, "terminationGracePeriodSeconds {grace}");

    let container = mechad_container(ds);
    let args = args_of(container);
    for wanted in ["--takeover=auto", "--after-handover=wait"] {
        assert!(args.iter().any(|a| a == wanted), "{wanted} not in {args:?}");
    }
    // Readiness is what the rollout waits for, and /readyz is what follows
    // the hand-over.
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    // The socket's and the data's directories are the node's, so the old and
    // the new pod share them.
    for (volume, mount) in [("socket-dir", "/run/mecha"), ("data", "/var/lib/mecha")] {
        assert_eq!(mount_path(container, volume), mount);
        let v = pod["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"].as_str() == Some(volume))
            .unwrap_or_else(|| panic!("no volume {volume}"));
        assert_eq!(v["hostPath"]["path"].as_str(), Some(mount), "{volume}");
    }
    assert!(
        args.iter().any(|a| a == "--socket=/run/mecha/mecha.sock"),
        "{args:?}"
    );
}

/// A port that was free a moment ago (the race with another process taking
/// it is accepted, as in health.rs).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket")
        .port()
}

/// The status code of `GET path`; `None` when nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
        .ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    answer.split(' ').nth(1)?.parse().ok()
}

/// One node's host directories and the chart's mechad command line with the
/// container's paths replaced by them.
struct Node {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    /// The arguments; `--http=` is left out and set per pod.
    args: Vec<String>,
}

impl Node {
    /// Writes the ConfigMap's files (plus a durable pubsub store, which the
    /// chart's default components lack and the subscriber needs) into a
    /// config directory, and maps the container's mount paths onto
    /// temporary directories.
    fn from_chart() -> Self {
        let docs = rendered_chart();
        let ds = document(&docs, "DaemonSet");
        let container = mechad_container(ds);
        let dir = tempfile::tempdir().expect("temp dir");
        let run = dir.path().join("run-mecha");
        let data = dir.path().join("var-lib-mecha");
        let config = dir.path().join("etc-mecha");
        for d in [&run, &data, &config] {
            std::fs::create_dir(d).expect("creating a host directory");
        }
        let configmap = document(&docs, "ConfigMap");
        for (name, content) in configmap["data"].as_mapping().expect("ConfigMap data") {
            let name = name.as_str().expect("file name");
            std::fs::write(config.join(name), content.as_str().expect("file content"))
                .expect("writing a config file");
        }
        std::fs::write(
            config.join("zz-test-pubsub.yaml"),
            common::component("pubsub", "pubsub.redb", &[]),
        )
        .expect("writing the pubsub component");

        let replacements = [
            (
                mount_path(container, "socket-dir"),
                run.display().to_string(),
            ),
            (mount_path(container, "data"), data.display().to_string()),
            (
                mount_path(container, "config"),
                config.display().to_string(),
            ),
        ];
        let mut http = 0;
        let args = args_of(container)
            .into_iter()
            .filter(|arg| {
                // Every pod has an IP of its own and the HTTP port on it;
                // here each gets a loopback port of its own (start_pod).
                let is_http = arg.starts_with("--http=0.0.0.0:");
                http += usize::from(is_http);
                !is_http
            })
            .map(|arg| {
                let Some((flag, value)) = arg.split_once('=') else {
                    return arg;
                };
                for (from, to) in &replacements {
                    if let Some(rest) = value.strip_prefix(from.as_str()) {
                        return format!("{flag}={to}{rest}");
                    }
                }
                arg
            })
            .collect::<Vec<_>>();
        assert_eq!(http, 1, "one --http=0.0.0.0:<port> argument");
        let socket = run.join("mecha.sock");
        assert!(
            args.iter()
                .any(|a| *a == format!("--socket={}", socket.display())),
            "{args:?}"
        );
        Self {
            _dir: dir,
            socket,
            args,
        }
    }

    /// Starts one "pod": mechad with the chart's arguments and its HTTP
    /// endpoint on `port`. Modules are found beside mechad, as in the image.
    fn start_pod(&self, port: u16) -> Pod {
        let child = Command::new(bin_dir().join("mechad"))
            .args(&self.args)
            .arg(format!("--http=127.0.0.1:{port}"))
            .env(
                "MECHA_LOG",
                std::env::var("TEST_MECHA_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env_remove("MECHA_SOCKET")
            .env_remove("MECHA_CONFIG")
            .env_remove("MECHA_HTTP")
            .env_remove("MECHA_TAKEOVER")
            .env_remove("MECHA_AFTER_HANDOVER")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning mechad");
        Pod(child)
    }

    fn client(&self) -> mecha_client::blocking::Client {
        let mut c = mecha_client::blocking::Client::connect(&self.socket).expect("client connects");
        // No retries: an UNAVAILABLE during the hand-over must count as the
        // error it would be to an application that does not retry.
        c.set_retries(RetryPolicy::disabled());
        c.set_timeout(Duration::from_secs(20));
        c
    }

    /// The pid of the daemon that serves a new connection.
    fn serving_pid(&self) -> Option<u32> {
        let c = mecha_client::blocking::Client::connect(&self.socket).ok()?;
        c.status().ok().map(|s| s.pid)
    }
}

/// One pod's mechad, killed if the test ends (or fails) while it runs, so
/// that no daemon outlives the test.
struct Pod(Child);

impl Pod {
    fn id(&self) -> u32 {
        self.0.id()
    }

    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.0.try_wait()
    }

    /// Waits for the process to exit, at most 20 s.
    fn wait_exit(&mut self, what: &str) -> std::process::ExitStatus {
        let mut status = None;
        wait_until(Duration::from_secs(20), what, || {
            status = self.0.try_wait().expect("waiting for mechad");
            status.is_some()
        });
        status.expect("exited")
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// What the application threads saw.
#[derive(Default)]
struct Seen {
    errors: Mutex<Vec<String>>,
    /// Writes (each followed by a read of the same key) that succeeded.
    writes: AtomicU64,
    /// Messages published (payloads 0..published).
    published: AtomicU64,
    /// Every payload delivered to the subscriber, in order of arrival.
    delivered: Mutex<Vec<u64>>,
    /// Tells the writer and publisher to stop.
    stop: AtomicBool,
    /// Set once the publisher has stopped: `published` is final.
    published_all: AtomicBool,
}

impl Seen {
    fn error(&self, what: String) {
        self.errors.lock().expect("errors lock").push(what);
    }

    /// The messages published and not (yet) delivered.
    fn missing(&self) -> Vec<u64> {
        let published = self.published.load(Ordering::SeqCst);
        let delivered: HashSet<u64> = self
            .delivered
            .lock()
            .expect("delivered lock")
            .iter()
            .copied()
            .collect();
        (0..published).filter(|n| !delivered.contains(n)).collect()
    }
}

/// The old and the new pod of a node: mechad "A" serves applications; mechad
/// "B", started with the same arguments on the same host directories, takes
/// over. The clients see no error and keep their connections (the same
/// connection answers STATUS with B's pid), the subscriber misses no message,
/// A idles until SIGTERM and then exits 0 leaving the socket to B, and B is
/// ready.
#[test]
fn two_pods_on_one_node_hand_over() {
    let node = Node::from_chart();
    let (a_port, b_port) = (free_port(), free_port());
    let mut a = node.start_pod(a_port);
    let a_pid = a.id();
    wait_until(Duration::from_secs(30), "pod A's mechad to serve", || {
        if let Ok(Some(status)) = a.try_wait() {
            panic!("mechad A exited during start-up: {status}");
        }
        node.serving_pid() == Some(a_pid)
    });
    wait_until(Duration::from_secs(30), "pod A to be ready", || {
        http_status(a_port, "/readyz") == Some(200)
    });

    let seen = Arc::new(Seen::default());
    let writer = node.client();
    let publisher = node.client();
    let subscriber = node.client();
    // The subscription is open before the first publish, so every message
    // is for it.
    let ready = Arc::new(AtomicBool::new(false));
    let sub_thread = {
        let seen = Arc::clone(&seen);
        let ready = Arc::clone(&ready);
        std::thread::spawn(move || {
            let mut sub = subscriber
                .subscribe("pubsub", "rollout", "g", Default::default())
                .expect("subscribe");
            ready.store(true, Ordering::SeqCst);
            // Once the publisher has stopped, the subscriber ends when it has
            // seen every message published, or after a minute without them
            // (then the assertion below names the missing ones).
            let mut give_up = None;
            loop {
                if seen.published_all.load(Ordering::SeqCst) {
                    let deadline =
                        *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
                    if seen.missing().is_empty() || Instant::now() > deadline {
                        break;
                    }
                }
                match sub.next_timeout(Duration::from_millis(200)) {
                    None => continue,
                    Some(Ok(delivery)) => {
                        let n = String::from_utf8_lossy(&delivery.data)
                            .parse::<u64>()
                            .expect("payloads are numbers");
                        seen.delivered.lock().expect("delivered lock").push(n);
                        if let Err(e) = sub.ack(&delivery) {
                            seen.error(format!("ack {n}: {e}"));
                        }
                    }
                    Some(Err(e)) => {
                        seen.error(format!("subscription: {e}"));
                        break;
                    }
                }
            }
            (sub.resubscribes(), subscriber.status().map(|s| s.pid))
        })
    };
    wait_until(Duration::from_secs(20), "the subscription", || {
        ready.load(Ordering::SeqCst)
    });
    let app_thread = {
        let seen = Arc::clone(&seen);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !seen.stop.load(Ordering::SeqCst) {
                let key = format!("k{}", i % 64);
                let value = i.to_string().into_bytes();
                match writer.set("statestore", &key, value.clone(), SetOptions::default()) {
                    Ok(_) => match writer.get("statestore", &key) {
                        Ok(Some(entry)) if entry.value == value => {
                            seen.writes.fetch_add(1, Ordering::SeqCst);
                        }
                        other => seen.error(format!("get {key} after set {i}: {other:?}")),
                    },
                    Err(e) => seen.error(format!("set {key} = {i}: {e}")),
                }
                let n = seen.published.load(Ordering::SeqCst);
                match publisher.publish(
                    "pubsub",
                    "rollout",
                    n.to_string().into_bytes(),
                    Default::default(),
                ) {
                    Ok(_) => {
                        seen.published.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(e) => seen.error(format!("publish {n}: {e}")),
                }
                i += 1;
            }
            (
                writer.status().map(|s| s.pid),
                publisher.status().map(|s| s.pid),
            )
        })
    };
    let progress = |what: &str, more: u64| {
        let target = seen.writes.load(Ordering::SeqCst) + more;
        wait_until(Duration::from_secs(60), what, || {
            // Cloned, so that the assertion does not poison the lock the
            // application threads still use.
            let errors = seen.errors.lock().expect("errors lock").clone();
            assert!(errors.is_empty(), "the applications saw errors: {errors:?}");
            seen.writes.load(Ordering::SeqCst) >= target
        });
    };
    progress("traffic through A", 20);

    // The new pod: the same arguments on the same directories.
    let mut b = node.start_pod(b_port);
    let b_pid = b.id();
    wait_until(Duration::from_secs(60), "B to take over", || {
        if let Ok(Some(status)) = b.try_wait() {
            panic!("mechad B exited: {status}");
        }
        node.serving_pid() == Some(b_pid)
    });
    wait_until(Duration::from_secs(30), "B to be ready", || {
        http_status(b_port, "/readyz") == Some(200)
    });
    progress("traffic through B", 20);

    // A waits (--after-handover=wait): alive, with its modules drained.
    wait_until(Duration::from_secs(30), "A's old modules to exit", || {
        child_pids(a_pid).is_empty()
    });
    assert!(
        a.try_wait().expect("checking A").is_none(),
        "A exited after the hand-over instead of waiting"
    );
    // The idle old pod stays live for kubelet's liveness probe (a failed one
    // would restart the container, whose new mechad would take the node
    // back) and is no longer ready.
    assert_eq!(http_status(a_port, "/healthz"), Some(200));
    assert_eq!(http_status(a_port, "/readyz"), Some(503));

    seen.stop.store(true, Ordering::SeqCst);
    let (writer_pid, publisher_pid) = app_thread.join().expect("application thread");
    seen.published_all.store(true, Ordering::SeqCst);
    let (resubscribes, subscriber_pid) = sub_thread.join().expect("subscriber thread");
    let errors = seen.errors.lock().expect("errors lock").clone();
    assert!(errors.is_empty(), "the applications saw errors: {errors:?}");
    // The connections opened to A are served by B now: no reconnect (the
    // client has no way to reconnect by itself; a closed connection would
    // have been an error above).
    for (who, pid) in [
        ("writer", writer_pid),
        ("publisher", publisher_pid),
        ("subscriber", subscriber_pid),
    ] {
        assert_eq!(pid.expect("status on the old connection"), b_pid, "{who}");
    }
    // The daemon re-opened the stream on the new pubsub module itself: the
    // subscription never had to subscribe again.
    assert_eq!(resubscribes, 0, "the subscription was reset");
    let missing = seen.missing();
    assert!(missing.is_empty(), "never delivered: {missing:?}");
    eprintln!(
        "{} writes, {} messages ({} deliveries, {resubscribes} resubscribes)",
        seen.writes.load(Ordering::SeqCst),
        seen.published.load(Ordering::SeqCst),
        seen.delivered.lock().expect("delivered lock").len()
    );

    // The DaemonSet controller deletes the old pod: A exits 0 and leaves the
    // socket, which is B's now, in place.
    signal(a_pid, libc::SIGTERM);
    let status = a.wait_exit("A to exit after SIGTERM");
    assert_eq!(status.code(), Some(0), "A: {status}");
    assert!(node.socket.exists(), "A removed the socket");
    assert_eq!(node.serving_pid(), Some(b_pid));
    assert_eq!(http_status(b_port, "/readyz"), Some(200));

    signal(b_pid, libc::SIGTERM);
    let status = b.wait_exit("B to exit after SIGTERM");
    assert!(status.success(), "B: {status}");
}
