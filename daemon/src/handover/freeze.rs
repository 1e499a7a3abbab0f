//! The old daemon's side of a hand-over as its connections see it: a phase
//! every connection watches (serving, holding, stopping), the count of live
//! connections and of those that are quiet, and the channel on which each
//! stopping connection hands in its socket and state.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch, Notify};

use super::wire::ConnState;
use crate::link::ExportedStream;

/// What connections do now.
#[derive(Clone)]
pub enum Phase {
    /// Serve as usual.
    Serving,
    /// Route no new request (keep the frames read, in order), answer what
    /// is in flight, keep reading the answers to calls delivered to the
    /// application; report once nothing of this connection is in flight.
    Holding,
    /// Stop: hand the socket and its state in, and end without closing it.
    Stopping(Arc<Exports>),
}

/// The streams taken off the module links, by connection, for the
/// connections to take as they stop; and where they hand themselves in.
pub struct Exports {
    streams: Mutex<HashMap<u64, Vec<ExportedStream>>>,
    frozen: mpsc::UnboundedSender<Frozen>,
}

impl Exports {
    /// Exports `streams`; stopping connections send themselves to `frozen`.
    pub fn new(streams: Vec<ExportedStream>, frozen: mpsc::UnboundedSender<Frozen>) -> Self {
        let mut by_conn: HashMap<u64, Vec<ExportedStream>> = HashMap::new();
        for s in streams {
            by_conn.entry(s.conn_id).or_default().push(s);
        }
        Self {
            streams: Mutex::new(by_conn),
            frozen,
        }
    }

    /// The streams connection `conn_id` had open.
    pub fn streams_of(&self, conn_id: u64) -> Vec<ExportedStream> {
        self.streams.lock().remove(&conn_id).unwrap_or_default()
    }

    /// Hands a stopped connection to the hand-over.
    pub fn hand_in(&self, frozen: Frozen) {
        let _ = self.frozen.send(frozen);
    }
}

/// A stopped connection: its socket and what the next daemon needs to go on.
pub struct Frozen {
    /// The connection's socket (a duplicate; the session has let go of it).
    pub fd: std::os::fd::OwnedFd,
    /// Its state.
    pub state: ConnState,
}

/// Shared by the daemon and every connection.
pub struct Freeze {
    phase: watch::Sender<Phase>,
    live: AtomicUsize,
    quiet: AtomicUsize,
    /// Counts holding episodes, so that a report from an earlier one is
    /// never taken back from a later one's count.
    episode: std::sync::atomic::AtomicU64,
    /// Connections taken over whose streams are not open again yet: until
    /// none is left, no connection serves other requests, so that a call
    /// never finds its callee's registration missing.
    reopening: AtomicUsize,
    /// Bytes of requests all holding connections keep, within
    /// [`HOLD_TOTAL`]: a tenant with many connections cannot make a
    /// hand-over cost the daemon much memory; past it, requests wait in the
    /// sockets, which move with them.
    held: AtomicUsize,
    changed: Notify,
}

/// How long connections taken over wait for each other's streams to open
/// again before serving on regardless.
pub const REOPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// The most bytes of requests holding connections keep in all.
pub const HOLD_TOTAL: usize = 64 * 1024 * 1024;

impl Default for Freeze {
    fn default() -> Self {
        Self {
            phase: watch::channel(Phase::Serving).0,
            live: AtomicUsize::new(0),
            quiet: AtomicUsize::new(0),
            episode: std::sync::atomic::AtomicU64::new(0),
            reopening: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
            changed: Notify::new(),
        }
    }
}

/// The bytes one holding connection keeps, counted in [`HOLD_TOTAL`] until
/// it serves them, hands them over or closes (dropped).
pub struct Held {
    freeze: Arc<Freeze>,
    bytes: usize,
}

impl Held {
    /// None kept yet.
    pub fn new(freeze: &Arc<Freeze>) -> Self {
        Self {
            freeze: Arc::clone(freeze),
            bytes: 0,
        }
    }

    /// Counts `bytes` more.
    pub fn add(&mut self, bytes: usize) {
        self.bytes += bytes;
        self.freeze.held.fetch_add(bytes, Ordering::AcqRel);
    }

    /// How many this connection keeps.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Counts none any more.
    pub fn clear(&mut self) {
        let bytes = std::mem::take(&mut self.bytes);
        self.freeze.held.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Counts a connection as live until dropped.
pub struct LiveGuard(Arc<Freeze>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Freeze {
    /// Registers a connection (session) for as long as the guard lives.
    pub fn enter(self: &Arc<Self>) -> LiveGuard {
        self.live.fetch_add(1, Ordering::AcqRel);
        LiveGuard(Arc::clone(self))
    }

    /// The phase, to watch.
    pub fn watch(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    /// A holding connection has nothing in flight any more. Returns the
    /// episode it reported in, for [`Freeze::quiet_left`].
    pub fn report_quiet(&self) -> u64 {
        self.quiet.fetch_add(1, Ordering::AcqRel);
        self.changed.notify_waiters();
        self.episode.load(Ordering::Acquire)
    }

    /// A connection that reported quiet in `episode` ends before stopping:
    /// it no longer counts as quiet (it no longer counts as live either).
    pub fn quiet_left(&self, episode: u64) {
        if self.episode.load(Ordering::Acquire) == episode {
            let _ = self
                .quiet
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| q.checked_sub(1));
        }
        self.changed.notify_waiters();
    }

    /// Enters `phase`.
    pub fn set(&self, phase: Phase) {
        if matches!(phase, Phase::Holding | Phase::Serving) {
            self.episode.fetch_add(1, Ordering::AcqRel);
            self.quiet.store(0, Ordering::Release);
        }
        self.phase.send_replace(phase);
        self.changed.notify_waiters();
    }

    /// Waits until every live connection is quiet.
    pub async fn all_quiet(&self) {
        loop {
            let changed = self.changed.notified();
            if self.quiet.load(Ordering::Acquire) >= self.live.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// True while holding connections may keep more bytes.
    pub fn may_hold(&self) -> bool {
        self.held.load(Ordering::Acquire) < HOLD_TOTAL
    }

    /// A connection taken over will open its streams again.
    pub fn reopening(&self) {
        self.reopening.fetch_add(1, Ordering::AcqRel);
    }

    /// A connection taken over has opened its streams again (or given up).
    pub fn reopened(&self) {
        let _ = self
            .reopening
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.changed.notify_waiters();
    }

    /// Waits until every connection taken over has opened its streams again.
    pub async fn all_reopened(&self) {
        loop {
            let changed = self.changed.notified();
            if self.reopening.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    }

    /// Waits until no connection is live.
    pub async fn all_gone(&self) {
        loop {
            let changed = self.changed.notified();
            if self.live.load(Ordering::Acquire) == 0 {
                return;
            }
            changed.await;
        }
    }
}
