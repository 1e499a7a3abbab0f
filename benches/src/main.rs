//! `mecha-bench`: measures mecha's round trips against the physical floor of
//! one and two Unix-socket hops and against Redis, side by side in one run
//! over sweeps of connections and pipelining depth, plus start-up time and
//! memory; how fast a module
//! serves again after a crash or a hot restart; pub/sub, lock and sequencer
//! on the default stores; state.get from every client library; and the pause
//! a live hand-over of mechad puts into a running load.

mod backends;
mod bindings;
mod capabilities;
mod clients;
mod daemon;
mod dapr;
mod durable;
mod flood;
mod floor;
mod floor_loop;
mod footprint;
mod invoke;
mod mecha;
mod noisy;
mod pg_server;
mod plot;
mod recovery;
mod recovery_reads;
mod redis;
mod report;
mod sweep;
mod upgrade;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// Benchmarks for mecha.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Latency and throughput of the floors, mecha get/set and Redis over
    /// sweeps of connections and pipelining depth, in one run; then start-up
    /// time and memory. Redis scenarios are skipped if redis-server is not
    /// installed. 20000 operations per scenario and load (2000 with --quick).
    Compare(CompareArgs),
    /// Time from kill -9 of a module to the first good answer, and errors seen
    /// by a running load during hot restarts and upgrades.
    Recovery(RecoveryArgs),
    /// Pub/sub, lock and sequencer latency and throughput on the embedded
    /// default config's stores (plus pubsub.memory and segmentSize 1). 5000
    /// operations per scenario (500 with --quick).
    Capabilities(Run),
    /// state.get from the Rust, C, Go and Python clients against one daemon,
    /// and the size of each client library. Needs cc, go and python3; a
    /// client whose toolchain is missing is skipped. 10000 gets per client and
    /// round (2000 with --quick).
    Clients(ClientsArgs),
    /// One tenant floods the daemon from many connections while another does
    /// one get at a time: the victim's latency under flood over alone. 20000
    /// victim gets per phase (2000 with --quick).
    Noisy(NoisyArgs),
    /// Local service invocation round trip (an echo app on a second
    /// connection) against floor2 and state.get on state.memory, then across
    /// two nodes (plain TCP and mutual TLS), in one run. 20000 calls per
    /// scenario (2000 with --quick).
    Invoke(Run),
    /// Durable writes: mecha.set on state.redb and publish on pubsub.redb
    /// against Redis SET with `appendonly yes, appendfsync always`, at 1, 16,
    /// 64 and 256 connections, in one run, with mecha.set on state.memory as
    /// the no-disk ceiling. Needs redis-server. 10000 operations per
    /// scenario and load (1000 with --quick).
    Durable(Run),
    /// The noisy benchmark's flooder process (started by `noisy`).
    #[command(hide = true)]
    FloodWorker(flood::WorkerArgs),
    /// mecha on state.redis and state.postgresql against the redis crate and
    /// tokio-postgres on the same servers, in one run. 10000 operations per
    /// scenario (1000 with --quick).
    Backends(Run),
    /// Output bindings against the clients an application would otherwise
    /// use, in one run: a Redis GET through bindings.redis against the redis
    /// crate's GET, and an HTTP GET through bindings.http against a direct
    /// mecha-http GET, each beside a binding operation that does nothing
    /// outside (the module round trip). 10000 operations per scenario (1000
    /// with --quick).
    Bindings(Run),
    /// The official Dapr Python SDK's get_state and save_state through the
    /// Dapr personality (Unix socket and TCP), and a raw HTTP GET, against
    /// mecha's own Python client, in one run from one Python process.
    /// Needs a Python with `dapr` and mecha's client (--python). 5000
    /// operations per scenario (500 with --quick).
    Dapr(DaprArgs),
    /// The pause of a live hand-over: state get/set from several connections
    /// in closed loops through a steady window and then several
    /// `mechactl daemon upgrade`s a few seconds apart; p50, p99 and max of
    /// the requests that overlapped a hand-over against steady state, and
    /// the failed requests. Needs mechactl beside mechad.
    Upgrade(UpgradeArgs),
}

/// `upgrade`'s options.
#[derive(clap::Args, Debug)]
struct UpgradeArgs {
    /// A short run: a 2 s steady window and 2 hand-overs 1 s apart.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Connections, each with one request at a time.
    #[arg(long, value_name = "N", default_value_t = 4)]
    connections: usize,
    /// Hand-overs (default 5, or 2 with --quick).
    #[arg(long, value_name = "N")]
    handovers: Option<usize>,
    /// Seconds between one hand-over's end and the next (default 3, or 1
    /// with --quick). The steady window before the first is 5 s (2 s with
    /// --quick).
    #[arg(long, value_name = "SECONDS")]
    gap: Option<u64>,
    /// Bytes of each stored value.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Where mechad, mechactl and mecha-mod-state are. Default: beside
    /// mecha-bench.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// `dapr`'s options.
#[derive(clap::Args, Debug)]
struct DaprArgs {
    #[command(flatten)]
    run: Run,
    /// A Python that can `import dapr` and `import mecha`.
    #[arg(long, value_name = "PATH", default_value = "python3")]
    python: PathBuf,
}

/// The options of every measuring command: how much to run and where to
/// write it. Each command's own description gives its default operation count.
#[derive(clap::Args, Debug)]
struct Run {
    /// Few operations: a smoke run of seconds.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Timed operations per scenario (each command's default, or its smaller
    /// one with --quick).
    #[arg(long, value_name = "N")]
    ops: Option<usize>,
    /// Payload size: the value stored or read, the message or data sent.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Where mechad and the module binaries are. Default: beside mecha-bench.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

impl Run {
    /// `ops` timed operations (default `full`, or `quick` with --quick) and a
    /// tenth of them as warm-up.
    fn plan(&self, full: usize, quick: usize) -> Plan {
        let ops = self
            .ops
            .unwrap_or(if self.quick { quick } else { full })
            .max(1);
        Plan {
            ops,
            warmup: (ops / 10).max(1),
            payload: self.payload,
        }
    }
}

#[derive(clap::Args, Debug)]
struct NoisyArgs {
    #[command(flatten)]
    run: Run,
    /// The flooder's connections.
    #[arg(long, value_name = "N", default_value_t = 64)]
    connections: usize,
    /// Requests the flooder keeps in flight on each connection.
    #[arg(long, value_name = "N", default_value_t = 8)]
    depth: usize,
    /// Give the flooding tenant this `maxInFlight` quota (default: none).
    #[arg(long, value_name = "N")]
    flood_max_in_flight: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct ClientsArgs {
    #[command(flatten)]
    run: Run,
    /// Rounds; each runs every client once, in turn (default 3, or 1 with
    /// --quick).
    #[arg(long, value_name = "N")]
    rounds: Option<usize>,
    /// The mecha source tree (for clients/ and abi/). Default: the one
    /// mecha-bench was built from.
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    run: Run,
    /// Also draw latency and throughput against connections as SVG to this
    /// file. Default: beside the --json file (same name, .svg), or
    /// mecha-bench-compare.svg in the current directory.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
    /// Daemon starts whose start-up time is averaged (default 5, or 2 with
    /// --quick).
    #[arg(long, value_name = "N")]
    starts: Option<usize>,
}

#[derive(clap::Args, Debug)]
struct RecoveryArgs {
    /// Kills per kill series (default 50, or 10 with --quick).
    #[arg(long, value_name = "N")]
    kills: Option<usize>,
    /// Hot restarts under load, alternating plain restarts and upgrades
    /// (default 10, or 3 with --quick).
    #[arg(long, value_name = "N")]
    upgrades: Option<usize>,
    /// Fewer kills and restarts: a smoke run of about 30 s.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Where mechad and mecha-mod-state are. Default: beside mecha-bench.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
}

/// How much work each scenario does.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    /// Timed operations.
    pub ops: usize,
    /// Untimed operations first, so connections, caches and the allocator are
    /// warm when the clock starts.
    pub warmup: usize,
    /// Payload bytes: the stored value, and the body of a floor frame.
    pub payload: usize,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Compare(args) => compare(args),
        Cmd::Recovery(args) => recovery(args),
        Cmd::Capabilities(args) => capabilities(args),
        Cmd::Clients(args) => clients(args),
        Cmd::Noisy(args) => noisy(args),
        Cmd::Invoke(args) => invoke_bench(args),
        Cmd::Backends(args) => backends(args),
        Cmd::Bindings(args) => bindings_bench(args),
        Cmd::Dapr(args) => dapr_bench(args),
        Cmd::Durable(args) => durable_bench(args),
        Cmd::FloodWorker(args) => flood::worker(args),
        Cmd::Upgrade(args) => upgrade_bench(args),
    }
}

/// The directory holding mechad and the module binaries.
fn bin_dir(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir),
        None => Ok(std::env::current_exe()
            .context("locating mecha-bench to find mechad beside it")?
            .parent()
            .context("mecha-bench has no parent directory")?
            .to_path_buf()),
    }
}

fn upgrade_bench(args: UpgradeArgs) -> anyhow::Result<()> {
    let gap = Duration::from_secs(args.gap.unwrap_or(if args.quick { 1 } else { 3 }));
    let plan = upgrade::Plan {
        connections: args.connections.max(1),
        handovers: args
            .handovers
            .unwrap_or(if args.quick { 2 } else { 5 })
            .max(1),
        steady: Duration::from_secs(if args.quick { 2 } else { 5 }),
        gap,
        payload: args.payload,
    };
    let bin_dir = bin_dir(args.bin_dir)?;
    daemon::require(&bin_dir, &["mecha-mod-state"])?;
    let results = upgrade::run(&bin_dir, &plan)?;
    print!("{}", upgrade::markdown(&results));
    if let Some(path) = &args.json {
        upgrade::write_json(path, &results)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn durable_bench(args: Run) -> anyhow::Result<()> {
    let plan = args.plan(10_000, 1_000);
    let bin_dir = bin_dir(args.bin_dir)?;
    let sweep = durable::run(&bin_dir, &plan)?;
    println!(
        "{} timed ops per scenario and load after {} warm-up, {}-byte payload; one request \
         in flight per connection.\n",
        plan.ops, plan.warmup, plan.payload
    );
    print!("{}", durable::markdown(&sweep));
    if let Some(path) = &args.json {
        let doc = serde_json::json!({
            "ops": plan.ops,
            "payload": plan.payload,
            "scenarios": sweep::json_rows(&sweep),
        });
        report::write_json_value(path, &doc)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn capabilities(args: Run) -> anyhow::Result<()> {
    let plan = args.plan(5_000, 500);
    let bin_dir = bin_dir(args.bin_dir)?;
    let runtime = one_thread()?;
    let rows = runtime.block_on(capabilities::run(&bin_dir, &plan))?;
    print!("{}", capabilities::markdown(&rows));
    println!(
        "\nOne operation at a time except the \"{} in flight\" rows, whose latencies include \
         queueing: compare their ops_per_sec.",
        capabilities::IN_FLIGHT
    );
    if let Some(path) = &args.json {
        capabilities::write_json(path, &rows)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let plan = args.run.plan(10_000, 2_000);
    let rounds = args
        .rounds
        .unwrap_or(if args.run.quick { 1 } else { 3 })
        .max(1);
    let bin_dir = bin_dir(args.run.bin_dir)?
        .canonicalize()
        .context("resolving the binary directory")?;
    let repo = match args.repo {
        Some(dir) => dir,
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("benches/ has no parent directory")?
            .to_path_buf(),
    };
    let repo = repo
        .canonicalize()
        .with_context(|| format!("resolving {}", repo.display()))?;
    let results = clients::run(&bin_dir, &repo, &plan, rounds)?;
    print!("{}", clients::markdown(&results));
    if let Some(path) = &args.run.json {
        clients::write_json(path, &results)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn invoke_bench(args: Run) -> anyhow::Result<()> {
    let plan = args.plan(20_000, 2_000);
    let bin_dir = bin_dir(args.bin_dir)?;
    // One client thread, as in `compare`: the callee's handler runs on it too.
    let runtime = one_thread()?;
    let outcomes = runtime.block_on(invoke::run(&bin_dir, &plan))?;
    print!("{}", invoke::markdown(&outcomes));
    if let Some(path) = &args.json {
        report::write_json(path, &outcomes)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn dapr_bench(args: DaprArgs) -> anyhow::Result<()> {
    let plan = args.run.plan(5_000, 500);
    let bin_dir = bin_dir(args.run.bin_dir.clone())?;
    let outcomes = dapr::run(&bin_dir, &plan, &args.python)?;
    print!("{}", dapr::markdown(&outcomes));
    if let Some(path) = &args.run.json {
        let plain: Vec<_> = outcomes.iter().map(|(o, _)| o.clone()).collect();
        report::write_json(path, &plain)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

/// A current-thread runtime: one client thread drives the bench's clients.
fn one_thread() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

fn backends(args: Run) -> anyhow::Result<()> {
    tax_bench(
        args,
        |runtime, bin_dir, plan| runtime.block_on(backends::run(bin_dir, plan)),
        ("mecha on memory", "memory"),
    )
}

fn bindings_bench(args: Run) -> anyhow::Result<()> {
    tax_bench(
        args,
        |runtime, bin_dir, plan| runtime.block_on(bindings::run(bin_dir, plan)),
        ("no-op binding", "no-op"),
    )
}

/// The groups and notes of a bench of three ways per operation.
type Taxed = (Vec<backends::Group>, Vec<String>);

/// Runs a bench of three ways per operation (`backends`, `bindings`) on one
/// client thread, for mecha and the direct clients alike, and prints its
/// table with `third` naming the third way (column title, short name).
fn tax_bench(
    args: Run,
    run: impl FnOnce(&tokio::runtime::Runtime, &Path, &Plan) -> anyhow::Result<Taxed>,
    third: (&str, &str),
) -> anyhow::Result<()> {
    let plan = args.plan(10_000, 1_000);
    let bin_dir = bin_dir(args.bin_dir)?;
    let (groups, notes) = run(&one_thread()?, &bin_dir, &plan)?;
    print!("{}", backends::markdown(&groups, &notes, third.0, third.1));
    if let Some(path) = &args.json {
        backends::write_json(path, &groups)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn noisy(args: NoisyArgs) -> anyhow::Result<()> {
    let plan = args.run.plan(20_000, 2_000);
    let flood = noisy::Flood {
        connections: args.connections.max(1),
        depth: args.depth.max(1),
        max_in_flight: args.flood_max_in_flight,
    };
    let bin_dir = bin_dir(args.run.bin_dir)?;
    // The flooder is a process of its own; the victim runs on a thread of
    // its own; this runtime only sets up and waits.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let results = runtime.block_on(noisy::run(&bin_dir, &plan, flood))?;
    print!("{}", noisy::markdown(&results));
    if let Some(path) = &args.run.json {
        noisy::write_json(path, &results)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn recovery(args: RecoveryArgs) -> anyhow::Result<()> {
    let plan = recovery::Plan {
        kills: args
            .kills
            .unwrap_or(if args.quick { 10 } else { 50 })
            .max(1),
        upgrades: args
            .upgrades
            .unwrap_or(if args.quick { 3 } else { 10 })
            .max(1),
    };
    let bin_dir = bin_dir(args.bin_dir)?;
    let runtime = one_thread()?;
    let results = runtime.block_on(recovery::run(&bin_dir, &plan))?;
    print!("{}", recovery::markdown(&results));
    if let Some(path) = &args.json {
        recovery::write_json(path, &results)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let plan = args.run.plan(20_000, 2_000);
    let starts = args
        .starts
        .unwrap_or(if args.run.quick { 2 } else { 5 })
        .max(1);
    let bin_dir = bin_dir(args.run.bin_dir)?;
    // The start-up and memory part at the end needs every default module:
    // better to say so now than after minutes of sweeps.
    daemon::require(&bin_dir, &daemon::ALL_MODULES)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;

    let redis = redis::Server::start(dir.path())?;
    let redis_aof = match redis {
        Some(_) => redis::Server::start_aof(dir.path())?,
        None => None,
    };
    // The sweep's steps, then start-up and the tenants' RSS.
    let mut progress = sweep::Progress::new(sweep::steps(redis.is_some()) + 2);
    sweep::announce(&plan, &bin_dir);
    // On error, `daemon` and `redis` are dropped on the way out, which kills them.
    let daemon = daemon::Daemon::start(&bin_dir, dir.path())?;
    let mut results = sweep::run(
        dir.path(),
        daemon.socket(),
        redis.as_ref(),
        redis_aof.as_ref(),
        &plan,
        &mut progress,
    )?;
    daemon.stop()?;
    if redis.is_none() {
        results.notes.push(
            "redis-server is not installed, so the Redis scenarios were skipped \
             (install the redis-server package, which also has redis-benchmark)."
                .to_string(),
        );
    }
    // Stopped before the footprint, so they do not compete with the daemons.
    drop(redis);
    drop(redis_aof);
    let footprint = footprint::run(&bin_dir, starts, plan.payload, &mut |what| {
        progress.step(what)
    })?;
    let ratios = sweep::Ratios::of(&results);

    println!(
        "{} timed ops per scenario and load, {}-byte payload. c = connections, d = requests \
         in flight on each; latencies at d > 1 include queueing.\n",
        plan.ops, plan.payload
    );
    print!("{}", sweep::markdown(&results));
    println!("\n{}", ratios.markdown());
    print!("{}", footprint::markdown(&footprint));

    if let Some(path) = &args.run.json {
        let doc = serde_json::json!({
            "ops": plan.ops,
            "payload": plan.payload,
            "scenarios": sweep::json_rows(&results),
            "ratios": ratios.json(),
            "footprint": footprint::json(&footprint),
            "notes": results.notes,
        });
        let text = serde_json::to_string_pretty(&doc).context("encoding JSON")?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    let plot_path = match (&args.plot, &args.run.json) {
        (Some(path), _) => path.clone(),
        (None, Some(json)) => json.with_extension("svg"),
        (None, None) => PathBuf::from("mecha-bench-compare.svg"),
    };
    plot::write(&plot_path, &results)?;
    eprintln!("[mecha-bench] wrote {}", plot_path.display());
    Ok(())
}
