//! Hostile tenants and bindings, under the real `mechad`: a tenant (uid
//! `nobody`) trying to leave a local storage binding's `rootPath`, one not
//! in `allowedTenants`, an HTTP target answering a huge body or never
//! answering, and a tenant that never acknowledges its input events.
//! Connecting as a second uid needs root, so these tests must run as root.

mod bindings_support;
mod common;

#[path = "../../modules/bindings/tests/common/http_server.rs"]
mod http_server;

use std::io::Read;

use bindings_support::{cron, Acker, Subscriber};
use common::{component, open_to_nobody, require_root, Daemon, NOBODY};
use mecha_abi::Status;

fn daemon(config: &str) -> Daemon {
    require_root();
    let d = Daemon::start_with(Some(config));
    open_to_nobody(&d);
    d
}

#[test]
fn local_storage_names_cannot_leave_the_root_path() {
    let d = daemon(&component(
        "files",
        "bindings.localstorage",
        &[
            ("rootPath", "files".to_owned()),
            ("allowedTenants", "*".to_owned()),
        ],
    ));
    let mut nobody = Acker::open(&d, Some(NOBODY));
    // The module creates its root at start; the operator (root) plants
    // links in it pointing outside.
    nobody
        .invoke("files", "list", &[], 0)
        .expect("the binding serves");
    let root = d.data_dir.join("bindings/files");
    let outside = d.dir.path().join("outside");
    std::fs::create_dir(&outside).expect("mkdir");
    std::fs::write(outside.join("secret"), b"secret").expect("write");
    std::os::unix::fs::symlink(outside.join("secret"), root.join("link")).expect("symlink");
    std::os::unix::fs::symlink(&outside, root.join("door")).expect("symlink");
    for name in [
        "../../outside/secret",
        "/etc/passwd",
        "link",
        "door/secret",
        "door/new",
    ] {
        for op in ["get", "create", "delete"] {
            let refused = nobody
                .invoke("files", op, &[("fileName", name)], 0)
                .expect_err(name);
            assert_eq!(
                refused.0,
                Status::InvalidArgument,
                "{op} {name}: {}",
                refused.1
            );
        }
    }
    assert_eq!(
        std::fs::read(outside.join("secret")).expect("kept"),
        b"secret"
    );
    assert!(!outside.join("new").exists());
}

#[test]
fn a_tenant_outside_allowed_tenants_is_denied_before_anything_is_touched() {
    let files = component(
        "files",
        "bindings.localstorage",
        &[
            ("rootPath", "files".to_owned()),
            ("allowedTenants", "uid:0".to_owned()),
        ],
    );
    let ticks = cron(
        "ticks",
        "@every 1s",
        &[("allowedTenants", "uid:0".to_owned())],
    );
    let d = daemon(&format!("{files}---\n{ticks}"));
    let mut nobody = Acker::open(&d, Some(NOBODY));
    let refused = nobody
        .invoke("files", "create", &[("fileName", "planted")], 0)
        .expect_err("nobody is not allowed");
    assert_eq!(refused.0, Status::PermissionDenied, "{}", refused.1);
    assert!(refused.1.contains("uid:65534"), "{}", refused.1);
    assert!(!d.data_dir.join("bindings/files/planted").exists());
    let (status, payload, _) = Subscriber::try_open(&d, Some(NOBODY), "ticks", 0, 0);
    assert_eq!(
        status,
        Status::PermissionDenied,
        "{}",
        common::error_message(&payload)
    );
    // The allowed tenant is served.
    Acker::open(&d, None)
        .invoke("files", "create", &[("fileName", "mine")], 0)
        .expect("uid:0 is allowed");
}

/// A binding that reaches outside mecha, written without `allowedTenants`
/// (as a file copied from Dapr's documentation is), serves no tenant: not
/// the attacker, and not root either, until the operator names who may use
/// it. Before, such a component handed every uid on the node the operator's
/// directory, database or HTTP service.
#[test]
fn a_binding_without_allowed_tenants_serves_nobody() {
    let files = component(
        "files",
        "bindings.localstorage",
        &[("rootPath", "files".to_owned())],
    );
    let d = daemon(&files);
    for who in [Some(NOBODY), None] {
        let refused = Acker::open(&d, who)
            .invoke("files", "create", &[("fileName", "planted")], 0)
            .expect_err("nobody is listed");
        assert_eq!(refused.0, Status::PermissionDenied, "{}", refused.1);
        assert!(
            refused.1.contains("lists no allowedTenants"),
            "{}",
            refused.1
        );
    }
    assert!(!d.data_dir.join("bindings/files/planted").exists());
}

#[test]
fn a_huge_http_response_is_refused_and_the_module_keeps_serving() {
    let addr = http_server::http_server();
    let d = daemon(&component(
        "web",
        "bindings.http",
        &[
            ("url", format!("http://{addr}")),
            ("allowedTenants", "*".to_owned()),
        ],
    ));
    let mut nobody = Acker::open(&d, Some(NOBODY));
    for path in ["big", "chunked-big"] {
        let refused = nobody
            .invoke("web", "get", &[("path", path)], 0)
            .expect_err(path);
        assert_eq!(
            refused.0,
            Status::ResourceExhausted,
            "{path}: {}",
            refused.1
        );
    }
    let pid = d.module_pid("bindings");
    let echoed = nobody
        .invoke("web", "get", &[("path", "echo")], 0)
        .expect("still serving");
    assert!(String::from_utf8_lossy(&echoed.data).starts_with("GET /echo"));
    assert_eq!(d.module_pid("bindings"), pid, "the module did not restart");
}

#[test]
fn a_slow_http_target_meets_the_deadline_and_holds_up_nobody_else() {
    let addr = http_server::http_server();
    let d = daemon(&component(
        "web",
        "bindings.http",
        &[
            ("url", format!("http://{addr}")),
            ("allowedTenants", "*".to_owned()),
        ],
    ));
    let mut slow = Acker::open(&d, Some(NOBODY));
    let mut other = Acker::open(&d, None);
    let id = slow.send_invoke("web", &[("path", "slow")], 3000);
    // Answered while the slow request waits for its target: its answer is
    // not there yet when this one's is.
    other
        .invoke("web", "get", &[("path", "echo")], 0)
        .expect("another request is answered");
    slow.stream().set_nonblocking(true).expect("nonblocking");
    let mut probe = [0u8; 1];
    let pending = slow.stream().read(&mut probe);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the slow request was answered first: {pending:?}"
    );
    slow.stream().set_nonblocking(false).expect("blocking");
    assert_eq!(slow.answer(), (id, Status::DeadlineExceeded));
}

#[test]
fn a_tenant_that_never_acknowledges_does_not_stop_another_tenants_ticks() {
    let d = daemon(&cron(
        "ticks",
        "@every 1s",
        &[("maxMessages", "2".to_owned())],
    ));
    let mut stuck = Subscriber::open(&d, Some(NOBODY), "ticks", 1, 0);
    let held = stuck.next();
    let mut fine = Subscriber::open(&d, None, "ticks", 0, 0);
    let mut acks = Acker::open(&d, None);
    let mut ticks = Vec::new();
    for _ in 0..5 {
        let e = fine.next();
        acks.ack("ticks", &e, false);
        ticks.push(e.tick());
    }
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "the other tenant missed ticks: {ticks:?}"
    );
    drop(held);
}
