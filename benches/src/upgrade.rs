//! Daemon upgrade: the pause a live hand-over of mechad puts into a running
//! load. K connections do state get and set in closed loops on redb, each
//! request's start and latency recorded; after a steady window,
//! `mechactl daemon upgrade` replaces the daemon several times, a few
//! seconds apart. The requests that overlapped a hand-over, and those of the
//! second after one (when the old daemon and its modules exit), are compared
//! with the steady state of the same run (p50, p99, max), and every failed
//! request is counted (target: none, and none slower than 50 ms during a
//! hand-over).

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_client::{Client, RetryPolicy, SetOptions};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::daemon::Daemon;
use crate::report::{new_histogram, record};

/// The target: no request slower than this while a hand-over runs.
pub const TARGET: Duration = Duration::from_millis(50);

/// Distinct keys each connection cycles through (prefilled, so every get
/// hits).
const KEYS: usize = 100;

/// The time after a hand-over whose requests are reported apart: the old
/// daemon and its modules exit then, beside the new ones.
const AFTERMATH: Duration = Duration::from_secs(1);

/// How long the old daemons may take to exit, and the last one to stop.
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// What one run does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Connections, each with one request at a time.
    pub connections: usize,
    /// Hand-overs after the steady window.
    pub handovers: usize,
    /// The steady window before the first hand-over.
    pub steady: Duration,
    /// The pause between the end of one hand-over and the next.
    pub gap: Duration,
    /// Bytes of each stored value.
    pub payload: usize,
}

/// One request: when it started (from the run's start), how long it took,
/// and whether it succeeded.
#[derive(Clone, Copy, Debug)]
struct Sample {
    start: Duration,
    took: Duration,
    ok: bool,
}

/// Percentiles of a set of requests, in microseconds.
#[derive(Clone, Debug)]
pub struct Summary {
    pub name: String,
    pub requests: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Summary {
    fn of(name: &str, hist: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            name: name.to_string(),
            requests: hist.len(),
            p50_us: us(hist.value_at_quantile(0.50)),
            p99_us: us(hist.value_at_quantile(0.99)),
            max_us: us(hist.max()),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "requests": self.requests,
            "p50_us": self.p50_us,
            "p99_us": self.p99_us,
            "max_us": self.max_us,
        })
    }
}

/// The results of one run.
#[derive(Debug)]
pub struct Results {
    pub plan: Plan,
    /// Requests wholly inside the steady window.
    pub steady: Summary,
    /// Requests that overlapped a hand-over window (from the moment
    /// mechactl was started until it answered).
    pub during: Summary,
    /// Requests that started within [`AFTERMATH`] after mechactl answered:
    /// what the old daemon's and modules' exit costs the new ones.
    pub after: Summary,
    /// Every request that failed, in steady state or not.
    pub failed: u64,
    /// The first few failures' messages.
    pub failures: Vec<String>,
    /// How long each `mechactl daemon upgrade` took, in milliseconds.
    pub handover_ms: Vec<f64>,
    /// The daemon's pid before the run and after each hand-over.
    pub pids: Vec<u32>,
}

/// Starts a release mechad with the bench's stores, runs the load, hands
/// the daemon over `plan.handovers` times and stops whichever daemon runs
/// at the end.
pub fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<Results> {
    let mechactl = bin_dir.join("mechactl");
    if !mechactl.is_file() {
        bail!(
            "{} not found; build it with `cargo build --release -p mechactl` or pass --bin-dir",
            mechactl.display()
        );
    }
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let daemon = Daemon::start(bin_dir, dir.path())?;
    let socket = daemon.socket().to_path_buf();
    let outcome = measure(bin_dir, &mechactl, &socket, plan);
    // Whichever daemon runs now is stopped, whether the run succeeded or
    // not; the first one (`daemon`) has exited unless no hand-over
    // happened, and is killed on drop if it has not.
    let stopped = stop_current(&socket);
    drop(daemon);
    let results = outcome?;
    stopped?;
    Ok(results)
}

/// The load, the steady window and the hand-overs.
fn measure(bin_dir: &Path, mechactl: &Path, socket: &Path, plan: &Plan) -> anyhow::Result<Results> {
    let value = vec![b'v'; plan.payload];
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let mut workers = Vec::new();
    for c in 0..plan.connections.max(1) {
        let (socket, stop, value) = (socket.to_path_buf(), Arc::clone(&stop), value.clone());
        workers.push(std::thread::spawn(move || {
            worker(&socket, c, &value, &stop, epoch)
        }));
    }
    // A second of warm-up, then the steady window.
    std::thread::sleep(Duration::from_secs(1));
    let steady_from = epoch.elapsed();
    eprintln!(
        "[mecha-bench] upgrade: {} connections, steady window of {:?} ...",
        plan.connections, plan.steady
    );
    std::thread::sleep(plan.steady);
    let steady_to = epoch.elapsed();

    let mut windows = Vec::new();
    let mut pids = vec![daemon_pid(socket)?];
    let mechad = bin_dir.join("mechad");
    let mut trouble = None;
    for i in 0..plan.handovers {
        let from = epoch.elapsed();
        let out = Command::new(mechactl)
            .arg("--socket")
            .arg(socket)
            .args(["daemon", "upgrade", "--binary"])
            .arg(&mechad)
            .output()
            .context("running mechactl daemon upgrade")?;
        let to = epoch.elapsed();
        windows.push((from, to));
        if !out.status.success() {
            trouble = Some(format!(
                "hand-over {} failed: {}",
                i + 1,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
            break;
        }
        let pid = daemon_pid(socket)?;
        eprintln!(
            "[mecha-bench] upgrade: hand-over {}: pid {} -> {pid} in {:.1} ms",
            i + 1,
            pids.last().copied().unwrap_or(0),
            (to - from).as_secs_f64() * 1e3
        );
        pids.push(pid);
        std::thread::sleep(plan.gap);
    }
    stop.store(true, Ordering::Relaxed);
    let mut samples = Vec::new();
    let mut failures = Vec::new();
    for w in workers {
        let (s, f) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))??;
        samples.extend(s);
        failures.extend(f);
    }
    if let Some(why) = trouble {
        bail!("{why}");
    }
    // The old daemons must be gone: a hand-over leaves one daemon.
    for &old in &pids[..pids.len().saturating_sub(1)] {
        wait_gone(old)?;
    }

    let mut steady = new_histogram()?;
    let mut during = new_histogram()?;
    let mut after = new_histogram()?;
    for s in samples.iter().filter(|s| s.ok) {
        let end = s.start + s.took;
        if s.start >= steady_from && end <= steady_to {
            record(&mut steady, s.took);
        }
        if windows
            .iter()
            .any(|&(from, to)| s.start <= to && end >= from)
        {
            record(&mut during, s.took);
        } else if windows
            .iter()
            .any(|&(_, to)| s.start > to && s.start <= to + AFTERMATH)
        {
            record(&mut after, s.took);
        }
    }
    let failed = samples.iter().filter(|s| !s.ok).count() as u64;
    failures.truncate(10);
    Ok(Results {
        plan: *plan,
        steady: Summary::of("steady state", &steady),
        during: Summary::of("overlapping a hand-over", &during),
        after: Summary::of("in the second after a hand-over", &after),
        failed,
        failures,
        handover_ms: windows
            .iter()
            .map(|(from, to)| (*to - *from).as_secs_f64() * 1e3)
            .collect(),
        pids,
    })
}

/// A worker's samples and its failures' messages.
type WorkerOutput = (Vec<Sample>, Vec<String>);

/// One connection: set, then get, of its own keys, until `stop`; every
/// request is one attempt (no retry), so a failure is counted, not hidden.
fn worker(
    socket: &Path,
    index: usize,
    value: &[u8],
    stop: &AtomicBool,
    epoch: Instant,
) -> anyhow::Result<WorkerOutput> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a load runtime")?;
    runtime.block_on(async {
        let client = Client::connect(socket)
            .await
            .context("connecting a load client")?
            .with_retries(RetryPolicy::disabled());
        let keys: Vec<String> = (0..KEYS).map(|k| format!("c{index}-k{k}")).collect();
        for key in &keys {
            client
                .set("disk", key, value.to_vec(), SetOptions::default())
                .await
                .context("prefilling the keys")?;
        }
        let (mut samples, mut failures) = (Vec::new(), Vec::new());
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let key = &keys[i % KEYS];
            let start = Instant::now();
            let result = if i.is_multiple_of(2) {
                client.get("disk", key).await.and_then(|entry| match entry {
                    Some(_) => Ok(()),
                    None => Err(mecha_client::Error::Protocol(format!("{key} is missing"))),
                })
            } else {
                client
                    .set("disk", key, value.to_vec(), SetOptions::default())
                    .await
                    .map(|_| ())
            };
            samples.push(Sample {
                start: start - epoch,
                took: start.elapsed(),
                ok: result.is_ok(),
            });
            if let Err(e) = result {
                failures.push(format!("connection {index}: {e}"));
            }
            i += 1;
        }
        Ok((samples, failures))
    })
}

/// The pid of the daemon serving `socket`, from STATUS.
fn daemon_pid(socket: &Path) -> anyhow::Result<u32> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        let client = Client::connect(socket)
            .await
            .context("connecting for STATUS")?;
        Ok(client.status().await.context("STATUS")?.pid)
    })
}

/// Waits until `pid` has exited (gone, or a zombie of a parent that has not
/// reaped it).
fn wait_gone(pid: u32) -> anyhow::Result<()> {
    let deadline = Instant::now() + EXIT_LIMIT;
    loop {
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|stat| {
                let close = stat.rfind(')')?;
                stat[close + 1..]
                    .split_whitespace()
                    .next()
                    .map(str::to_owned)
            });
        match state.as_deref() {
            None | Some("Z") => return Ok(()),
            Some(_) if Instant::now() > deadline => {
                bail!("the old mechad {pid} still runs {EXIT_LIMIT:?} after its hand-over")
            }
            Some(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Stops the daemon serving `socket` with SIGTERM and waits for it to exit.
fn stop_current(socket: &Path) -> anyhow::Result<()> {
    let pid = daemon_pid(socket)?;
    let raw = i32::try_from(pid).context("mechad pid out of range")?;
    kill(Pid::from_raw(raw), Signal::SIGTERM).context("sending SIGTERM to mechad")?;
    wait_gone(pid)
}

/// The results as Markdown: the three sets of requests side by side, then
/// the hand-overs, the failures and the target, which is judged on the
/// slowest request overlapping a hand-over or in the second after one.
pub fn markdown(r: &Results) -> String {
    let mut s = String::from(
        "| requests | count | p50 µs | p99 µs | max µs |\n|---|---:|---:|---:|---:|\n",
    );
    for o in [&r.steady, &r.during, &r.after] {
        s.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} | {:.1} |\n",
            o.name, o.requests, o.p50_us, o.p99_us, o.max_us
        ));
    }
    let ms: Vec<String> = r.handover_ms.iter().map(|m| format!("{m:.0}")).collect();
    let max_ms = r.during.max_us.max(r.after.max_us) / 1000.0;
    let verdict = if r.failed == 0 && max_ms <= TARGET.as_secs_f64() * 1e3 {
        "met"
    } else {
        "missed"
    };
    s.push_str(&format!(
        "\n{} connections, one get or set at a time each on state.redb, {}-byte values. \
         {} hand-overs (`mechactl daemon upgrade`, same binary), {:?} apart; each took {} ms \
         from mechactl's start to its answer. Daemon pids: {}.\n\
         Failed requests: {}. Slowest request overlapping a hand-over or in the second \
         after one: {:.1} ms \
         (target ≤ {} ms: {verdict}); p99 overlapping / steady: {:.2}×.\n",
        r.plan.connections,
        r.plan.payload,
        r.handover_ms.len(),
        r.plan.gap,
        ms.join(", "),
        r.pids
            .iter()
            .map(u32::to_string)
            .collect::<Vec<_>>()
            .join(" → "),
        r.failed,
        max_ms,
        TARGET.as_millis(),
        if r.steady.p99_us > 0.0 {
            r.during.p99_us / r.steady.p99_us
        } else {
            f64::NAN
        },
    ));
    for f in &r.failures {
        s.push_str(&format!("- failed: {f}\n"));
    }
    s
}

/// Writes the results as JSON.
pub fn write_json(path: &Path, r: &Results) -> anyhow::Result<()> {
    let doc = serde_json::json!({
        "connections": r.plan.connections,
        "payload": r.plan.payload,
        "scenarios": [r.steady.json(), r.during.json(), r.after.json()],
        "failed": r.failed,
        "handover_ms": r.handover_ms,
        "pids": r.pids,
        "target_max_ms": TARGET.as_millis() as u64,
    });
    crate::report::write_json_value(path, &doc)
}
