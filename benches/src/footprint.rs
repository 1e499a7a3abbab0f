//! Start-up time and memory: how long mechad takes from exec to serving with
//! every module of its embedded default configuration, the resident memory
//! (VmRSS) of mechad and of each module when idle, and of mechad and the
//! state module with 100 tenants connected.
//!
//! RSS counts every page a process has mapped, including the C library's and
//! any other page it shares with its siblings, so the sum of RSS over the
//! processes counts shared pages once per process. PSS (proportional set
//! size) divides each shared page among the processes that map it, so the
//! sum of PSS is what the node really spends; both are reported.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mecha_client::{Client, SetOptions};

use crate::daemon::Daemon;

/// Tenants in the many-tenants measurement, each on a socket of its own.
pub const TENANTS: usize = 100;
/// Sets each tenant does, so its connection and keys exist in the module too.
const SETS_PER_TENANT: usize = 10;
/// Time for allocators and lazy start-up work to settle before RSS is read.
const SETTLE: Duration = Duration::from_millis(300);

/// One process's resident memory.
#[derive(Clone, Debug)]
pub struct Rss {
    pub process: String,
    /// VmRSS: every resident page the process maps.
    pub kib: u64,
    /// Pss: each shared page divided by the number of processes mapping it.
    pub pss_kib: u64,
}

#[derive(Debug)]
pub struct Footprint {
    /// exec → all default modules ready, one sample per start.
    pub startup_ms: Vec<f64>,
    /// mechad and every module of the default configuration, idle.
    pub idle: Vec<Rss>,
    /// mechad and the state module with `TENANTS` sockets configured, before
    /// any client connects and with every tenant connected.
    pub tenants_before: Vec<Rss>,
    pub tenants_after: Vec<Rss>,
}

impl Footprint {
    pub fn startup_mean_ms(&self) -> f64 {
        self.startup_ms.iter().sum::<f64>() / self.startup_ms.len().max(1) as f64
    }
}

/// Measures start-up `starts` times (the last start also gives the idle RSS),
/// then the many-tenants RSS; `progress` is called before each step.
pub fn run(
    bin_dir: &Path,
    starts: usize,
    payload: usize,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<Footprint> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    progress(&format!(
        "start-up of the default configuration, {starts} starts"
    ));
    let mut startup_ms = Vec::with_capacity(starts);
    let mut idle = Vec::new();
    for i in 0..starts {
        // A fresh data directory each time: every start creates its redb
        // files, as a first start on a node does.
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let t = Instant::now();
        let daemon = Daemon::start_default(bin_dir, dir.path())?;
        startup_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        // mechad listens only once its modules are up; STATUS confirms that
        // every one is running, so the time above is exec to all ready.
        runtime.block_on(rss_of_all(daemon.socket(), true))?;
        if i + 1 == starts {
            std::thread::sleep(SETTLE);
            idle = runtime.block_on(rss_of_all(daemon.socket(), true))?;
        }
        daemon.stop()?;
    }

    progress(&format!("RSS with {TENANTS} tenants connected"));
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let sockets: Vec<_> = (0..TENANTS)
        .map(|i| dir.path().join(format!("t{i}.sock")))
        .collect();
    let daemon = Daemon::start_config(
        bin_dir,
        dir.path(),
        &tenants_config(&sockets),
        &["mecha-mod-state"],
    )?;
    std::thread::sleep(SETTLE);
    let tenants_before = runtime.block_on(rss_of_all(daemon.socket(), false))?;
    let tenants_after = runtime.block_on(async {
        let value = vec![0xA5u8; payload];
        let mut clients = Vec::with_capacity(TENANTS);
        for socket in &sockets {
            let client = Client::connect(socket)
                .await
                .with_context(|| format!("connecting to {}", socket.display()))?;
            for k in 0..SETS_PER_TENANT {
                client
                    .set(
                        "mem",
                        &format!("k{k}"),
                        value.as_slice(),
                        SetOptions::default(),
                    )
                    .await
                    .context("a tenant's set")?;
            }
            clients.push(client);
        }
        tokio::time::sleep(SETTLE).await;
        // Read while every tenant is still connected.
        let rss = rss_of_all(daemon.socket(), false).await;
        drop(clients);
        rss
    })?;
    daemon.stop()?;
    Ok(Footprint {
        startup_ms,
        idle,
        tenants_before,
        tenants_after,
    })
}

/// A Configuration with one extra socket per tenant and a tenant rule per
/// socket (as in daemon/tests/tenants.rs), plus one memory store.
fn tenants_config(sockets: &[std::path::PathBuf]) -> String {
    let mut s = String::from(
        "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: bench}\nspec:\n  sockets:\n",
    );
    for path in sockets {
        s.push_str(&format!("  - path: {}\n", path.display()));
    }
    s.push_str("  tenants:\n");
    for (i, path) in sockets.iter().enumerate() {
        s.push_str(&format!(
            "  - name: t{i}\n    sockets: [{}]\n",
            path.display()
        ));
    }
    s.push_str(
        "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {name: mem}\n\
         spec: {type: state.memory, version: v1, metadata: []}\n",
    );
    s
}

/// mechad's and each module's RSS, with the module pids from STATUS; when
/// `all_running`, a module that is not `running` is an error, except an
/// idle one, which has no process (the embedded default's Dapr personality
/// waits, socket-activated, for its first caller).
async fn rss_of_all(socket: &Path, all_running: bool) -> anyhow::Result<Vec<Rss>> {
    let client = Client::connect(socket)
        .await
        .context("connecting to mechad")?;
    let status = client.status().await.context("STATUS")?;
    let mut out = vec![Rss {
        process: "mechad".to_string(),
        kib: vm_rss(status.pid)?,
        pss_kib: pss(status.pid)?,
    }];
    for module in status.modules.iter().filter(|m| m.state != "idle") {
        if all_running && module.state != "running" {
            bail!("module {} is {}, not running", module.name, module.state);
        }
        out.push(Rss {
            process: format!("module {}", module.name),
            kib: vm_rss(module.pid)?,
            pss_kib: pss(module.pid)?,
        });
    }
    Ok(out)
}

/// VmRSS of `pid` in KiB, from /proc/PID/status.
fn vm_rss(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "status", "VmRSS:")
}

/// Pss of `pid` in KiB, from /proc/PID/smaps_rollup (Linux 4.14 and later).
fn pss(pid: u32) -> anyhow::Result<u64> {
    proc_kib(pid, "smaps_rollup", "Pss:")
}

/// The KiB figure of the line starting with `field` in /proc/PID/`file`.
fn proc_kib(pid: u32, file: &str, field: &str) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/{file}");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("{path} has no {field} line"))?;
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .with_context(|| format!("{path}: unreadable {field} line {line:?}"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn total(rss: &[Rss]) -> u64 {
    rss.iter().map(|r| r.kib).sum()
}

fn total_pss(rss: &[Rss]) -> u64 {
    rss.iter().map(|r| r.pss_kib).sum()
}

pub fn markdown(f: &Footprint) -> String {
    let (min, max) = f
        .startup_ms
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), &ms| (lo.min(ms), hi.max(ms)));
    let mut s = format!(
        "Start-up, exec to serving with all default modules: mean {:.0} ms over {} starts \
         (min {min:.0}, max {max:.0}).\n\n| process | idle RSS MiB (default config) | idle PSS MiB |\n\
         |---|---:|---:|\n",
        f.startup_mean_ms(),
        f.startup_ms.len()
    );
    for r in &f.idle {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} |\n",
            r.process,
            mib(r.kib),
            mib(r.pss_kib)
        ));
    }
    s.push_str(&format!(
        "| total | {:.1} | {:.1} |\n",
        mib(total(&f.idle)),
        mib(total_pss(&f.idle))
    ));
    s.push_str(&format!(
        "\n| process | RSS MiB, {TENANTS} tenant sockets, none connected | {TENANTS} tenants \
         connected, {SETS_PER_TENANT} sets each |\n|---|---:|---:|\n"
    ));
    for (before, after) in f.tenants_before.iter().zip(&f.tenants_after) {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} |\n",
            before.process,
            mib(before.kib),
            mib(after.kib)
        ));
    }
    s.push_str(&format!(
        "| total | {:.1} | {:.1} |\n",
        mib(total(&f.tenants_before)),
        mib(total(&f.tenants_after))
    ));
    s
}

pub fn json(f: &Footprint) -> serde_json::Value {
    let rss = |list: &[Rss]| {
        list.iter()
            .map(|r| (r.process.clone(), serde_json::json!(r.kib)))
            .collect::<serde_json::Map<_, _>>()
    };
    let pss = |list: &[Rss]| {
        list.iter()
            .map(|r| (r.process.clone(), serde_json::json!(r.pss_kib)))
            .collect::<serde_json::Map<_, _>>()
    };
    serde_json::json!({
        "startup_ms_mean": f.startup_mean_ms(),
        "startup_ms": f.startup_ms,
        "idle_rss_kib": rss(&f.idle),
        "idle_pss_kib": pss(&f.idle),
        "idle_rss_kib_total": total(&f.idle),
        "idle_pss_kib_total": total_pss(&f.idle),
        "tenants": TENANTS,
        "tenants_rss_kib_before": rss(&f.tenants_before),
        "tenants_rss_kib_connected": rss(&f.tenants_after),
    })
}
