//! Unix-socket halves that the reactor watches for readability only, with
//! writability watched just while a writer waits for room.
//!
//! Why not tokio's `UnixStream`: it registers every socket for both read and
//! write readiness, and the kernel then wakes the *writer's* epoll each time
//! the reader consumes bytes (it frees send-buffer space). On a router every
//! frame is read once on each hop, so every read poked the peer's event loop:
//! in a profile of `mechad` under load, 10% of all CPU time was that wake-up
//! path (`unix_write_space` → `ep_poll_callback`), and the peers paid the same.
//! Writes here go straight to `writev` (the [`crate::Outbox`] only writes
//! what the socket takes); only when a write would block does the writer
//! register a duplicate of the descriptor for writability, wait, and drop it.

use std::future::Future;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, Interest, ReadBuf};

/// The most one read asks for. A read zero-fills the part of the buffer it
/// offers (no unsafe code here), so offering a large frame's whole
/// remainder on every read would cost time quadratic in the frame's size.
const READ_CHUNK: usize = 64 * 1024;

/// Splits a connected Unix stream into halves registered with the current
/// tokio runtime for readability only. Must be called within a runtime.
pub fn split(stream: std::os::unix::net::UnixStream) -> io::Result<(ReadHalf, WriteHalf)> {
    stream.set_nonblocking(true)?;
    let fd = Arc::new(register(OwnedFd::from(stream), Interest::READABLE)?);
    Ok((
        ReadHalf {
            fd: Arc::clone(&fd),
        },
        WriteHalf {
            fd,
            keep_open: std::sync::atomic::AtomicBool::new(false),
        },
    ))
}

/// Registers `fd` with the current runtime's reactor for `interest`.
#[allow(unsafe_code)]
pub fn register(fd: OwnedFd, interest: Interest) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, so the descriptor stays open
    // and refers to the same socket until the `AsyncFd` is dropped, and
    // `OwnedFd::as_raw_fd` always returns that same descriptor. Nothing else
    // closes it: the halves only borrow it through the shared `AsyncFd`.
    unsafe { Ok(AsyncFd::register_with_interest(fd, interest)?) }
}

/// The read half of [`split`].
pub struct ReadHalf {
    fd: Arc<AsyncFd<OwnedFd>>,
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut ready = ready!(self.fd.poll_read_ready(cx))?;
            let want = buf.remaining().min(READ_CHUNK);
            let into = buf.initialize_unfilled_to(want);
            match ready.try_io(|fd| nix::unistd::read(fd.get_ref(), into).map_err(io::Error::from))
            {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                // Not readable after all; readiness was cleared, poll again.
                Err(_would_block) => {}
            }
        }
    }
}

impl std::os::fd::AsFd for ReadHalf {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

/// The write half of [`split`]. Dropping it shuts the socket down for
/// writing, so the peer reads end-of-stream, as with tokio's halves —
/// unless the socket was handed to another process ([`WriteHalf::keep_open`]).
pub struct WriteHalf {
    fd: Arc<AsyncFd<OwnedFd>>,
    /// Set when a duplicate of the socket lives on elsewhere: dropping this
    /// half must then not end the stream for its new owner.
    keep_open: std::sync::atomic::AtomicBool,
}

impl WriteHalf {
    /// Leaves the socket open when this half is dropped: a duplicate of it
    /// went to another owner (a daemon hand-over), who writes on.
    pub fn keep_open(&self) {
        self.keep_open
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Shuts the socket down both ways: the peer sees the end, a pending
    /// read returns EOF and the next write fails, so whoever uses either
    /// half ends as on a broken connection.
    pub fn shutdown(&self) {
        let _ = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref()),
            nix::sys::socket::Shutdown::Both,
        );
    }

    /// True when the peer has shut the connection down both ways or closed
    /// it (its end of stream is queued even if nobody has read up to it
    /// yet), or the socket failed: one `poll` that does not wait. Only the
    /// conditions the kernel always reports (POLLHUP, POLLERR) are asked
    /// for: a peer that can neither read nor write is gone.
    pub fn peer_closed(&self) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(self.fd.get_ref().as_fd(), PollFlags::empty())];
        matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
            && fds[0]
                .revents()
                .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR))
    }

    /// Writes what the socket takes now; `WouldBlock` when it takes nothing.
    pub fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        nix::sys::uio::writev(self.fd.get_ref(), bufs).map_err(io::Error::from)
    }

    /// Resolves when the socket may take more bytes.
    pub fn writable(&self) -> impl Future<Output = io::Result<()>> + Send {
        let dup = self.fd.get_ref().try_clone();
        async move {
            // A duplicate descriptor is a separate epoll entry for the same
            // socket; registering it checks readiness at once, so room freed
            // between the failed write and now is not missed. Dropping it
            // deregisters it, and reads stop waking this side again.
            let waiter = register(dup?, Interest::WRITABLE)?;
            let _ready = waiter.writable().await?;
            Ok(())
        }
    }
}

impl Drop for WriteHalf {
    fn drop(&mut self) {
        // The read half may outlive this one (it shares the descriptor), so
        // closing is not enough to tell the peer that nothing more comes.
        if self.keep_open.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let _ = nix::sys::socket::shutdown(
            self.fd.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Write,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FrameReader, OutFrame, Outbox};
    use bytes::Bytes;
    use mecha_abi::{Header, Opcode};

    #[tokio::test]
    async fn frames_cross_a_split_pair_including_ones_larger_than_the_socket_buffer() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (_ra, wa) = split(a).unwrap();
        let (rb, _wb) = split(b).unwrap();
        let (out, writer) = Outbox::<()>::new(wa, 16);
        let writer = tokio::spawn(writer);
        // 4 MiB cannot fit the socket buffer: the writer must wait for room
        // through the lazily registered duplicate.
        let sizes = [10usize, 4 << 20, 3];
        for (i, len) in sizes.iter().enumerate() {
            let payload = Bytes::from(vec![i as u8; *len]);
            out.send(OutFrame::new(
                Header::request(Opcode::PING, i as u32),
                payload,
            ))
            .unwrap();
        }
        drop(out);
        let mut reader = FrameReader::new(rb, 8 << 20);
        for (i, len) in sizes.iter().enumerate() {
            let (h, p) = reader.next().await.unwrap().unwrap();
            assert_eq!((h.request_id, p.len()), (i as u32, *len));
            assert!(p.iter().all(|b| *b == i as u8));
        }
        // The write half is gone once the writer ends: end of stream.
        writer.await.unwrap().unwrap();
        assert!(reader.next().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_peer_that_shut_down_is_seen_before_anyone_reads() {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        let (_rd, wr) = split(ours).expect("split");
        assert!(!wr.peer_closed(), "an open peer");
        theirs
            .shutdown(std::net::Shutdown::Both)
            .expect("the peer shuts down");
        assert!(wr.peer_closed(), "a peer shut down both ways");
        drop(theirs);
        assert!(wr.peer_closed(), "a closed peer");
    }
}
