//! Service invocation: calling apps by app id, and serving an app id on this
//! connection — the daemon delivers calls as INVOKE_CALL requests on it, and
//! the registered handler's result goes back as the response (SPEC §7.8).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use mecha_abi::msg::{
    AppEntry, AppsReply, ErrorBody, InvokeCall, InvokeReply, InvokeRequest, RegisterReply,
    RegisterRequest,
};
use mecha_abi::{Header, Opcode, Status};
use mecha_wire::OutFrame;
use serde::Serialize;

use crate::client::Shared;
use crate::request::Request;
use crate::{Client, Error, Subscription};

/// What a handler returns: the reply, or a status and message for the caller.
pub type HandlerResult = Result<InvokeReply, (Status, String)>;
/// A handler's future.
pub type HandlerFuture = Pin<Box<dyn Future<Output = HandlerResult> + Send>>;
/// Serves the calls of one app id.
pub type Handler = Arc<dyn Fn(InvokeCall) -> HandlerFuture + Send + Sync>;

/// Wraps an async function as a [`Handler`].
pub fn handler<F, Fut>(f: F) -> Handler
where
    F: Fn(InvokeCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = HandlerResult> + Send + 'static,
{
    Arc::new(move |call| Box::pin(f(call)))
}

/// A handler that answers every call with the request's data and content type.
pub fn echo_handler() -> Handler {
    handler(|call: InvokeCall| async move {
        Ok(InvokeReply {
            data: call.data,
            content_type: call.content_type,
            metadata: call.metadata,
        })
    })
}

/// Options of an invocation.
#[derive(Clone, Debug, Default)]
pub struct InvokeOptions {
    /// Media type of the data; empty = application/octet-stream.
    pub content_type: String,
    /// Name/value pairs for the callee.
    pub metadata: Vec<(String, String)>,
    /// The app id to call as (the tenant must be allowed to claim it).
    pub caller_app_id: String,
    /// W3C traceparent; empty = the daemon generates one.
    pub trace_parent: String,
}

/// INVOKE_APPS's payload: empty.
#[derive(Serialize)]
pub(crate) struct AppsRequest;

impl Request for InvokeRequest {
    const OPCODE: Opcode = Opcode::INVOKE;
    type Reply = InvokeReply;
    // A call may have effects; the caller's resiliency policy (in the
    // daemon's configuration) decides about retries, not the client.
    fn is_idempotent(&self) -> bool {
        false
    }
}

impl Request for AppsRequest {
    const OPCODE: Opcode = Opcode::INVOKE_APPS;
    type Reply = AppsReply;
    fn is_idempotent(&self) -> bool {
        true
    }
}

/// One app id served on this connection. Dropping it (or [`cancel`]) stops
/// serving.
///
/// [`cancel`]: Registration::cancel
pub struct Registration {
    client: Client,
    app_id: String,
    node: String,
    sub: Subscription,
}

impl Registration {
    /// The app id served.
    pub fn app_id(&self) -> &str {
        &self.app_id
    }

    /// The node serving it.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Waits until the registration ends: `None` when it was cancelled,
    /// else why (UNAVAILABLE: the invoke module restarted; register again).
    pub async fn ended(&mut self) -> Option<Error> {
        loop {
            match self.sub.next().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    }

    /// Stops serving the app id.
    pub async fn cancel(self) -> Result<(), Error> {
        self.sub.cancel().await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.client
            .shared
            .pending
            .lock()
            .handlers
            .remove(&self.app_id);
    }
}

impl Client {
    /// Calls `method` of app `app_id` with `data`, within this handle's
    /// timeout. A non-OK answer of the callee is an `Error::Status`.
    pub async fn invoke(
        &self,
        app_id: &str,
        method: &str,
        data: impl Into<Vec<u8>>,
        options: InvokeOptions,
    ) -> Result<InvokeReply, Error> {
        let req = InvokeRequest {
            app_id: app_id.into(),
            method: method.into(),
            data: data.into(),
            content_type: options.content_type,
            metadata: options.metadata,
            caller_app_id: options.caller_app_id,
            trace_parent: options.trace_parent,
        };
        self.call(&req).await
    }

    /// Every app id reachable from the daemon: local and announced by peers.
    pub async fn apps(&self) -> Result<Vec<AppEntry>, Error> {
        Ok(self.call(&AppsRequest).await?.apps)
    }

    /// Serves `app_id` on this connection: `handler` answers every call of
    /// one of `methods` (empty = every method) until the registration ends.
    pub async fn register(
        &self,
        app_id: &str,
        methods: Vec<String>,
        handler: Handler,
    ) -> Result<Registration, Error> {
        // The handler is known before the daemon can deliver the first call.
        self.shared
            .pending
            .lock()
            .handlers
            .insert(app_id.to_string(), handler);
        let req = RegisterRequest {
            app_id: app_id.into(),
            methods,
        };
        let body = mecha_abi::encode(&req).map_err(|e| Error::Protocol(e.to_string()))?;
        let opened = self.open_stream(Opcode::INVOKE_REGISTER, body).await;
        let (reply, sub) = match opened {
            Ok(o) => o,
            Err(e) => {
                self.shared.pending.lock().handlers.remove(app_id);
                return Err(e);
            }
        };
        let reply: RegisterReply =
            mecha_abi::decode(&reply).map_err(|e| Error::Protocol(e.to_string()))?;
        Ok(Registration {
            client: self.clone(),
            app_id: reply.app_id,
            node: reply.node,
            sub,
        })
    }

    /// Serves `app_id` until cancelled or an error other than a reset,
    /// registering again whenever the invoke module restarts.
    pub async fn serve(
        &self,
        app_id: &str,
        methods: Vec<String>,
        handler: Handler,
    ) -> Result<(), Error> {
        loop {
            let mut reg = self
                .register(app_id, methods.clone(), Arc::clone(&handler))
                .await?;
            match reg.ended().await {
                None => return Ok(()),
                Some(e) if e.status() == Some(Status::Unavailable) => {
                    drop(reg);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Some(e) => return Err(e),
            }
        }
    }
}

/// Runs the handler for a call the daemon delivered and sends its response.
pub(crate) fn serve_call(
    shared: &Arc<Shared>,
    tx: &mecha_wire::WeakOutbox,
    header: Header,
    payload: Bytes,
) {
    let Some(tx) = tx.upgrade() else {
        return;
    };
    let answer = move |status: Status, body: Vec<u8>| OutFrame::new(header.response(status), body);
    let error = move |status: Status, message: String| {
        let body = mecha_abi::encode(&ErrorBody { message }).unwrap_or_default();
        answer(status, body)
    };
    let call: InvokeCall = match mecha_abi::decode(&payload) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(error(Status::InvalidArgument, e.to_string()));
            return;
        }
    };
    let handler = shared.pending.lock().handlers.get(&call.app_id).cloned();
    let Some(handler) = handler else {
        let msg = format!("this connection serves no app {:?}", call.app_id);
        let _ = tx.send(error(Status::Unavailable, msg));
        return;
    };
    tokio::spawn(async move {
        let frame = match handler(call).await {
            Ok(reply) => match mecha_abi::encode(&reply) {
                Ok(body) => answer(Status::Ok, body),
                Err(e) => error(Status::Internal, e.to_string()),
            },
            Err((status, message)) => error(status, message),
        };
        let _ = tx.send_wait(frame).await;
    });
}
