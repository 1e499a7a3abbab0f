//! `mecha-bench`: measures mecha's round trips against the physical floor of
//! one and two Unix-socket hops, side by side in one run, and how fast a
//! module serves again after a crash or a hot restart.

mod daemon;
mod floor;
mod mecha;
mod recovery;
mod report;

use std::path::PathBuf;

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
    /// Latency and throughput of the floors and of mecha get/set, in one run.
    Compare(CompareArgs),
    /// Time from kill -9 of a module to the first good answer, and errors seen
    /// by a running load during hot restarts and upgrades.
    Recovery(RecoveryArgs),
}

#[derive(clap::Args, Debug)]
struct CompareArgs {
    /// Few operations per scenario: a smoke run that takes seconds.
    #[arg(long)]
    quick: bool,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Timed operations per scenario (default 20000, or 2000 with --quick).
    #[arg(long, value_name = "N")]
    ops: Option<usize>,
    /// Value size of get/set, and payload size of the floor frames.
    #[arg(long, value_name = "BYTES", default_value_t = 100)]
    payload: usize,
    /// Where mechad and mecha-mod-state are. Default: beside mecha-bench.
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
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
    /// Fewer kills and restarts: a smoke run of about 20 s.
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
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let results = runtime.block_on(recovery::run(&bin_dir, &plan))?;
    print!("{}", recovery::markdown(&results));
    if let Some(path) = &args.json {
        recovery::write_json(path, &results)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}

fn compare(args: CompareArgs) -> anyhow::Result<()> {
    let ops = args
        .ops
        .unwrap_or(if args.quick { 2_000 } else { 20_000 })
        .max(1);
    let plan = Plan {
        ops,
        warmup: (ops / 10).max(1),
        payload: args.payload,
    };
    let bin_dir = bin_dir(args.bin_dir)?;
    let dir = tempfile::tempdir().context("creating a temporary directory")?;

    let mut outcomes = Vec::new();
    for (name, run) in [
        ("floor1", floor::one_hop as fn(_, _) -> _),
        (report::BASELINE, floor::two_hops),
    ] {
        report::started(name, &plan);
        let outcome = run(dir.path(), &plan).with_context(|| format!("scenario {name}"))?;
        report::finished(&outcome);
        outcomes.push(outcome);
    }

    eprintln!("[mecha-bench] starting mechad from {}", bin_dir.display());
    let daemon = daemon::Daemon::start(&bin_dir, dir.path())?;
    // One thread for the client, like the floors' blocking client: no
    // cross-thread wake-ups on the client side blur the comparison.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // On error, `daemon` is dropped on the way out, which kills mechad.
    runtime.block_on(mecha::run(daemon.socket(), &plan, &mut outcomes))?;
    daemon.stop()?;

    print!("{}", report::markdown(&outcomes));
    println!(
        "\nConcurrency 1 except the pipelined row, whose latencies include queueing \
         behind the other {} requests in flight: compare its ops_per_sec.",
        mecha::DEPTH - 1
    );
    if let Some(path) = &args.json {
        report::write_json(path, &outcomes)?;
        eprintln!("[mecha-bench] wrote {}", path.display());
    }
    Ok(())
}
