//! The systemd unit's side of a live upgrade, against the real mechad: the
//! unit (`deploy/systemd/mechad.service`) follows readiness and main-pid
//! notifications, and the daemon that takes over names itself the service's
//! main process before the old one exits, which is what keeps systemd from
//! taking the old daemon's exit for the end of the service.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::Duration;

use common::{wait_until, Daemon};

/// The notifications queued on `socket` now, without waiting.
fn queued(socket: &UnixDatagram) -> Vec<String> {
    socket.set_nonblocking(true).expect("non-blocking");
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    out
}

/// The unit asks for what a live upgrade needs, and mechad provides it: the
/// first daemon reports READY=1; after `mechactl daemon upgrade` the new one
/// (its child) has sent MAINPID=<its pid> by the time the old one has exited.
#[test]
fn the_new_daemon_is_the_main_process_before_the_old_one_exits() {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd/mechad.service");
    let unit = std::fs::read_to_string(&unit).expect("reading the unit");
    for setting in ["Type=notify", "NotifyAccess=all", "KillMode=mixed"] {
        assert!(
            unit.lines().any(|l| l.trim() == setting),
            "mechad.service lacks {setting}"
        );
    }

    // systemd's side: a datagram socket named by $NOTIFY_SOCKET.
    let notify_dir = tempfile::tempdir().expect("temp dir");
    let path = notify_dir.path().join("notify");
    let notify = UnixDatagram::bind(&path).expect("binding the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let mut d = Daemon::start_in(
        tempfile::tempdir().expect("temp dir"),
        None,
        vec![(
            "NOTIFY_SOCKET".into(),
            path.to_str().expect("UTF-8 temp path").into(),
        )],
    );
    let old = d.pid();
    let mut buf = [0u8; 4096];
    let n = notify
        .recv(&mut buf)
        .expect("READY=1 from the first daemon");
    assert_eq!(&buf[..n], b"READY=1");

    let out = d.mechactl(&["daemon", "upgrade"]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let new: u32 = text
        .rsplit("-> ")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no new pid in {text:?}"));
    let _reaper = common::Reaper(new);
    assert_ne!(new, old);

    // The old daemon exits once the new one confirmed the hand-over
    // (--after-handover exit, the default). By then systemd must already
    // have been told who the main process is.
    let child = d.child.as_mut().expect("the old daemon");
    wait_until(Duration::from_secs(60), "the old daemon to exit", || {
        child.try_wait().expect("waiting for mechad").is_some()
    });
    let told = queued(&notify);
    let main_pid = format!("MAINPID={new}");
    assert!(
        told.iter().any(|m| m.lines().any(|l| l == main_pid)),
        "the old daemon exited before the new one sent {main_pid}; queued: {told:?}"
    );
    assert!(common::alive(new), "the new daemon died with the old one");
    assert_eq!(d.client().status().expect("status").pid, new);
}
