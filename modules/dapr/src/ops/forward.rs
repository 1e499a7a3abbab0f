//! Forwarding a native call (INVOKE_CALL) to a Dapr-style app, as Dapr's
//! sidecar calls its app: Dapr's `AppCallback.OnInvoke` over gRPC, or the
//! call's verb, path and query string over plain HTTP. Each forwarder holds
//! a bounded number of calls, each bounded in time and in answer size.

use std::sync::Arc;
use std::time::Duration;

use mecha_abi::Status;
use mecha_client::{HandlerResult, InvokeCall, InvokeReply};

use super::invoke::{self, HTTP_STATUS, QUERY, TYPE_URL, VERB};

/// The most calls forwarded to one callee at once; one more is answered
/// RESOURCE_EXHAUSTED at once, so a callee that hangs holds a bounded
/// number of connections and tasks.
pub const MAX_CALLS_PER_CALLEE: usize = 64;
/// How long a forwarded call may take. The caller's own deadline (the
/// invoke module's attempt timeout) is usually shorter: its answer then
/// goes nowhere, and this bound frees the forwarding slot.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer read from a callee, below the native frame limit.
pub const MAX_ANSWER: usize = 4 << 20;
/// The largest response head read from an HTTP callee.
const MAX_HEAD: usize = 64 << 10;
/// How much of an HTTP callee's error body is quoted in the error.
const QUOTED_ERROR: usize = 512;

/// How a callee is reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// Dapr's AppCallback gRPC service at `host:port`.
    Grpc(String),
    /// Plain HTTP at `host:port`.
    Http(String),
}

/// Forwards calls to one callee, at most [`MAX_CALLS_PER_CALLEE`] at once.
pub struct Forwarder {
    target: Target,
    slots: Arc<tokio::sync::Semaphore>,
}

enum Target {
    Grpc(
        dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient<
            tonic::transport::Channel,
        >,
    ),
    Http(String),
}

impl Forwarder {
    /// A forwarder to `endpoint`; no connection is made yet.
    pub fn new(endpoint: &Endpoint) -> Result<Self, String> {
        let target = match endpoint {
            Endpoint::Grpc(addr) => {
                // A lazy channel connects at the first call and reconnects
                // by itself, so a callee that starts after mechad, or
                // restarts, is reached once it listens.
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .map_err(|e| format!("grpc://{addr}: {e}"))?
                    .connect_timeout(Duration::from_secs(5))
                    .connect_lazy();
                Target::Grpc(
                    dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient::new(
                        channel,
                    )
                    .max_decoding_message_size(MAX_ANSWER),
                )
            }
            Endpoint::Http(addr) => Target::Http(addr.clone()),
        };
        Ok(Self {
            target,
            slots: Arc::new(tokio::sync::Semaphore::new(MAX_CALLS_PER_CALLEE)),
        })
    }

    /// Forwards `call` and returns the app's answer as the native reply.
    pub async fn forward(&self, call: InvokeCall) -> HandlerResult {
        let Ok(_slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return Err((
                Status::ResourceExhausted,
                format!(
                    "app {} has {MAX_CALLS_PER_CALLEE} calls in flight already",
                    call.app_id
                ),
            ));
        };
        let app_id = call.app_id.clone();
        let forwarded = match &self.target {
            Target::Grpc(client) => {
                tokio::time::timeout(CALL_TIMEOUT, grpc(client.clone(), call)).await
            }
            Target::Http(addr) => tokio::time::timeout(CALL_TIMEOUT, http(addr, call)).await,
        };
        forwarded.unwrap_or_else(|_| {
            Err((
                Status::DeadlineExceeded,
                format!("app {app_id} did not answer within {CALL_TIMEOUT:?}"),
            ))
        })
    }
}

/// The metadata value of `name` in a call.
fn value<'a>(call: &'a InvokeCall, name: &str) -> Option<&'a str> {
    call.metadata
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// True for the metadata the personality itself reads rather than passes
/// on as headers.
fn is_own(name: &str) -> bool {
    matches!(name, VERB | QUERY | TYPE_URL | HTTP_STATUS)
}

/// Headers that frame the request or describe the connection: the
/// personality sets them itself, and one taken from a caller's metadata
/// could make the callee read the request differently (a second length, a
/// chunked body), so they are never passed on.
const FRAMING: [&str; 12] = [
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "traceparent",
];

/// True for a metadata entry that may travel to a callee as a header:
/// neither the personality's own nor framing, nor gRPC's reserved `grpc-*`.
fn is_passed(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !is_own(name)
        && is_token(name)
        && !FRAMING.contains(&lower.as_str())
        && !lower.starts_with("grpc-")
}

/// Forwards a call to Dapr's `AppCallback.OnInvoke`.
async fn grpc(
    mut client: dapr::dapr::proto::runtime::v1::app_callback_client::AppCallbackClient<
        tonic::transport::Channel,
    >,
    call: InvokeCall,
) -> HandlerResult {
    use dapr::dapr::proto::common::v1 as common;
    let http_extension = value(&call, VERB).map(|verb| common::HttpExtension {
        verb: invoke::verb_number(verb),
        querystring: value(&call, QUERY).unwrap_or_default().to_string(),
    });
    let message = common::InvokeRequest {
        method: call.method.clone(),
        data: Some(prost_types::Any {
            type_url: value(&call, TYPE_URL).unwrap_or_default().to_string(),
            value: call.data.clone(),
        }),
        content_type: call.content_type.clone(),
        http_extension,
    };
    let mut request = tonic::Request::new(message);
    for (name, v) in call.metadata.iter().filter(|(n, _)| is_passed(n)) {
        let key = tonic::metadata::MetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes());
        if let (Ok(key), Ok(v)) = (key, v.parse()) {
            request.metadata_mut().insert(key, v);
        }
    }
    if let Ok(v) = call.trace_parent.parse() {
        request.metadata_mut().insert("traceparent", v);
    }
    request.set_timeout(CALL_TIMEOUT);
    match client.on_invoke(request).await {
        Ok(response) => {
            let response = response.into_inner();
            let data = response.data.unwrap_or_default();
            let mut metadata = Vec::new();
            if !data.type_url.is_empty() {
                metadata.push((TYPE_URL.to_string(), data.type_url));
            }
            Ok(InvokeReply {
                data: data.value,
                content_type: response.content_type,
                metadata,
            })
        }
        Err(s) => Err((
            status_of_grpc(s.code()),
            format!("app {}: {}", call.app_id, s.message()),
        )),
    }
}

/// The native status of a callee's gRPC code.
fn status_of_grpc(code: tonic::Code) -> Status {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition => {
            Status::InvalidArgument
        }
        Code::NotFound => Status::NotFound,
        Code::PermissionDenied | Code::Unauthenticated => Status::PermissionDenied,
        Code::ResourceExhausted => Status::ResourceExhausted,
        Code::Unavailable => Status::Unavailable,
        Code::DeadlineExceeded => Status::DeadlineExceeded,
        Code::Unimplemented => Status::Unsupported,
        Code::Aborted => Status::EtagMismatch,
        _ => Status::Internal,
    }
}

/// True for a header name HTTP allows (a token).
fn is_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Forwards a call to an app's HTTP port: the call's verb (POST when the
/// caller gave none), `/{method}` with its query string, its content type,
/// metadata as headers and its trace context. A 2xx answer is the reply
/// (with its status as `http.status`); another status is the native status
/// closest to it (`invoke::status_of_http`), quoting the start of the body.
async fn http(addr: &str, call: InvokeCall) -> HandlerResult {
    let unavailable = |e: &dyn std::fmt::Display| {
        (
            Status::Unavailable,
            format!("app {} at http://{addr}: {e}", call.app_id),
        )
    };
    let verb = value(&call, VERB).unwrap_or("POST");
    let mut target = format!("/{}", call.method.trim_start_matches('/'));
    if let Some(q) = value(&call, QUERY).filter(|q| !q.is_empty()) {
        target.push('?');
        target.push_str(q);
    }
    let mut headers: Vec<(&str, &str)> = call
        .metadata
        .iter()
        .filter(|(n, _)| is_passed(n))
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    if !call.content_type.is_empty() {
        headers.push(("Content-Type", &call.content_type));
    }
    if !call.trace_parent.is_empty() {
        headers.push(("traceparent", &call.trace_parent));
    }
    headers.push(("Connection", "close"));
    let request = mecha_http::request(verb, &target, addr, &headers, &call.data)
        .map_err(|e| (Status::InvalidArgument, format!("app {}: {e}", call.app_id)))?;
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| unavailable(&e))?;
    let mut conn = mecha_http::Conn::new(stream);
    conn.send(&request).await.map_err(|e| unavailable(&e))?;
    let head = conn
        .response_head(MAX_HEAD)
        .await
        .map_err(|e| unavailable(&e))?;
    let body = conn
        .body(&head, MAX_ANSWER)
        .await
        .map_err(|e| unavailable(&e))?;
    if !(200..300).contains(&head.status) {
        let quoted = String::from_utf8_lossy(&body[..body.len().min(QUOTED_ERROR)]).into_owned();
        return Err((
            invoke::status_of_http(head.status),
            format!(
                "app {} answered HTTP {}: {quoted}",
                call.app_id, head.status
            ),
        ));
    }
    let content_type = head
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Ok(InvokeReply {
        data: body,
        content_type,
        metadata: vec![(HTTP_STATUS.to_string(), head.status.to_string())],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_and_reserved_headers_are_never_passed_on() {
        for name in [
            "Transfer-Encoding",
            "content-length",
            "Host",
            "grpc-timeout",
            VERB,
            "a b",
        ] {
            assert!(!is_passed(name), "{name}");
        }
        assert!(is_passed("x-user"));
    }

    #[test]
    fn header_names_must_be_tokens() {
        assert!(is_token("x-user"));
        assert!(!is_token("x user"));
        assert!(!is_token("a:b"));
        assert!(!is_token(""));
    }

    #[test]
    fn grpc_codes_map_back() {
        assert_eq!(status_of_grpc(tonic::Code::NotFound), Status::NotFound);
        assert_eq!(status_of_grpc(tonic::Code::Unknown), Status::Internal);
        assert_eq!(
            status_of_grpc(tonic::Code::Unavailable),
            Status::Unavailable
        );
    }
}
