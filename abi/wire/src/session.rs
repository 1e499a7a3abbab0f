//! The session broker's wire (ARCHITECTURE.md, "Personalities"): a
//! personality module hands mechad the socket of a caller it accepted, and
//! mechad answers with one end of a new native session for that caller.
//!
//! Each message is one SOCK_SEQPACKET datagram on the broker socket (fd
//! [`SESSION_FD`] in the module), so a message and the descriptor it carries
//! arrive together or not at all. A request carries exactly one descriptor
//! (the caller's socket) and an optional API token; an answer carries a
//! status, a message, and on success exactly one descriptor (the session).
//! mechad identifies the caller from the descriptor itself, with the kernel's
//! word (SO_PEERCRED, or the loopback socket table), never from the module's.

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag};
use tokio::io::unix::AsyncFd;

/// The descriptor number on which a personality module finds the broker.
pub const SESSION_FD: i32 = 4;

/// The environment variable that names [`SESSION_FD`] to the module.
pub const SESSION_FD_ENV: &str = "MECHA_SESSION_FD";

/// The environment variable that lists the listening sockets mechad passed
/// to a personality, as `name=fd` pairs separated by commas.
pub const LISTEN_ENV: &str = "MECHA_LISTEN";

/// The largest broker message: a token and a message are short.
pub const MAX_MESSAGE: usize = 4096;

/// The longest API token or app id a request may carry.
pub const MAX_TOKEN: usize = 1024;

/// A socketpair for the broker: SOCK_SEQPACKET, close-on-exec on both ends.
pub fn pair() -> io::Result<(OwnedFd, OwnedFd)> {
    nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(io::Error::from)
}

/// One end of the broker, registered with the runtime's reactor.
pub struct Broker {
    sock: AsyncFd<OwnedFd>,
}

impl Broker {
    /// Wraps `fd` (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        Ok(Self {
            sock: crate::sock::register(
                fd,
                tokio::io::Interest::READABLE | tokio::io::Interest::WRITABLE,
            )?,
        })
    }

    /// Sends `body` with `fd` attached, if any.
    pub async fn send(&self, body: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let raw: Vec<RawFd> = fd.iter().map(AsRawFd::as_raw_fd).collect();
        loop {
            let mut ready = self.sock.writable().await?;
            let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
                Vec::new()
            } else {
                vec![ControlMessage::ScmRights(&raw)]
            };
            match ready.try_io(|inner| {
                sendmsg::<()>(
                    inner.as_raw_fd(),
                    &[IoSlice::new(body)],
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            }) {
                Ok(result) => return result.map(|_| ()),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the descriptor it carries. `Ok(None)` when
    /// the other end closed. Extra descriptors are closed, and a message cut
    /// short (over [`MAX_MESSAGE`], or with more control data than room) is
    /// an error, so a confused sender cannot make this side misread.
    pub async fn recv(&self) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        loop {
            let mut ready = self.sock.readable().await?;
            match ready.try_io(|inner| receive(inner.get_ref().as_fd())) {
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }
}

#[allow(unsafe_code)]
fn receive(sock: BorrowedFd<'_>) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, truncated, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                for fd in received {
                    // SAFETY: the kernel just installed `fd` in this process
                    // for this message; nothing else knows of it, so taking
                    // ownership (and closing it on drop) is sound.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        let truncated = msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
        (msg.bytes, truncated, fds)
    };
    if truncated {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "a broker message was cut short",
        ));
    }
    if len == 0 && fds.is_empty() {
        return Ok(None);
    }
    buf.truncate(len);
    // More than one descriptor is a protocol error; the extras are closed
    // here by being dropped.
    let fd = fds.into_iter().next();
    Ok(Some((buf, fd)))
}

/// What a personality asks the broker for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// A session for the caller whose socket travels with the request, with
    /// the API token it presented, if any.
    Caller {
        /// Dapr's `dapr-api-token`, as the caller sent it.
        token: Option<String>,
    },
    /// A session for the tenant that owns `app_id` in mechad's
    /// configuration, to serve calls to an app the personality reaches on
    /// its behalf (a Dapr app's callback address). No descriptor travels.
    App {
        /// The app id.
        app_id: String,
    },
}

impl Request {
    /// One byte of kind (0 caller, 1 app), then the token or the app id.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, text) = match self {
            Request::Caller { token } => (0u8, token.as_deref().unwrap_or("")),
            Request::App { app_id } => (1u8, app_id.as_str()),
        };
        let mut out = vec![kind];
        out.extend_from_slice(text.as_bytes());
        out
    }

    /// The request in `body`.
    pub fn decode(body: &[u8]) -> Result<Self, &'static str> {
        let (&kind, text) = body.split_first().ok_or("an empty broker request")?;
        if text.len() > MAX_TOKEN {
            return Err("the API token or app id is too long");
        }
        let text = std::str::from_utf8(text).map_err(|_| "the API token or app id is not UTF-8")?;
        match kind {
            0 => Ok(Request::Caller {
                token: (!text.is_empty()).then(|| text.to_owned()),
            }),
            1 if !text.is_empty() => Ok(Request::App {
                app_id: text.to_owned(),
            }),
            1 => Err("an app session request without an app id"),
            _ => Err("an unknown broker request"),
        }
    }
}

/// An answer: the status code (SPEC §3) in two little-endian bytes, then the
/// message (empty on success).
pub fn encode_answer(status: u16, message: &str) -> Vec<u8> {
    let mut out = status.to_le_bytes().to_vec();
    let mut end = message.len().min(MAX_MESSAGE - 2);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&message.as_bytes()[..end]);
    out
}

/// The status code and message of an answer.
pub fn decode_answer(body: &[u8]) -> Result<(u16, String), &'static str> {
    let (code, message) = body
        .split_at_checked(2)
        .ok_or("a broker answer is too short")?;
    let status = u16::from_le_bytes([code[0], code[1]]);
    Ok((status, String::from_utf8_lossy(message).into_owned()))
}

/// The listening sockets named in [`LISTEN_ENV`]'s value, as `(name, fd)`.
/// Malformed entries are skipped.
pub fn parse_listen(value: &str) -> Vec<(String, i32)> {
    value
        .split(',')
        .filter_map(|pair| {
            let (name, fd) = pair.split_once('=')?;
            Some((name.trim().to_owned(), fd.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_round_trip() {
        for request in [
            Request::Caller { token: None },
            Request::Caller {
                token: Some("t0k".into()),
            },
            Request::App {
                app_id: "orders".into(),
            },
        ] {
            assert_eq!(Request::decode(&request.encode()), Ok(request));
        }
        assert!(Request::decode(&[]).is_err());
        assert!(Request::decode(&[0, 0xff]).is_err());
        assert!(Request::decode(&[1]).is_err());
        assert!(Request::decode(&[9, b'a']).is_err());
        let mut long = vec![0u8];
        long.extend(vec![b'a'; MAX_TOKEN + 1]);
        assert!(Request::decode(&long).is_err());
        assert_eq!(
            decode_answer(&encode_answer(7, "no")),
            Ok((7, "no".to_string()))
        );
        assert!(decode_answer(&[1]).is_err());
        let long = "é".repeat(MAX_MESSAGE);
        assert!(encode_answer(0, &long).len() <= MAX_MESSAGE);
        assert_eq!(
            parse_listen("grpc-unix=5, http-tcp=7,bad,x=y"),
            vec![("grpc-unix".into(), 5), ("http-tcp".into(), 7)]
        );
    }

    #[tokio::test]
    async fn a_descriptor_travels_with_its_message() {
        let (a, b) = pair().expect("pair");
        let (a, b) = (Broker::new(a).expect("a"), Broker::new(b).expect("b"));
        let (x, _y) = std::os::unix::net::UnixStream::pair().expect("pair");
        let request = Request::Caller {
            token: Some("tok".into()),
        };
        a.send(&request.encode(), Some(x.as_fd()))
            .await
            .expect("send");
        let (body, fd) = b.recv().await.expect("recv").expect("a message");
        assert_eq!(Request::decode(&body), Ok(request));
        let fd = fd.expect("a descriptor");
        let passed = std::os::unix::net::UnixStream::from(fd);
        assert_eq!(
            passed.local_addr().ok().map(|a| a.is_unnamed()),
            x.local_addr().ok().map(|a| a.is_unnamed())
        );
        drop(a);
        assert!(b.recv().await.expect("recv").is_none(), "EOF once closed");
    }
}
