//! `bindings.http` (output): HTTP/1.1 requests to the base `url`, through
//! mecha's own bounded HTTP layer (`mecha-http`). Operations `get`, `head`,
//! `post`, `put`, `patch`, `delete`, `options`, `trace`, and `create` (a
//! `post`, as in Dapr). The request metadata entry `path` is appended to the
//! base URL's path; every other entry is sent as a request header, and so is
//! the request's trace context (`traceparent`) when it has one. The
//! answer's metadata holds `statusCode`, `status` and the response headers.
//!
//! Only plain `http://` is spoken: this build has no TLS client, so an
//! `https://` URL is refused when the component loads. Each request opens
//! its own connection and runs in its own task, so a slow target holds only
//! the requests sent to it; the response body is read only up to the limit
//! (`maxResponseBytes`, `maxResponseBodySize`), and a larger one is
//! RESOURCE_EXHAUSTED without being buffered.

use std::time::Duration;

use mecha_abi::msg::InvokeBindingReply;
use mecha_http::Conn;
use mecha_module::metadata::Metadata;
use mecha_module::{BoxFuture, DriverError};
use tokio::net::TcpStream;

use super::{Call, Output};
use crate::error::BindingError;

/// The fields of `bindings.http` beyond the shared ones: Dapr's (its mTLS
/// fields are refused with a message when set, since this build has no TLS),
/// and `responseTimeout`.
pub const FIELDS: [&str; 10] = [
    "url",
    "maxResponseBodySize",
    "securityToken",
    "securityTokenHeader",
    "errorIfNot2XX",
    "responseTimeout",
    "MTLSRootCA",
    "MTLSClientCert",
    "MTLSClientKey",
    "MTLSRenegotiation",
];

const OPERATIONS: [&str; 9] = [
    "get", "head", "post", "put", "patch", "delete", "options", "trace", "create",
];

/// The longest response head read.
const MAX_HEAD: usize = 64 << 10;

/// How long one exchange may take without `responseTimeout` (the request's
/// own deadline usually ends it sooner).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Request headers the binding writes itself; a request metadata entry by
/// one of these names is not sent, since it could break the framing.
const OWN_HEADERS: [&str; 5] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "path",
];

/// An HTTP binding.
pub struct HttpBinding {
    component: String,
    /// `host:port` to connect to.
    authority: String,
    /// The `Host` header: the URL's authority as written.
    host: String,
    /// The base URL's path, without a trailing `/`.
    base_path: String,
    token: Option<(String, String)>,
    error_if_not_2xx: bool,
    max_body: Option<usize>,
    timeout: Duration,
}

impl HttpBinding {
    /// Reads the component's fields; connects to nothing yet.
    pub fn open(metadata: &Metadata<'_>) -> Result<Self, BindingError> {
        for field in ["MTLSRootCA", "MTLSClientCert", "MTLSClientKey"] {
            if metadata.get(field).is_some_and(|v| !v.is_empty()) {
                return Err(metadata
                    .error(format!(
                        "metadata field {field:?}: this build of mecha has no TLS client; \
                         bindings.http speaks plain http:// only"
                    ))
                    .into());
            }
        }
        let url = metadata.required("url")?;
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            metadata.error(format!(
                "metadata field \"url\" must be an http:// URL (this build of mecha has no TLS \
                 client, so https:// is not supported), not {url:?}"
            ))
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', '?', '#']) {
            return Err(metadata
                .error(format!(
                    "metadata field \"url\" has no usable host: {url:?}"
                ))
                .into());
        }
        let host = authority.to_owned();
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let token = match metadata.get("securityToken").filter(|t| !t.is_empty()) {
            Some(token) => {
                let header = metadata.required("securityTokenHeader")?;
                Some((header.to_owned(), token.to_owned()))
            }
            None => None,
        };
        let max_body = match metadata.get("maxResponseBodySize") {
            Some(text) => Some(parse_size(text).ok_or_else(|| {
                metadata.error(format!(
                    "metadata field \"maxResponseBodySize\" must be a size such as 1048576, \
                     \"512Ki\" or \"100Mi\", not {text:?}"
                ))
            })?),
            None => None,
        };
        Ok(Self {
            component: metadata.component().to_owned(),
            authority,
            host,
            base_path: path.trim_end_matches('/').to_owned(),
            token,
            error_if_not_2xx: metadata.bool("errorIfNot2XX")?.unwrap_or(true),
            max_body,
            timeout: mecha_module::remote::duration(metadata, "responseTimeout")?
                .filter(|d| !d.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT),
        })
    }

    fn unavailable(&self, what: impl std::fmt::Display) -> BindingError {
        BindingError::Driver(DriverError::Unavailable(format!(
            "binding {:?} (bindings.http): {} {what}",
            self.component, self.authority
        )))
    }

    async fn exchange(&self, call: Call<'_>) -> Result<InvokeBindingReply, BindingError> {
        let method = match call.operation {
            "create" => "POST".to_owned(),
            op if OPERATIONS.contains(&op) => op.to_ascii_uppercase(),
            _ => return Err(call.unknown("bindings.http", &OPERATIONS)),
        };
        let path = call.get("path").unwrap_or("");
        if climbs(path) {
            return Err(BindingError::Invalid(format!(
                "path {path:?} climbs above the binding's URL path (a \".\" or \"..\" segment)"
            )));
        }
        let target = match (self.base_path.as_str(), path.trim_start_matches('/')) {
            ("", "") => "/".to_owned(),
            (base, "") => base.to_owned(),
            (base, rest) => format!("{base}/{rest}"),
        };
        if target.contains([' ', '\r', '\n']) {
            return Err(BindingError::Invalid(format!(
                "path {path:?} holds characters a request line cannot"
            )));
        }
        let mut headers: Vec<(&str, &str)> = call
            .metadata
            .iter()
            .filter(|(n, _)| !OWN_HEADERS.iter().any(|own| own.eq_ignore_ascii_case(n)))
            // The token's header is the binding's: a tenant cannot send a
            // second one beside it, which a server might read first.
            .filter(|(n, _)| {
                self.token
                    .as_ref()
                    .is_none_or(|(header, _)| !header.eq_ignore_ascii_case(n))
            })
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        if let Some((header, token)) = &self.token {
            headers.push((header, token));
        }
        // The request's trace goes on to the target, as Dapr's binding does,
        // unless the application set its own `traceparent`.
        if let Some(trace) = call.trace_parent {
            if !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("traceparent"))
            {
                headers.push(("traceparent", trace));
            }
        }
        headers.push(("Connection", "close"));
        let body = if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            call.data
        } else {
            &[]
        };
        let request = mecha_http::request(&method, &target, &self.host, &headers, body)
            .map_err(|e| BindingError::Invalid(format!("cannot send this request: {e}")))?;
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| self.unavailable(format!("cannot be reached: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut conn = Conn::new(stream);
        conn.send(&request)
            .await
            .map_err(|e| self.unavailable(format!("failed while sending: {e}")))?;
        let head = conn
            .response_head(MAX_HEAD)
            .await
            .map_err(|e| self.unavailable(format!("answered badly: {e}")))?;
        let limit = self.max_body.map_or(call.limit, |m| m.min(call.limit));
        let data = if method == "HEAD" {
            Vec::new()
        } else {
            conn.body(&head, limit).await.map_err(|e| match e {
                mecha_http::Error::TooLarge(_) => call.too_large("an HTTP response body"),
                other => self.unavailable(format!("answered badly: {other}")),
            })?
        };
        if self.error_if_not_2xx && !(200..300).contains(&head.status) {
            return Err(BindingError::Failed(format!(
                "binding {:?} (bindings.http): {} answered {} {} to {method} {target}",
                self.component, self.authority, head.status, head.reason
            )));
        }
        let mut metadata = vec![
            ("statusCode".to_owned(), head.status.to_string()),
            (
                "status".to_owned(),
                format!("{} {}", head.status, head.reason)
                    .trim_end()
                    .to_owned(),
            ),
        ];
        metadata.extend(head.headers);
        Ok(InvokeBindingReply { data, metadata })
    }
}

impl Output for HttpBinding {
    fn invoke<'a>(
        &'a self,
        call: Call<'a>,
    ) -> BoxFuture<'a, Result<InvokeBindingReply, BindingError>> {
        Box::pin(async move {
            match tokio::time::timeout(self.timeout, self.exchange(call)).await {
                Ok(result) => result,
                Err(_) => Err(self.unavailable(format!(
                    "did not answer within responseTimeout ({:?})",
                    self.timeout
                ))),
            }
        })
    }
}

/// Whether `path` has a `.` or `..` segment, also percent-encoded, before
/// its query: a server would resolve it above the binding's base path,
/// which the operator chose to confine what the binding reaches.
fn climbs(path: &str) -> bool {
    let path = path.split(['?', '#']).next().unwrap_or("");
    path.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    })
}

/// A size as Dapr writes them: a whole number of bytes, optionally with a
/// binary (`Ki`, `Mi`, `Gi`) or decimal (`k`, `M`, `G`) suffix.
fn parse_size(text: &str) -> Option<usize> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let unit: u64 = match &text[digits..] {
        "" => 1,
        "k" | "K" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return None,
    };
    usize::try_from(number.checked_mul(unit)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_climb_are_recognised() {
        for bad in ["..", "../admin", "a/../../b", "a/./b", "%2e%2E/x", "a/.%2e"] {
            assert!(climbs(bad), "{bad}");
        }
        for fine in [
            "",
            "a/b",
            "a..b/c",
            "x?q=../y",
            ".well-known/x",
            "a/...",
            "v1.2",
        ] {
            assert!(!climbs(fine), "{fine}");
        }
    }

    #[test]
    fn sizes_read_as_dapr_writes_them() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("100Mi"), Some(100 << 20));
        assert_eq!(parse_size("2k"), Some(2000));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("1Xi"), None);
    }
}
