//! Dapr's output bindings over gRPC: InvokeBinding, served through
//! `ops::bindings` on the caller's session.

use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::bindings;

/// InvokeBinding.
pub async fn invoke_binding(
    request: tonic::Request<v1::InvokeBindingRequest>,
) -> Result<tonic::Response<v1::InvokeBindingResponse>, tonic::Status> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let output = bindings::invoke(
        &client,
        &req.name,
        &req.operation,
        req.data,
        req.metadata.into_iter().collect(),
    )
    .await
    .map_err(tonic::Status::from)?;
    Ok(tonic::Response::new(v1::InvokeBindingResponse {
        data: output.data,
        metadata: output.metadata.into_iter().collect(),
    }))
}
