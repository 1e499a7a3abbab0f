//! The `configuration.etcd` driver: items are the keys under a prefix
//! (`keyPrefixPath`), versions are their etcd mod revisions, and one etcd
//! watch per store delivers changes; snapshots and watches are joined at an
//! etcd revision, so a subscriber gets every change after its snapshot and
//! none before it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use mecha_abi::msg::{ComponentSpec, ConfigItem, ConfigSetItem};
use mecha_module::metadata::Metadata;
use mecha_module::remote::etcd::{base64, bytes, int, prefix_range, Etcd, FIELDS};
use mecha_module::DriverError;
use parking_lot::Mutex;
use serde_json::{json, Value};

use super::{refuse_metadata, select_sorted, BoxFuture, ConfigError, ConfigStore};
use super::{Hub, Scope, Subscriber, ALLOWED_TENANTS};
use crate::watcher::{Connected, Watcher};

/// etcd's default limit of operations in one transaction.
const MAX_TXN_OPS: usize = 128;

/// A configuration store in etcd, node-wide (every tenant reads the same
/// items; `allowedTenants` restricts it).
pub struct EtcdStore {
    shared: Arc<Shared>,
    watcher: Watcher,
}

struct Shared {
    etcd: Etcd,
    prefix: String,
    hub: Arc<Hub>,
    /// The highest revision the watcher has published; subscriptions
    /// register only when their snapshot is at least this recent.
    applied: AtomicU64,
    /// Held while publishing and while registering, so the two are ordered.
    publishing: Mutex<()>,
}

impl EtcdStore {
    /// Reads the metadata and starts the watcher in the background; nothing
    /// waits for etcd. Must be called inside a Tokio runtime.
    pub fn open(spec: &ComponentSpec) -> Result<Self, ConfigError> {
        let mut known = FIELDS.to_vec();
        known.push(ALLOWED_TENANTS);
        let metadata = Metadata::parse(spec, &known)?;
        let etcd = Etcd::from_metadata("configuration.etcd", &metadata)?;
        let prefix = etcd.prefix().unwrap_or("").to_owned();
        let shared = Arc::new(Shared {
            etcd,
            prefix,
            hub: Arc::new(Hub::default()),
            applied: AtomicU64::new(0),
            publishing: Mutex::new(()),
        });
        let watcher = Watcher::spawn(
            Arc::clone(&shared),
            shared.etcd.origin(),
            Arc::clone(&shared.hub),
            "the watch is not established yet",
            "the watch was closed by the server",
            |shared, connected| Box::pin(watch_once(shared, connected)),
        );
        Ok(Self { shared, watcher })
    }

    /// The store's subscribers (for tests and diagnostics).
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }
}

impl Shared {
    fn full_key(&self, key: &str) -> String {
        base64(format!("{}{key}", self.prefix).as_bytes())
    }

    /// An item from a key-value of a range or watch answer, if it is under
    /// the prefix.
    fn item(&self, kv: &Value) -> Option<ConfigItem> {
        let key = String::from_utf8(bytes(kv, "key")).ok()?;
        let key = key.strip_prefix(&self.prefix)?.to_owned();
        Some(ConfigItem {
            key,
            value: String::from_utf8_lossy(&bytes(kv, "value")).into_owned(),
            version: int(kv, "mod_revision").to_string(),
            metadata: Vec::new(),
        })
    }

    /// Reads `keys` (every item when empty) at one revision, which it
    /// answers with the items.
    async fn read(&self, keys: &[String]) -> Result<(Vec<ConfigItem>, u64), ConfigError> {
        if keys.is_empty() {
            let (start, end) = prefix_range(self.prefix.as_bytes());
            let body = json!({ "key": base64(&start), "range_end": base64(&end) });
            let answer = self.etcd.call("/v3/kv/range", &body).await?;
            let items = kvs(&answer).filter_map(|kv| self.item(kv)).collect();
            return Ok((select_sorted(items, keys), header_revision(&answer)));
        }
        // One transaction of ranges reads every key at the same revision
        // (in slices of etcd's operation limit; beyond it, at successive
        // revisions, and the last one is answered).
        let mut items = Vec::with_capacity(keys.len());
        let mut revision = 0;
        for slice in keys.chunks(MAX_TXN_OPS) {
            let ranges: Vec<Value> = slice
                .iter()
                .map(|k| json!({ "request_range": { "key": self.full_key(k) } }))
                .collect();
            let answer = self
                .etcd
                .call("/v3/kv/txn", &json!({ "success": ranges }))
                .await?;
            revision = header_revision(&answer);
            let responses = answer.get("responses").and_then(Value::as_array);
            for response in responses.into_iter().flatten() {
                if let Some(range) = response.get("response_range") {
                    items.extend(kvs(range).filter_map(|kv| self.item(kv)));
                }
            }
        }
        Ok((select_sorted(items, keys), revision))
    }
}

fn kvs(answer: &Value) -> impl Iterator<Item = &Value> {
    answer
        .get("kvs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

fn header_revision(answer: &Value) -> u64 {
    answer
        .get("header")
        .map_or(0, |h| u64::try_from(int(h, "revision")).unwrap_or(0))
}

/// One life of the store's etcd watch on its prefix: publishes its events,
/// grouped by revision (one transaction, one push), until the watch is lost
/// (see [`Watcher`]).
async fn watch_once(shared: &Shared, mut connected: Connected<'_>) -> Result<(), ConfigError> {
    let (start, end) = prefix_range(shared.prefix.as_bytes());
    let create = json!({ "key": base64(&start), "range_end": base64(&end) });
    let mut watch = shared.etcd.watch(create).await?;
    connected.up();
    loop {
        let message = match watch.next().await {
            Ok(Some(message)) => message,
            Ok(None) => return Ok(()),
            Err(e) => return Err(shared.etcd.watch_error(e).into()),
        };
        let Some(result) = message.get("result") else {
            if let Some(error) = message.get("error") {
                return Err(shared
                    .etcd
                    .origin()
                    .failed(format!("watch: {error}"))
                    .into());
            }
            continue;
        };
        if result.get("canceled").and_then(Value::as_bool) == Some(true) {
            let reason = result
                .get("cancel_reason")
                .and_then(Value::as_str)
                .unwrap_or("");
            return Err(shared
                .etcd
                .origin()
                .unavailable(format!("the watch was cancelled: {reason}"))
                .into());
        }
        let events = result.get("events").and_then(Value::as_array);
        let mut batch: Option<(u64, Vec<ConfigItem>, Vec<String>)> = None;
        for event in events.into_iter().flatten() {
            let Some(kv) = event.get("kv") else { continue };
            let revision = u64::try_from(int(kv, "mod_revision")).unwrap_or(0);
            if batch.as_ref().is_some_and(|(r, _, _)| *r != revision) {
                if let Some((r, items, deleted)) = batch.take() {
                    publish(shared, r, &items, &deleted);
                }
            }
            let (_, items, deleted) =
                batch.get_or_insert_with(|| (revision, Vec::new(), Vec::new()));
            let Some(item) = shared.item(kv) else {
                continue;
            };
            if event.get("type").and_then(Value::as_str) == Some("DELETE") {
                deleted.push(item.key);
            } else {
                items.push(item);
            }
        }
        if let Some((r, items, deleted)) = batch {
            publish(shared, r, &items, &deleted);
        }
    }
}

fn publish(shared: &Shared, revision: u64, items: &[ConfigItem], deleted: &[String]) {
    let _ordered = shared.publishing.lock();
    shared.hub.publish_at(Scope::All, items, deleted, revision);
    shared.applied.fetch_max(revision, Ordering::AcqRel);
}

impl ConfigStore for EtcdStore {
    fn get<'a>(
        &'a self,
        _tenant: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ConfigItem>, ConfigError>> {
        Box::pin(async move { Ok(self.shared.read(keys).await?.0) })
    }

    fn set<'a>(
        &'a self,
        _tenant: &'a str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, ConfigError>> {
        Box::pin(async move {
            let origin = self.shared.etcd.origin();
            refuse_metadata(&origin.component, &origin.kind, &items)?;
            if items.is_empty() && delete.is_empty() {
                return Ok(Vec::new());
            }
            if items.len() + delete.len() > MAX_TXN_OPS {
                return Err(ConfigError::Unsupported(format!(
                    "component {:?} (configuration.etcd) writes at most {MAX_TXN_OPS} keys in \
                     one atomic change (etcd's transaction limit)",
                    origin.component
                )));
            }
            let mut ops: Vec<Value> = items
                .iter()
                .map(|item| {
                    json!({ "request_put": {
                        "key": self.shared.full_key(&item.key),
                        "value": base64(item.value.as_bytes()),
                    }})
                })
                .collect();
            ops.extend(delete.iter().map(
                |key| json!({ "request_delete_range": { "key": self.shared.full_key(key) } }),
            ));
            let answer = self
                .shared
                .etcd
                .call("/v3/kv/txn", &json!({ "success": ops }))
                .await?;
            // Every put of the transaction gets its revision as mod revision.
            let version = header_revision(&answer).to_string();
            Ok(vec![version; items.len()])
        })
    }

    fn subscribe<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<(Vec<ConfigItem>, Subscriber), ConfigError>> {
        Box::pin(async move {
            self.watcher.wait_up().await?;
            // The snapshot is taken at revision S. Registering with floor S
            // skips changes the snapshot has; registering only while the
            // watcher has published nothing after S means no later change
            // went out before the registration. When the watcher is ahead,
            // a newer snapshot is read.
            for _ in 0..16 {
                let (snapshot, revision) = self.shared.read(&keys).await?;
                let _ordered = self.shared.publishing.lock();
                if self.shared.applied.load(Ordering::Acquire) <= revision {
                    if !self.watcher.is_up() {
                        return Err(ConfigError::Driver(DriverError::Unavailable(
                            self.watcher.down_reason(),
                        )));
                    }
                    let subscriber = self.shared.hub.subscribe_after(tenant, keys, revision);
                    return Ok((snapshot, subscriber));
                }
            }
            Err(ConfigError::Driver(DriverError::Unavailable(format!(
                "component {:?} (configuration.etcd): the store kept changing while a snapshot \
                 was taken; try again",
                self.shared.etcd.origin().component
            ))))
        })
    }
}
