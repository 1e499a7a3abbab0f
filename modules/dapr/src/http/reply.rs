//! Writing an HTTP answer of Dapr's API: JSON, raw bytes, nothing, or an
//! error as Dapr's JSON error body (`{"errorCode": "ERR_…", "message": …}`).

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Response, StatusCode};

use crate::ops::dapr_error::DaprError;

/// An answer body.
pub type Body = Full<Bytes>;

/// An answer of `status` with `body`.
pub fn bytes(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
}

/// An answer without a body.
pub fn nothing(status: StatusCode) -> Response<Body> {
    bytes(status, Bytes::new())
}

/// A JSON answer.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut response = bytes(status, body);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(e) => error(DaprError::new(
            tonic::Code::Internal,
            500,
            "ERR_INTERNAL",
            format!("cannot encode the answer: {e}"),
        )),
    }
}

/// Dapr's error answer.
pub fn error(e: DaprError) -> Response<Body> {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ErrorBody<'a> {
        error_code: &'a str,
        message: &'a str,
    }
    let status = StatusCode::from_u16(e.http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = ErrorBody {
        error_code: e.code,
        message: &e.message,
    };
    match serde_json::to_vec(&body) {
        Ok(body) => {
            let mut response = bytes(status, body);
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
        Err(_) => nothing(status),
    }
}

/// The answer of a handler: its success, or its error rendered.
pub fn either(result: Result<Response<Body>, DaprError>) -> Response<Body> {
    result.unwrap_or_else(error)
}
