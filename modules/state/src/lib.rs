//! The state module: key/value state with ETags, TTLs and transactions, served
//! from the configured stores (`state.memory`, `state.redb`, `state.redis`,
//! `state.postgresql`).

pub mod drivers;

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use mecha_abi::msg::{
    BulkGetItem, BulkGetReply, BulkGetRequest, BulkSetRequest, DeleteReply, DeleteRequest,
    GetRequest, SetItem, SetReply, SetRequest, TransactReply, TransactRequest, TxOp,
};
use mecha_module::{Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use drivers::{OpOutcome, StateStore, StoreError};

/// The most keys one STATE_BULK_GET may name, and the most operations one
/// STATE_BULK_SET or STATE_TRANSACT may carry (SPEC §7.2.4-7.2.6). Every
/// key or operation costs work in the store and room in the answer; the cap
/// keeps one request from holding the module (and a store's write lock) for
/// long, and keeps the answer of a write request (one ETag per operation)
/// far below the link's frame limit.
pub const MAX_BULK_KEYS: usize = 1024;

/// How many keys a bulk read asks its store for at once. The answer's size
/// is checked after each batch, so a read that would exceed the frame limit
/// stops having materialised at most one batch beyond it.
const BULK_GET_BATCH: usize = 64;

/// The most bytes a bulk read's answer may take, encoded: the module link's
/// frame limit (the daemon drops a link that sends more).
const MAX_ANSWER_BYTES: usize = mecha_abi::MAX_FRAME_CAP as usize;

/// An upper bound of the bytes bincode adds around one length-prefixed field
/// or one enum tag: a varint takes at most 9 bytes.
const VARINT_MAX: usize = 9;

/// The state module: one or more named stores, the first being the default.
pub struct StateModule {
    stores: Components<Box<dyn StateStore>>,
}

impl Module for StateModule {
    const NAME: &'static str = "state";
    const TICK: Option<Duration> = Some(Duration::from_secs(1));

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let stores = Components::open_scoped(&hello.components, "state store", |spec| {
            drivers::open(spec, data_dir)
        })?;
        Ok(Self { stores })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::STATE_GET => self.get(&ctx.tenant, payload).await,
            Opcode::STATE_SET => self.set(&ctx.tenant, payload).await,
            Opcode::STATE_DELETE => self.delete(&ctx.tenant, payload).await,
            Opcode::STATE_BULK_GET => self.bulk_get(&ctx.tenant, payload).await,
            Opcode::STATE_BULK_SET => self.bulk_set(&ctx.tenant, payload).await,
            Opcode::STATE_TRANSACT => self.transact(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the state module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }

    async fn tick(&self) {
        for (name, store) in self.stores.iter() {
            match store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(store = %name, expired = n, "swept expired keys"),
                Err(e) => tracing::warn!(store = %name, "sweeping expired keys failed: {e}"),
            }
        }
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl StateModule {
    /// The store a request names and the tenant scope it works in there
    /// (the caller's own, or a shared component's namespace).
    fn store<'t>(
        &self,
        name: &str,
        tenant: &'t str,
    ) -> Result<(&dyn StateStore, Cow<'t, str>), Reply> {
        self.stores
            .scoped(name, tenant)
            .map(|(store, scope)| (store.as_ref(), scope))
    }

    async fn get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: GetRequest = Reply::decode(payload)?;
        Reply::valid_name("key", &req.key)?;
        let (store, tenant) = self.store(&req.store, tenant)?;
        // The key goes to the driver by value; the copy is for the error.
        let mut found = store
            .get(&tenant, vec![req.key.clone()])
            .await
            .map_err(store_error)?;
        if found.len() != 1 {
            return Err(answer_count_error(1, found.len()));
        }
        match found.pop().flatten() {
            Some(entry) => Ok(Reply::ok(&entry)),
            None => Err(Reply::error(
                Status::NotFound,
                format!("key {:?} not found", req.key),
            )),
        }
    }

    async fn set(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: SetRequest = Reply::decode(payload)?;
        let outcomes = self
            .apply(tenant, &req.store, vec![TxOp::Set(req.item)])
            .await?;
        match outcomes.into_iter().next() {
            Some(OpOutcome::Set { etag }) => Ok(Reply::ok(&SetReply { etag })),
            _ => Err(Reply::error(
                Status::Internal,
                "store returned no set outcome",
            )),
        }
    }

    async fn delete(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: DeleteRequest = Reply::decode(payload)?;
        let outcomes = self
            .apply(tenant, &req.store, vec![TxOp::Delete(req.item)])
            .await?;
        match outcomes.into_iter().next() {
            Some(OpOutcome::Deleted { existed }) => Ok(Reply::ok(&DeleteReply { existed })),
            _ => Err(Reply::error(
                Status::Internal,
                "store returned no delete outcome",
            )),
        }
    }

    async fn bulk_get(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: BulkGetRequest = Reply::decode(payload)?;
        // A key named twice is read and answered once, at its first place:
        // otherwise one stored value named many times multiplies the answer
        // (issue #16: 17 names of one 4 MiB value broke the link).
        let mut seen = HashSet::with_capacity(req.keys.len().min(MAX_BULK_KEYS));
        let mut keys = Vec::with_capacity(req.keys.len().min(MAX_BULK_KEYS));
        for key in req.keys {
            Reply::valid_name("key", &key)?;
            if seen.contains(key.as_str()) {
                continue;
            }
            if keys.len() == MAX_BULK_KEYS {
                return Err(too_many("STATE_BULK_GET", "distinct keys"));
            }
            seen.insert(key.clone());
            keys.push(key);
        }
        drop(seen);
        let (store, tenant) = self.store(&req.store, tenant)?;
        // The answer is built batch by batch and its encoded size is bounded
        // as it grows, so a read whose answer would not fit the link is
        // refused before it is encoded, and before the rest is read.
        let mut items = Vec::with_capacity(keys.len());
        let mut size = VARINT_MAX;
        let mut keys = keys.into_iter();
        loop {
            let batch: Vec<String> = keys.by_ref().take(BULK_GET_BATCH).collect();
            if batch.is_empty() {
                break;
            }
            // The driver takes the keys by value and answers in request
            // order; the copy pairs each answer with its key again.
            let entries = store
                .get(&tenant, batch.clone())
                .await
                .map_err(store_error)?;
            // `zip` would silently drop keys if a driver broke the one-
            // answer-per-key rule; a short answer is a driver bug, reported
            // as such.
            if entries.len() != batch.len() {
                return Err(answer_count_error(batch.len(), entries.len()));
            }
            for (key, entry) in batch.into_iter().zip(entries) {
                size = size.saturating_add(item_size(&key, entry.as_ref()));
                if size > MAX_ANSWER_BYTES {
                    return Err(Reply::error(
                        Status::ResourceExhausted,
                        format!(
                            "the answer to STATE_BULK_GET would exceed {MAX_ANSWER_BYTES} bytes, \
                             the module link's frame limit, after {} of the keys; read fewer \
                             keys per request",
                            items.len()
                        ),
                    ));
                }
                items.push(BulkGetItem { key, entry });
            }
        }
        Ok(Reply::ok(&BulkGetReply { items }))
    }

    async fn bulk_set(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: BulkSetRequest = Reply::decode(payload)?;
        let ops = req.items.into_iter().map(TxOp::Set).collect();
        let outcomes = self.apply(tenant, &req.store, ops).await?;
        Ok(Reply::ok(&transact_reply(outcomes)))
    }

    async fn transact(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: TransactRequest = Reply::decode(payload)?;
        let outcomes = self.apply(tenant, &req.store, req.ops).await?;
        Ok(Reply::ok(&transact_reply(outcomes)))
    }

    /// Validates and applies write operations atomically.
    async fn apply(
        &self,
        tenant: &str,
        store: &str,
        ops: Vec<TxOp>,
    ) -> Result<Vec<OpOutcome>, Reply> {
        if ops.len() > MAX_BULK_KEYS {
            return Err(too_many("a state write", "operations"));
        }
        for op in &ops {
            match op {
                TxOp::Set(SetItem { key, ttl_ms, .. }) => {
                    Reply::valid_name("key", key)?;
                    // The drivers rely on this: `StateStore` documents that a
                    // zero TTL never reaches them.
                    if *ttl_ms == Some(0) {
                        return Err(Reply::error(
                            Status::InvalidArgument,
                            format!("ttl_ms of key {key:?} must be greater than 0"),
                        ));
                    }
                }
                TxOp::Delete(item) => Reply::valid_name("key", &item.key)?,
            }
        }
        let (store, tenant) = self.store(store, tenant)?;
        store.transact(&tenant, ops).await.map_err(store_error)
    }
}

fn transact_reply(outcomes: Vec<OpOutcome>) -> TransactReply {
    let etags = outcomes
        .into_iter()
        .map(|o| match o {
            OpOutcome::Set { etag } => Some(etag),
            OpOutcome::Deleted { .. } => None,
        })
        .collect();
    TransactReply { etags }
}

/// An upper bound of the encoded size of one `BulkGetItem`: the key, the
/// option tag, the value and the ETag, each length prefix at its largest.
fn item_size(key: &str, entry: Option<&mecha_abi::msg::StateEntry>) -> usize {
    let entry = entry.map_or(0, |e| {
        e.value
            .len()
            .saturating_add(e.etag.len())
            .saturating_add(2 * VARINT_MAX)
    });
    key.len()
        .saturating_add(2 * VARINT_MAX)
        .saturating_add(entry)
}

/// RESOURCE_EXHAUSTED for a request naming more than [`MAX_BULK_KEYS`]
/// `what` (keys, operations).
fn too_many(request: &str, what: &str) -> Reply {
    Reply::error(
        Status::ResourceExhausted,
        format!("{request} may carry at most {MAX_BULK_KEYS} {what}; split the request"),
    )
}

/// The reply for a driver that did not answer once per requested key.
fn answer_count_error(asked: usize, answered: usize) -> Reply {
    Reply::error(
        Status::Internal,
        format!("store answered {answered} entries for {asked} keys"),
    )
}

/// The answer for a failed driver operation: the state store's own outcomes
/// here, the shared failures as the SDK maps them.
fn store_error(e: StoreError) -> Reply {
    let status = match &e {
        StoreError::EtagMismatch { .. } => Status::EtagMismatch,
        StoreError::Driver(driver) => driver.status(),
    };
    Reply::error(status, e.to_string())
}

#[cfg(test)]
mod tests {
    use mecha_module::DriverError;

    use super::*;

    #[test]
    fn unsupported_features_answer_unsupported() {
        let reply = store_error(StoreError::Driver(DriverError::Unsupported {
            component: "cache".to_owned(),
            kind: "state.example".to_owned(),
            feature: "transactions".to_owned(),
        }));
        assert_eq!(reply.status, Status::Unsupported);
        let message = mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&reply.payload)
            .expect("an error body")
            .message;
        assert_eq!(
            message,
            "component \"cache\" of type state.example does not support transactions"
        );
    }
}
