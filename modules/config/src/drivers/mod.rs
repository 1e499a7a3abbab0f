//! The configuration driver trait, its error type, the change fan-out shared
//! by the drivers ([`Hub`], [`Subscriber`]), and the factory that opens a
//! driver from a component spec (`spec.type` → implementation).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use mecha_abi::msg::{ComponentSpec, ConfigItem, ConfigSetItem};
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;
use parking_lot::Mutex;
use tokio::sync::Notify;

pub mod etcd;
pub mod file;
pub mod memory;
pub mod redis;

/// The SDK's boxed future, under which the driver trait's methods return.
pub use mecha_module::BoxFuture;

/// The metadata field every driver accepts: a comma-separated list of the
/// tenants that may use the store. It is handled by the module, not by the
/// drivers, which only have to tolerate it.
pub const ALLOWED_TENANTS: &str = "allowedTenants";

/// Why a driver operation failed: the configuration store's own failures,
/// or one every capability shares.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The store cannot be written through the ABI (its source is a file).
    #[error("store {store:?} is read-only")]
    ReadOnly {
        /// The component name.
        store: String,
    },
    /// The driver does not implement the operation or option; the message
    /// names the component, its type and the feature. It is free-form, unlike
    /// [`DriverError::Unsupported`], because these refusals say more than the
    /// feature (the item that carries metadata, etcd's transaction limit).
    #[error("{0}")]
    Unsupported(String),
    /// The metadata or source is unusable, the store cannot be reached, or
    /// it failed.
    #[error(transparent)]
    Driver(#[from] DriverError),
}

mecha_module::wraps_driver_error!(ConfigError);

/// A configuration store.
///
/// Semantics every driver must honour (the conformance tests check them):
/// - Versions are decimal strings of a per-store revision counter that only
///   grows, so a version is never reused by a store, and every change of an
///   item gives it a new version.
/// - `get` with keys answers in request order, each key at most once, and
///   leaves out missing keys; `get` without keys answers every item sorted by
///   key.
/// - `subscribe` takes the snapshot and registers the subscriber atomically:
///   every change after the snapshot reaches the subscriber, none before it.
/// - A subscriber is told about changes of the keys it watches only, and of
///   the tenants it may see only.
pub trait ConfigStore: Send + Sync + 'static {
    /// Reads the items of `keys` (every item when empty) that `tenant` sees.
    fn get<'a>(
        &'a self,
        tenant: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ConfigItem>, ConfigError>>;

    /// Writes `items` and deletes `delete` atomically in `tenant`'s scope and
    /// answers one new version per item, in order. Read-only stores answer
    /// [`ConfigError::ReadOnly`]. The module has checked that keys are
    /// non-empty and appear once across both lists.
    fn set<'a>(
        &'a self,
        tenant: &'a str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, ConfigError>>;

    /// Answers the current items of `keys` (every item when empty) as `get`
    /// does, together with a subscriber that receives every later change of
    /// those keys.
    fn subscribe<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<(Vec<ConfigItem>, Subscriber), ConfigError>>;
}

/// Opens the driver named by `spec.kind`.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Box<dyn ConfigStore>, ConfigError> {
    match spec.kind.as_str() {
        "configuration.memory" => {
            Metadata::parse(spec, &[ALLOWED_TENANTS])?;
            Ok(Box::new(memory::MemoryStore::new()))
        }
        "configuration.file" => Ok(Box::new(file::FileStore::open(spec, data_dir)?)),
        "configuration.redis" => Ok(Box::new(redis::RedisStore::open(spec)?)),
        "configuration.etcd" => Ok(Box::new(etcd::EtcdStore::open(spec)?)),
        other => Err(ConfigError::Driver(DriverError::Config {
            component: spec.name.clone(),
            reason: format!(
                "unknown configuration store type {other:?} (known: configuration.memory, \
                 configuration.file, configuration.redis, configuration.etcd)"
            ),
        })),
    }
}

/// The tenants allowed to use the store described by `spec`: `None` when
/// its metadata has no `allowedTenants` field (everyone may). An empty list
/// is refused: it would lock everyone out, which is never what a field meant
/// to grant access wants; it is far more likely a templating slip.
pub fn allowed_tenants(spec: &ComponentSpec) -> Result<Option<Vec<String>>, ConfigError> {
    // The driver checks the metadata as a whole (unknown fields) when it
    // opens; only the one field matters here.
    let tenants = Metadata::lenient(spec)?.list(ALLOWED_TENANTS)?;
    Ok(tenants.map(|tenants| tenants.into_iter().map(str::to_owned).collect()))
}

/// Refuses item metadata on a store whose backend has nowhere to keep it.
pub(crate) fn refuse_metadata(
    component: &str,
    kind: &str,
    items: &[ConfigSetItem],
) -> Result<(), ConfigError> {
    match items.iter().find(|item| !item.metadata.is_empty()) {
        Some(item) => Err(ConfigError::Unsupported(format!(
            "component {component:?} ({kind}) does not support item metadata (item {:?} has \
             some); write the item without metadata",
            item.key
        ))),
        None => Ok(()),
    }
}

/// The first revision of a store opened now: microseconds since the Unix
/// epoch. Seeding from the clock makes versions keep growing across module
/// restarts (as long as the clock does), so a client comparing a version from
/// before a restart with one from after it is not fooled by a reused number.
pub(crate) fn initial_revision() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
        .unwrap_or(1)
}

/// The revision after `revision`. Overflow is reported rather than wrapped,
/// since wrapping would reuse versions.
pub(crate) fn next_revision(revision: u64) -> Result<u64, ConfigError> {
    revision.checked_add(1).ok_or_else(|| {
        ConfigError::Driver(DriverError::Internal(
            "the revision counter is exhausted".to_owned(),
        ))
    })
}

/// Picks the answer to a get out of a store's items: `keys` in request
/// order, each once, missing ones left out; every item (sorted) when `keys`
/// is empty.
pub(crate) fn select(
    items: Option<&BTreeMap<String, ConfigItem>>,
    keys: &[String],
) -> Vec<ConfigItem> {
    let Some(items) = items else {
        return Vec::new();
    };
    if keys.is_empty() {
        return items.values().cloned().collect();
    }
    let mut seen = HashSet::with_capacity(keys.len());
    keys.iter()
        .filter(|key| seen.insert(key.as_str()))
        .filter_map(|key| items.get(key).cloned())
        .collect()
}

/// [`select`] over items read from a backend (any order, each key once).
pub(crate) fn select_sorted(items: Vec<ConfigItem>, keys: &[String]) -> Vec<ConfigItem> {
    let items: BTreeMap<String, ConfigItem> =
        items.into_iter().map(|i| (i.key.clone(), i)).collect();
    select(Some(&items), keys)
}

/// Which subscribers a change concerns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope<'a> {
    /// Subscribers of one tenant (stores that scope items by tenant).
    Tenant(&'a str),
    /// Every subscriber (node-wide stores, such as a file).
    All,
}

/// The pending changes of one subscriber, coalesced by key.
struct Mailbox {
    /// The subscriber's tenant.
    tenant: String,
    /// The keys it watches; `None` for every key.
    keys: Option<HashSet<String>>,
    /// Changes not yet taken: the latest item per key, `None` for a delete.
    /// Keyed by item key, so its size is bounded by the number of keys the
    /// subscriber watches, however far behind it falls.
    pending: Mutex<BTreeMap<String, Option<ConfigItem>>>,
    /// Wakes the subscriber when `pending` becomes non-empty or the
    /// subscription ends.
    notify: Notify,
    /// Why the store ended the subscription (its backend connection was
    /// lost, so changes may have been missed); the stream then ends with
    /// UNAVAILABLE after the pending changes, and the client resubscribes.
    ended: Mutex<Option<String>>,
    /// Changes at or below this store revision are already in the
    /// subscriber's snapshot and are not delivered (see
    /// [`Hub::publish_at`]); 0 for stores without revisions.
    floor: u64,
}

impl Mailbox {
    fn watches(&self, key: &str) -> bool {
        // A match rather than `Option::is_none_or`, which is newer than the
        // workspace's rust-version (1.80).
        match &self.keys {
            None => true,
            Some(keys) => keys.contains(key),
        }
    }
}

/// Registered subscribers of one store.
#[derive(Default)]
struct Subscribers {
    next_id: u64,
    by_id: HashMap<u64, Arc<Mailbox>>,
}

/// The change fan-out of one store: drivers publish every change here and it
/// lands, coalesced, in the mailbox of every subscriber that watches it.
///
/// Drivers must call [`Hub::subscribe`] and [`Hub::publish`] while holding
/// the lock that guards their items, so that a snapshot and the changes that
/// follow it are ordered.
#[derive(Default)]
pub struct Hub {
    subscribers: Mutex<Subscribers>,
}

impl Hub {
    /// Registers a subscriber of `keys` (every key when empty) in `tenant`.
    pub(crate) fn subscribe(self: &Arc<Self>, tenant: &str, keys: Vec<String>) -> Subscriber {
        self.subscribe_after(tenant, keys, 0)
    }

    /// Registers a subscriber whose snapshot was taken at store revision
    /// `floor`: changes published with [`Hub::publish_at`] at or below it
    /// are skipped, since the snapshot has them.
    pub(crate) fn subscribe_after(
        self: &Arc<Self>,
        tenant: &str,
        keys: Vec<String>,
        floor: u64,
    ) -> Subscriber {
        let mailbox = Arc::new(Mailbox {
            tenant: tenant.to_owned(),
            keys: (!keys.is_empty()).then(|| keys.into_iter().collect()),
            pending: Mutex::new(BTreeMap::new()),
            notify: Notify::new(),
            ended: Mutex::new(None),
            floor,
        });
        let mut subscribers = self.subscribers.lock();
        let id = subscribers.next_id;
        subscribers.next_id += 1;
        subscribers.by_id.insert(id, Arc::clone(&mailbox));
        Subscriber {
            hub: Arc::clone(self),
            id,
            mailbox,
        }
    }

    /// Hands a change to every subscriber in `scope` that watches one of its
    /// keys. A key already pending for a subscriber is overwritten: a slow
    /// subscriber gets the latest value, not every value in between.
    pub(crate) fn publish(&self, scope: Scope<'_>, items: &[ConfigItem], deleted: &[String]) {
        self.publish_at(scope, items, deleted, u64::MAX);
    }

    /// [`Hub::publish`] of a change made at store revision `revision`,
    /// skipping subscribers whose snapshot already has it.
    pub(crate) fn publish_at(
        &self,
        scope: Scope<'_>,
        items: &[ConfigItem],
        deleted: &[String],
        revision: u64,
    ) {
        let subscribers = self.subscribers.lock();
        for mailbox in subscribers.by_id.values() {
            if revision <= mailbox.floor {
                continue;
            }
            if let Scope::Tenant(tenant) = scope {
                if mailbox.tenant != tenant {
                    continue;
                }
            }
            let mut pending = mailbox.pending.lock();
            let before = pending.len();
            let mut touched = false;
            for item in items.iter().filter(|item| mailbox.watches(&item.key)) {
                pending.insert(item.key.clone(), Some(item.clone()));
                touched = true;
            }
            for key in deleted.iter().filter(|key| mailbox.watches(key)) {
                pending.insert(key.clone(), None);
                touched = true;
            }
            drop(pending);
            if touched {
                // `notify_one` stores a permit when nobody waits, so a change
                // published between the subscriber's check and its wait is
                // not missed. `before` only saves needless wake-ups.
                if before == 0 {
                    mailbox.notify.notify_one();
                }
            }
        }
    }

    /// Ends every subscription with `reason`: the store lost the connection
    /// its changes arrive on, so subscribers may have missed changes and
    /// must subscribe again for a fresh snapshot.
    pub(crate) fn end_all(&self, reason: &str) {
        let subscribers = self.subscribers.lock();
        for mailbox in subscribers.by_id.values() {
            *mailbox.ended.lock() = Some(reason.to_owned());
            mailbox.notify.notify_one();
        }
    }

    /// How many subscribers are registered.
    pub fn len(&self) -> usize {
        self.subscribers.lock().by_id.len()
    }

    /// True when no subscriber is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What changed for a subscriber since it last took its changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Items created or changed, with their latest values, sorted by key.
    pub items: Vec<ConfigItem>,
    /// Keys deleted, sorted.
    pub deleted: Vec<String>,
}

/// One subscription to a store's changes. Dropping it unsubscribes.
pub struct Subscriber {
    hub: Arc<Hub>,
    id: u64,
    mailbox: Arc<Mailbox>,
}

impl Subscriber {
    /// Resolves once changes are pending or the subscription has ended.
    pub async fn changed(&self) {
        loop {
            if !self.mailbox.pending.lock().is_empty() || self.mailbox.ended.lock().is_some() {
                return;
            }
            self.mailbox.notify.notified().await;
        }
    }

    /// Why the store ended this subscription, if it did (see
    /// [`Hub::end_all`]).
    pub fn ended(&self) -> Option<String> {
        self.mailbox.ended.lock().clone()
    }

    /// Takes every pending change, coalesced; `None` when there is none.
    pub fn take(&self) -> Option<Changes> {
        let pending = std::mem::take(&mut *self.mailbox.pending.lock());
        if pending.is_empty() {
            return None;
        }
        let mut changes = Changes::default();
        for (key, item) in pending {
            match item {
                Some(item) => changes.items.push(item),
                None => changes.deleted.push(key),
            }
        }
        Some(changes)
    }

    /// How many keys have changes pending (for tests and diagnostics).
    pub fn pending_keys(&self) -> usize {
        self.mailbox.pending.lock().len()
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("id", &self.id)
            .field("tenant", &self.mailbox.tenant)
            .finish_non_exhaustive()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.hub.subscribers.lock().by_id.remove(&self.id);
    }
}
