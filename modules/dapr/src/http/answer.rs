//! What every HTTP route of the personality needs: the caller's native
//! client, a request's body read within a bound, its `metadata.*` query
//! parameters, and answers in Dapr's form (errors as `{"errorCode",
//! "message"}` JSON).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use mecha_abi::Status;

use super::Body;
use crate::ops::Failure;
use crate::session::Caller;

/// The largest request body the personality reads, Dapr's default
/// (`dapr-http-max-request-size`, 4 MB). A longer one is refused (413)
/// before it is buffered whole.
pub const MAX_BODY: usize = 4 << 20;

/// The header carrying Dapr's API token.
pub const TOKEN_HEADER: &str = "dapr-api-token";

/// The native client serving `req` as its caller's tenant, or the answer
/// refusing it.
pub async fn client_of<B>(
    caller: &Caller,
    req: &Request<B>,
) -> Result<mecha_client::Client, Failure> {
    let token = req
        .headers()
        .get(TOKEN_HEADER)
        .and_then(|v| v.to_str().ok());
    caller.client(token).await.map_err(|r| {
        let http = match r.status {
            Status::PermissionDenied => 401,
            Status::ResourceExhausted => 429,
            Status::InvalidArgument => 400,
            _ => 503,
        };
        Failure::new(r.status, http, "ERR_CALLER_REFUSED", r.message)
    })
}

/// The body of `req`, at most [`MAX_BODY`] bytes.
pub async fn body(req: Request<hyper::body::Incoming>) -> Result<Vec<u8>, Failure> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes().to_vec()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Failure::new(
            Status::ResourceExhausted,
            413,
            "ERR_BODY_TOO_LARGE",
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(Failure::invalid(
            "ERR_MALFORMED_REQUEST",
            format!("reading the request body: {e}"),
        )),
    }
}

/// The request's `Content-Type`, empty when it has none.
pub fn content_type<B>(req: &Request<B>) -> String {
    req.headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// The query parameters named `metadata.<name>`, as `(name, value)`
/// pairs, decoded; Dapr's way of passing metadata over HTTP.
pub fn query_metadata(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = decode(name);
            let name = name.strip_prefix("metadata.")?;
            (!name.is_empty()).then(|| (name.to_string(), decode(value)))
        })
        .collect()
}

/// Percent-decodes a URL component (`+` is a space, as in forms); a `%`
/// not followed by two hex digits stays as it is.
pub fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| {
                    std::str::from_utf8(h)
                        .ok()
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                });
                if let Some(b) = hex {
                    out.push(b);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Dapr's error answer for `f`.
pub fn failure(f: &Failure) -> Response<Body> {
    let body = serde_json::json!({ "errorCode": f.code, "message": f.message });
    json(status(f.http), &body)
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    bytes(status, "application/json", value.to_string().into_bytes())
}

/// An answer with a body of `content_type` (none when empty).
pub fn bytes(status: StatusCode, content_type: &str, data: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(data)));
    *response.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        if !content_type.is_empty() {
            response.headers_mut().insert(CONTENT_TYPE, v);
        }
    }
    response
}

/// The status code `code`, or 500 for a number that is not one.
pub fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_comes_from_prefixed_query_parameters() {
        let md = query_metadata(Some(
            "metadata.rawPayload=true&x=1&metadata.a%2Eb=c+d%21&metadata.=z",
        ));
        assert_eq!(
            md,
            vec![
                ("rawPayload".into(), "true".into()),
                ("a.b".into(), "c d!".into())
            ]
        );
        assert!(query_metadata(None).is_empty());
    }

    #[test]
    fn decoding_keeps_what_is_not_an_escape() {
        assert_eq!(decode("a%zz%4"), "a%zz%4");
        assert_eq!(decode("%e2%82%ac"), "€");
    }

    #[test]
    fn failures_are_daprs_json() {
        let f = Failure::invalid("ERR_X", "bad");
        let response = failure(&f);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
    }
}
