//! Tests of the client's retry loop against an in-process fake daemon.
//!
//! The fake is a test double of the network peer only: it speaks the real
//! frames (`mecha_wire::FrameReader` in, `mecha_abi::encode_frame` out) on a
//! real Unix socket and answers from a script, so these tests exercise the
//! client's own retry logic — which requests are resent, how often, with what
//! deadline — in a way a real daemon cannot be made to misbehave on demand.
//! Tests against the real daemon live in `daemon/tests`.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ErrorBody, HelloReply, SetReply, StateEntry};
use mecha_abi::{Header, Opcode, Status, MAX_FRAME_CAP, VERSION};
use mecha_wire::FrameReader;
use parking_lot::Mutex;
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use crate::{Client, Error, RetryPolicy, SetOptions};

/// What the fake does with the `n`-th (1-based) non-HELLO request.
enum Action {
    /// Answer with this status and payload.
    Reply(Status, Vec<u8>),
    /// Drop the connection without answering.
    Close,
}

type Script = dyn Fn(u32, &Header) -> Action + Send + Sync;

/// A fake daemon on a temporary socket; it records every non-HELLO request.
struct Fake {
    path: PathBuf,
    seen: Arc<Mutex<Vec<Header>>>,
}

impl Fake {
    /// Binds a fresh socket and serves every connection with `script`.
    fn start(script: impl Fn(u32, &Header) -> Action + Send + Sync + 'static) -> Fake {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "mecha-client-test-{}-{}.sock",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind the fake socket");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let counter = Arc::new(AtomicU32::new(0));
        let recorded = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(
                    stream,
                    Arc::clone(&script),
                    Arc::clone(&counter),
                    Arc::clone(&recorded),
                ));
            }
        });
        Fake { path, seen }
    }

    /// How many non-HELLO requests the fake has received.
    fn attempts(&self) -> usize {
        self.seen.lock().len()
    }

    /// The `deadline_ms` of every non-HELLO request, in arrival order.
    fn deadlines(&self) -> Vec<u32> {
        self.seen.lock().iter().map(|h| h.deadline_ms).collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn serve(
    stream: tokio::net::UnixStream,
    script: Arc<Script>,
    counter: Arc<AtomicU32>,
    seen: Arc<Mutex<Vec<Header>>>,
) {
    let (rd, mut wr) = stream.into_split();
    let mut reader = FrameReader::new(rd, MAX_FRAME_CAP);
    while let Ok(Some((header, _payload))) = reader.next().await {
        let (status, body) = if header.opcode == Opcode::HELLO {
            let reply = HelloReply {
                version: VERSION,
                daemon_version: "fake".into(),
                tenant: "uid:test".into(),
                max_frame: 1 << 20,
            };
            (Status::Ok, encode(&reply))
        } else {
            seen.lock().push(header);
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            match script(n, &header) {
                Action::Reply(status, body) => (status, body),
                Action::Close => return,
            }
        };
        let frame = mecha_abi::encode_frame(header.response(status), &body).expect("frame");
        if wr.write_all(&frame).await.is_err() {
            return;
        }
    }
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    mecha_abi::encode(value).expect("encode")
}

fn unavailable() -> Action {
    let body = ErrorBody {
        message: "module state is restarting".into(),
    };
    Action::Reply(Status::Unavailable, encode(&body))
}

fn entry() -> Action {
    let e = StateEntry {
        value: b"apples".to_vec(),
        etag: "7".into(),
    };
    Action::Reply(Status::Ok, encode(&e))
}

fn set_ok() -> Action {
    Action::Reply(Status::Ok, encode(&SetReply { etag: "8".into() }))
}

fn assert_unavailable(err: &Error) {
    match err {
        Error::Status { status, message } => {
            assert_eq!(*status, Status::Unavailable);
            assert_eq!(message, "module state is restarting");
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_is_retried_until_it_succeeds() {
    const FAILURES: u32 = 3;
    let fake = Fake::start(|n, _| {
        if n <= FAILURES {
            unavailable()
        } else {
            entry()
        }
    });
    let client = Client::connect(&fake.path).await.expect("connect");
    let got = client.get("", "cart").await.expect("get succeeds");
    assert_eq!(got.map(|e| e.value), Some(b"apples".to_vec()));
    assert_eq!(fake.attempts(), FAILURES as usize + 1);
    // Each attempt carries the time left, never more than the call's timeout.
    let deadlines = fake.deadlines();
    assert!(
        deadlines.iter().all(|d| (1..=5000).contains(d)),
        "{deadlines:?}"
    );
    assert!(deadlines.windows(2).all(|w| w[1] <= w[0]), "{deadlines:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_set_is_not_retried_by_default() {
    let fake = Fake::start(|n, _| if n == 1 { unavailable() } else { set_ok() });
    let client = Client::connect(&fake.path).await.expect("connect");
    let err = client
        .set("", "cart", b"x".to_vec(), SetOptions::default())
        .await
        .expect_err("UNAVAILABLE is returned");
    assert_unavailable(&err);
    assert_eq!(fake.attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconditional_set_is_retried_when_the_caller_opts_in() {
    let fake = Fake::start(|n, _| if n == 1 { unavailable() } else { set_ok() });
    let client = Client::connect(&fake.path).await.expect("connect");
    let client = client.with_retries(RetryPolicy {
        retry_non_idempotent: true,
        ..RetryPolicy::default()
    });
    let etag = client
        .set("", "cart", b"x".to_vec(), SetOptions::default())
        .await
        .expect("set succeeds on the second attempt");
    assert_eq!(etag, "8");
    assert_eq!(fake.attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_set_is_retried_by_default() {
    let fake = Fake::start(|n, _| if n == 1 { unavailable() } else { set_ok() });
    let client = Client::connect(&fake.path).await.expect("connect");
    let options = SetOptions {
        etag: Some("7".into()),
        ttl: None,
    };
    let etag = client
        .set("", "cart", b"x".to_vec(), options)
        .await
        .expect("set succeeds on the second attempt");
    assert_eq!(etag, "8");
    assert_eq!(fake.attempts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_the_deadline_with_the_last_error() {
    let fake = Fake::start(|_, _| unavailable());
    let client = Client::connect(&fake.path)
        .await
        .expect("connect")
        .with_timeout(Duration::from_millis(300));
    let started = Instant::now();
    let err = client.get("", "cart").await.expect_err("never succeeds");
    let elapsed = started.elapsed();
    assert_unavailable(&err);
    assert!(fake.attempts() > 1, "only {} attempt(s)", fake.attempts());
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    assert!(fake.deadlines().iter().all(|&d| d <= 300));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_attempts_bounds_the_retries() {
    let fake = Fake::start(|_, _| unavailable());
    let client = Client::connect(&fake.path)
        .await
        .expect("connect")
        .with_retries(RetryPolicy {
            max_attempts: Some(3),
            ..RetryPolicy::default()
        });
    assert_unavailable(&client.get("", "cart").await.expect_err("fails"));
    assert_eq!(fake.attempts(), 3);

    let once = client.with_retries(RetryPolicy::disabled());
    assert_unavailable(&once.get("", "cart").await.expect_err("fails"));
    assert_eq!(fake.attempts(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_raw_never_retries() {
    let fake = Fake::start(|_, _| unavailable());
    let client = Client::connect(&fake.path).await.expect("connect");
    let payload = encode(&mecha_abi::msg::GetRequest {
        store: String::new(),
        key: "cart".into(),
    });
    let (status, _) = client
        .call_raw(Opcode::STATE_GET, payload)
        .await
        .expect("an answer");
    assert_eq!(status, Status::Unavailable);
    assert_eq!(fake.attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_is_not_retried() {
    let fake = Fake::start(|_, _| Action::Close);
    let client = Client::connect(&fake.path).await.expect("connect");
    let err = client.get("", "cart").await.expect_err("connection drops");
    assert!(matches!(err, Error::Closed(_)), "{err:?}");
    assert_eq!(fake.attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_statuses_are_returned_at_once() {
    let fake = Fake::start(|_, _| {
        let body = ErrorBody {
            message: "boom".into(),
        };
        Action::Reply(Status::Internal, encode(&body))
    });
    let client = Client::connect(&fake.path).await.expect("connect");
    let err = client.get("", "cart").await.expect_err("fails");
    assert_eq!(err.status(), Some(Status::Internal));
    assert_eq!(fake.attempts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_is_retried() {
    let fake = Fake::start(|n, _| {
        if n == 1 {
            unavailable()
        } else {
            Action::Reply(Status::Ok, Vec::new())
        }
    });
    let client = Client::connect(&fake.path).await.expect("connect");
    client.ping().await.expect("ping succeeds");
    assert_eq!(fake.attempts(), 2);
}

#[test]
fn blocking_client_exposes_the_policy() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let fake = {
        let _guard = rt.enter();
        Fake::start(|n, _| if n == 1 { unavailable() } else { set_ok() })
    };
    let mut client = crate::blocking::Client::connect(&fake.path).expect("connect");
    assert_eq!(client.retry_policy(), RetryPolicy::default());
    let opt_in = RetryPolicy {
        retry_non_idempotent: true,
        ..RetryPolicy::default()
    };
    client.set_retries(opt_in);
    assert_eq!(client.retry_policy(), opt_in);
    let etag = client
        .set("", "cart", b"x".to_vec(), SetOptions::default())
        .expect("retried set succeeds");
    assert_eq!(etag, "8");
    assert_eq!(fake.attempts(), 2);
}
