//! Secrets through the real daemon: file, directory and environment stores,
//! allow lists, the Rust client, `mechactl secret`, and a check that no
//! secret value ever reaches the daemon's or the module's log output.

mod common;

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use common::{wait_until, Daemon};
use mecha_client::Status;

/// Every secret value the tests store. The log check searches for each.
const VALUES: &[&str] = &[
    "val-db-password-3b9f",
    "val-db-user-a11c",
    "val-api-key-77d0",
    "val-dir-password-5e21",
    "val-dir-username-c0de",
    "val-dir-hidden-9999",
    "val-env-token-81c2",
    "val-rotated-4242",
];

/// The environment variable prefix of the `environment` store.
const ENV_PREFIX: &str = "MECHA_DAEMON_TEST_SECRET_";

/// The tenant the daemon gives this test process: `uid:<euid>`.
fn my_tenant() -> String {
    // /proc/self belongs to this process's effective uid.
    let uid = std::fs::metadata("/proc/self")
        .expect("reading /proc/self")
        .uid();
    format!("uid:{uid}")
}

/// One component document.
fn component(name: &str, kind: &str, metadata: &[(&str, &str)]) -> String {
    let mut doc = format!(
        "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\nspec:\n  type: {kind}\n  version: v1\n  metadata:\n"
    );
    for (field, value) in metadata {
        doc.push_str(&format!("  - name: {field}\n    value: {value:?}\n"));
    }
    doc
}

/// The secret sources, in a directory of their own, and the configuration
/// that serves them.
struct Sources {
    dir: tempfile::TempDir,
}

impl Sources {
    fn create() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(
            dir.path().join("secrets.json"),
            r#"{"db": {"password": "val-db-password-3b9f", "user": "val-db-user-a11c"},
                "api-key": "val-api-key-77d0"}"#,
        )
        .expect("writing the secrets file");
        let mounted = dir.path().join("mounted");
        std::fs::create_dir(&mounted).expect("creating the secret directory");
        std::fs::write(mounted.join("password"), "val-dir-password-5e21").expect("write");
        std::fs::write(mounted.join("username"), "val-dir-username-c0de\n").expect("write");
        std::fs::write(mounted.join(".hidden"), "val-dir-hidden-9999").expect("write");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("temporary paths are UTF-8")
            .to_owned()
    }

    /// The configuration: the file store first (the default), then the
    /// others.
    fn config(&self) -> String {
        let file = self.path("secrets.json");
        let mounted = self.path("mounted");
        // Stores serve no tenant unless they name some: these name this
        // test's own tenant.
        let me = my_tenant();
        [
            component(
                "files",
                "secretstores.local.file",
                &[("secretsFile", &file), ("allowedTenants", &me)],
            ),
            component(
                "mounted",
                "secretstores.local.dir",
                &[
                    ("secretsDir", &mounted),
                    ("deniedSecrets", "password"),
                    ("allowedTenants", &me),
                ],
            ),
            component(
                "grouped",
                "secretstores.local.file",
                &[
                    ("secretsFile", &file),
                    ("multiValued", "true"),
                    ("allowedTenants", &me),
                ],
            ),
            component(
                "restricted",
                "secretstores.local.file",
                &[("secretsFile", &file), ("allowedTenants", "team-x")],
            ),
            component(
                "environment",
                "secretstores.local.env",
                &[("prefix", ENV_PREFIX), ("allowedTenants", &me)],
            ),
        ]
        .concat()
    }
}

/// A daemon whose standard error (which module processes inherit) is
/// captured, at the most verbose log level.
struct Captured {
    daemon: Daemon,
    stderr: mpsc::Receiver<Vec<u8>>,
    _sources: Sources,
}

impl Captured {
    /// Starts mechad on the sources' configuration. The harness starts it
    /// with inherited output, so that instance is stopped and the same
    /// command line is started again with standard error piped.
    fn start() -> Self {
        let sources = Sources::create();
        let mut daemon = Daemon::start_with(Some(&sources.config()));
        let status = daemon.stop();
        assert!(status.success(), "mechad exited with {status}");
        let mut child = daemon
            .command()
            .env("MECHA_LOG", "trace")
            .env(format!("{ENV_PREFIX}API_TOKEN"), "val-env-token-81c2")
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning mechad");
        let mut pipe = child.stderr.take().expect("stderr is piped");
        let (tx, stderr) = mpsc::channel();
        // Drained all along, so a chatty daemon never blocks on a full pipe;
        // the bytes are handed over at EOF, when mechad and every module
        // (which share the pipe) have exited.
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
        let socket = daemon.socket.clone();
        wait_until(Duration::from_secs(20), "mechad to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mechad exited during start-up: {status}");
            }
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        daemon.child = Some(child);
        Self {
            daemon,
            stderr,
            _sources: sources,
        }
    }

    /// Stops mechad and asserts that nothing it or its modules wrote to
    /// standard error contains a secret value. Returns that output.
    fn stop_and_check_logs(mut self) -> String {
        let status = self.daemon.stop();
        assert!(status.success(), "mechad exited with {status}");
        let bytes = self
            .stderr
            .recv_timeout(Duration::from_secs(20))
            .expect("standard error reaches EOF once mechad and its modules exit");
        let text = String::from_utf8_lossy(&bytes).into_owned();
        // The capture works: the module's own start-up line is in it.
        assert!(
            text.contains("module ready") && text.contains("secrets"),
            "the module's log lines were captured: {text}"
        );
        for value in VALUES {
            assert!(
                !text.contains(value),
                "secret value {value:?} appears in the logs:\n{text}"
            );
        }
        text
    }
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn secrets_are_served_through_the_client_and_never_logged() {
    let d = Captured::start();
    let c = d.daemon.client();

    // The file store is the default; nested keys are flattened with ":".
    let pw = c
        .get_secret("", "db:password")
        .expect("get from the default store");
    assert_eq!(
        pw,
        [("db:password".to_owned(), "val-db-password-3b9f".to_owned())]
    );
    assert_eq!(c.get_secret("files", "api-key").expect("get").len(), 1);
    let all = c.bulk_get_secrets("files").expect("bulk get");
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["api-key", "db:password", "db:user"]);

    // multiValued: the top-level key is one secret of several pairs.
    let db = c
        .get_secret("grouped", "db")
        .expect("get a multi-valued secret");
    assert_eq!(
        db,
        [
            ("password".to_owned(), "val-db-password-3b9f".to_owned()),
            ("user".to_owned(), "val-db-user-a11c".to_owned()),
        ]
    );

    // The directory store: content verbatim, dotfiles skipped, and its
    // deniedSecrets rule applied to get and bulk get alike.
    let user = c
        .get_secret("mounted", "username")
        .expect("get a file secret");
    assert_eq!(
        user,
        [("username".to_owned(), "val-dir-username-c0de\n".to_owned())]
    );
    let denied = c.get_secret("mounted", "password").unwrap_err();
    assert_eq!(denied.status(), Some(Status::PermissionDenied), "{denied}");
    assert!(denied.to_string().contains("deniedSecrets"), "{denied}");
    let listed = c.bulk_get_secrets("mounted").expect("bulk get");
    let names: Vec<&str> = listed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["username"]);
    let hidden = c.get_secret("mounted", ".hidden").unwrap_err();
    assert!(hidden.is_not_found(), "{hidden}");

    // The environment store sees the daemon's environment, prefix stripped.
    let token = c
        .get_secret("environment", "API_TOKEN")
        .expect("get an env secret");
    assert_eq!(
        token,
        [("API_TOKEN".to_owned(), "val-env-token-81c2".to_owned())]
    );

    // Errors name what is involved, never a value.
    let missing = c.get_secret("files", "no-such-secret").unwrap_err();
    assert!(missing.is_not_found(), "{missing}");
    assert!(missing.to_string().contains("no-such-secret"), "{missing}");
    let empty = c.get_secret("files", "").unwrap_err();
    assert_eq!(empty.status(), Some(Status::InvalidArgument), "{empty}");
    let unknown = c.get_secret("vault", "x").unwrap_err();
    assert_eq!(unknown.status(), Some(Status::InvalidArgument), "{unknown}");
    assert!(unknown.to_string().contains("vault"), "{unknown}");

    // A store that admits only team-x refuses this process's tenant, for
    // reads of present and missing secrets and for bulk reads.
    let tenant = my_tenant();
    for result in [
        c.get_secret("restricted", "api-key").map(|_| ()),
        c.get_secret("restricted", "no-such-secret").map(|_| ()),
        c.bulk_get_secrets("restricted").map(|_| ()),
    ] {
        let e = result.unwrap_err();
        assert_eq!(e.status(), Some(Status::PermissionDenied), "{e}");
        let message = e.to_string();
        assert!(
            message.contains("allowedTenants") && message.contains(&tenant),
            "{message}"
        );
        for value in VALUES {
            assert!(!message.contains(value), "{message}");
        }
    }

    // A changed file is served without restarting anything.
    std::fs::write(
        Path::new(&d._sources.path("secrets.json")),
        r#"{"api-key": "val-rotated-4242"}"#,
    )
    .expect("rewriting the secrets file");
    let rotated = c
        .get_secret("files", "api-key")
        .expect("get after the change");
    assert_eq!(
        rotated,
        [("api-key".to_owned(), "val-rotated-4242".to_owned())]
    );
    assert!(c
        .get_secret("files", "db:password")
        .unwrap_err()
        .is_not_found());

    drop(c);
    d.stop_and_check_logs();
}

#[test]
fn mechactl_secret_get_prints_values_and_exits_3_when_missing() {
    let d = Captured::start();
    let daemon = &d.daemon;

    let single = daemon.mechactl(&["secret", "get", "db:password"]);
    assert!(single.status.success(), "{single:?}");
    assert_eq!(stdout(&single), "val-db-password-3b9f\n");

    // A value ending in a newline is printed as it is, without a second one.
    let verbatim = daemon.mechactl(&["secret", "get", "username", "--store", "mounted"]);
    assert!(verbatim.status.success(), "{verbatim:?}");
    assert_eq!(stdout(&verbatim), "val-dir-username-c0de\n");

    let multi = daemon.mechactl(&["secret", "get", "db", "--store", "grouped"]);
    assert!(multi.status.success(), "{multi:?}");
    assert_eq!(
        stdout(&multi),
        "password=val-db-password-3b9f\nuser=val-db-user-a11c\n"
    );

    let json = daemon.mechactl(&["secret", "get", "db", "--store", "grouped", "--json"]);
    assert!(json.status.success(), "{json:?}");
    let doc: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON output");
    assert_eq!(
        doc,
        serde_json::json!({"password": "val-db-password-3b9f", "user": "val-db-user-a11c"})
    );

    let missing = daemon.mechactl(&["secret", "get", "no-such-secret"]);
    assert_eq!(
        missing.status.code(),
        Some(3),
        "a missing secret exits 3: {missing:?}"
    );
    assert!(stdout(&missing).is_empty());
    assert!(stderr(&missing).contains("not found"), "{missing:?}");
    assert!(stderr(&missing).contains("no-such-secret"), "{missing:?}");

    let refused = daemon.mechactl(&["secret", "get", "api-key", "--store", "restricted"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        stderr(&refused).contains("PERMISSION_DENIED"),
        "{refused:?}"
    );
    assert!(stdout(&refused).is_empty());

    // `list` prints names only.
    let list = daemon.mechactl(&["secret", "list", "--store", "mounted"]);
    assert!(list.status.success(), "{list:?}");
    assert_eq!(stdout(&list), "username\n");
    let list = daemon.mechactl(&["secret", "list", "--json"]);
    let names: serde_json::Value = serde_json::from_slice(&list.stdout).expect("JSON output");
    assert_eq!(
        names,
        serde_json::json!(["api-key", "db:password", "db:user"])
    );

    d.stop_and_check_logs();
}

/// A component field written as Dapr's `secretKeyRef` is filled from a secret
/// store of the same configuration before the component's module starts: here
/// the state store's file path comes from a secret directory, so the file
/// appearing at that path proves the module received the secret's value.
#[test]
fn secret_key_refs_fill_component_fields_at_load() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = dir.path().join("mounted");
    std::fs::create_dir(&secrets).expect("secret dir");
    let wanted = dir.path().join("from-secret.redb");
    std::fs::write(
        secrets.join("state-path"),
        wanted.to_string_lossy().as_bytes(),
    )
    .expect("write secret");
    let store = component(
        "mounted",
        "secretstores.local.dir",
        &[("secretsDir", &secrets.to_string_lossy())],
    );
    let state = "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.redb\n  metadata:\n  - name: path\n    secretKeyRef:\n      name: state-path\nauth:\n  secretStore: mounted\n";
    let d = Daemon::start_in(dir, Some(&format!("{store}{state}")), Vec::new());
    let c = d.client();
    c.set("statestore", "k", b"v".to_vec(), Default::default())
        .expect("set");
    assert!(wanted.exists(), "the redb file is where the secret said");
}

/// A reference to a secret that does not exist stops mechad at start with a
/// message naming the file, component, field and secret.
#[test]
fn a_missing_secret_stops_the_start_with_a_clear_message() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secrets = dir.path().join("mounted");
    std::fs::create_dir(&secrets).expect("secret dir");
    let store = component(
        "mounted",
        "secretstores.local.dir",
        &[("secretsDir", &secrets.to_string_lossy())],
    );
    let state = "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: statestore\nspec:\n  type: state.memory\n  metadata:\n  - name: redisPassword\n    secretKeyRef:\n      name: absent\n      key: password\n";
    let config = dir.path().join("config.yaml");
    std::fs::write(&config, format!("{store}{state}")).expect("write config");
    let out = std::process::Command::new(common::bin_dir().join("mechad"))
        .arg("--socket")
        .arg(dir.path().join("s.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--module-dir")
        .arg(common::bin_dir())
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run mechad");
    assert!(!out.status.success(), "mechad must refuse to start");
    let err = stderr(&out);
    assert!(
        err.contains("component \"statestore\", spec.metadata \"redisPassword\": secretKeyRef (secret \"absent\", key \"password\")")
            && err.contains("has no such secret"),
        "{err}"
    );
}
