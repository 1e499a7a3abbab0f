//! Dapr's service invocation on mecha's: a call of `{app}`'s method becomes
//! a native INVOKE of app id `{app}` (SPEC §7.8), whoever serves it — a
//! mecha-native app registered with a native client, or a Dapr-style app
//! the personality serves on its behalf (`ops::callee`).
//!
//! Dapr's HTTP semantics travel as metadata of the native call, so that a
//! callee reached over HTTP gets the verb and query string the caller used
//! (`HTTPExtension` in Dapr's gRPC API, the request line in its HTTP API),
//! and a protobuf `Any`'s type URL survives the trip to a gRPC callee.

use mecha_abi::Status;
use mecha_client::{Client, InvokeOptions};

use super::dapr_error::{self, Api, DaprError};

/// Metadata name of the HTTP verb of a call (`GET`, `POST`, …).
pub const VERB: &str = "http.verb";
/// Metadata name of the HTTP query string of a call, encoded, without `?`.
pub const QUERY: &str = "http.querystring";
/// Metadata name of the HTTP status a callee reached over HTTP answered.
pub const HTTP_STATUS: &str = "http.status";
/// Metadata name of the type URL of a protobuf `Any` payload.
pub const TYPE_URL: &str = "dapr.typeUrl";
/// Dapr's error code for a failed invocation.
pub const ERR_INVOKE: &str = "ERR_DIRECT_INVOKE";
/// The most metadata entries (headers) one call carries to its callee.
pub const MAX_METADATA: usize = 64;

/// HTTP verbs in the order of Dapr's `HTTPExtension.Verb` enum (0 = none).
const VERBS: [&str; 10] = [
    "", "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The verb of Dapr's `HTTPExtension.Verb` value; `None` for an unknown one.
pub fn verb_name(verb: i32) -> Option<&'static str> {
    usize::try_from(verb)
        .ok()
        .and_then(|i| VERBS.get(i).copied())
}

/// Dapr's `HTTPExtension.Verb` value of `name` (0 when it has none).
pub fn verb_number(name: &str) -> i32 {
    VERBS
        .iter()
        .position(|v| !v.is_empty() && v.eq_ignore_ascii_case(name))
        .and_then(|i| i32::try_from(i).ok())
        .unwrap_or(0)
}

/// A call as Dapr describes it, whichever protocol it came in on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Call {
    /// The callee's app id.
    pub app_id: String,
    /// The method (for HTTP callees, the path after the app's root).
    pub method: String,
    /// The body.
    pub data: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// The HTTP verb, empty when the caller gave none (a gRPC call without
    /// `HTTPExtension`).
    pub verb: String,
    /// The encoded query string, empty for none.
    pub query: String,
    /// The protobuf type URL of the body, empty for plain bytes.
    pub type_url: String,
    /// Further name/value pairs for the callee (the caller's headers).
    pub metadata: Vec<(String, String)>,
    /// The caller's W3C trace context, empty for none.
    pub trace_parent: String,
}

/// The callee's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answer {
    /// The body.
    pub data: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// The protobuf type URL of the body, empty for plain bytes.
    pub type_url: String,
    /// The HTTP status a callee reached over HTTP gave, else 200.
    pub http_status: u16,
    /// The callee's other metadata.
    pub metadata: Vec<(String, String)>,
}

/// Calls the method on the caller's session.
pub async fn invoke(client: &Client, call: Call) -> Result<Answer, DaprError> {
    if call.app_id.is_empty() {
        return Err(DaprError::invalid(ERR_INVOKE, "the app id is empty"));
    }
    if call.method.is_empty() {
        return Err(DaprError::invalid(ERR_INVOKE, "the method is empty"));
    }
    if call.metadata.len() > MAX_METADATA {
        return Err(DaprError::invalid(
            ERR_INVOKE,
            format!("a call carries at most {MAX_METADATA} metadata entries (headers)"),
        ));
    }
    let (app_id, method, data, options) = to_native(call);
    let reply = client
        .invoke(&app_id, &method, data, options)
        .await
        .map_err(|e| dapr_error::native(API, "invoke", e))?;
    Ok(answer_of(reply.data, reply.content_type, reply.metadata))
}

/// The native INVOKE of a call: app id, method, data and options.
pub fn to_native(call: Call) -> (String, String, Vec<u8>, InvokeOptions) {
    let mut metadata = call.metadata;
    metadata.retain(|(n, _)| n != VERB && n != QUERY && n != TYPE_URL);
    if !call.verb.is_empty() {
        metadata.push((VERB.into(), call.verb.to_ascii_uppercase()));
    }
    if !call.query.is_empty() {
        metadata.push((QUERY.into(), call.query));
    }
    if !call.type_url.is_empty() {
        metadata.push((TYPE_URL.into(), call.type_url));
    }
    let options = InvokeOptions {
        content_type: call.content_type,
        metadata,
        caller_app_id: String::new(),
        trace_parent: call.trace_parent,
    };
    (call.app_id, call.method, call.data, options)
}

/// The answer of a native reply: the HTTP status and type URL metadata
/// become fields, the rest stays metadata.
pub fn answer_of(data: Vec<u8>, content_type: String, metadata: Vec<(String, String)>) -> Answer {
    let mut answer = Answer {
        data,
        content_type,
        type_url: String::new(),
        http_status: 200,
        metadata: Vec::with_capacity(metadata.len()),
    };
    for (name, value) in metadata {
        match name.as_str() {
            HTTP_STATUS => {
                answer.http_status = value
                    .parse()
                    .ok()
                    .filter(|s| (200..300).contains(s))
                    .unwrap_or(200)
            }
            TYPE_URL => answer.type_url = value,
            _ => answer.metadata.push((name, value)),
        }
    }
    answer
}

/// Dapr's error codes of invocation: every failure is ERR_DIRECT_INVOKE,
/// with the HTTP status closest to the native status (an HTTP callee's own
/// error status comes back as the native status it maps to,
/// `status_of_http`).
pub const API: Api = Api {
    store_not_found: ERR_INVOKE,
    store_not_found_http: 404,
    failed: ERR_INVOKE,
};

/// The native status that stands for an HTTP callee's error status, so a
/// caller on either protocol gets back the status closest to the callee's.
pub fn status_of_http(code: u16) -> Status {
    match code {
        400 | 405 | 409 | 411..=415 | 422 => Status::InvalidArgument,
        401 | 403 => Status::PermissionDenied,
        404 => Status::NotFound,
        408 | 504 => Status::DeadlineExceeded,
        429 => Status::ResourceExhausted,
        501 => Status::Unsupported,
        502 | 503 => Status::Unavailable,
        _ => Status::Internal,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_follow_daprs_enum() {
        assert_eq!(verb_name(0), Some(""));
        assert_eq!(verb_name(3), Some("POST"));
        assert_eq!(verb_name(9), Some("PATCH"));
        assert_eq!(verb_name(10), None);
        assert_eq!(verb_name(-1), None);
        assert_eq!(verb_number("put"), 4);
        assert_eq!(verb_number(""), 0);
        assert_eq!(verb_number("BREW"), 0);
    }

    #[test]
    fn http_details_travel_as_metadata() {
        let call = Call {
            app_id: "orders".into(),
            method: "items/7".into(),
            data: b"{}".to_vec(),
            content_type: "application/json".into(),
            verb: "put".into(),
            query: "a=1&b=2".into(),
            type_url: String::new(),
            metadata: vec![
                (VERB.into(), "forged".into()),
                ("x-user".into(), "7".into()),
            ],
            trace_parent: String::new(),
        };
        let (app, method, data, options) = to_native(call);
        assert_eq!((app.as_str(), method.as_str()), ("orders", "items/7"));
        assert_eq!(data, b"{}");
        assert_eq!(options.content_type, "application/json");
        assert_eq!(
            options.metadata,
            vec![
                ("x-user".into(), "7".into()),
                (VERB.into(), "PUT".into()),
                (QUERY.into(), "a=1&b=2".into())
            ]
        );
    }

    #[test]
    fn answers_read_status_and_type_url() {
        let a = answer_of(
            b"x".to_vec(),
            "text/plain".into(),
            vec![
                (HTTP_STATUS.into(), "201".into()),
                (TYPE_URL.into(), "type.googleapis.com/x.Y".into()),
                ("k".into(), "v".into()),
            ],
        );
        assert_eq!(a.http_status, 201);
        assert_eq!(a.type_url, "type.googleapis.com/x.Y");
        assert_eq!(a.metadata, vec![("k".into(), "v".into())]);
        let odd = answer_of(
            Vec::new(),
            String::new(),
            vec![(HTTP_STATUS.into(), "500".into())],
        );
        assert_eq!(odd.http_status, 200);
    }

    #[test]
    fn http_errors_map_to_the_closest_status() {
        assert_eq!(status_of_http(404), Status::NotFound);
        assert_eq!(status_of_http(400), Status::InvalidArgument);
        assert_eq!(status_of_http(503), Status::Unavailable);
        assert_eq!(status_of_http(500), Status::Internal);
        let e = mecha_client::Error::Status {
            status: Status::NotFound,
            message: "no app".into(),
        };
        let f = dapr_error::native(API, "invoke", e);
        assert_eq!((f.http, f.code), (404, ERR_INVOKE));
    }
}
