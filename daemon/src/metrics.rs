//! Request, connection and module metrics, kept in atomics on the hot path and
//! rendered as Prometheus text at scrape time (`exposition`).
//!
//! Every frame an application sends is *observed* from the moment the daemon
//! admits it until its answer has been handed to the connection's socket: the
//! observation rides inside the frame's answer guard (`Answer`, the
//! connection's `ConnOut`), so whichever path answers the request (a module,
//! the daemon itself, a deadline, a dying module) records it exactly once, when
//! the guard is dropped by the connection's writer. That keeps the router's
//! code untouched except for the two places that know an answer's status.
//!
//! Label cardinality is bounded: opcodes are labelled by name (every opcode the
//! ABI does not define shares `unknown`), statuses by name, and at most
//! `MAX_TENANTS` tenants get their own series; the rest share `(other)`.
//!
//! Module-side metrics (a driver's own counters) are not exported yet: that
//! needs a link message for modules to report them, which is out of scope here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::{Family, Opcode, Status};
use parking_lot::RwLock;

/// Tenants that get series of their own; later ones are counted as `(other)`.
pub const MAX_TENANTS: usize = 1000;
/// The tenant label of tenants past `MAX_TENANTS`. The parentheses keep it from
/// colliding with a configured tenant name or a `uid:<n>` tenant.
pub const OTHER_TENANT: &str = "(other)";
/// Upper bounds (seconds) of the latency histogram buckets: from the tens of
/// microseconds a Unix-socket round trip takes to the seconds a blocking lock
/// acquire or an admin operation may take.
pub const BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];
/// In-flight gauges, indexed by family byte (state 0x01 to bindings 0x08);
/// families above are not modules.
const FAMILY_SLOTS: usize = 9;

/// Counters of one (tenant, opcode) pair.
#[derive(Debug)]
pub struct OpStats {
    label: &'static str,
    /// The family of the opcode, `None` for the shared `unknown` series.
    family: Option<Family>,
    requests: AtomicU64,
    /// Answers by status code; index 0 (OK) stays unused.
    errors: [AtomicU64; Status::ALL.len()],
    /// Non-cumulative bucket counts; the last one is +Inf.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    /// The daemon-wide in-flight gauges, one per family.
    in_flight: Arc<[AtomicI64; FAMILY_SLOTS]>,
}

impl OpStats {
    fn new(
        label: &'static str,
        family: Option<Family>,
        in_flight: Arc<[AtomicI64; FAMILY_SLOTS]>,
    ) -> Self {
        Self {
            label,
            family,
            requests: AtomicU64::new(0),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
            in_flight,
        }
    }

    fn record(&self, status: u16, elapsed: Duration) {
        // Relaxed ordering suffices: each counter is read on its own at scrape
        // time, and a scrape racing an answer may see either value.
        self.requests.fetch_add(1, Ordering::Relaxed);
        if status != Status::Ok.code() {
            let index = Status::from_code(status).code() as usize;
            if let Some(counter) = self.errors.get(index) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
        let secs = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }
}

/// The series of one tenant.
#[derive(Debug)]
pub struct TenantMetrics {
    name: String,
    /// Opcodes this tenant has used; a handful, so a scan beats hashing.
    ops: RwLock<Vec<Arc<OpStats>>>,
    in_flight: Arc<[AtomicI64; FAMILY_SLOTS]>,
}

impl TenantMetrics {
    fn new(name: String, in_flight: Arc<[AtomicI64; FAMILY_SLOTS]>) -> Self {
        Self {
            name,
            ops: RwLock::new(Vec::new()),
            in_flight,
        }
    }

    fn op(&self, opcode: Opcode) -> Arc<OpStats> {
        // Every opcode the ABI does not define shares one series, so a client
        // sending random opcodes cannot grow the label set.
        let label = opcode.name().unwrap_or("unknown");
        if let Some(op) = self.ops.read().iter().find(|o| o.label == label) {
            return Arc::clone(op);
        }
        let mut ops = self.ops.write();
        if let Some(op) = ops.iter().find(|o| o.label == label) {
            return Arc::clone(op);
        }
        let family = opcode.name().map(|_| opcode.family());
        let op = Arc::new(OpStats::new(label, family, Arc::clone(&self.in_flight)));
        ops.push(Arc::clone(&op));
        op
    }
}

/// A request being timed; recorded when its `Answer` is dropped.
#[derive(Debug)]
struct Observation {
    op: Arc<OpStats>,
    started: Instant,
    status: u16,
    /// The in-flight gauge this request holds up, for module families: a
    /// family byte (small, so that the guard every queued frame carries
    /// stays small).
    family: Option<u8>,
}

/// What every frame queued for an application connection carries until it is
/// written: the quota permits (`quota::Guard`) and, for the answer to a
/// request, the observation that records its count, status and latency.
#[derive(Debug)]
pub struct Answer {
    quota: crate::quota::Guard,
    observation: Option<Observation>,
    /// The request's span (`crate::trace`), ended with the answer's status.
    span: Option<Box<crate::trace::Span>>,
    /// The answer is not for the application: the daemon re-opened one of
    /// its streams on a new module instance (`handover`), and the
    /// application already had the stream's opening answer.
    silent: bool,
}

impl Answer {
    /// A guard holding only a connection (or push) permit; nothing is recorded.
    pub fn new(permit: tokio::sync::OwnedSemaphorePermit) -> Self {
        Self {
            quota: crate::quota::Guard::new(permit),
            observation: None,
            span: None,
            silent: false,
        }
    }

    /// Marks the answer as the daemon's own business (see `silent`).
    pub fn silent(mut self) -> Self {
        self.silent = true;
        self
    }

    /// True when the answer must not reach the application.
    pub fn is_silent(&self) -> bool {
        self.silent
    }

    /// Holds `bytes` of the connection's output budget until written.
    pub fn holding(mut self, bytes: Option<crate::budget::Held>) -> Self {
        self.quota.hold(bytes);
        self
    }

    /// The quota part, to which tenant permits are added on admission.
    pub fn quota_mut(&mut self) -> &mut crate::quota::Guard {
        &mut self.quota
    }

    /// Starts timing the request with `opcode` of `tenant`; its answer is
    /// counted as OK unless `answered` says otherwise.
    pub fn observed(mut self, tenant: &TenantMetrics, opcode: Opcode) -> Self {
        let op = tenant.op(opcode);
        let family = match opcode.family() {
            Family::Control | Family::Link | Family::Peer | Family::Unknown(_) => None,
            f => Some(f.byte()).filter(|slot| usize::from(*slot) < FAMILY_SLOTS),
        };
        if let Some(slot) = family {
            op.in_flight[usize::from(slot)].fetch_add(1, Ordering::Relaxed);
        }
        self.observation = Some(Observation {
            op,
            started: Instant::now(),
            status: Status::Ok.code(),
            family,
        });
        self
    }

    /// Notes the status of the answer this guard travels with.
    pub fn answered(mut self, status: u16) -> Self {
        if let Some(obs) = &mut self.observation {
            obs.status = status;
        }
        self
    }

    /// Attaches the request's span, ended when the answer is written.
    pub fn traced(&mut self, span: Option<Box<crate::trace::Span>>) {
        self.span = span;
    }

    /// The trace context to forward with the request: its span as parent.
    pub fn trace_context(&self) -> Option<mecha_abi::TraceContext> {
        self.span.as_ref().map(|s| s.context())
    }

    /// Names the module serving the request in its span.
    pub fn set_module(&mut self, name: &str) {
        if let Some(span) = &mut self.span {
            span.set_module(name);
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        if let Some(span) = self.span.take() {
            let status = self.observation.as_ref().map_or(0, |o| o.status);
            span.finish(status);
        }
        if let Some(obs) = self.observation.take() {
            obs.op.record(obs.status, obs.started.elapsed());
            if let Some(slot) = obs.family {
                obs.op.in_flight[usize::from(slot)].fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}

/// Counts an open connection until dropped.
pub struct ConnectionCount(Arc<Metrics>);

impl Drop for ConnectionCount {
    fn drop(&mut self) {
        self.0.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    tenants: RwLock<HashMap<String, Arc<TenantMetrics>>>,
    other: Arc<TenantMetrics>,
    in_flight: Arc<[AtomicI64; FAMILY_SLOTS]>,
    connections_open: AtomicI64,
    connections_accepted: AtomicU64,
    http_requests: AtomicU64,
    invoke_routed: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        let in_flight: Arc<[AtomicI64; FAMILY_SLOTS]> =
            Arc::new(std::array::from_fn(|_| AtomicI64::new(0)));
        Self {
            tenants: RwLock::new(HashMap::new()),
            other: Arc::new(TenantMetrics::new(
                OTHER_TENANT.to_string(),
                Arc::clone(&in_flight),
            )),
            in_flight,
            connections_open: AtomicI64::new(0),
            connections_accepted: AtomicU64::new(0),
            http_requests: AtomicU64::new(0),
            invoke_routed: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// The series of tenant `name`, shared by all its connections; past
    /// `MAX_TENANTS` distinct tenants, the shared `(other)` series.
    pub fn tenant(&self, name: &str) -> Arc<TenantMetrics> {
        if let Some(t) = self.tenants.read().get(name) {
            return Arc::clone(t);
        }
        let mut tenants = self.tenants.write();
        if let Some(t) = tenants.get(name) {
            return Arc::clone(t);
        }
        if tenants.len() >= MAX_TENANTS {
            return Arc::clone(&self.other);
        }
        let t = Arc::new(TenantMetrics::new(
            name.to_string(),
            Arc::clone(&self.in_flight),
        ));
        tenants.insert(name.to_string(), Arc::clone(&t));
        t
    }

    /// Counts an accepted connection, open until the result is dropped.
    pub fn connection(self: &Arc<Self>) -> ConnectionCount {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
        ConnectionCount(Arc::clone(self))
    }

    /// Counts one request to the HTTP endpoint.
    pub fn http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of every (tenant, opcode) pair, sorted, as read now.
    pub fn ops(&self) -> Vec<OpSnapshot> {
        let mut tenants: Vec<Arc<TenantMetrics>> = self.tenants.read().values().cloned().collect();
        tenants.push(Arc::clone(&self.other));
        let mut ops = Vec::new();
        for t in &tenants {
            for op in t.ops.read().iter() {
                let buckets: Vec<u64> = op
                    .buckets
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .collect();
                ops.push(OpSnapshot {
                    tenant: t.name.clone(),
                    opcode: op.label,
                    family: op.family,
                    requests: op.requests.load(Ordering::Relaxed),
                    errors: Status::ALL
                        .iter()
                        .filter_map(|s| {
                            let n = op.errors[s.code() as usize].load(Ordering::Relaxed);
                            (n > 0).then_some((s.name(), n))
                        })
                        .collect(),
                    count: buckets.iter().sum(),
                    buckets,
                    sum_secs: op.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
                });
            }
        }
        ops.sort_by(|a, b| (&a.tenant, a.opcode).cmp(&(&b.tenant, b.opcode)));
        ops
    }

    /// Requests admitted for the module of `family` and not yet answered.
    pub fn module_in_flight(&self, family: Family) -> i64 {
        self.in_flight
            .get(usize::from(family.byte()))
            .map(|g| g.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// Application connections open now.
    pub fn connections_open(&self) -> i64 {
        self.connections_open.load(Ordering::Relaxed)
    }

    /// Counts an INVOKE the daemon delivered on a direct route.
    pub fn invoke_routed(&self) {
        self.invoke_routed.fetch_add(1, Ordering::Relaxed);
    }

    /// INVOKE requests delivered on direct routes since start.
    pub fn invoke_routed_total(&self) -> u64 {
        self.invoke_routed.load(Ordering::Relaxed)
    }

    /// Application connections accepted since start.
    pub fn connections_accepted(&self) -> u64 {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    /// Requests to the HTTP endpoint since start.
    pub fn http_requests(&self) -> u64 {
        self.http_requests.load(Ordering::Relaxed)
    }
}

/// The counters of one (tenant, opcode) pair at one scrape.
#[derive(Debug)]
pub struct OpSnapshot {
    /// The tenant label.
    pub tenant: String,
    /// The opcode label.
    pub opcode: &'static str,
    /// The opcode's family, `None` for opcodes the ABI does not define.
    pub family: Option<Family>,
    /// Requests answered.
    pub requests: u64,
    /// Answers other than OK, by status name.
    pub errors: Vec<(&'static str, u64)>,
    /// Non-cumulative latency bucket counts (`BUCKETS`, then +Inf).
    pub buckets: Vec<u64>,
    /// Their sum.
    pub count: u64,
    /// Total latency in seconds.
    pub sum_secs: f64,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A permit of its own, for a guard in a test.
    pub(crate) fn permit() -> tokio::sync::OwnedSemaphorePermit {
        Arc::new(tokio::sync::Semaphore::new(1))
            .try_acquire_owned()
            .unwrap()
    }

    #[test]
    fn in_flight_follows_the_guard() {
        let metrics = Metrics::default();
        let tenant = metrics.tenant("t");
        let answer = Answer::new(permit()).observed(&tenant, Opcode::LOCK_TRY_LOCK);
        let slot = usize::from(Family::Lock.byte());
        assert_eq!(metrics.in_flight[slot].load(Ordering::Relaxed), 1);
        drop(answer);
        assert_eq!(metrics.in_flight[slot].load(Ordering::Relaxed), 0);
        // Every module family has its gauge, the last one too.
        let answer = Answer::new(permit()).observed(&tenant, Opcode::BINDING_INVOKE);
        assert_eq!(metrics.module_in_flight(Family::Bindings), 1);
        drop(answer);
        assert_eq!(metrics.module_in_flight(Family::Bindings), 0);
    }

    #[test]
    fn tenants_and_opcodes_are_bounded() {
        let metrics = Metrics::default();
        for i in 0..MAX_TENANTS + 5 {
            metrics.tenant(&format!("uid:{i}"));
        }
        assert_eq!(metrics.tenant("late").name, OTHER_TENANT);
        assert_eq!(metrics.tenant("uid:3").name, "uid:3");
        let t = metrics.tenant("uid:3");
        assert!(Arc::ptr_eq(&t.op(Opcode(0x7777)), &t.op(Opcode(0x7778))));
        assert_eq!(t.op(Opcode(0x7777)).label, "unknown");
    }
}
