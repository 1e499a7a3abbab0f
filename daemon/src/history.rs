//! The last minutes of the node's request rate and latency, sampled once a
//! second from the request metrics, for the dashboard's live charts and its
//! per-module and per-tenant rates.
//!
//! Sampling starts the first time the dashboard asks for it, so a daemon
//! whose dashboard nobody opens pays nothing. Memory is bounded: [`POINTS`]
//! node-wide points, and [`WINDOW`] + 1 snapshots of per-family and
//! per-tenant counters, whose tenant count `metrics::MAX_TENANTS` bounds.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

use crate::metrics::{Metrics, OpSnapshot, BUCKETS};

/// How often the counters are sampled.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// Node-wide points kept: five minutes at one a second.
pub const POINTS: usize = 300;
/// Rates are taken over this many intervals, so one quiet second does not
/// make a busy module look idle.
const WINDOW: usize = 5;

/// Requests, errors and latency buckets, cumulative since the daemon started.
#[derive(Clone, Default)]
struct Counts {
    requests: u64,
    errors: u64,
    buckets: Vec<u64>,
}

impl Counts {
    fn add(&mut self, op: &OpSnapshot) {
        self.requests += op.requests;
        self.errors += op.errors.iter().map(|(_, n)| n).sum::<u64>();
        if self.buckets.len() < op.buckets.len() {
            self.buckets.resize(op.buckets.len(), 0);
        }
        for (sum, n) in self.buckets.iter_mut().zip(&op.buckets) {
            *sum += n;
        }
    }

    /// What happened between `earlier` and `self`.
    fn since(&self, earlier: &Counts) -> Counts {
        Counts {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.buckets.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// One sample of every counter.
struct Snapshot {
    at: Instant,
    node: Counts,
    /// By family byte.
    families: HashMap<u8, Counts>,
    /// Requests by tenant.
    tenants: HashMap<String, u64>,
}

impl Snapshot {
    fn take(metrics: &Metrics) -> Self {
        let mut snapshot = Snapshot {
            at: Instant::now(),
            node: Counts::default(),
            families: HashMap::new(),
            tenants: HashMap::new(),
        };
        for op in metrics.ops() {
            snapshot.node.add(&op);
            if let Some(family) = op.family {
                snapshot.families.entry(family.byte()).or_default().add(&op);
            }
            *snapshot.tenants.entry(op.tenant.clone()).or_default() += op.requests;
        }
        snapshot
    }
}

/// One point of the node-wide charts.
#[derive(Clone, Debug, Serialize)]
pub struct Point {
    /// Wall-clock time, ms since the Unix epoch.
    pub t_ms: u64,
    /// Requests answered per second.
    pub rate: f64,
    /// Answers other than OK per second.
    pub errors: f64,
    /// Median latency in ms over the interval, when anything was answered.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms over the interval.
    pub p99_ms: Option<f64>,
}

/// The rate and latency of one module over the last few seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Rate {
    /// Requests answered per second.
    pub rate: f64,
    /// Median latency in ms.
    pub p50_ms: Option<f64>,
    /// 99th percentile latency in ms.
    pub p99_ms: Option<f64>,
}

#[derive(Default)]
struct State {
    points: VecDeque<Point>,
    /// The newest `WINDOW + 1` snapshots, oldest first.
    recent: VecDeque<Snapshot>,
}

impl State {
    /// The oldest and newest snapshots of the window and the seconds
    /// between them, once there are any.
    fn window(&self) -> Option<(&Snapshot, &Snapshot, f64)> {
        let (oldest, newest) = (self.recent.front()?, self.recent.back()?);
        Some((
            oldest,
            newest,
            newest.at.duration_since(oldest.at).as_secs_f64(),
        ))
    }
}

/// The sampled history; see the module documentation.
#[derive(Default)]
pub struct History {
    state: Mutex<State>,
    started: OnceLock<()>,
}

impl History {
    /// Starts sampling `metrics` once a second, unless already started.
    pub fn ensure_started(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        if self.started.set(()).is_err() {
            return;
        }
        let (history, metrics) = (Arc::clone(self), Arc::clone(metrics));
        history.sample(&metrics);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                history.sample(&metrics);
            }
        });
    }

    /// Takes one sample and derives the newest point from it.
    fn sample(&self, metrics: &Metrics) {
        let snapshot = Snapshot::take(metrics);
        let mut state = self.state.lock();
        if let Some(previous) = state.recent.back() {
            let seconds = snapshot.at.duration_since(previous.at).as_secs_f64();
            let delta = snapshot.node.since(&previous.node);
            if seconds > 0.0 {
                let t_ms = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                if state.points.len() >= POINTS {
                    state.points.pop_front();
                }
                state.points.push_back(Point {
                    t_ms,
                    rate: delta.requests as f64 / seconds,
                    errors: delta.errors as f64 / seconds,
                    p50_ms: quantile_ms(&delta.buckets, 0.50),
                    p99_ms: quantile_ms(&delta.buckets, 0.99),
                });
            }
        }
        if state.recent.len() > WINDOW {
            state.recent.pop_front();
        }
        state.recent.push_back(snapshot);
    }

    /// The node-wide points, oldest first.
    pub fn points(&self) -> Vec<Point> {
        self.state.lock().points.iter().cloned().collect()
    }

    /// Each module family's rate and latency over the window, by family byte.
    pub fn family_rates(&self) -> HashMap<u8, Rate> {
        let state = self.state.lock();
        let Some((oldest, newest, seconds)) = state.window() else {
            return HashMap::new();
        };
        newest
            .families
            .iter()
            .map(|(family, now)| {
                let delta = match oldest.families.get(family) {
                    Some(then) => now.since(then),
                    None => now.clone(),
                };
                let rate = Rate {
                    rate: per_second(delta.requests, seconds),
                    p50_ms: quantile_ms(&delta.buckets, 0.50),
                    p99_ms: quantile_ms(&delta.buckets, 0.99),
                };
                (*family, rate)
            })
            .collect()
    }

    /// Each tenant's requests per second over the window.
    pub fn tenant_rates(&self) -> HashMap<String, f64> {
        let state = self.state.lock();
        let Some((oldest, newest, seconds)) = state.window() else {
            return HashMap::new();
        };
        newest
            .tenants
            .iter()
            .map(|(tenant, now)| {
                let then = oldest.tenants.get(tenant).copied().unwrap_or(0);
                (
                    tenant.clone(),
                    per_second(now.saturating_sub(then), seconds),
                )
            })
            .collect()
    }
}

fn per_second(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

/// The `q` quantile, in ms, of latencies counted in non-cumulative
/// `buckets` (the bounds of `metrics::BUCKETS`, then +Inf), interpolated
/// linearly within its bucket as Prometheus' `histogram_quantile` does;
/// `None` when nothing was counted.
pub fn quantile_ms(buckets: &[u64], q: f64) -> Option<f64> {
    let total: u64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, n) in buckets.iter().enumerate() {
        if *n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { BUCKETS[i - 1] };
            // Past the last bound there is no upper edge to interpolate to.
            let Some(upper) = BUCKETS.get(i) else {
                return Some(lower * 1000.0);
            };
            let within = ((rank - below as f64) / *n as f64).clamp(0.0, 1.0);
            return Some((lower + (upper - lower) * within) * 1000.0);
        }
        below += n;
    }
    BUCKETS.last().map(|b| b * 1000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_within_a_bucket() {
        let mut buckets = vec![0u64; BUCKETS.len() + 1];
        assert_eq!(quantile_ms(&buckets, 0.5), None);
        // 100 answers, all between 0.1 ms and 0.25 ms.
        buckets[1] = 100;
        let p50 = quantile_ms(&buckets, 0.5).unwrap();
        assert!((p50 - 0.175).abs() < 1e-9, "{p50}");
        // One slow answer past every bound is the p99.9, not the median.
        buckets[BUCKETS.len()] = 1;
        assert!(quantile_ms(&buckets, 0.5).unwrap() < 0.25);
        assert_eq!(quantile_ms(&buckets, 0.999), Some(10_000.0));
    }

    #[test]
    fn points_and_rates_follow_the_counters() {
        let metrics = Metrics::default();
        let history = History::default();
        history.sample(&metrics);
        let tenant = metrics.tenant("t");
        for _ in 0..10 {
            let permit = crate::metrics::tests::permit();
            drop(
                crate::metrics::Answer::new(permit).observed(&tenant, mecha_abi::Opcode::STATE_GET),
            );
        }
        std::thread::sleep(Duration::from_millis(20));
        history.sample(&metrics);
        let points = history.points();
        assert_eq!(points.len(), 1);
        assert!(points[0].rate > 0.0 && points[0].p50_ms.is_some());
        let state = mecha_abi::Family::State.byte();
        assert!(history.family_rates()[&state].rate > 0.0);
        assert!(history.tenant_rates()["t"] > 0.0);
    }
}
