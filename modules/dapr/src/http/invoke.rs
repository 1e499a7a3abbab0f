//! Dapr's service invocation over HTTP: `/v1.0/invoke/{app}/method/{m}`
//! with any verb (or `/{m}` with a `dapr-app-id` header), served through
//! `ops::invoke` on the caller's session. The verb, query string, content
//! type and the caller's headers travel with the call, as Dapr passes them
//! to an HTTP callee.

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::invoke::{self, Call, ERR_INVOKE};
use crate::session::Caller;

/// The path prefix of an invocation.
pub const PREFIX: &str = "/v1.0/invoke/";

/// The header that names the callee when the path is the method itself
/// (Dapr's `POST /{method}` with `dapr-app-id: {app}`).
pub const APP_ID_HEADER: &str = "dapr-app-id";

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
    request::TOKEN_HEADER,
    APP_ID_HEADER,
    "traceparent",
];

/// Any verb on `/{method}` with a `dapr-app-id` header: the same call as
/// `/v1.0/invoke/{app}/method/{method}`.
pub fn by_header<B>(req: &Request<B>) -> bool {
    req.headers().contains_key(APP_ID_HEADER)
}

/// Any verb on `/v1.0/invoke/{app}/method/{method}`: the callee's answer,
/// with its status (200 unless an HTTP callee said otherwise) and content
/// type.
pub async fn invoke(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let path = req.uri().path().to_owned();
    let (app_id, method) = match req.headers().get(APP_ID_HEADER) {
        Some(app) if !path.starts_with(PREFIX) => {
            let app = app.to_str().map_err(|_| {
                DaprError::invalid(ERR_INVOKE, "the dapr-app-id header is not text")
            })?;
            (app.to_string(), path.trim_start_matches('/').to_string())
        }
        _ => target(&path)?,
    };
    let (parts, body) = request::read(req).await?;
    let headers = &parts.headers;
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let metadata: Vec<(String, String)> = headers
        .iter()
        .filter(|(name, _)| !NOT_PASSED.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_string(), value.to_str().ok()?.to_string()))
        })
        .collect();
    let call = Call {
        app_id,
        method,
        data: body.to_vec(),
        content_type: text(CONTENT_TYPE.as_str()),
        verb: parts.method.as_str().to_string(),
        query: parts.uri.query().unwrap_or_default().to_string(),
        type_url: String::new(),
        metadata,
        trace_parent: text("traceparent"),
    };
    let client = request::client(caller, headers, invoke::API).await?;
    let answer = invoke::invoke(&client, call).await?;
    let status = StatusCode::from_u16(answer.http_status).unwrap_or(StatusCode::OK);
    let mut response = reply::bytes(status, answer.data);
    if let Ok(v) = HeaderValue::from_str(&answer.content_type) {
        if !answer.content_type.is_empty() {
            response.headers_mut().insert(CONTENT_TYPE, v);
        }
    }
    Ok(response)
}

/// The app id (decoded) and the method (as sent: it is a path for an HTTP
/// callee) of an invocation path.
fn target(path: &str) -> Result<(String, String), DaprError> {
    let rest = path.strip_prefix(PREFIX).unwrap_or_default();
    match rest.split_once("/method/") {
        Some((app, method)) if !app.is_empty() && !method.is_empty() && !app.contains('/') => {
            let app = request::segments(app, "")?.concat();
            Ok((app, method.to_string()))
        }
        _ => Err(DaprError::new(
            tonic::Code::InvalidArgument,
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
        assert_eq!(
            target("/v1.0/invoke/my%2Eapp/method/x").unwrap().0,
            "my.app"
        );
        assert!(target("/v1.0/invoke/orders/items").is_err());
        assert!(target("/v1.0/invoke//method/x").is_err());
    }
}
