//! Locks through the real daemon: mutual exclusion among concurrent clients,
//! fencing tokens across daemon restarts and module crashes, expiry, owners,
//! validation, the raw wire shape, and mechactl's exit codes.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use common::{signal, wait_until, Daemon, Raw};
use mecha_abi::msg::{ExtendLockReply, TryLockReply, TryLockRequest, UnlockStatus};
use mecha_abi::{Header, Opcode, Status};

/// A daemon serving one durable lock store, `lockstore`, and nothing else.
const LOCK_ONLY: &str = "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: lockstore}\nspec: {type: lock.redb, version: v1, metadata: []}\n";

/// A lease that outlives every test.
const LONG: Duration = Duration::from_secs(600);

/// How long a test waits for something that should happen promptly; it
/// only bounds a failure.
const PATIENCE: Duration = Duration::from_secs(20);

fn start() -> Daemon {
    Daemon::start_with(Some(LOCK_ONLY))
}

/// The lock module's STATUS entry.
fn lock_module(d: &Daemon) -> mecha_client::ModuleStatus {
    d.client()
        .status()
        .expect("status")
        .modules
        .into_iter()
        .find(|m| m.name == "lock")
        .expect("the lock module is listed")
}

#[test]
fn only_one_of_ten_concurrent_clients_holds_the_lock_at_a_time() {
    const CLIENTS: usize = 10;
    const ROUNDS: usize = 5;
    let d = start();
    let holding = Arc::new(AtomicBool::new(false));
    // Incremented by a separate load and store, so that two holders at once
    // would lose updates even if the flag check missed them.
    let counter = Arc::new(AtomicU64::new(0));
    // Tokens in the order the critical sections ran, which is grant order.
    let tokens = Arc::new(Mutex::new(Vec::new()));
    let start_line = Arc::new(Barrier::new(CLIENTS));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let socket = d.socket.clone();
            let (holding, counter) = (Arc::clone(&holding), Arc::clone(&counter));
            let (tokens, start_line) = (Arc::clone(&tokens), Arc::clone(&start_line));
            std::thread::spawn(move || {
                let client = mecha_client::blocking::Client::connect(&socket).expect("connect");
                start_line.wait();
                for round in 0..ROUNDS {
                    let owner = format!("client-{i}-round-{round}");
                    let token = client
                        .try_lock("", "counter", &owner, LONG, Some(PATIENCE))
                        .expect("try_lock answers")
                        .expect("the lock is granted within the wait");
                    assert!(
                        !holding.swap(true, Ordering::SeqCst),
                        "{owner} got the lock while another client held it"
                    );
                    tokens.lock().expect("tokens").push(token);
                    let seen = counter.load(Ordering::SeqCst);
                    std::thread::yield_now();
                    counter.store(seen + 1, Ordering::SeqCst);
                    holding.store(false, Ordering::SeqCst);
                    assert_eq!(
                        client
                            .unlock("", "counter", &owner)
                            .expect("unlock answers"),
                        UnlockStatus::Success
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a client thread panicked");
    }
    assert_eq!(counter.load(Ordering::SeqCst), (CLIENTS * ROUNDS) as u64);
    let tokens = tokens.lock().expect("tokens");
    assert_eq!(tokens.len(), CLIENTS * ROUNDS);
    assert!(
        tokens.windows(2).all(|w| w[0] < w[1]),
        "fencing tokens are not strictly increasing in grant order: {tokens:?}"
    );
}

#[test]
fn an_expired_lock_is_granted_again_with_a_higher_token() {
    let d = start();
    let c = d.client();
    let ttl = Duration::from_millis(300);
    let first = c
        .try_lock("", "job", "alice", ttl, None)
        .expect("try_lock")
        .expect("granted");
    assert_eq!(
        c.try_lock("", "job", "bob", LONG, None).expect("try_lock"),
        None
    );
    // Waiting is woken by the lease's end; no sleep in the test.
    let second = c
        .try_lock("", "job", "bob", LONG, Some(PATIENCE))
        .expect("try_lock")
        .expect("granted once alice's lease passed");
    assert!(second > first, "token {second} after expiry <= {first}");
    assert_eq!(
        c.unlock("", "job", "alice").expect("unlock"),
        UnlockStatus::LockBelongsToOthers
    );
    assert_eq!(
        c.extend_lock("", "job", "alice", LONG).expect("extend"),
        ExtendLockReply {
            status: UnlockStatus::LockBelongsToOthers,
            fencing_token: 0
        }
    );
}

#[test]
fn only_the_owner_unlocks_or_extends() {
    let d = start();
    let c = d.client();
    let token = c
        .try_lock("lockstore", "doc", "alice", LONG, None)
        .expect("try_lock")
        .expect("granted");
    // The holder is not granted the lock a second time.
    assert_eq!(
        c.try_lock("", "doc", "alice", LONG, None)
            .expect("try_lock"),
        None
    );
    assert_eq!(
        c.unlock("", "doc", "mallory").expect("unlock"),
        UnlockStatus::LockBelongsToOthers
    );
    assert_eq!(
        c.extend_lock("", "doc", "alice", LONG).expect("extend"),
        ExtendLockReply {
            status: UnlockStatus::Success,
            fencing_token: token
        }
    );
    assert_eq!(
        c.unlock("", "doc", "alice").expect("unlock"),
        UnlockStatus::Success
    );
    assert_eq!(
        c.unlock("", "doc", "alice").expect("unlock"),
        UnlockStatus::LockDoesNotExist
    );
}

#[test]
fn bad_arguments_are_invalid() {
    let d = start();
    let c = d.client();
    let invalid = |result: Result<Option<u64>, mecha_client::Error>, what: &str| {
        let err = result.expect_err(what);
        assert_eq!(err.status(), Some(Status::InvalidArgument), "{what}: {err}");
        err.to_string()
    };
    invalid(c.try_lock("", "", "o", LONG, None), "an empty resource");
    invalid(c.try_lock("", "r", "", LONG, None), "an empty owner");
    invalid(c.try_lock("", "r", "o", Duration::ZERO, None), "a zero ttl");
    let message = invalid(c.try_lock("nope", "r", "o", LONG, None), "an unknown store");
    assert!(
        message.contains("nope"),
        "the message names the store: {message}"
    );
    let err = c
        .extend_lock("", "r", "o", Duration::ZERO)
        .expect_err("a zero extension");
    assert_eq!(err.status(), Some(Status::InvalidArgument), "{err}");
}

#[test]
fn raw_try_lock_frames_have_the_documented_shape() {
    let d = start();
    let (mut raw, _) = Raw::hello(&d.socket);
    let request = TryLockRequest {
        store: String::new(),
        resource: "raw".into(),
        owner: "o".into(),
        ttl_ms: 60_000,
        wait_ms: 0,
    };
    let payload = mecha_abi::encode(&request).expect("encode");
    let (status, body) = raw.call(Header::request(Opcode::LOCK_TRY_LOCK, 7), &payload);
    assert_eq!(status, Status::Ok, "{}", common::error_message(&body));
    // TryLockReply: bool acquired, then u64 LE fencing_token.
    assert_eq!(body.len(), 9);
    assert_eq!(body[0], 1);
    let reply: TryLockReply = mecha_abi::decode(&body).expect("decode");
    assert!(reply.acquired && reply.fencing_token > 0);
    let (status, body) = raw.call(Header::request(Opcode::LOCK_TRY_LOCK, 8), &payload);
    assert_eq!(status, Status::Ok);
    assert_eq!(
        body,
        [0, 0, 0, 0, 0, 0, 0, 0, 0],
        "not acquired: false and 0"
    );
    // Trailing bytes make the payload invalid.
    let mut long = payload.clone();
    long.push(0);
    let (status, _) = raw.call(Header::request(Opcode::LOCK_TRY_LOCK, 9), &long);
    assert_eq!(status, Status::InvalidArgument);
}

#[test]
fn fencing_tokens_keep_increasing_across_a_daemon_restart() {
    let mut d = start();
    let c = d.client();
    let held = c
        .try_lock("", "held", "alice", LONG, None)
        .expect("try_lock")
        .expect("granted");
    let released = c
        .try_lock("", "r", "alice", LONG, None)
        .expect("try_lock")
        .expect("granted");
    assert_eq!(
        c.unlock("", "r", "alice").expect("unlock"),
        UnlockStatus::Success
    );
    drop(c);

    d.restart();
    let c = d.client();
    let after = c
        .try_lock("", "r", "bob", LONG, None)
        .expect("try_lock")
        .expect("granted");
    assert!(
        after > released.max(held),
        "token {after} after the restart does not exceed {released} and {held} from before"
    );
    // A lease granted before the restart is still held, with its token.
    assert_eq!(
        c.try_lock("", "held", "bob", LONG, None).expect("try_lock"),
        None
    );
    assert_eq!(
        c.extend_lock("", "held", "alice", LONG)
            .expect("extend")
            .fencing_token,
        held
    );
}

#[test]
fn fencing_tokens_keep_increasing_across_a_module_kill() {
    let d = start();
    let c = d.client();
    let held = c
        .try_lock("", "held", "alice", LONG, None)
        .expect("try_lock")
        .expect("granted");
    let released = c
        .try_lock("", "r", "alice", LONG, None)
        .expect("try_lock")
        .expect("granted");
    assert_eq!(
        c.unlock("", "r", "alice").expect("unlock"),
        UnlockStatus::Success
    );

    let old = d.module_pid("lock");
    assert_ne!(old, 0, "the lock module runs");
    signal(old, libc::SIGKILL);
    wait_until(PATIENCE, "a new lock module instance", || {
        let m = lock_module(&d);
        m.state == "running" && m.pid != old && m.pid != 0
    });

    let after = c
        .try_lock("", "r", "bob", LONG, None)
        .expect("try_lock")
        .expect("granted");
    assert!(
        after > released.max(held),
        "token {after} after the kill does not exceed {released} and {held} from before"
    );
    assert_eq!(
        c.try_lock("", "held", "bob", LONG, None).expect("try_lock"),
        None
    );
    assert_eq!(
        c.unlock("", "held", "alice").expect("unlock"),
        UnlockStatus::Success
    );
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn mechactl_lock_commands_and_exit_codes() {
    let d = start();
    let acquire = d.mechactl(&["lock", "acquire", "res", "--owner", "alice", "--ttl", "600"]);
    assert!(acquire.status.success(), "{acquire:?}");
    let token: u64 = stdout(&acquire).trim().parse().expect("a token on stdout");
    assert!(token > 0);

    let busy = d.mechactl(&["lock", "acquire", "res", "--owner", "bob", "--ttl", "5"]);
    assert_eq!(
        busy.status.code(),
        Some(4),
        "not acquired exits 4: {busy:?}"
    );
    assert!(stdout(&busy).is_empty());
    assert!(stderr(&busy).contains("held"), "{busy:?}");

    let waited = d.mechactl(&[
        "lock", "acquire", "res", "--owner", "bob", "--ttl", "5", "--wait", "0.05",
    ]);
    assert_eq!(waited.status.code(), Some(4), "{waited:?}");

    let stolen = d.mechactl(&["lock", "release", "res", "--owner", "bob"]);
    assert_eq!(
        stolen.status.code(),
        Some(5),
        "another owner's lock exits 5: {stolen:?}"
    );
    assert!(stderr(&stolen).contains("bob"), "{stolen:?}");

    let extend = d.mechactl(&["lock", "extend", "res", "--owner", "alice", "--ttl", "600"]);
    assert!(extend.status.success(), "{extend:?}");
    assert_eq!(
        stdout(&extend).trim(),
        token.to_string(),
        "extend keeps the token"
    );

    let release = d.mechactl(&["lock", "release", "res", "--owner", "alice"]);
    assert!(release.status.success(), "{release:?}");
    assert_eq!(stdout(&release), "released\n");

    let again = d.mechactl(&["lock", "release", "res", "--owner", "alice"]);
    assert_eq!(
        again.status.code(),
        Some(3),
        "a missing lock exits 3: {again:?}"
    );
    assert!(stderr(&again).contains("does not exist"), "{again:?}");
    let extend = d.mechactl(&["lock", "extend", "res", "--owner", "alice", "--ttl", "1"]);
    assert_eq!(extend.status.code(), Some(3), "{extend:?}");

    let next = d.mechactl(&[
        "lock",
        "acquire",
        "res",
        "--owner",
        "bob",
        "--ttl",
        "1",
        "--store",
        "lockstore",
    ]);
    assert!(next.status.success(), "{next:?}");
    let next: u64 = stdout(&next).trim().parse().expect("a token on stdout");
    assert!(next > token);

    let zero = d.mechactl(&["lock", "acquire", "res", "--owner", "bob", "--ttl", "0"]);
    assert_eq!(
        zero.status.code(),
        Some(2),
        "a zero ttl is a usage error: {zero:?}"
    );
}
