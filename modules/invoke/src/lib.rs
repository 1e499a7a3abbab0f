//! The invoke module: app-to-app calls by app id. Apps register app ids on
//! their own connections (INVOKE_REGISTER opens a registration stream); calls
//! (INVOKE) are routed to a local instance — delivered by the daemon as
//! INVOKE_CALL requests on the callee's connection (LINK_DELIVER) — or to a
//! peer node over a mutually authenticated TCP link (`mesh`). Access control,
//! timeouts, retries, circuit breakers and trace context are applied here.

pub mod acl;
pub mod admission;
mod call;
mod mesh;
pub mod owners;
pub mod registry;
pub mod resiliency;
pub mod resolve;
mod routes;
pub mod settings;
mod tls;
pub mod trace;
pub mod warn;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mecha_abi::msg::{AppsReply, InvokeCall, InvokeRequest, RegisterReply, RegisterRequest};
use mecha_module::{Ctx, DaemonLink, InitError, LinkHello, Module, Opcode, Reply, Status};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};

use admission::Admission;
use owners::Journal;
use registry::{Refusal, Registry};
use resiliency::Breakers;
use settings::Settings;
use warn::Warnings;

/// Deadline of a call that reached the module without one.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);
/// The longest app id, in bytes. App ids are names of services, and every
/// one is kept in memory, announced to peers and listed by INVOKE_APPS.
pub const MAX_APP_ID_BYTES: usize = 256;
/// The most entries one INVOKE_APPS answer holds.
pub const MAX_APPS_LISTED: usize = 4096;
/// The most bytes of app ids and node names one INVOKE_APPS answer holds:
/// far below the link's frame limit, whatever peers announce.
pub const MAX_APPS_BYTES: usize = 1 << 20;

/// What every part of the module shares.
pub(crate) struct Core {
    pub settings: Settings,
    pub registry: Registry,
    pub breakers: Breakers,
    pub daemon: OnceLock<DaemonLink>,
    pub mesh: OnceLock<Arc<mesh::Mesh>>,
    pub admission: Arc<Admission>,
    pub warnings: Warnings,
    /// Orders route grants against the revocations registrations send
    /// (`routes`): held while deciding and sending either.
    pub route_order: Mutex<()>,
    /// Where the ownership journal lives; empty = nowhere (no persistence).
    data_dir: PathBuf,
    /// The ownership journal, once replayed (see [`Core::load_owners`]).
    journal: Mutex<Option<Journal>>,
    loaded: OnceLock<()>,
}

impl Core {
    /// Replays the ownership journal once, reserving the app ids the previous
    /// instance's tenants held. A replacing instance (hot restart) does this on
    /// its first request, not during its handshake: the old instance still
    /// records releases until it has drained, and requests reach the new one
    /// only after that.
    fn load_owners(&self) {
        self.loaded.get_or_init(|| {
            if self.data_dir.as_os_str().is_empty() {
                tracing::warn!("no data directory: app-id ownership does not survive a restart");
                return;
            }
            match Journal::open(&self.data_dir, self.settings.reservation_grace) {
                Ok((journal, reserved)) => {
                    if !reserved.is_empty() {
                        tracing::info!(
                            count = reserved.len(),
                            grace = ?self.settings.reservation_grace,
                            "app ids reserved for their tenants after a restart"
                        );
                    }
                    self.registry.reserve(reserved);
                    *self.journal.lock() = Some(journal);
                }
                Err(e) => tracing::warn!("{e}; app-id ownership does not survive a restart"),
            }
        });
    }

    /// Appends a change of ownership to the journal.
    fn record(&self, app_id: &str, tenant: &str, held: bool) {
        if let Some(j) = self.journal.lock().as_mut() {
            if let Err(e) = j.record(app_id, tenant, held) {
                self.warnings.warn("journal", &e.to_string());
            }
        }
    }

    /// Whether `tenant` may register `app_id` by the configuration: its own
    /// `appIds` list (if it has one) must name it or hold `*`, and no other
    /// tenant's list may name it, unless the tenant's names it too.
    pub fn may_register(&self, tenant: &str, app_id: &str) -> Result<(), Reply> {
        let lists = &self.settings.tenant_app_ids;
        let names = |ids: &Vec<String>| ids.iter().any(|id| id == app_id);
        let own = lists.get(tenant);
        if own.is_some_and(|ids| !names(ids) && !ids.iter().any(|id| id == "*")) {
            return Err(Reply::error(
                Status::PermissionDenied,
                format!("tenant {tenant:?} may not act as app id {app_id:?}: it is not in the tenant's appIds"),
            ));
        }
        if !own.is_some_and(names) && lists.iter().any(|(t, ids)| t != tenant && names(ids)) {
            return Err(Reply::error(
                Status::PermissionDenied,
                format!("app id {app_id:?} is reserved for another tenant by the configuration's appIds"),
            ));
        }
        Ok(())
    }

    /// Whether `tenant` may call as `app_id`: only when it holds the id,
    /// because the callee's access control trusts `caller_app_id`. A tenant
    /// holds an id its `appIds` list names, and one it registered at run time
    /// (while registered, and during the reservation after).
    pub fn may_call_as(&self, tenant: &str, app_id: &str) -> Result<(), Reply> {
        let listed = self
            .settings
            .tenant_app_ids
            .get(tenant)
            .is_some_and(|ids| ids.iter().any(|id| id == app_id));
        if listed || self.registry.holds(tenant, app_id) {
            return Ok(());
        }
        self.warnings.warn(
            "caller_app_id",
            &format!(
                "tenant {tenant:?} tried to call as app id {app_id:?}, which it does not hold"
            ),
        );
        Err(Reply::error(
            Status::PermissionDenied,
            format!("tenant {tenant:?} may not call as app id {app_id:?}: the tenant does not hold it (it is neither in the tenant's appIds nor registered by the tenant)"),
        ))
    }
}

/// The invoke module.
pub struct InvokeModule {
    core: Arc<Core>,
}

impl Module for InvokeModule {
    const NAME: &'static str = "invoke";
    /// Reservations lapse and the journal is compacted in the tick.
    const TICK: Option<Duration> = Some(Duration::from_secs(1));

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let settings = settings::parse(&hello.components).map_err(InitError)?;
        let core = Arc::new(Core {
            admission: Admission::new(settings.max_calls_per_tenant),
            settings,
            registry: Registry::default(),
            breakers: Breakers::default(),
            daemon: OnceLock::new(),
            mesh: OnceLock::new(),
            warnings: Warnings::default(),
            route_order: Mutex::new(()),
            data_dir: PathBuf::from(&hello.data_dir),
            journal: Mutex::new(None),
            loaded: OnceLock::new(),
        });
        if !mecha_module::is_handoff() {
            core.load_owners();
        }
        mesh::start(&core).map_err(InitError)?;
        Ok(Self { core })
    }

    fn attach(&self, daemon: DaemonLink) {
        let _ = self.core.daemon.set(daemon);
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        self.core.load_owners();
        let result = match ctx.opcode {
            Opcode::INVOKE_REGISTER => self.register(&ctx, payload),
            Opcode::INVOKE => self.invoke(&ctx, payload).await,
            Opcode::INVOKE_APPS => Ok(Reply::ok(&AppsReply {
                apps: self.core.registry.entries(
                    &ctx.tenant,
                    &self.core.settings.node,
                    MAX_APPS_LISTED,
                    MAX_APPS_BYTES,
                ),
            })),
            Opcode::INVOKE_CALL => Err(Reply::error(
                Status::InvalidArgument,
                "INVOKE_CALL is sent by the daemon to registered apps, not by apps",
            )),
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the invoke module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }

    async fn tick(&self) {
        if self.core.loaded.get().is_none() {
            return;
        }
        self.core.registry.purge_expired();
        let mut journal = self.core.journal.lock();
        if let Some(j) = journal.as_mut() {
            if j.wants_compaction(self.core.registry.owned()) {
                let (held, reserved) = self.core.registry.snapshot();
                if let Err(e) = j.compact(&held, &reserved) {
                    self.core.warnings.warn("journal", &e.to_string());
                }
            }
        }
    }
}

/// Checks an app id: a name (SPEC §7) of at most [`MAX_APP_ID_BYTES`].
fn valid_app_id(what: &str, value: &str) -> Result<(), Reply> {
    Reply::valid_name(what, value)?;
    if value.len() > MAX_APP_ID_BYTES {
        return Err(Reply::error(
            Status::InvalidArgument,
            format!(
                "{what} is {} bytes, more than the limit of {MAX_APP_ID_BYTES}",
                value.len()
            ),
        ));
    }
    Ok(())
}

impl InvokeModule {
    /// Opens the registration stream; the instance serves calls until the app
    /// cancels it or its connection closes (the daemon cancels the stream).
    fn register(&self, ctx: &Ctx, payload: &[u8]) -> Result<Reply, Reply> {
        let req: RegisterRequest = Reply::decode(payload)?;
        valid_app_id("app_id", &req.app_id)?;
        let core = &self.core;
        core.may_register(&ctx.tenant, &req.app_id)?;
        let mut stream = ctx.open_stream();
        let id = stream.id();
        let (probe, mut probes) = mpsc::channel::<oneshot::Sender<()>>(16);
        let limit = core.settings.max_registrations_per_tenant;
        // A new instance makes calls take turns again: the routes to the app
        // id are revoked before any call can be delivered to it.
        let order = core.route_order.lock();
        let first = core
            .registry
            .register(&req.app_id, &ctx.tenant, id, req.methods, probe, limit)
            .map_err(|refusal| {
                let (status, msg) = match refusal {
                    Refusal::Held => (
                        Status::PermissionDenied,
                        format!("app id {:?} is served by another tenant on this node", req.app_id),
                    ),
                    Refusal::Reserved(left) => (
                        Status::PermissionDenied,
                        format!(
                            "app id {:?} is reserved for the tenant that registered it, for {} ms more",
                            req.app_id,
                            left.as_millis()
                        ),
                    ),
                    Refusal::Full(limit) => (
                        Status::ResourceExhausted,
                        format!("tenant {:?} has {limit} registrations, its limit (maxRegistrationsPerTenant)", ctx.tenant),
                    ),
                };
                core.warnings.warn("register", &format!("registration refused: {msg}"));
                Reply::error(status, msg)
            })?;
        routes::revoke(core, &req.app_id);
        drop(order);
        if first {
            core.record(&req.app_id, &ctx.tenant, true);
        }
        tracing::debug!(app_id = %req.app_id, tenant = %ctx.tenant, stream = id, "app registered");
        let core = Arc::clone(&self.core);
        let app_id = req.app_id.clone();
        tokio::spawn(async move {
            // Probes are answered while the stream is open. Checking the
            // cancellation first makes the answer exact: a LINK_CANCEL that
            // the SDK read before the probe was sent is seen here.
            loop {
                tokio::select! {
                    biased;
                    () = stream.cancelled() => break,
                    asked = probes.recv() => match asked {
                        Some(reply) => { let _ = reply.send(()); }
                        None => break,
                    },
                }
            }
            if let Some(tenant) =
                core.registry
                    .unregister(&app_id, id, core.settings.reservation_grace)
            {
                core.record(&app_id, &tenant, false);
            }
            tracing::debug!(%app_id, stream = id, "app unregistered");
        });
        Ok(Reply::stream_ok(&RegisterReply {
            app_id: req.app_id,
            node: self.core.settings.node.clone(),
        }))
    }

    async fn invoke(&self, ctx: &Ctx, payload: &[u8]) -> Result<Reply, Reply> {
        let req: InvokeRequest = Reply::decode(payload)?;
        valid_app_id("app_id", &req.app_id)?;
        Reply::valid_name("method", &req.method)?;
        if !req.caller_app_id.is_empty() {
            valid_app_id("caller_app_id", &req.caller_app_id)?;
            self.core.may_call_as(&ctx.tenant, &req.caller_app_id)?;
        }
        let _admitted = self.core.admission.admit(&ctx.tenant).map_err(|why| {
            let msg = match why {
                admission::Refused::Tenant(n) => format!(
                    "tenant {:?} has {n} calls waiting, its limit (maxCallsPerTenant)",
                    ctx.tenant
                ),
                admission::Refused::Module(n) => {
                    format!("the invoke module has {n} calls waiting, its limit")
                }
            };
            self.core.warnings.warn("calls", &msg);
            Reply::error(Status::ResourceExhausted, msg)
        })?;
        let deadline = ctx
            .deadline
            .unwrap_or_else(|| Instant::now() + DEFAULT_DEADLINE);
        let call = InvokeCall {
            app_id: req.app_id,
            method: req.method,
            data: req.data,
            content_type: req.content_type,
            metadata: req.metadata,
            caller_app_id: req.caller_app_id,
            caller_tenant: ctx.tenant.clone(),
            caller_node: self.core.settings.node.clone(),
            // The daemon's trace context (the caller's trace, the daemon's
            // span as parent) when the request carried one, else the
            // payload's own field, else a fresh trace.
            trace_parent: match ctx.trace_parent() {
                Some(tp) => tp,
                None => trace::ensure(&req.trace_parent),
            },
        };
        let (status, payload) = call::invoke(&self.core, &call, deadline).await;
        Ok(Reply {
            status,
            payload,
            opens_stream: false,
        })
    }
}
