//! Process lifecycle: durability across daemon restarts, module restart after
//! a crash, clean shutdown, and no orphaned modules.

mod common;

use std::time::Duration;

use common::{signal, wait_until, Daemon};
use mecha_client::SetOptions;

#[test]
fn redb_data_survives_a_daemon_restart() {
    let mut d = Daemon::start();
    let etag = d
        .client()
        .set("", "durable", b"yes".to_vec(), SetOptions::default())
        .unwrap();
    d.restart();
    let got = d
        .client()
        .get("", "durable")
        .unwrap()
        .expect("value survived");
    assert_eq!(got.value, b"yes");
    assert_eq!(got.etag, etag);
    // New ETags keep growing after the restart, so old ones are never reused.
    let next = d
        .client()
        .set("", "durable", b"again".to_vec(), SetOptions::default())
        .unwrap();
    assert!(next.parse::<u64>().unwrap() > etag.parse::<u64>().unwrap());
}

#[test]
fn a_killed_module_is_restarted_and_keeps_its_data() {
    let d = Daemon::start();
    let c = d.client();
    c.set("", "before", b"crash".to_vec(), SetOptions::default())
        .unwrap();
    let old = d.module_pid("state");
    signal(old, libc::SIGKILL);
    wait_until(
        Duration::from_secs(10),
        "the state module to come back",
        || {
            let status = c.status().unwrap();
            let m = &status.modules[0];
            m.state == "running" && m.pid != old && m.pid != 0 && m.restarts == 1
        },
    );
    // The same client connection keeps working; no reconnect needed.
    assert_eq!(c.get("", "before").unwrap().unwrap().value, b"crash");
}

#[test]
fn sigterm_stops_modules_and_removes_the_socket() {
    let mut d = Daemon::start();
    let module = d.module_pid("state");
    let status = d.stop();
    assert!(status.success(), "mechad exits 0 on SIGTERM: {status}");
    assert!(!d.socket.exists(), "the socket file is removed");
    wait_until(Duration::from_secs(5), "the module to exit", || {
        !std::path::Path::new(&format!("/proc/{module}")).exists()
    });
}

#[test]
fn sigkill_of_mechad_leaves_no_orphan_module() {
    let mut d = Daemon::start();
    let module = d.module_pid("state");
    let mut child = d.child.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    // The parent-death signal kills the module; it must not linger as an orphan.
    wait_until(Duration::from_secs(5), "the orphaned module to die", || {
        match std::fs::read_to_string(format!("/proc/{module}/stat")) {
            Err(_) => true,
            // A zombie awaiting reaping by init is dead too.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .is_some_and(|s| s.trim_start().starts_with('Z')),
        }
    });
}
