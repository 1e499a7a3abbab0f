//! Per-tenant ledgers of what a tenant keeps in an embedded store — the
//! bytes its messages take and how many topics it has — against which the
//! broker admits a publish or a new topic (`maxBytesPerTenant`,
//! `maxTopicsPerTenant`, issue #16).
//!
//! A ledger starts from what the driver says the tenant keeps
//! ([`PubsubLog::tenant_usage`], durable counts for `pubsub.redb`), loaded
//! before the broker touches any of the tenant's topics. From then on the
//! broker is the only writer, so the ledger follows every change: a publish
//! reserves its bytes before its offset is taken (a refusal therefore takes
//! no offset and leaves no gap), gives them back if its append fails, and
//! every trim gives back the bytes the driver answers it deleted. A publish
//! whose retention trim makes room is admitted on what it leaves (see
//! [`Ledger::reserve`]), so a topic without groups keeps rolling over at
//! the quota.

use std::collections::HashMap;
use std::sync::Arc;

use mecha_module::DriverError;
use parking_lot::Mutex;

use super::log::{PubsubLog, TenantUsage};
use super::settings::Settings;
use crate::error::PubsubError;

/// One tenant's ledger: what it keeps, plus the bytes of appends queued but
/// not yet landed.
#[derive(Default)]
pub(super) struct Ledger {
    /// Loaded once, from the driver, before the tenant's first topic.
    usage: tokio::sync::OnceCell<Mutex<TenantUsage>>,
}

impl Ledger {
    /// The loaded totals; `None` before the load, when nothing of the
    /// tenant's can have been written through this broker yet.
    fn usage(&self) -> Option<&Mutex<TenantUsage>> {
        self.usage.get()
    }

    /// Reserves `added` bytes for a message about to be appended by an
    /// append whose trim will delete `trimmed` bytes, unless the tenant's
    /// total would grow past `settings.max_bytes`. A total that does not
    /// grow passes even above the limit (after the limit was lowered), so a
    /// tenant always keeps what it has. The reservation is undone when the
    /// returned guard drops, unless a stored append
    /// [settles](Reserved::settle) it.
    pub(super) fn reserve(
        self: &Arc<Self>,
        added: u64,
        trimmed: u64,
        settings: &Settings,
    ) -> Result<Reserved, PubsubError> {
        if let Some(usage) = self.usage() {
            let mut usage = usage.lock();
            let after = usage.bytes.saturating_add(added).saturating_sub(trimmed);
            if after > settings.max_bytes && after > usage.bytes {
                return Err(PubsubError::Driver(DriverError::Quota {
                    component: settings.store.clone(),
                    field: "maxBytesPerTenant",
                    limit: settings.max_bytes,
                    what: format!(
                        "a message of {added} stored bytes on top of the {} the tenant's \
                         topics retain",
                        usage.bytes
                    ),
                }));
            }
            usage.bytes = after;
        }
        Ok(Reserved {
            ledger: Arc::clone(self),
            added,
            trimmed,
            settled: false,
        })
    }

    /// Adds `add` and takes off `sub` bytes. Saturating, so a ledger that
    /// somehow drifted low never wraps around to "full".
    fn adjust(&self, add: u64, sub: u64) {
        if add == sub {
            return;
        }
        if let Some(usage) = self.usage() {
            let mut usage = usage.lock();
            usage.bytes = usage.bytes.saturating_add(add).saturating_sub(sub);
        }
    }

    /// Gives back `bytes` that left the store (a trim deleted them).
    pub(super) fn release(&self, bytes: u64) {
        self.adjust(0, bytes);
    }

    /// Counts a topic the store holds nothing of yet, unless the tenant
    /// already has `settings.max_topics`.
    pub(super) fn add_topic(&self, name: &str, settings: &Settings) -> Result<(), PubsubError> {
        if let Some(usage) = self.usage() {
            let mut usage = usage.lock();
            if usage.topics >= settings.max_topics {
                return Err(PubsubError::Driver(DriverError::Quota {
                    component: settings.store.clone(),
                    field: "maxTopicsPerTenant",
                    limit: settings.max_topics,
                    what: format!("a new topic {name:?}"),
                }));
            }
            usage.topics += 1;
        }
        Ok(())
    }

    /// The current totals, for tests.
    #[cfg(test)]
    pub(super) fn snapshot(&self) -> Option<TenantUsage> {
        self.usage().map(|usage| *usage.lock())
    }
}

/// What one append reserved: its message's bytes, less what its trim was
/// expected to delete. Dropped unsettled (the append failed or was never
/// queued, so nothing was stored or deleted), it is undone.
pub(super) struct Reserved {
    ledger: Arc<Ledger>,
    added: u64,
    trimmed: u64,
    settled: bool,
}

impl Reserved {
    /// The append is stored and its trim deleted `freed` bytes: the message
    /// stays counted, and the ledger takes off what the trim really deleted
    /// in place of what was expected (a queued append may have deleted some
    /// of it first).
    pub(super) fn settle(mut self, freed: u64) {
        self.settled = true;
        self.ledger.adjust(self.trimmed, freed);
    }
}

impl Drop for Reserved {
    fn drop(&mut self) {
        if !self.settled {
            self.ledger.adjust(self.trimmed, self.added);
        }
    }
}

/// Every tenant's ledger. Bounded by the tenants that used the store, which
/// the daemon bounds.
#[derive(Default)]
pub(super) struct Ledgers {
    by_tenant: Mutex<HashMap<String, Arc<Ledger>>>,
}

impl Ledgers {
    /// `tenant`'s ledger, loaded from `log` on first use.
    pub(super) async fn get(
        &self,
        tenant: &str,
        log: &dyn PubsubLog,
    ) -> Result<Arc<Ledger>, PubsubError> {
        let ledger = Arc::clone(self.by_tenant.lock().entry(tenant.to_owned()).or_default());
        ledger
            .usage
            .get_or_try_init(|| async { log.tenant_usage(tenant).await.map(Mutex::new) })
            .await?;
        Ok(ledger)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(max_bytes: u64, max_topics: u64) -> Settings {
        Settings {
            max_bytes,
            max_topics,
            ..Settings::for_tests("bus")
        }
    }

    fn loaded(bytes: u64, topics: u64) -> Arc<Ledger> {
        let ledger = Arc::new(Ledger::default());
        assert!(ledger
            .usage
            .set(Mutex::new(TenantUsage { bytes, topics }))
            .is_ok());
        ledger
    }

    #[test]
    fn a_reservation_past_the_byte_quota_is_refused_and_changes_nothing() {
        let ledger = loaded(60, 0);
        let settings = settings(100, 10);
        let kept = ledger
            .reserve(40, 0, &settings)
            .expect("exactly at the quota");
        let refused = ledger.reserve(1, 0, &settings).err();
        assert!(matches!(
            refused,
            Some(PubsubError::Driver(DriverError::Quota {
                field: "maxBytesPerTenant",
                limit: 100,
                ..
            }))
        ));
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(100));
        // A stored append keeps its bytes; its trim gives back what it freed.
        kept.settle(30);
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(70));
        // A failed append gives back all it reserved.
        drop(ledger.reserve(30, 0, &settings).expect("room again"));
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(70));
        // An append whose trim makes room passes at the quota; settled with
        // less freed than expected, the ledger counts what is really kept.
        let rolling = ledger.reserve(50, 20, &settings).expect("net 100");
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(100));
        rolling.settle(15);
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(105));
        // Growing past it is refused; shrinking above it passes.
        assert!(ledger.reserve(10, 5, &settings).is_err());
        drop(ledger.reserve(10, 15, &settings).expect("shrinks"));
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(105));
        ledger.release(1_000);
        assert_eq!(ledger.snapshot().map(|u| u.bytes), Some(0), "never wraps");
    }

    #[test]
    fn new_topics_stop_at_the_topic_quota() {
        let ledger = loaded(0, 1);
        let settings = settings(100, 2);
        ledger.add_topic("b", &settings).expect("the second topic");
        assert!(matches!(
            ledger.add_topic("c", &settings),
            Err(PubsubError::Driver(DriverError::Quota {
                field: "maxTopicsPerTenant",
                ..
            }))
        ));
        assert_eq!(ledger.snapshot().map(|u| u.topics), Some(2));
    }
}
