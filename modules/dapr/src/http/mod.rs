//! Dapr's HTTP API (`/v1.0/…`) on TCP, with hyper's HTTP/1.1 server: each
//! accepted connection is a [`Caller`], and every request on it is served
//! through the caller's own native session.

use std::convert::Infallible;
use std::sync::Arc;

use hyper::{Request, Response, StatusCode};

use crate::accept::{self, Accepted, Listener, Protocol};
use crate::session::{Caller, Sessions};

mod bindings;
mod configuration;
mod invoke;
mod lock;
mod metadata;
mod pubsub;
mod reply;
mod request;
mod secrets;
mod state;

use reply::Body;

/// Serves HTTP on `listener` until the process exits.
pub async fn serve(listener: tokio::net::TcpListener, sessions: Arc<Sessions>) {
    let mut incoming = accept::incoming(Listener::Tcp(listener), Protocol::Http, sessions);
    while let Some(Accepted { io, caller }) = incoming.recv().await {
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let caller = Arc::clone(&caller);
                async move { Ok::<_, Infallible>(route(&caller, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(io);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("an HTTP connection ended: {e}");
            }
        });
    }
}

/// One request to its handler; a failure becomes Dapr's error answer here,
/// once for every route.
async fn route(caller: &Caller, req: Request<hyper::body::Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    reply::either(match (req.method(), path.as_str()) {
        (&hyper::Method::GET, "/v1.0/healthz" | "/v1.0/healthz/outbound") => {
            Ok(reply::nothing(StatusCode::NO_CONTENT))
        }
        (_, p) if p.starts_with(state::PREFIX) => state::serve(caller, req).await,
        (_, p) if p.starts_with(lock::LOCK_PREFIX) || p.starts_with(lock::UNLOCK_PREFIX) => {
            lock::serve(caller, req).await
        }
        (_, p) if p.starts_with(secrets::PREFIX) => secrets::serve(caller, req).await,
        (_, p) if configuration::PREFIXES.iter().any(|c| p.starts_with(c)) => {
            configuration::serve(caller, req).await
        }
        (_, p) if p == metadata::PATH || p.starts_with("/v1.0/metadata/") => {
            metadata::serve(caller, req).await
        }
        (&hyper::Method::POST, p) if p.starts_with(pubsub::PUBLISH) => {
            pubsub::publish(caller, req).await
        }
        (&hyper::Method::POST, p) if p.starts_with(pubsub::BULK) => pubsub::bulk(caller, req).await,
        (_, p) if p.starts_with(invoke::PREFIX) => invoke::invoke(caller, req).await,
        (&hyper::Method::POST | &hyper::Method::PUT, p) if p.starts_with(bindings::PREFIX) => {
            bindings::invoke(caller, req).await
        }
        _ if invoke::by_header(&req) => invoke::invoke(caller, req).await,
        (method, path) => Err(crate::ops::dapr_error::DaprError::unimplemented(format!(
            "the mecha Dapr personality does not implement {method} {path}; see README.md for what it serves"
        ))),
    })
}
