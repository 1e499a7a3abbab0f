//! Dapr's gRPC API (`dapr.proto.runtime.v1.Dapr`), on the Unix socket and on
//! TCP: each accepted connection becomes a [`Caller`] that tonic hands to
//! every request of that connection, so a handler serves its request through
//! the caller's own native session.

mod authority;
mod bindings;
mod configuration;
mod invoke;
mod lock;
mod metadata;
mod pubsub;
mod secrets;
mod service;
mod state;
mod streamed;
mod unimplemented;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use dapr::dapr::proto::runtime::v1::dapr_server::DaprServer;
use futures_util::Stream;
use mecha_abi::Status;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tonic::transport::server::Connected;

use crate::accept::{self, Accepted, Io, Listener, Protocol};
use crate::session::{Caller, Refused, Sessions};
use authority::FixAuthority;

pub use service::Api;

/// The most RPCs one connection has open at once (HTTP/2's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`). Streaming subscriptions stay open,
/// each with a task and a native subscription, so without this bound one
/// connection could hold any number of them; a client at the bound waits
/// for one of its streams to end.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// Serves gRPC on whichever of the two listeners is present, until the
/// process exits.
pub async fn serve(
    unix: Option<tokio::net::UnixListener>,
    tcp: Option<tokio::net::TcpListener>,
    sessions: Arc<Sessions>,
) {
    let api = Api::new();
    let serve_one = |incoming: Incoming| {
        let api = api.clone();
        async move {
            let result = tonic::transport::Server::builder()
                .max_concurrent_streams(MAX_STREAMS_PER_CONNECTION)
                .add_service(DaprServer::new(api))
                .serve_with_incoming(incoming)
                .await;
            if let Err(e) = result {
                tracing::error!("the gRPC server stopped: {e}");
            }
        }
    };
    let incoming =
        |l: Listener| Incoming(accept::incoming(l, Protocol::Grpc, Arc::clone(&sessions)));
    let unix = unix.map(|l| serve_one(incoming(Listener::Unix(l))));
    let tcp = tcp.map(|l| serve_one(incoming(Listener::Tcp(l))));
    tokio::join!(
        async {
            if let Some(s) = unix {
                s.await
            }
        },
        async {
            if let Some(s) = tcp {
                s.await
            }
        },
    );
}

/// The caller of a request and the API token it presented, if any.
pub(crate) fn caller_of<T>(
    request: &tonic::Request<T>,
) -> Result<(Arc<Caller>, Option<String>), tonic::Status> {
    let caller = request
        .extensions()
        .get::<Arc<Caller>>()
        .cloned()
        .ok_or_else(|| tonic::Status::internal("a request without its connection"))?;
    let token = request
        .metadata()
        .get(crate::session::TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((caller, token))
}

/// The native client that serves `request`, as its caller's tenant.
pub(crate) async fn client_for<T>(
    request: &tonic::Request<T>,
) -> Result<mecha_client::Client, tonic::Status> {
    let (caller, token) = caller_of(request)?;
    caller.client(token.as_deref()).await.map_err(refused)
}

/// UNIMPLEMENTED, naming the method.
pub(crate) fn unimplemented(method: &str) -> tonic::Status {
    tonic::Status::unimplemented(format!(
        "the mecha Dapr personality does not implement {method}; see README.md for what it serves"
    ))
}

/// A refusal of the caller as a gRPC status.
pub(crate) fn refused(r: Refused) -> tonic::Status {
    tonic::Status::new(code_of(r.status), r.message)
}

/// A native client error as a gRPC status.
pub(crate) fn failed(e: mecha_client::Error) -> tonic::Status {
    let code = e.status().map_or(tonic::Code::Unavailable, code_of);
    tonic::Status::new(code, e.to_string())
}

/// The gRPC code of a native status (SPEC §3). A failed ETag check is
/// ABORTED, as Dapr answers it.
pub(crate) fn code_of(status: Status) -> tonic::Code {
    match status {
        Status::Ok => tonic::Code::Ok,
        Status::NotFound => tonic::Code::NotFound,
        Status::EtagMismatch => tonic::Code::Aborted,
        Status::InvalidArgument => tonic::Code::InvalidArgument,
        Status::UnknownOpcode | Status::Unsupported => tonic::Code::Unimplemented,
        Status::UnsupportedVersion => tonic::Code::FailedPrecondition,
        Status::PermissionDenied => tonic::Code::PermissionDenied,
        Status::ResourceExhausted => tonic::Code::ResourceExhausted,
        Status::Unavailable => tonic::Code::Unavailable,
        Status::DeadlineExceeded => tonic::Code::DeadlineExceeded,
        _ => tonic::Code::Internal,
    }
}

/// One accepted connection with its caller, as tonic's server sees it.
pub struct Conn<S> {
    io: S,
    caller: Arc<Caller>,
}

impl<S> Connected for Conn<S> {
    type ConnectInfo = Arc<Caller>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Arc::clone(&self.caller)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The stream of identified connections tonic serves.
pub struct Incoming(tokio::sync::mpsc::Receiver<Accepted>);

impl Stream for Incoming {
    type Item = std::io::Result<Conn<FixAuthority<Io>>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx).map(|accepted| {
            accepted.map(|a| {
                let io = match a.io {
                    io @ Io::Unix(_) => FixAuthority::new(io),
                    io @ Io::Tcp(_) => FixAuthority::passthrough(io),
                };
                Ok(Conn {
                    io,
                    caller: a.caller,
                })
            })
        })
    }
}
