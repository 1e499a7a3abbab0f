//! Helpers for the mecha scenarios: the keys, filling a store so every get
//! hits, a checked get, and a one-at-a-time timing loop. The `compare` sweep
//! itself is in `sweep.rs`.

use std::future::Future;
use std::time::Instant;

use anyhow::{bail, Context};
use mecha_client::{Client, SetItem, SetOptions};

use crate::report::{new_histogram, record, Outcome};
use crate::Plan;

/// Distinct keys cycled through, so gets hit a realistic small table rather
/// than one hot key.
const KEYS: usize = 1000;
/// Upper bound of one prefill frame, well under the daemon's 4 MiB default.
const PREFILL_FRAME: usize = 1024 * 1024;

/// The stores under test: (component name in the config, label in the table).
pub const STORES: [(&str, &str); 2] = [("mem", "state.memory"), ("disk", "state.redb")];

/// The key of operation `i`.
pub fn key(i: usize) -> String {
    format!("bench-{:05}", i % KEYS)
}

/// Writes every one of the `KEYS` keys of `store` once, so every get hits.
pub async fn prefill_store(client: &Client, store: &str, payload: usize) -> anyhow::Result<()> {
    let keys: Vec<String> = (0..KEYS).map(key).collect();
    prefill(client, store, &keys, &vec![0xA5u8; payload]).await
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

/// One unconditional set of `value` under key `i` in `store`.
pub async fn set_value(client: Client, store: &str, i: usize, value: &[u8]) -> anyhow::Result<()> {
    client
        .set(store, &key(i), value, SetOptions::default())
        .await
        .with_context(|| format!("set {store}"))
        .map(drop)
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
