//! The `configuration.redis` driver: items are Redis string keys holding
//! `value||version` (Dapr's format), read with `SCAN`/`MGET` and watched
//! through keyspace notifications on one background subscription per store.

use std::sync::Arc;

use futures_util::StreamExt;
use mecha_abi::msg::{ComponentSpec, ConfigItem, ConfigSetItem};
use mecha_module::metadata::Metadata;
use mecha_module::remote::redis::client::{self as redis, AsyncCommands, Script};
use mecha_module::remote::redis::{Redis, FIELDS};
use mecha_module::DriverError;

use super::{refuse_metadata, select_sorted, BoxFuture, ConfigError, ConfigStore};
use super::{Hub, Scope, Subscriber, ALLOWED_TENANTS};
use crate::watcher::{Connected, Watcher};

/// The key (after the prefix) of the counter CONFIG_SET takes versions
/// from. It is not an item: reads and notifications skip it.
const COUNTER: &str = "__mecha_config_version__";

/// Writes and deletes items atomically. KEYS: the counter, then the keys to
/// write, then the keys to delete. ARGV: the clock in microseconds, the
/// number of keys to write, then their values. Answers the version.
///
/// The version is the counter's `INCR`, raised to the clock when the clock
/// is ahead, so versions keep growing even if Redis lost the counter.
const SET: &str = r"
local version = redis.call('INCR', KEYS[1])
local floor = tonumber(ARGV[1])
if version < floor then
  redis.call('SET', KEYS[1], ARGV[1])
  version = floor
end
version = string.format('%d', version)
local writes = tonumber(ARGV[2])
for i = 1, writes do
  redis.call('SET', KEYS[i + 1], ARGV[i + 2] .. '||' .. version)
end
for i = writes + 2, #KEYS do
  redis.call('DEL', KEYS[i])
end
return version
";

/// A configuration store in Redis, node-wide (every tenant reads the same
/// items; `allowedTenants` restricts it).
pub struct RedisStore {
    shared: Arc<Shared>,
    watcher: Watcher,
}

/// What the store and its watcher task share.
struct Shared {
    redis: Redis,
    /// Prepended to item keys (`keyPrefix`, default none).
    prefix: String,
    hub: Arc<Hub>,
}

impl RedisStore {
    /// Reads the metadata and starts the notification watcher in the
    /// background; nothing waits for Redis, so the module starts while it is
    /// down. Must be called inside a Tokio runtime.
    pub fn open(spec: &ComponentSpec) -> Result<Self, ConfigError> {
        let mut known = FIELDS.to_vec();
        known.extend(["keyPrefix", ALLOWED_TENANTS]);
        let metadata = Metadata::parse(spec, &known)?;
        let shared = Arc::new(Shared {
            redis: Redis::from_metadata("configuration.redis", &metadata)?,
            prefix: metadata.str("keyPrefix")?.unwrap_or("").to_owned(),
            hub: Arc::new(Hub::default()),
        });
        let watcher = Watcher::spawn(
            Arc::clone(&shared),
            shared.redis.origin(),
            Arc::clone(&shared.hub),
            "not subscribed to keyspace notifications yet",
            "the keyspace notification subscription was closed",
            |shared, connected| Box::pin(subscribe_once(shared, connected)),
        );
        Ok(Self { shared, watcher })
    }

    /// The store's subscribers (for tests and diagnostics).
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }
}

impl Shared {
    /// The item key of Redis key `key`, unless it is outside the prefix or
    /// is the version counter.
    fn item_key(&self, key: &str) -> Option<String> {
        let item = key.strip_prefix(&self.prefix)?;
        (item != COUNTER && !item.is_empty()).then(|| item.to_owned())
    }

    /// Reads items: `keys` (every item when empty).
    async fn read(&self, keys: &[String]) -> Result<Vec<ConfigItem>, ConfigError> {
        let names: Vec<String> = if keys.is_empty() {
            self.scan().await?
        } else {
            keys.to_vec()
        };
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let full: Vec<String> = names
            .iter()
            .map(|k| format!("{}{k}", self.prefix))
            .collect();
        let mut items = Vec::with_capacity(names.len());
        // MGET in slices, so one answer stays a reasonable size.
        for (names, full) in names.chunks(512).zip(full.chunks(512)) {
            let full = full.to_vec();
            let values: Vec<Option<String>> = self
                .redis
                .run(|mut conn| async move {
                    // MGET by hand: the typed helper sends GET for one key,
                    // whose answer is not a list.
                    redis::cmd("MGET").arg(full).query_async(&mut conn).await
                })
                .await?;
            items.extend(
                names
                    .iter()
                    .zip(values)
                    .filter_map(|(key, value)| Some(item(key, &value?))),
            );
        }
        Ok(select_sorted(items, keys))
    }

    /// Every item key under the prefix, by `SCAN` (never `KEYS`, which
    /// blocks the server).
    async fn scan(&self) -> Result<Vec<String>, ConfigError> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        loop {
            let pattern = pattern.clone();
            let (next, batch): (u64, Vec<String>) = self
                .redis
                .run(|mut conn| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(1000)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            keys.extend(batch.iter().filter_map(|k| self.item_key(k)));
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        Ok(keys)
    }
}

/// An item from its stored text: `value||version` (the last `||`
/// separates), or a bare value with an empty version, as Dapr reads it.
fn item(key: &str, stored: &str) -> ConfigItem {
    let (value, version) = stored.rsplit_once("||").unwrap_or((stored, ""));
    ConfigItem {
        key: key.to_owned(),
        value: value.to_owned(),
        version: version.to_owned(),
        metadata: Vec::new(),
    }
}

/// Escapes Redis glob characters so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One life of the store's keyspace-notification subscription (see
/// [`Watcher`]): connect, make sure notifications are on, subscribe, then
/// publish every change reported for the prefix (reading the key's new
/// value) until the connection ends.
async fn subscribe_once(shared: &Shared, mut connected: Connected<'_>) -> Result<(), ConfigError> {
    let redis = &shared.redis;
    ensure_notifications(redis).await?;
    let mut pubsub = redis.pubsub().await?;
    let channel = format!("__keyspace@{}__:", redis.db());
    let pattern = format!("{channel}{}*", glob_escape(&shared.prefix));
    pubsub
        .psubscribe(&pattern)
        .await
        .map_err(|e| ConfigError::from(redis.error(&e)))?;
    connected.up();
    let mut messages = pubsub.into_on_message();
    while let Some(message) = messages.next().await {
        let Some(key) = message
            .get_channel_name()
            .strip_prefix(&channel)
            .and_then(|key| shared.item_key(key))
        else {
            continue;
        };
        // The notification says only that the key changed; its value now
        // is what subscribers need. Reading it may skip intermediate
        // values, which the coalescing semantics allow.
        let full = format!("{}{key}", shared.prefix);
        let value: Option<String> = match redis.run(|mut c| async move { c.get(full).await }).await
        {
            Ok(value) => value,
            Err(e) => return Err(e.into()),
        };
        match value {
            Some(stored) => shared.hub.publish(Scope::All, &[item(&key, &stored)], &[]),
            None => shared.hub.publish(Scope::All, &[], &[key]),
        }
    }
    Ok(())
}

/// Makes sure the server publishes keyspace notifications for string
/// writes, deletes and expiries (`K$gx`, or `KA`), adding the missing
/// classes with CONFIG SET; when that is refused (a managed Redis may
/// disable CONFIG), says clearly what the operator must enable.
async fn ensure_notifications(redis: &Redis) -> Result<(), ConfigError> {
    let current: Vec<String> = redis
        .run(|mut c| async move {
            redis::cmd("CONFIG")
                .arg("GET")
                .arg("notify-keyspace-events")
                .query_async(&mut c)
                .await
        })
        .await?;
    let flags = current.get(1).cloned().unwrap_or_default();
    let has = |c: char| flags.contains(c);
    if has('K') && (has('A') || (has('$') && has('g') && has('x'))) {
        return Ok(());
    }
    let wanted: String = {
        let mut w = flags.clone();
        for c in ['K', '$', 'g', 'x'] {
            if !w.contains(c) {
                w.push(c);
            }
        }
        w
    };
    let set = wanted.clone();
    let result: Result<(), _> = redis
        .run(|mut c| async move {
            redis::cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg(set)
                .query_async(&mut c)
                .await
        })
        .await;
    match result {
        Ok(()) => {
            tracing::info!(
                "configuration.redis: enabled keyspace notifications ({wanted:?}) on {}",
                redis.origin().server
            );
            Ok(())
        }
        Err(e) => Err(ConfigError::Driver(DriverError::Unavailable(format!(
            "component {:?} (configuration.redis): keyspace notifications are off on server {} \
             (notify-keyspace-events is {flags:?}) and enabling them failed ({e}); set \
             notify-keyspace-events to include \"K$gx\" on the server",
            redis.origin().component,
            redis.origin().server
        )))),
    }
}

impl ConfigStore for RedisStore {
    fn get<'a>(
        &'a self,
        _tenant: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ConfigItem>, ConfigError>> {
        Box::pin(self.shared.read(keys))
    }

    fn set<'a>(
        &'a self,
        _tenant: &'a str,
        items: Vec<ConfigSetItem>,
        delete: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, ConfigError>> {
        Box::pin(async move {
            let origin = self.shared.redis.origin();
            refuse_metadata(&origin.component, &origin.kind, &items)?;
            if items.is_empty() && delete.is_empty() {
                return Ok(Vec::new());
            }
            let prefix = &self.shared.prefix;
            let floor = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX / 2))
                .unwrap_or(1);
            let script = Script::new(SET);
            let mut invocation = script.key(format!("{prefix}{COUNTER}"));
            for item in &items {
                invocation.key(format!("{prefix}{}", item.key));
            }
            for key in &delete {
                invocation.key(format!("{prefix}{key}"));
            }
            invocation.arg(floor).arg(items.len());
            for item in &items {
                invocation.arg(&item.value);
            }
            let version: String = self
                .shared
                .redis
                .run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
                .await?;
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
            // Registered before the snapshot is read, so no change after the
            // snapshot is missed; a change just before it may be pushed
            // once more (with the version the snapshot already has).
            let subscriber = self.shared.hub.subscribe(tenant, keys.clone());
            if !self.watcher.is_up() {
                return Err(ConfigError::Driver(DriverError::Unavailable(
                    self.shared
                        .redis
                        .origin()
                        .unavailable("the keyspace notification subscription is down")
                        .to_string(),
                )));
            }
            let snapshot = self.shared.read(&keys).await?;
            Ok((snapshot, subscriber))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_text_splits_like_dapr() {
        let i = item("k", "a||b||7");
        assert_eq!((i.value.as_str(), i.version.as_str()), ("a||b", "7"));
        let i = item("k", "plain");
        assert_eq!((i.value.as_str(), i.version.as_str()), ("plain", ""));
        assert_eq!(glob_escape("a*b?[c]"), "a\\*b\\?\\[c\\]");
    }
}
