//! The noisy neighbour's flooder as a process of its own, confined the way the
//! kubelet confines a pod's container: a cgroup with one CPU's worth of CPU
//! time (`cpu.max` on cgroup v2, the CFS quota on v1). Unconfined, a flooder
//! on a small machine takes CPU from the daemon and the victim alike, and the
//! benchmark then measures the machine's scheduler instead of mecha's fairness.
//!
//! The parent drives the worker over its standard input, one word a line:
//! `go` starts the flood, `mark` asks for the number of requests answered so
//! far (printed as `count N`), and the end of input stops it.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use mecha_client::Client;

/// The worker's arguments (the hidden `flood-worker` command).
#[derive(clap::Args, Debug)]
pub struct WorkerArgs {
    /// The flooding tenant's socket.
    #[arg(long)]
    pub socket: PathBuf,
    /// Connections.
    #[arg(long)]
    pub connections: usize,
    /// Requests in flight on each connection.
    #[arg(long)]
    pub depth: usize,
}

/// CPU time the flooder may use per period: one CPU.
const QUOTA_US: u64 = 100_000;
const PERIOD_US: u64 = 100_000;

/// Runs the flood in this process until standard input ends.
pub fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let mut lines = std::io::stdin().lock().lines();
    match lines.next() {
        Some(Ok(line)) if line == "go" => {}
        other => bail!("the flood worker expected `go`, got {other:?}"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the flooder's runtime")?;
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    runtime.block_on(async {
        for c in 0..args.connections {
            let client = Client::connect(&args.socket)
                .await
                .with_context(|| format!("connecting flooder {c}"))?;
            for _ in 0..args.depth {
                let (client, stop, done) = (client.clone(), Arc::clone(&stop), Arc::clone(&done));
                tasks.push(tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        // Errors (a quota, say) still load the daemon; count
                        // only the answered requests.
                        if client.get("mem", "noise").await.is_ok() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }));
            }
        }
        anyhow::Ok(())
    })?;
    let mut out = std::io::stdout().lock();
    for line in lines {
        if line.context("reading the parent's commands")? == "mark" {
            writeln!(out, "count {}", done.load(Ordering::Relaxed))?;
            out.flush()?;
        }
    }
    stop.store(true, Ordering::Relaxed);
    runtime.block_on(async {
        for task in tasks {
            let _ = task.await;
        }
    });
    Ok(())
}

/// A running flood worker, seen from the benchmark.
pub struct Flooder {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    /// How the worker is confined, for the report.
    pub confinement: String,
    cgroup: Option<PathBuf>,
}

impl Flooder {
    /// Starts a worker, confines it to one CPU where the machine allows, and
    /// starts its flood.
    pub fn start(socket: &Path, connections: usize, depth: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating mecha-bench")?;
        let mut child = Command::new(exe)
            .arg("flood-worker")
            .arg("--socket")
            .arg(socket)
            .arg("--connections")
            .arg(connections.to_string())
            .arg("--depth")
            .arg(depth.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the flood worker")?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            bail!("the flood worker has no pipes");
        };
        let (cgroup, confinement) = match confine(child.id()) {
            Ok(path) => (
                Some(path.clone()),
                format!("its own cgroup ({}) limited to one CPU", path.display()),
            ),
            Err(why) => (None, format!("unconfined ({why})")),
        };
        let mut flooder = Self {
            child,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
            confinement,
            cgroup,
        };
        flooder.send("go")?;
        Ok(flooder)
    }

    fn send(&mut self, word: &str) -> anyhow::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the worker's input is closed")?;
        writeln!(stdin, "{word}").context("writing to the flood worker")?;
        stdin.flush().context("writing to the flood worker")
    }

    /// Requests the worker has had answered so far.
    pub fn count(&mut self) -> anyhow::Result<u64> {
        self.send("mark")?;
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .context("reading the flood worker's count")?;
        line.trim()
            .strip_prefix("count ")
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("the flood worker answered {line:?}"))
    }

    /// Stops the flood and waits for the worker.
    pub fn stop(mut self) -> anyhow::Result<()> {
        drop(self.stdin.take());
        let status = self.child.wait().context("waiting for the flood worker")?;
        if !status.success() {
            bail!("the flood worker failed: {status}");
        }
        Ok(())
    }
}

impl Drop for Flooder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(path) = &self.cgroup {
            let _ = std::fs::remove_dir(path);
        }
    }
}

/// Moves process `pid` into a new cgroup with one CPU's worth of CPU time:
/// cgroup v2 (`cpu.max`) when the unified hierarchy has the cpu controller,
/// else the v1 cpu hierarchy (CFS quota). Needs the right to create cgroups
/// (root); the error says why not.
fn confine(pid: u32) -> Result<PathBuf, String> {
    let name = format!("mecha-bench-flood-{}", std::process::id());
    let v2 = Path::new("/sys/fs/cgroup");
    let v2_ok = std::fs::read_to_string(v2.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "cpu"));
    let (dir, limits): (PathBuf, Vec<(&str, String)>) = if v2_ok {
        (
            v2.join(&name),
            vec![("cpu.max", format!("{QUOTA_US} {PERIOD_US}"))],
        )
    } else {
        (
            v2.join("cpu").join(&name),
            vec![
                ("cpu.cfs_period_us", PERIOD_US.to_string()),
                ("cpu.cfs_quota_us", QUOTA_US.to_string()),
            ],
        )
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    for (file, value) in limits {
        std::fs::write(dir.join(file), value)
            .map_err(|e| format!("writing {}/{file}: {e}", dir.display()))?;
    }
    std::fs::write(dir.join("cgroup.procs"), pid.to_string())
        .map_err(|e| format!("moving the flooder into {}: {e}", dir.display()))?;
    Ok(dir)
}
