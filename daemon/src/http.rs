//! The small local HTTP endpoint for kubelet probes and Prometheus:
//! `GET /healthz` (liveness), `GET /readyz` (readiness), `GET /metrics`,
//! and the node dashboard at `/` with its JSON under `/api/` (`dashboard`).
//!
//! It is served on a `TcpListener` with `mecha-http`, mecha's one small
//! HTTP/1.1 layer, rather than a full server library: three fixed GET routes
//! and the dashboard's few routes need a parsed request head and nothing
//! else (no request bodies), and the daemon stays small and
//! quick to build (ARCHITECTURE.md, "HTTP"). Every connection gets one answer
//! and is closed (`Connection: close`); the request head is parsed strictly,
//! with a size cap, a header-count cap and a deadline, and at most
//! `MAX_CONNECTIONS` are served at once, so a local port scanner or a stuck
//! client cannot grow the daemon's memory or tasks.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use mecha_http::{Conn, Error, RequestHead};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::config::HttpSettings;
use crate::daemon::Daemon;
use crate::dashboard::{Context as DashboardContext, Dashboard, Request};
use crate::metrics::Metrics;
use crate::response::Response;

/// The port used when the daemon turns the endpoint on by itself in Kubernetes.
pub const DEFAULT_PORT: u16 = 9464;
/// Largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed unanswered.
const MAX_CONNECTIONS: usize = 32;

/// What the endpoint reports on; shared with `main`, which fills in the daemon
/// once its modules are up and flags shutdown.
pub struct HttpState {
    metrics: Arc<Metrics>,
    daemon: OnceLock<Arc<Daemon>>,
    /// The application socket, which the dashboard lists apps through.
    socket: OnceLock<PathBuf>,
    stopping: AtomicBool,
    /// Stop accepting: the listener went to a daemon that took over.
    release: tokio::sync::Notify,
    /// The address it listens on, once bound.
    bound: OnceLock<std::net::SocketAddr>,
    dashboard: Dashboard,
}

impl HttpState {
    /// Readiness, metrics and the dashboard are served from `daemon`, whose
    /// application socket is `socket`, from now on.
    pub fn set_daemon(&self, daemon: &Arc<Daemon>, socket: PathBuf) {
        let _ = self.daemon.set(Arc::clone(daemon));
        let _ = self.socket.set(socket);
    }

    /// The daemon is shutting down: readiness drops so no new work is sent here.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Stops accepting, for good, when `claimed` (the listening sockets a
    /// daemon that took over serves on) holds this endpoint's: an idle old
    /// daemon must not answer the new one's probes. One whose listener the
    /// new daemon did not take (another pod's address) serves on.
    pub fn release_if_claimed(&self, claimed: &[crate::inherited::Address]) {
        let ours = self.bound.get().copied();
        if claimed
            .iter()
            .any(|a| matches!(a, crate::inherited::Address::Tcp(t) if Some(*t) == ours))
        {
            self.release.notify_one();
        }
    }
}

/// Where the endpoint listens: `--http` (or `MECHA_HTTP`) wins over
/// `spec.http.address`; `off` (or an empty string) disables it. With neither,
/// it is on at `0.0.0.0:9464` inside a Kubernetes pod (kubelet probes reach the
/// pod's address) and off elsewhere. The `bool` says whether the address was
/// chosen automatically, in which case failing to bind is only a warning.
fn address(
    flag: Option<&str>,
    settings: Option<&HttpSettings>,
) -> anyhow::Result<Option<(SocketAddr, bool)>> {
    let (text, source) = match (flag, settings.and_then(|s| s.address.as_deref())) {
        (Some(f), _) => (f, "--http"),
        (None, Some(c)) => (c, "Configuration spec.http.address"),
        (None, None) => {
            if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
                return Ok(Some((SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)), true)));
            }
            return Ok(None);
        }
    };
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    let addr = text.parse::<SocketAddr>().with_context(|| {
        format!("{source}: {text:?} is not an address such as 127.0.0.1:9464 or off")
    })?;
    Ok(Some((addr, false)))
}

/// Binds the endpoint (if configured) and serves it in a task. Binding happens
/// before modules start, so liveness answers (and readiness says "starting")
/// while a slow module boots.
pub async fn start(
    flag: Option<&str>,
    settings: Option<&HttpSettings>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Arc<HttpState>> {
    let dashboard = Dashboard::new(
        settings.and_then(|s| s.dashboard).unwrap_or(true),
        settings.and_then(|s| s.dashboard_token_file.as_deref()),
    )?;
    let state = Arc::new(HttpState {
        metrics,
        daemon: OnceLock::new(),
        socket: OnceLock::new(),
        stopping: AtomicBool::new(false),
        release: tokio::sync::Notify::new(),
        bound: OnceLock::new(),
        dashboard,
    });
    let Some((addr, automatic)) = address(flag, settings)? else {
        return Ok(state);
    };
    // A socket the previous daemon handed over, when there was one.
    let inherited = crate::inherited::take_tcp(addr).map(|fd| {
        let l = std::net::TcpListener::from(fd);
        l.set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(l))
    });
    let bound = match inherited {
        Some(l) => l,
        None => TcpListener::bind(addr).await,
    };
    match bound {
        Ok(listener) => {
            crate::inherited::own(&listener);
            let bound = listener.local_addr().unwrap_or(addr);
            let _ = state.bound.set(bound);
            tracing::info!(address = %bound, "http endpoint listening (/healthz, /readyz, /metrics, dashboard at /)");
            tokio::spawn(serve(listener, Arc::clone(&state)));
        }
        Err(e) if automatic => {
            tracing::warn!(address = %addr, "not serving the http endpoint: cannot bind: {e}")
        }
        Err(e) => {
            return Err(e).with_context(|| format!("binding the http endpoint on {addr}"));
        }
    }
    Ok(state)
}

/// Accepts connections until the process exits, or its listener is handed
/// over (`release_listener`). The endpoint keeps answering during shutdown,
/// so liveness holds while connections drain.
async fn serve(listener: TcpListener, state: Arc<HttpState>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = state.release.notified() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    // Busy: closing at once is cheaper than queueing; probes retry.
                    continue;
                };
                let state = Arc::clone(&state);
                tokio::spawn(async move {
                    handle(stream, &state).await;
                    drop(slot);
                });
            }
            Err(e) => {
                // Out of descriptors, most likely; back off instead of spinning.
                tracing::warn!("http accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(stream: TcpStream, state: &HttpState) {
    state.metrics.http_request();
    let addresses = (stream.peer_addr(), stream.local_addr());
    let mut conn = Conn::new(stream);
    let (response, head_only) =
        match tokio::time::timeout(IO_TIMEOUT, conn.request_head(MAX_HEAD)).await {
            Err(_) => (
                Response::text(408, "request head not received in time\n"),
                false,
            ),
            Ok(read) => match answer(read, state) {
                Some(Ok(answered)) => answered,
                Some(Err(head)) => {
                    let (Ok(peer), Ok(local)) = addresses else {
                        return;
                    };
                    let request = Request {
                        head: &head,
                        peer,
                        local,
                    };
                    let cx = DashboardContext {
                        daemon: state.daemon.get(),
                        socket: state.socket.get(),
                        metrics: &state.metrics,
                    };
                    let response = state.dashboard.respond(&request, &cx).await;
                    (response, head.method == "HEAD")
                }
                // The client closed or the socket failed; nothing to answer.
                None => return,
            },
        };
    let _ = tokio::time::timeout(IO_TIMEOUT, write(&mut conn, &response, head_only)).await;
}

/// The answer to what was read as a request head, and whether it is for a
/// HEAD request (head only); `None` when there is no one to answer, and
/// `Err(head)` for a dashboard request, which the caller answers (it may
/// wait on the daemon).
#[allow(clippy::type_complexity)]
fn answer(
    read: Result<RequestHead, Error>,
    state: &HttpState,
) -> Option<Result<(Response, bool), RequestHead>> {
    let head = match read {
        Ok(head) => head,
        Err(Error::Closed | Error::Io(_)) => return None,
        Err(Error::TooLarge(_)) => {
            return Some(Ok((Response::text(431, "request head too large\n"), false)))
        }
        Err(Error::Truncated) => {
            return Some(Ok((Response::text(400, "incomplete request\n"), false)))
        }
        Err(Error::Malformed(why)) => {
            return Some(Ok((
                Response::text(400, format!("malformed request head: {why}\n")),
                false,
            )))
        }
    };
    if head.target.starts_with('/') && state.dashboard.serves(head.path()) {
        return Some(Err(head));
    }
    Some(Ok((respond(&head, state), head.method == "HEAD")))
}

/// Routes a well-formed request.
fn respond(head: &RequestHead, state: &HttpState) -> Response {
    // Only origin-form targets (`/path`) name our routes.
    if !head.target.starts_with('/') {
        return Response::text(400, "malformed request line\n");
    }
    let path = head.path();
    let known = matches!(path, "/healthz" | "/livez" | "/readyz" | "/metrics");
    if !known {
        return Response::text(404, "not found; try /healthz, /readyz or /metrics\n");
    }
    if head.method != "GET" && head.method != "HEAD" {
        return Response::not_allowed("GET, HEAD");
    }
    match path {
        // Answering at all proves the runtime schedules tasks and accepts
        // connections, which is what a liveness probe should restart us for.
        "/healthz" | "/livez" => Response::text(200, "ok\n"),
        "/readyz" => readiness(state),
        _ => {
            let daemon = state.daemon.get().map(Arc::as_ref);
            Response::new(
                200,
                prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
                crate::exposition::render(&state.metrics, daemon),
            )
        }
    }
}

/// Ready when every configured module is `running`; otherwise 503 naming the
/// modules that are not, with their state.
fn readiness(state: &HttpState) -> Response {
    if state.stopping.load(Ordering::Relaxed) {
        return Response::text(503, "not ready: shutting down\n");
    }
    let Some(daemon) = state.daemon.get() else {
        return Response::text(503, "not ready: modules are starting\n");
    };
    let waiting = crate::exposition::not_running(daemon);
    if waiting.is_empty() {
        let n = daemon.modules.read().len();
        return Response::text(200, format!("ready: {n} modules running\n"));
    }
    let names: Vec<String> = waiting
        .iter()
        .map(|(name, state)| format!("{name} ({state})"))
        .collect();
    Response::text(
        503,
        format!("not ready: modules not running: {}\n", names.join(", ")),
    )
}

async fn write(conn: &mut Conn<TcpStream>, r: &Response, head_only: bool) -> std::io::Result<()> {
    let length = r.body.len().to_string();
    let mut headers = vec![
        ("Content-Type", r.content_type),
        ("Content-Length", length.as_str()),
    ];
    if let Some(methods) = r.allow {
        headers.push(("Allow", methods));
    }
    // Nothing here is meant to be framed, sniffed as another type, or to
    // load anything but its own files (the dashboard's page included).
    headers.extend([
        ("Cache-Control", "no-store"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "no-referrer"),
        (
            "Content-Security-Policy",
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'none'",
        ),
        ("Connection", "close"),
    ]);
    let mut answer = mecha_http::response_head(r.status, &headers).into_bytes();
    if !head_only {
        answer.extend_from_slice(r.body.as_bytes());
    }
    conn.send(&answer).await?;
    conn.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> HttpState {
        HttpState {
            metrics: Arc::new(Metrics::default()),
            daemon: OnceLock::new(),
            socket: OnceLock::new(),
            stopping: AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
            bound: OnceLock::new(),
            dashboard: Dashboard::new(false, None).unwrap(),
        }
    }

    #[test]
    fn routes_and_errors() {
        let s = state();
        let status = |head: &str| {
            let read = mecha_http::parse_request(head.as_bytes(), MAX_HEAD)
                .and_then(|found| found.ok_or(Error::Truncated))
                .map(|(head, _)| head);
            match answer(read, &s) {
                Some(Ok((r, _))) => r.status,
                Some(Err(_)) => 1,
                None => 0,
            }
        };
        assert_eq!(status("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status("GET /healthz?verbose HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(status("HEAD /metrics HTTP/1.1\r\n\r\n"), 200);
        // Modules are still starting: not ready.
        assert_eq!(status("GET /readyz HTTP/1.1\r\n\r\n"), 503);
        assert_eq!(status("GET /nope HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status("GET /metrics HTTP/2.0\r\n\r\n"), 400);
        assert_eq!(status("GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"), 400);
        assert_eq!(status("\u{1}\u{2}garbage\r\n\r\n"), 400);
        // Bare LF line ends are accepted, as lenient HTTP/1 servers do.
        assert_eq!(status("GET /healthz HTTP/1.1\n\n"), 200);
        // With the dashboard off, its paths are unknown.
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status("GET * HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\n{}\r\n", "A: b\r\n".repeat(65))),
            431
        );
    }

    #[test]
    fn addresses() {
        let cfg = HttpSettings {
            address: Some("127.0.0.1:1".into()),
            ..HttpSettings::default()
        };
        assert_eq!(
            address(Some("127.0.0.1:2"), Some(&cfg)).unwrap(),
            Some(("127.0.0.1:2".parse().unwrap(), false))
        );
        assert_eq!(
            address(None, Some(&cfg)).unwrap(),
            Some(("127.0.0.1:1".parse().unwrap(), false))
        );
        assert_eq!(address(Some("off"), Some(&cfg)).unwrap(), None);
        assert!(address(Some("nine"), None).is_err());
    }
}
