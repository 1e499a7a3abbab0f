//! Dapr's HTTP state API (`/v1.0/state/{store}…`) through
//! [`crate::ops::state`]. Values are JSON: a saved value is stored as the
//! bytes of its JSON text, exactly as the request spelled it, and a read
//! returns the stored bytes as they are (see `ops/state.rs` for how this
//! agrees with gRPC and native clients). In a bulk read's JSON answer a
//! stored value that is not JSON text (saved through gRPC or natively) is
//! given as a JSON string of its UTF-8 text, or, when it is not UTF-8, as
//! that item's `error`.

use std::collections::HashMap;

use hyper::header::{HeaderValue, CONTENT_TYPE, ETAG, IF_MATCH};
use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::state::{self, Concurrency, Delete, Operation, Write};
use crate::session::Caller;

/// The path prefix of the state API.
pub const PREFIX: &str = "/v1.0/state/";

/// Serves one request under [`PREFIX`].
pub async fn serve(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let method = req.method().clone();
    let segments = request::segments(req.uri().path(), PREFIX)?;
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    let (parts, body) = request::read(req).await?;
    let query = request::query(&parts)?;
    let metadata = request::metadata(&query);
    match (&method, segments.as_slice()) {
        (&Method::POST, [store]) => {
            let client = request::client(caller, &parts.headers, state::SAVE).await?;
            let items: Vec<Item> = request::json(&body)?;
            let writes = items
                .into_iter()
                .map(|i| i.into_write(&metadata))
                .collect::<Result<Vec<_>, _>>()?;
            state::save(&client, store, writes).await?;
            Ok(reply::nothing(StatusCode::NO_CONTENT))
        }
        (&Method::POST, [store, "bulk"]) => {
            let client = request::client(caller, &parts.headers, state::BULK_GET).await?;
            let mut bulk: BulkRequest = request::json(&body)?;
            state::merge(&mut bulk.metadata, &metadata);
            let found = state::bulk_get(&client, store, bulk.keys, &bulk.metadata).await?;
            let items: Vec<BulkItem> = found.into_iter().map(BulkItem::new).collect();
            Ok(reply::json(StatusCode::OK, &items))
        }
        (&Method::POST, [store, "transaction"]) => {
            let client = request::client(caller, &parts.headers, state::TRANSACTION).await?;
            let mut tx: Transaction = request::json(&body)?;
            state::merge(&mut tx.metadata, &metadata);
            let operations = tx
                .operations
                .into_iter()
                .map(|op| {
                    let write = op.request.into_write(&HashMap::new())?;
                    Operation::new(&op.operation, write)
                })
                .collect::<Result<Vec<_>, _>>()?;
            state::transact(&client, store, operations, &tx.metadata).await?;
            Ok(reply::nothing(StatusCode::NO_CONTENT))
        }
        (&Method::GET, [store, key]) => {
            let client = request::client(caller, &parts.headers, state::GET).await?;
            state::check_http_consistency(request::param(&query, "consistency"))?;
            match state::get(&client, store, key, &metadata).await? {
                // Dapr answers a missing key 204 without a body.
                None => Ok(reply::nothing(StatusCode::NO_CONTENT)),
                Some(entry) => {
                    let mut response = reply::bytes(StatusCode::OK, entry.value);
                    let headers = response.headers_mut();
                    // Dapr labels a state value JSON whatever it holds.
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                    if let Ok(etag) = HeaderValue::from_str(&entry.etag) {
                        headers.insert(ETAG, etag);
                    }
                    Ok(response)
                }
            }
        }
        (&Method::DELETE, [store, key]) => {
            let client = request::client(caller, &parts.headers, state::DELETE).await?;
            state::check_http_consistency(request::param(&query, "consistency"))?;
            let etag = match parts.headers.get(IF_MATCH) {
                None => None,
                Some(v) => Some(
                    v.to_str()
                        .map_err(|_| DaprError::malformed("the If-Match header is not text"))?
                        .to_owned(),
                ),
            };
            let d = Delete {
                key: (*key).to_owned(),
                etag,
                concurrency: Concurrency::from_http(request::param(&query, "concurrency"))?,
                metadata,
            };
            state::delete(&client, store, d).await?;
            Ok(reply::nothing(StatusCode::NO_CONTENT))
        }
        _ => Err(DaprError::unimplemented(format!(
            "{method} {PREFIX}{} is not part of Dapr's state API as mecha serves it",
            segments.join("/")
        ))),
    }
}

/// Options of an HTTP state item.
#[derive(Debug, Default, Deserialize)]
struct Options {
    #[serde(default)]
    concurrency: String,
    #[serde(default)]
    consistency: String,
}

/// One item of a save, or the request of a transaction operation.
#[derive(Debug, Deserialize)]
struct Item {
    #[serde(default)]
    key: String,
    #[serde(default)]
    value: Option<Box<RawValue>>,
    #[serde(default)]
    etag: Option<String>,
    #[serde(default)]
    metadata: HashMap<String, String>,
    #[serde(default)]
    options: Options,
}

impl Item {
    fn into_write(mut self, query_metadata: &HashMap<String, String>) -> Result<Write, DaprError> {
        state::check_http_consistency(&self.options.consistency)?;
        state::merge(&mut self.metadata, query_metadata);
        // A missing or null value is stored as JSON's null, the text Dapr
        // stores for it.
        let value = self
            .value
            .map_or_else(|| b"null".to_vec(), |v| v.get().as_bytes().to_vec());
        Ok(Write {
            key: self.key,
            value,
            etag: self.etag,
            concurrency: Concurrency::from_http(&self.options.concurrency)?,
            metadata: self.metadata,
        })
    }
}

/// A bulk read's body.
#[derive(Debug, Deserialize)]
struct BulkRequest {
    #[serde(default)]
    keys: Vec<String>,
    // Dapr's `parallelism` is accepted and ignored: mecha reads the keys
    // in one request.
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// One answer of a bulk read.
#[derive(Debug, Serialize)]
struct BulkItem {
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl BulkItem {
    fn new((key, entry): (String, Option<mecha_client::StateEntry>)) -> Self {
        let Some(entry) = entry else {
            return Self {
                key,
                data: None,
                etag: None,
                error: None,
            };
        };
        match as_json(entry.value) {
            Ok(data) => Self {
                key,
                data: Some(data),
                etag: Some(entry.etag),
                error: None,
            },
            Err(error) => Self {
                key,
                data: None,
                etag: Some(entry.etag),
                error: Some(error),
            },
        }
    }
}

/// Stored bytes as a JSON value: themselves when they are JSON text, else
/// a JSON string of their UTF-8 text.
fn as_json(value: Vec<u8>) -> Result<Box<RawValue>, String> {
    let text = String::from_utf8(value).map_err(|_| {
        "the stored value is neither JSON nor UTF-8 text; read it with GET or through gRPC"
            .to_string()
    })?;
    let is_json = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
    let json = if is_json {
        text
    } else {
        serde_json::to_string(&text).map_err(|e| e.to_string())?
    };
    RawValue::from_string(json).map_err(|e| e.to_string())
}

/// A transaction's body.
#[derive(Debug, Deserialize)]
struct Transaction {
    #[serde(default)]
    operations: Vec<TxOperation>,
    #[serde(default)]
    metadata: HashMap<String, String>,
}

/// One operation of a transaction.
#[derive(Debug, Deserialize)]
struct TxOperation {
    operation: String,
    request: Item,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_bytes_become_json_values() {
        assert_eq!(
            as_json(br#"{"a": 1}"#.to_vec()).unwrap().get(),
            r#"{"a": 1}"#
        );
        assert_eq!(as_json(b"plain".to_vec()).unwrap().get(), r#""plain""#);
        assert!(as_json(vec![0xff, 0xfe]).is_err());
    }

    #[test]
    fn a_saved_value_keeps_its_json_text() {
        let item: Item = serde_json::from_str(r#"{"key": "k", "value": {"b": [1, 2]}}"#).unwrap();
        let w = item.into_write(&HashMap::new()).unwrap();
        assert_eq!(w.value, br#"{"b": [1, 2]}"#);
        let item: Item = serde_json::from_str(r#"{"key": "k"}"#).unwrap();
        assert_eq!(item.into_write(&HashMap::new()).unwrap().value, b"null");
    }
}
