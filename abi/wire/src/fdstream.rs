//! Length-prefixed messages that may carry descriptors, over a blocking
//! Unix stream socket: the channel between two daemons during a hand-over.
//! Each message is a 4-byte little-endian length and that many bytes; a
//! message's descriptors travel (SCM_RIGHTS) with its length, which is read
//! by itself so that descriptors can never be paired with the wrong message.

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

/// The largest message either side accepts: room for a connection's
/// partial frame of the largest size the ABI allows, and more.
pub const MAX_MESSAGE: usize = mecha_abi::MAX_FRAME_CAP as usize + 16 * 1024 * 1024;
/// The most descriptors one message may carry.
pub const MAX_FDS: usize = 32;

/// One end of the channel.
pub struct FdStream {
    stream: UnixStream,
}

impl FdStream {
    /// Wraps a connected, blocking Unix stream socket.
    pub fn new(stream: UnixStream) -> Self {
        Self { stream }
    }

    /// The socket, for timeouts and peer credentials.
    pub fn socket(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends `body` with `fds` attached.
    pub fn send(&mut self, body: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
        if body.len() > MAX_MESSAGE || fds.len() > MAX_FDS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "a message of {} bytes and {} descriptors is over the channel's limits",
                    body.len(),
                    fds.len()
                ),
            ));
        }
        // Bounded above by MAX_MESSAGE, which fits in u32.
        let len = (body.len() as u32).to_le_bytes();
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
            Vec::new()
        } else {
            vec![ControlMessage::ScmRights(&raw)]
        };
        let sent = loop {
            match sendmsg::<()>(
                self.stream.as_raw_fd(),
                &[IoSlice::new(&len)],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Ok(n) => break n,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
        // The descriptors went with the first byte; the rest of the length
        // (if the kernel took less) and the body follow as plain bytes.
        self.stream.write_all(&len[sent..])?;
        self.stream.write_all(body)
    }

    /// Receives one message and its descriptors; `Ok(None)` at a clean end
    /// of stream between messages.
    pub fn recv(&mut self) -> io::Result<Option<(Vec<u8>, Vec<OwnedFd>)>> {
        let mut len = [0u8; 4];
        let (got, fds) = self.recv_first(&mut len)?;
        if got == 0 {
            return Ok(None);
        }
        self.stream.read_exact(&mut len[got..])?;
        let len = u32::from_le_bytes(len) as usize;
        if len > MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a message of {len} bytes is over the channel's limit"),
            ));
        }
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Ok(Some((body, fds)))
    }

    /// Reads up to the length's 4 bytes with the descriptors that came with
    /// them.
    #[allow(unsafe_code)]
    fn recv_first(&mut self, len: &mut [u8; 4]) -> io::Result<(usize, Vec<OwnedFd>)> {
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        loop {
            let mut iov = [IoSliceMut::new(len)];
            let msg = match recvmsg::<()>(
                self.stream.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => msg,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(io::Error::from)? {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    for fd in received {
                        // SAFETY: the kernel just installed `fd` in this
                        // process for this message; nothing else knows of
                        // it, so taking ownership (closing it on drop) is
                        // sound.
                        fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                    }
                }
            }
            if msg.flags.intersects(MsgFlags::MSG_CTRUNC) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message carried more descriptors than the channel takes",
                ));
            }
            return Ok((msg.bytes, fds));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn messages_and_descriptors_arrive_together_and_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut a, mut b) = (FdStream::new(a), FdStream::new(b));
        let (x, mut y) = UnixStream::pair().unwrap();
        // The sender runs on its own thread: a message larger than the
        // socket's buffer is only taken as the receiver reads it.
        let sender = std::thread::spawn(move || {
            a.send(b"first", &[x.as_fd()]).unwrap();
            a.send(b"second", &[]).unwrap();
            a.send(&vec![7u8; 300_000], &[]).unwrap();
        });
        let (body, fds) = b.recv().unwrap().unwrap();
        assert_eq!((body.as_slice(), fds.len()), (&b"first"[..], 1));
        // The descriptor is the same socket: what goes in one end comes out
        // of the other.
        let mut passed = UnixStream::from(fds.into_iter().next().unwrap());
        passed.write_all(b"hi").unwrap();
        let mut got = [0u8; 2];
        y.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hi");
        let (body, fds) = b.recv().unwrap().unwrap();
        assert_eq!((body.as_slice(), fds.len()), (&b"second"[..], 0));
        assert_eq!(b.recv().unwrap().unwrap().0.len(), 300_000);
        sender.join().unwrap();
        assert!(b.recv().unwrap().is_none(), "a clean end between messages");
    }
}
