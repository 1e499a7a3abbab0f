//! `mecha-bench capabilities`: pub/sub, lock and sequencer through the real
//! daemon and modules.
//!
//! The default-store rows run against mechad with no `--config`, i.e. its
//! embedded default (pubsub.redb, lock.redb, sequencer.redb with segments of
//! 1000 ids, plus state, config and secrets). The comparison rows (a
//! pubsub.memory store, a sequencer.redb store with `segmentSize: 1`) need
//! components the default lacks, so they run against a second mechad,
//! started right after the first is stopped, whose config holds those two
//! components next to a copy of the default ones of the same families.

use std::cell::{Cell, RefCell};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_abi::msg::UnlockStatus;
use mecha_client::{Client, PublishOptions, SubscribeOptions};

use crate::daemon::Daemon;
use crate::mecha::sequential;
use crate::report::{self, new_histogram, record, Outcome};
use crate::Plan;

/// Publishes in flight in the concurrent publish scenario.
pub const IN_FLIGHT: usize = 16;
/// Ids per call in the batch sequencer scenarios.
pub const BATCH: u32 = 100;
/// How long one delivery may take before the bench gives up on it.
const DELIVERY_LIMIT: Duration = Duration::from_secs(10);
/// The lease of the locks taken; each is released long before it ends.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// Store names of the embedded default (daemon/src/config.rs).
const DEFAULT_PUBSUB: &str = "pubsub";
const DEFAULT_LOCK: &str = "lockstore";
const DEFAULT_SEQUENCER: &str = "sequencer";
/// The comparison stores of the second daemon.
const MEMORY_PUBSUB: &str = "pubsub-memory";
const SEQUENCER_SEG1: &str = "sequencer-seg1";

/// The second daemon's config: the default pubsub and sequencer components
/// as the embedded default has them, plus the two comparison stores. Only
/// the comparison stores are measured on it.
const COMPARISON_CONFIG: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub-memory}
spec: {type: pubsub.memory, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: sequencer}
spec: {type: sequencer.redb, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: sequencer-seg1}
spec: {type: sequencer.redb, version: v1, metadata: [{name: segmentSize, value: \"1\"}]}
";

/// One measured scenario.
#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    /// Timed operations.
    pub ops: usize,
    /// Messages, ids or lock cycles per operation.
    pub items_per_op: u32,
    /// The unit of `items_per_op`.
    pub unit: &'static str,
    pub outcome: Outcome,
}

impl Row {
    fn new(outcome: Outcome, ops: usize, items_per_op: u32, unit: &'static str) -> Self {
        Self {
            name: outcome.name.clone(),
            ops,
            items_per_op,
            unit,
            outcome,
        }
    }

    fn items_per_sec(&self) -> f64 {
        self.outcome.ops_per_sec * f64::from(self.items_per_op)
    }
}

/// Runs every scenario: the default stores on the embedded default, then the
/// comparison stores on the second daemon.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    eprintln!(
        "[mecha-bench] starting mechad (embedded default config) from {}",
        bin_dir.display()
    );
    let daemon = Daemon::start_default(bin_dir, dir.path())?;
    // On error, `daemon` is dropped on the way out, which kills mechad.
    let client = connect(daemon.socket()).await?;
    pubsub(
        daemon.socket(),
        &client,
        DEFAULT_PUBSUB,
        "pubsub.redb",
        plan,
        &mut rows,
    )
    .await?;
    lock(&client, plan, &mut rows).await?;
    sequencer(&client, DEFAULT_SEQUENCER, "segment 1000", plan, &mut rows).await?;
    drop(client);
    daemon.stop()?;

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    eprintln!("[mecha-bench] starting mechad with pubsub.memory and segmentSize 1 stores");
    let daemon = Daemon::start_config(
        bin_dir,
        dir.path(),
        COMPARISON_CONFIG,
        &["mecha-mod-pubsub", "mecha-mod-sequencer"],
    )?;
    let client = connect(daemon.socket()).await?;
    pubsub(
        daemon.socket(),
        &client,
        MEMORY_PUBSUB,
        "pubsub.memory",
        plan,
        &mut rows,
    )
    .await?;
    sequencer(&client, SEQUENCER_SEG1, "segmentSize 1", plan, &mut rows).await?;
    drop(client);
    daemon.stop()?;
    Ok(rows)
}

async fn connect(socket: &Path) -> anyhow::Result<Client> {
    Client::connect(socket)
        .await
        .with_context(|| format!("connecting to mechad at {}", socket.display()))
}

/// Prints the progress line and converts an outcome into a row.
fn finish(outcome: Outcome, plan: &Plan, items_per_op: u32, unit: &'static str) -> Row {
    report::finished(&outcome);
    Row::new(outcome, plan.ops, items_per_op, unit)
}

/// Publish→deliver latency with one subscriber, then publish throughput with
/// one publisher and with `IN_FLIGHT` publishes in flight.
async fn pubsub(
    socket: &Path,
    client: &Client,
    store: &str,
    label: &str,
    plan: &Plan,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    let data = vec![0xA5u8; plan.payload];

    // The subscriber has a connection of its own, as another app would.
    let name = format!("{label} publish→deliver (1 subscriber, then ack)");
    report::started(&name, plan);
    let subscriber = connect(socket).await?;
    let topic = "bench-latency";
    let mut subscription = subscriber
        .subscribe(store, topic, "bench", SubscribeOptions::default())
        .await
        .with_context(|| format!("subscribing to {store}/{topic}"))?;
    let mut hist = new_histogram()?;
    let mut started = Instant::now();
    for i in 0..plan.warmup + plan.ops {
        if i == plan.warmup {
            hist.reset();
            started = Instant::now();
        }
        let t = Instant::now();
        let published = client
            .publish(store, topic, data.clone(), PublishOptions::default())
            .await
            .with_context(|| format!("publish to {store}/{topic}"))?;
        let delivery = match tokio::time::timeout(DELIVERY_LIMIT, subscription.next()).await {
            Ok(Some(delivery)) => {
                delivery.with_context(|| format!("delivery from {store}/{topic}"))?
            }
            Ok(None) => bail!("the subscription to {store}/{topic} ended"),
            Err(_) => bail!("no delivery from {store}/{topic} within {DELIVERY_LIMIT:?}"),
        };
        record(&mut hist, t.elapsed());
        if delivery.offset != published.offset || delivery.data != data {
            bail!(
                "{store}/{topic}: delivered offset {} ({} bytes), expected offset {} ({} bytes)",
                delivery.offset,
                delivery.data.len(),
                published.offset,
                data.len()
            );
        }
        if !subscription.ack(&delivery).await.context("ack")? {
            bail!(
                "{store}/{topic}: offset {} was already acknowledged",
                delivery.offset
            );
        }
    }
    rows.push(finish(
        Outcome::new(&name, &hist, plan.ops, started.elapsed()),
        plan,
        1,
        "msgs",
    ));
    subscription
        .cancel()
        .await
        .context("cancelling the subscription")?;

    // No group subscribes to the throughput topics: this is the publish path
    // alone (append to the log, answer), with no delivery work in the module.
    let name = format!("{label} publish, 1 publisher");
    report::started(&name, plan);
    let data_ref = &data;
    let outcome = sequential(&name, plan, |_| async move {
        client
            .publish(
                store,
                "bench-seq",
                data_ref.clone(),
                PublishOptions::default(),
            )
            .await
            .with_context(|| format!("publish to {store}/bench-seq"))
            .map(drop)
    })
    .await?;
    rows.push(finish(outcome, plan, 1, "msgs"));

    let name = format!("{label} publish, {IN_FLIGHT} in flight");
    report::started(&name, plan);
    // The warm-up wave is not timed.
    publish_wave(client, store, &data, plan.warmup).await?;
    let (hist, elapsed) = publish_wave(client, store, &data, plan.ops).await?;
    rows.push(finish(
        Outcome::new(&name, &hist, plan.ops, elapsed),
        plan,
        1,
        "msgs",
    ));
    Ok(())
}

/// `ops` publishes spread over `IN_FLIGHT` tasks, each with a clone of
/// `client` (they share its connection); returns the merged latencies and
/// the wall time.
async fn publish_wave(
    client: &Client,
    store: &str,
    data: &[u8],
    ops: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let hists = (0..IN_FLIGHT)
        .map(|_| new_histogram())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (worker, mut hist) in hists.into_iter().enumerate() {
        let share = ops / IN_FLIGHT + usize::from(worker < ops % IN_FLIGHT);
        let (client, store, data) = (client.clone(), store.to_string(), data.to_vec());
        tasks.spawn(async move {
            for _ in 0..share {
                let t = Instant::now();
                client
                    .publish(
                        &store,
                        "bench-wave",
                        data.clone(),
                        PublishOptions::default(),
                    )
                    .await
                    .with_context(|| format!("publish to {store}/bench-wave"))?;
                record(&mut hist, t.elapsed());
            }
            anyhow::Ok(hist)
        });
    }
    let mut done = Vec::with_capacity(IN_FLIGHT);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.context("a publishing task panicked")??);
    }
    let elapsed = started.elapsed();
    let mut merged = new_histogram()?;
    for hist in &done {
        merged.add(hist).context("merging latency histograms")?;
    }
    Ok((merged, elapsed))
}

/// try_lock + unlock of one resource, one after the other; the row times the
/// pair, and two more rows split it into its calls.
async fn lock(client: &Client, plan: &Plan, rows: &mut Vec<Row>) -> anyhow::Result<()> {
    let name = "lock.redb try_lock + unlock";
    report::started(name, plan);
    let (try_hist, unlock_hist) = (
        RefCell::new(new_histogram()?),
        RefCell::new(new_histogram()?),
    );
    let last_token = Cell::new(0u64);
    let (try_ref, unlock_ref, last_ref) = (&try_hist, &unlock_hist, &last_token);
    let (resource, owner) = ("bench-lock", "mecha-bench");
    let outcome = sequential(name, plan, |i| async move {
        let t = Instant::now();
        let token = client
            .try_lock(DEFAULT_LOCK, resource, owner, LOCK_TTL, None)
            .await
            .context("try_lock")?;
        let took = t.elapsed();
        let Some(token) = token else {
            bail!("try_lock {resource}: not acquired, but the bench released it");
        };
        // Fencing tokens must grow from grant to grant.
        if token <= last_ref.get() {
            bail!(
                "try_lock {resource}: token {token} after {}",
                last_ref.get()
            );
        }
        last_ref.set(token);
        let t = Instant::now();
        let status = client
            .unlock(DEFAULT_LOCK, resource, owner)
            .await
            .context("unlock")?;
        let took_unlock = t.elapsed();
        if status != UnlockStatus::Success {
            bail!("unlock {resource}: {status:?}");
        }
        // Only the timed operations (after the warm-up) count.
        if i >= plan.warmup {
            record(&mut try_ref.borrow_mut(), took);
            record(&mut unlock_ref.borrow_mut(), took_unlock);
        }
        Ok(())
    })
    .await?;
    let elapsed = Duration::from_secs_f64(plan.ops as f64 / outcome.ops_per_sec);
    rows.push(finish(outcome, plan, 1, "cycles"));
    for (part, hist) in [("try_lock", &try_hist), ("unlock", &unlock_hist)] {
        // The parts' ops/s is the pair's: they ran interleaved.
        let outcome = Outcome::new(
            &format!("lock.redb {part} (part of the row above)"),
            &hist.borrow(),
            plan.ops,
            elapsed,
        );
        rows.push(Row::new(outcome, plan.ops, 1, "cycles"));
    }
    Ok(())
}

/// next_id one at a time, then next_ids of `BATCH`, on one key each; every
/// answer must be above the one before.
async fn sequencer(
    client: &Client,
    store: &str,
    label: &str,
    plan: &Plan,
    rows: &mut Vec<Row>,
) -> anyhow::Result<()> {
    for (count, key) in [(1u32, "bench-single"), (BATCH, "bench-batch")] {
        let name = if count == 1 {
            format!("sequencer.redb next_id ({label})")
        } else {
            format!("sequencer.redb next_ids x{count} ({label})")
        };
        report::started(&name, plan);
        let last = Cell::new(0u64);
        let last_ref = &last;
        let outcome = sequential(&name, plan, |_| async move {
            let ids = client
                .next_ids(store, key, count)
                .await
                .with_context(|| format!("next_ids {store}/{key}"))?;
            if ids.start <= last_ref.get() {
                bail!("{store}/{key}: id {} after {}", ids.start, last_ref.get());
            }
            last_ref.set(ids.end - 1);
            Ok(())
        })
        .await?;
        rows.push(finish(outcome, plan, count, "ids"));
    }
    Ok(())
}

/// The table in Markdown.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | ops | p50_us | p99_us | p999_us | ops_per_sec | items_per_sec |\n\
         |---|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let o = &r.outcome;
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} {} |\n",
            r.name,
            r.ops,
            o.p50_us,
            o.p99_us,
            o.p999_us,
            o.ops_per_sec,
            r.items_per_sec(),
            r.unit
        ));
    }
    out
}

/// Writes `{"scenarios": [...]}` to `path`.
pub fn write_json(path: &Path, rows: &[Row]) -> anyhow::Result<()> {
    let scenarios: Vec<_> = rows
        .iter()
        .map(|r| {
            let o = &r.outcome;
            serde_json::json!({
                "name": r.name,
                "ops": r.ops,
                "p50_us": o.p50_us,
                "p99_us": o.p99_us,
                "p999_us": o.p999_us,
                "ops_per_sec": o.ops_per_sec,
                "items_per_op": r.items_per_op,
                "unit": r.unit,
                "items_per_sec": r.items_per_sec(),
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "scenarios": scenarios }))
        .context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
