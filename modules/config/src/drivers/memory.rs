//! The `configuration.memory` driver: items per tenant in memory, written by
//! admins with CONFIG_SET, gone when the module exits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mecha_abi::msg::{ConfigItem, ConfigSetItem};
use parking_lot::Mutex;

use super::{initial_revision, next_revision, select, BoxFuture, ConfigError, ConfigStore};
use super::{Hub, Scope, Subscriber};

/// Everything the mutex protects: the items and the revision counter live
/// under one lock so a write and the changes it publishes are ordered with
/// every snapshot.
struct Inner {
    /// Items by tenant, then key; sorted by key so "every item" answers are
    /// ordered without sorting.
    tenants: HashMap<String, BTreeMap<String, ConfigItem>>,
    /// The last revision handed out.
    revision: u64,
}

/// An in-memory configuration store, scoped by tenant: CONFIG_SET writes the
/// caller's tenant, and each tenant reads and watches only its own items.
pub struct MemoryStore {
    inner: Mutex<Inner>,
    hub: Arc<Hub>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                tenants: HashMap::new(),
                revision: initial_revision(),
            }),
            hub: Arc::new(Hub::default()),
        }
    }

    /// The store's subscribers (for tests and diagnostics).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    fn set_now(
        &self,
        tenant: &str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> Result<Vec<String>, ConfigError> {
        let mut inner = self.inner.lock();
        // One revision per request: the request is one atomic change, so all
        // its items carry the same version. A request that only deletes
        // needs no version, and takes none.
        let revision = if items.is_empty() {
            inner.revision
        } else {
            next_revision(inner.revision)?
        };
        inner.revision = revision;
        let version = revision.to_string();
        let scope = inner.tenants.entry(tenant.to_owned()).or_default();
        let mut written = Vec::with_capacity(items.len());
        for item in items {
            let item = ConfigItem {
                key: item.key,
                value: item.value,
                version: version.clone(),
                metadata: sorted(item.metadata),
            };
            scope.insert(item.key.clone(), item.clone());
            written.push(item);
        }
        // Only keys that existed are reported as deleted, so subscribers
        // hear about real changes only.
        let deleted: Vec<String> = delete
            .into_iter()
            .filter(|key| scope.remove(key).is_some())
            .collect();
        if scope.is_empty() {
            // Tenants that come and go leave nothing behind.
            inner.tenants.remove(tenant);
        }
        let versions = vec![version; written.len()];
        self.hub.publish(Scope::Tenant(tenant), &written, &deleted);
        Ok(versions)
    }
}

/// Metadata sorted by name, the order every answer uses.
fn sorted(mut metadata: Vec<(String, String)>) -> Vec<(String, String)> {
    metadata.sort();
    metadata
}

impl ConfigStore for MemoryStore {
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ConfigItem>, ConfigError>> {
        let inner = self.inner.lock();
        let items = select(inner.tenants.get(tenant), keys);
        drop(inner);
        Box::pin(async move { Ok(items) })
    }

    fn set<'a>(
        &'a self,
        tenant: &'a str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, ConfigError>> {
        let result = self.set_now(tenant, items, delete);
        Box::pin(async move { result })
    }

    fn subscribe<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<(Vec<ConfigItem>, Subscriber), ConfigError>> {
        // The snapshot and the registration happen under the items' lock, so
        // no write can fall between them.
        let inner = self.inner.lock();
        let snapshot = select(inner.tenants.get(tenant), &keys);
        let subscriber = self.hub.subscribe(tenant, keys);
        drop(inner);
        Box::pin(async move { Ok((snapshot, subscriber)) })
    }
}
