//! The read half of an application connection, timing partial frames: once
//! a frame's first byte has arrived, the rest must follow within a limit, or
//! the read fails. Idle time between frames is never limited.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Once the first byte of a frame has arrived, the rest must arrive within
/// this long or the connection is closed. Without it a client that sends half
/// a frame and goes silent would hold its connection (and its quota slot)
/// forever. Idle connections *between* frames are never timed out: long-lived
/// clients and stream subscribers legitimately stay quiet for hours.
pub const PARTIAL_FRAME_TIMEOUT: Duration = Duration::from_secs(10);
/// Test-only override of [`PARTIAL_FRAME_TIMEOUT`] in milliseconds, so the
/// integration tests need not wait 10 s. Not a supported setting.
const PARTIAL_FRAME_TIMEOUT_ENV: &str = "MECHA_PARTIAL_FRAME_TIMEOUT_MS";
/// The partial-frame limit: [`PARTIAL_FRAME_TIMEOUT`], unless the test-only
/// environment variable overrides it.
pub fn partial_frame_timeout() -> Duration {
    static LIMIT: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| {
        std::env::var(PARTIAL_FRAME_TIMEOUT_ENV)
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(PARTIAL_FRAME_TIMEOUT, Duration::from_millis)
    })
}

/// The read error of a connection whose partial frame timed out.
#[derive(Debug, thiserror::Error)]
#[error("a partial frame was not completed within {0:?} of its first byte")]
struct StalledFrame(Duration);

/// True when a read failed because [`Clocked`] timed a partial frame out.
pub fn is_stalled(e: &std::io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<StalledFrame>())
}

/// A connection's read half that times partial frames. The clock starts when
/// a read at a frame boundary returns bytes, and stops at the next boundary
/// ([`Clocked::frame_done`]); while it runs, a read that would wait past the
/// deadline fails with [`StalledFrame`] instead.
///
/// Timing the reads, rather than wrapping `FrameReader::next` in a timeout,
/// starts the clock at the frame's first byte exactly, and costs nothing (no
/// timer, no extra system call) for a frame that arrives in one read.
pub struct Clocked<R> {
    inner: R,
    limit: Duration,
    /// When the frame being received must be complete; `None` at a boundary.
    deadline: Option<Instant>,
    /// Created on the first read that has to wait with the clock running.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<R> Clocked<R> {
    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn new(inner: R, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            deadline: None,
            timer: None,
        }
    }

    /// Called at each frame boundary, before reading on, with the bytes still
    /// buffered: none stops the clock; some belong to the next frame, whose
    /// clock starts now.
    pub fn frame_done(&mut self, buffered: usize) {
        self.deadline = (buffered > 0).then(|| Instant::now() + self.limit);
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Clocked<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if this.deadline.is_none() && buf.filled().len() > before {
                    this.deadline = Some(Instant::now() + this.limit);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline else {
                    // Idle between frames: wait as long as it takes.
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        StalledFrame(this.limit),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
            ready_err => ready_err,
        }
    }
}

/// The partial-frame clock over in-memory streams, with a short limit.
#[cfg(test)]
mod tests {
    use super::*;
    use mecha_abi::encode_frame;
    use mecha_abi::{Header, Opcode};
    use mecha_wire::{FrameReader, ReadError};
    use tokio::io::AsyncWriteExt;

    const LIMIT: Duration = Duration::from_millis(200);

    fn reader(rx: tokio::io::DuplexStream) -> FrameReader<Clocked<tokio::io::DuplexStream>> {
        FrameReader::new(Clocked::new(rx, LIMIT), 1024)
    }

    fn ping(id: u32) -> Vec<u8> {
        encode_frame(Header::request(Opcode::PING, id), b"").unwrap()
    }

    #[tokio::test]
    async fn an_idle_connection_is_never_timed_out() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        let idle = tokio::time::timeout(LIMIT * 3, r.next()).await;
        assert!(idle.is_err(), "still waiting, without an error");
        tx.write_all(&ping(1)).await.unwrap();
        let (h, _) = r.next().await.unwrap().unwrap();
        assert_eq!(h.request_id, 1);
    }

    #[tokio::test]
    async fn a_partial_frame_times_out_even_while_bytes_trickle_in() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        let frame = ping(1);
        let trickle = tokio::spawn(async move {
            for byte in frame {
                if tx.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(LIMIT / 4).await;
            }
            tx
        });
        let start = std::time::Instant::now();
        match r.next().await {
            Err(ReadError::Io(e)) if is_stalled(&e) => {}
            other => panic!("expected a stalled frame, got {other:?}"),
        }
        assert!(start.elapsed() >= LIMIT);
        drop(r);
        trickle.await.unwrap();
    }

    #[tokio::test]
    async fn the_clock_restarts_for_read_ahead_bytes_when_reading_resumes() {
        let (mut tx, rx) = tokio::io::duplex(256);
        let mut r = reader(rx);
        // A whole frame and the first bytes of the next arrive together.
        let mut bytes = ping(1);
        bytes.extend_from_slice(&ping(2)[..5]);
        tx.write_all(&bytes).await.unwrap();
        let buffered = r.buffered();
        r.get_mut().frame_done(buffered);
        assert_eq!(r.next().await.unwrap().unwrap().0.request_id, 1);
        // The daemon does not read for longer than the limit (backpressure),
        // then resumes; the rest arrives soon after that.
        tokio::time::sleep(LIMIT * 2).await;
        let buffered = r.buffered();
        r.get_mut().frame_done(buffered);
        let rest = ping(2)[5..].to_vec();
        let late = tokio::spawn(async move {
            tokio::time::sleep(LIMIT / 4).await;
            tx.write_all(&rest).await.unwrap();
            tx
        });
        assert_eq!(r.next().await.unwrap().unwrap().0.request_id, 2);
        late.await.unwrap();
    }
}
