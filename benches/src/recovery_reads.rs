//! `mecha-bench recovery`, reads under kills: what `LOAD_TASKS` connections
//! reading the state module see while it is killed with SIGKILL again and
//! again. The daemon sends reads that were in flight at a crash to the next
//! instance (SPEC §6.8), so the target is no error at all, and a read caught
//! by a crash costing only the restart's latency.
//!
//! A read is *caught* when a kill happened while it was in flight, or it was
//! sent between a kill and the moment STATUS shows the new instance running:
//! a shared counter is odd from the kill to that moment, and each read
//! compares it before and after.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use mecha_client::{Client, RetryPolicy};

use crate::recovery::{error_label, kill_module, running_pid, HEALTHY_RUN, PROBE_KEY, STORE};
use crate::report::{new_histogram, record};

/// Reading connections.
pub const READERS: usize = 4;
/// Deadline of one read: long enough for any restart (the instance is always
/// killed after a healthy run, so it restarts at once).
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the reads saw.
pub struct ReadKills {
    /// Kills done.
    pub kills: usize,
    /// Reads answered OK with the probe's value.
    pub reads: u64,
    /// Reads that failed, by what failed. The target is none.
    pub errors: BTreeMap<String, u64>,
    /// Latency of the reads caught by a kill.
    pub caught: Histogram<u64>,
    /// Latency of every read.
    pub all: Histogram<u64>,
}

/// `kills` kills of the state module, each after a healthy run, while
/// [`READERS`] connections read the probe key without retrying.
pub async fn run(
    socket: &std::path::Path,
    admin: &Client,
    kills: usize,
) -> anyhow::Result<ReadKills> {
    eprintln!("[mecha-bench] kill -9 under a {READERS}-connection read load: {kills} kills ...");
    let stop = Arc::new(AtomicBool::new(false));
    let phase = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for reader in 0..READERS {
        let client = Client::connect(socket)
            .await
            .with_context(|| format!("connecting reader {reader}"))?
            .with_retries(RetryPolicy::disabled())
            .with_timeout(READ_TIMEOUT);
        tasks.spawn(read_loop(client, Arc::clone(&stop), Arc::clone(&phase)));
    }
    for i in 1..=kills {
        tokio::time::sleep(HEALTHY_RUN).await;
        let pid = running_pid(admin, None).await?;
        phase.fetch_add(1, Ordering::SeqCst);
        kill_module(pid)?;
        let t = Instant::now();
        running_pid(admin, Some(pid)).await?;
        phase.fetch_add(1, Ordering::SeqCst);
        eprintln!(
            "[mecha-bench]   kill {i}/{kills}: pid {pid}, new instance seen after {:.1} ms",
            t.elapsed().as_secs_f64() * 1000.0
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut result = ReadKills {
        kills,
        reads: 0,
        errors: BTreeMap::new(),
        caught: new_histogram()?,
        all: new_histogram()?,
    };
    while let Some(joined) = tasks.join_next().await {
        let done = joined.context("a reader panicked")??;
        result.reads += done.reads;
        for (label, n) in done.errors {
            *result.errors.entry(label).or_insert(0) += n;
        }
        result
            .caught
            .add(&done.caught)
            .context("merging histograms")?;
        result.all.add(&done.all).context("merging histograms")?;
    }
    Ok(result)
}

/// Reads the probe key until told to stop, counting every failure.
async fn read_loop(
    client: Client,
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicU64>,
) -> anyhow::Result<ReadKills> {
    let mut seen = ReadKills {
        kills: 0,
        reads: 0,
        errors: BTreeMap::new(),
        caught: new_histogram()?,
        all: new_histogram()?,
    };
    while !stop.load(Ordering::Relaxed) {
        let before = phase.load(Ordering::SeqCst);
        let t = Instant::now();
        let got = client.get(STORE, PROBE_KEY).await;
        let took = t.elapsed();
        let after = phase.load(Ordering::SeqCst);
        record(&mut seen.all, took);
        if before != after || before % 2 == 1 {
            record(&mut seen.caught, took);
        }
        match got {
            Ok(Some(_)) => seen.reads += 1,
            Ok(None) => *seen.errors.entry("get NOT_FOUND".into()).or_insert(0) += 1,
            Err(e) => {
                *seen
                    .errors
                    .entry(format!("get {}", error_label(&e)))
                    .or_insert(0) += 1
            }
        }
    }
    Ok(seen)
}
