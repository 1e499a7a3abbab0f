//! Dapr's output bindings over HTTP: `POST` (or `PUT`)
//! `/v1.0/bindings/{name}` with `{"data", "metadata", "operation"}`, served
//! through `ops::bindings` on the caller's session.

use std::collections::HashMap;

use hyper::header::{HeaderName, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::reply::{self, Body};
use super::request;
use crate::ops::bindings;
use crate::ops::dapr_error::DaprError;
use crate::session::Caller;

/// The path prefix of a binding invocation.
pub const PREFIX: &str = "/v1.0/bindings/";

/// The body Dapr's HTTP API takes.
#[derive(Deserialize)]
struct Invocation {
    #[serde(default)]
    data: serde_json::Value,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    operation: String,
}

/// `POST /v1.0/bindings/{name}`: 200 with the result's data (204 when it
/// has none); the result's metadata comes as `metadata.<name>` headers.
pub async fn invoke(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let name = request::segments(req.uri().path(), PREFIX)?.join("/");
    let (parts, body) = request::read(req).await?;
    let client = request::client(caller, &parts.headers, bindings::API).await?;
    let invocation: Invocation = request::json(&body)?;
    let data = payload(invocation.data);
    let metadata = invocation.metadata.into_iter().collect();
    let output = bindings::invoke(&client, &name, &invocation.operation, data, metadata).await?;
    let status = if output.data.is_empty() {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::OK
    };
    let mut response = reply::bytes(status, output.data);
    for (name, value) in output.metadata {
        let name = HeaderName::from_bytes(format!("metadata.{name}").as_bytes());
        if let (Ok(name), Ok(value)) = (name, HeaderValue::from_str(&value)) {
            response.headers_mut().append(name, value);
        }
    }
    Ok(response)
}

/// The binding's input: a JSON string's text, nothing for null, else the
/// value's JSON text, as Dapr hands `data` to the component.
fn payload(data: serde_json::Value) -> Vec<u8> {
    match data {
        serde_json::Value::String(s) => s.into_bytes(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_are_text_or_json() {
        assert_eq!(payload(serde_json::json!("hi")), b"hi");
        assert_eq!(payload(serde_json::json!({"a": 1})), br#"{"a":1}"#);
        assert!(payload(serde_json::Value::Null).is_empty());
    }
}
