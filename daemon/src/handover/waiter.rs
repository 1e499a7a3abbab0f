//! Who waits for the outcome of a daemon upgrade under way: the DAEMON_UPGRADE
//! request (or SIGUSR2) that started it, told by the hand-over when the new
//! daemon is ready or has failed.

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// The upgrade under way, if any: who waits for its outcome.
#[derive(Default)]
pub struct Upgrade {
    pub(super) waiter: Mutex<Option<oneshot::Sender<Result<u32, String>>>>,
}

impl Upgrade {
    /// Tells the requester the hand-over's outcome: the new daemon's pid
    /// once it is ready to take over, or why it will not.
    pub fn settle(&self, outcome: Result<u32, String>) {
        if let Some(waiter) = self.waiter.lock().take() {
            let _ = waiter.send(outcome);
        }
    }
}
