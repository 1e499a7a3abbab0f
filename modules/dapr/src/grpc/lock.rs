//! The lock methods of Dapr's gRPC service (TryLockAlpha1, UnlockAlpha1),
//! through [`crate::ops::lock`].

use dapr::dapr::proto::runtime::v1;

use super::client_for;
use crate::ops::lock;

type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

/// TryLockAlpha1: whether the lock was granted.
pub async fn try_lock(request: tonic::Request<v1::TryLockRequest>) -> Answer<v1::TryLockResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let success = lock::try_lock(
        &client,
        &req.store_name,
        &req.resource_id,
        &req.lock_owner,
        req.expiry_in_seconds,
    )
    .await?;
    Ok(tonic::Response::new(v1::TryLockResponse { success }))
}

/// UnlockAlpha1: Dapr's unlock status.
pub async fn unlock(request: tonic::Request<v1::UnlockRequest>) -> Answer<v1::UnlockResponse> {
    let client = client_for(&request).await?;
    let req = request.into_inner();
    let status = lock::unlock(&client, &req.store_name, &req.resource_id, &req.lock_owner).await?;
    Ok(tonic::Response::new(v1::UnlockResponse { status }))
}
