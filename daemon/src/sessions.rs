//! The session broker (ARCHITECTURE.md, "Personalities"): a personality
//! module hands mechad a caller's socket and gets back a native session that
//! mechad identified and serves exactly like a connection on its own socket.
//!
//! The module never names a tenant: mechad identifies the caller from the
//! socket itself (SO_PEERCRED on a Unix socket, the loopback socket table on
//! TCP). The one exception is an app session, for a Dapr app the personality
//! calls on a tenant's behalf, and that is granted only for app ids that
//! mechad's own configuration both gives the personality (`appCallbacks`)
//! and assigns to a tenant (`appIds`).

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use mecha_abi::Status;
use mecha_wire::session::{self, Broker, Request};
use tokio::sync::watch;

use crate::conn;
use crate::daemon::Daemon;
use crate::peer::{self, Peer};
use crate::personality::{Bound, BrokerEnd, Listen};

/// What sessions need from the running daemon.
struct Hub {
    daemon: Arc<Daemon>,
    shutdown: watch::Receiver<bool>,
}

/// Serves the brokers of every personality instance, those started before
/// the daemon was built and those started later, opening sessions on
/// `daemon` that end at `shutdown`.
pub fn start(daemon: Arc<Daemon>, shutdown: watch::Receiver<bool>) {
    let Some(mut brokers) = crate::personality::brokers() else {
        return;
    };
    let hub = Arc::new(Hub { daemon, shutdown });
    tokio::spawn(async move {
        while let Some(end) = brokers.recv().await {
            tokio::spawn(broker(end, Arc::clone(&hub)));
        }
    });
}

/// Serves one personality instance's broker until the module closes it.
async fn broker(end: BrokerEnd, hub: Arc<Hub>) {
    let BrokerEnd {
        fd,
        listen,
        bound,
        module,
    } = end;
    let broker = match Broker::new(fd) {
        Ok(b) => b,
        Err(e) => {
            tracing::warn!(%module, "cannot serve the session broker: {e}");
            return;
        }
    };
    loop {
        let (body, fd) = match broker.recv().await {
            Ok(Some(message)) => message,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(%module, "the session broker: {e}");
                return;
            }
        };
        let answer = match Request::decode(&body) {
            Ok(request) => open(&hub, request, fd, &listen, &bound),
            Err(e) => Err((Status::InvalidArgument, e.to_string())),
        };
        let sent = match answer {
            Ok(session) => {
                broker
                    .send(
                        &session::encode_answer(0, ""),
                        Some(std::os::fd::AsFd::as_fd(&session)),
                    )
                    .await
            }
            Err((status, message)) => {
                broker
                    .send(&session::encode_answer(status.code(), &message), None)
                    .await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(%module, "the session broker: {e}");
            return;
        }
    }
}

/// Identifies the caller of `request` and starts a native session for it;
/// returns the module's end.
fn open(
    hub: &Hub,
    request: Request,
    fd: Option<OwnedFd>,
    listen: &Listen,
    bound: &Bound,
) -> Result<OwnedFd, (Status, String)> {
    let (peer, tenant) = match request {
        Request::Caller { token } => {
            let fd = fd.ok_or((
                Status::InvalidArgument,
                "a caller session needs the caller's socket".to_string(),
            ))?;
            // A token stands for its tenant on any transport, when tokens
            // are configured; when none are, a token is ignored, as Dapr
            // ignores one it was not given.
            match token.filter(|_| listen.tokens.any()) {
                Some(token) => {
                    let name = listen.tokens.tenant(&token).ok_or((
                        Status::PermissionDenied,
                        "the dapr-api-token is not one mechad knows".to_string(),
                    ))?;
                    let peer = identify(&fd, bound).unwrap_or_else(|_| nobody(bound));
                    let tenant = hub.daemon.tenants.read().named(name);
                    (peer, Some(tenant))
                }
                None => (identify(&fd, bound)?, None),
            }
        }
        Request::App { app_id } => {
            if !listen.apps.contains(&app_id) {
                return Err((
                    Status::PermissionDenied,
                    format!("app id {app_id:?} is not in the personality's appCallbacks"),
                ));
            }
            let tenant = hub.daemon.tenants.read().owner_of(&app_id).ok_or((
                Status::PermissionDenied,
                format!("no tenant rule's appIds names {app_id:?}"),
            ))?;
            (nobody(bound), Some(tenant))
        }
    };
    let (ours, theirs) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| (Status::Unavailable, format!("cannot open a session: {e}")))?;
    let stream = ours
        .set_nonblocking(true)
        .and_then(|()| tokio::net::UnixStream::from_std(ours))
        .map_err(|e| (Status::Unavailable, format!("cannot open a session: {e}")))?;
    let live = hub.daemon.freeze.enter();
    tokio::spawn(conn::serve_as(
        stream,
        peer,
        tenant,
        Arc::clone(&hub.daemon),
        hub.shutdown.clone(),
        None,
        live,
    ));
    Ok(OwnedFd::from(theirs))
}

/// The peer of a session whose tenant mechad's configuration names (an API
/// token's, an app's) when the kernel names no one: no uid or gid any rule
/// could match, and never an admin.
fn nobody(bound: &Bound) -> Peer {
    Peer {
        socket: Arc::clone(&bound.unix_path),
        personality: true,
        uid: u32::MAX,
        gid: u32::MAX,
        ..Peer::default()
    }
}

/// Who is behind a caller's socket: SO_PEERCRED for a Unix socket; for TCP,
/// the uid that owns the peer's socket when it is on this host (loopback).
fn identify(fd: &OwnedFd, bound: &Bound) -> Result<Peer, (Status, String)> {
    let refused = |message: String| (Status::PermissionDenied, message);
    let family = nix::sys::socket::getsockname::<nix::sys::socket::SockaddrStorage>(
        std::os::fd::AsRawFd::as_raw_fd(fd),
    )
    .map_err(|e| refused(format!("the caller's socket: {e}")))?;
    if family.as_unix_addr().is_some() {
        let mut peer = peer::identify(fd, &bound.unix_path)
            .map_err(|e| refused(format!("cannot identify the caller: {e}")))?;
        peer.personality = true;
        return Ok(peer);
    }
    let stream = std::net::TcpStream::from(
        fd.try_clone()
            .map_err(|e| (Status::Unavailable, format!("the caller's socket: {e}")))?,
    );
    let (remote, local) = stream
        .peer_addr()
        .and_then(|r| Ok((r, stream.local_addr()?)))
        .map_err(|e| refused(format!("the caller's socket: {e}")))?;
    // UNSUPPORTED tells the personality that this caller can still be
    // served if it presents a token.
    let owner = crate::dashboard::loopback::owner(remote, local).ok_or_else(|| {
        (
            Status::Unsupported,
            format!(
                "a caller at {remote} is not on this host, and mecha identifies TCP callers only on loopback; present a dapr-api-token"
            ),
        )
    })?;
    let gid = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(owner.uid))
        .ok()
        .flatten()
        .map_or(u32::MAX, |u| u.gid.as_raw());
    Ok(Peer {
        pid: 0,
        uid: owner.uid,
        gid,
        socket: Arc::from(Path::new(&format!("tcp:{local}"))),
        pod: None,
        local: false,
        personality: true,
    })
}
