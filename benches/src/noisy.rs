//! Noisy neighbour: how much a tenant flooding the daemon slows another
//! tenant down. The victim does one `state.get` at a time on its own
//! connection, first alone and then while the flooder keeps many requests in
//! flight on many connections; the result is the victim's p50/p99 under load
//! as a ratio to its p50/p99 alone (target: p99 ≤ 2×).
//!
//! The two tenants are told apart by the socket they connect to (a tenant
//! rule by socket). The flooder is a process of its own in a cgroup limited
//! to one CPU, as a pod would be (`flood.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use mecha_client::{Client, SetOptions};

use crate::daemon::Daemon;
use crate::flood::Flooder;
use crate::report::{new_histogram, record, Outcome};
use crate::Plan;

/// The flooder's shape: connections, and requests in flight on each.
#[derive(Clone, Copy, Debug)]
pub struct Flood {
    pub connections: usize,
    pub depth: usize,
    /// The flooding tenant's `maxInFlight` quota, when one is set.
    pub max_in_flight: Option<usize>,
}

/// The measurements of one run.
#[derive(Debug)]
pub struct Results {
    pub alone: Outcome,
    pub flooded: Outcome,
    /// Requests per second the flooder completed while the victim measured.
    pub flood_ops_per_sec: f64,
    pub flood_connections: usize,
    pub flood_depth: usize,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    /// How the flooder process was confined.
    pub confinement: String,
}

/// Starts mechad with a memory store and a second socket for the flooder, and
/// measures the victim alone and under the flood.
pub async fn run(bin_dir: &Path, plan: &Plan, flood: Flood) -> anyhow::Result<Results> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let noisy_socket = dir.path().join("noisy.sock");
    let quota = flood
        .max_in_flight
        .map(|n| format!("  quotas:\n    tenants:\n      noisy: {{maxInFlight: {n}}}\n"))
        .unwrap_or_default();
    let config = format!(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {{name: bench}}\nspec:\n  sockets:\n  - path: {noisy}\n  tenants:\n  - name: noisy\n    sockets: [{noisy}]\n{quota}---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: mem}}\nspec: {{type: state.memory, version: v1, metadata: []}}\n",
        noisy = noisy_socket.display()
    );
    let daemon = Daemon::start_config(bin_dir, dir.path(), &config, &["mecha-mod-state"])?;
    let value = vec![b'v'; plan.payload];
    let alone = victim(daemon.socket(), "victim alone", plan).await?;

    // The flooder writes its key before it floods, so that a quota on the
    // flooding tenant refuses flood requests, not setup.
    Client::connect(&noisy_socket)
        .await
        .context("connecting the flooder's setup client")?
        .set("mem", "noise", value.clone(), SetOptions::default())
        .await
        .context("flooder prefill")?;
    let mut flooder = Flooder::start(&noisy_socket, flood.connections, flood.depth)?;
    // Let the flood reach a steady state before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = flooder.count()?;
    let started = Instant::now();
    let flooded = victim(daemon.socket(), "victim while flooded", plan).await?;
    let flood_ops = flooder.count()?.saturating_sub(before);
    let flood_ops_per_sec = flood_ops as f64 / started.elapsed().as_secs_f64().max(1e-9);
    let confinement = flooder.confinement.clone();
    flooder.stop()?;
    daemon.stop()?;

    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    Ok(Results {
        p50_ratio: ratio(flooded.p50_us, alone.p50_us),
        p99_ratio: ratio(flooded.p99_us, alone.p99_us),
        alone,
        flooded,
        flood_ops_per_sec,
        flood_connections: flood.connections,
        flood_depth: flood.depth,
        confinement,
    })
}

/// Runs the victim on a thread and runtime of its own, so that its latency
/// is the daemon's doing and not time spent waiting behind the flooder's
/// tasks in a shared client runtime.
async fn victim(socket: &Path, name: &'static str, plan: &Plan) -> anyhow::Result<Outcome> {
    let (socket, plan) = (socket.to_path_buf(), *plan);
    tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the victim's runtime")?;
        runtime.block_on(async {
            let client = Client::connect(&socket)
                .await
                .context("connecting the victim")?;
            client
                .set(
                    "mem",
                    "victim",
                    vec![b'v'; plan.payload],
                    SetOptions::default(),
                )
                .await
                .context("victim prefill")?;
            measure(&client, name, &plan).await
        })
    })
    .await
    .context("the victim thread panicked")?
}

/// The victim's gets, one at a time, after an unmeasured warm-up.
async fn measure(victim: &Client, name: &str, plan: &Plan) -> anyhow::Result<Outcome> {
    let mut hist = new_histogram()?;
    for _ in 0..plan.warmup {
        victim.get("mem", "victim").await.context("victim get")?;
    }
    let started = Instant::now();
    for _ in 0..plan.ops {
        let t = Instant::now();
        victim
            .get("mem", "victim")
            .await
            .context("victim get")?
            .context("the victim's key vanished")?;
        record(&mut hist, t.elapsed());
    }
    Ok(Outcome::new(name, &hist, plan.ops, started.elapsed()))
}

/// The results as a Markdown table.
pub fn markdown(r: &Results) -> String {
    let mut s = String::from(
        "| victim | p50 µs | p99 µs | p99.9 µs | ops/s |\n|---|---:|---:|---:|---:|\n",
    );
    for o in [&r.alone, &r.flooded] {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.0} |\n",
            o.name, o.p50_us, o.p99_us, o.p999_us, o.ops_per_sec
        ));
    }
    s.push_str(&format!(
        "\nFlooder: a process in {}, {} connections × {} in flight, {:.0} ops/s while the victim measured.\n\
         Victim under flood / alone: p50 {:.2}×, p99 {:.2}× (target p99 ≤ 2×).\n",
        r.confinement, r.flood_connections, r.flood_depth, r.flood_ops_per_sec, r.p50_ratio, r.p99_ratio
    ));
    s
}

/// Writes the results as JSON: each victim scenario with `p50_us`, `p99_us`,
/// `ops_per_sec`, plus the flood and the ratios.
pub fn write_json(path: &Path, r: &Results) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "scenarios": [r.alone.json(), r.flooded.json()],
        "flood": {
            "connections": r.flood_connections, "depth": r.flood_depth,
            "ops_per_sec": r.flood_ops_per_sec,
            "confinement": r.confinement,
        },
        "p50_ratio": r.p50_ratio,
        "p99_ratio": r.p99_ratio,
    });
    crate::report::write_json_value(path, &doc)
}
