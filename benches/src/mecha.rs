//! The mecha scenarios: get/set on the memory and redb stores through the real
//! daemon and module with `mecha_client::Client`, one request at a time, plus
//! gets with 64 requests in flight on one connection.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_client::{Client, SetItem, SetOptions};

use crate::report::{self, new_histogram, record, Outcome};
use crate::Plan;

/// Distinct keys cycled through, so gets hit a realistic small table rather
/// than one hot key.
const KEYS: usize = 1000;
/// Requests in flight in the pipelined scenario.
pub const DEPTH: usize = 64;
/// Upper bound of one prefill frame, well under the daemon's 4 MiB default.
const PREFILL_FRAME: usize = 1024 * 1024;

/// The stores under test: (component name in the config, label in the table).
const STORES: [(&str, &str); 2] = [("mem", "state.memory"), ("disk", "state.redb")];

/// Runs every mecha scenario against the daemon at `socket`, appending results.
pub async fn run(socket: &Path, plan: &Plan, out: &mut Vec<Outcome>) -> anyhow::Result<()> {
    let client = Client::connect(socket)
        .await
        .with_context(|| format!("connecting to mechad at {}", socket.display()))?;
    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("bench-{i:05}")).collect());
    let value = vec![0xA5u8; plan.payload];

    // PING is answered by mechad itself: one hop through the full client and
    // router stack, which splits mecha's cost into "first hop" and "module hop".
    let name = "mecha.ping (daemon only)";
    report::started(name, plan);
    let outcome = sequential(name, plan, |_| async {
        client.ping().await.context("ping")
    })
    .await?;
    report::finished(&outcome);
    out.push(outcome);

    for (store, label) in STORES {
        // Every get must find its key, or the get path measured would be the
        // cheaper NOT_FOUND one.
        prefill(&client, store, &keys, &value).await?;

        let name = format!("mecha.get {label}");
        report::started(&name, plan);
        let (client, keys) = (&client, &keys);
        let outcome = sequential(&name, plan, move |i| {
            let key = &keys[i % keys.len()];
            async move { get_checked(client, store, key, plan.payload).await }
        })
        .await?;
        report::finished(&outcome);
        out.push(outcome);

        let name = format!("mecha.set {label}");
        report::started(&name, plan);
        let value = value.as_slice();
        let outcome = sequential(&name, plan, move |i| {
            let key = &keys[i % keys.len()];
            async move {
                client
                    .set(store, key, value, SetOptions::default())
                    .await
                    .with_context(|| format!("set {store}/{key}"))
                    .map(drop)
            }
        })
        .await?;
        report::finished(&outcome);
        out.push(outcome);
    }

    let name = format!("mecha.get state.memory pipelined x{DEPTH}");
    report::started(&name, plan);
    // The warm-up wave fills the connection's buffers and the module's caches.
    wave(&client, "mem", &keys, plan.payload, plan.warmup).await?;
    let (hist, elapsed) = wave(&client, "mem", &keys, plan.payload, plan.ops).await?;
    let outcome = Outcome::new(&name, &hist, plan.ops, elapsed);
    report::finished(&outcome);
    out.push(outcome);
    Ok(())
}

/// Writes every key once with bulk sets of bounded size.
async fn prefill(
    client: &Client,
    store: &str,
    keys: &[String],
    value: &[u8],
) -> anyhow::Result<()> {
    let per_frame = (PREFILL_FRAME / (value.len() + 32)).max(1);
    for chunk in keys.chunks(per_frame) {
        let items = chunk
            .iter()
            .map(|key| SetItem {
                key: key.clone(),
                value: value.to_vec(),
                etag: None,
                ttl_ms: None,
            })
            .collect();
        client
            .bulk_set(store, items)
            .await
            .with_context(|| format!("prefilling {store}"))?;
    }
    Ok(())
}

/// One get that must return a value of the expected size.
pub async fn get_checked(
    client: &Client,
    store: &str,
    key: &str,
    size: usize,
) -> anyhow::Result<()> {
    match client.get(store, key).await {
        Ok(Some(entry)) if entry.value.len() == size => Ok(()),
        Ok(Some(entry)) => bail!(
            "get {store}/{key}: {} bytes, expected {size}",
            entry.value.len()
        ),
        Ok(None) => bail!("get {store}/{key}: not found after prefill"),
        Err(e) => Err(e).with_context(|| format!("get {store}/{key}")),
    }
}

/// Runs `op(i)` one at a time: the warm-up unmeasured, then `plan.ops` timed.
pub async fn sequential<F, Fut>(name: &str, plan: &Plan, mut op: F) -> anyhow::Result<Outcome>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut hist = new_histogram()?;
    for i in 0..plan.warmup {
        op(i).await?;
    }
    let started = Instant::now();
    for i in plan.warmup..plan.warmup + plan.ops {
        let t = Instant::now();
        op(i).await?;
        record(&mut hist, t.elapsed());
    }
    Ok(Outcome::new(name, &hist, plan.ops, started.elapsed()))
}

/// `ops` gets spread over `DEPTH` tasks sharing one connection, so `DEPTH`
/// requests are in flight at once; returns the merged latencies and wall time.
async fn wave(
    client: &Client,
    store: &'static str,
    keys: &Arc<Vec<String>>,
    size: usize,
    ops: usize,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    // Histograms are allocated before the clock starts; they are not small.
    let hists = (0..DEPTH)
        .map(|_| new_histogram())
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for (worker, mut hist) in hists.into_iter().enumerate() {
        let share = ops / DEPTH + usize::from(worker < ops % DEPTH);
        let (client, keys) = (client.clone(), Arc::clone(keys));
        tasks.spawn(async move {
            for j in 0..share {
                let key = &keys[(worker + j * DEPTH) % keys.len()];
                let t = Instant::now();
                get_checked(&client, store, key, size).await?;
                record(&mut hist, t.elapsed());
            }
            anyhow::Ok(hist)
        });
    }
    let mut done = Vec::with_capacity(DEPTH);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.context("a pipelined worker panicked")??);
    }
    // The clock stops before merging, which is bookkeeping, not traffic.
    let elapsed = started.elapsed();
    let mut merged = new_histogram()?;
    for hist in &done {
        merged.add(hist).context("merging latency histograms")?;
    }
    Ok((merged, elapsed))
}
