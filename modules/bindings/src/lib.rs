//! The bindings module: connects applications to systems outside mecha, in
//! the spirit of Dapr's bindings (SPEC §7.9). Output bindings run an
//! operation and answer its result (BINDING_INVOKE): `bindings.http`,
//! `bindings.postgresql`, `bindings.redis`, `bindings.localstorage`. Input
//! bindings turn outside events into a server-push stream
//! (BINDING_SUBSCRIBE, BINDING_ACK): `bindings.cron`, and `bindings.redis`
//! with a `stream` (a Redis stream's entries), whose events every enrolled
//! tenant receives, at least once, through the pubsub module's broker (see
//! `input`).
//!
//! Bindings are node-wide, like secret stores: a binding reaches the same
//! outside system for every caller, so `allowedTenants` is checked before
//! anything outside is touched.

pub mod drivers;
pub mod error;
pub mod input;
pub mod schedule;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use mecha_abi::msg::{
    BindingAckRequest, BindingEvent, BindingSubscribeReply, BindingSubscribeRequest,
    InvokeBindingRequest, BINDING_MAX_IN_FLIGHT,
};
use mecha_mod_pubsub::pump::pump;
use mecha_mod_pubsub::store::Subscription;
use mecha_module::{Components, Ctx, InitError, LinkHello, Module, Opcode, Reply, Status};

use drivers::{Access, Binding, Call, Role, Source};
use error::BindingError;

/// The bindings module: its configured bindings by name.
pub struct BindingsModule {
    bindings: Components<Binding>,
}

impl Module for BindingsModule {
    const NAME: &'static str = "bindings";

    async fn init(hello: LinkHello) -> Result<Self, InitError> {
        let data_dir = Path::new(&hello.data_dir);
        let mut ledger = None;
        let bindings = Components::open(&hello.components, "binding", |spec| {
            drivers::open(spec, data_dir, &mut ledger)
        })?;
        // Input bindings produce events whether or not anyone is connected;
        // each source runs as a task of its own for the module's life.
        for (_, binding) in bindings.iter() {
            match &binding.role {
                Role::Input(input, Source::Cron(schedule)) => {
                    tokio::spawn(drivers::cron::run(Arc::clone(input), schedule.clone()));
                }
                Role::Input(input, Source::RedisStream(source)) => {
                    tokio::spawn(drivers::redis_stream::run(
                        Arc::clone(input),
                        (**source).clone(),
                    ));
                }
                Role::Output(_) => {}
            }
        }
        Ok(Self { bindings })
    }

    async fn handle(&self, ctx: Ctx, payload: &[u8]) -> Reply {
        let result = match ctx.opcode {
            Opcode::BINDING_INVOKE => self.invoke(&ctx, payload).await,
            Opcode::BINDING_SUBSCRIBE => self.subscribe(ctx, payload).await,
            Opcode::BINDING_ACK => self.ack(&ctx.tenant, payload).await,
            other => Err(Reply::error(
                Status::UnknownOpcode,
                format!("the bindings module does not serve opcode {other}"),
            )),
        };
        result.unwrap_or_else(|reply| reply)
    }
}

/// Every handler yields the reply to send, success or failure.
type Handled = Result<Reply, Reply>;

impl BindingsModule {
    /// The binding `name` for `tenant`: INVALID_ARGUMENT for an empty name,
    /// NOT_FOUND for an unknown one, PERMISSION_DENIED for a tenant its
    /// scopes do not admit or that is not in its `allowedTenants`.
    fn binding(&self, name: &str, tenant: &str) -> Result<&Binding, Reply> {
        if name.is_empty() {
            return Err(Reply::error(
                Status::InvalidArgument,
                "the binding name is empty; name a binding component",
            ));
        }
        if !self.bindings.iter().any(|(n, _)| n == name) {
            return Err(Reply::error(
                Status::NotFound,
                format!("no binding is named {name:?}"),
            ));
        }
        // Through `entry`, which refuses a tenant the component's Dapr
        // `scopes` do not admit.
        let (_, binding) = self.bindings.entry(name, tenant)?;
        let refused = |why: String| {
            Err(Reply::error(
                Status::PermissionDenied,
                format!("tenant {tenant:?} may not use binding {name:?}: {why}"),
            ))
        };
        match &binding.access {
            Access::Everyone => {}
            Access::Tenants(allowed) if allowed.iter().any(|t| t == tenant) => {}
            Access::Tenants(_) => {
                return refused("it is not listed in the binding's allowedTenants".into())
            }
            // The component's scopes, checked by `entry` above, admitted it.
            Access::Unlisted if self.bindings.has_scopes(name) => {}
            Access::Unlisted => {
                return refused(format!(
                    "{} reaches outside mecha and its component lists no allowedTenants \
                     (nor scopes), so it serves no tenant; name them (or \"*\")",
                    binding.kind
                ))
            }
        }
        Ok(binding)
    }

    async fn invoke(&self, ctx: &Ctx, payload: &[u8]) -> Handled {
        let req: InvokeBindingRequest = Reply::decode(payload)?;
        let binding = self.binding(&req.name, &ctx.tenant)?;
        let Role::Output(output) = &binding.role else {
            return Err(wrong_direction(
                &req.name,
                &binding.kind,
                "BINDING_INVOKE",
                "input",
            ));
        };
        if req.operation.is_empty() {
            return Err(Reply::error(
                Status::InvalidArgument,
                format!("no operation given for binding {:?}", req.name),
            ));
        }
        let trace_parent = ctx.trace_parent();
        let call = Call {
            operation: &req.operation,
            data: &req.data,
            metadata: &req.metadata,
            limit: binding.max_response,
            trace_parent: trace_parent.as_deref(),
        };
        // The deadline bounds the outside system: the module stops waiting
        // then, and this request's task ends, while others go on.
        let result = match ctx.deadline {
            Some(deadline) => {
                let deadline = tokio::time::Instant::from_std(deadline.max(Instant::now()));
                match tokio::time::timeout_at(deadline, output.invoke(call)).await {
                    Ok(result) => result,
                    Err(_) => Err(BindingError::Deadline(format!(
                        "operation {:?} on binding {:?} did not finish before the request's \
                         deadline",
                        req.operation, req.name
                    ))),
                }
            }
            None => output.invoke(call).await,
        };
        match result {
            Ok(reply) => Ok(Reply::ok(&reply)),
            Err(e) => Err(e.reply()),
        }
    }

    async fn subscribe(&self, ctx: Ctx, payload: &[u8]) -> Handled {
        let req: BindingSubscribeRequest = Reply::decode(payload)?;
        let binding = self.binding(&req.name, &ctx.tenant)?;
        let Role::Input(input, _) = &binding.role else {
            return Err(wrong_direction(
                &req.name,
                &binding.kind,
                "BINDING_SUBSCRIBE",
                "output",
            ));
        };
        if req.max_in_flight > BINDING_MAX_IN_FLIGHT {
            return Err(Reply::error(
                Status::InvalidArgument,
                format!(
                    "max_in_flight must be at most {BINDING_MAX_IN_FLIGHT}, not {}",
                    req.max_in_flight
                ),
            ));
        }
        let subscriber = input
            .subscribe(&ctx.tenant, req.max_in_flight, req.ack_deadline_ms)
            .await
            .map_err(|e| e.reply())?;
        // A stream opened after the daemon answered DEADLINE_EXCEEDED would
        // reach nobody while its subscriber took events from the group.
        if ctx
            .deadline
            .is_some_and(|deadline| Instant::now() >= deadline)
        {
            return Err(Reply::error(
                Status::DeadlineExceeded,
                format!(
                    "subscribing to binding {:?} took longer than the request's deadline",
                    req.name
                ),
            ));
        }
        let reply = BindingSubscribeReply {
            subscription_id: subscriber.id(),
            name: req.name.clone(),
        };
        let stream = ctx.open_stream();
        let name = req.name;
        tokio::spawn(pump(
            ctx,
            stream,
            Subscription::Embedded(subscriber),
            "bindings",
            move |d| BindingEvent {
                name: name.clone(),
                offset: d.offset,
                attempt: d.attempt,
                data: d.data,
                metadata: d.metadata,
            },
            |e| {
                let e = BindingError::from(e);
                (e.status(), e.to_string())
            },
        ));
        Ok(Reply::stream_ok(&reply))
    }

    async fn ack(&self, tenant: &str, payload: &[u8]) -> Handled {
        let req: BindingAckRequest = Reply::decode(payload)?;
        let binding = self.binding(&req.name, tenant)?;
        let Role::Input(input, _) = &binding.role else {
            return Err(wrong_direction(
                &req.name,
                &binding.kind,
                "BINDING_ACK",
                "output",
            ));
        };
        let reply = input
            .ack(tenant, req.items, req.nack)
            .await
            .map_err(|e| e.reply())?;
        Ok(Reply::ok(&reply))
    }
}

/// INVALID_ARGUMENT for an operation of the other direction.
fn wrong_direction(name: &str, kind: &str, opcode: &str, is: &str) -> Reply {
    Reply::error(
        Status::InvalidArgument,
        format!(
            "binding {name:?} is of type {kind}, an {is} binding; {opcode} does not apply to it"
        ),
    )
}
