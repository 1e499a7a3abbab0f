//! The bindings module under the real `mechad`, spoken to in raw frames
//! over the socket: cron ticks delivered once to every tenant (a second
//! tenant is the uid `nobody`, so that test needs root), with competing
//! subscribers inside a tenant, nacks and ack deadlines
//! redelivering, no tick lost or doubled across a kill -9 or a hot restart
//! of the module,
//! and an input binding keeping its module eager under `moduleStart: lazy`.
//! The hostile cases (a second uid) are in `hostile_bindings.rs`.

mod bindings_support;
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use bindings_support::{cron, parse_time, Acker, Event, Subscriber};
use common::{component, signal, wait_until, Daemon, CONFIGURATION};

#[test]
fn cron_ticks_reach_a_tenant_once_and_its_subscribers_compete() {
    let d = Daemon::start_with(Some(&cron("ticks", "@every 1s", &[])));
    let mut first = Subscriber::open(&d, None, "ticks", 1, 0);
    let mut second = Subscriber::open(&d, None, "ticks", 1, 0);
    let mut acks = Acker::open(&d, None);
    // `first` holds its event unacknowledged, so with one event in flight
    // at most it can take no other: the next ticks go to `second`.
    let held = first.next();
    let mut taken = Vec::new();
    for _ in 0..2 {
        let e = second.next();
        assert_ne!(e.offset, held.offset);
        acks.ack("ticks", &e, false);
        taken.push(e);
    }
    acks.ack("ticks", &held, false);
    taken.push(held);
    // Each tick once: distinct offsets, distinct times, one per second.
    taken.sort_by_key(|e| e.offset);
    let times: Vec<u64> = taken.iter().map(Event::tick).collect();
    let mut unique = times.clone();
    unique.dedup();
    assert_eq!(times, unique, "a tick was delivered twice: {times:?}");
    assert_eq!(times.len(), 3);
    assert!(times.windows(2).all(|w| w[1] > w[0]), "{times:?}");
}

/// Two tenants (this uid and `nobody`; needs root) each receive every tick,
/// once: their sequences of tick times over the same span are the same,
/// consecutive seconds, with no repeat.
#[test]
fn two_tenants_each_receive_every_tick_once() {
    common::require_root();
    let d = Daemon::start_with(Some(&cron("ticks", "@every 1s", &[])));
    common::open_to_nobody(&d);
    let mut ticks = Vec::new();
    let mut subs = [
        (
            Subscriber::open(&d, None, "ticks", 0, 0),
            Acker::open(&d, None),
        ),
        (
            Subscriber::open(&d, Some(common::NOBODY), "ticks", 0, 0),
            Acker::open(&d, Some(common::NOBODY)),
        ),
    ];
    for (sub, acks) in &mut subs {
        let mut mine = Vec::new();
        for _ in 0..5 {
            let e = sub.next();
            assert_eq!(e.attempt, 1, "a first delivery");
            acks.ack("ticks", &e, false);
            mine.push(e.tick());
        }
        assert!(
            mine.windows(2).all(|w| w[1] == w[0] + 1),
            "a tick lost or repeated: {mine:?}"
        );
        ticks.push(mine);
    }
    // The second tenant subscribed at most a tick later than the first, so
    // at least four ticks are in both spans, and there they agree.
    let from = ticks[0][0].max(ticks[1][0]);
    let to = ticks[0][4].min(ticks[1][4]);
    let span = |t: &Vec<u64>| -> Vec<u64> {
        t.iter()
            .copied()
            .filter(|x| (from..=to).contains(x))
            .collect()
    };
    assert!(to >= from + 3, "the spans barely overlap: {ticks:?}");
    assert_eq!(span(&ticks[0]), span(&ticks[1]));
}

#[test]
fn a_nack_or_a_passed_ack_deadline_delivers_a_tick_again() {
    let d = Daemon::start_with(Some(&cron("ticks", "@every 1s", &[])));
    let mut sub = Subscriber::open(&d, None, "ticks", 1, 500);
    let mut acks = Acker::open(&d, None);
    let e = sub.next();
    assert_eq!(e.attempt, 1);
    assert_eq!(acks.ack("ticks", &e, true), 1, "the nack applies");
    let again = sub.next();
    assert_eq!(
        (again.offset, again.attempt, again.time()),
        (e.offset, 2, e.time())
    );
    // Not acknowledged: delivered again once its 500 ms deadline passes.
    let third = sub.next();
    assert_eq!((third.offset, third.attempt), (e.offset, 3));
    assert_eq!(acks.ack("ticks", &third, false), 1);
    assert_eq!(acks.ack("ticks", &third, false), 0, "acknowledged already");
}

/// Kills the bindings module with SIGKILL three times, wherever it is
/// (between ticks or in the middle of one's fan-out), and checks what the
/// tenant received across the kills (see [`no_tick_lost_or_doubled`]).
#[test]
fn kill_9_of_the_module_loses_and_doubles_no_tick() {
    no_tick_lost_or_doubled(|d| {
        let pid = d.module_pid("bindings");
        signal(pid, libc::SIGKILL);
        wait_until(Duration::from_secs(20), "the module to restart", || {
            let status = d.client().status().expect("status");
            status
                .modules
                .iter()
                .any(|m| m.name == "bindings" && m.state == "running" && m.pid != pid)
        });
    });
}

/// Hot-restarts the bindings module three times: the new instance opens
/// the ledger and the event files only once the old one released them, so
/// the two never both fire a tick.
#[test]
fn hot_restarts_of_the_module_lose_and_double_no_tick() {
    no_tick_lost_or_doubled(|d| d.restart_module("bindings"));
}

/// Reads ticks (acknowledging them) around three `disrupt`ions of the
/// module, subscribing again after each, and checks: every stored tick
/// delivered (offsets without a gap), none twice (each offset one tick,
/// times strictly increasing), and after each restart the ticks going on.
fn no_tick_lost_or_doubled(disrupt: impl Fn(&Daemon)) {
    let d = Daemon::start_with(Some(&cron("ticks", "@every 1s", &[])));
    let mut seen: BTreeMap<u64, String> = BTreeMap::new();
    for round in 0..4 {
        let mut sub = Subscriber::open(&d, None, "ticks", 0, 0);
        let mut acks = Acker::open(&d, None);
        for _ in 0..2 {
            let e = sub.next();
            if let Some(time) = seen.insert(e.offset, e.time().to_owned()) {
                // A redelivery after the restart: the same tick again.
                assert_eq!(time, e.time(), "offset {} changed its tick", e.offset);
            }
            acks.ack("ticks", &e, false);
        }
        if round < 3 {
            disrupt(&d);
        }
    }
    let offsets: Vec<u64> = seen.keys().copied().collect();
    let first = offsets[0];
    assert_eq!(
        offsets,
        (first..first + offsets.len() as u64).collect::<Vec<_>>(),
        "a stored tick was never delivered"
    );
    let ticks: Vec<u64> = seen.values().map(|t| parse_time(t)).collect();
    assert!(
        ticks.windows(2).all(|w| w[1] > w[0]),
        "a tick was stored twice, or out of order: {seen:?}"
    );
}

#[test]
fn an_input_binding_keeps_its_module_eager_under_lazy_start() {
    let lazy = format!(
        "{}\n---\n{CONFIGURATION}  moduleStart: lazy\n",
        cron("ticks", "@every 1s", &[])
    );
    let d = Daemon::start_with(Some(&lazy));
    let status = d.client().status().expect("status");
    let bindings = status
        .modules
        .iter()
        .find(|m| m.name == "bindings")
        .expect("the bindings module");
    assert_eq!(bindings.state, "running");
    let forced = format!("{lazy}  modules:\n    bindings:\n      start: lazy\n");
    let err = common::start_fails(&forced);
    assert!(err.contains("input binding"), "{err}");

    // An output binding alone may be lazy.
    let http = component(
        "web",
        "bindings.http",
        &[("url", "http://127.0.0.1:1".to_owned())],
    );
    let d = Daemon::start_with(Some(&format!(
        "{http}---\n{CONFIGURATION}  moduleStart: lazy\n"
    )));
    let status = d.client().status().expect("status");
    let bindings = status
        .modules
        .iter()
        .find(|m| m.name == "bindings")
        .expect("the bindings module");
    assert_eq!(bindings.state, "idle");
}

#[test]
fn times_parse_as_seconds_since_the_epoch() {
    assert_eq!(parse_time("1970-01-01T00:00:00Z"), 0);
    assert_eq!(parse_time("2026-12-07T21:05:00Z"), 1_796_677_500);
    assert_eq!(parse_time("2000-02-29T00:00:01Z"), 951_782_401);
}

/// `deploy/config/examples/bindings.yaml` loads as it is: its bindings
/// open (the HTTP target need not exist: nothing connects before a
/// request), and its cron binding keeps the module running.
#[test]
fn the_example_component_file_loads() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/config/examples/bindings.yaml");
    let text = std::fs::read_to_string(&path).expect("the example file");
    let d = Daemon::start_with(Some(&text));
    let status = d.client().status().expect("status");
    let bindings = status
        .modules
        .iter()
        .find(|m| m.name == "bindings")
        .expect("the bindings module");
    assert_eq!(bindings.state, "running");
}
