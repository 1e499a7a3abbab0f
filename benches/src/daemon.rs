//! Starts the real `mechad` on a temporary socket and data directory (with the
//! bench's two-store configuration, another one, or none: the embedded
//! default), and stops it with SIGTERM (or, if the bench fails first, kills it
//! on drop).

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Two state stores in one module: the in-memory one and the durable redb one.
pub const CONFIG: &str = "\
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: mem}
spec: {type: state.memory, version: v1, metadata: []}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: disk}
spec: {type: state.redb, version: v1, metadata: []}
";

/// The module binaries of the embedded default configuration.
pub const ALL_MODULES: [&str; 8] = [
    "mecha-mod-dapr",
    "mecha-mod-state",
    "mecha-mod-pubsub",
    "mecha-mod-lock",
    "mecha-mod-sequencer",
    "mecha-mod-config",
    "mecha-mod-secrets",
    "mecha-mod-invoke",
];

/// How long mechad may take to start its modules and listen.
const START_LIMIT: Duration = Duration::from_secs(30);
/// How long mechad may take to drain and exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(20);

/// A running mechad. Dropping it kills the process so none is left behind.
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
}

impl Daemon {
    /// Starts `bin_dir/mechad` with its modules from `bin_dir`, keeping its
    /// socket, config and data under `dir`, and waits until it accepts.
    pub fn start(bin_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::start_with(bin_dir, dir, "")
    }

    /// Like [`Daemon::start`], with `settings` (YAML documents ending in
    /// `---`, e.g. a `kind: Configuration`) placed before the two stores.
    pub fn start_with(bin_dir: &Path, dir: &Path, settings: &str) -> anyhow::Result<Self> {
        Self::spawn(
            bin_dir,
            dir,
            Some(&format!("{settings}{CONFIG}")),
            &["mecha-mod-state"],
        )
    }

    /// Starts mechad without `--config`, so it runs its embedded default:
    /// state, pubsub, lock, sequencer, config and secrets on their embedded
    /// drivers (redb for the first four). Needs every module binary.
    pub fn start_default(bin_dir: &Path, dir: &Path) -> anyhow::Result<Self> {
        Self::spawn(bin_dir, dir, None, &ALL_MODULES)
    }

    /// Starts mechad with `config` (YAML documents) as its only
    /// configuration; `modules` are the module binaries it needs.
    pub fn start_config(
        bin_dir: &Path,
        dir: &Path,
        config: &str,
        modules: &[&str],
    ) -> anyhow::Result<Self> {
        Self::spawn(bin_dir, dir, Some(config), modules)
    }

    fn spawn(
        bin_dir: &Path,
        dir: &Path,
        config: Option<&str>,
        modules: &[&str],
    ) -> anyhow::Result<Self> {
        require(bin_dir, modules)?;
        let mechad = bin_dir.join("mechad");
        let socket = dir.join("mecha.sock");
        let mut command = Command::new(&mechad);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--module-dir")
            .arg(bin_dir)
            // No HTTP endpoint: nothing here reads it, and a fixed port could
            // clash with another daemon on the machine.
            .arg("--http")
            .arg("off")
            // A MECHA_CONFIG in the caller's environment would replace the
            // configuration chosen here (or the embedded default).
            .env_remove("MECHA_CONFIG")
            // Per-request logging would be measured along with the router.
            .env("MECHA_LOG", "warn")
            .stdin(Stdio::null());
        if let Some(text) = config {
            let path = dir.join("mecha.yaml");
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
            command.arg("--config").arg(&path);
        }
        let child = command
            .spawn()
            .with_context(|| format!("spawning {}", mechad.display()))?;
        let mut daemon = Self {
            child: Some(child),
            socket,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    /// The application socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Polls until the socket accepts: mechad binds it only after its modules
    /// are up, so a connection means the stores are ready.
    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("checking on mechad")? {
                    self.child = None;
                    bail!("mechad exited during start-up: {status}");
                }
            }
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "mechad did not listen on {} within {START_LIMIT:?}",
                    self.socket.display()
                );
            }
            // Fine-grained: `compare` reports start-up time, which is only
            // as precise as this poll (a 5 ms poll made start-ups of 16 and
            // 21 ms read 20.6 and 25.7).
            std::thread::sleep(Duration::from_micros(500));
        }
    }

    /// Sends SIGTERM and waits for a clean exit; kills it if it does not come.
    pub fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = i32::try_from(child.id()).context("mechad pid out of range")?;
        kill(Pid::from_raw(pid), Signal::SIGTERM).context("sending SIGTERM to mechad")?;
        let deadline = Instant::now() + STOP_LIMIT;
        loop {
            if let Some(status) = child.try_wait().context("waiting for mechad")? {
                if !status.success() {
                    bail!("mechad exited with {status} after SIGTERM");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!("mechad did not exit within {STOP_LIMIT:?} of SIGTERM; killed it");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Fails with the build command unless `mechad` and `modules` are all in
/// `bin_dir`.
pub fn require(bin_dir: &Path, modules: &[&str]) -> anyhow::Result<()> {
    let needed = std::iter::once("mechad").chain(modules.iter().copied());
    for binary in needed.map(|b| bin_dir.join(b)) {
        if !binary.is_file() {
            bail!(
                "{} not found; build it with `cargo build --release -p mechad {}` \
                 or pass --bin-dir",
                binary.display(),
                modules
                    .iter()
                    .map(|m| format!("-p {m}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
    }
    Ok(())
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Best effort on an error path: the bench is failing already.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A loopback TCP port nobody listens on right now (bound, read, released),
/// for the servers and daemons a benchmark starts.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .context("finding a free loopback port")?
        .port())
}
