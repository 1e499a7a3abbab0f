//! Dapr's service invocation over HTTP: `/v1.0/invoke/{app}/method/{m}`
//! with any verb (or `/{m}` with a `dapr-app-id` header), served through
//! `ops::invoke` on the caller's session. The verb, query string, content
//! type and the caller's headers travel with the call, as Dapr passes them
//! to an HTTP callee.

use hyper::header::HeaderName;
use hyper::{Request, Response};

use super::answer::{self, decode};
use super::Body;
use crate::ops::invoke::{self, Call, ERR_INVOKE};
use crate::ops::Failure;
use crate::session::Caller;

/// The path prefix of an invocation.
pub const PREFIX: &str = "/v1.0/invoke/";

/// Headers that describe the connection or the request to the personality
/// rather than the call, and are therefore not passed to the callee.
const NOT_PASSED: [&str; 13] = [
    "host",
    "content-length",
    "content-type",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    answer::TOKEN_HEADER,
    APP_ID_HEADER,
    "traceparent",
];

/// Any verb on `/v1.0/invoke/{app}/method/{method}`: the callee's answer,
/// with its status (200 unless an HTTP callee said otherwise) and content
/// type.
pub async fn invoke(caller: &Caller, req: Request<hyper::body::Incoming>) -> Response<Body> {
    match try_invoke(caller, req).await {
        Ok(a) => answer::bytes(answer::status(a.http_status), &a.content_type, a.data),
        Err(f) => answer::failure(&f),
    }
}

/// The header that names the callee when the path is the method itself
/// (Dapr's `POST /{method}` with `dapr-app-id: {app}`).
pub const APP_ID_HEADER: &str = "dapr-app-id";

/// Any verb on `/{method}` with a `dapr-app-id` header: the same call as
/// `/v1.0/invoke/{app}/method/{method}`.
pub fn by_header<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(APP_ID_HEADER)
}

async fn try_invoke(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<invoke::Answer, Failure> {
    let (app_id, method) = match req.headers().get(APP_ID_HEADER) {
        Some(app) if !req.uri().path().starts_with(PREFIX) => {
            let app = app
                .to_str()
                .map_err(|_| Failure::invalid(ERR_INVOKE, "the dapr-app-id header is not text"))?;
            let method = req.uri().path().trim_start_matches('/').to_string();
            (app.to_string(), method)
        }
        _ => target(req.uri().path())?,
    };
    let headers = req.headers();
    let trace_parent = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let metadata: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !NOT_PASSED.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            let value = value.to_str().ok()?;
            Some((HeaderName::as_str(name).to_string(), value.to_string()))
        })
        .collect();
    let call = Call {
        app_id,
        method,
        data: Vec::new(),
        content_type: answer::content_type(&req),
        verb: req.method().as_str().to_string(),
        query: req.uri().query().unwrap_or_default().to_string(),
        type_url: String::new(),
        metadata,
        trace_parent,
    };
    let client = answer::client_of(caller, &req).await?;
    let data = answer::body(req).await?;
    invoke::invoke(&client, Call { data, ..call }).await
}

/// The app id (decoded) and the method (as sent: it is a path for an HTTP
/// callee) of an invocation path.
fn target(path: &str) -> Result<(String, String), Failure> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    match rest.split_once("/method/") {
        Some((app, method)) if !app.is_empty() && !method.is_empty() => {
            Ok((decode(app), method.to_string()))
        }
        _ => Err(Failure::new(
            mecha_abi::Status::InvalidArgument,
            404,
            ERR_INVOKE,
            format!("{path} is not /v1.0/invoke/{{app}}/method/{{method}}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_keep_the_methods_path() {
        assert_eq!(
            target("/v1.0/invoke/orders/method/items/7").unwrap(),
            ("orders".into(), "items/7".into())
        );
        assert!(target("/v1.0/invoke/orders/items").is_err());
        assert!(target("/v1.0/invoke//method/x").is_err());
    }
}
