//! The old daemon's side of a hand-over: it serves the hand-over socket,
//! checks the new daemon's offer, sends its listening sockets, and once the
//! new daemon's modules are ready, holds every connection until nothing is
//! in flight, takes the streams off its module links, hands each connection
//! over with its state, and drains its modules.

use std::os::fd::AsFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};

use super::freeze::{Exports, Frozen, Phase};
use super::wire::{self, blocking, Channel, ToNew, ToOld, WireError};
use crate::daemon::Daemon;
use crate::supervisor::Route;

/// How long the old daemon waits for every connection to have nothing in
/// flight before it gives up the hand-over (and serves on).
pub const QUIET_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the new daemon may take to start its modules.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long any other step may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A hand-over that completed.
#[derive(Clone, Debug)]
pub struct Handed {
    /// The daemon that took over.
    pub pid: u32,
    /// The listening sockets it serves on now.
    pub claimed: Vec<crate::inherited::Address>,
}

/// How a hand-over ended, for the daemon's main task.
pub type Outcome = Option<Result<Handed, String>>;

/// Why a hand-over did not happen.
enum GiveError {
    /// Before any connection moved: the old daemon serves on.
    Refused(String),
    /// After connections moved: the new daemon has them, or nobody has.
    Lost(String),
}

impl From<WireError> for GiveError {
    fn from(e: WireError) -> Self {
        GiveError::Refused(e.to_string())
    }
}

/// Creates the hand-over socket beside `socket`: only this daemon's user may
/// connect (mode 0600, and each peer's uid is checked).
pub fn bind(socket: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = wire::socket_path(socket);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the hand-over socket, one hand-over at a time, until one
/// completes; `done` then says to whom (or that connections were lost).
pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>, done: watch::Sender<Outcome>) {
    let own = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("hand-over socket: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == own => {}
            _ => {
                tracing::warn!("hand-over socket: refusing a peer that is not this daemon's user");
                continue;
            }
        }
        match give(stream, &daemon).await {
            Ok(handed) => {
                done.send_replace(Some(Ok(handed)));
                return;
            }
            Err(GiveError::Refused(reason)) => {
                tracing::warn!("hand-over not done, serving on: {reason}");
                daemon.upgrade.settle(Err(reason));
            }
            Err(GiveError::Lost(reason)) => {
                tracing::error!("hand-over failed after the connections moved: {reason}");
                done.send_replace(Some(Err(reason)));
                return;
            }
        }
    }
}

/// One hand-over, from the offer to the new daemon's `Taken`.
async fn give(stream: tokio::net::UnixStream, daemon: &Arc<Daemon>) -> Result<Handed, GiveError> {
    // No reload or module restart interleaves with a hand-over.
    let _admin = daemon.admin_lock.lock().await;
    let std = stream
        .into_std()
        .map_err(|e| GiveError::Refused(e.to_string()))?;
    let channel = Channel::new(std, STEP_TIMEOUT).map_err(|e| GiveError::Refused(e.to_string()))?;
    let (channel, offer) = blocking(channel, |c| c.recv::<ToOld>()).await;
    let (min, max, pid, netns) = match offer?.0 {
        ToOld::Offer {
            min_version,
            max_version,
            pid,
            netns,
            ..
        } => (min_version, max_version, pid, netns),
        other => {
            return Err(GiveError::Refused(format!(
                "expected an offer, got {other:?}"
            )))
        }
    };
    let version = wire::VERSION.min(max);
    if version < wire::MIN_VERSION.max(min) {
        let reason = format!(
            "hand-over versions do not meet: the new daemon speaks {min}..={max}, this one {}..={}",
            wire::MIN_VERSION,
            wire::VERSION
        );
        let msg = ToNew::Refuse {
            reason: reason.clone(),
        };
        let _ = blocking(channel, move |c| c.send(&msg, &[])).await;
        return Err(GiveError::Refused(reason));
    }
    tracing::info!(pid, version, "a new mechad is taking over");
    // TCP sockets belong to a network namespace: only a daemon in the same
    // one can use them (a new pod has its own and binds its own).
    let same_netns = netns == wire::netns();
    let listeners: Vec<_> = crate::inherited::owned()
        .into_iter()
        .filter(|(a, _)| same_netns || matches!(a, crate::inherited::Address::Unix(_)))
        .collect();
    let accept = ToNew::Accept {
        version,
        pid: std::process::id(),
        listeners: listeners.iter().map(|(a, _)| a.clone()).collect(),
    };
    let (channel, sent) = blocking(channel, move |c| {
        let fds: Vec<_> = listeners.iter().map(|(_, fd)| fd.as_fd()).collect();
        c.send(&accept, &fds)
    })
    .await;
    sent?;
    // The new daemon starts its modules now.
    let (channel, ready) = blocking(channel, |c| {
        c.set_timeout(READY_TIMEOUT)?;
        let r = c.recv::<ToOld>();
        c.set_timeout(STEP_TIMEOUT)?;
        r.map_err(std::io::Error::other)
    })
    .await;
    match ready.map_err(|e| GiveError::Refused(e.to_string()))?.0 {
        ToOld::Ready => {}
        ToOld::Abort { reason } => return Err(GiveError::Refused(reason)),
        other => return Err(GiveError::Refused(format!("expected ready, got {other:?}"))),
    }
    // The upgrade request (if one started this) is answered now, so that
    // its own connection can become quiet.
    daemon.upgrade.settle(Ok(pid));
    let channel = match hold(daemon).await {
        Ok(()) => channel,
        Err(reason) => {
            let msg = ToNew::Failed {
                reason: reason.clone(),
            };
            let _ = blocking(channel, move |c| c.send(&msg, &[])).await;
            return Err(GiveError::Refused(reason));
        }
    };
    let claimed = hand_over(channel, daemon)
        .await
        .map_err(|e| GiveError::Lost(e.to_string()))?;
    tracing::info!(pid, "handed over to the new mechad");
    Ok(Handed { pid, claimed })
}

/// Holds every connection until none has anything in flight, or gives up
/// (and lets them serve on) after [`QUIET_TIMEOUT`].
async fn hold(daemon: &Daemon) -> Result<(), String> {
    daemon.freeze.set(Phase::Holding);
    if tokio::time::timeout(QUIET_TIMEOUT, daemon.freeze.all_quiet())
        .await
        .is_err()
    {
        daemon.freeze.set(Phase::Serving);
        return Err(format!(
            "requests were still in flight after {QUIET_TIMEOUT:?} (a long invoke call?); retry later"
        ));
    }
    Ok(())
}

/// Moves every connection and retires the modules: past this point the old
/// daemon serves nothing.
async fn hand_over(
    mut channel: Channel,
    daemon: &Arc<Daemon>,
) -> Result<Vec<crate::inherited::Address>, WireError> {
    let slots = daemon.modules.read().clone();
    let mut streams = Vec::new();
    for slot in &slots {
        if let Route::Up(link) = slot.route() {
            streams.extend(link.export_streams());
        }
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Frozen>();
    daemon
        .freeze
        .set(Phase::Stopping(Arc::new(Exports::new(streams, tx))));
    // The modules drain while the connections move: the new daemon's
    // instances open their exclusive resources once these have exited.
    let mut draining = tokio::task::JoinSet::new();
    for slot in slots {
        draining.spawn(async move { slot.stop().await });
    }
    loop {
        let frozen = tokio::select! {
            frozen = rx.recv() => frozen,
            () = daemon.freeze.all_gone() => rx.try_recv().ok(),
        };
        let Some(Frozen { fd, state }) = frozen else {
            break;
        };
        let (back, sent) =
            blocking(channel, move |c| c.send(&ToNew::Conn(state), &[fd.as_fd()])).await;
        channel = back;
        sent?;
    }
    let (back, sent) = blocking(channel, |c| c.send(&ToNew::ConnsDone, &[])).await;
    channel = back;
    sent?;
    while draining.join_next().await.is_some() {}
    let (_, taken) = blocking(channel, |c| {
        c.send(&ToNew::Released, &[])?;
        c.recv::<ToOld>()
    })
    .await;
    match taken?.0 {
        ToOld::Taken { claimed } => Ok(claimed),
        other => Err(WireError::Decode(format!("expected taken, got {other:?}"))),
    }
}
