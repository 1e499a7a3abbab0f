//! The sequencer through the real daemon, its module process and the Rust
//! client: ids that never go backwards across daemon restarts, module kills
//! and hot restarts, no duplicates under concurrency, request validation,
//! tenant scoping, and `mechactl seq next`.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{mechactl_as_nobody, open_to_nobody, require_root, signal, wait_until, Daemon};
use mecha_client::Status;

/// One durable sequencer with 10-id segments, so a few ids already cross
/// segment ends and a restart visibly skips the rest of a segment.
const REDB_CONFIG: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: ids}
spec:
  type: sequencer.redb
  version: v1
  metadata:
  - name: segmentSize
    value: 10
";

fn assert_strictly_increasing(ids: &[u64]) {
    for pair in ids.windows(2) {
        assert!(pair[0] < pair[1], "ids go backwards or repeat: {ids:?}");
    }
}

/// Waits until STATUS shows the sequencer running as a process other than
/// `old`, and returns its pid.
fn wait_for_new_sequencer(d: &Daemon, old: u32) -> u32 {
    let mut pid = 0;
    wait_until(
        Duration::from_secs(20),
        "the sequencer module to come back",
        || {
            let Ok(status) = d.client().status() else {
                return false;
            };
            status
                .modules
                .iter()
                .find(|m| m.name == "sequencer")
                .is_some_and(|m| {
                    pid = m.pid;
                    m.state == "running" && m.pid != 0 && m.pid != old
                })
        },
    );
    pid
}

#[test]
fn ids_keep_increasing_across_a_daemon_restart() {
    let mut d = Daemon::start_with(Some(REDB_CONFIG));
    let c = d.client();
    assert_eq!(c.next_ids("", "order", 3).unwrap(), 1..4);
    assert_eq!(c.next_id("ids", "order").unwrap(), 4);
    drop(c);
    d.restart();
    let after = d.client().next_id("", "order").unwrap();
    // The first instance reserved ids up to 10 and handed out 4 of them; the
    // new one starts above the persisted reservation.
    assert_eq!(after, 11);
}

#[test]
fn ids_keep_increasing_across_a_module_kill() {
    let d = Daemon::start_with(Some(REDB_CONFIG));
    let c = d.client();
    let mut before: Vec<u64> = c.next_ids("", "k", 13).unwrap().collect();
    before.push(c.next_id("", "k").unwrap());
    let old = d.module_pid("sequencer");
    assert_ne!(old, 0, "the sequencer module runs");
    signal(old, libc::SIGKILL);
    wait_for_new_sequencer(&d, old);
    let after = c.next_id("", "k").unwrap();
    let highest = *before.last().unwrap();
    assert!(
        after > highest,
        "id {after} after kill -9 is not above {highest}"
    );
}

#[test]
fn concurrent_clients_get_no_duplicates() {
    const CLIENTS: usize = 10;
    const IDS_EACH: usize = 200;
    let d = Daemon::start_with(Some(REDB_CONFIG));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|t| {
            let socket = d.socket.clone();
            std::thread::spawn(move || {
                let c = mecha_client::blocking::Client::connect(&socket).unwrap();
                let mut ids = Vec::with_capacity(IDS_EACH);
                let mut round = 0;
                while ids.len() < IDS_EACH {
                    round += 1;
                    // Alternate single ids with batches of 2..=6 (cut to what
                    // is still missing), so batches straddle segment ends.
                    if round % 2 == 0 {
                        ids.push(c.next_id("", "shared").unwrap());
                    } else {
                        let want = (2 + (t + round) % 5).min(IDS_EACH - ids.len());
                        let count = u32::try_from(want).unwrap();
                        let batch = c.next_ids("", "shared", count).unwrap();
                        assert_eq!(batch.end - batch.start, u64::from(count));
                        ids.extend(batch);
                    }
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        let ids = thread.join().expect("client thread panicked");
        assert_eq!(ids.len(), IDS_EACH);
        // One client's calls are sequential, so its ids are ordered.
        assert_strictly_increasing(&ids);
        all.extend(ids);
    }
    let unique: HashSet<u64> = all.iter().copied().collect();
    assert_eq!(
        unique.len(),
        CLIENTS * IDS_EACH,
        "some id was handed out twice"
    );
}

#[test]
fn ids_keep_increasing_across_hot_restarts_under_load() {
    let d = Daemon::start_with(Some(REDB_CONFIG));
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let load = {
        let socket = d.socket.clone();
        let stop = Arc::clone(&stop);
        let served = Arc::clone(&served);
        std::thread::spawn(move || {
            let c = mecha_client::blocking::Client::connect(&socket).unwrap();
            let mut ids = Vec::new();
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match c.next_id("", "hot") {
                    Ok(id) => {
                        ids.push(id);
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (ids, errors)
        })
    };
    // Each restart happens while the load is being served, and the load is
    // served again afterwards, so every handoff happens under load.
    let wait_for_load = || {
        let before = served.load(Ordering::Relaxed);
        wait_until(Duration::from_secs(20), "the load to be served", || {
            served.load(Ordering::Relaxed) > before + 5
        });
    };
    let admin = d.client();
    for _ in 0..2 {
        wait_for_load();
        let old = d.module_pid("sequencer");
        let new = admin
            .module_restart("sequencer", None)
            .expect("hot restart");
        assert_ne!(new, old);
        // The new instance can serve only once the old one has drained and
        // released the file; waiting for that keeps the next restart (or the
        // end of the load) from overtaking this handoff.
        admin.next_id("", "probe").unwrap();
    }
    wait_for_load();
    stop.store(true, Ordering::Relaxed);
    let (ids, errors) = load.join().expect("load thread panicked");
    assert!(
        errors.is_empty(),
        "hot restarts failed requests: {errors:?}"
    );
    assert_strictly_increasing(&ids);
}

#[test]
fn bad_requests_are_invalid_arguments() {
    let d = Daemon::start_with(Some(REDB_CONFIG));
    let c = d.client();
    let invalid = |result: Result<std::ops::Range<u64>, mecha_client::Error>, mentions: &str| {
        let e = result.expect_err("the request is refused");
        assert_eq!(e.status(), Some(Status::InvalidArgument), "{e}");
        assert!(
            e.to_string().contains(mentions),
            "{e} mentions {mentions:?}"
        );
    };
    invalid(c.next_ids("", "k", 0), "count");
    invalid(c.next_ids("", "k", 1_000_001), "count");
    invalid(c.next_ids("", "", 1), "key");
    invalid(c.next_ids("no-such-store", "k", 1), "no-such-store");
    // Nothing was consumed by the refused requests.
    assert_eq!(c.next_id("", "k").unwrap(), 1);
}

#[test]
fn mechactl_seq_next_prints_one_id_per_line() {
    let d = Daemon::start_with(Some(REDB_CONFIG));
    let lines = |args: &[&str]| -> Vec<u64> {
        let out = d.mechactl(args);
        assert!(
            out.status.success(),
            "mechactl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("UTF-8 output")
            .lines()
            .map(|line| line.parse().expect("one number per line"))
            .collect()
    };
    let first = lines(&["seq", "next", "k", "--count", "3"]);
    assert_eq!(first.len(), 3);
    assert_strictly_increasing(&first);
    assert_eq!(first[2] - first[0], 2, "a batch is contiguous");
    let next = lines(&["seq", "next", "k", "--store", "ids"]);
    assert_eq!(next.len(), 1);
    assert!(next[0] > first[2]);
    // A count of 0 is refused by the daemon, and mechactl says so.
    let out = d.mechactl(&["seq", "next", "k", "--count", "0"]);
    assert!(!out.status.success());
}

#[test]
fn tenants_have_separate_sequences() {
    require_root();
    let d = Daemon::start_with(Some(REDB_CONFIG));
    open_to_nobody(&d);
    let root = d.client();
    assert_eq!(root.next_ids("", "shared-name", 5).unwrap(), 1..6);
    let out = mechactl_as_nobody(&d, &["seq", "next", "shared-name"]);
    assert!(
        out.status.success(),
        "nobody's seq next: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "1\n");
    assert_eq!(root.next_id("", "shared-name").unwrap(), 6);
}
