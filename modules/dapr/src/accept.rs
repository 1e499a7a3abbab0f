//! Accepting callers: every connection is identified as soon as it is
//! accepted, by opening its native session (mechad identifies the peer and
//! applies the tenant's connection quota), before any of its requests is
//! read. A caller mechad refuses is closed at once, so a tenant cannot hold
//! the personality's descriptors beyond its own quota, however many
//! connections it opens.

use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::{mpsc, Semaphore};

use crate::session::{Caller, Refused, Sessions};

/// Connections being identified at once, over one listener; more wait in
/// the kernel's backlog.
const IDENTIFYING: usize = 64;

/// Identified connections queued for the server.
const QUEUED: usize = 64;

/// Callers mechad cannot identify by the kernel (remote TCP peers) that may
/// wait for a request with an API token at once, over all listeners.
const ANONYMOUS: usize = 256;

/// How long such a caller may go without a session before it is closed.
const ANONYMOUS_GRACE: Duration = Duration::from_secs(10);

/// How long a refused HTTP caller's answer may take to write.
const REFUSAL_WRITE: Duration = Duration::from_millis(200);

/// A listening socket mechad passed to the personality.
pub enum Listener {
    /// A Unix socket.
    Unix(tokio::net::UnixListener),
    /// A TCP socket.
    Tcp(tokio::net::TcpListener),
}

/// What a listener serves, which decides how a refusal is told.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (HTTP/2): the connection is closed.
    Grpc,
    /// HTTP/1.1: a `403`/`429`/`503` answer with Dapr's error body, then
    /// the connection is closed.
    Http,
}

/// An identified connection and its caller.
pub struct Accepted {
    /// The connection.
    pub io: Io,
    /// Its caller, whose session is open.
    pub caller: Arc<Caller>,
}

/// Accepts on `listener` for as long as the returned receiver lives.
pub fn incoming(
    listener: Listener,
    protocol: Protocol,
    sessions: Arc<Sessions>,
) -> mpsc::Receiver<Accepted> {
    let (tx, rx) = mpsc::channel(QUEUED);
    tokio::spawn(accept_loop(listener, protocol, sessions, tx));
    rx
}

async fn accept_loop(
    listener: Listener,
    protocol: Protocol,
    sessions: Arc<Sessions>,
    tx: mpsc::Sender<Accepted>,
) {
    let identifying = Arc::new(Semaphore::new(IDENTIFYING));
    loop {
        let Ok(permit) = Arc::clone(&identifying).acquire_owned().await else {
            return;
        };
        let accepted = match &listener {
            Listener::Unix(l) => l.accept().await.map(|(s, _)| Io::Unix(s)),
            Listener::Tcp(l) => l.accept().await.map(|(s, _)| {
                let _ = s.set_nodelay(true);
                Io::Tcp(s)
            }),
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // A failed accept (the peer left, descriptors ran out) must
                // not end the loop; pausing keeps a lasting failure from
                // spinning.
                tracing::debug!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if tx.is_closed() {
            return;
        }
        let (sessions, tx) = (Arc::clone(&sessions), tx.clone());
        tokio::spawn(async move {
            let caller = match io.as_fd().try_clone_to_owned() {
                Ok(fd) => Arc::new(Caller::new(fd, sessions)),
                Err(e) => {
                    tracing::debug!("cannot keep an accepted connection: {e}");
                    return;
                }
            };
            let identified = caller.client(None).await;
            // The next connection may be identified while this one waits.
            drop(permit);
            match identified {
                Ok(_) => {
                    let _ = tx.send(Accepted { io, caller }).await;
                }
                // A remote caller may still present a token with its
                // requests: it is served for a short while, in one of a
                // bounded number of places, and closed unless it does.
                Err(refused) if refused.status == mecha_abi::Status::Unsupported => {
                    let Ok(place) = Arc::clone(anonymous()).try_acquire_owned() else {
                        tracing::debug!("too many callers waiting to present a token");
                        return;
                    };
                    caller.set_anonymous(refused, place);
                    let watched = Arc::downgrade(&caller);
                    let _ = tx.send(Accepted { io, caller }).await;
                    tokio::time::sleep(ANONYMOUS_GRACE).await;
                    if let Some(caller) = watched.upgrade() {
                        if !caller.is_served().await {
                            caller.close();
                        }
                    }
                }
                Err(refused) => {
                    tracing::debug!("a caller was refused: {refused}");
                    if protocol == Protocol::Http {
                        tell_refusal(io, &refused).await;
                    }
                }
            }
        });
    }
}

/// The places for callers waiting to present a token.
fn anonymous() -> &'static Arc<Semaphore> {
    static PLACES: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    PLACES.get_or_init(|| Arc::new(Semaphore::new(ANONYMOUS)))
}

/// Answers an HTTP caller that mechad refused, as Dapr's HTTP API would,
/// within [`REFUSAL_WRITE`]; a caller that does not read loses the answer.
async fn tell_refusal(mut io: Io, refused: &Refused) {
    let (status, reason) = match refused.status {
        mecha_abi::Status::ResourceExhausted => (429, "Too Many Requests"),
        mecha_abi::Status::Unavailable => (503, "Service Unavailable"),
        _ => (403, "Forbidden"),
    };
    let body = serde_json::json!({
        "errorCode": "ERR_PERMISSION_DENIED",
        "message": refused.message,
    })
    .to_string();
    let answer = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    // A lingering close: closing with the request still unread would make the
    // kernel reset the connection, and the caller could lose the answer. So
    // the answer is followed by a FIN and what the caller sent is read and
    // dropped until it closes too, all within the time bound.
    let _ = tokio::time::timeout(REFUSAL_WRITE, async {
        io.write_all(answer.as_bytes()).await?;
        io.shutdown().await?;
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}

/// Either kind of accepted stream.
pub enum Io {
    /// From the Unix socket.
    Unix(tokio::net::UnixStream),
    /// From TCP.
    Tcp(tokio::net::TcpStream),
}

impl AsFd for Io {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Io::Unix(s) => s.as_fd(),
            Io::Tcp(s) => s.as_fd(),
        }
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tcp(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Unix(s) => Pin::new(s).poll_flush(cx),
            Io::Tcp(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tcp(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
