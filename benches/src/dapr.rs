//! The `dapr` scenario: the official Dapr Python SDK through mecha's Dapr
//! personality against mecha's own Python client, in one run, from one
//! Python process (`benches/scripts/dapr_sdk.py`) on one daemon whose state
//! store is in memory, so what differs is the personality's path: HTTP/2 and
//! protobuf into the personality, then the native session. Needs a Python
//! with the `dapr` package and mecha's client (`--python`).

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use crate::daemon::{free_port, Daemon};
use crate::report::{new_histogram, Outcome};
use crate::Plan;

/// The scenario every other is compared with.
const BASELINE: [(&str, &str); 2] = [("get", "native get"), ("save", "native set")];

/// Dapr's own published cost of its sidecar: +1.40 ms at p90 per service
/// call (Dapr v1.0 performance report), for the table's note.
pub const DAPR_SIDECAR_P90_MS: f64 = 1.40;

/// Runs the script against a fresh daemon; one outcome per scenario, with
/// its p90 beside it.
pub fn run(bin_dir: &Path, plan: &Plan, python: &Path) -> anyhow::Result<Vec<(Outcome, f64)>> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let (grpc, http) = (free_port()?, free_port()?);
    let unix = dir.path().join("dapr.sock");
    let config = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: dapr}}\nspec:\n  type: personality.dapr\n  version: v1\n  metadata:\n  - {{name: grpcSocket, value: \"{}\"}}\n  - {{name: grpcAddress, value: \"127.0.0.1:{grpc}\"}}\n  - {{name: httpAddress, value: \"127.0.0.1:{http}\"}}\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: statestore}}\nspec: {{type: state.memory, version: v1}}\n",
        unix.display()
    );
    let daemon = Daemon::start_config(
        bin_dir,
        dir.path(),
        &config,
        &["mecha-mod-state", "mecha-mod-dapr"],
    )?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dapr_sdk.py");
    let output = Command::new(python)
        .arg(&script)
        .arg("--socket")
        .arg(daemon.socket())
        .arg("--grpc-unix")
        .arg(format!("unix://{}", unix.display()))
        .arg("--grpc-tcp")
        .arg(format!("127.0.0.1:{grpc}"))
        .arg("--http")
        .arg(format!("127.0.0.1:{http}"))
        .args(["--ops", &plan.ops.to_string()])
        .args(["--warmup", &plan.warmup.to_string()])
        .args(["--payload", &plan.payload.to_string()])
        .env("DAPR_HTTP_ENDPOINT", format!("http://127.0.0.1:{http}"))
        .env("DAPR_HEALTH_TIMEOUT", "10")
        .output()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    anyhow::ensure!(
        output.status.success(),
        "{} failed ({}); it needs the `dapr` package and mecha's Python client",
        script.display(),
        output.status
    );
    let times: std::collections::BTreeMap<String, Vec<u64>> =
        serde_json::from_slice(&output.stdout).context("reading the script's timings")?;
    daemon.stop()?;
    let mut outcomes = Vec::new();
    for (name, samples) in times {
        let mut hist = new_histogram()?;
        for ns in &samples {
            hist.saturating_record((*ns).max(1));
        }
        let total = std::time::Duration::from_nanos(samples.iter().sum());
        let p90 = hist.value_at_quantile(0.90) as f64 / 1000.0;
        outcomes.push((Outcome::new(&name, &hist, samples.len(), total), p90));
    }
    Ok(outcomes)
}

/// The table: each scenario's percentiles and its p50 and p90 over the
/// native client's for the same kind of operation.
pub fn markdown(outcomes: &[(Outcome, f64)]) -> String {
    let find = |name: &str| outcomes.iter().find(|(o, _)| o.name == name);
    let mut out = String::from(
        "| scenario | p50 µs | p90 µs | p99 µs | ops/s | p50 / native | p90 / native | p90 − native µs |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (o, p90) in outcomes {
        let kind = if o.name.contains("get") || o.name.contains("GET") {
            BASELINE[0].1
        } else {
            BASELINE[1].1
        };
        let (r50, r90, d90) = match find(kind) {
            Some((base, base90)) => (
                format!("{:.2}×", o.p50_us / base.p50_us),
                format!("{:.2}×", p90 / base90),
                format!("{:+.0}", p90 - base90),
            ),
            None => ("–".into(), "–".into(), "–".into()),
        };
        out.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {r50} | {r90} | {d90} |\n",
            o.name, o.p50_us, p90, o.p99_us, o.ops_per_sec
        ));
    }
    out.push_str(&format!(
        "\nDapr's own sidecar adds {DAPR_SIDECAR_P90_MS:.2} ms at p90 per service call (Dapr v1.0 performance report).\n"
    ));
    out
}
