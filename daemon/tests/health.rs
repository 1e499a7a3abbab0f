//! The HTTP endpoint through the real daemon: liveness and readiness across
//! boot, crash, restart intensity and `mechactl module restart`; Prometheus
//! text that parses and whose counters move exactly with traffic; malformed
//! HTTP; `mechactl wait --ready` and `mechactl top`; and the configurations
//! shipped in `deploy/` (the Kubernetes ConfigMap, the systemd example)
//! booting the daemon.
//!
//! The endpoint's port is chosen by the test: bind 127.0.0.1:0, read the port,
//! release it, and configure it. Another process could take the port in
//! between; that race is accepted in exchange for not adding a daemon flag
//! whose only purpose is to report the bound port to tests.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{bin_dir, signal, wait_until, Daemon, CONFIGURATION};
use mecha_client::SetOptions;

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket")
        .port()
}

/// Sends raw bytes and returns the status code and body of the answer; `None`
/// when nothing listens yet.
fn http_raw(port: u16, request: &[u8]) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(request).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    let (head, body) = answer.split_once("\r\n\r\n")?;
    assert!(
        head.contains("Connection: close") && head.contains("Content-Length:"),
        "{head}"
    );
    let code = head.split(' ').nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_raw(
        port,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// A deliberately small parser of the exposition format, written from the
/// format's description rather than shared with mechactl, so a bug in one does
/// not hide in the other. Panics on any line it cannot parse.
fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').expect("labels end with }");
                let mut labels = Vec::new();
                let mut rest = body;
                while !rest.is_empty() {
                    let (key, after) = rest.split_once("=\"").expect("key=\"value\"");
                    // Values here never contain escaped quotes (tenants are
                    // uid:<n>, opcodes and modules are identifiers).
                    let (value, after) = after.split_once('"').expect("closing quote");
                    labels.push((key.to_string(), value.to_string()));
                    rest = after.strip_prefix(',').unwrap_or(after);
                }
                (name.to_string(), labels)
            }
        };
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The value of the series `name` whose labels include all of `want`.
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && want
                    .iter()
                    .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
}

fn metrics(port: u16) -> Vec<Sample> {
    let (code, body) = get(port, "/metrics").expect("metrics answer");
    assert_eq!(code, 200, "{body}");
    parse(&body)
}

/// Two memory-backed modules (state and lock) with the endpoint on `port`,
/// restart intensity 1 (a second crash makes a module back off), and the state
/// module started through `state_binary`.
fn config(port: u16, state_binary: &Path) -> String {
    format!(
        "apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: statestore
spec:
  type: state.memory
  version: v1
  metadata: []
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata:
  name: lockstore
spec:
  type: lock.memory
  version: v1
  metadata: []
---
{CONFIGURATION}  http:
    address: \"127.0.0.1:{port}\"
  maxRestarts: 1
  restartWindowSecs: 3600
  modules:
    state:
      binary: {}
",
        state_binary.display()
    )
}

/// A wrapper around mecha-mod-state that does not start the module while
/// `hold` exists, so a test can look at the daemon while the module is
/// starting, for as long as it needs, and then let it go.
struct Gate {
    dir: tempfile::TempDir,
}

impl Gate {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let script = dir.path().join("gated-state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\nwhile [ -e '{hold}' ]; do sleep 0.02; done\nexec '{real}' \"$@\"\n",
                hold = dir.path().join("hold").display(),
                real = bin_dir().join("mecha-mod-state").display()
            ),
        )
        .expect("writing the wrapper");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
        Self { dir }
    }

    fn binary(&self) -> PathBuf {
        self.dir.path().join("gated-state")
    }

    fn close(&self) {
        std::fs::write(self.dir.path().join("hold"), b"").expect("creating the hold file");
    }

    fn open(&self) {
        std::fs::remove_file(self.dir.path().join("hold")).expect("removing the hold file");
    }
}

fn readyz(port: u16) -> (u16, String) {
    get(port, "/readyz").expect("readyz answers")
}

#[test]
fn readiness_follows_the_modules_and_liveness_does_not() {
    let port = free_port();
    let gate = Gate::new();
    gate.close();
    // Boot blocks on the gated state module; meanwhile the endpoint must be
    // live but not ready. A helper thread watches that, then opens the gate.
    let watcher = std::thread::spawn({
        let gate_path = gate.dir.path().to_path_buf();
        move || {
            let mut seen = None;
            wait_until(
                Duration::from_secs(20),
                "the endpoint to answer during boot",
                || {
                    seen = get(port, "/readyz").zip(get(port, "/healthz"));
                    seen.is_some()
                },
            );
            std::fs::remove_file(gate_path.join("hold")).expect("opening the gate");
            seen
        }
    });
    let d = Daemon::start_with(Some(&config(port, &gate.binary())));
    let (ready, live) = watcher.join().expect("watcher thread").unwrap();
    assert_eq!(live.0, 200, "liveness during boot: {}", live.1);
    assert_eq!(ready.0, 503, "readiness during boot: {}", ready.1);
    assert!(ready.1.contains("starting"), "{}", ready.1);

    wait_until(Duration::from_secs(10), "readiness after boot", || {
        readyz(port).0 == 200
    });
    assert!(readyz(port).1.contains("2 modules running"));
    let out = d.mechactl(&["wait", "--ready", "--timeout", "10s"]);
    assert!(out.status.success(), "{out:?}");

    // A crash: the module is restarting (held at the gate) → 503 naming it.
    gate.close();
    signal(d.module_pid("state"), libc::SIGKILL);
    wait_until(Duration::from_secs(10), "readiness to drop", || {
        let (code, body) = readyz(port);
        code == 503 && body.contains("state (restarting)")
    });
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    let samples = metrics(port);
    assert_eq!(value(&samples, "mecha_ready", &[]), Some(0.0));
    assert_eq!(
        value(
            &samples,
            "mecha_module_state",
            &[("module", "state"), ("state", "restarting")]
        ),
        Some(1.0)
    );
    gate.open();
    wait_until(
        Duration::from_secs(10),
        "readiness after the restart",
        || readyz(port).0 == 200,
    );

    // A second crash within the window exceeds maxRestarts (1): the module
    // backs off, and its next start is held at the gate, so it stays there.
    gate.close();
    signal(d.module_pid("state"), libc::SIGKILL);
    wait_until(Duration::from_secs(10), "the module to back off", || {
        let (code, body) = readyz(port);
        code == 503 && body.contains("state (backoff)")
    });
    let out = d.mechactl(&["wait", "--ready", "--timeout", "300ms"]);
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("state (backoff)"), "{stderr}");
    let samples = metrics(port);
    assert_eq!(
        value(
            &samples,
            "mecha_module_state",
            &[("module", "state"), ("state", "backoff")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "mecha_module_restarts_total",
            &[("module", "state")]
        ),
        Some(2.0)
    );
    gate.open();

    // The operator's fix: a restart brings it back, and readiness with it.
    let out = d.mechactl(&["module", "restart", "state"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(readyz(port).0, 200, "{}", readyz(port).1);
    let out = d.mechactl(&["wait", "--ready"]);
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn metrics_move_exactly_with_traffic() {
    let port = free_port();
    let gate = Gate::new();
    let d = Daemon::start_with(Some(&config(port, &gate.binary())));
    wait_until(Duration::from_secs(10), "readiness", || {
        readyz(port).0 == 200
    });
    let client = d.client();
    let tenant = client.tenant().to_string();
    let labels = |opcode: &'static str| [("tenant", tenant.clone()), ("opcode", opcode.into())];
    let count = |samples: &[Sample], name: &str, opcode: &'static str, extra: &[(&str, &str)]| {
        let l = labels(opcode);
        let mut want: Vec<(&str, &str)> = l.iter().map(|(k, v)| (*k, v.as_str())).collect();
        want.extend_from_slice(extra);
        value(samples, name, &want).unwrap_or(0.0)
    };

    let before = metrics(port);
    const SETS: usize = 7;
    for i in 0..SETS {
        client
            .set("", &format!("k{i}"), b"v".to_vec(), SetOptions::default())
            .unwrap();
    }
    assert!(client.get("", "missing").unwrap().is_none());
    let after = metrics(port);

    let sets = count(&after, "mecha_requests_total", "STATE_SET", &[])
        - count(&before, "mecha_requests_total", "STATE_SET", &[]);
    assert_eq!(sets, SETS as f64);
    let timed = count(
        &after,
        "mecha_request_duration_seconds_count",
        "STATE_SET",
        &[],
    ) - count(
        &before,
        "mecha_request_duration_seconds_count",
        "STATE_SET",
        &[],
    );
    assert_eq!(timed, SETS as f64);
    let inf = count(
        &after,
        "mecha_request_duration_seconds_bucket",
        "STATE_SET",
        &[("le", "+Inf")],
    );
    assert_eq!(
        inf,
        count(
            &after,
            "mecha_request_duration_seconds_count",
            "STATE_SET",
            &[]
        )
    );
    let not_found = [("status", "NOT_FOUND")];
    let misses = count(
        &after,
        "mecha_request_errors_total",
        "STATE_GET",
        &not_found,
    ) - count(
        &before,
        "mecha_request_errors_total",
        "STATE_GET",
        &not_found,
    );
    assert_eq!(misses, 1.0);
    assert!(value(&after, "mecha_connections_open", &[]).unwrap() >= 1.0);
    assert!(value(&after, "mecha_connections_accepted_total", &[]).unwrap() >= 1.0);
    assert!(
        value(
            &after,
            "mecha_module_resident_memory_bytes",
            &[("module", "state")]
        )
        .unwrap()
            > 0.0
    );
    assert_eq!(
        value(
            &after,
            "mecha_module_in_flight_requests",
            &[("module", "state")]
        ),
        Some(0.0)
    );
}

#[test]
fn malformed_http_is_refused_and_the_daemon_keeps_serving() {
    let port = free_port();
    let gate = Gate::new();
    let d = Daemon::start_with(Some(&config(port, &gate.binary())));
    wait_until(Duration::from_secs(10), "readiness", || {
        readyz(port).0 == 200
    });

    let (code, _) = http_raw(port, b"\x16\x03\x01 this is not http\r\n\r\n").unwrap();
    assert_eq!(code, 400);
    let (code, _) = http_raw(port, b"GET /metrics\r\n\r\n").unwrap();
    assert_eq!(code, 400);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX: ".to_vec();
    huge.extend(vec![b'a'; 20 * 1024]);
    huge.extend_from_slice(b"\r\n\r\n");
    let (code, _) = http_raw(port, &huge).unwrap();
    assert_eq!(code, 431);
    assert_eq!(get(port, "/nowhere").unwrap().0, 404);
    assert_eq!(
        http_raw(port, b"POST /readyz HTTP/1.1\r\n\r\n").unwrap().0,
        405
    );
    // A client that connects and says nothing does not block others.
    let _silent = TcpStream::connect(("127.0.0.1", port)).unwrap();

    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    assert_eq!(readyz(port).0, 200);
    d.client()
        .ping()
        .expect("the application socket still serves");
}

#[test]
fn top_prints_modules_and_traffic_columns() {
    let port = free_port();
    let gate = Gate::new();
    let d = Daemon::start_with(Some(&config(port, &gate.binary())));
    wait_until(Duration::from_secs(10), "readiness", || {
        readyz(port).0 == 200
    });
    let addr = format!("127.0.0.1:{port}");
    let out = d.mechactl(&["top", "--once", "--interval", "200ms", "--http", &addr]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["MODULE", "state", "lock", "running", "MiB", "TENANT", "P99"] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    // Without the endpoint, top still shows modules and says what is missing.
    let out = d.mechactl(&["top", "--once", "--interval", "10ms"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("state") && text.contains("--http"), "{text}");
}

/// The configuration the Kubernetes manifests ship (the ConfigMap in
/// `deploy/k8s/daemonset.yaml`, rendered from the Helm chart) boots the daemon.
#[test]
fn the_shipped_configmap_boots_the_daemon() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s/daemonset.yaml");
    let text = std::fs::read_to_string(&path).expect("reading the DaemonSet manifest");
    let mut files: Vec<(String, String)> = Vec::new();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let doc: serde_norway::Value = serde::Deserialize::deserialize(doc).expect("YAML");
        if doc["kind"].as_str() != Some("ConfigMap") {
            continue;
        }
        let data = doc["data"].as_mapping().expect("ConfigMap data");
        for (name, content) in data {
            files.push((
                name.as_str().expect("file name").to_string(),
                content.as_str().expect("file content").to_string(),
            ));
        }
    }
    assert!(!files.is_empty(), "no ConfigMap in {}", path.display());
    // mechad reads a directory's files in name order; so does this.
    files.sort();
    let joined: Vec<String> = files.into_iter().map(|(_, c)| c).collect();
    boots_all_modules(&joined.join("\n---\n"));
}

/// The starting configuration of the systemd recipe boots the daemon.
#[test]
fn the_systemd_example_config_boots_the_daemon() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/mecha.yaml");
    boots_all_modules(&std::fs::read_to_string(&path).expect("reading the example"));
}

fn boots_all_modules(config: &str) {
    let d = Daemon::start_with(Some(config));
    let out = d.mechactl(&["wait", "--ready", "--timeout", "20s"]);
    assert!(out.status.success(), "{out:?}");
    let status = d.client().status().unwrap();
    let names: Vec<&str> = status.modules.iter().map(|m| m.name.as_str()).collect();
    for module in ["state", "lock", "sequencer", "secrets"] {
        assert!(names.contains(&module), "{module} not in {names:?}");
    }
}

/// `--log-format json` makes every log line of mechad and of its modules one
/// JSON object, so a log collector can parse the node's logs.
#[test]
fn json_logs_cover_the_daemon_and_its_modules() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("m.sock");
    let mut child = std::process::Command::new(bin_dir().join("mechad"))
        .arg("--socket")
        .arg(&socket)
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--module-dir")
        .arg(bin_dir())
        .args(["--log-format", "json"])
        .env("MECHA_LOG", "info")
        .env_remove("MECHA_CONFIG")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start mechad");
    wait_until(Duration::from_secs(20), "mechad to listen", || {
        std::os::unix::net::UnixStream::connect(&socket).is_ok()
    });
    let c = mecha_client::blocking::Client::connect(&socket).expect("connect");
    c.set("", "k", b"v".to_vec(), Default::default())
        .expect("set");
    drop(c);
    signal(child.id(), libc::SIGTERM);
    let mut text = String::new();
    child
        .stderr
        .take()
        .expect("piped stderr")
        .read_to_string(&mut text)
        .expect("read logs");
    assert!(child.wait().expect("mechad exits").success());
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "mechad logged at info level");
    for line in &lines {
        assert!(
            line["level"].is_string() && line["fields"].is_object(),
            "{line}"
        );
    }
    let targets: Vec<&str> = lines.iter().filter_map(|l| l["target"].as_str()).collect();
    assert!(
        targets.iter().any(|t| t.starts_with("mechad")),
        "{targets:?}"
    );
    assert!(
        targets
            .iter()
            .any(|t| t.starts_with("mecha_mod") || t.starts_with("mecha_module")),
        "a module logged too: {targets:?}"
    );
}
