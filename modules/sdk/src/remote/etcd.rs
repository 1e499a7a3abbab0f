//! A small etcd v3 client over etcd's JSON gateway (HTTP/1.1 `POST /v3/...`,
//! served on the client port of etcd 3.4 and later): unary calls on a pool of
//! keep-alive connections, and watches as streamed responses.
//!
//! Why not the `etcd-client` crate: its build script compiles etcd's
//! `.proto` files with `tonic-prost-build`, which needs the `protoc` compiler
//! installed on every machine that builds mecha, and it brings a gRPC stack
//! (tonic, prost, hyper, h2, tower) for the dozen calls the drivers make. The
//! gateway speaks the same API with the protobuf JSON mapping (bytes in
//! base64, 64-bit numbers as strings), so the drivers keep etcd's semantics —
//! transactions, leases, revisions, watches — at the cost of JSON parsing.
//! HTTP/1.1 itself (strict, bounded heads, bodies and chunks) is `mecha-http`,
//! shared with the daemon and `mechactl`.

use std::time::Duration;

use base64::Engine as _;
use mecha_http::Conn;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::{duration, split_host_port, Origin, RemoteError};
use crate::metadata::{Metadata, MetadataError};

/// The metadata fields of etcd components; drivers may add their own.
pub const FIELDS: [&str; 5] = [
    "endpoints",
    "keyPrefixPath",
    "username",
    "password",
    "dialTimeout",
];

/// Default time to connect to an endpoint.
const DIAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Time for one unary call to be answered once connected.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Idle keep-alive connections kept for reuse; more concurrent calls open
/// more connections, which are closed after use instead of pooled.
const POOL: usize = 16;

/// The largest response body accepted (etcd's own request limit is 1.5 MiB;
/// a range over many keys can be larger, but not unboundedly).
const MAX_BODY: usize = 64 << 20;

/// The largest response head (status line and header fields) accepted.
const MAX_HEAD: usize = 16 << 10;

/// One component's etcd cluster.
pub struct Etcd {
    origin: Origin,
    endpoints: Vec<String>,
    prefix: Option<String>,
    credentials: Option<(String, String)>,
    token: Mutex<Option<String>>,
    idle: Mutex<Vec<Conn<TcpStream>>>,
    dial_timeout: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Credentials and tokens stay out of debug output.
        f.debug_struct("Etcd")
            .field("origin", &self.origin)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Reads the etcd fields of `metadata` (a component of type `kind`).
    /// Nothing connects here: the first call does, so a module starts while
    /// etcd is down. Refused at load, naming the field: a missing or empty
    /// `endpoints`, an endpoint that is not `host:port` (an `http://` scheme
    /// is accepted and dropped; `https://` is refused, there is no TLS), a
    /// password without a username, a bad `dialTimeout`.
    pub fn from_metadata(kind: &str, metadata: &Metadata<'_>) -> Result<Self, MetadataError> {
        let listed = metadata
            .list("endpoints")?
            .ok_or_else(|| metadata.error("metadata field \"endpoints\" is required"))?;
        let mut endpoints = Vec::with_capacity(listed.len());
        for endpoint in listed {
            if endpoint.starts_with("https://") {
                return Err(metadata.error(format!(
                    "metadata field \"endpoints\": {endpoint:?} needs TLS, which this build of \
                     mecha does not support for etcd"
                )));
            }
            let bare = endpoint.trim_start_matches("http://").trim_end_matches('/');
            if split_host_port(bare).is_none() {
                return Err(metadata.error(format!(
                    "metadata field \"endpoints\" must list host:port entries, not {endpoint:?}"
                )));
            }
            endpoints.push(bare.to_owned());
        }
        let credentials = match (metadata.str("username")?, metadata.get("password")) {
            (Some(user), password) => Some((user.to_owned(), password.unwrap_or("").to_owned())),
            (None, Some(_)) => {
                return Err(
                    metadata.error("metadata field \"password\" is given without \"username\"")
                )
            }
            (None, None) => None,
        };
        Ok(Self {
            origin: Origin {
                component: metadata.component().to_owned(),
                kind: kind.to_owned(),
                server: endpoints.join(","),
            },
            endpoints,
            prefix: metadata.str("keyPrefixPath")?.map(str::to_owned),
            credentials,
            token: Mutex::new(None),
            idle: Mutex::new(Vec::new()),
            dial_timeout: duration(metadata, "dialTimeout")?.unwrap_or(DIAL_TIMEOUT),
        })
    }

    /// The component this client serves.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// The `keyPrefixPath` field, if given.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    /// Calls `path` (such as `/v3/kv/range`) with `body`; answers the
    /// response's JSON. A call that finds the server gone is UNAVAILABLE.
    pub async fn call(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        let limit = CALL_TIMEOUT + self.dial_timeout;
        match tokio::time::timeout(limit, self.call_authenticated(path, body)).await {
            Ok(result) => result,
            Err(_) => Err(self
                .origin
                .unavailable(format!("no answer to {path} within {limit:?}"))),
        }
    }

    async fn call_authenticated(&self, path: &str, body: &Value) -> Result<Value, RemoteError> {
        let token = self.token().await?;
        match self.call_once(path, body, token.as_deref()).await {
            // An expired token is refused with "invalid auth token"; one
            // fresh authentication is worth a retry.
            Err(Failure::Answer { message, .. })
                if token.is_some() && message.contains("auth token") =>
            {
                *self.token.lock() = None;
                let token = self.token().await?;
                self.call_once(path, body, token.as_deref())
                    .await
                    .map_err(|f| self.failure(path, f))
            }
            other => other.map_err(|f| self.failure(path, f)),
        }
    }

    /// The auth token, authenticating first when credentials are configured
    /// and no token is cached.
    async fn token(&self) -> Result<Option<String>, RemoteError> {
        let Some((name, password)) = &self.credentials else {
            return Ok(None);
        };
        if let Some(token) = self.token.lock().clone() {
            return Ok(Some(token));
        }
        let path = "/v3/auth/authenticate";
        let body = json!({ "name": name, "password": password });
        let answer = self
            .call_once(path, &body, None)
            .await
            .map_err(|f| self.failure(path, f))?;
        let token = answer
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| self.origin.failed("authentication answered no token"))?
            .to_owned();
        *self.token.lock() = Some(token.clone());
        Ok(Some(token))
    }

    /// One request on a pooled connection, or a new one. A pooled connection
    /// that the server closed while idle fails before any answer arrives;
    /// the request is then sent once more on a fresh connection.
    async fn call_once(
        &self,
        path: &str,
        body: &Value,
        token: Option<&str>,
    ) -> Result<Value, Failure> {
        let request = encode_request(path, body, token, &self.origin.server)?;
        let pooled = self.idle.lock().pop();
        if let Some(mut conn) = pooled {
            if let Ok((value, keep)) = exchange(&mut conn, &request).await {
                self.recycle(conn, keep);
                return value;
            }
        }
        let mut conn = self.connect().await?;
        match exchange(&mut conn, &request).await {
            Ok((value, keep)) => {
                self.recycle(conn, keep);
                value
            }
            Err(Stale) => Err(Failure::Io(
                "the connection closed without an answer".into(),
            )),
        }
    }

    fn recycle(&self, conn: Conn<TcpStream>, keep: bool) {
        let mut idle = self.idle.lock();
        if keep && idle.len() < POOL {
            idle.push(conn);
        }
    }

    /// Connects to the first endpoint that answers, in configured order.
    async fn connect(&self) -> Result<Conn<TcpStream>, Failure> {
        let mut last = String::new();
        for endpoint in &self.endpoints {
            match tokio::time::timeout(self.dial_timeout, TcpStream::connect(endpoint.as_str()))
                .await
            {
                Ok(Ok(stream)) => {
                    // Requests are small and latency matters more than
                    // packet count.
                    let _ = stream.set_nodelay(true);
                    return Ok(Conn::new(stream));
                }
                Ok(Err(e)) => last = format!("{endpoint}: {e}"),
                Err(_) => {
                    last = format!("{endpoint}: no connection within {:?}", self.dial_timeout)
                }
            }
        }
        Err(Failure::Io(last))
    }

    fn failure(&self, path: &str, failure: Failure) -> RemoteError {
        match failure {
            Failure::Io(message) => self.origin.unavailable(format!("{path}: {message}")),
            // gRPC code 14 is UNAVAILABLE (no leader, shutting down).
            Failure::Answer { code: 14, message } => {
                self.origin.unavailable(format!("{path}: {message}"))
            }
            Failure::Answer { message, .. } => self.origin.failed(format!("{path}: {message}")),
        }
    }

    /// Opens a watch: `create` is the `create_request` object (key,
    /// range_end, start_revision, ...). Answers once etcd confirmed the
    /// watch, with its header revision.
    pub async fn watch(&self, create: Value) -> Result<Watch, RemoteError> {
        let path = "/v3/watch";
        let token = self.token().await?;
        let body = json!({ "create_request": create });
        let opened = async {
            let request = encode_request(path, &body, token.as_deref(), &self.origin.server)?;
            let mut conn = self.connect().await?;
            conn.send(&request).await.map_err(io_failure)?;
            let head = conn.response_head(MAX_HEAD).await.map_err(http_failure)?;
            if head.status != 200 {
                let body = conn.body(&head, MAX_BODY).await.map_err(http_failure)?;
                return Err(answer_failure(head.status, &body));
            }
            if !head.chunked {
                return Err(Failure::Io("the watch answer is not a stream".into()));
            }
            let mut watch = Watch {
                conn,
                buffer: Vec::new(),
            };
            match watch.next_raw().await? {
                Some(v) if v.pointer("/result/created").and_then(Value::as_bool) == Some(true) => {
                    Ok(watch)
                }
                Some(v) => Err(Failure::Answer {
                    code: 0,
                    message: format!("the watch was not created: {v}"),
                }),
                None => Err(Failure::Io("the watch stream ended at once".into())),
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT + self.dial_timeout, opened).await {
            Ok(result) => result.map_err(|f| self.failure(path, f)),
            Err(_) => Err(self.origin.unavailable("opening a watch timed out")),
        }
    }

    /// Maps a watch stream's failure the way calls are mapped.
    pub fn watch_error(&self, failure: WatchError) -> RemoteError {
        self.failure("/v3/watch", failure.0)
    }
}

/// Why one exchange failed, before it becomes a [`RemoteError`].
#[derive(Debug)]
enum Failure {
    /// The connection failed: an outage.
    Io(String),
    /// The server answered with an error (`code` is the gRPC code).
    Answer { code: i64, message: String },
}

/// A watch stream failed; see [`Etcd::watch_error`].
#[derive(Debug)]
pub struct WatchError(Failure);

impl std::fmt::Display for WatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Failure::Io(m) => write!(f, "{m}"),
            Failure::Answer { message, .. } => write!(f, "{message}"),
        }
    }
}

/// A pooled connection that turned out to be closed before it answered.
struct Stale;

/// One open watch: a chunked HTTP response carrying one JSON message per
/// line.
pub struct Watch {
    conn: Conn<TcpStream>,
    /// Bytes of an incomplete line.
    buffer: Vec<u8>,
}

impl Watch {
    /// The next watch response (`{"result": {...}}`); `Ok(None)` when etcd
    /// ended the stream, an error when the connection failed.
    pub async fn next(&mut self) -> Result<Option<Value>, WatchError> {
        self.next_raw().await.map_err(WatchError)
    }

    async fn next_raw(&mut self) -> Result<Option<Value>, Failure> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=end).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let value = serde_json::from_slice(&line)
                    .map_err(|e| Failure::Io(format!("undecodable watch message: {e}")))?;
                return Ok(Some(value));
            }
            let room = MAX_BODY - self.buffer.len();
            match self.conn.chunk(room).await {
                Ok(Some(data)) => self.buffer.extend_from_slice(&data),
                Ok(None) => return Ok(None),
                Err(mecha_http::Error::TooLarge(_)) => {
                    return Err(Failure::Io("a watch message is too large".into()))
                }
                Err(mecha_http::Error::Truncated | mecha_http::Error::Closed) => {
                    return Err(Failure::Io("the server closed the stream".into()))
                }
                Err(e) => return Err(http_failure(e)),
            }
        }
    }
}

fn io_failure(e: std::io::Error) -> Failure {
    Failure::Io(e.to_string())
}

fn http_failure(e: mecha_http::Error) -> Failure {
    Failure::Io(e.to_string())
}

fn encode_request(
    path: &str,
    body: &Value,
    token: Option<&str>,
    host: &str,
) -> Result<Vec<u8>, Failure> {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(token) = token {
        headers.push(("Authorization", token));
    }
    mecha_http::request("POST", path, host, &headers, body.to_string().as_bytes())
        .map_err(http_failure)
}

/// Sends `request` and reads the whole answer. `Err(Stale)` when the
/// connection was closed before any byte of an answer arrived; otherwise the
/// answer (or failure) and whether the connection can be reused.
async fn exchange(
    conn: &mut Conn<TcpStream>,
    request: &[u8],
) -> Result<(Result<Value, Failure>, bool), Stale> {
    if conn.send(request).await.is_err() {
        return Err(Stale);
    }
    let head = match conn.response_head(MAX_HEAD).await {
        Ok(head) => head,
        Err(mecha_http::Error::Closed) => return Err(Stale),
        Err(e) => return Ok((Err(http_failure(e)), false)),
    };
    let body = match conn.body(&head, MAX_BODY).await {
        Ok(body) => body,
        Err(e) => return Ok((Err(http_failure(e)), false)),
    };
    let keep = !head.close;
    if head.status != 200 {
        return Ok((Err(answer_failure(head.status, &body)), keep));
    }
    let value =
        serde_json::from_slice(&body).map_err(|e| Failure::Io(format!("undecodable answer: {e}")));
    Ok((value, keep))
}

/// The failure an error answer describes: the gateway answers
/// `{"error": ..., "code": <gRPC code>, "message": ...}`.
fn answer_failure(status: u16, body: &[u8]) -> Failure {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let code = parsed.as_ref().map_or(0, |v| int(v, "code"));
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("message").or_else(|| v.get("error")))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP status {status}"));
    // A gateway that cannot reach the etcd server behind it answers 503.
    let code = if code == 0 && status == 503 { 14 } else { code };
    Failure::Answer { code, message }
}

/// A 64-bit field of a gateway message: the JSON mapping writes them as
/// strings, and leaves out fields that are zero.
pub fn int(value: &Value, field: &str) -> i64 {
    match value.get(field) {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// A bytes field of a gateway message, decoded; empty when absent.
pub fn bytes(value: &Value, field: &str) -> Vec<u8> {
    value
        .get(field)
        .and_then(Value::as_str)
        .and_then(unbase64)
        .unwrap_or_default()
}

/// Standard base64 with padding, as the protobuf JSON mapping writes bytes.
pub fn base64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Decodes standard base64 (padding optional, as etcd's gateway may omit
/// it); `None` when malformed.
pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text.trim_end_matches('='))
        .ok()
}

/// The end of the key range of every key starting with `prefix` (etcd's
/// `range_end` for a prefix): the prefix with its last byte incremented,
/// dropping trailing 0xff bytes; `\0` (every key) when nothing is left.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The `(key, range_end)` of every key starting with `prefix`. An empty
/// prefix is every key, which etcd spells `("\0", "\0")`: an empty `key` is
/// refused ("key is not provided").
pub fn prefix_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    if prefix.is_empty() {
        return (vec![0], vec![0]);
    }
    (prefix.to_vec(), prefix_end(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
            assert_eq!(unbase64(coded).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(unbase64("Zm9v!"), None);
    }

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"a/"), b"a0".to_vec());
        assert_eq!(prefix_end(&[b'a', 0xff]), b"b".to_vec());
        assert_eq!(prefix_end(&[0xff]), vec![0]);
    }

    #[test]
    fn numbers_come_as_strings_or_numbers() {
        let v = json!({"a": "12", "b": 7});
        assert_eq!((int(&v, "a"), int(&v, "b"), int(&v, "c")), (12, 7, 0));
    }
}
