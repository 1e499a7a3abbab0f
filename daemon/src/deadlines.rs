//! One timer for many deadlines: entries ordered by when they expire, and a
//! sweeper task that sleeps until the earliest. Adding a deadline no earlier
//! than the one the sweeper sleeps until (the common case: calls with the
//! same timeout arrive in order) wakes nobody, so a deadline costs a map
//! insert and a removal, not a task or a wake-up of its own.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Names one deadline, for its removal.
pub type Key = (Instant, u64);

/// Deadlines of entries `T`, handed to the sweeper's callback when due.
pub struct Deadlines<T> {
    queue: Mutex<Queue<T>>,
    seq: AtomicU64,
    wake: Notify,
}

/// The entries, and when the sweeper will next look at them: `None` while it
/// waits for an insert (or has not started).
struct Queue<T> {
    due: BTreeMap<Key, T>,
    armed: Option<Instant>,
}

impl<T> Default for Deadlines<T> {
    fn default() -> Self {
        Self {
            queue: Mutex::new(Queue {
                due: BTreeMap::new(),
                armed: None,
            }),
            seq: AtomicU64::new(0),
            wake: Notify::new(),
        }
    }
}

impl<T> Deadlines<T> {
    /// A fresh key for a deadline at `at`, to be [`Self::insert`]ed later.
    pub fn key(&self, at: Instant) -> Key {
        (at, self.seq.fetch_add(1, Ordering::Relaxed))
    }

    /// Adds an entry due at its key's instant.
    pub fn insert(&self, key: Key, entry: T) {
        let wake = {
            let mut q = self.queue.lock();
            q.due.insert(key, entry);
            let wake = q.armed.is_none_or(|at| key.0 < at);
            if wake {
                q.armed = Some(key.0);
            }
            wake
        };
        if wake {
            self.wake.notify_one();
        }
    }

    /// Removes an entry that is no longer due (its call was answered).
    pub fn remove(&self, key: &Key) {
        self.queue.lock().due.remove(key);
    }

    /// Hands every entry to `due` when its deadline passes, forever.
    pub async fn sweep(&self, due: impl Fn(T)) {
        loop {
            let now = Instant::now();
            let (expired, next) = {
                let mut q = self.queue.lock();
                let later = q.due.split_off(&(now, u64::MAX));
                let expired = std::mem::replace(&mut q.due, later);
                q.armed = q.due.first_key_value().map(|(k, _)| k.0);
                (expired, q.armed)
            };
            for entry in expired.into_values() {
                due(entry);
            }
            // A wake-up stored while sweeping is kept by `Notify`, so an
            // earlier deadline added meanwhile is not slept through.
            match next {
                Some(at) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.wake.notified() => {}
                    }
                }
                None => self.wake.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn entries_are_due_in_deadline_order_unless_removed() {
        let d: Arc<Deadlines<u32>> = Arc::default();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sweeper = Arc::clone(&d);
        tokio::spawn(async move { sweeper.sweep(move |n| tx.send(n).unwrap()).await });
        let now = Instant::now();
        d.insert(d.key(now + Duration::from_millis(60)), 2);
        let gone = d.key(now + Duration::from_millis(10));
        d.insert(gone, 0);
        d.insert(d.key(now + Duration::from_millis(30)), 1);
        d.remove(&gone);
        assert_eq!(rx.recv().await, Some(1));
        assert!(Instant::now() >= now + Duration::from_millis(30));
        assert_eq!(rx.recv().await, Some(2));
        assert!(Instant::now() >= now + Duration::from_millis(60));
        assert!(rx.try_recv().is_err(), "the removed entry is never due");
    }
}
