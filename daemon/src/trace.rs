//! Request tracing: one span per request (SPEC.md §2.1), and a small OTLP/HTTP
//! JSON exporter.
//!
//! A span starts when a request with a trace context arrives, or any request
//! once export is configured; it ends when its answer's guard
//! ([`crate::metrics::Answer`]) is dropped, that is when the answer has been
//! written. Finished, sampled spans go into a bounded queue; one task batches
//! them and POSTs them to `<endpoint>/v1/traces` over a plain TCP connection
//! with `mecha-http`. A full queue drops spans (counted), so tracing
//! never makes a request wait. Without configuration there is no exporter,
//! and a request without trace context costs one `Option` check.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mecha_abi::trace::{hex, SAMPLED};
use mecha_abi::{Opcode, Status, TraceContext};
use tokio::sync::mpsc;

/// Finished spans waiting for export; beyond this, spans are dropped.
pub const QUEUE: usize = 4096;
/// Spans per POST at most.
const BATCH: usize = 512;
/// How long a batch may wait to fill before it is sent.
const FLUSH: Duration = Duration::from_millis(500);
/// Bound on connecting to, writing to and reading from the collector.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer head read from the collector.
const MAX_ANSWER_HEAD: usize = 16 << 10;

/// Why a tracing configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum TraceConfigError {
    /// Not `http://host:port[/path]`.
    #[error("tracing.otlpEndpoint {0:?}: expected http://host:port (https is not supported)")]
    Endpoint(String),
    /// Outside 0.0..=1.0.
    #[error("tracing.sampleRate {0}: must be between 0.0 and 1.0")]
    SampleRate(f64),
}

/// Where spans go: the queue of the export task.
#[derive(Debug)]
pub struct Tracer {
    tx: mpsc::Sender<SpanData>,
    /// Root spans are sampled when a random u64 falls below this.
    threshold: u64,
    /// Spans lost: the queue was full, or the collector did not take them.
    pub dropped: Arc<AtomicU64>,
}

/// A parsed `http://host:port/base` endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// `host:port`, for connecting and the Host header.
    pub authority: String,
    /// The request path: the base path followed by `/v1/traces`.
    pub path: String,
}

impl Endpoint {
    /// Parses `http://host[:port][/base]` (port 80 when absent).
    pub fn parse(url: &str) -> Result<Self, TraceConfigError> {
        let bad = || TraceConfigError::Endpoint(url.to_string());
        let rest = url.strip_prefix("http://").ok_or_else(bad)?;
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains(['@', ' ']) {
            return Err(bad());
        }
        let authority = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| !p.contains(']'))
        {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        Ok(Self {
            authority,
            path: format!("{base}/v1/traces"),
        })
    }
}

impl Tracer {
    /// Starts the export task (on the current runtime) for `endpoint`.
    pub fn start(endpoint: &str, sample_rate: f64) -> Result<Arc<Self>, TraceConfigError> {
        let endpoint = Endpoint::parse(endpoint)?;
        if !(0.0..=1.0).contains(&sample_rate) {
            return Err(TraceConfigError::SampleRate(sample_rate));
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        // 1.0 must sample everything, including u64::MAX.
        let threshold = if sample_rate >= 1.0 {
            u64::MAX
        } else {
            (sample_rate * u64::MAX as f64) as u64
        };
        let dropped = Arc::new(AtomicU64::new(0));
        let tracer = Arc::new(Self {
            tx,
            threshold,
            dropped: Arc::clone(&dropped),
        });
        tokio::spawn(export_loop(rx, endpoint, dropped));
        Ok(tracer)
    }

    fn sample_root(&self) -> bool {
        self.threshold == u64::MAX || random() < self.threshold
    }
}

/// A request's span while it is in flight.
#[derive(Debug)]
pub struct Span {
    tracer: Option<Arc<Tracer>>,
    trace_id: [u8; 16],
    span_id: [u8; 8],
    /// The caller's span, when the request carried a trace context.
    parent_id: Option<[u8; 8]>,
    flags: u8,
    opcode: Opcode,
    tenant: String,
    module: &'static str,
    module_name: Option<String>,
    start_ns: u64,
}

impl Span {
    /// The span of a request with `opcode` from `tenant`: a child of `parent`
    /// when the request carried one, else a root (sampled at the tracer's
    /// rate). `None` when there is neither a parent nor an exporter.
    pub fn start(
        tracer: Option<&Arc<Tracer>>,
        parent: Option<TraceContext>,
        opcode: Opcode,
        tenant: &[u8],
    ) -> Option<Box<Self>> {
        let (trace_id, parent_id, flags) = match parent {
            Some(p) => (p.trace_id, Some(p.parent_id), p.flags),
            None => {
                let tracer = tracer?;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&random().to_le_bytes());
                id[8..].copy_from_slice(&random().to_le_bytes());
                let flags = if tracer.sample_root() { SAMPLED } else { 0 };
                (id, None, flags)
            }
        };
        Some(Box::new(Self {
            tracer: tracer.cloned(),
            trace_id,
            span_id: random().to_le_bytes(),
            parent_id,
            flags,
            opcode,
            tenant: String::from_utf8_lossy(tenant).into_owned(),
            module: "mechad",
            module_name: None,
            start_ns: now_ns(),
        }))
    }

    /// The context to hand on (to the module): this span as the parent.
    pub fn context(&self) -> TraceContext {
        TraceContext {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            flags: self.flags,
        }
    }

    /// Names the module serving the request.
    pub fn set_module(&mut self, name: &str) {
        self.module_name = Some(name.to_string());
    }

    /// Ends the span with the answer's status and queues it for export when
    /// it is sampled and an exporter is configured. Never waits.
    pub fn finish(self, status: u16) {
        let Some(tracer) = self.tracer else { return };
        if self.flags & SAMPLED == 0 {
            return;
        }
        let data = SpanData {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_id: self.parent_id,
            name: self.opcode.name().unwrap_or("UNKNOWN"),
            tenant: self.tenant,
            module: self.module_name.unwrap_or_else(|| self.module.to_string()),
            status,
            start_ns: self.start_ns,
            end_ns: now_ns(),
        };
        if tracer.tx.try_send(data).is_err() {
            tracer.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A finished span on its way to the collector.
#[derive(Debug)]
struct SpanData {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    name: &'static str,
    tenant: String,
    module: String,
    status: u16,
    start_ns: u64,
    end_ns: u64,
}

/// Collects spans into batches and posts them until the daemon exits.
async fn export_loop(
    mut rx: mpsc::Receiver<SpanData>,
    endpoint: Endpoint,
    dropped: Arc<AtomicU64>,
) {
    let mut failing = false;
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        let flush_at = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(flush_at, rx.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let body = otlp_json(&batch);
        let result = tokio::time::timeout(IO_TIMEOUT, post(&endpoint, &body)).await;
        if !matches!(result, Ok(Ok(()))) {
            let n = u64::try_from(batch.len()).unwrap_or(u64::MAX);
            dropped.fetch_add(n, Ordering::Relaxed);
        }
        match result {
            Ok(Ok(())) => failing = false,
            Ok(Err(e)) if !failing => {
                failing = true;
                tracing::warn!(endpoint = %endpoint.authority, "span export failed: {e}; dropping spans until it recovers");
            }
            Err(_) if !failing => {
                failing = true;
                tracing::warn!(endpoint = %endpoint.authority, "span export timed out; dropping spans until it recovers");
            }
            _ => {}
        }
    }
}

/// The OTLP/HTTP JSON body (`ExportTraceServiceRequest`) for `spans`.
fn otlp_json(spans: &[SpanData]) -> Vec<u8> {
    let attr =
        |key: &str, value: &str| serde_json::json!({"key": key, "value": {"stringValue": value}});
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let status = Status::from_code(s.status);
            let mut span = serde_json::json!({
                "traceId": hex(&s.trace_id),
                "spanId": hex(&s.span_id),
                "name": s.name,
                "kind": 2,
                "startTimeUnixNano": s.start_ns.to_string(),
                "endTimeUnixNano": s.end_ns.to_string(),
                "attributes": [
                    attr("mecha.tenant", &s.tenant),
                    attr("mecha.module", &s.module),
                    attr("mecha.status", &status.to_string()),
                ],
                "status": if s.status == 0 {
                    serde_json::json!({"code": 1})
                } else {
                    serde_json::json!({"code": 2, "message": status.to_string()})
                },
            });
            if let Some(parent) = s.parent_id {
                span["parentSpanId"] = hex(&parent).into();
            }
            span
        })
        .collect();
    let body = serde_json::json!({
        "resourceSpans": [{
            "resource": {"attributes": [attr("service.name", "mechad")]},
            "scopeSpans": [{
                "scope": {"name": "mechad", "version": env!("CARGO_PKG_VERSION")},
                "spans": spans,
            }],
        }],
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

/// Why a POST failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] mecha_http::Error),
    #[error("collector answered {0} {1}")]
    Status(u16, String),
}

/// POSTs `body` with one short-lived HTTP/1.1 connection. Only the answer's
/// status matters, so its body is not read.
async fn post(endpoint: &Endpoint, body: &[u8]) -> Result<(), PostError> {
    let stream = tokio::net::TcpStream::connect(&endpoint.authority).await?;
    let user_agent = concat!("mechad/", env!("CARGO_PKG_VERSION"));
    let request = mecha_http::request(
        "POST",
        &endpoint.path,
        &endpoint.authority,
        &[
            ("Content-Type", "application/json"),
            ("Connection", "close"),
            ("User-Agent", user_agent),
        ],
        body,
    )?;
    let mut conn = mecha_http::Conn::new(stream);
    conn.send(&request).await?;
    let head = conn.response_head(MAX_ANSWER_HEAD).await?;
    if (200..300).contains(&head.status) {
        Ok(())
    } else {
        Err(PostError::Status(head.status, head.reason))
    }
}

/// Nanoseconds since the Unix epoch.
fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The `traceparent` of a call the daemon delivers itself on a direct route
/// (`direct`), when the request carried no trace context: the caller's text
/// when it is a valid W3C value, else a fresh sampled trace, as the invoke
/// module makes one on its path (SPEC §7.8).
pub fn traceparent_or_fresh(requested: String) -> String {
    if TraceContext::parse(&requested).is_ok() {
        return requested;
    }
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&random().to_le_bytes());
    trace_id[8..].copy_from_slice(&random().to_le_bytes());
    TraceContext {
        trace_id,
        parent_id: random().to_le_bytes(),
        flags: SAMPLED,
    }
    .to_string()
}

/// A non-zero 64-bit value. Span ids need uniqueness, not secrecy: the
/// standard library's randomly keyed hasher over a counter and the clock
/// provides it without another dependency.
fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNTER: AtomicU64 = AtomicU64::new(1);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u64(now_ns());
    h.finish().max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse() {
        let e = Endpoint::parse("http://127.0.0.1:4318").unwrap();
        assert_eq!(e.authority, "127.0.0.1:4318");
        assert_eq!(e.path, "/v1/traces");
        let e = Endpoint::parse("http://collector/otlp/").unwrap();
        assert_eq!(e.authority, "collector:80");
        assert_eq!(e.path, "/otlp/v1/traces");
        assert!(Endpoint::parse("https://x:1").is_err());
        assert!(Endpoint::parse("http://").is_err());
    }

    #[test]
    fn a_child_span_keeps_the_trace_and_names_its_parent() {
        let parent =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let span = Span::start(None, Some(parent), Opcode::STATE_GET, b"t").unwrap();
        let ctx = span.context();
        assert_eq!(ctx.trace_id, parent.trace_id);
        assert_ne!(ctx.parent_id, parent.parent_id);
        assert!(Span::start(None, None, Opcode::PING, b"t").is_none());
    }
}
