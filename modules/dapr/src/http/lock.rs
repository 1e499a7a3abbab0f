//! Dapr's HTTP lock API (`/v1.0-alpha1/lock/{store}` and
//! `/v1.0-alpha1/unlock/{store}`) through [`crate::ops::lock`]. Bodies
//! and answers are Dapr's protobuf messages in JSON (`resourceId`,
//! `lockOwner`, `expiryInSeconds`; `{"success": …}`, `{"status": n}`).

use hyper::{Method, Request, Response, StatusCode};
use serde::{Deserialize, Serialize};

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::lock;
use crate::session::Caller;

/// The path prefix of try-lock.
pub const LOCK_PREFIX: &str = "/v1.0-alpha1/lock/";
/// The path prefix of unlock.
pub const UNLOCK_PREFIX: &str = "/v1.0-alpha1/unlock/";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LockRequest {
    #[serde(default)]
    resource_id: String,
    #[serde(default)]
    lock_owner: String,
    #[serde(default)]
    expiry_in_seconds: i32,
}

#[derive(Serialize)]
struct LockAnswer {
    success: bool,
}

#[derive(Serialize)]
struct UnlockAnswer {
    status: i32,
}

/// Serves one request under either prefix.
pub async fn serve(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let path = req.uri().path().to_owned();
    if req.method() != Method::POST {
        return Err(DaprError::unimplemented(format!(
            "{} {path}: the lock API takes POST",
            req.method()
        )));
    }
    let (unlocking, prefix) = if path.starts_with(UNLOCK_PREFIX) {
        (true, UNLOCK_PREFIX)
    } else {
        (false, LOCK_PREFIX)
    };
    let segments = request::segments(&path, prefix)?;
    let [store] = segments.as_slice() else {
        return Err(DaprError::unimplemented(format!(
            "POST {path} is not part of Dapr's lock API"
        )));
    };
    let (parts, body) = request::read(req).await?;
    let body: LockRequest = request::json(&body)?;
    if unlocking {
        let client = request::client(caller, &parts.headers, lock::UNLOCK).await?;
        let status = lock::unlock(&client, store, &body.resource_id, &body.lock_owner).await?;
        Ok(reply::json(StatusCode::OK, &UnlockAnswer { status }))
    } else {
        let client = request::client(caller, &parts.headers, lock::TRY_LOCK).await?;
        let success = lock::try_lock(
            &client,
            store,
            &body.resource_id,
            &body.lock_owner,
            body.expiry_in_seconds,
        )
        .await?;
        Ok(reply::json(StatusCode::OK, &LockAnswer { success }))
    }
}
