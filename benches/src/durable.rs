//! `mecha-bench durable`: writes that are durable when answered —
//! `mecha.set` on state.redb and publish on pubsub.redb, each answered
//! after an fsync'd commit — against Redis SET with `appendonly yes,
//! appendfsync always`, at 1, 16, 64 and 256 connections, in one run.
//!
//! Both sides group their fsyncs across clients (mecha's redb writer thread,
//! Redis's event loop), so the ratio shows how well each amortises a sync.
//! `mecha.set` on state.memory, measured on the same connections, is the
//! ceiling mecha's two hops leave any store at that load.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use mecha_client::{Client, PublishOptions};

use crate::daemon::Daemon;
use crate::mecha;
use crate::redis;
use crate::report::Outcome;
use crate::sweep::{self, Load, Sweep, REDIS_SET_AOF};
use crate::Plan;

/// The loads: connections with one request in flight on each.
pub const LOADS: [Load; 4] = [
    Load::new(1, 1),
    Load::new(16, 1),
    Load::new(64, 1),
    Load::new(256, 1),
];

/// Scenario names.
pub const STATE_SET: &str = "mecha.set state.redb";
/// The same set on state.memory: what mecha's two hops allow with no disk at
/// all, the ceiling of any durable store behind them.
pub const MEMORY_SET: &str = "mecha.set state.memory";
pub const PUBLISH: &str = "mecha.publish pubsub.redb (one topic)";

/// The pub/sub store added to the bench daemon's two state stores
/// (`daemon::CONFIG`): the durable embedded one, as the embedded default
/// configures it.
const PUBSUB: &str = "\
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.redb, version: v1, metadata: []}
";

/// The topic every publish goes to: one topic is the hardest case, since a
/// topic's offsets are taken one at a time.
const TOPIC: &str = "bench-durable";

/// Runs every scenario at every load.
pub fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<Sweep> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let redis = redis::Server::start_aof(dir.path())?.context(
        "redis-server is not installed; the durable comparison needs it \
         (install the redis-server package)",
    )?;
    sweep::announce(plan, bin_dir);
    // On error, `daemon` and `redis` are dropped on the way out, which kills them.
    let daemon = Daemon::start_config(
        bin_dir,
        dir.path(),
        &format!("{}{PUBSUB}", crate::daemon::CONFIG),
        &["mecha-mod-state", "mecha-mod-pubsub"],
    )?;
    // As in `compare`: one connection from one client thread, many from two.
    let (single, multi) = sweep::runtimes()?;
    let mut sweep = Sweep {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    let total = LOADS.len() * 4;
    let mut progress = sweep::Progress::new(total);
    for load in LOADS {
        let runtime = if load.connections == 1 {
            &single
        } else {
            &multi
        };
        runtime.block_on(async {
            let mut clients = Vec::with_capacity(load.connections);
            for _ in 0..load.connections {
                clients.push(
                    Client::connect(daemon.socket())
                        .await
                        .context("connecting to mechad")?,
                );
            }
            let value = Arc::new(vec![0xA5u8; plan.payload]);

            for (name, store) in [(STATE_SET, "disk"), (MEMORY_SET, "mem")] {
                progress.step(&format!("{name} {}", load.label()));
                let set_value = Arc::clone(&value);
                let outcome = sweep::measure(name, &clients, load.depth, plan, move |c, i| {
                    let value = Arc::clone(&set_value);
                    async move { mecha::set_value(c, store, i, &value).await }
                })
                .await?;
                sweep.push(name, load, outcome);
            }

            progress.step(&format!("{PUBLISH} {}", load.label()));
            let data = Arc::clone(&value);
            let outcome =
                sweep::measure(PUBLISH, &clients, load.depth, plan, move |c: Client, _| {
                    let data = Arc::clone(&data);
                    async move {
                        c.publish("pubsub", TOPIC, data.to_vec(), PublishOptions::default())
                            .await
                            .context("publish")
                            .map(drop)
                    }
                })
                .await?;
            sweep.push(PUBLISH, load, outcome);

            progress.step(&format!("{REDIS_SET_AOF} {}", load.label()));
            let outcome = sweep::redis_set_at(&redis, REDIS_SET_AOF, load, plan).await?;
            sweep.push(REDIS_SET_AOF, load, outcome);
            anyhow::Ok(())
        })?;
    }
    daemon.stop()?;
    Ok(sweep)
}

/// One table, loads by scenario, with each mecha scenario's throughput over
/// Redis AOF's at the same load.
pub fn markdown(sweep: &Sweep) -> String {
    let mut out = String::from(
        "| connections | state.set ops/s | p50 µs | p99 µs | publish ops/s | p50 µs | p99 µs \
         | Redis AOF SET ops/s | p50 µs | p99 µs | set / Redis | publish / Redis \
         | state.memory set ops/s | redb set / memory set |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let cell = |v: Option<f64>, decimals: usize| match v {
        Some(v) if v.is_finite() => format!("{v:.decimals$}"),
        _ => "n/a".to_owned(),
    };
    let over = |a: Option<&Outcome>, b: Option<&Outcome>| match (a, b) {
        (Some(a), Some(b)) if b.ops_per_sec > 0.0 => {
            format!("{:.2}x", a.ops_per_sec / b.ops_per_sec)
        }
        _ => "n/a".to_owned(),
    };
    for load in LOADS {
        let get = |s: &str| sweep.find(s, load);
        let (set, publish, aof) = (get(STATE_SET), get(PUBLISH), get(REDIS_SET_AOF));
        let memory = get(MEMORY_SET);
        out.push_str(&format!("| {} |", load.connections));
        for o in [set, publish, aof] {
            out.push_str(&format!(
                " {} | {} | {} |",
                cell(o.map(|o| o.ops_per_sec), 0),
                cell(o.map(|o| o.p50_us), 0),
                cell(o.map(|o| o.p99_us), 0)
            ));
        }
        out.push_str(&format!(
            " {} | {} | {} | {} |\n",
            over(set, aof),
            over(publish, aof),
            cell(memory.map(|o| o.ops_per_sec), 0),
            over(set, memory)
        ));
    }
    out
}
