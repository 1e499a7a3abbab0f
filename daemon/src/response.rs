//! One answer of the HTTP endpoint (`http.rs`) and of the dashboard
//! (`dashboard`), built by either and written by `http.rs`.

/// One answer: status, content type, body, and the methods of a 405.
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body's type.
    pub content_type: &'static str,
    /// The body.
    pub body: String,
    /// The methods a 405 answer names.
    pub allow: Option<&'static str>,
}

impl Response {
    /// An answer with `body` of `content_type`.
    pub fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body,
            allow: None,
        }
    }

    /// A plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }

    /// A JSON answer.
    pub fn json<T: serde::Serialize>(status: u16, value: &T) -> Self {
        match serde_json::to_string(value) {
            Ok(body) => Self::new(status, "application/json", body),
            Err(e) => Self::json_error(500, &format!("encoding the answer: {e}")),
        }
    }

    /// A JSON error: `{"error": message}`.
    pub fn json_error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::new(status, "application/json", body)
    }

    /// 405, naming the methods the path takes.
    pub fn not_allowed(methods: &'static str) -> Self {
        let mut r = Self::text(405, format!("only {methods} are allowed here\n"));
        r.allow = Some(methods);
        r
    }
}
