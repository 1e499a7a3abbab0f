//! The dashboard's JSON views (`/api/…`): overview, modules, components,
//! tenants, apps, events and history. Each is built from what the daemon
//! already keeps (module slots, quota registry, metrics, the event list) at
//! the moment it is asked for; lists that tenants can grow (tenants, apps)
//! are paginated, so a page of the dashboard costs the same with 1,000
//! tenants as with ten.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use mecha_abi::msg::AppEntry;
use serde::Serialize;

use super::backends::{self, Probes};
use crate::daemon::Daemon;
use crate::events::{self, Event};
use crate::history::{History, Point, Rate};
use crate::quota::Usage;
use crate::supervisor::Route;

/// Rows one page of a list may hold.
pub const MAX_PAGE: usize = 200;
/// Rows a page holds when the request does not say.
pub const DEFAULT_PAGE: usize = 25;
/// Events the event view returns.
const EVENTS_SHOWN: usize = 300;

/// `/api/overview`: the daemon and who is looking.
#[derive(Serialize)]
pub struct Overview {
    version: &'static str,
    pid: u32,
    uptime_s: u64,
    connections_open: i64,
    connections_accepted: u64,
    /// Tenants seen since the last reload.
    tenants: usize,
    modules_running: usize,
    modules: usize,
}

/// Builds the overview.
pub fn overview(daemon: &Daemon) -> Overview {
    let status = daemon.status();
    let running = status
        .modules
        .iter()
        .filter(|m| m.state == "running")
        .count();
    Overview {
        version: env!("CARGO_PKG_VERSION"),
        pid: status.pid,
        uptime_s: status.uptime_ms / 1000,
        connections_open: daemon.metrics.connections_open(),
        connections_accepted: daemon.metrics.connections_accepted(),
        tenants: daemon.quotas.read().usages().len(),
        modules_running: running,
        modules: status.modules.len(),
    }
}

/// `/api/viewer`: whether the viewer may restart modules, and as whom or
/// why not.
#[derive(Serialize)]
pub struct ViewerView {
    admin: bool,
    detail: String,
}

/// Builds the viewer view from the viewer's admin check.
pub fn viewer(admin: Result<String, String>) -> ViewerView {
    match admin {
        Ok(who) => ViewerView {
            admin: true,
            detail: format!("admin ({who})"),
        },
        Err(why) => ViewerView {
            admin: false,
            detail: why,
        },
    }
}

/// One row of `/api/modules`.
#[derive(Serialize)]
pub struct ModuleRow {
    name: String,
    state: String,
    pid: u32,
    uptime_s: Option<u64>,
    restarts: u32,
    last_exit: Option<String>,
    next_try_ms: Option<u64>,
    in_flight: i64,
    #[serde(flatten)]
    rate: Rate,
    rss_bytes: Option<u64>,
    components: Vec<String>,
}

/// Every module, in start order.
pub fn modules(daemon: &Daemon, history: &History) -> Vec<ModuleRow> {
    let rates = history.family_rates();
    let slots = daemon.modules.read().clone();
    slots
        .iter()
        .map(|slot| {
            let status = slot.status();
            let detail = slot.detail();
            ModuleRow {
                rss_bytes: (status.pid != 0).then(|| rss(status.pid)).flatten(),
                name: status.name,
                state: status.state,
                pid: status.pid,
                uptime_s: detail.uptime.map(|d| d.as_secs()),
                restarts: status.restarts,
                last_exit: detail.last_exit,
                next_try_ms: detail.next_try_in.map(millis),
                in_flight: slot
                    .family
                    .map_or(0, |f| daemon.metrics.module_in_flight(f)),
                rate: slot
                    .family
                    .and_then(|f| rates.get(&f.byte()).cloned())
                    .unwrap_or_default(),
                components: status.components,
            }
        })
        .collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The resident memory of process `pid`, from `/proc/<pid>/status`.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// One row of `/api/components`.
#[derive(Serialize)]
pub struct ComponentRow {
    name: String,
    kind: String,
    driver: String,
    module: String,
    /// The networked backend's `host:port`, for networked drivers.
    backend: Option<String>,
    /// Whether it accepted a TCP connection just now.
    reachable: Option<bool>,
    /// Who may use it, in words.
    tenants: String,
}

/// Every component of every module; metadata values are not shown (they
/// may hold credentials), only the backend's address and who may use it.
pub async fn components(daemon: &Daemon, probes: &Probes) -> Vec<ComponentRow> {
    let slots = daemon.modules.read().clone();
    let mut rows = Vec::new();
    for slot in &slots {
        for spec in slot.spec().components {
            let backend = backends::address(&spec.kind, &spec.metadata);
            let reachable = match &backend {
                Some(address) => Some(probes.reachable(address).await),
                None => None,
            };
            let field = |name: &str| {
                spec.metadata
                    .iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.clone())
            };
            let tenants = match (field("allowedTenants"), field("sharedTenants")) {
                (Some(allowed), _) => format!("only: {allowed}"),
                (None, Some(shared)) => format!("shared by: {shared}; others apart"),
                (None, None) if slot.family == Some(mecha_abi::Family::Secrets) => {
                    "the daemon's own uid only".to_string()
                }
                (None, None) => "every tenant, each in its own namespace".to_string(),
            };
            rows.push(ComponentRow {
                driver: spec
                    .kind
                    .rsplit_once('.')
                    .map_or("", |(_, d)| d)
                    .to_string(),
                name: spec.name,
                kind: spec.kind,
                module: slot.name.clone(),
                backend,
                reachable,
                tenants,
            });
        }
    }
    rows
}

/// One row of `/api/tenants`.
#[derive(Serialize)]
pub struct TenantRow {
    name: String,
    /// `uid`, `pod`, `named` (a tenant rule of the configuration) or
    /// `other` (the metrics series that tenants past the first thousand share).
    kind: &'static str,
    usage: Option<Usage>,
    /// Streams open (subscriptions, watches, registrations, lock waits).
    streams: usize,
    requests: u64,
    rate: f64,
    /// Answers other than OK since the daemon started, by status name.
    refused: BTreeMap<&'static str, u64>,
}

/// A page of `/api/tenants` or `/api/apps`.
#[derive(Serialize)]
pub struct Page<T> {
    /// Rows matching the filter, over all pages.
    total: usize,
    offset: usize,
    items: Vec<T>,
}

/// What a list request asks for: a filter and a window.
pub struct Window {
    /// Only rows whose name contains this.
    pub filter: String,
    /// The first row.
    pub offset: usize,
    /// How many rows, at most [`MAX_PAGE`].
    pub limit: usize,
}

/// A page of tenants busiest first (requests per second, then total), from
/// `rows` (see [`tenant_rows`]).
pub fn tenants<'a>(rows: &'a [TenantRow], window: &Window) -> Page<&'a TenantRow> {
    page(
        rows.iter()
            .filter(|t| t.name.contains(window.filter.as_str())),
        window,
    )
}

/// Every tenant the daemon knows, busiest first: from the quota registry
/// (tenants seen since the last reload) and the metrics (since start).
pub fn tenant_rows(daemon: &Daemon, history: &History) -> Vec<TenantRow> {
    let rates = history.tenant_rates();
    let mut streams = HashMap::new();
    for slot in daemon.modules.read().iter() {
        if let Route::Up(link) = slot.route() {
            link.count_streams(&mut streams);
        }
    }
    let row = |name: String, usage: Option<Usage>| TenantRow {
        rate: rates.get(&name).copied().unwrap_or(0.0),
        kind: tenant_kind(&name),
        streams: streams.get(name.as_bytes()).copied().unwrap_or(0),
        name,
        usage,
        requests: 0,
        refused: BTreeMap::new(),
    };
    let mut rows: HashMap<String, TenantRow> = daemon
        .quotas
        .read()
        .usages()
        .into_iter()
        .map(|(name, usage)| (name.clone(), row(name, Some(usage))))
        .collect();
    for op in daemon.metrics.ops() {
        let t = rows
            .entry(op.tenant.clone())
            .or_insert_with(|| row(op.tenant, None));
        t.requests += op.requests;
        for (status, n) in op.errors {
            *t.refused.entry(status).or_default() += n;
        }
    }
    let mut rows: Vec<TenantRow> = rows.into_values().collect();
    rows.sort_by(|a, b| {
        b.rate
            .total_cmp(&a.rate)
            .then(b.requests.cmp(&a.requests))
            .then(a.name.cmp(&b.name))
    });
    rows
}

fn tenant_kind(name: &str) -> &'static str {
    if name == crate::metrics::OTHER_TENANT {
        "other"
    } else if name.starts_with("uid:") {
        "uid"
    } else if name.starts_with("pod:") {
        "pod"
    } else {
        "named"
    }
}

/// The rows of `rows` in `window`, and how many there are.
fn page<'a, T>(rows: impl Iterator<Item = &'a T>, window: &Window) -> Page<&'a T> {
    let rows: Vec<&T> = rows.collect();
    let total = rows.len();
    let items = rows
        .into_iter()
        .skip(window.offset)
        .take(window.limit.min(MAX_PAGE))
        .collect();
    Page {
        total,
        offset: window.offset,
        items,
    }
}

/// A page of registered apps, as the invoke module lists them.
pub fn apps<'a>(entries: &'a [AppEntry], window: &Window) -> Page<&'a AppEntry> {
    page(
        entries
            .iter()
            .filter(|e| e.app_id.contains(window.filter.as_str())),
        window,
    )
}

/// The newest events, newest first.
pub fn events() -> Vec<Event> {
    events::newest(EVENTS_SHOWN)
}

/// `/api/history`: the node-wide points of the last minutes.
#[derive(Serialize)]
pub struct HistoryView {
    interval_ms: u64,
    points: Vec<Point>,
}

/// The node-wide chart points (the sampler runs from the first view on).
pub fn history(history: &History) -> HistoryView {
    HistoryView {
        interval_ms: millis(crate::history::INTERVAL),
        points: history.points(),
    }
}
