//! Dapr's pub/sub over HTTP: `POST /v1.0/publish/{pubsub}/{topic}` and
//! `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}`, served through
//! `ops::pubsub` on the caller's session.

use hyper::header::CONTENT_TYPE;
use hyper::http::request::Parts;
use hyper::{Request, Response, StatusCode};
use serde::Deserialize;

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::pubsub::{self, BulkEntry};
use crate::session::Caller;

/// The path prefix of a publish.
pub const PUBLISH: &str = "/v1.0/publish/";
/// The path prefix of a bulk publish.
pub const BULK: &str = "/v1.0-alpha1/publish/bulk/";

/// `POST /v1.0/publish/{pubsub}/{topic}`: the body is the payload, its
/// `Content-Type` the event's content type, `metadata.*` query parameters
/// its metadata. 204 once stored.
pub async fn publish(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let (name, topic) = target(req.uri().path(), PUBLISH)?;
    let (parts, body) = request::read(req).await?;
    let metadata = metadata(&parts)?;
    let client = request::client(caller, &parts.headers, pubsub::API).await?;
    let content_type = content_type(&parts);
    pubsub::publish(
        &client,
        &name,
        &topic,
        body.to_vec(),
        &content_type,
        metadata,
    )
    .await?;
    Ok(reply::nothing(StatusCode::NO_CONTENT))
}

/// The pubsub name and topic after `prefix` (the topic may contain `/`).
fn target(path: &str, prefix: &str) -> Result<(String, String), DaprError> {
    let mut segments = request::segments(path, prefix)?.into_iter();
    let name = segments.next().unwrap_or_default();
    Ok((name, segments.collect::<Vec<_>>().join("/")))
}

/// The request's `metadata.*` query parameters.
fn metadata(parts: &Parts) -> Result<Vec<(String, String)>, DaprError> {
    Ok(request::metadata(&request::query(parts)?)
        .into_iter()
        .collect())
}

/// The request's `Content-Type`, empty when it has none.
fn content_type(parts: &Parts) -> String {
    parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// One entry of a bulk publish's body, as Dapr's HTTP API writes it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonEntry {
    #[serde(default)]
    entry_id: String,
    #[serde(default)]
    event: serde_json::Value,
    #[serde(default)]
    content_type: String,
    #[serde(default)]
    metadata: std::collections::HashMap<String, String>,
}

/// `POST /v1.0-alpha1/publish/bulk/{pubsub}/{topic}`: the body is a JSON
/// array of `{entryId, event, contentType, metadata}`. 204 when every entry
/// was stored; else 500 with the failed entries, as Dapr answers.
pub async fn bulk(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let (name, topic) = target(req.uri().path(), BULK)?;
    let (parts, body) = request::read(req).await?;
    let metadata = metadata(&parts)?;
    let client = request::client(caller, &parts.headers, pubsub::API).await?;
    let entries: Vec<JsonEntry> = serde_json::from_slice(&body).map_err(|e| {
        DaprError::invalid(
            pubsub::ERR_EVENTS,
            format!("the body is not a JSON array of bulk publish entries: {e}"),
        )
    })?;
    let entries = entries.into_iter().map(entry).collect();
    let failed = pubsub::bulk_publish(&client, &name, &topic, entries, &metadata).await?;
    if failed.is_empty() {
        return Ok(reply::nothing(StatusCode::NO_CONTENT));
    }
    let entries: Vec<_> = failed
        .into_iter()
        .map(|(id, error)| serde_json::json!({ "entryId": id, "error": error }))
        .collect();
    let body = serde_json::json!({
        "failedEntries": entries,
        "errorCode": pubsub::ERR_PUBLISH,
    });
    Ok(reply::json(StatusCode::INTERNAL_SERVER_ERROR, &body))
}

/// An entry's payload: a JSON string is its text unless the content type
/// is JSON; anything else is its JSON text.
fn entry(e: JsonEntry) -> BulkEntry {
    let json_typed = {
        let ct = e.content_type.to_ascii_lowercase();
        ct.starts_with("application/json") || ct.contains("+json")
    };
    let event = match e.event {
        serde_json::Value::String(s) if !json_typed => s.into_bytes(),
        serde_json::Value::Null => Vec::new(),
        other => other.to_string().into_bytes(),
    };
    BulkEntry {
        entry_id: e.entry_id,
        event,
        content_type: e.content_type,
        metadata: e.metadata.into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_split_at_the_first_slash() {
        assert_eq!(
            target("/v1.0/publish/pubsub/a/b%20c", PUBLISH).unwrap(),
            ("pubsub".into(), "a/b c".into())
        );
        assert_eq!(
            target("/v1.0/publish/pubsub", PUBLISH).unwrap(),
            ("pubsub".into(), String::new())
        );
        assert!(target("/v1.0/publish/pubsub/%zz", PUBLISH).is_err());
    }

    #[test]
    fn bulk_entries_read_as_dapr_writes_them() {
        let body = br#"[{"entryId":"1","event":"hi","contentType":"text/plain"},
                        {"entryId":"2","event":{"a":1},"contentType":"application/json","metadata":{"k":"v"}}]"#;
        let entries: Vec<JsonEntry> = serde_json::from_slice(body).unwrap();
        let entries: Vec<_> = entries.into_iter().map(entry).collect();
        assert_eq!(entries[0].event, b"hi");
        assert_eq!(entries[1].event, br#"{"a":1}"#);
        assert_eq!(entries[1].metadata, vec![("k".into(), "v".into())]);
    }
}
