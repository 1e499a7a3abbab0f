//! `mechad`: the mecha node daemon — listener, router and module supervisor.

mod config;
mod conn;
mod daemon;
mod link;
mod listener;
mod peer;
mod spawn;
mod supervisor;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use mecha_abi::{Family, DEFAULT_MAX_FRAME, MAX_FRAME_CAP};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use config::Config;
use daemon::Daemon;
use supervisor::{ModuleSlot, RestartPolicy};

/// The mecha node daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// A YAML file of Component/Configuration documents, or a directory of them.
    /// Without it, the embedded default runs (a state store on redb).
    #[arg(long, env = "MECHA_CONFIG")]
    config: Option<PathBuf>,
    /// The application socket. Default: /run/mecha/mecha.sock as root, else
    /// $XDG_RUNTIME_DIR/mecha/mecha.sock.
    #[arg(long, env = "MECHA_SOCKET")]
    socket: Option<PathBuf>,
    /// Where modules keep durable data. Default: /var/lib/mecha as root, else
    /// $XDG_DATA_HOME/mecha (~/.local/share/mecha).
    #[arg(long, env = "MECHA_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Where the mecha-mod-* binaries are. Default: beside mechad.
    #[arg(long, env = "MECHA_MODULE_DIR")]
    module_dir: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MECHA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .init();
    let args = Args::parse();
    // Two workers match the small nodes this runs on; the router does little
    // work per frame, and modules do theirs in their own processes.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run(args))
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn default_socket() -> PathBuf {
    if is_root() {
        return PathBuf::from("/run/mecha/mecha.sock");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => Path::new(&dir).join("mecha/mecha.sock"),
        None => std::env::temp_dir().join(format!("mecha-{}/mecha.sock", nix::unistd::geteuid())),
    }
}

fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from("/var/lib/mecha");
    }
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return Path::new(&dir).join("mecha");
    }
    match std::env::var_os("HOME") {
        Some(home) => Path::new(&home).join(".local/share/mecha"),
        None => std::env::temp_dir().join(format!("mecha-data-{}", nix::unistd::geteuid())),
    }
}

fn family_of(name: &str) -> Option<Family> {
    match name {
        "state" => Some(Family::State),
        _ => None,
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::embedded_default(),
    };
    let settings = &config.settings;
    let socket = args
        .socket
        .or_else(|| settings.socket_path.clone())
        .unwrap_or_else(default_socket);
    let data_dir = args
        .data_dir
        .or_else(|| settings.data_dir.clone())
        .unwrap_or_else(default_data_dir);
    let module_dir = match args.module_dir.or_else(|| settings.module_dir.clone()) {
        Some(dir) => dir,
        None => std::env::current_exe()
            .context("locating mechad to find its modules")?
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let mode = match &settings.socket_mode {
        Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
            .ok()
            .filter(|m| *m <= 0o777)
            .with_context(|| {
                format!("Configuration spec.socketMode: {m:?} is not an octal file mode")
            })?,
        None => 0o666,
    };
    let max_frame = settings.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME);
    if max_frame == 0 || max_frame > MAX_FRAME_CAP {
        bail!(
            "Configuration spec.maxFrameBytes: {max_frame} must be between 1 and {MAX_FRAME_CAP}"
        );
    }
    let policy = RestartPolicy {
        max_restarts: settings.max_restarts.unwrap_or(5),
        window: Duration::from_secs(settings.restart_window_secs.unwrap_or(30)),
    };

    let mut modules = Vec::new();
    for (family_name, components) in config.families() {
        let Some(family) = family_of(&family_name) else {
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            bail!(
                "components {names:?}: no module serves the {family_name:?} family (known: state)"
            );
        };
        let module_data = data_dir.join(&family_name);
        std::fs::create_dir_all(&module_data)
            .with_context(|| format!("creating data directory {}", module_data.display()))?;
        let binary = module_dir.join(format!("mecha-mod-{family_name}"));
        modules.push(ModuleSlot::new(
            family_name,
            family,
            binary,
            module_data,
            components,
        ));
    }

    // Start modules in order before accepting, so the first request finds them.
    // A module that cannot start at boot is a configuration error: fail loudly.
    let mut supervisors = Vec::new();
    for slot in &modules {
        let child = slot
            .start()
            .await
            .with_context(|| format!("starting module {}", slot.name))?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let task = tokio::spawn(Arc::clone(slot).supervise(child, policy, stop_rx));
        supervisors.push((stop_tx, task));
    }

    let listener = listener::bind(&socket, mode)?;
    let daemon = Arc::new(Daemon {
        max_frame,
        default_timeout: Duration::from_millis(u64::from(
            settings.default_timeout_ms.unwrap_or(5000),
        )),
        max_in_flight: settings.max_in_flight_per_connection.unwrap_or(256).max(1),
        tenants: peer::Tenants::new(settings.tenants.clone()),
        modules,
        started,
    });
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), ready_ms = started.elapsed().as_millis() as u64, "mechad ready");

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let accept = tokio::spawn(listener::accept_loop(
        listener,
        Arc::clone(&daemon),
        shutdown_rx,
    ));
    wait_for_signal().await?;
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    let _ = accept.await;
    // Stop modules in reverse start order, each drained before the next.
    for (stop, task) in supervisors.into_iter().rev() {
        let _ = stop.send(true);
        let _ = task.await;
    }
    if let Err(e) = std::fs::remove_file(&socket) {
        tracing::warn!(socket = %socket.display(), "cannot remove socket: {e}");
    }
    tracing::info!("mechad stopped");
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
