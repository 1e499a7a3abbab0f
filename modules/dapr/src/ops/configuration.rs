//! Dapr's configuration API in protocol-neutral terms: reads, and
//! subscriptions as native configuration watches on the caller's session.
//!
//! A subscription belongs to the connection that opened it: it ends when
//! the caller unsubscribes (by its id, on the same connection), when it
//! stops reading the stream, or when the connection closes; its native
//! watch is cancelled with it. One connection may hold at most
//! [`MAX_WATCHES_PER_CONNECTION`] subscriptions, on top of mechad's own
//! per-tenant bound on streams. A key deleted while watched is reported as
//! an item with an empty value and an empty version, which is how a Dapr
//! subscriber hears of a deletion.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use mecha_abi::msg::ConfigItem;
use mecha_client::{Client, ConfigWatch};
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::dapr_error::{native, require_store, Api, DaprError};
use super::hints;

/// Most subscriptions one connection may hold at once.
pub const MAX_WATCHES_PER_CONNECTION: usize = 16;

/// Most keys one request may name; mecha's configuration module bounds its
/// answers too, and this keeps a request's work small before it is sent.
pub const MAX_KEYS: usize = 1024;

const fn api(failed: &'static str) -> Api {
    Api {
        store_not_found: "ERR_CONFIGURATION_STORE_NOT_FOUND",
        store_not_found_http: 400,
        failed,
    }
}

/// Dapr's codes for a read.
pub const GET: Api = api("ERR_CONFIGURATION_GET");
/// Dapr's codes for a subscription.
pub const SUBSCRIBE: Api = api("ERR_CONFIGURATION_SUBSCRIBE");

/// One configuration item as Dapr shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Item {
    /// The value.
    pub value: String,
    /// The version.
    pub version: String,
    /// The item's metadata.
    pub metadata: BTreeMap<String, String>,
}

/// Items by key.
pub type Items = BTreeMap<String, Item>;

fn item(i: &ConfigItem) -> (String, Item) {
    (
        i.key.clone(),
        Item {
            value: i.value.clone(),
            version: i.version.clone(),
            metadata: i.metadata.iter().cloned().collect(),
        },
    )
}

fn check(
    store: &str,
    keys: &[String],
    metadata: &HashMap<String, String>,
) -> Result<(), DaprError> {
    require_store(GET, store)?;
    hints::check(metadata, &[], &[], "configuration")?;
    if keys.len() > MAX_KEYS {
        return Err(DaprError::malformed(format!(
            "{} keys in one configuration request; mecha serves at most {MAX_KEYS}",
            keys.len()
        )));
    }
    if keys.iter().any(String::is_empty) {
        return Err(DaprError::malformed("a configuration key is empty"));
    }
    Ok(())
}

/// Reads `keys` of `store` (every item when empty); missing keys are
/// absent from the answer.
pub async fn get(
    client: &Client,
    store: &str,
    keys: Vec<String>,
    metadata: &HashMap<String, String>,
) -> Result<Items, DaprError> {
    check(store, &keys, metadata)?;
    let what = format!("failed to get {keys:?} from Configuration store {store}");
    let items = client
        .get_config(store, keys)
        .await
        .map_err(|e| native(GET, &what, e))?;
    Ok(items.iter().map(item).collect())
}

/// The subscriptions of one connection, by id.
#[derive(Clone, Default)]
pub struct Watches {
    table: Arc<Mutex<Table>>,
}

#[derive(Default)]
struct Table {
    next: u64,
    /// Per id: the tenant that subscribed, and the sender whose drop stops
    /// the subscription.
    live: HashMap<String, (String, oneshot::Sender<()>)>,
}

impl Watches {
    /// Ends subscription `id` that `tenant` made on this connection;
    /// whether it was live. A connection may carry several tenants (one per
    /// API token), and one never ends another's subscription.
    pub fn unsubscribe(&self, tenant: &str, id: &str) -> bool {
        let mut table = self.table.lock();
        match table.live.get(id) {
            // Dropping the sender wakes the subscription, which then ends.
            Some((owner, _)) if owner == tenant => table.live.remove(id).is_some(),
            _ => false,
        }
    }

    /// Reserves a place and an id, or refuses when the connection holds
    /// its most subscriptions already.
    fn reserve(&self, tenant: &str) -> Result<(String, oneshot::Receiver<()>), DaprError> {
        let mut table = self.table.lock();
        if table.live.len() >= MAX_WATCHES_PER_CONNECTION {
            return Err(DaprError::new(
                tonic::Code::ResourceExhausted,
                429,
                SUBSCRIBE.failed,
                format!(
                    "one connection may hold at most {MAX_WATCHES_PER_CONNECTION} \
                     configuration subscriptions; unsubscribe one first"
                ),
            ));
        }
        table.next += 1;
        let id = table.next.to_string();
        let (tx, rx) = oneshot::channel();
        table.live.insert(id.clone(), (tenant.to_owned(), tx));
        Ok((id, rx))
    }
}

/// A live subscription: its id and its updates.
pub struct Subscription {
    id: String,
    watch: ConfigWatch,
    stop: oneshot::Receiver<()>,
    watches: Watches,
}

impl Subscription {
    /// The subscription's id, for unsubscribing.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The next change, as the items that changed (deleted keys with an
    /// empty value and version); `None` once the subscription is over.
    pub async fn next(&mut self) -> Option<Result<Items, DaprError>> {
        tokio::select! {
            _ = &mut self.stop => {
                // Unsubscribed: the answer to the unsubscribe says so, and
                // the stream just ends. A failed cancel only means the
                // stream is gone already.
                let _ = self.watch.cancel().await;
                None
            }
            update = self.watch.next() => match update? {
                Ok(update) => {
                    let mut items: Items = update.items.iter().map(item).collect();
                    for key in update.deleted {
                        items.insert(key, Item::default());
                    }
                    Some(Ok(items))
                }
                Err(e) => Some(Err(native(SUBSCRIBE, "the configuration watch ended", e))),
            },
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // The stream is over however it ended (unsubscribed, the caller
        // went away, the watch failed): its place is free again. The watch
        // cancels its native stream when dropped.
        self.watches.table.lock().live.remove(&self.id);
    }
}

/// Subscribes to `keys` of `store` (every key when empty) for a
/// connection whose subscriptions are `watches`.
pub async fn subscribe(
    client: &Client,
    watches: &Watches,
    store: &str,
    keys: Vec<String>,
    metadata: &HashMap<String, String>,
) -> Result<Subscription, DaprError> {
    check(store, &keys, metadata)?;
    let (id, stop) = watches.reserve(client.tenant())?;
    let what = format!("failed to subscribe {keys:?} from Configuration store {store}");
    match client.watch_config(store, keys).await {
        Ok(watch) => Ok(Subscription {
            id,
            watch,
            stop,
            watches: watches.clone(),
        }),
        Err(e) => {
            watches.table.lock().live.remove(&id);
            Err(native(SUBSCRIBE, &what, e))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_a_bounded_number_of_subscriptions() {
        let watches = Watches::default();
        let mut held = Vec::new();
        for _ in 0..MAX_WATCHES_PER_CONNECTION {
            held.push(watches.reserve("uid:1").unwrap());
        }
        let e = watches.reserve("uid:1").unwrap_err();
        assert_eq!(e.grpc, tonic::Code::ResourceExhausted);
        let (id, _) = &held[0];
        assert!(!watches.unsubscribe("uid:2", id), "another tenant's id");
        assert!(watches.unsubscribe("uid:1", id));
        assert!(!watches.unsubscribe("uid:1", id));
        assert!(watches.reserve("uid:1").is_ok());
    }

    #[test]
    fn ids_are_distinct() {
        let watches = Watches::default();
        let (a, _) = watches.reserve("uid:1").unwrap();
        let (b, _) = watches.reserve("uid:1").unwrap();
        assert_ne!(a, b);
    }
}
