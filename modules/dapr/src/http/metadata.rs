//! Dapr's HTTP metadata API (`GET /v1.0/metadata`) through
//! [`crate::ops::metadata`]; setting an attribute (`PUT
//! /v1.0/metadata/{name}`) is not served.

use std::collections::BTreeMap;

use hyper::{Method, Request, Response, StatusCode};
use serde::Serialize;

use super::reply::{self, Body};
use super::request;
use crate::ops::dapr_error::DaprError;
use crate::ops::metadata::{self, Component};
use crate::session::Caller;

/// The path of the metadata API.
pub const PATH: &str = "/v1.0/metadata";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Answer {
    id: String,
    runtime_version: String,
    components: Vec<Component>,
    extended: BTreeMap<String, String>,
}

/// Serves one request on [`PATH`] or under it.
pub async fn serve(
    caller: &Caller,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, DaprError> {
    let path = req.uri().path().to_owned();
    let method = req.method().clone();
    if method != Method::GET || path != PATH {
        return Err(DaprError::unimplemented(format!(
            "{method} {path}: mecha serves GET {PATH} only; metadata attributes cannot be set"
        )));
    }
    let (parts, _) = request::read(req).await?;
    let client = request::client(caller, &parts.headers, metadata::GET).await?;
    let m = metadata::get(&client).await?;
    Ok(reply::json(
        StatusCode::OK,
        &Answer {
            id: m.id,
            runtime_version: m.runtime_version,
            components: m.components,
            extended: m.extended,
        },
    ))
}
