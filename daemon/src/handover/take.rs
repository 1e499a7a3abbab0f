//! The new daemon's side of a hand-over: it offers its versions to the
//! daemon serving the same socket, takes its listening sockets, starts its
//! own modules (told that the old instances still hold their resources),
//! and then takes every connection and serves it from where it was.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use super::freeze::REOPEN_TIMEOUT;
use super::wire::{self, blocking, Channel, ConnState, ToNew, ToOld};
use crate::conn::Resume;
use crate::daemon::Daemon;
use crate::supervisor::{ModuleSlot, Prepared, Supervision};

/// `--takeover`: whether a daemon must be there to take over from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Take over if a daemon serves the socket; else start fresh (a pod of
    /// a DaemonSet: the first one on a node finds none).
    Auto,
    /// Take over or fail (`mechactl daemon upgrade`).
    Required,
}

/// How long the old daemon may take between steps of the hand-over: it
/// holds its connections for up to `give::QUIET_TIMEOUT`, then drains its
/// modules.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// A hand-over under way, from the new daemon's side.
pub struct Taking {
    channel: Channel,
    /// The old daemon's pid.
    pub old_pid: u32,
}

/// Connects to the daemon serving `socket` and agrees on a version; its
/// listening sockets are kept for this daemon's binds (`inherited`).
/// `None` in `Auto` mode when no daemon answers.
pub async fn begin(socket: &Path, mode: Mode) -> anyhow::Result<Option<Taking>> {
    let path = wire::socket_path(socket);
    let stream = match std::os::unix::net::UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if mode == Mode::Auto
                && matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
        {
            tracing::info!(socket = %path.display(), "no daemon to take over from; starting fresh");
            return Ok(None);
        }
        Err(e) => {
            return Err(e).with_context(|| {
                format!(
                    "connecting to the running mechad's hand-over socket {}",
                    path.display()
                )
            })
        }
    };
    let channel = Channel::new(stream, STEP_TIMEOUT)?;
    let offer = ToOld::Offer {
        min_version: wire::MIN_VERSION,
        max_version: wire::VERSION,
        pid: std::process::id(),
        daemon_version: env!("CARGO_PKG_VERSION").to_string(),
        netns: wire::netns(),
    };
    let (channel, answer) = blocking(channel, move |c| {
        c.send(&offer, &[])?;
        c.recv::<ToNew>()
    })
    .await;
    let (answer, fds) = answer?;
    match answer {
        ToNew::Accept {
            version,
            pid,
            listeners,
        } => {
            if listeners.len() != fds.len() {
                bail!(
                    "the running mechad named {} sockets and sent {}",
                    listeners.len(),
                    fds.len()
                );
            }
            for (address, fd) in listeners.into_iter().zip(fds) {
                crate::inherited::keep(address, fd);
            }
            tracing::info!(
                old_pid = pid,
                version,
                "taking over from the running mechad"
            );
            Ok(Some(Taking {
                channel,
                old_pid: pid,
            }))
        }
        ToNew::Refuse { reason } => bail!("the running mechad refused the hand-over: {reason}"),
        other => bail!("unexpected answer to the hand-over offer: {other:?}"),
    }
}

impl Taking {
    /// Gives up before anything moved: the old daemon serves on.
    pub async fn abort(self, reason: String) {
        let msg = ToOld::Abort { reason };
        let _ = blocking(self.channel, move |c| c.send(&msg, &[])).await;
    }

    /// Says the modules are ready, then takes every connection (each served
    /// from where it was, its requests waiting for the modules) and, once
    /// the old modules have exited, lets the prepared ones serve.
    pub async fn complete(
        self,
        daemon: &Arc<Daemon>,
        prepared: Vec<(Arc<ModuleSlot>, Prepared)>,
        supervision: Supervision,
        shutdown: &watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let (mut channel, sent) = blocking(self.channel, |c| c.send(&ToOld::Ready, &[])).await;
        sent?;
        let mut conns = 0usize;
        // One count stands for the connections still to come, released at
        // ConnsDone: a connection taken over early must not serve before a
        // later one (a callee's) has its streams open again, or a call it
        // holds finds the callee's app id missing (NOT_FOUND).
        daemon.freeze.reopening();
        let mut more_to_come = true;
        loop {
            let (back, got) = blocking(channel, |c| c.recv::<ToNew>()).await;
            channel = back;
            let (msg, fds) = got?;
            match msg {
                ToNew::Conn(state) => {
                    let Some(fd) = fds.into_iter().next() else {
                        bail!("a connection arrived without its socket");
                    };
                    conns += 1;
                    daemon.freeze.reopening();
                    adopt(fd, state, daemon, shutdown.clone());
                }
                ToNew::ConnsDone if more_to_come => {
                    more_to_come = false;
                    daemon.freeze.reopened();
                }
                ToNew::ConnsDone => {}
                ToNew::Released => break,
                ToNew::Failed { reason } => {
                    for (_, p) in prepared {
                        p.discard().await;
                    }
                    bail!("the running mechad gave up the hand-over: {reason}");
                }
                other => bail!("unexpected hand-over message: {other:?}"),
            }
        }
        if more_to_come {
            daemon.freeze.reopened();
        }
        // Eager modules serve at once; lazy ones are checked and retired
        // after the hand-over is confirmed, off the connections' pause.
        let (eager, lazy): (Vec<_>, Vec<_>) = prepared
            .into_iter()
            .partition(|(slot, _)| slot.spec().start == crate::childspec::Start::Eager);
        for (slot, p) in eager {
            slot.run(p, supervision).await;
        }
        // Under systemd this daemon is the service's main process from now
        // on; said before the old one may exit, so that its exit does not
        // end the service.
        crate::notify::send(&format!("MAINPID={}", std::process::id()));
        let claimed = crate::inherited::claimed();
        let (_, sent) = blocking(channel, move |c| c.send(&ToOld::Taken { claimed }, &[])).await;
        for (slot, p) in lazy {
            slot.run(p, supervision).await;
        }
        // New connections wait until the streams taken over are open again.
        if tokio::time::timeout(REOPEN_TIMEOUT, daemon.freeze.all_reopened())
            .await
            .is_err()
        {
            tracing::warn!("streams taken over were not all open again within {REOPEN_TIMEOUT:?}");
        }
        if let Err(e) = sent {
            // Everything is here already; the old daemon exits either way.
            tracing::warn!("could not confirm the hand-over: {e}");
        }
        tracing::info!(old_pid = self.old_pid, connections = conns, "took over");
        Ok(())
    }
}

/// Serves one connection taken over, from where its session was. The peer
/// is identified again from the socket, as at an accept: identity comes from
/// the kernel, under this daemon's view (its mount namespace, its pods).
fn adopt(fd: OwnedFd, state: ConnState, daemon: &Arc<Daemon>, shutdown: watch::Receiver<bool>) {
    let std = std::os::unix::net::UnixStream::from(fd);
    let socket: Arc<Path> = Arc::from(state.socket.as_path());
    let taken = std
        .set_nonblocking(true)
        .map_err(|e| e.to_string())
        .and_then(|()| crate::peer::identify(&std, &socket).map_err(|e| e.to_string()))
        .and_then(|peer| {
            tokio::net::UnixStream::from_std(std)
                .map(|stream| (stream, peer))
                .map_err(|e| e.to_string())
        });
    let (stream, peer) = match taken {
        Ok(both) => both,
        Err(e) => {
            tracing::debug!("a connection taken over is closed: {e}");
            daemon.freeze.reopened();
            return;
        }
    };
    let resume = Resume {
        version: state.version,
        streams: state.streams,
        unread: state.unread,
    };
    let live = daemon.freeze.enter();
    tokio::spawn(crate::conn::serve_as(
        stream,
        peer,
        None,
        Arc::clone(daemon),
        shutdown,
        Some(resume),
        live,
    ));
}
