//! The application socket's accept loop, which identifies each peer and
//! hands it to `conn::serve` (the socket itself is made by `unix_socket.rs`).

use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn;
use crate::daemon::Daemon;
use crate::handover::freeze::Phase;
use crate::peer;

/// Accepts connections until shutdown, then waits for open connections to
/// finish their in-flight requests.
pub async fn accept_loop(
    listener: UnixListener,
    path: Arc<Path>,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    let mut reserve = Reserve::open();
    let mut trim = Trim::default();
    // A daemon hand-over pauses accepting: the next daemon accepts on the
    // same socket meanwhile (or this one again, if the hand-over fails).
    let mut phase = daemon.freeze.watch();
    loop {
        let serving = matches!(*phase.borrow_and_update(), Phase::Serving);
        tokio::select! {
            _ = phase.changed() => continue,
            accepted = listener.accept(), if serving => match accepted {
                Ok((stream, _)) => match peer::identify(&stream, &path) {
                    Ok(p) => {
                        let live = daemon.freeze.enter();
                        conns.spawn(conn::serve(stream, p, Arc::clone(&daemon), shutdown.clone(), live));
                        trim.opened(conns.len());
                    }
                    // At debug: connecting and exiting in a loop must not let a
                    // tenant fill the node's log.
                    Err(e) => tracing::debug!("rejecting a connection: {e}"),
                },
                Err(e) if is_out_of_descriptors(&e) => {
                    // Refuse the waiting connection with a status instead of
                    // leaving it unanswered in the backlog, using the
                    // descriptor held in reserve for exactly this.
                    if !reserve.refuse_one(&listener).await {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
                // Other failures (ECONNABORTED, ...) must not end the loop either.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => trim.closed(conns.len()),
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// EMFILE (this process) or ENFILE (the whole system).
fn is_out_of_descriptors(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// One descriptor kept open and unused, so that when the process runs out,
/// closing it makes room to accept a waiting connection and refuse it with
/// RESOURCE_EXHAUSTED (SPEC §6.9) rather than leave it hanging in the backlog.
struct Reserve(Option<std::fs::File>);

impl Reserve {
    fn open() -> Self {
        Self(std::fs::File::open("/dev/null").ok())
    }

    /// Accepts one connection with the reserved descriptor and refuses it.
    /// Returns false when there was no reserve to spend (it could not be
    /// reopened since the last time), so the caller backs off instead.
    async fn refuse_one(&mut self, listener: &UnixListener) -> bool {
        if self.0.take().is_none() {
            *self = Self::open();
            return false;
        }
        if let Ok(Ok((stream, _))) =
            tokio::time::timeout(std::time::Duration::from_millis(10), listener.accept()).await
        {
            // Bounded: a peer that does not read cannot hold the accept loop.
            let _ = tokio::time::timeout(
                std::time::Duration::from_millis(100),
                conn::refuse(
                    stream,
                    mecha_abi::Status::ResourceExhausted,
                    "mechad is out of file descriptors; retry later",
                ),
            )
            .await;
        }
        *self = Self::open();
        true
    }
}

/// Gives memory back to the system after many connections have closed.
/// glibc keeps freed heap memory for reuse, so after a burst of thousands of
/// connections the daemon's RSS would stay at its peak for good; trimming
/// once the open count has fallen well below its peak returns it.
#[derive(Default)]
struct Trim {
    peak: usize,
}

impl Trim {
    /// Connections below which, after a peak at least this far above, a trim
    /// is worth its cost (it walks the heap).
    const MIN_DROP: usize = 1024;

    fn opened(&mut self, open: usize) {
        self.peak = self.peak.max(open);
    }

    fn closed(&mut self, open: usize) {
        if self.peak >= open + Self::MIN_DROP && open <= self.peak / 2 {
            self.peak = open;
            release_free_memory();
        }
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() {
    // SAFETY: malloc_trim only walks glibc's own heap; it takes no pointers
    // and is safe to call from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_drop_from_the_peak() {
        let mut t = Trim::default();
        for open in 1..=3000 {
            t.opened(open);
        }
        t.closed(2500);
        assert_eq!(t.peak, 3000, "a small drop does not trim");
        t.closed(1400);
        assert_eq!(
            t.peak, 1400,
            "a drop past half the peak trims and resets it"
        );
        t.closed(1000);
        assert_eq!(t.peak, 1400, "then a new large drop is needed");
    }
}
