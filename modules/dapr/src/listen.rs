//! The listening sockets mechad bound for the personality and passed to it
//! (`MECHA_LISTEN`): mechad binds them once, so every instance of the module,
//! an old one draining and its successor, accepts on the same sockets, and
//! the module needs no right to bind anything.

use std::os::fd::{FromRawFd, OwnedFd};

use mecha_wire::session::{parse_listen, LISTEN_ENV};

/// The name of the gRPC Unix socket in `MECHA_LISTEN`.
pub const GRPC_UNIX: &str = "grpc-unix";
/// The name of the gRPC TCP socket.
pub const GRPC_TCP: &str = "grpc-tcp";
/// The name of the HTTP TCP socket.
pub const HTTP_TCP: &str = "http-tcp";

/// The sockets this instance serves; any may be absent (turned off in the
/// configuration, or mechad could not bind it and said so in its log).
#[derive(Default)]
pub struct Listeners {
    /// gRPC on a Unix socket (`DAPR_GRPC_ENDPOINT=unix:///path`).
    pub grpc_unix: Option<std::os::unix::net::UnixListener>,
    /// gRPC on TCP (Dapr's 50001).
    pub grpc_tcp: Option<std::net::TcpListener>,
    /// HTTP on TCP (Dapr's 3500).
    pub http_tcp: Option<std::net::TcpListener>,
}

impl Listeners {
    /// The sockets named in `MECHA_LISTEN`, made non-blocking for tokio.
    /// Unknown names are closed and logged.
    pub fn inherited() -> std::io::Result<Self> {
        let mut out = Self::default();
        let listed = std::env::var(LISTEN_ENV).unwrap_or_default();
        for (name, fd) in parse_listen(&listed) {
            if fd <= 2 {
                continue;
            }
            let owned = take_fd(fd);
            match name.as_str() {
                GRPC_UNIX => {
                    let l = std::os::unix::net::UnixListener::from(owned);
                    l.set_nonblocking(true)?;
                    out.grpc_unix = Some(l);
                }
                GRPC_TCP | HTTP_TCP => {
                    let l = std::net::TcpListener::from(owned);
                    l.set_nonblocking(true)?;
                    if name == GRPC_TCP {
                        out.grpc_tcp = Some(l);
                    } else {
                        out.http_tcp = Some(l);
                    }
                }
                other => tracing::warn!("ignoring an unknown listening socket {other:?}"),
            }
        }
        Ok(out)
    }
}

/// Takes ownership of descriptor `fd`, which mechad passed to this process.
#[allow(unsafe_code)]
pub(crate) fn take_fd(fd: i32) -> OwnedFd {
    // SAFETY: mechad passes each of these descriptors to the module for one
    // use, names each once in the environment, and nothing else in this
    // process opens, uses or closes it; taking sole ownership is sound. A
    // descriptor that is not what its name says makes the calls on it fail
    // with an error rather than misbehave.
    unsafe { OwnedFd::from_raw_fd(fd) }
}
