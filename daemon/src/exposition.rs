//! The Prometheus text exposition of `/metrics`: the daemon's counters
//! (`metrics`) and the modules' state, read at scrape time and encoded by
//! `prometheus-client`.

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::daemon::Daemon;
use crate::metrics::{Metrics, OpSnapshot, BUCKETS};

/// Module states a slot can be in (`supervisor.rs`); each gets a 0/1 series.
const MODULE_STATES: [&str; 6] = [
    "idle",
    "starting",
    "running",
    "restarting",
    "backoff",
    "stopped",
];

/// Prometheus text exposition (format 0.0.4) of everything, reading module
/// state and memory now. `daemon` is `None` while modules are starting.
pub fn render(metrics: &Metrics, daemon: Option<&Daemon>) -> String {
    let snapshot = snapshot(metrics, daemon);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(snapshot));
    let mut text = String::with_capacity(16 * 1024);
    // Writing into a String cannot fail, and the collector only fails when
    // its writer does; an error would leave a truncated page, not a panic.
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::warn!("encoding metrics failed: {e}");
    }
    text
}

fn snapshot(metrics: &Metrics, daemon: Option<&Daemon>) -> Snapshot {
    let modules = daemon
        .map(|d| {
            d.modules
                .read()
                .iter()
                .map(|slot| {
                    let status = slot.status();
                    ModuleSnapshot {
                        rss_bytes: (status.pid != 0)
                            .then(|| resident_bytes(status.pid))
                            .flatten(),
                        in_flight: slot.family.map_or(0, |f| metrics.module_in_flight(f)),
                        name: status.name,
                        state: status.state,
                        restarts: status.restarts,
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Snapshot {
        ready: daemon.is_some_and(|d| not_running(d).is_empty()),
        ops: metrics.ops(),
        modules,
        connections_open: metrics.connections_open(),
        connections_accepted: metrics.connections_accepted(),
        http_requests: metrics.http_requests(),
        invoke_routed: metrics.invoke_routed_total(),
        invoke_routes: daemon
            .and_then(|d| d.module_for(mecha_abi::Family::Invoke))
            .and_then(|m| match m.route() {
                crate::supervisor::Route::Up(link) => Some(link.route_count()),
                _ => None,
            })
            .unwrap_or(0),
        daemon_rss_bytes: resident_bytes(std::process::id()),
        uptime_secs: daemon.map(|d| d.started.elapsed().as_secs_f64()),
        spans_dropped: daemon
            .and_then(|d| d.tracer.as_ref())
            .map(|t| t.dropped.load(Ordering::Relaxed)),
    }
}

/// Modules that are not `running`, with their state: empty means ready.
pub fn not_running(daemon: &Daemon) -> Vec<(String, String)> {
    daemon
        .modules
        .read()
        .iter()
        .map(|slot| slot.status())
        // An idle (lazy) module is ready: its first request starts it.
        .filter(|s| s.state != "running" && s.state != "idle")
        .map(|s| (s.name, s.state))
        .collect()
}

/// Resident memory of process `pid` (VmRSS in /proc/<pid>/status), if it can
/// be read; a process that just exited simply has no value.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[derive(Debug)]
struct ModuleSnapshot {
    name: String,
    state: String,
    restarts: u32,
    rss_bytes: Option<u64>,
    in_flight: i64,
}

/// Values read at one scrape, encoded by `prometheus-client`.
#[derive(Debug)]
struct Snapshot {
    ready: bool,
    ops: Vec<OpSnapshot>,
    modules: Vec<ModuleSnapshot>,
    connections_open: i64,
    connections_accepted: u64,
    http_requests: u64,
    invoke_routed: u64,
    invoke_routes: usize,
    daemon_rss_bytes: Option<u64>,
    uptime_secs: Option<f64>,
    /// Spans lost by the exporter, when tracing is configured.
    spans_dropped: Option<u64>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        self.encode_daemon(&mut encoder)?;
        self.encode_connections(&mut encoder)?;
        self.encode_requests(&mut encoder)?;
        self.encode_modules(&mut encoder)
    }
}

impl Snapshot {
    /// Build, readiness, uptime, memory and tracing of the daemon itself.
    fn encode_daemon(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let version = [("version", env!("CARGO_PKG_VERSION"))];
        let mut m = encoder.encode_descriptor(
            "mecha_build_info",
            "The daemon's version; always 1.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_family(&version)?.encode_gauge(&1u64)?;

        let mut m = encoder.encode_descriptor(
            "mecha_ready",
            "1 when every configured module is running (what /readyz reports).",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&u64::from(self.ready))?;

        if let Some(uptime) = self.uptime_secs {
            let mut m = encoder.encode_descriptor(
                "mecha_uptime_seconds",
                "Seconds since the daemon started.",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&uptime)?;
        }
        if let Some(rss) = self.daemon_rss_bytes {
            let mut m = encoder.encode_descriptor(
                "mecha_daemon_resident_memory_bytes",
                "Resident memory of mechad itself (VmRSS).",
                None,
                MetricType::Gauge,
            )?;
            m.encode_gauge(&rss)?;
        }

        if let Some(dropped) = self.spans_dropped {
            let mut m = encoder.encode_descriptor(
                "mecha_trace_spans_dropped",
                "Request spans not exported: the export queue was full or the collector failed.",
                None,
                MetricType::Counter,
            )?;
            m.encode_counter::<NoLabelSet, _, u64>(&dropped, None)?;
        }
        Ok(())
    }

    /// Application connections and HTTP requests.
    fn encode_connections(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "mecha_connections_open",
            "Application connections open now.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&self.connections_open)?;
        let mut m = encoder.encode_descriptor(
            "mecha_connections_accepted",
            "Application connections accepted since start.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&self.connections_accepted, None)?;
        let mut m = encoder.encode_descriptor(
            "mecha_http_requests",
            "Requests to this HTTP endpoint (probes and scrapes).",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&self.http_requests, None)?;
        let mut m = encoder.encode_descriptor(
            "mecha_invoke_routed_calls",
            "INVOKE requests delivered by the daemon on a direct route the invoke module granted.",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&self.invoke_routed, None)?;
        let mut m = encoder.encode_descriptor(
            "mecha_invoke_routes",
            "Direct routes the running invoke module has granted the daemon.",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&(self.invoke_routes as u64))?;
        Ok(())
    }

    /// Requests by tenant and opcode: counts, errors by status, latency.
    fn encode_requests(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "mecha_requests",
            "Requests answered, by tenant and opcode (every status).",
            None,
            MetricType::Counter,
        )?;
        for op in &self.ops {
            let labels = [("tenant", op.tenant.as_str()), ("opcode", op.opcode)];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&op.requests, None)?;
        }
        let mut m = encoder.encode_descriptor(
            "mecha_request_errors",
            "Requests answered with a status other than OK, by tenant, opcode and status.",
            None,
            MetricType::Counter,
        )?;
        for op in &self.ops {
            for (status, n) in &op.errors {
                let labels = [
                    ("tenant", op.tenant.as_str()),
                    ("opcode", op.opcode),
                    ("status", status),
                ];
                m.encode_family(&labels)?
                    .encode_counter::<NoLabelSet, _, u64>(n, None)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "mecha_request_duration_seconds",
            "Time from the daemon admitting a request frame to its answer being written to the application's socket.",
            None,
            MetricType::Histogram,
        )?;
        for op in &self.ops {
            let labels = [("tenant", op.tenant.as_str()), ("opcode", op.opcode)];
            let buckets: Vec<(f64, u64)> = BUCKETS
                .iter()
                .copied()
                .chain([f64::INFINITY])
                .zip(op.buckets.iter().copied())
                .collect();
            m.encode_family(&labels)?.encode_histogram::<NoLabelSet>(
                op.sum_secs,
                op.count,
                &buckets,
                None,
            )?;
        }
        Ok(())
    }

    /// Each module's state, restarts, memory and requests in flight.
    fn encode_modules(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut m = encoder.encode_descriptor(
            "mecha_module_state",
            "1 for the state each module is in, 0 for the others.",
            None,
            MetricType::Gauge,
        )?;
        for module in &self.modules {
            // A state this list does not know yet still gets its series, so
            // every module always has exactly one state at 1.
            let extra =
                (!MODULE_STATES.contains(&module.state.as_str())).then_some(module.state.as_str());
            for state in MODULE_STATES.into_iter().chain(extra) {
                let labels = [("module", module.name.as_str()), ("state", state)];
                m.encode_family(&labels)?
                    .encode_gauge(&u64::from(module.state == state))?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "mecha_module_restarts",
            "Restarts of each module (crash restarts and hot restarts).",
            None,
            MetricType::Counter,
        )?;
        for module in &self.modules {
            let labels = [("module", module.name.as_str())];
            m.encode_family(&labels)?
                .encode_counter::<NoLabelSet, _, u64>(&u64::from(module.restarts), None)?;
        }
        let mut m = encoder.encode_descriptor(
            "mecha_module_resident_memory_bytes",
            "Resident memory of each running module process (VmRSS).",
            None,
            MetricType::Gauge,
        )?;
        for module in &self.modules {
            if let Some(rss) = module.rss_bytes {
                let labels = [("module", module.name.as_str())];
                m.encode_family(&labels)?.encode_gauge(&rss)?;
            }
        }
        let mut m = encoder.encode_descriptor(
            "mecha_module_in_flight_requests",
            "Requests for each module that the daemon has admitted and not yet answered.",
            None,
            MetricType::Gauge,
        )?;
        for module in &self.modules {
            let labels = [("module", module.name.as_str())];
            m.encode_family(&labels)?.encode_gauge(&module.in_flight)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::permit;
    use crate::metrics::Answer;
    use mecha_abi::{Opcode, Status};

    #[test]
    fn answers_are_counted_by_status_and_bucket() {
        let metrics = Metrics::default();
        let tenant = metrics.tenant("t");
        drop(Answer::new(permit()).observed(&tenant, Opcode::STATE_SET));
        drop(
            Answer::new(permit())
                .observed(&tenant, Opcode::STATE_SET)
                .answered(Status::EtagMismatch.code()),
        );
        // A push carries no observation and is not a request.
        drop(Answer::new(permit()));
        let text = render(&metrics, None);
        assert!(
            text.contains("mecha_requests_total{tenant=\"t\",opcode=\"STATE_SET\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("mecha_request_errors_total{tenant=\"t\",opcode=\"STATE_SET\",status=\"ETAG_MISMATCH\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "mecha_request_duration_seconds_count{tenant=\"t\",opcode=\"STATE_SET\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("le=\"+Inf\""), "{text}");
    }

    #[test]
    fn tenant_label_values_are_escaped() {
        let metrics = Metrics::default();
        let tenant = metrics.tenant("we\"ird\\name");
        drop(Answer::new(permit()).observed(&tenant, Opcode::PING));
        let text = render(&metrics, None);
        assert!(text.contains(r#"tenant="we\"ird\\name""#), "{text}");
    }
}
