//! Dapr's HTTP configuration API (`GET /v1.0/configuration/{store}?key=…`,
//! also under `/v1.0-alpha1/`) through [`crate::ops::configuration`].
//! Subscribing over HTTP makes Dapr call the application back on its app
//! port for every change; mecha has no app channel to call, so the
//! `subscribe` and `unsubscribe` routes answer 501 and subscriptions are
//! served over gRPC.

use hyper::{Method, Request, Response, StatusCode};

use super::reply::{self, Body};
use super::request;
use crate::ops::configuration;
use crate::ops::dapr_error::DaprError;
use crate::session::Caller;

/// The path prefixes of the configuration API.
pub const PREFIXES: [&str; 2] = ["/v1.0/configuration/", "/v1.0-alpha1/configuration/"];

/// Serves one request under either prefix.
pub async fn serve(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let prefix = PREFIXES
        .iter()
        .find(|p| path.starts_with(*p))
        .copied()
        .unwrap_or(PREFIXES[0]);
    let segments = request::segments(&path, prefix)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (parts, _) = request::read(req).await?;
    match (&method, segments.as_slice()) {
        (&Method::GET, [store]) => {
            let query = request::query(&parts)?;
            let metadata = request::metadata(&query);
            let keys: Vec<String> = query
                .into_iter()
                .filter(|(k, _)| k == "key")
                .map(|(_, v)| v)
                .collect();
            let client = request::client(caller, &parts.headers, configuration::GET).await?;
            let items = configuration::get(&client, store, keys, &metadata).await?;
            if items.is_empty() {
                // Dapr answers 204 when no item was found.
                return Ok(reply::nothing(StatusCode::NO_CONTENT));
            }
            Ok(reply::json(StatusCode::OK, &items))
        }
        (_, [_, "subscribe"]) | (_, [_, _, "unsubscribe"]) => {
            Err(DaprError::unimplemented(format!(
                "{method} {path}: configuration subscriptions over HTTP call the application \
                 back on its app port, which mecha does not have; subscribe over gRPC \
                 (SubscribeConfiguration)"
            )))
        }
        _ => Err(DaprError::unimplemented(format!(
            "{method} {path} is not part of Dapr's configuration API"
        ))),
    }
}
