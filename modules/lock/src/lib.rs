//! The lock module: lease-based locks with fencing tokens, served from the
//! configured stores (`lock.memory`, `lock.redb`).

pub mod drivers;

use std::borrow::Cow;
use std::path::Path;
use std::time::Duration;

use mecha_abi::msg::{ExtendLockRequest, TryLockReply, TryLockRequest, UnlockReply, UnlockRequest};
use mecha_module::metadata::take_limit;
use mecha_module::{
    Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status, TenantLimit,
};

use drivers::{Acquired, LockError, LockStore, Stop};

/// How many requests of one tenant may wait for a lock of one component at
/// once, unless the component's metadata field [`MAX_WAITERS_FIELD`] says
/// otherwise.
///
/// A waiting request holds one of its tenant's request slots in the SDK
/// (`mecha_module::DEFAULT_TENANT_SLOTS`, 512); this bound keeps most of
/// them free, so that the tenant's unlocks, which end the waits, are still
/// served. It is per tenant, so a tenant at its bound leaves every other
/// tenant's waits untouched (issue #16: a node-wide bound of 512 let one
/// tenant's 540 waiters refuse everyone else's). The module-wide total is
/// bounded by the SDK's request slots.
pub const DEFAULT_MAX_WAITERS: usize = 128;

/// The component metadata field that sets the per-tenant bound on waiters
/// (see [`DEFAULT_MAX_WAITERS`]). The module reads it, for every driver.
pub const MAX_WAITERS_FIELD: &str = "maxWaitersPerTenant";

/// One configured store and the bound on its waiters.
struct Slot {
    store: Box<dyn LockStore>,
    /// One permit per waiting request, per tenant.
    waiters: TenantLimit,
}

/// The lock module: one or more named stores, the first being the default.
pub struct LockModule {
    stores: Components<Slot>,
}

impl Module for LockModule {
    const NAME: &'static str = "lock";
    const TICK: Option<Duration> = Some(Duration::from_secs(1));

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let stores = Components::open_scoped(&hello.components, "lock store", |spec| {
            let (spec, max_waiters) = take_limit(spec, MAX_WAITERS_FIELD, DEFAULT_MAX_WAITERS)
                .map_err(LockError::from)?;
            Ok::<_, LockError>(Slot {
                store: drivers::open(&spec, data_dir)?,
                waiters: TenantLimit::new(max_waiters),
            })
        })?;
        Ok(Self { stores })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::LOCK_TRY_LOCK => self.try_lock(&ctx, payload).await,
            Opcode::LOCK_UNLOCK => self.unlock(&ctx.tenant, payload).await,
            Opcode::LOCK_EXTEND => self.extend(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the lock module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }

    async fn tick(&self) {
        for (name, slot) in self.stores.iter() {
            match slot.store.sweep().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(store = %name, expired = n, "swept expired locks"),
                Err(e) => tracing::warn!(store = %name, "sweeping expired locks failed: {e}"),
            }
        }
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl LockModule {
    /// The store a request names and the tenant scope it works in there
    /// (the caller's own, or a shared component's namespace).
    fn store<'t>(
        &self,
        name: &str,
        tenant: &'t str,
    ) -> Result<(&dyn LockStore, Cow<'t, str>), Reply> {
        self.slot(name, tenant)
            .map(|(slot, scope)| (slot.store.as_ref(), scope))
    }

    /// Like [`Self::store`], with the bound on the store's waiters.
    fn slot<'t>(&self, name: &str, tenant: &'t str) -> Result<(&Slot, Cow<'t, str>), Reply> {
        self.stores.scoped(name, tenant)
    }

    async fn try_lock(&self, ctx: &Ctx, payload: &[u8]) -> Handled {
        let req: TryLockRequest = Reply::decode(payload)?;
        check_names(&req.resource, &req.owner)?;
        check_ttl(req.ttl_ms)?;
        let (slot, tenant) = self.slot(&req.store, &ctx.tenant)?;
        let store = slot.store.as_ref();
        // A wait ends after `wait_ms`, at the request's deadline, or when this
        // instance drains, whichever comes first (see `stop`). A client that
        // waits should send a deadline longer than its wait (the Rust client
        // does), or the deadline cuts the wait short.
        let wanted = Duration::from_millis(req.wait_ms);
        // Without a permit the request may still get a free lock; only
        // having to wait for it is refused, below. The permit is counted
        // against the caller's own tenant, not the scope: the members of a
        // shared component each have their own bound.
        let permit = if wanted.is_zero() {
            None
        } else {
            slot.waiters.try_take(&ctx.tenant)
        };
        let wait = if permit.is_some() {
            wanted
        } else {
            Duration::ZERO
        };
        let (tenant, resource, owner) = (tenant.as_ref(), &req.resource, &req.owner);
        let acquired =
            drivers::acquire_or_stop(store, tenant, resource, owner, req.ttl_ms, wait, stop(ctx))
                .await
                .map_err(store_error)?;
        drop(permit);
        let token = match acquired {
            Acquired::Granted(token) => Some(token),
            Acquired::Held if wait < wanted => {
                return Err(Reply::error(
                    Status::ResourceExhausted,
                    format!(
                        "lock {resource:?} is held and tenant {:?} already has {} requests \
                         waiting for locks of this store (metadata field {MAX_WAITERS_FIELD}); \
                         try again later",
                        ctx.tenant,
                        slot.waiters.limit()
                    ),
                ))
            }
            Acquired::Held => None,
            // Nobody reads this answer: the daemon answered DEADLINE_EXCEEDED
            // when the deadline passed (and drops a late answer). What
            // matters is to stop waiting, and to make no attempt that could
            // grant the lock to a caller who has gone.
            Acquired::Stopped(Stop::Deadline) => {
                return Err(Reply::error(
                    Status::DeadlineExceeded,
                    format!("lock {resource:?} was still held at the request's deadline"),
                ))
            }
            // UNAVAILABLE rather than "not acquired": the lock did not stay
            // held for the whole wait, the wait was cut short, and nothing
            // was granted, so trying again (which reaches the instance that
            // replaces this one) is safe. Answering at once lets the drain,
            // and so the hot restart or shutdown, finish without waiting out
            // `wait_ms` (the pubsub module retires its streams likewise).
            Acquired::Stopped(Stop::Draining) => {
                return Err(Reply::error(
                    Status::Unavailable,
                    format!(
                        "the lock module instance is being replaced while waiting for lock \
                         {resource:?}; nothing was acquired, try again"
                    ),
                ))
            }
        };
        Ok(Reply::ok(&TryLockReply {
            acquired: token.is_some(),
            fencing_token: token.unwrap_or(0),
        }))
    }

    async fn unlock(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: UnlockRequest = Reply::decode(payload)?;
        check_names(&req.resource, &req.owner)?;
        let (store, tenant) = self.store(&req.store, tenant)?;
        let status = store
            .unlock(&tenant, &req.resource, &req.owner)
            .await
            .map_err(store_error)?;
        Ok(Reply::ok(&UnlockReply { status }))
    }

    async fn extend(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: ExtendLockRequest = Reply::decode(payload)?;
        check_names(&req.resource, &req.owner)?;
        check_ttl(req.ttl_ms)?;
        let (store, tenant) = self.store(&req.store, tenant)?;
        let reply = store
            .extend(&tenant, &req.resource, &req.owner, req.ttl_ms)
            .await
            .map_err(store_error)?;
        Ok(Reply::ok(&reply))
    }
}

/// Resolves when a blocking acquire for `ctx` must give up early: at the
/// request's deadline, or when this instance starts draining.
async fn stop(ctx: &Ctx) -> Stop {
    let deadline = async {
        match ctx.deadline {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        biased;
        () = ctx.draining() => Stop::Draining,
        () = deadline => Stop::Deadline,
    }
}

/// Rejects an empty resource or owner: an empty owner would let every
/// caller that forgot to set one unlock every other such caller's locks.
fn check_names(resource: &str, owner: &str) -> Result<(), Reply> {
    Reply::valid_name("resource", resource)?;
    if owner.is_empty() {
        return Err(Reply::error(
            Status::InvalidArgument,
            format!("owner of lock {resource:?} must not be empty"),
        ));
    }
    Ok(())
}

/// Rejects a zero lease, which would grant a lock that is already free. The
/// drivers rely on this (see `LockStore`).
fn check_ttl(ttl_ms: u64) -> Result<(), Reply> {
    if ttl_ms == 0 {
        return Err(Reply::error(
            Status::InvalidArgument,
            "ttl_ms must be greater than 0",
        ));
    }
    Ok(())
}

/// The answer for a failed driver operation: the shared failures as the
/// SDK maps them, in the lock store's words.
fn store_error(e: LockError) -> Reply {
    let LockError::Driver(driver) = &e;
    Reply::error(driver.status(), e.to_string())
}

#[cfg(test)]
mod tests {
    use mecha_abi::msg::{ComponentSpec, ErrorBody, UnlockStatus};

    use super::*;

    fn module(rt: &tokio::runtime::Runtime) -> LockModule {
        let hello = LinkHello {
            version: 1,
            module: "lock".into(),
            data_dir: std::env::temp_dir().to_string_lossy().into_owned(),
            components: vec![ComponentSpec {
                name: "locks".into(),
                kind: "lock.memory".into(),
                metadata: Vec::new(),
            }],
        };
        rt.block_on(LockModule::init(hello)).expect("init")
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    fn try_lock(store: &str, resource: &str, owner: &str, ttl_ms: u64, wait_ms: u64) -> Vec<u8> {
        mecha_abi::encode(&TryLockRequest {
            store: store.into(),
            resource: resource.into(),
            owner: owner.into(),
            ttl_ms,
            wait_ms,
        })
        .expect("encode")
    }

    fn call(rt: &tokio::runtime::Runtime, m: &LockModule, opcode: Opcode, payload: &[u8]) -> Reply {
        rt.block_on(m.handle(Ctx::detached("t", opcode), payload))
    }

    /// Has owner "a" take `resource` for a minute.
    fn hold(rt: &tokio::runtime::Runtime, m: &LockModule, resource: &str) {
        let held = call(
            rt,
            m,
            Opcode::LOCK_TRY_LOCK,
            &try_lock("", resource, "a", 60_000, 0),
        );
        assert_eq!(held.status, Status::Ok);
    }

    fn error_of(reply: &Reply) -> (Status, String) {
        let body: ErrorBody = mecha_abi::decode(&reply.payload).expect("an error body");
        (reply.status, body.message)
    }

    /// Opens one component of `kind` with `metadata`; the error's text.
    fn init_error(kind: &str, metadata: &[(&str, &str)]) -> String {
        let rt = runtime();
        let hello = LinkHello {
            version: 1,
            module: "lock".into(),
            data_dir: std::env::temp_dir().to_string_lossy().into_owned(),
            components: vec![ComponentSpec {
                name: "remote".into(),
                kind: kind.into(),
                metadata: metadata
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            }],
        };
        match rt.block_on(LockModule::init(hello)) {
            Ok(_) => String::new(),
            Err(e) => e.0,
        }
    }

    /// Server-backed stores check their metadata at load, naming the
    /// component and the field, but never connect then: a valid component
    /// loads with nothing listening.
    #[test]
    fn remote_metadata_is_checked_at_load_without_connecting() {
        for (kind, metadata, field) in [
            ("lock.redis", vec![], "redisHost"),
            ("lock.redis", vec![("redisHost", "nohost")], "redisHost"),
            (
                "lock.redis",
                vec![("redisHost", "h:1"), ("redisDB", "x")],
                "redisDB",
            ),
            (
                "lock.redis",
                vec![("redisHost", "h:1"), ("enableTLS", "true")],
                "enableTLS",
            ),
            (
                "lock.redis",
                vec![("redisHost", "h:1"), ("dialTimeout", "soon")],
                "dialTimeout",
            ),
            (
                "lock.redis",
                vec![("redisHost", "h:1"), ("redisType", "cluster")],
                "redisType",
            ),
            (
                "lock.redis",
                vec![("redisHost", "h:1"), ("bogus", "1")],
                "bogus",
            ),
            ("lock.etcd", vec![], "endpoints"),
            ("lock.etcd", vec![("endpoints", "a:1,b")], "endpoints"),
            ("lock.etcd", vec![("endpoints", "https://a:1")], "endpoints"),
            (
                "lock.etcd",
                vec![("endpoints", "a:1"), ("password", "p")],
                "password",
            ),
        ] {
            let message = init_error(kind, &metadata);
            assert!(
                message.contains("\"remote\"") && message.contains(field),
                "{kind} {metadata:?}: {message:?} names the component and {field}"
            );
        }
        // Port 1 on loopback has no server; loading must not care.
        assert_eq!(
            init_error("lock.redis", &[("redisHost", "127.0.0.1:1")]),
            ""
        );
        assert_eq!(
            init_error(
                "lock.etcd",
                &[
                    ("endpoints", "http://127.0.0.1:1"),
                    ("dialTimeout", "500ms")
                ]
            ),
            ""
        );
    }

    /// With the server down, an operation is UNAVAILABLE and says which
    /// component and server.
    #[test]
    fn a_missing_server_is_unavailable() {
        let rt = runtime();
        for (kind, field, value) in [
            ("lock.redis", "redisHost", "127.0.0.1:1"),
            ("lock.etcd", "endpoints", "127.0.0.1:1"),
        ] {
            let hello = LinkHello {
                version: 1,
                module: "lock".into(),
                data_dir: std::env::temp_dir().to_string_lossy().into_owned(),
                components: vec![ComponentSpec {
                    name: "remote".into(),
                    kind: kind.into(),
                    metadata: vec![(field.into(), value.into())],
                }],
            };
            let m = rt.block_on(LockModule::init(hello)).expect("loads");
            let reply = call(
                &rt,
                &m,
                Opcode::LOCK_TRY_LOCK,
                &try_lock("", "r", "o", 10, 0),
            );
            let (status, message) = error_of(&reply);
            assert_eq!(status, Status::Unavailable, "{message}");
            assert!(
                message.contains("\"remote\"") && message.contains(kind) && message.contains(value),
                "{message}"
            );
        }
    }

    #[test]
    fn bad_requests_are_invalid_arguments() {
        let rt = runtime();
        let m = module(&rt);
        for (payload, needle) in [
            (try_lock("", "", "o", 10, 0), "resource"),
            (try_lock("", "r", "", 10, 0), "owner"),
            (try_lock("", "r", "o", 0, 0), "ttl_ms"),
            (try_lock("nope", "r", "o", 10, 0), "\"nope\""),
            (vec![1, 2, 3], "undecodable"),
        ] {
            let (status, message) = error_of(&call(&rt, &m, Opcode::LOCK_TRY_LOCK, &payload));
            assert_eq!(status, Status::InvalidArgument, "{message}");
            assert!(message.contains(needle), "{message:?} names {needle}");
        }
        let extend = mecha_abi::encode(&ExtendLockRequest {
            store: String::new(),
            resource: "r".into(),
            owner: "o".into(),
            ttl_ms: 0,
        })
        .expect("encode");
        let reply = call(&rt, &m, Opcode::LOCK_EXTEND, &extend);
        assert_eq!(reply.status, Status::InvalidArgument);
        let reply = call(&rt, &m, Opcode::STATE_GET, &[]);
        assert_eq!(reply.status, Status::UnknownOpcode);
    }

    #[test]
    fn the_named_and_the_default_store_are_the_same() {
        let rt = runtime();
        let m = module(&rt);
        let reply = call(
            &rt,
            &m,
            Opcode::LOCK_TRY_LOCK,
            &try_lock("locks", "r", "o", 60_000, 0),
        );
        let granted: TryLockReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert!(granted.acquired);
        let unlock = mecha_abi::encode(&UnlockRequest {
            store: String::new(),
            resource: "r".into(),
            owner: "o".into(),
        })
        .expect("encode");
        let reply = call(&rt, &m, Opcode::LOCK_UNLOCK, &unlock);
        let reply: UnlockReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert_eq!(reply.status, UnlockStatus::Success);
    }

    #[test]
    fn waiting_beyond_the_limit_is_refused_but_free_locks_are_granted() {
        let rt = runtime();
        let m = module(&rt);
        hold(&rt, &m, "busy");
        // As if the tenant had its bound of requests waiting already.
        let waiters = &m.stores.entry("", "uid:1").expect("the store").1.waiters;
        let _all: Vec<_> = (0..DEFAULT_MAX_WAITERS)
            .map(|_| waiters.try_take("t").expect("a permit"))
            .collect();
        let refused = call(
            &rt,
            &m,
            Opcode::LOCK_TRY_LOCK,
            &try_lock("", "busy", "b", 10, 5_000),
        );
        let (status, message) = error_of(&refused);
        assert_eq!(status, Status::ResourceExhausted, "{message}");
        assert!(message.contains(MAX_WAITERS_FIELD), "{message}");
        // Another tenant may still wait: its bound is its own.
        let held = rt.block_on(m.handle(
            Ctx::detached("other", Opcode::LOCK_TRY_LOCK),
            &try_lock("", "busy", "a", 60_000, 0),
        ));
        assert_eq!(held.status, Status::Ok);
        let ctx =
            Ctx::detached_with_deadline("other", Opcode::LOCK_TRY_LOCK, Duration::from_millis(50));
        let other = rt.block_on(m.handle(ctx, &try_lock("", "busy", "c", 10, 60_000)));
        assert_eq!(error_of(&other).0, Status::DeadlineExceeded, "it waited");
        // Not waiting, or not having to, is unaffected by the limit.
        let reply = call(
            &rt,
            &m,
            Opcode::LOCK_TRY_LOCK,
            &try_lock("", "busy", "b", 10, 0),
        );
        let reply: TryLockReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert!(!reply.acquired);
        let reply = call(
            &rt,
            &m,
            Opcode::LOCK_TRY_LOCK,
            &try_lock("", "free", "b", 10, 5_000),
        );
        let reply: TryLockReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert!(reply.acquired);
    }

    /// The per-tenant bound on waiters is component metadata that every
    /// driver accepts, checked at load.
    #[test]
    fn the_waiter_bound_is_component_metadata() {
        assert_eq!(init_error("lock.memory", &[(MAX_WAITERS_FIELD, "2")]), "");
        let error = init_error("lock.memory", &[("MaxWaitersPerTenant", "0")]);
        assert!(error.contains("MaxWaitersPerTenant"), "{error}");
        let error = init_error("lock.memory", &[(MAX_WAITERS_FIELD, "many")]);
        assert!(error.contains("whole number"), "{error}");
    }

    /// A waiter gives up at the request's deadline, without waiting out its
    /// `wait_ms`, and gives its waiting permit back.
    #[test]
    fn a_wait_ends_at_the_request_deadline() {
        let rt = runtime();
        let m = module(&rt);
        hold(&rt, &m, "busy");
        let ctx =
            Ctx::detached_with_deadline("t", Opcode::LOCK_TRY_LOCK, Duration::from_millis(50));
        let started = std::time::Instant::now();
        let reply = rt.block_on(m.handle(ctx, &try_lock("", "busy", "b", 10, 60_000)));
        let (status, message) = error_of(&reply);
        assert_eq!(status, Status::DeadlineExceeded, "{message}");
        assert!(message.contains("\"busy\""), "{message}");
        assert!(started.elapsed() < Duration::from_secs(10), "stopped early");
        let waiters = &m.stores.entry("", "uid:1").expect("the store").1.waiters;
        assert_eq!(waiters.held("t"), 0, "permit returned");
    }

    /// A waiter gives up when the instance drains, so a hot restart is not
    /// held up, and says so with UNAVAILABLE; a free lock is still granted.
    #[test]
    fn a_wait_ends_when_the_instance_drains() {
        let rt = runtime();
        let m = module(&rt);
        hold(&rt, &m, "busy");
        let draining = || Ctx::detached_draining("t", Opcode::LOCK_TRY_LOCK);
        let started = std::time::Instant::now();
        let reply = rt.block_on(m.handle(draining(), &try_lock("", "busy", "b", 10, 60_000)));
        let (status, message) = error_of(&reply);
        assert_eq!(status, Status::Unavailable, "{message}");
        assert!(started.elapsed() < Duration::from_secs(10), "stopped early");
        let reply = rt.block_on(m.handle(draining(), &try_lock("", "free", "b", 10, 60_000)));
        let reply: TryLockReply = mecha_abi::decode(&reply.payload).expect("reply");
        assert!(reply.acquired, "the first attempt is still made");
    }

    #[test]
    fn store_failures_keep_the_lock_store_s_words() {
        let reply = store_error(LockError::Driver(mecha_module::DriverError::Unavailable(
            "redis is down".to_owned(),
        )));
        assert_eq!(
            error_of(&reply),
            (
                Status::Unavailable,
                "lock store unavailable: redis is down".to_owned()
            )
        );
        let reply = store_error(LockError::Driver(mecha_module::DriverError::Internal(
            "disk full".to_owned(),
        )));
        assert_eq!(
            error_of(&reply),
            (Status::Internal, "lock store failure: disk full".to_owned())
        );
    }
}
