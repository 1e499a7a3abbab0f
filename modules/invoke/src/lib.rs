//! The invoke module: app-to-app calls by app id. Apps register app ids on
//! their own connections (INVOKE_REGISTER opens a registration stream); calls
//! (INVOKE) are routed to a local instance — delivered by the daemon as
//! INVOKE_CALL requests on the callee's connection (LINK_DELIVER) — or to a
//! peer node over a mutually authenticated TCP link (`mesh`). Access control,
//! timeouts, retries, circuit breakers and trace context are applied here.

pub mod acl;
mod call;
mod mesh;
pub mod registry;
pub mod resiliency;
pub mod resolve;
pub mod settings;
mod tls;
pub mod trace;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mecha_abi::msg::{AppsReply, InvokeCall, InvokeRequest, RegisterReply, RegisterRequest};
use mecha_module::{Ctx, DaemonLink, InitError, LinkHello, Module, Opcode, Reply, Status};

use registry::Registry;
use resiliency::Breakers;
use settings::Settings;

/// Deadline of a call that reached the module without one.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(5);

/// What every part of the module shares.
pub(crate) struct Core {
    pub settings: Settings,
    pub registry: Registry,
    pub breakers: Breakers,
    pub daemon: OnceLock<DaemonLink>,
    pub mesh: OnceLock<Arc<mesh::Mesh>>,
}

impl Core {
    /// Whether `tenant` may act as `app_id` (register it, or call as it).
    pub fn may_claim(&self, tenant: &str, app_id: &str) -> Result<(), Reply> {
        match self.settings.tenant_app_ids.get(tenant) {
            Some(ids) if !ids.iter().any(|id| id == app_id || id == "*") => Err(Reply::error(
                Status::PermissionDenied,
                format!("tenant {tenant:?} may not act as app id {app_id:?}: it is not in the tenant's appIds"),
            )),
            _ => Ok(()),
        }
    }
}

/// The invoke module.
pub struct InvokeModule {
    core: Arc<Core>,
}

impl Module for InvokeModule {
    const NAME: &'static str = "invoke";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let settings = settings::parse(&hello.components).map_err(InitError)?;
        let core = Arc::new(Core {
            settings,
            registry: Registry::default(),
            breakers: Breakers::default(),
            daemon: OnceLock::new(),
            mesh: OnceLock::new(),
        });
        mesh::start(&core).map_err(InitError)?;
        Ok(Self { core })
    }

    fn attach(&self, daemon: DaemonLink) {
        let _ = self.core.daemon.set(daemon);
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::INVOKE_REGISTER => self.register(&ctx, payload),
            Opcode::INVOKE => self.invoke(&ctx, payload).await,
            Opcode::INVOKE_APPS => Ok(Reply::ok(&AppsReply {
                apps: self.core.registry.entries(&self.core.settings.node),
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
}

impl InvokeModule {
    /// Opens the registration stream; the instance serves calls until the app
    /// cancels it or its connection closes (the daemon cancels the stream).
    fn register(&self, ctx: &Ctx, payload: &[u8]) -> Result<Reply, Reply> {
        let req: RegisterRequest = Reply::decode(payload)?;
        Reply::valid_name("app_id", &req.app_id)?;
        self.core.may_claim(&ctx.tenant, &req.app_id)?;
        let mut stream = ctx.open_stream();
        let id = stream.id();
        self.core
            .registry
            .register(&req.app_id, &ctx.tenant, id, req.methods)
            .map_err(|m| Reply::error(Status::PermissionDenied, m))?;
        tracing::info!(app_id = %req.app_id, tenant = %ctx.tenant, stream = id, "app registered");
        let core = Arc::clone(&self.core);
        let app_id = req.app_id.clone();
        tokio::spawn(async move {
            stream.cancelled().await;
            core.registry.unregister(&app_id, id);
            tracing::info!(%app_id, stream = id, "app unregistered");
        });
        Ok(Reply::stream_ok(&RegisterReply {
            app_id: req.app_id,
            node: self.core.settings.node.clone(),
        }))
    }

    async fn invoke(&self, ctx: &Ctx, payload: &[u8]) -> Result<Reply, Reply> {
        let req: InvokeRequest = Reply::decode(payload)?;
        Reply::valid_name("app_id", &req.app_id)?;
        Reply::valid_name("method", &req.method)?;
        if !req.caller_app_id.is_empty() {
            self.core.may_claim(&ctx.tenant, &req.caller_app_id)?;
        }
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
