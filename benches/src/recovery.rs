//! `mecha-bench recovery`: how long the state module takes to answer again
//! after `kill -9`, and what a running load sees while the module is
//! hot-restarted and upgraded under it.
//!
//! Everything uses the durable store (`disk`, state.redb) of the daemon's bench
//! configuration, because reopening a redb file after an unclean exit is part
//! of what a crash costs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_client::{Client, Error, RetryPolicy, SetOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::Daemon;
use crate::recovery_reads::{self, ReadKills};
use crate::report::{new_histogram, record};

/// The module that is killed and restarted, as named in STATUS.
const MODULE: &str = "state";
/// Its executable, beside mechad.
const MODULE_BINARY: &str = "mecha-mod-state";
/// The redb store of the bench configuration.
pub(crate) const STORE: &str = "disk";
/// Written once before the kills, so that an OK probe means "found": a
/// NOT_FOUND answer would also be OK, and would not prove the store is open.
pub(crate) const PROBE_KEY: &str = "recovery-probe";
const PROBE_VALUE: &[u8] = b"alive";

/// Restart intensity raised so that a kill series never marks the module
/// failed: the daemon's default (5 restarts in 30 s) would stop restarting it
/// after the fifth quick kill, and the bench would measure nothing after that.
const SETTINGS: &str = "\
apiVersion: mecha.io/v1alpha1
kind: Configuration
metadata: {name: bench}
spec: {maxRestarts: 1000, restartWindowSecs: 1}
---
";

/// Deadline of one probe get. The daemon holds a request for a restarting
/// module until the new instance is up or the deadline passes, so one get
/// usually spans the whole recovery. A short deadline only bounds each wait
/// when the restart backoff is long; the next get goes out at once, so the
/// measurement loses nothing by it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// A kill not recovered from in this long is a failure, not a slow sample:
/// the restart backoff is capped at 5 s.
const RECOVERY_LIMIT: Duration = Duration::from_secs(60);
/// How long STATUS may take to show the new instance running.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Polling interval of STATUS while waiting for a new instance.
const SETTLE_POLL: Duration = Duration::from_millis(2);
/// Deadline of admin calls and of the untimed set-up requests.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Clients writing and reading during the hot restarts.
const LOAD_TASKS: usize = 4;
/// Pause before the first restart and after each one, so the load runs on
/// every new instance and the previous instance has time to drain and exit.
const UPGRADE_GAP: Duration = Duration::from_millis(200);

/// How many kills and restarts to do.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Kills in each kill series.
    pub kills: usize,
    /// Hot restarts under load; odd-numbered ones are upgrades.
    pub upgrades: usize,
}

/// One series of kills.
pub struct KillSeries {
    name: &'static str,
    /// Per kill: from `kill(SIGKILL)` returning to the first good answer.
    samples: Vec<Duration>,
    /// Probe gets that failed while the module was down, by what failed.
    failed_probes: BTreeMap<String, u64>,
}

/// The hot restarts under load.
pub struct HotRestarts {
    restarts: usize,
    upgrades: usize,
    /// How long each MODULE_RESTART call took.
    calls: Vec<Duration>,
    /// Successful load operations (sets and gets).
    load_ops: u64,
    /// Failed load operations, by what failed. The target is none.
    load_errors: BTreeMap<String, u64>,
    /// Latency of every load operation, failed ones included.
    load_hist: Histogram<u64>,
}

/// Everything `recovery` measured.
pub struct Results {
    kill_series: Vec<KillSeries>,
    reads: ReadKills,
    hot: HotRestarts,
}

/// Starts mechad with the bench configuration and runs the kill series and
/// the hot restarts.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<Results> {
    // The upgrade path must be absolute (the daemon resolves it in its own
    // working directory), and so must the original it alternates with.
    let bin_dir = bin_dir
        .canonicalize()
        .with_context(|| format!("resolving {}", bin_dir.display()))?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let original = bin_dir.join(MODULE_BINARY);
    let copy = dir.path().join("upgrade").join(MODULE_BINARY);
    std::fs::create_dir_all(copy.parent().context("upgrade path has no parent")?)
        .context("creating the upgrade directory")?;
    // A copy at another path is, to the daemon, a different executable: an
    // upgrade in every respect except the code inside.
    std::fs::copy(&original, &copy)
        .with_context(|| format!("copying {} to {}", original.display(), copy.display()))?;

    eprintln!("[mecha-bench] starting mechad from {}", bin_dir.display());
    let daemon = Daemon::start_with(&bin_dir, dir.path(), SETTINGS)?;
    let socket = daemon.socket().to_path_buf();
    // On error, `daemon` is dropped on the way out, which kills mechad.
    let results = measure(&socket, plan, &original, &copy).await?;
    daemon.stop()?;
    Ok(results)
}

/// The measurements proper, against the daemon at `socket`.
async fn measure(
    socket: &Path,
    plan: &Plan,
    original: &Path,
    copy: &Path,
) -> anyhow::Result<Results> {
    let admin = Client::connect(socket)
        .await
        .with_context(|| format!("connecting to mechad at {}", socket.display()))?
        .with_timeout(ADMIN_TIMEOUT);
    admin
        .set(STORE, PROBE_KEY, PROBE_VALUE, SetOptions::default())
        .await
        .context("writing the probe key")?;
    // No client retries: the client would hide exactly the failures and
    // pauses being measured.
    let probe = admin
        .with_retries(RetryPolicy::disabled())
        .with_timeout(PROBE_TIMEOUT);

    let fresh = kill_series(&admin, &probe, plan.kills, Before::HotRestart).await?;
    let consecutive = kill_series(&admin, &probe, plan.kills, Before::Nothing).await?;
    // Right after the consecutive kills, so the backoff starts at its cap:
    // only the healthy run can make these restarts immediate.
    let healthy = kill_series(&admin, &probe, plan.kills, Before::HealthyRun).await?;
    let reads = recovery_reads::run(socket, &admin, plan.kills).await?;
    let hot = hot_restarts(socket, &admin, plan.upgrades, original, copy).await?;
    Ok(Results {
        kill_series: vec![fresh, consecutive, healthy],
        reads,
        hot,
    })
}

/// What comes before each kill of a series.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Before {
    /// A hot restart, which resets the daemon's restart backoff: every kill
    /// is a first crash.
    HotRestart,
    /// Nothing: the kills follow one another as in a crash loop, and the
    /// daemon's backoff doubles with every crash (up to 5 s).
    Nothing,
    /// A wait until the instance has run longer than the restart window:
    /// the daemon counts that as a healthy run and restarts at once, however
    /// long its backoff had grown.
    HealthyRun,
}

/// How long the instance runs before a `Before::HealthyRun` kill: longer
/// than `restartWindowSecs` (1 s in `SETTINGS`), counted from when STATUS
/// first shows it, which is after it started.
pub(crate) const HEALTHY_RUN: Duration = Duration::from_millis(1250);

/// `kills` times: kill -9 the module and time the first good get after it.
async fn kill_series(
    admin: &Client,
    probe: &Client,
    kills: usize,
    before: Before,
) -> anyhow::Result<KillSeries> {
    let name = match before {
        Before::HotRestart => "kill -9, backoff reset before each kill",
        Before::Nothing => "kill -9, consecutive kills",
        Before::HealthyRun => "kill -9 after a 1.25 s run (> restartWindowSecs)",
    };
    eprintln!("[mecha-bench] {name}: {kills} kills ...");
    if before == Before::Nothing {
        // Starts the escalation at its first step, whatever ran before.
        admin
            .module_restart(MODULE, None)
            .await
            .context("hot restart before the consecutive kills")?;
    }
    let mut samples = Vec::with_capacity(kills);
    let mut failed_probes = BTreeMap::new();
    for i in 1..=kills {
        if before == Before::HotRestart {
            admin
                .module_restart(MODULE, None)
                .await
                .context("hot restart to reset the restart backoff")?;
        }
        let pid = running_pid(admin, None).await?;
        if before == Before::HealthyRun {
            tokio::time::sleep(HEALTHY_RUN).await;
        }
        // The victim must have its store open, as a serving module would: on
        // a hot restart the new instance opens the redb file on first use.
        check_probe(admin.get(STORE, PROBE_KEY).await).context("probe before the kill")?;

        kill_module(pid)?;
        let t0 = Instant::now();
        loop {
            match probe.get(STORE, PROBE_KEY).await {
                Ok(entry) => {
                    check_probe(Ok(entry)).with_context(|| format!("probe after kill {i}"))?;
                    break;
                }
                // A status or a timeout is the module being down; anything
                // else is the connection failing, which waiting cannot fix.
                Err(e @ (Error::Status { .. } | Error::Timeout(_))) => {
                    *failed_probes.entry(error_label(&e)).or_insert(0) += 1;
                    if t0.elapsed() > RECOVERY_LIMIT {
                        bail!("kill {i}: no good answer within {RECOVERY_LIMIT:?}; last: {e}");
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("probe after kill {i}")),
            }
        }
        let took = t0.elapsed();
        samples.push(took);
        eprintln!(
            "[mecha-bench]   kill {i}/{kills}: pid {pid}, recovered in {:.1} ms",
            ms(took)
        );
        // The next kill must hit the new instance, never the old pid.
        running_pid(admin, Some(pid)).await?;
    }
    Ok(KillSeries {
        name,
        samples,
        failed_probes,
    })
}

/// Checks a probe answer: the key must be found with the value written.
fn check_probe(got: Result<Option<mecha_abi::msg::StateEntry>, Error>) -> anyhow::Result<()> {
    match got.with_context(|| format!("get {STORE}/{PROBE_KEY}"))? {
        Some(entry) if entry.value == PROBE_VALUE => Ok(()),
        Some(entry) => bail!(
            "get {STORE}/{PROBE_KEY}: value {:?}, expected {PROBE_VALUE:?}",
            entry.value
        ),
        None => bail!("get {STORE}/{PROBE_KEY}: not found; the store lost a committed write"),
    }
}

/// SIGKILL to a module pid taken from STATUS.
pub(crate) fn kill_module(pid: u32) -> anyhow::Result<()> {
    let raw = i32::try_from(pid).context("module pid out of range")?;
    // 0 and negative pids address process groups, 1 is init, and our own pid
    // would end the bench: STATUS should never report any of them, but a kill
    // aimed by a bug must not land.
    if raw <= 1 || pid == std::process::id() {
        bail!("refusing to kill pid {pid} reported for module {MODULE}");
    }
    kill(Pid::from_raw(raw), Signal::SIGKILL)
        .with_context(|| format!("sending SIGKILL to module {MODULE} (pid {pid})"))
}

/// Polls STATUS until the module runs, under a pid other than `not`.
pub(crate) async fn running_pid(admin: &Client, not: Option<u32>) -> anyhow::Result<u32> {
    let deadline = Instant::now() + SETTLE_LIMIT;
    loop {
        let status = admin.status().await.context("STATUS")?;
        let module = status
            .modules
            .iter()
            .find(|m| m.name == MODULE)
            .with_context(|| format!("STATUS lists no module {MODULE}"))?;
        if module.state == "running" && module.pid != 0 && Some(module.pid) != not {
            return Ok(module.pid);
        }
        if Instant::now() > deadline {
            bail!(
                "module {MODULE} not running under a new pid within {SETTLE_LIMIT:?} \
                 (state {}, pid {})",
                module.state,
                module.pid
            );
        }
        tokio::time::sleep(SETTLE_POLL).await;
    }
}

/// `count` hot restarts while `LOAD_TASKS` clients write and read: even ones
/// restart the current executable, odd ones switch to the other of `original`
/// and `copy` (an upgrade), so every upgrade really changes the executable.
async fn hot_restarts(
    socket: &Path,
    admin: &Client,
    count: usize,
    original: &Path,
    copy: &Path,
) -> anyhow::Result<HotRestarts> {
    let upgrades = count / 2;
    eprintln!(
        "[mecha-bench] hot restarts under load: {} restarts, {upgrades} upgrades, \
         {LOAD_TASKS} load tasks ...",
        count - upgrades
    );
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..LOAD_TASKS {
        // One connection per task, so the load looks like separate apps.
        let client = Client::connect(socket)
            .await
            .with_context(|| format!("connecting load task {worker}"))?;
        tasks.spawn(load(client, worker, Arc::clone(&stop)));
    }
    // The load runs on the current instance before the first restart.
    tokio::time::sleep(UPGRADE_GAP).await;

    let mut calls = Vec::with_capacity(count);
    let mut upgrade_to: [PathBuf; 2] = [copy.to_path_buf(), original.to_path_buf()];
    for i in 0..count {
        let binary = if i % 2 == 1 {
            let next = upgrade_to[0].clone();
            upgrade_to.swap(0, 1);
            Some(next.to_str().context("non-UTF-8 module path")?.to_string())
        } else {
            None
        };
        let what = binary.as_deref().unwrap_or("the current executable");
        let t = Instant::now();
        let pid = admin
            .module_restart(MODULE, binary.clone())
            .await
            .with_context(|| format!("hot restart {} of {count} to {what}", i + 1))?;
        let took = t.elapsed();
        calls.push(took);
        eprintln!(
            "[mecha-bench]   restart {}/{count} ({what}): pid {pid}, call took {:.1} ms",
            i + 1,
            ms(took)
        );
        tokio::time::sleep(UPGRADE_GAP).await;
    }

    stop.store(true, Ordering::Relaxed);
    let mut load_ops = 0;
    let mut load_errors = BTreeMap::new();
    let mut load_hist = new_histogram()?;
    while let Some(joined) = tasks.join_next().await {
        let done = joined.context("a load task panicked")??;
        load_ops += done.ops;
        for (label, n) in done.errors {
            *load_errors.entry(label).or_insert(0) += n;
        }
        load_hist
            .add(&done.hist)
            .context("merging latency histograms")?;
    }
    Ok(HotRestarts {
        restarts: count - upgrades,
        upgrades,
        calls,
        load_ops,
        load_errors,
        load_hist,
    })
}

/// What one load task saw.
struct Load {
    ops: u64,
    errors: BTreeMap<String, u64>,
    hist: Histogram<u64>,
}

/// Sets its own key to an increasing counter and reads it back, until told to
/// stop. Every failure is counted, not retried: the daemon promises that a
/// hot restart loses no request, and client retries would hide a broken
/// promise. A read must return the last acknowledged write (or a write whose
/// answer was an error, which may have been applied): anything else is a
/// write lost in the hand-over between instances.
async fn load(client: Client, worker: usize, stop: Arc<AtomicBool>) -> anyhow::Result<Load> {
    let client = client
        .with_retries(RetryPolicy::disabled())
        .with_timeout(ADMIN_TIMEOUT);
    let key = format!("recovery-load-{worker}");
    let mut hist = new_histogram()?;
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut ops = 0u64;
    let mut acked = 0u64;
    // Values written since `acked` whose set failed: each may have applied.
    let mut unsure: Vec<u64> = Vec::new();
    client
        .set(STORE, &key, &acked.to_le_bytes(), SetOptions::default())
        .await
        .with_context(|| format!("load task {worker}: first set"))?;
    let mut next = 0u64;
    while !stop.load(Ordering::Relaxed) {
        next += 1;
        let t = Instant::now();
        let set = client
            .set(STORE, &key, &next.to_le_bytes(), SetOptions::default())
            .await;
        record(&mut hist, t.elapsed());
        match set {
            Ok(_) => {
                ops += 1;
                acked = next;
                unsure.clear();
            }
            Err(e) => {
                *errors
                    .entry(format!("set {}", error_label(&e)))
                    .or_insert(0) += 1;
                unsure.push(next);
            }
        }

        let t = Instant::now();
        let got = client.get(STORE, &key).await;
        record(&mut hist, t.elapsed());
        match got {
            Ok(Some(entry)) => {
                let seen = <[u8; 8]>::try_from(entry.value.as_slice())
                    .ok()
                    .map(u64::from_le_bytes);
                match seen {
                    Some(v) if v == acked || unsure.contains(&v) => {
                        ops += 1;
                        // What was read is what is stored now.
                        acked = v;
                        unsure.clear();
                    }
                    _ => {
                        *errors
                            .entry("get returned a lost or stale write".into())
                            .or_insert(0) += 1;
                    }
                }
            }
            Ok(None) => *errors.entry("get NOT_FOUND".into()).or_insert(0) += 1,
            Err(e) => {
                *errors
                    .entry(format!("get {}", error_label(&e)))
                    .or_insert(0) += 1
            }
        }
    }
    Ok(Load { ops, errors, hist })
}

/// A short name for what failed: the daemon's status, or the client's reason.
pub(crate) fn error_label(e: &Error) -> String {
    match e {
        Error::Status { status, .. } => status.to_string(),
        Error::Timeout(_) => "client timeout".into(),
        Error::Closed(_) => "connection closed".into(),
        Error::Connect { .. } => "connect failed".into(),
        Error::Protocol(_) => "protocol error".into(),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The nearest-rank `q` quantile of `samples`, in ms. With 50 samples, p99 is
/// the largest one: there are too few to say more.
fn quantile_ms(samples: &[Duration], q: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    ms(sorted[rank - 1])
}

fn hist_ms(hist: &Histogram<u64>, q: f64) -> f64 {
    hist.value_at_quantile(q) as f64 / 1e6
}

/// "UNAVAILABLE 2, DEADLINE_EXCEEDED 40", or "none".
fn counts(map: &BTreeMap<String, u64>) -> String {
    if map.is_empty() {
        return "none".into();
    }
    map.iter()
        .map(|(label, n)| format!("{label} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Both tables in Markdown.
pub fn markdown(r: &Results) -> String {
    let mut out = String::from(
        "| scenario | kills | p50_ms | p99_ms | max_ms | min_ms | failed probe gets |\n\
         |---|---:|---:|---:|---:|---:|---|\n",
    );
    for s in &r.kill_series {
        out.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {} |\n",
            s.name,
            s.samples.len(),
            quantile_ms(&s.samples, 0.50),
            quantile_ms(&s.samples, 0.99),
            quantile_ms(&s.samples, 1.0),
            quantile_ms(&s.samples, 0.0),
            counts(&s.failed_probes),
        ));
    }
    let k = &r.reads;
    out.push_str(&format!(
        "\n| scenario | kills | reads OK | read errors | caught reads | caught p50_ms | \
         caught p99_ms | caught max_ms | all reads p99_ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | kill -9 under a {}-connection read load, no client retries | {} | {} | {} | {} | \
         {:.2} | {:.2} | {:.2} | {:.2} |\n",
        recovery_reads::READERS,
        k.kills,
        k.reads,
        k.errors.values().sum::<u64>(),
        k.caught.len(),
        hist_ms(&k.caught, 0.50),
        hist_ms(&k.caught, 0.99),
        hist_ms(&k.caught, 1.0),
        hist_ms(&k.all, 0.99),
    ));
    if !k.errors.is_empty() {
        out.push_str(&format!("\nRead errors by kind: {}.\n", counts(&k.errors)));
    }
    let h = &r.hot;
    let errors: u64 = h.load_errors.values().sum();
    out.push_str(&format!(
        "\n| scenario | restarts + upgrades | call p50_ms | call max_ms | load ops | load errors | \
         load op p50_ms | load op p99_ms | load op max_ms |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|\n\
         | hot restart under {LOAD_TASKS}-task set/get load | {} + {} | {:.1} | {:.1} | {} | {} | \
         {:.2} | {:.2} | {:.1} |\n",
        h.restarts,
        h.upgrades,
        quantile_ms(&h.calls, 0.50),
        quantile_ms(&h.calls, 1.0),
        h.load_ops,
        errors,
        hist_ms(&h.load_hist, 0.50),
        hist_ms(&h.load_hist, 0.99),
        hist_ms(&h.load_hist, 1.0),
    ));
    out.push_str(&format!(
        "\nLoad errors by kind: {}.\n",
        counts(&h.load_errors)
    ));
    out
}

/// Writes the results, raw samples included, as JSON to `path`.
pub fn write_json(path: &Path, r: &Results) -> anyhow::Result<()> {
    let all_ms = |v: &[Duration]| v.iter().map(|d| ms(*d)).collect::<Vec<_>>();
    let series: Vec<_> = r
        .kill_series
        .iter()
        .map(|s| {
            serde_json::json!({
                "name": s.name,
                "kills": s.samples.len(),
                "p50_ms": quantile_ms(&s.samples, 0.50),
                "p99_ms": quantile_ms(&s.samples, 0.99),
                "max_ms": quantile_ms(&s.samples, 1.0),
                "min_ms": quantile_ms(&s.samples, 0.0),
                "failed_probe_gets": s.failed_probes,
                "samples_ms": all_ms(&s.samples),
            })
        })
        .collect();
    let h = &r.hot;
    let hot = serde_json::json!({
        "restarts": h.restarts,
        "upgrades": h.upgrades,
        "call_p50_ms": quantile_ms(&h.calls, 0.50),
        "call_max_ms": quantile_ms(&h.calls, 1.0),
        "calls_ms": all_ms(&h.calls),
        "load_tasks": LOAD_TASKS,
        "load_ops": h.load_ops,
        "load_errors": h.load_errors,
        "load_op_p50_ms": hist_ms(&h.load_hist, 0.50),
        "load_op_p99_ms": hist_ms(&h.load_hist, 0.99),
        "load_op_max_ms": hist_ms(&h.load_hist, 1.0),
    });
    let k = &r.reads;
    let reads = serde_json::json!({
        "readers": recovery_reads::READERS,
        "kills": k.kills,
        "reads_ok": k.reads,
        "read_errors": k.errors,
        "caught_reads": k.caught.len(),
        "caught_p50_ms": hist_ms(&k.caught, 0.50),
        "caught_p99_ms": hist_ms(&k.caught, 0.99),
        "caught_max_ms": hist_ms(&k.caught, 1.0),
        "all_p99_ms": hist_ms(&k.all, 0.99),
    });
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "kill_series": series,
        "reads_under_kills": reads,
        "hot_restarts": hot,
    }))
    .context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
