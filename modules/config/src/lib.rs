//! The configuration module: get, subscribe (a server-push stream of changes)
//! and admin writes of configuration items, served from the configured stores
//! (`configuration.memory`, `configuration.file`, `configuration.redis`,
//! `configuration.etcd`).

pub mod drivers;
mod watcher;

use std::collections::HashSet;
use std::path::Path;

use mecha_abi::msg::{
    ConfigGetReply, ConfigGetRequest, ConfigSetReply, ConfigSetRequest, ConfigSubscribeRequest,
    ConfigUpdate,
};
use mecha_module::metadata::take_limit;
use mecha_module::{
    Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status, Stream, TenantLimit,
    TenantPermit,
};

use drivers::{ConfigError, ConfigStore, Subscriber};

/// How many subscriptions one tenant may keep open on one store at once,
/// unless the component's metadata field [`MAX_SUBSCRIPTIONS_FIELD`] says
/// otherwise. Each costs a task and a mailbox; the bound keeps a client that
/// opens streams in a loop from exhausting the module's memory. It is per
/// tenant (issue #16: a node-wide bound of 10,000 let one connection's
/// watches refuse every other tenant).
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1000;

/// The component metadata field that sets the per-tenant bound on
/// subscriptions (see [`DEFAULT_MAX_SUBSCRIPTIONS`]), for every driver.
pub const MAX_SUBSCRIPTIONS_FIELD: &str = "maxSubscriptionsPerTenant";

/// The most keys one CONFIG_GET or CONFIG_SUBSCRIBE may name (SPEC §7.6.1):
/// each costs a lookup and room in the answer.
pub const MAX_KEYS: usize = 1024;

/// One configured store.
struct Slot {
    store: Box<dyn ConfigStore>,
    /// The tenants allowed to use the store; `None` for everyone.
    allowed: Option<Vec<String>>,
    /// Open subscriptions, per tenant.
    subscriptions: TenantLimit,
}

/// The configuration module: one or more named stores, the first being the
/// default.
pub struct ConfigModule {
    slots: Components<Slot>,
}

impl Module for ConfigModule {
    const NAME: &'static str = "config";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let slots = Components::open(&hello.components, "configuration store", |spec| {
            let (spec, max_subscriptions) =
                take_limit(spec, MAX_SUBSCRIPTIONS_FIELD, DEFAULT_MAX_SUBSCRIPTIONS)
                    .map_err(ConfigError::from)?;
            Ok::<_, ConfigError>(Slot {
                allowed: drivers::allowed_tenants(&spec)?,
                store: drivers::open(&spec, data_dir)?,
                subscriptions: TenantLimit::new(max_subscriptions),
            })
        })?;
        Ok(Self { slots })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::CONFIG_GET => self.get(&ctx.tenant, payload).await,
            Opcode::CONFIG_SUBSCRIBE => self.subscribe(&ctx, payload).await,
            Opcode::CONFIG_SET => self.set(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the config module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl ConfigModule {
    /// The store named `name` ("" = the first), if `tenant` may use it.
    fn store(&self, name: &str, tenant: &str) -> Result<&Slot, Reply> {
        let (name, slot) = self.slots.entry(name, tenant)?;
        if let Some(allowed) = &slot.allowed {
            if !allowed.iter().any(|t| t == tenant) {
                return Err(Reply::error(
                    Status::PermissionDenied,
                    format!("tenant {tenant:?} may not use configuration store {name:?}"),
                ));
            }
        }
        Ok(slot)
    }

    async fn get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let mut req: ConfigGetRequest = Reply::decode(payload)?;
        req.keys = distinct_keys(req.keys)?;
        let slot = self.store(&req.store, tenant)?;
        let items = slot
            .store
            .get(tenant, &req.keys)
            .await
            .map_err(store_error)?;
        Ok(Reply::ok(&ConfigGetReply { items }))
    }

    async fn set(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: ConfigSetRequest = Reply::decode(payload)?;
        // A key written twice, or written and deleted, has no obvious meaning;
        // refusing it is clearer than picking one.
        let mut seen = HashSet::with_capacity(req.items.len() + req.delete.len());
        for key in req.items.iter().map(|i| &i.key).chain(&req.delete) {
            Reply::valid_name("key", key)?;
            if !seen.insert(key.as_str()) {
                return Err(Reply::error(
                    Status::InvalidArgument,
                    format!("key {key:?} appears more than once in the request"),
                ));
            }
        }
        let slot = self.store(&req.store, tenant)?;
        let versions = slot
            .store
            .set(tenant, req.items, req.delete)
            .await
            .map_err(store_error)?;
        Ok(Reply::ok(&ConfigSetReply { versions }))
    }

    async fn subscribe(&self, ctx: &Ctx, payload: &[u8]) -> Handled {
        let mut req: ConfigSubscribeRequest = Reply::decode(payload)?;
        req.keys = distinct_keys(req.keys)?;
        let slot = self.store(&req.store, &ctx.tenant)?;
        let Some(guard) = slot.subscriptions.try_take(&ctx.tenant) else {
            return Err(Reply::error(
                Status::ResourceExhausted,
                format!(
                    "tenant {:?} already has {} subscriptions open on this configuration \
                     store (metadata field {MAX_SUBSCRIPTIONS_FIELD})",
                    ctx.tenant,
                    slot.subscriptions.limit()
                ),
            ));
        };
        let (items, subscriber) = slot
            .store
            .subscribe(&ctx.tenant, req.keys)
            .await
            .map_err(store_error)?;
        // The stream opens only now, after everything that can fail, so an
        // error answer never leaves a stream behind.
        let stream = ctx.open_stream();
        tokio::spawn(forward_changes(stream, subscriber, guard));
        Ok(Reply::stream_ok(&ConfigGetReply { items }))
    }
}

/// Pushes a subscriber's changes on its stream until the stream is cancelled
/// or the link closes.
///
/// This is the config stream's slow-consumer policy: changes wait in the
/// subscriber's mailbox, which keeps only the latest value per key, while a
/// push is blocked on a full link. Whatever piled up meanwhile then goes out
/// as one push, so a subscriber that falls behind gets the latest values
/// without the module buffering every intermediate one.
async fn forward_changes(mut stream: Stream, subscriber: Subscriber, _guard: TenantPermit) {
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = stream.cancelled() => break,
            _ = subscriber.changed() => {}
        }
        let Some(changes) = subscriber.take() else {
            if let Some(reason) = subscriber.ended() {
                // Whatever was pending went out first; the client
                // resubscribes on UNAVAILABLE and gets a fresh snapshot.
                stream.end(Status::Unavailable, &reason).await;
                return;
            }
            continue;
        };
        seq += 1;
        let update = ConfigUpdate {
            seq,
            items: changes.items,
            deleted: changes.deleted,
        };
        let payload = match mecha_abi::encode(&update) {
            Ok(payload) => payload,
            Err(e) => {
                // Ending with UNAVAILABLE makes the client subscribe again and
                // read a fresh snapshot, rather than miss this change silently.
                tracing::error!("cannot encode a configuration update: {e}");
                stream
                    .end(
                        Status::Unavailable,
                        "the config module failed to encode an update",
                    )
                    .await;
                return;
            }
        };
        if stream.push(payload).await.is_err() {
            break;
        }
    }
    // Dropping the stream ends it (with OK) if it is still open.
}

/// Checks a request's keys and drops repeated ones (a key named twice is
/// answered once); more than [`MAX_KEYS`] distinct keys is RESOURCE_EXHAUSTED.
fn distinct_keys(keys: Vec<String>) -> Result<Vec<String>, Reply> {
    let mut seen = HashSet::with_capacity(keys.len().min(MAX_KEYS));
    let mut distinct = Vec::with_capacity(keys.len().min(MAX_KEYS));
    for key in keys {
        Reply::valid_name("key", &key)?;
        if seen.contains(key.as_str()) {
            continue;
        }
        if distinct.len() == MAX_KEYS {
            return Err(Reply::error(
                Status::ResourceExhausted,
                format!("a request may name at most {MAX_KEYS} distinct keys; split it"),
            ));
        }
        seen.insert(key.clone());
        distinct.push(key);
    }
    Ok(distinct)
}

/// The answer for a failed driver operation: the configuration store's own
/// failures here, the shared ones as the SDK maps them.
fn store_error(e: ConfigError) -> Reply {
    let status = match &e {
        ConfigError::ReadOnly { .. } => Status::InvalidArgument,
        ConfigError::Unsupported(_) => Status::Unsupported,
        ConfigError::Driver(driver) => driver.status(),
    };
    Reply::error(status, e.to_string())
}
