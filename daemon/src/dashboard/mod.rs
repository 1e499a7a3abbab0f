//! The node dashboard: a page an operator opens when something is wrong on
//! one node (modules, components, tenants, apps, events, live charts),
//! served by mechad's HTTP endpoint at `/` with its data as JSON under
//! `/api/`, and a module restart button for admins.
//!
//! The page is three small static files compiled into the binary (no build
//! step, no CDN, nothing fetched at run time); everything it shows comes
//! from the JSON views in [`api`], which `mechactl` and tests can read too.
//! Who may see it and who may act is decided in [`access`]. Sampling for the
//! charts starts when the page is first opened ([`crate::history`]).

mod access;
mod api;
mod backends;
pub mod loopback;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::AppEntry;
use mecha_http::RequestHead;

use crate::daemon::Daemon;
use crate::events::{self, Kind};
use crate::history::History;
use crate::metrics::Metrics;
use crate::response::Response;
use access::Viewer;

/// The page.
const INDEX_HTML: &str = include_str!("assets/index.html");
/// Its script.
const SCRIPT: &str = include_str!("assets/dashboard.js");
/// Its style sheet.
const STYLE: &str = include_str!("assets/dashboard.css");

/// How long a listing of apps is reused: the page polls every few seconds,
/// and each listing is a request to the invoke module.
const APPS_FRESH: Duration = Duration::from_secs(2);
/// How long the tenant rows are reused.
const TENANTS_FRESH: Duration = Duration::from_secs(1);
/// How long the invoke module may take to list apps.
const APPS_TIMEOUT: Duration = Duration::from_secs(2);

/// The dashboard's settings and the state it keeps between requests.
pub struct Dashboard {
    enabled: bool,
    token: Option<String>,
    history: Arc<History>,
    probes: backends::Probes,
    /// The last listing of apps and when it was made; the lock also makes
    /// concurrent page loads share one listing.
    apps: tokio::sync::Mutex<Option<(Instant, Listing)>>,
    /// The last tenant rows and when they were built.
    tenants: parking_lot::Mutex<Option<(Instant, Arc<Vec<api::TenantRow>>)>>,
}

/// A listing of apps, or why the invoke module gave none.
type Listing = Result<Arc<Vec<AppEntry>>, String>;

/// What the dashboard needs of a request besides its head.
pub struct Request<'a> {
    /// The parsed head.
    pub head: &'a RequestHead,
    /// The peer's address.
    pub peer: SocketAddr,
    /// Our address, as the peer reached it.
    pub local: SocketAddr,
}

/// What a route needs of the daemon.
pub struct Context<'a> {
    /// The daemon, once its modules are up.
    pub daemon: Option<&'a Arc<Daemon>>,
    /// The application socket, for listing apps as a client would.
    pub socket: Option<&'a PathBuf>,
    /// The request metrics.
    pub metrics: &'a Arc<Metrics>,
}

impl Dashboard {
    /// A dashboard per the `http` settings; the token file is read now, so a
    /// missing one fails start-up instead of the first page load.
    pub fn new(enabled: bool, token_file: Option<&std::path::Path>) -> anyhow::Result<Self> {
        let token = match token_file {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    anyhow::anyhow!(
                        "reading spec.http.dashboardTokenFile {}: {e}",
                        path.display()
                    )
                })?;
                let token = text.lines().next().unwrap_or_default().trim().to_string();
                if token.len() < 16 {
                    anyhow::bail!(
                        "spec.http.dashboardTokenFile {}: the token must be at least 16 characters",
                        path.display()
                    );
                }
                Some(token)
            }
        };
        Ok(Self {
            enabled,
            token,
            history: Arc::default(),
            probes: backends::Probes::default(),
            apps: tokio::sync::Mutex::new(None),
            tenants: parking_lot::Mutex::new(None),
        })
    }

    /// Whether `path` is one of the dashboard's.
    pub fn serves(&self, path: &str) -> bool {
        self.enabled && (static_file(path).is_some() || path.starts_with("/api/"))
    }

    /// Answers a request for one of the dashboard's paths.
    pub async fn respond(&self, req: &Request<'_>, cx: &Context<'_>) -> Response {
        let path = req.head.path();
        let method = req.head.method.as_str();
        let viewer = access::viewer(req.head, req.peer, req.local, self.token.as_deref());
        if let Some(asset) = asset(path) {
            if method != "GET" && method != "HEAD" {
                return Response::not_allowed("GET, HEAD");
            }
            // The page holds no data, so with a token configured it is
            // served to anyone: a remote browser needs it to send the token.
            return match (&viewer, &self.token) {
                (Ok(_), _) | (Err(_), Some(_)) => asset,
                (Err((status, why)), None) => Response::text(*status, format!("{why}\n")),
            };
        }
        let viewer = match viewer {
            Ok(viewer) => viewer,
            Err((status, why)) => return Response::json_error(status, &why),
        };
        if let Some(module) = path
            .strip_prefix("/api/modules/")
            .and_then(|rest| rest.strip_suffix("/restart"))
        {
            if method != "POST" {
                return Response::not_allowed("POST");
            }
            return self.restart(req, viewer, module, cx).await;
        }
        if method != "GET" && method != "HEAD" {
            return Response::not_allowed("GET, HEAD");
        }
        let Some(daemon) = cx.daemon else {
            return Response::json_error(503, "modules are starting");
        };
        // Any view keeps the charts' sampling going.
        self.history.ensure_started(cx.metrics);
        let window = window(req.head);
        match path {
            "/api/overview" => Response::json(200, &api::overview(daemon)),
            "/api/viewer" => Response::json(200, &api::viewer(access::admin(viewer, daemon))),
            "/api/modules" => Response::json(200, &api::modules(daemon, &self.history)),
            "/api/components" => Response::json(200, &api::components(daemon, &self.probes).await),
            "/api/tenants" => {
                let rows = self.tenant_rows(daemon);
                Response::json(200, &api::tenants(&rows, &window))
            }
            "/api/apps" => match self.apps(cx.socket).await {
                Ok(entries) => Response::json(200, &api::apps(&entries, &window)),
                Err(why) => Response::json_error(503, &why),
            },
            "/api/events" => Response::json(200, &api::events()),
            "/api/history" => Response::json(200, &api::history(&self.history)),
            _ => Response::json_error(404, "no such view"),
        }
    }

    /// POST /api/modules/{name}/restart: a hot restart, for admins, asked
    /// by the page (never by a cross-site form or script).
    async fn restart(
        &self,
        req: &Request<'_>,
        viewer: Viewer,
        module: &str,
        cx: &Context<'_>,
    ) -> Response {
        if req.head.header(access::ACTION_HEADER) != Some("1") {
            return Response::json_error(
                403,
                &format!(
                    "a restart must carry the header {}: 1",
                    access::ACTION_HEADER
                ),
            );
        }
        let Some(daemon) = cx.daemon else {
            return Response::json_error(503, "modules are starting");
        };
        let who = match access::admin(viewer, daemon) {
            Ok(who) => who,
            Err(why) => {
                // One subject for every refused viewer, so that repeated
                // attempts (each from a new port) fold into one entry.
                events::record(
                    Kind::AdminRefused,
                    "dashboard",
                    &format!("{}: {why}", req.peer),
                );
                return Response::json_error(403, &why);
            }
        };
        tracing::info!(module, by = %who, "module restart asked from the dashboard");
        match daemon.restart_module(module, None).await {
            Ok(pid) => Response::json(200, &serde_json::json!({ "module": module, "pid": pid })),
            Err(crate::daemon::RestartError::NoSuchModule(_)) => {
                Response::json_error(404, &format!("no module named {module:?}"))
            }
            Err(e) => Response::json_error(503, &e.to_string()),
        }
    }

    /// Every tenant's row, built at most once per [`TENANTS_FRESH`]: with
    /// a thousand tenants a build takes about a millisecond, and anyone on
    /// the loopback interface may ask as often as they like.
    fn tenant_rows(&self, daemon: &Daemon) -> Arc<Vec<api::TenantRow>> {
        let mut cached = self.tenants.lock();
        match cached.as_ref() {
            Some((at, rows)) if at.elapsed() < TENANTS_FRESH => Arc::clone(rows),
            _ => {
                let rows = Arc::new(api::tenant_rows(daemon, &self.history));
                *cached = Some((Instant::now(), Arc::clone(&rows)));
                rows
            }
        }
    }

    /// The apps the invoke module lists, asked as a client on the daemon's
    /// own socket and reused for [`APPS_FRESH`].
    async fn apps(&self, socket: Option<&PathBuf>) -> Listing {
        let mut cached = self.apps.lock().await;
        if let Some((at, listing)) = cached.as_ref() {
            if at.elapsed() < APPS_FRESH {
                return listing.clone();
            }
        }
        let listing = match socket {
            None => Err("the daemon is starting".to_string()),
            Some(socket) => tokio::time::timeout(APPS_TIMEOUT, async {
                let client = mecha_client::Client::connect(socket).await?;
                client.apps().await
            })
            .await
            .map_err(|_| "the invoke module did not list apps in time".to_string())
            .and_then(|r| r.map(Arc::new).map_err(|e| e.to_string())),
        };
        *cached = Some((Instant::now(), listing.clone()));
        listing
    }
}

/// The content type and text of the static file at `path`, if it is one.
fn static_file(path: &str) -> Option<(&'static str, &'static str)> {
    match path {
        "/" | "/index.html" => Some(("text/html; charset=utf-8", INDEX_HTML)),
        "/dashboard.js" => Some(("text/javascript; charset=utf-8", SCRIPT)),
        "/dashboard.css" => Some(("text/css; charset=utf-8", STYLE)),
        _ => None,
    }
}

/// The static file at `path` as an answer, if it is one.
fn asset(path: &str) -> Option<Response> {
    static_file(path).map(|(content_type, body)| Response::new(200, content_type, body.to_string()))
}

/// The filter and window of a list request: `?q=&offset=&limit=`.
fn window(head: &RequestHead) -> api::Window {
    let number = |name: &str, default: usize| {
        head.query(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    api::Window {
        filter: percent_decoded(head.query("q").unwrap_or_default()),
        offset: number("offset", 0),
        limit: number("limit", api::DEFAULT_PAGE).min(api::MAX_PAGE),
    }
}

/// A query value with its `%XX` escapes and `+` decoded; a bad escape is
/// kept as it is.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || {
            let pair = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            u8::from_str_radix(pair, 16).ok()
        };
        match (bytes[i], hex()) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decoded("uid%3A1000"), "uid:1000");
        assert_eq!(percent_decoded("a+b%2"), "a b%2");
        assert_eq!(percent_decoded("%E2%9C%93"), "✓");
        let head = RequestHead {
            method: "GET".into(),
            target: "/api/tenants?q=pod%3A&offset=25&limit=100000".into(),
            headers: Vec::new(),
        };
        let w = window(&head);
        assert_eq!(
            (w.filter.as_str(), w.offset, w.limit),
            ("pod:", 25, api::MAX_PAGE)
        );
    }
}
