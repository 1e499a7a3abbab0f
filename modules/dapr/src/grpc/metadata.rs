//! The metadata methods of Dapr's gRPC service, through
//! [`crate::ops::metadata`].

use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::metadata;

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// GetMetadata: the app id, the components and the runtime's version.
pub async fn get(
    request: tonic::Request<v1::GetMetadataRequest>,
) -> Answer<v1::GetMetadataResponse> {
    let client = client_for(&request).await?;
    let m = metadata::get(&client).await?;
    #[allow(deprecated)]
    let response = v1::GetMetadataResponse {
        id: m.id,
        runtime_version: m.runtime_version,
        registered_components: m
            .components
            .into_iter()
            .map(|c| v1::RegisteredComponents {
                name: c.name,
                r#type: c.kind,
                version: c.version,
                capabilities: c.capabilities,
            })
            .collect(),
        extended_metadata: m.extended.into_iter().collect(),
        ..Default::default()
    };
    Ok(tonic::Response::new(response))
}
