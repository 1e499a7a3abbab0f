//! `mechad`: the mecha node daemon — listener, router and module supervisor.

mod answer;
mod budget;
mod caller;
mod calls;
mod childspec;
mod clocked;
mod config;
mod conn;
mod control;
mod crashes;
mod daemon;
mod dashboard;
mod deadlines;
mod direct;
mod events;
mod exposition;
mod forward;
mod handle;
mod handover;
mod history;
mod http;
mod inherited;
mod link;
mod listener;
mod metrics;
mod notify;
mod peer;
mod personality;
mod plan;
mod pod;
mod quota;
mod ratelog;
mod response;
mod router;
mod routes;
mod secret_ref;
mod sessions;
mod spawn;
mod supervisor;
mod trace;
mod unix_socket;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use mecha_abi::{DEFAULT_MAX_FRAME, MAX_FRAME_CAP};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use config::Config;
use daemon::Daemon;
use plan::Paths;
use supervisor::{ModuleSlot, Supervision};

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
    /// Serve /healthz, /readyz and /metrics on this address (e.g.
    /// 127.0.0.1:9464), or `off`. Default: spec.http.address; else on at
    /// 0.0.0.0:9464 inside Kubernetes and off elsewhere.
    #[arg(long, env = "MECHA_HTTP")]
    http: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log collectors). Modules inherit the choice.
    #[arg(long, env = "MECHA_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Router threads. 1 serves everything on one thread: no wake-ups across
    /// CPUs, the least memory, one core's worth of routing. More spread
    /// connections over threads (see BENCHMARKS.md, "Thread layout").
    #[arg(long, env = "MECHA_WORKERS", default_value_t = 2,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    workers: u16,
    /// Export request spans with OTLP/HTTP JSON to this collector (e.g.
    /// http://127.0.0.1:4318), or `off`. Default: spec.tracing.otlpEndpoint;
    /// else no export.
    #[arg(long, env = "MECHA_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// Start by taking over from the mechad serving the same socket, through
    /// its hand-over socket (`<socket>.handover`): its listening sockets,
    /// live connections and modules' places. `required` fails (leaving the
    /// running daemon serving) when that is not possible; `auto` starts
    /// fresh when no daemon answers (the first pod of a DaemonSet on a node).
    #[arg(long, env = "MECHA_TAKEOVER", value_enum)]
    takeover: Option<handover::take::Mode>,
    /// What this daemon does once a new one took over from it: `exit`, or
    /// `wait` idle for SIGTERM (in a DaemonSet pod, which kubelet would
    /// otherwise restart).
    #[arg(long, env = "MECHA_AFTER_HANDOVER", value_enum, default_value = "exit")]
    after_handover: AfterHandover,
}

/// The `--after-handover` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum AfterHandover {
    Exit,
    Wait,
}

/// The `--log-format` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // A `Targets` list (`info`, `warn,mechad=debug`) rather than EnvFilter,
    // whose span-field regular expressions nobody used but whose regex engine
    // every binary then carried, resident; see `mecha_module`'s boot.rs. An
    // unset or unparsable value means `info`, as before, and so does an empty
    // one (EnvFilter read that as errors only).
    let filter = std::env::var("MECHA_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| v.trim().parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(filter);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    if args.log_format == LogFormat::Json {
        // Modules read the same variable, so one flag sets the format of the
        // whole node's logs.
        std::env::set_var("MECHA_LOG_FORMAT", "json");
        registry.with(logs.json().with_current_span(false)).init();
    } else {
        registry
            .with(logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())))
            .init();
    }
    // Two workers by default match the small nodes this runs on; the router
    // does little work per frame, and modules do theirs in their own
    // processes.
    let mut builder = match args.workers {
        1 => tokio::runtime::Builder::new_current_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(n));
            b
        }
    };
    let runtime = builder
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

async fn run(args: Args) -> anyhow::Result<()> {
    let started = Instant::now();
    // Installed before any socket is bound: a SIGTERM that comes as soon as
    // the socket answers (a supervisor that saw it ready) must be a clean
    // shutdown, not the default action.
    let signals = Signals::install()?;
    // Resolved now: after a package upgrade replaced the file, this
    // process's own link names a deleted inode, and the path is what an
    // upgrade starts by default.
    let exe = std::env::current_exe().context("locating mechad")?;
    let boot = Boot::load(&args).await?;
    // A daemon taking over first takes the running one's listening sockets,
    // so that what it binds below is the very same sockets.
    let taking = match args.takeover {
        Some(mode) => handover::take::begin(&boot.socket, mode).await?,
        None => None,
    };
    let taken = taking.as_ref().map(|t| t.old_pid);
    // The HTTP endpoint comes up first: liveness answers while modules start.
    let metrics = Arc::new(metrics::Metrics::default());
    let (http, modules, prepared, listeners) =
        match start(&args, &boot, &metrics, taking.is_some()).await {
            Ok(started) => started,
            Err(e) => {
                if let Some(t) = taking {
                    t.abort(format!("{e:#}")).await;
                }
                return Err(e);
            }
        };
    let tracer = start_tracer(args.otlp_endpoint.clone(), &boot.config.settings)?;
    let (socket, data_dir) = (boot.socket.clone(), boot.paths.data_dir.clone());
    let supervision = boot.supervision;
    let daemon = Arc::new(boot.into_daemon(modules, metrics, tracer, started, args.config, exe)?);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    if let Some(t) = taking {
        t.complete(&daemon, prepared, supervision, &shutdown_rx)
            .await?;
        inherited::close_unclaimed();
    }
    http.set_daemon(&daemon, socket.clone());
    tracing::info!(socket = %socket.display(), data_dir = %data_dir.display(), ready_ms = started.elapsed().as_millis() as u64, taken_over_from = taken, "mechad ready");
    notify::send("READY=1");
    serve(
        &daemon,
        listeners,
        &http,
        socket,
        (shutdown_tx, shutdown_rx),
        (signals, args.after_handover),
    )
    .await
}

/// What `start` brings up: the HTTP endpoint, the module slots (with the
/// first instances of a daemon taking over, not serving yet) and the
/// application sockets.
type Started = (
    Arc<http::HttpState>,
    Vec<Arc<ModuleSlot>>,
    Vec<(Arc<ModuleSlot>, supervisor::Prepared)>,
    Vec<(tokio::net::UnixListener, Arc<Path>)>,
);

/// Brings up the HTTP endpoint, the modules and the sockets. A daemon
/// taking over (`held`) starts its modules without serving with them.
async fn start(
    args: &Args,
    boot: &Boot,
    metrics: &Arc<metrics::Metrics>,
    held: bool,
) -> anyhow::Result<Started> {
    let http = http::start(
        args.http.as_deref(),
        boot.config.settings.http.as_ref(),
        Arc::clone(metrics),
    )
    .await?;
    // Modules start before the socket is bound, so the first request finds
    // them; those of a daemon taking over serve once the old ones are gone.
    let mut prepared = prepare_modules(boot, args.config.as_deref(), held).await?;
    let modules = prepared.iter().map(|(s, _)| Arc::clone(s)).collect();
    if !held {
        for (slot, p) in prepared.drain(..) {
            slot.run(p, boot.supervision).await;
        }
    }
    let listeners = bind_sockets(boot)?;
    Ok((http, modules, prepared, listeners))
}

/// What start-up settles before anything runs: the configuration (secret
/// references resolved), where things are, and the daemon-wide numbers.
struct Boot {
    config: Config,
    socket: PathBuf,
    mode: u32,
    max_frame: u32,
    paths: Paths,
    supervision: Supervision,
}

impl Boot {
    /// Reads the configuration and settles every setting, flags first.
    async fn load(args: &Args) -> anyhow::Result<Self> {
        let mut config = match &args.config {
            Some(path) => Config::load(path)?,
            None => Config::embedded_default(),
        };
        let settings = &config.settings;
        let socket = args
            .socket
            .clone()
            .or_else(|| settings.socket_path.clone())
            .unwrap_or_else(default_socket);
        let data_dir = args
            .data_dir
            .clone()
            .or_else(|| settings.data_dir.clone())
            .unwrap_or_else(default_data_dir);
        secret_ref::resolve(&mut config, &plan::secrets_data_dir(&data_dir))
            .await
            .map_err(anyhow::Error::msg)?;
        let settings = &config.settings;
        let module_dir = match args
            .module_dir
            .clone()
            .or_else(|| settings.module_dir.clone())
        {
            Some(dir) => dir,
            None => std::env::current_exe()
                .context("locating mechad to find its modules")?
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default(),
        };
        let mode = match &settings.socket_mode {
            Some(m) => parse_mode(m)?,
            None => 0o666,
        };
        let max_frame = settings.max_frame_bytes.unwrap_or(DEFAULT_MAX_FRAME);
        if max_frame == 0 || max_frame > MAX_FRAME_CAP {
            bail!(
                "Configuration spec.maxFrameBytes: {max_frame} must be between 1 and {MAX_FRAME_CAP}"
            );
        }
        let supervision = Supervision {
            max_restarts: settings.max_restarts.unwrap_or(5),
            window: Duration::from_secs(settings.restart_window_secs.unwrap_or(30)),
            health_interval: Duration::from_millis(
                settings.health_interval_ms.unwrap_or(1000).max(10),
            ),
            health_timeout: Duration::from_millis(
                settings.health_timeout_ms.unwrap_or(3000).max(10),
            ),
        };
        let socket_dir = socket.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(Self {
            socket,
            mode,
            max_frame,
            paths: Paths {
                data_dir,
                module_dir,
                socket_dir,
            },
            supervision,
            config,
        })
    }

    /// The daemon's shared state, serving `modules`.
    fn into_daemon(
        self,
        modules: Vec<Arc<ModuleSlot>>,
        metrics: Arc<metrics::Metrics>,
        tracer: Option<Arc<trace::Tracer>>,
        started: Instant,
        config_path: Option<PathBuf>,
        exe: PathBuf,
    ) -> anyhow::Result<Daemon> {
        let settings = &self.config.settings;
        let pods = match &settings.pods_file {
            Some(path) => peer::load_pods(path).map_err(anyhow::Error::msg)?,
            None => Default::default(),
        };
        let tenants = peer::Tenants::new(
            settings.tenants.clone(),
            settings.default_tenant.unwrap_or_default(),
            pods,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Daemon {
            max_frame: self.max_frame,
            default_timeout: Duration::from_millis(u64::from(
                settings.default_timeout_ms.unwrap_or(5000),
            )),
            max_in_flight: settings.max_in_flight_per_connection.unwrap_or(256).max(1),
            tenants: parking_lot::RwLock::new(tenants),
            admins: parking_lot::RwLock::new(settings.admin_list()),
            quotas: parking_lot::RwLock::new(Arc::new(quota::Registry::new(
                settings.quotas.clone(),
            ))),
            modules: parking_lot::RwLock::new(modules),
            started,
            config_path,
            paths: self.paths,
            supervision: self.supervision,
            admin_lock: tokio::sync::Mutex::new(()),
            metrics,
            tracer,
            freeze: Arc::default(),
            upgrade: Default::default(),
            exe,
        })
    }
}

/// Starts and handshakes every configured module, in order, without
/// serving with it yet (`ModuleSlot::prepare`); a daemon taking over
/// (`handoff`) tells its instances that the running daemon's still hold
/// their resources. A module that cannot start is a configuration error:
/// the daemon fails loudly, naming the file the components came from, and
/// the instances started before it are stopped.
async fn prepare_modules(
    boot: &Boot,
    config_path: Option<&Path>,
    handoff: bool,
) -> anyhow::Result<Vec<(Arc<ModuleSlot>, supervisor::Prepared)>> {
    let specs = plan::child_specs(&boot.config, &boot.paths).map_err(anyhow::Error::msg)?;
    let mut modules = Vec::with_capacity(specs.len());
    for (family, spec) in specs {
        let name = spec.name.clone();
        match ModuleSlot::prepare(spec, family, handoff).await {
            Ok(prepared) => modules.push(prepared),
            Err(e) => {
                for (_, p) in modules {
                    p.discard().await;
                }
                return Err(anyhow::Error::new(e)).with_context(|| match config_path {
                    Some(path) => {
                        format!("starting module {name} (configured in {})", path.display())
                    }
                    None => format!("starting module {name}"),
                });
            }
        }
    }
    Ok(modules)
}

/// The main socket first, then any extra ones; tenant rules can tell them
/// apart.
fn bind_sockets(boot: &Boot) -> anyhow::Result<Vec<(tokio::net::UnixListener, Arc<Path>)>> {
    let mut listeners = vec![(
        unix_socket::bind(&boot.socket, boot.mode, None)?,
        Arc::<Path>::from(boot.socket.as_path()),
    )];
    for extra in &boot.config.settings.sockets {
        let mode = match &extra.mode {
            Some(m) => parse_mode(m)?,
            None => 0o666,
        };
        let owner = extra.owner.map(|o| (o.uid, o.gid));
        listeners.push((
            unix_socket::bind(&extra.path, mode, owner)?,
            Arc::from(extra.path.as_path()),
        ));
    }
    Ok(listeners)
}

/// The span exporter, when `--otlp-endpoint` or `spec.tracing` names one.
fn start_tracer(
    flag: Option<String>,
    settings: &config::Settings,
) -> anyhow::Result<Option<Arc<trace::Tracer>>> {
    let tracing_settings = settings.tracing.clone().unwrap_or_default();
    let Some(endpoint) = flag
        .or(tracing_settings.otlp_endpoint)
        .filter(|e| !e.is_empty() && e != "off")
    else {
        return Ok(None);
    };
    let rate = tracing_settings.sample_rate.unwrap_or(1.0);
    let tracer = trace::Tracer::start(&endpoint, rate)?;
    tracing::info!(%endpoint, sample_rate = rate, "exporting request spans over OTLP/HTTP");
    Ok(Some(tracer))
}

/// Accepts on every socket until SIGTERM or SIGINT (serving SIGHUP as a
/// reload and SIGUSR2 as an upgrade meanwhile), then stops accepting, lets
/// connections finish, stops the modules in reverse order and removes the
/// sockets. Or until a new daemon took over (`handover`): then the
/// connections, modules and sockets are its own, and this one only exits
/// (or, with `--after-handover wait`, waits for SIGTERM first).
async fn serve(
    daemon: &Arc<Daemon>,
    listeners: Vec<(tokio::net::UnixListener, Arc<Path>)>,
    http: &http::HttpState,
    socket: PathBuf,
    (shutdown_tx, shutdown_rx): (watch::Sender<bool>, watch::Receiver<bool>),
    (mut signals, after): (Signals, AfterHandover),
) -> anyhow::Result<()> {
    sessions::start(Arc::clone(daemon), shutdown_rx.clone());
    let sockets: Vec<Arc<Path>> = listeners.iter().map(|(_, p)| Arc::clone(p)).collect();
    let accepts: Vec<_> = listeners
        .into_iter()
        .map(|(l, p)| {
            tokio::spawn(listener::accept_loop(
                l,
                p,
                Arc::clone(daemon),
                shutdown_rx.clone(),
            ))
        })
        .collect();
    let (handed_tx, handed_rx) = watch::channel(None);
    match handover::give::bind(&socket) {
        Ok(l) => {
            tokio::spawn(handover::give::serve(l, Arc::clone(daemon), handed_tx));
        }
        Err(e) => tracing::warn!("no hand-over socket, so no live upgrade: {e}"),
    }
    let handed = wait_for_shutdown(daemon, &mut signals, handed_rx).await?;
    http.set_stopping();
    if let Some(outcome) = handed {
        let _ = shutdown_tx.send(true);
        for accept in accepts {
            let _ = accept.await;
        }
        let handed = outcome.map_err(|e| anyhow::anyhow!("hand-over failed: {e}"))?;
        tracing::info!(new_pid = handed.pid, "mechad handed over");
        http.release_if_claimed(&handed.claimed);
        if after == AfterHandover::Wait {
            tracing::info!("handed over; waiting for SIGTERM");
            tokio::select! {
                _ = signals.term.recv() => {}
                _ = signals.int.recv() => {}
            }
        }
        return Ok(());
    }
    tracing::info!("shutting down: no new connections, finishing in-flight requests");
    let _ = shutdown_tx.send(true);
    for accept in accepts {
        let _ = accept.await;
    }
    // Connections taken over from a previous daemon belong to no accept loop.
    let _ = tokio::time::timeout(Duration::from_secs(10), daemon.freeze.all_gone()).await;
    daemon.stop_modules().await;
    for path in sockets {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(socket = %path.display(), "cannot remove socket: {e}");
        }
    }
    let _ = std::fs::remove_file(handover::wire::socket_path(&socket));
    tracing::info!("mechad stopped");
    Ok(())
}

/// Parses an octal file mode such as "0660".
fn parse_mode(text: &str) -> anyhow::Result<u32> {
    u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .with_context(|| format!("Configuration socket mode {text:?} is not an octal file mode"))
}

/// The signals mechad acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr2: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing the SIGHUP handler")?,
            usr2: signal(SignalKind::user_defined2()).context("installing the SIGUSR2 handler")?,
        })
    }
}

/// Serves SIGHUP (reload) and SIGUSR2 (upgrade) until SIGTERM or SIGINT
/// asks for shutdown (`None`), or a new daemon took over (its outcome).
async fn wait_for_shutdown(
    daemon: &Arc<Daemon>,
    signals: &mut Signals,
    mut handed: watch::Receiver<handover::give::Outcome>,
) -> anyhow::Result<handover::give::Outcome> {
    loop {
        tokio::select! {
            _ = signals.term.recv() => return Ok(None),
            _ = signals.int.recv() => return Ok(None),
            _ = signals.hup.recv() => match daemon.reload().await {
                Ok(_) => {}
                Err(e) => tracing::error!("reload failed: {e}"),
            },
            _ = signals.usr2.recv() => {
                let daemon = Arc::clone(daemon);
                tokio::spawn(async move {
                    match handover::upgrade::start(&daemon, None).await {
                        Ok(pid) => tracing::info!(new_pid = pid, "SIGUSR2: handing over to a new mechad"),
                        Err(e) => tracing::error!("SIGUSR2: upgrade failed, serving on: {e}"),
                    }
                });
            }
            changed = handed.changed() => {
                if changed.is_err() {
                    // The hand-over socket's task ended without an outcome.
                    std::future::pending::<()>().await;
                }
                if let Some(outcome) = handed.borrow_and_update().clone() {
                    return Ok(Some(outcome));
                }
            }
        }
    }
}
