//! Dapr's service invocation over gRPC: InvokeService, served through
//! `ops::invoke` on the caller's session.

use dapr::dapr::proto::common::v1 as common;
use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::invoke::{self, Call};

/// InvokeService. The payload is the `Any`'s bytes; its type URL, the
/// `HTTPExtension`'s verb and query string and the caller's `traceparent`
/// travel with the call.
pub async fn invoke_service(
    request: tonic::Request<v1::InvokeServiceRequest>,
) -> Result<tonic::Response<common::InvokeResponse>, tonic::Status> {
    let client = client_for(&request).await?;
    let trace_parent = request
        .metadata()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let req = request.into_inner();
    let message = req.message.unwrap_or_default();
    let (verb, query) = match message.http_extension {
        Some(ext) => {
            let verb = invoke::verb_name(ext.verb).ok_or_else(|| {
                tonic::Status::invalid_argument(format!("unknown HTTP verb {}", ext.verb))
            })?;
            (verb.to_string(), ext.querystring)
        }
        None => (String::new(), String::new()),
    };
    let data = message.data.unwrap_or_default();
    let call = Call {
        app_id: req.id,
        method: message.method,
        data: data.value,
        content_type: message.content_type,
        verb,
        query,
        type_url: data.type_url,
        metadata: Vec::new(),
        trace_parent,
    };
    let answer = invoke::invoke(&client, call)
        .await
        .map_err(tonic::Status::from)?;
    Ok(tonic::Response::new(common::InvokeResponse {
        data: Some(prost_types::Any {
            type_url: answer.type_url,
            value: answer.data,
        }),
        content_type: answer.content_type,
    }))
}
