//! Dapr's HTTP secrets API (`GET /v1.0/secrets/{store}/{name}` and
//! `…/{store}/bulk`) through [`crate::ops::secrets`]. As in Dapr, a secret
//! named `bulk` is reached only through gRPC.

use hyper::{Method, Request, Response, StatusCode};

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::secrets;
use crate::session::Caller;

/// The path prefix of the secrets API.
pub const PREFIX: &str = "/v1.0/secrets/";

/// Serves one request under [`PREFIX`].
pub async fn serve(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    let segments = request::segments(&path, PREFIX)?;
    let (parts, _) = request::read(req).await?;
    let query = request::query(&parts)?;
    let metadata = request::metadata(&query);
    match (&method, segments.as_slice()) {
        (&Method::GET, [store, name]) if name == "bulk" => {
            let client = request::client(caller, &parts.headers, secrets::GET).await?;
            let all = secrets::get_bulk(&client, store, &metadata).await?;
            Ok(reply::json(StatusCode::OK, &all))
        }
        (&Method::GET, [store, name]) => {
            let client = request::client(caller, &parts.headers, secrets::GET).await?;
            let secret = secrets::get(&client, store, name, &metadata).await?;
            Ok(reply::json(StatusCode::OK, &secret))
        }
        _ => Err(DaprError::unimplemented(format!(
            "{method} {path} is not part of Dapr's secrets API"
        ))),
    }
}
