//! Segments of ids reserved ahead from a networked backend (`sequencer.redis`,
//! `sequencer.postgresql`), so that most allocations cost no round trip.
//!
//! The backend keeps, per sequence, a counter: the highest id ever reserved.
//! A reservation of `n` ids adds `n` to it atomically and owns the `n` ids
//! below the new value. Since the counter only grows and lives outside the
//! module, a restarted module (or another daemon sharing the backend) always
//! reserves above everything handed out before; the unused rest of a segment
//! a stopped module held is skipped, as the gap rule allows.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use mecha_module::metadata::{Metadata, MetadataError};
use mecha_module::DriverError;
use parking_lot::Mutex;

use crate::drivers::{last_id, SeqError, MAX_ID};

/// The largest `segmentSize`, as for `sequencer.redb`.
const MAX_SEGMENT_SIZE: u64 = 1_000_000_000;

/// The ids of one key reserved by this process and not handed out yet:
/// `next ..= end`, empty when `next > end`.
#[derive(Debug)]
struct Segment {
    next: u64,
    end: u64,
}

impl Default for Segment {
    fn default() -> Self {
        Self { next: 1, end: 0 }
    }
}

/// One key's segment behind an async mutex, held across a reservation so
/// concurrent allocations of the key wait for it instead of reserving twice.
type Slot = Arc<tokio::sync::Mutex<Segment>>;

/// The segments of every sequence this process has served.
#[derive(Debug)]
pub struct Segments {
    /// How many ids a reservation covers at least (`segmentSize`).
    size: u64,
    /// By tenant, then key; kept for the life of the process (a few dozen
    /// bytes per key), since dropping one would throw its ids away.
    slots: Mutex<HashMap<String, HashMap<String, Slot>>>,
}

impl Segments {
    /// Segments of `segmentSize` ids (metadata; default 1, at most
    /// [`MAX_SEGMENT_SIZE`]). The default of 1 makes every allocation one
    /// reservation, so ids are ordered also across several daemons sharing
    /// the server; a larger segment saves round trips but orders ids only
    /// within one daemon.
    pub fn from_metadata(metadata: &Metadata<'_>) -> Result<Self, MetadataError> {
        let size = metadata
            .whole("segmentSize", 1..=MAX_SEGMENT_SIZE)?
            .unwrap_or(1);
        Ok(Self::new(size))
    }

    /// Segments of at least `size` ids (`size` >= 1).
    pub fn new(size: u64) -> Self {
        Self {
            size: size.max(1),
            slots: Mutex::new(HashMap::new()),
        }
    }

    fn slot(&self, tenant: &str, key: &str) -> Slot {
        let mut slots = self.slots.lock();
        if let Some(slot) = slots.get(tenant).and_then(|keys| keys.get(key)) {
            return Arc::clone(slot);
        }
        Arc::clone(
            slots
                .entry(tenant.to_owned())
                .or_default()
                .entry(key.to_owned())
                .or_default(),
        )
    }

    /// Allocates `count` ids of `key`: from the segment when it holds enough,
    /// otherwise from a new reservation. `reserve(n)` must atomically add
    /// `n` to the key's counter in the backend and return the new value.
    ///
    /// A reservation that fails, or whose future is dropped, leaves the
    /// segment as it was; ids it may have reserved are skipped.
    pub async fn allocate<F, Fut>(
        &self,
        tenant: &str,
        key: &str,
        count: u32,
        reserve: F,
    ) -> Result<u64, SeqError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = Result<u64, SeqError>>,
    {
        let slot = self.slot(tenant, key);
        let mut segment = slot.lock().await;
        let wanted = u64::from(count);
        if (segment.end + 1).saturating_sub(segment.next) >= wanted {
            let first = segment.next;
            segment.next += wanted;
            return Ok(first);
        }
        // The rest of the old segment is too short; it is skipped rather than
        // joined to the new one, which another daemon may have moved past.
        let n = wanted.max(self.size);
        let bound = reserve(n).await?;
        let first = bound
            .checked_sub(n - 1)
            .filter(|&first| first >= 1)
            .ok_or_else(|| {
                SeqError::Driver(DriverError::Internal(format!(
                    "the backend returned counter {bound} for a reservation of {n} ids of {key:?}"
                )))
            })?;
        // A counter below what this process handed out means the backend
        // lost data (a server restarted without persistence); handing out
        // its ids again would break every promise, so refuse loudly.
        if first < segment.next {
            return Err(SeqError::Driver(DriverError::Internal(format!(
                "the backend's counter of {key:?} went backwards (to {bound}, below {} already \
                 handed out): has the server lost its data?",
                segment.next
            ))));
        }
        last_id(key, first, count)?;
        segment.next = first + wanted;
        segment.end = bound.min(MAX_ID);
        Ok(first)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn block<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn segments_serve_from_memory_and_skip_short_rests() {
        let counter = AtomicU64::new(0);
        let reservations = AtomicU64::new(0);
        let segments = Segments::new(10);
        let alloc = |count: u32| {
            block(segments.allocate("t", "k", count, |n| {
                reservations.fetch_add(1, Ordering::Relaxed);
                let bound = counter.fetch_add(n, Ordering::Relaxed) + n;
                async move { Ok(bound) }
            }))
            .expect("allocated")
        };
        assert_eq!(alloc(3), 1);
        assert_eq!(alloc(7), 4);
        assert_eq!(reservations.load(Ordering::Relaxed), 1);
        assert_eq!(alloc(1), 11);
        // 9 ids are left (12..=20); 15 do not fit, so a fresh reservation
        // of 15 starts above the counter.
        assert_eq!(alloc(15), 21);
        assert_eq!(counter.load(Ordering::Relaxed), 35);
        assert_eq!(alloc(1), 36);
    }

    #[test]
    fn a_failed_reservation_changes_nothing() {
        let segments = Segments::new(1);
        let failed = block(segments.allocate("t", "k", 1, |_| async {
            Err(SeqError::Driver(DriverError::Unavailable("down".into())))
        }));
        assert_eq!(
            failed,
            Err(SeqError::Driver(DriverError::Unavailable("down".into())))
        );
        let ok = block(segments.allocate("t", "k", 2, |n| async move { Ok(n + 5) }));
        assert_eq!(ok, Ok(6));
    }
}
