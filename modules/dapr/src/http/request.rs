//! Reading an HTTP request of Dapr's API: its body (bounded), its path's
//! segments and query parameters (percent-decoded), its `metadata.*`
//! parameters, its JSON, and the caller's native session.

use std::collections::HashMap;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::header::HeaderMap;
use hyper::http::request::Parts;
use hyper::Request;
use mecha_client::Client;

use crate::ops::dapr_error::{from_status, Api, DaprError};
use crate::session::Caller;

/// The largest request body the personality reads. A connection's body is
/// held in memory while it is translated, so it is bounded; 4 MiB holds
/// any state value a mecha store keeps comfortably, and a larger body is
/// refused before it is read whole.
pub const MAX_BODY: usize = 4 << 20;

pub use crate::session::TOKEN_HEADER;

/// The prefix of query parameters that are request metadata.
const METADATA_PREFIX: &str = "metadata.";

/// The request's head and its whole body, refused past [`MAX_BODY`].
pub async fn read(req: Request<hyper::body::Incoming>) -> Result<(Parts, Bytes), DaprError> {
    let (parts, body) = req.into_parts();
    let collected = Limited::new(body, MAX_BODY).collect().await.map_err(|e| {
        // Over the limit is 413, as Dapr's HTTP server answers a body over
        // its maximum request size; a body that could not be read is 400.
        let http = if e.is::<http_body_util::LengthLimitError>() {
            413
        } else {
            400
        };
        DaprError::new(
            tonic::Code::InvalidArgument,
            http,
            "ERR_BODY_READ",
            format!("failed to read request body (at most {MAX_BODY} bytes): {e}"),
        )
    })?;
    Ok((parts, collected.to_bytes()))
}

/// The native client serving this request, as its caller's tenant.
pub async fn client(caller: &Caller, headers: &HeaderMap, api: Api) -> Result<Client, DaprError> {
    let token = headers.get(TOKEN_HEADER).and_then(|v| v.to_str().ok());
    caller
        .client(token)
        .await
        .map_err(|r| from_status(api, r.status, r.message))
}

/// The body as JSON of type `T`; Dapr's malformed-request error otherwise.
pub fn json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, DaprError> {
    serde_json::from_slice(body).map_err(|e| {
        DaprError::new(
            tonic::Code::InvalidArgument,
            400,
            "ERR_MALFORMED_REQUEST",
            format!("failed deserializing HTTP body: {e}"),
        )
    })
}

/// The percent-decoded segments of `path` after `prefix` (which ends with
/// a `/`).
pub fn segments(path: &str, prefix: &str) -> Result<Vec<String>, DaprError> {
    path.strip_prefix(prefix)
        .unwrap_or_default()
        .split('/')
        .map(|s| decode(s, false))
        .collect()
}

/// The query's parameters, percent-decoded, in order.
pub fn query(parts: &Parts) -> Result<Vec<(String, String)>, DaprError> {
    let Some(q) = parts.uri.query() else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(k, true)?, decode(v, true)?))
        })
        .collect()
}

/// The first value of parameter `name`, or "".
pub fn param<'q>(query: &'q [(String, String)], name: &str) -> &'q str {
    query
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The `metadata.<key>` parameters, by key (the first of a repeated one).
pub fn metadata(query: &[(String, String)]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in query {
        if let Some(key) = k.strip_prefix(METADATA_PREFIX) {
            out.entry(key.to_owned()).or_insert_with(|| v.clone());
        }
    }
    out
}

/// Percent-decodes `s` (and `+` as a space in a query), refusing what is
/// not UTF-8 or a broken escape.
fn decode(s: &str, plus_is_space: bool) -> Result<String, DaprError> {
    let bad = || DaprError::malformed(format!("malformed percent-encoding in {s:?}"));
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hi = bytes.next().and_then(hex).ok_or_else(bad)?;
                let lo = bytes.next().and_then(hex).ok_or_else(bad)?;
                out.push(hi << 4 | lo);
            }
            b'+' if plus_is_space => out.push(b' '),
            other => out.push(other),
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        let s = segments("/v1.0/state/store/a%2Fb%20c", "/v1.0/state/").unwrap();
        assert_eq!(s, ["store", "a/b c"]);
        assert!(segments("/v1.0/state/s/%zz", "/v1.0/state/").is_err());
        assert!(segments("/v1.0/state/s/%ff", "/v1.0/state/").is_err());
    }

    #[test]
    fn metadata_parameters_are_picked_out() {
        let q = vec![
            ("metadata.ttlInSeconds".to_string(), "5".to_string()),
            ("key".to_string(), "a".to_string()),
            ("metadata.ttlInSeconds".to_string(), "9".to_string()),
        ];
        let m = metadata(&q);
        assert_eq!(m.len(), 1);
        assert_eq!(m["ttlInSeconds"], "5");
        assert_eq!(param(&q, "key"), "a");
        assert_eq!(param(&q, "nope"), "");
    }
}
