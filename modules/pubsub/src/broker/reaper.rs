//! The reaper: one task per broker that fails deliveries whose ack deadline
//! passed, so they are delivered again (or dead-lettered).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::engine::Engine;
use super::group::Followup;
use super::topic::Topic;

/// The longest the reaper sleeps without being told of a new deadline; a
/// safety net only, as every new earlier deadline wakes it.
const REAPER_IDLE: Duration = Duration::from_secs(1);

impl Engine {
    /// Starts the task that redelivers messages whose ack deadline passed.
    pub(super) fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(reap(weak, Arc::clone(&self.timer)));
    }

    /// Makes sure the reaper wakes by `deadline`.
    pub(super) fn deadline_added(&self, deadline: Instant) {
        let mut planned = self.planned_wake.lock();
        let earlier = match *planned {
            None => true,
            Some(p) => deadline < p,
        };
        if earlier {
            *planned = Some(deadline);
            self.timer.notify_one();
        }
    }

    /// Fails every delivery whose deadline has passed; returns the earliest
    /// deadline still ahead.
    async fn expire(self: &Arc<Self>) -> Option<Instant> {
        let topics: Vec<Arc<Topic>> = self.topics.lock().all().cloned().collect();
        let now = Instant::now();
        let mut earliest: Option<Instant> = None;
        for topic in topics {
            let mut work = Vec::new();
            {
                let mut state = topic.state.lock();
                let dead_letter = self.settings.dead_letter_topic_of(&topic.name).is_some();
                for (name, g) in &mut state.groups {
                    let mut out = Followup::default();
                    while let Some(&(at, offset)) = g.deadlines.first() {
                        if at > now {
                            break;
                        }
                        g.fail(offset, self.settings.max_deliveries, dead_letter, &mut out);
                    }
                    if let Some(at) = g.earliest_deadline() {
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                    if out.change.is_some() || !out.dead_letters.is_empty() {
                        work.push((name.clone(), out));
                    }
                }
            }
            if work.is_empty() {
                continue;
            }
            topic.changed.notify_waiters();
            for (group, out) in work {
                if let Err(e) = self.follow_up(&topic, &group, out).await {
                    tracing::warn!(
                        store = %self.settings.store,
                        topic = %topic.name,
                        group = %group,
                        "storing expired deliveries failed: {e}"
                    );
                }
            }
        }
        earliest
    }
}

/// The reaper: fails deliveries whose ack deadline passed, so they are
/// delivered again. It runs while the broker exists, sleeping until the
/// earliest deadline (or until told of an earlier one).
async fn reap(weak: Weak<Engine>, timer: Arc<Notify>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        // While expiring, every new deadline wakes the next round (see
        // `deadline_added`), so none added meanwhile is overslept.
        *inner.planned_wake.lock() = None;
        let earliest = inner.expire().await;
        let now = Instant::now();
        let wake = earliest.map_or(now + REAPER_IDLE, |at| at.min(now + REAPER_IDLE));
        *inner.planned_wake.lock() = Some(wake);
        drop(inner);
        // A deadline added since the round began left a permit, which this
        // consumes at once, so it is not overslept.
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            () = timer.notified() => {}
        }
    }
}
