//! The secrets methods of Dapr's gRPC service, through
//! [`crate::ops::secrets`].

use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::secrets;

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// GetSecret: the secret's (key, value) pairs.
pub async fn get(request: tonic::Request<v1::GetSecretRequest>) -> Answer<v1::GetSecretResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let secret = secrets::get(&client, &req.store_name, &req.key, &req.metadata).await?;
    Ok(tonic::Response::new(v1::GetSecretResponse {
        data: secret.into_iter().collect(),
    }))
}

/// GetBulkSecret: every secret the caller may see, by name.
pub async fn get_bulk(
    request: tonic::Request<v1::GetBulkSecretRequest>,
) -> Answer<v1::GetBulkSecretResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let all = secrets::get_bulk(&client, &req.store_name, &req.metadata).await?;
    let data = all
        .into_iter()
        .map(|(name, secret)| {
            let secrets = secret.into_iter().collect();
            (name, v1::SecretResponse { secrets })
        })
        .collect();
    Ok(tonic::Response::new(v1::GetBulkSecretResponse { data }))
}
