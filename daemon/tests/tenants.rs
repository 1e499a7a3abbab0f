//! Tenant isolation by kernel-verified uid (SPEC.md §6.10), tenant rules from
//! the Configuration document, and the socket file mode. These tests switch
//! uid to `nobody` (65534) for mechactl, so they must run as root.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::{mechactl_as_nobody, open_to_nobody, require_root, Daemon, Raw, NOBODY};

const TEAM_CONFIG: &str = "\
apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: mecha}
spec:
  tenants:
  - name: team-a
    uids: [0, 65534]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.memory, version: v1, metadata: []}
";

const MODE_0600_CONFIG: &str = "\
apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: mecha}
spec:
  socketMode: \"0600\"
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.memory, version: v1, metadata: []}
";

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn describe(out: &Output) -> String {
    format!(
        "exit {:?}, stdout {:?}, stderr {:?}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// The tenant nobody's `status --json` reports.
fn nobody_tenant(d: &Daemon) -> String {
    let out = mechactl_as_nobody(d, &["status", "--json"]);
    assert!(
        out.status.success(),
        "status --json as nobody: {}",
        describe(&out)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("status --json is JSON");
    doc["tenant"].as_str().expect("a tenant string").to_string()
}

#[test]
fn different_uids_cannot_see_each_others_keys() {
    require_root();
    let d = Daemon::start();
    open_to_nobody(&d);
    let root = d.client();
    assert_eq!(root.tenant(), "uid:0");
    let root_etag = root
        .set(
            "",
            "shared-name",
            b"root-value".to_vec(),
            Default::default(),
        )
        .expect("root sets shared-name");

    // nobody does not see root's key.
    let out = mechactl_as_nobody(&d, &["state", "get", "shared-name"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "nobody's get must be not-found: {}",
        describe(&out)
    );
    assert!(
        out.stdout.is_empty(),
        "nothing of root's value leaks: {}",
        describe(&out)
    );

    // nobody writes the same name into its own tenant.
    let out = mechactl_as_nobody(&d, &["state", "set", "shared-name", "nobody-value"]);
    assert!(out.status.success(), "nobody's set: {}", describe(&out));
    let out = mechactl_as_nobody(&d, &["state", "get", "shared-name"]);
    assert!(out.status.success(), "nobody's get: {}", describe(&out));
    assert_eq!(text(&out.stdout), "nobody-value\n");

    // root's entry is untouched: same value, same ETag.
    let entry = root
        .get("", "shared-name")
        .unwrap()
        .expect("root's key is still there");
    assert_eq!(entry.value, b"root-value");
    assert_eq!(
        entry.etag, root_etag,
        "nobody's write did not touch root's entry"
    );

    // nobody deleting the name removes only its own entry.
    let out = mechactl_as_nobody(&d, &["state", "delete", "shared-name"]);
    assert!(out.status.success(), "nobody's delete: {}", describe(&out));
    let out = mechactl_as_nobody(&d, &["state", "get", "shared-name"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));
    let entry = root
        .get("", "shared-name")
        .unwrap()
        .expect("root's key survives");
    assert_eq!(entry.value, b"root-value");

    // The tenant comes from the kernel's peer credentials.
    assert_eq!(nobody_tenant(&d), format!("uid:{NOBODY}"));
    let (_, hello) = Raw::hello(&d.socket);
    assert_eq!(hello.tenant, "uid:0");
}

#[test]
fn configured_tenant_rule_maps_uids_to_one_tenant() {
    require_root();
    let d = Daemon::start_with(Some(TEAM_CONFIG));
    open_to_nobody(&d);
    let (_, hello) = Raw::hello(&d.socket);
    assert_eq!(hello.tenant, "team-a", "uid 0 maps to team-a");
    let root = d.client();
    assert_eq!(root.tenant(), "team-a");
    root.set(
        "",
        "team-key",
        b"written-by-root".to_vec(),
        Default::default(),
    )
    .unwrap();

    // nobody is in the same tenant: it reads what root wrote ...
    let out = mechactl_as_nobody(&d, &["state", "get", "team-key"]);
    assert!(
        out.status.success(),
        "nobody reads team-key: {}",
        describe(&out)
    );
    assert_eq!(text(&out.stdout), "written-by-root\n");
    // ... and root reads what nobody writes.
    let out = mechactl_as_nobody(&d, &["state", "set", "from-nobody", "hi-root"]);
    assert!(out.status.success(), "{}", describe(&out));
    let entry = root
        .get("", "from-nobody")
        .unwrap()
        .expect("root sees nobody's key");
    assert_eq!(entry.value, b"hi-root");

    assert_eq!(nobody_tenant(&d), "team-a");
}

#[test]
fn socket_mode_defaults_to_0666() {
    let d = Daemon::start();
    let mode = std::fs::metadata(&d.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o666,
        "default socket mode is 0666, got {:o}",
        mode & 0o777
    );
}

#[test]
fn configured_socket_mode_0600_keeps_other_uids_out() {
    require_root();
    let d = Daemon::start_with(Some(MODE_0600_CONFIG));
    let mode = std::fs::metadata(&d.socket)
        .expect("socket exists")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "socketMode \"0600\" applies, got {:o}",
        mode & 0o777
    );

    // The directory is open, so only the socket's own mode keeps nobody out.
    open_to_nobody(&d);
    let out = mechactl_as_nobody(&d, &["status"]);
    assert!(
        !out.status.success(),
        "nobody must not connect: {}",
        describe(&out)
    );
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&d.socket.display().to_string()) && stderr.contains("connect"),
        "the error names the socket: {stderr}"
    );
    // The owner still connects.
    d.client().ping().expect("root connects to its 0600 socket");
}

const DENY_BY_DEFAULT: &str = "\
apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: mecha}
spec:
  defaultTenant: deny
  tenants:
  - name: ops
    uids: [0]
  - name: readers
    uids: [65534]
    allow: [STATE_GET, state_bulk_get]
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.memory, version: v1, metadata: []}
";

#[test]
fn allow_lists_and_a_deny_default_are_enforced() {
    require_root();
    let d = Daemon::start_with(Some(DENY_BY_DEFAULT));
    open_to_nobody(&d);
    d.client()
        .set("", "k", b"v".to_vec(), mecha_client::SetOptions::default())
        .unwrap();
    // nobody's tenant may read but not write.
    let read = mechactl_as_nobody(&d, &["state", "get", "k"]);
    assert_eq!(read.status.code(), Some(3), "{}", describe(&read));
    let write = mechactl_as_nobody(&d, &["state", "set", "k", "x"]);
    assert!(!write.status.success());
    let stderr = text(&write.stderr);
    assert!(
        stderr.contains("PERMISSION_DENIED") && stderr.contains("readers"),
        "{stderr}"
    );
    // A peer that no rule matches is refused at connect.
    let mut cmd = d.mechactl_cmd(&["status"]);
    std::os::unix::process::CommandExt::uid(&mut cmd, 4242);
    let out = cmd.output().unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success() && stderr.contains("deny"), "{stderr}");
}

#[test]
fn modules_run_confined() {
    require_root();
    let d = Daemon::start_with(Some(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: m}\nspec:\n  modules:\n    state:\n      user: {uid: 65534, gid: 65534}\n      openFiles: 256\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: statestore}\nspec: {type: state.redb, version: v1, metadata: []}\n",
    ));
    let c = d.client();
    c.set("", "k", b"v".to_vec(), mecha_client::SetOptions::default())
        .unwrap();
    assert_eq!(c.get("", "k").unwrap().unwrap().value, b"v");
    let pid = d.module_pid("state");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(field("NoNewPrivs:"), "1");
    assert!(field("Uid:").starts_with("65534"), "{}", field("Uid:"));
    assert!(field("Gid:").starts_with("65534"), "{}", field("Gid:"));
    assert_eq!(field("Groups:"), "");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let nofile = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    assert!(nofile.contains("256"), "{nofile}");
    let dir = d.data_dir.join("state");
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "data dirs are private"
    );
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 65534);
    // Modules that keep no user setting still get no_new_privs, and every
    // module of the embedded default runs under its seccomp filter (mode 2).
    let d2 = Daemon::start();
    for module in [
        "state",
        "pubsub",
        "lock",
        "sequencer",
        "config",
        "secrets",
        "invoke",
    ] {
        let pid = d2.module_pid(module);
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{module}");
        assert!(
            status.contains("Seccomp:\t2"),
            "{module} is filtered: {status}"
        );
    }
}

#[test]
fn tenants_by_socket_and_by_pod() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let extra = dir.path().join("payments.sock");
    // A fabricated /proc: this test process looks like a container in pod P.
    let pod = "0f7e3a52-4b1c-4d2e-9a8b-123456789abc";
    let proc_root = dir.path().join("proc");
    let me = proc_root.join(std::process::id().to_string());
    std::fs::create_dir_all(&me).unwrap();
    std::fs::write(
        me.join("cgroup"),
        format!("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1.scope\n", pod.replace('-', "_")),
    )
    .unwrap();
    let pods = dir.path().join("pods.yaml");
    std::fs::write(
        &pods,
        format!("- {{uid: {pod}, namespace: shop, name: web-0}}\n"),
    )
    .unwrap();
    let config = format!(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {{name: m}}\nspec:\n  podsFile: {}\n  sockets:\n  - path: {}\n    mode: \"0600\"\n  tenants:\n  - name: payments\n    sockets: [{}]\n  - name: shop-web\n    pods: [shop/web-0]\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\nspec: {{type: state.memory, version: v1, metadata: []}}\n",
        pods.display(),
        extra.display(),
        extra.display()
    );
    let d = Daemon::start_in(
        dir,
        Some(&config),
        vec![("MECHA_PROC_ROOT".into(), proc_root.display().to_string())],
    );
    // The same process is tenant "payments" through the extra socket...
    let (_, hello) = Raw::hello(&extra);
    assert_eq!(hello.tenant, "payments");
    assert_eq!(
        std::fs::metadata(&extra).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // ...and, through the main socket, the tenant its pod maps to.
    let (_, hello) = Raw::hello(&d.socket);
    assert_eq!(hello.tenant, "shop-web");
    // Shutdown removes every socket.
    let mut d = d;
    assert!(d.stop().success());
    assert!(!extra.exists() && !d.socket.exists());
}

/// A component shared by named tenants (`sharedTenants`): its members see
/// one namespace — what one writes, the other reads — while a tenant outside
/// the list is refused PERMISSION_DENIED naming the rule, and components that
/// are not shared keep every tenant apart as before.
#[test]
fn a_shared_component_is_one_namespace_for_its_members_only() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let outsider_socket = dir.path().join("outsider.sock");
    let config = format!(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {{name: m}}\nspec:\n  sockets:\n  - path: {outsider}\n  tenants:\n  - name: outsider\n    sockets: [{outsider}]\n  - name: shop\n    uids: [0]\n  - name: billing\n    uids: [{NOBODY}]\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: private}}\nspec: {{type: state.memory, version: v1, metadata: []}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: orders}}\nspec:\n  type: state.memory\n  version: v1\n  metadata:\n  - name: sharedTenants\n    value: shop, billing\n",
        outsider = outsider_socket.display()
    );
    let d = Daemon::start_in(dir, Some(&config), Vec::new());
    open_to_nobody(&d);
    let shop = d.client();
    assert_eq!(shop.tenant(), "shop");
    shop.set("orders", "o-1", b"paid".to_vec(), Default::default())
        .expect("a member writes");
    shop.set("private", "o-1", b"mine".to_vec(), Default::default())
        .expect("a private write");

    // billing (nobody) reads shop's write in the shared component...
    let out = mechactl_as_nobody(&d, &["state", "get", "o-1", "--store", "orders"]);
    assert!(
        out.status.success(),
        "billing reads the shared key: {}",
        describe(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "paid");
    // ...and writes there for shop to read.
    let out = mechactl_as_nobody(
        &d,
        &["state", "set", "o-2", "from billing", "--store", "orders"],
    );
    assert!(out.status.success(), "billing writes: {}", describe(&out));
    assert_eq!(
        shop.get("orders", "o-2").unwrap().unwrap().value,
        b"from billing"
    );
    // The private component stays per tenant.
    let out = mechactl_as_nobody(&d, &["state", "get", "o-1", "--store", "private"]);
    assert_eq!(out.status.code(), Some(3), "{}", describe(&out));

    // A tenant outside the list is refused, with the rule named.
    let outsider = mecha_client::blocking::Client::connect(&outsider_socket).unwrap();
    assert_eq!(outsider.tenant(), "outsider");
    let err = outsider.get("orders", "o-1").unwrap_err();
    assert_eq!(
        err.status(),
        Some(mecha_client::Status::PermissionDenied),
        "{err}"
    );
    assert!(err.to_string().contains("sharedTenants"), "{err}");
    assert!(
        outsider.get("private", "o-1").unwrap().is_none(),
        "its own private scope"
    );
}

/// The test helper that connects as another uid really is seen as that uid.
#[test]
fn a_connection_made_as_another_uid_is_that_uids_tenant() {
    require_root();
    let d = Daemon::start();
    let other = d.client_as(NOBODY);
    assert_eq!(other.tenant(), format!("uid:{NOBODY}"));
    assert_eq!(d.client().tenant(), "uid:0");
}
