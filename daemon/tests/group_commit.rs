//! Group commit under SIGKILL: sixteen connections write distinct keys to
//! the default redb state store at once, so its writer commits them in
//! shared batches; the state module and then mechad itself are killed with
//! SIGKILL in the middle of that load. Every write that was acknowledged
//! must read back with its value once mechad is started again on the same
//! data: an answer is sent only after the durable commit that contains it.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{signal, wait_until, Daemon};
use mecha_client::SetOptions;

/// Concurrent connections, each with one write in flight.
const WRITERS: usize = 16;
/// Acknowledged writes to wait for before each kill, so that each kill
/// lands in the middle of a running load (a count, not a time).
const BETWEEN_KILLS: usize = 400;
/// Generous bounds on how long the load may take to make that progress.
const PROGRESS: Duration = Duration::from_secs(60);

/// The value written under `key`, so a read-back can tell one write from
/// another.
fn value_of(key: &str) -> Vec<u8> {
    format!("value of {key}").into_bytes()
}

#[test]
fn acknowledged_writes_survive_sigkill_of_the_state_module_and_of_mechad_under_load() {
    let mut d = Daemon::start();
    let stop = Arc::new(AtomicBool::new(false));
    let acked_count = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = d.client();
            let (stop, acked_count, acked) = (
                Arc::clone(&stop),
                Arc::clone(&acked_count),
                Arc::clone(&acked),
            );
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("gc-{w}-{i}");
                    i += 1;
                    // Errors are expected while the state module restarts and
                    // once mechad is gone; only what was acknowledged counts.
                    if client
                        .set("", &key, value_of(&key), SetOptions::default())
                        .is_ok()
                    {
                        acked.lock().expect("the acknowledged list").push(key);
                        acked_count.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // A failing call returns at once; do not spin flat out
                        // while the module restarts.
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
            })
        })
        .collect();
    let progress = |what: &str| {
        let target = acked_count.load(Ordering::Relaxed) + BETWEEN_KILLS;
        wait_until(PROGRESS, what, || {
            acked_count.load(Ordering::Relaxed) >= target
        });
    };

    progress("the writers to get going");
    let state = d.module_pid("state");
    signal(state, libc::SIGKILL);
    progress("writes to be acknowledged again after the state module was killed");
    // The writers keep writing while mechad (and with it, by the parent-death
    // signal, every module) is killed; it then starts on the same data.
    d.kill_and_restart();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.join().expect("a writer thread");
    }

    let acked = acked.lock().expect("the acknowledged list");
    assert!(
        acked.len() >= 2 * BETWEEN_KILLS,
        "only {} acknowledged writes",
        acked.len()
    );
    let client = d.client();
    for key in acked.iter() {
        let got = client
            .get("", key)
            .unwrap_or_else(|e| panic!("reading {key}: {e}"))
            .unwrap_or_else(|| panic!("acknowledged key {key} lost"));
        assert_eq!(got.value, value_of(key), "{key}");
    }
    eprintln!("{} acknowledged writes read back", acked.len());
}
