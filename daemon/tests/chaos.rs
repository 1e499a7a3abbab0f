//! Chaos: random modules are killed every 300 ms for a minute while an
//! application writes. Afterwards every module serves again within the
//! restart backoff's cap without anyone running `mechactl`, and every write
//! that was acknowledged reads back — and again after mechad itself is
//! killed with SIGKILL and started on the same data.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{signal, wait_until, Daemon};
use mecha_client::SetOptions;

/// How long modules are killed for.
const CHAOS: Duration = Duration::from_secs(60);
/// Time between two kills.
const EVERY: Duration = Duration::from_millis(300);
/// The longest restart backoff (30 s, with up to 25 % jitter) and a start.
const RECOVERY: Duration = Duration::from_secs(45);

/// A small pseudo-random sequence (xorshift), seeded from the clock: which
/// module dies next needs no more than that.
struct Dice(u64);

impl Dice {
    fn roll(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

#[test]
fn modules_killed_at_random_for_a_minute_all_come_back_and_acknowledged_writes_survive() {
    let mut d = Daemon::start();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let client = d.client();
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut acked = Vec::new();
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("chaos-{i}");
                // Errors are expected while the state module restarts; only
                // what was acknowledged must survive.
                if client
                    .set("", &key, i.to_le_bytes().to_vec(), SetOptions::default())
                    .is_ok()
                {
                    acked.push((key, i));
                }
                i += 1;
            }
            acked
        })
    };
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    let mut dice = Dice(seed);
    let mut kills = 0;
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < CHAOS {
        next += EVERY;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
        let modules = match d.client().status() {
            Ok(s) => s.modules,
            Err(_) => continue,
        };
        let running: Vec<u32> = modules.iter().map(|m| m.pid).filter(|p| *p != 0).collect();
        if running.is_empty() {
            continue;
        }
        signal(running[dice.roll(running.len())], libc::SIGKILL);
        kills += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let acked = writer.join().expect("the writer thread");
    eprintln!("{kills} kills, {} acknowledged writes", acked.len());
    // A check that the chaos happened at all, not a timing: most ticks find
    // a module to kill, some find every one of them restarting.
    assert!(kills >= 20, "only {kills} kills in {CHAOS:?}");
    assert!(!acked.is_empty(), "no write was acknowledged");

    // The embedded default's Dapr personality is idle until a Dapr caller
    // comes (socket activation); nothing killed it, and it serves when asked.
    wait_until(RECOVERY, "every module to serve again by itself", || {
        d.client().status().is_ok_and(|s| {
            s.modules
                .iter()
                .all(|m| m.state == "running" || (m.name == "dapr" && m.state == "idle"))
        })
    });
    let check = |d: &Daemon, when: &str| {
        let c = d.client();
        for (key, value) in &acked {
            let got = c
                .get("", key)
                .unwrap_or_else(|e| panic!("{when}: reading {key}: {e}"))
                .unwrap_or_else(|| panic!("{when}: acknowledged key {key} lost"));
            assert_eq!(got.value, value.to_le_bytes(), "{when}: {key}");
        }
    };
    check(&d, "after the chaos");
    d.kill_and_restart();
    check(&d, "after mechad was killed and restarted");
}
