//! A module crash costs reads only latency: requests that are safe to send
//! twice (`Opcode::is_replayable`, SPEC §5.1) and were in flight when the
//! state module died are sent to its next instance and answered OK, while a
//! write in flight is still answered UNAVAILABLE. Clients here never retry,
//! so every error the daemon answers is seen.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{signal, wait_until, Daemon};
use mecha_client::{blocking::Client, Error, RetryPolicy, SetOptions, Status};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a probe socket")
        .port()
}

/// A client of `d` that never retries.
fn no_retries(d: &Daemon) -> Client {
    let mut c = d.client();
    c.set_retries(RetryPolicy::disabled());
    c
}

/// The requests in flight to module `name`, from the dashboard's view.
fn in_flight(addr: SocketAddr, name: &str) -> i64 {
    let Ok(mut stream) = TcpStream::connect(addr) else {
        return -1;
    };
    let request = format!("GET /api/modules HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    let mut answer = String::new();
    if stream.write_all(request.as_bytes()).is_err() || stream.read_to_string(&mut answer).is_err()
    {
        return -1;
    }
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let modules: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    modules
        .as_array()
        .and_then(|all| all.iter().find(|m| m["name"] == name))
        .and_then(|m| m["in_flight"].as_i64())
        .unwrap_or(-1)
}

#[test]
fn a_read_in_flight_at_a_crash_is_answered_by_the_next_instance() {
    let port = free_port();
    let env = vec![("MECHA_HTTP".to_string(), format!("127.0.0.1:{port}"))];
    let d = Daemon::start_in(tempfile::tempdir().expect("temp dir"), None, env);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let setup = d.client();
    setup
        .set("", "kept", b"value".to_vec(), SetOptions::default())
        .expect("set before the crash");

    // Freeze the module so both requests are surely in flight when it dies.
    let pid = d.module_pid("state");
    signal(pid, libc::SIGSTOP);
    let reader = {
        let c = no_retries(&d);
        std::thread::spawn(move || c.get("", "kept"))
    };
    let writer = {
        let c = no_retries(&d);
        std::thread::spawn(move || c.set("", "lost", b"x".to_vec(), SetOptions::default()))
    };
    wait_until(
        Duration::from_secs(10),
        "both requests to be in flight",
        || in_flight(addr, "state") == 2,
    );
    signal(pid, libc::SIGKILL);

    let read = reader.join().expect("reader thread");
    let entry = read
        .expect("the read is replayed, not failed")
        .expect("found");
    assert_eq!(entry.value, b"value");
    match writer.join().expect("writer thread") {
        Err(Error::Status {
            status: Status::Unavailable,
            ..
        }) => {}
        other => panic!("a write in flight at the crash is UNAVAILABLE, got {other:?}"),
    }
    assert_ne!(d.module_pid("state"), pid);
}

/// A state store, and a restart intensity that never makes the module back
/// off: a run longer than the one-second window resets the restart delay.
const MANY_RESTARTS: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.redb, version: v1, metadata: []}
---
apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: mecha}
spec: {maxRestarts: 1000, restartWindowSecs: 1}
";

#[test]
fn reads_see_no_error_across_repeated_kills() {
    let d = Daemon::start_with(Some(MANY_RESTARTS));
    d.client()
        .set("", "hot", b"v".to_vec(), SetOptions::default())
        .expect("set");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (c, stop, done) = (no_retries(&d), Arc::clone(&stop), Arc::clone(&done));
            std::thread::spawn(move || -> Result<(), Error> {
                while !stop.load(Ordering::Relaxed) {
                    let got = c.get("", "hot")?;
                    assert_eq!(got.map(|e| e.value), Some(b"v".to_vec()));
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            })
        })
        .collect();
    for _ in 0..10 {
        let pid = d.module_pid("state");
        // Each instance runs past the restart window, so the next start is
        // immediate (a crash-looping module's backoff is a separate matter,
        // `supervision.rs`), and each kill lands under load.
        std::thread::sleep(Duration::from_millis(1100));
        let before = done.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(10), "reads to flow", || {
            done.load(Ordering::Relaxed) > before + 20
        });
        signal(pid, libc::SIGKILL);
        wait_until(Duration::from_secs(10), "a new instance", || {
            let now = d.module_pid("state");
            now != 0 && now != pid
        });
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader thread").expect("no read failed");
    }
}
