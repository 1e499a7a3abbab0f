//! Scenario results: latency histograms turned into percentiles, and the
//! progress lines printed around a scenario.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;

/// A latency histogram in nanoseconds: fine enough for the ~10 µs floors,
/// wide enough (up to 60 s) that no sample is ever clamped in practice.
pub fn new_histogram() -> anyhow::Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).context("creating a latency histogram")
}

/// Records one round trip.
pub fn record(hist: &mut Histogram<u64>, took: Duration) {
    // Saturating: a sample beyond the bounds is clamped rather than lost.
    hist.saturating_record(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX));
}

/// One number taken from an outcome, e.g. its p50, for tables and plots.
pub type Metric = fn(&Outcome) -> f64;

/// The measured outcome of one scenario.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub name: String,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub ops_per_sec: f64,
}

impl Outcome {
    /// Summarises `hist` (ns) for `ops` operations that took `elapsed` in all.
    pub fn new(name: &str, hist: &Histogram<u64>, ops: usize, elapsed: Duration) -> Self {
        let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
        Self {
            name: name.to_string(),
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
            ops_per_sec: ops as f64 / elapsed.as_secs_f64().max(f64::MIN_POSITIVE),
        }
    }

    /// The outcome as the JSON object every scenario list uses.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "p999_us": self.p999_us,
            "ops_per_sec": self.ops_per_sec,
        })
    }
}

/// Writes `doc` as pretty JSON to `path`.
pub fn write_json_value(path: &std::path::Path, doc: &serde_json::Value) -> anyhow::Result<()> {
    use anyhow::Context;
    let text = serde_json::to_string_pretty(doc).context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Writes `{"scenarios": [...]}` for a list of outcomes.
pub fn write_json(path: &std::path::Path, outcomes: &[Outcome]) -> anyhow::Result<()> {
    let scenarios: Vec<_> = outcomes.iter().map(Outcome::json).collect();
    write_json_value(path, &serde_json::json!({ "scenarios": scenarios }))
}

/// A progress line on stderr before a scenario runs.
pub fn started(name: &str, plan: &crate::Plan) {
    eprintln!(
        "[mecha-bench] {name}: {} ops after {} warm-up, {}-byte payload ...",
        plan.ops, plan.warmup, plan.payload
    );
}

/// A progress line on stderr after a scenario ran.
pub fn finished(o: &Outcome) {
    eprintln!(
        "[mecha-bench] {}: p50 {:.1} us, p99 {:.1} us, {:.0} ops/s",
        o.name, o.p50_us, o.p99_us, o.ops_per_sec
    );
}
