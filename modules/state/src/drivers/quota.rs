//! Per-tenant quotas on what a tenant keeps in an embedded state store: how
//! many keys and how many bytes (issue #16). A tenant that writes without
//! end would otherwise fill the node's memory or disk for everyone.

use mecha_module::metadata::{Metadata, MetadataError};

use mecha_module::DriverError;

use super::StoreError;

/// The metadata fields that set a store's quota.
pub const FIELDS: [&str; 2] = ["maxKeysPerTenant", "maxBytesPerTenant"];

/// Keys one tenant may keep in one store unless `maxKeysPerTenant` says
/// otherwise.
pub const DEFAULT_MAX_KEYS: u64 = 1_000_000;

/// Bytes (keys plus values) one tenant may keep in one store unless
/// `maxBytesPerTenant` says otherwise: 256 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 256 << 20;

/// What one tenant keeps in a store. Expired entries count until they are
/// removed (by a sweep, a delete or an overwrite), since until then they
/// take their room.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Stored keys.
    pub keys: u64,
    /// Stored bytes: each key's length plus its value's length.
    pub bytes: u64,
}

impl Usage {
    /// The room one entry takes.
    fn size(key: &str, value_len: usize) -> u64 {
        // usize always fits in u64 on the targets mecha builds for.
        (key.len() as u64).saturating_add(value_len as u64)
    }

    /// Counts a stored entry.
    pub fn add(&mut self, key: &str, value_len: usize) {
        self.keys = self.keys.saturating_add(1);
        self.bytes = self.bytes.saturating_add(Self::size(key, value_len));
    }

    /// Uncounts a removed (or overwritten) entry. Saturating, so that totals
    /// that somehow drifted low can never wrap around to "full".
    pub fn remove(&mut self, key: &str, value_len: usize) {
        self.keys = self.keys.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(Self::size(key, value_len));
    }

    /// True when nothing is stored, so the tenant's row can go.
    pub fn is_empty(self) -> bool {
        self.keys == 0 && self.bytes == 0
    }
}

/// The limits of one store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    /// The component's name, for the error message.
    component: String,
    /// The most keys per tenant.
    max_keys: u64,
    /// The most bytes per tenant.
    max_bytes: u64,
}

impl Quota {
    /// The default quota of component `component`.
    pub fn defaults(component: &str) -> Self {
        Self {
            component: component.to_owned(),
            max_keys: DEFAULT_MAX_KEYS,
            max_bytes: DEFAULT_MAX_BYTES,
        }
    }

    /// The quota `metadata` sets, with the defaults for fields it leaves out.
    pub fn from_metadata(metadata: &Metadata) -> Result<Self, MetadataError> {
        Ok(Self {
            component: metadata.component().to_owned(),
            max_keys: metadata
                .whole("maxKeysPerTenant", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_KEYS),
            max_bytes: metadata
                .whole("maxBytesPerTenant", 1..=u64::MAX)?
                .unwrap_or(DEFAULT_MAX_BYTES),
        })
    }

    /// Whether a write that takes a tenant from `before` to `after` may go
    /// ahead: refused only when it grows a total past its limit. A write
    /// that shrinks or keeps a total passes even above the limit (after the
    /// limit was lowered), so a tenant can always delete its way back.
    pub fn check(&self, before: Usage, after: Usage) -> Result<(), StoreError> {
        let over = |field: &'static str, was: u64, now: u64, limit: u64| {
            (now > was && now > limit).then(|| {
                StoreError::Driver(DriverError::Quota {
                    component: self.component.clone(),
                    field,
                    limit,
                    what: format!("a stored total of {now}"),
                })
            })
        };
        match over("maxKeysPerTenant", before.keys, after.keys, self.max_keys).or_else(|| {
            over(
                "maxBytesPerTenant",
                before.bytes,
                after.bytes,
                self.max_bytes,
            )
        }) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(max_keys: u64, max_bytes: u64) -> Quota {
        Quota {
            component: "s".to_owned(),
            max_keys,
            max_bytes,
        }
    }

    fn usage(keys: u64, bytes: u64) -> Usage {
        Usage { keys, bytes }
    }

    #[test]
    fn growth_past_a_limit_is_refused_and_shrinking_always_passes() {
        let q = quota(2, 10);
        assert!(q.check(usage(1, 5), usage(2, 10)).is_ok());
        assert!(matches!(
            q.check(usage(2, 5), usage(3, 6)),
            Err(StoreError::Driver(DriverError::Quota {
                field: "maxKeysPerTenant",
                limit: 2,
                ..
            }))
        ));
        assert!(matches!(
            q.check(usage(1, 5), usage(1, 11)),
            Err(StoreError::Driver(DriverError::Quota {
                field: "maxBytesPerTenant",
                ..
            }))
        ));
        // Over the limits already (a lowered quota): shrinking passes, and
        // so does an overwrite that keeps both totals.
        assert!(q.check(usage(5, 50), usage(4, 40)).is_ok());
        assert!(q.check(usage(5, 50), usage(5, 50)).is_ok());
    }

    #[test]
    fn usage_counts_keys_and_their_lengths() {
        let mut u = Usage::default();
        u.add("key", 10);
        u.add("k", 0);
        assert_eq!(u, usage(2, 14));
        u.remove("key", 10);
        u.remove("k", 0);
        assert!(u.is_empty());
        u.remove("k", 0);
        assert!(u.is_empty(), "uncounting never wraps");
    }
}
