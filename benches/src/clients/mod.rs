//! `mecha-bench clients`: state.get round trips from every client library
//! against one daemon, side by side with the Rust client, plus the size of
//! each library.
//!
//! The bench starts mechad with its embedded default config, writes one key
//! to the default state store (state.redb), and has each client read it,
//! one get at a time on one connection: the Rust async client in-process,
//! the Rust blocking client in-process (the layer libmecha wraps), a small C
//! program linked statically against libmecha.a, a small Go program using
//! `clients/go`, and a small Python script using the sync client of
//! `clients/python`. Each external program prints its raw per-get times;
//! the bench turns every client's samples into percentiles the same way.
//! Clients take turns in rounds, so drift of the machine during the run
//! spreads over all of them. A client whose toolchain (or libmecha.a) is
//! missing is skipped with the reason printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_client::{Client, SetOptions};

mod programs;
mod sizes;

use programs::{C, C_LINK, GO, GO_BASELINE, PYTHON};
use sizes::{source_sizes, stripped_size};

use crate::daemon::Daemon;
use crate::mecha::get_checked;
use crate::report::{new_histogram, record, Outcome};
use crate::Plan;

/// The key every client reads, in the default state store.
const KEY: &str = "bench-clients";

/// One client's get round trips, or why it was skipped.
pub struct ClientRow {
    pub name: &'static str,
    pub how: &'static str,
    /// All rounds merged, or why the client was skipped.
    pub result: Result<Outcome, String>,
    /// p50 of each round alone, in µs.
    pub round_p50_us: Vec<f64>,
}

/// Source size of one client library (see [`count_code`] for the rule).
pub struct SourceSize {
    pub name: &'static str,
    pub what: &'static str,
    pub files: usize,
    pub lines: usize,
    pub code: usize,
}

/// A binary size, or why it was not measured.
pub struct BinarySize {
    pub what: String,
    pub bytes: Result<u64, String>,
}

/// Everything `clients` measured.
pub struct Results {
    pub ops: usize,
    pub rounds: usize,
    pub payload: usize,
    pub rows: Vec<ClientRow>,
    pub sources: Vec<SourceSize>,
    pub binaries: Vec<BinarySize>,
}

/// A program built for the run: how to start it.
struct Program {
    command: PathBuf,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
}

/// How a client is driven.
enum Runner {
    RustAsync,
    RustBlocking,
    External(Program),
}

/// A client under test and what it has measured so far.
struct Entry {
    name: &'static str,
    how: &'static str,
    runner: Result<Runner, String>,
    hist: Histogram<u64>,
    elapsed: Duration,
    round_p50_us: Vec<f64>,
}

/// Builds the external programs, starts mechad, and measures every client
/// in `rounds` rounds: each round runs every client once, in the same order,
/// so a machine that drifts during the run affects all clients alike.
pub fn run(bin_dir: &Path, repo: &Path, plan: &Plan, rounds: usize) -> anyhow::Result<Results> {
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let mut binaries = vec![stripped_size(
        "libmecha.so",
        &bin_dir.join("libmecha.so"),
        work.path(),
    )];

    // Everything is compiled before the daemon starts, so no compiler runs
    // during the measurements.
    let runners = [
        (
            "Rust async",
            "in-process, `mecha_client::Client` on a current-thread runtime",
            Ok(Runner::RustAsync),
        ),
        (
            "Rust blocking",
            "in-process, `mecha_client::blocking::Client` (what libmecha wraps)",
            Ok(Runner::RustBlocking),
        ),
        (
            "C (libmecha.a)",
            "a C program linked statically against libmecha.a",
            build_c(bin_dir, repo, work.path(), &mut binaries).map(Runner::External),
        ),
        (
            "Go",
            "a Go program using clients/go (`Dial`, `Get`)",
            build_go(repo, work.path(), &mut binaries).map(Runner::External),
        ),
        (
            "Python (sync)",
            "a python3 script using clients/python's `mecha.Client`",
            prepare_python(repo, work.path()).map(Runner::External),
        ),
    ];
    let mut entries = Vec::new();
    for (name, how, runner) in runners {
        if let Err(reason) = &runner {
            eprintln!("[mecha-bench] {name}: skipped: {reason}");
        }
        entries.push(Entry {
            name,
            how,
            runner,
            hist: new_histogram()?,
            elapsed: Duration::ZERO,
            round_p50_us: Vec::new(),
        });
    }

    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    eprintln!(
        "[mecha-bench] starting mechad (embedded default config) from {}",
        bin_dir.display()
    );
    let daemon = Daemon::start_default(bin_dir, dir.path())?;
    // On error, `daemon` is dropped on the way out, which kills mechad.
    let socket = daemon.socket().to_path_buf();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let client = runtime.block_on(async {
        let client = Client::connect(&socket)
            .await
            .with_context(|| format!("connecting to mechad at {}", socket.display()))?;
        client
            .set("", KEY, vec![0xA5u8; plan.payload], SetOptions::default())
            .await
            .context("writing the key")?;
        anyhow::Ok(client)
    })?;
    // Connected outside the runtime: it runs one of its own.
    let blocking = mecha_client::blocking::Client::connect(&socket)
        .with_context(|| format!("connecting to mechad at {}", socket.display()))?;

    for round in 1..=rounds {
        for entry in &mut entries {
            let Ok(runner) = &entry.runner else {
                continue;
            };
            eprintln!(
                "[mecha-bench] round {round}/{rounds}, {}: {} state.get after {} warm-up, \
                 {}-byte value ...",
                entry.name, plan.ops, plan.warmup, plan.payload
            );
            let (hist, elapsed) = match runner {
                Runner::RustAsync => runtime.block_on(rust_async(&client, plan))?,
                Runner::RustBlocking => rust_blocking(&blocking, plan)?,
                Runner::External(program) => run_program(entry.name, program, &socket, plan)?,
            };
            let p50 = hist.value_at_quantile(0.5) as f64 / 1000.0;
            eprintln!(
                "[mecha-bench] round {round}/{rounds}, {}: p50 {p50:.1} us, p99 {:.1} us",
                entry.name,
                hist.value_at_quantile(0.99) as f64 / 1000.0
            );
            entry.round_p50_us.push(p50);
            entry
                .hist
                .add(&hist)
                .context("merging latency histograms")?;
            entry.elapsed += elapsed;
        }
    }
    drop(blocking);
    drop(client);
    daemon.stop()?;

    let total = plan.ops * rounds;
    let rows = entries
        .into_iter()
        .map(|e| ClientRow {
            name: e.name,
            how: e.how,
            result: e
                .runner
                .map(|_| Outcome::new(e.name, &e.hist, total, e.elapsed)),
            round_p50_us: e.round_p50_us,
        })
        .collect();
    Ok(Results {
        ops: plan.ops,
        rounds,
        payload: plan.payload,
        rows,
        sources: source_sizes(repo)?,
        binaries,
    })
}

/// The Rust async client, in this process: warm-up, then `ops` timed gets.
async fn rust_async(client: &Client, plan: &Plan) -> anyhow::Result<(Histogram<u64>, Duration)> {
    for _ in 0..plan.warmup {
        get_checked(client, "", KEY, plan.payload).await?;
    }
    let mut hist = new_histogram()?;
    let start = Instant::now();
    for _ in 0..plan.ops {
        let t = Instant::now();
        get_checked(client, "", KEY, plan.payload).await?;
        record(&mut hist, t.elapsed());
    }
    Ok((hist, start.elapsed()))
}

/// The Rust blocking client (what libmecha wraps), in this process.
fn rust_blocking(
    client: &mecha_client::blocking::Client,
    plan: &Plan,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let get = || -> anyhow::Result<()> {
        match client.get("", KEY).with_context(|| format!("get {KEY}"))? {
            Some(entry) if entry.value.len() == plan.payload => Ok(()),
            other => bail!("get {KEY}: unexpected answer {other:?}"),
        }
    };
    for _ in 0..plan.warmup {
        get()?;
    }
    let mut hist = new_histogram()?;
    let start = Instant::now();
    for _ in 0..plan.ops {
        let t = Instant::now();
        get()?;
        record(&mut hist, t.elapsed());
    }
    Ok((hist, start.elapsed()))
}

/// Runs an external client program and reads its samples.
fn run_program(
    name: &str,
    program: &Program,
    socket: &Path,
    plan: &Plan,
) -> anyhow::Result<(Histogram<u64>, Duration)> {
    let mut command = Command::new(&program.command);
    command
        .args(&program.args)
        .arg(socket)
        .arg(KEY)
        .arg(plan.ops.to_string())
        .arg(plan.warmup.to_string())
        .arg(plan.payload.to_string())
        .stdin(Stdio::null());
    for (key, value) in &program.env {
        command.env(key, value);
    }
    let output = command
        .output()
        .with_context(|| format!("{name}: starting {}", program.command.display()))?;
    check(name, "run", &output)?;
    let text = String::from_utf8(output.stdout).with_context(|| format!("{name}: output"))?;
    let mut lines = text.lines();
    let elapsed_ns: u64 = lines
        .next()
        .and_then(|l| l.strip_prefix("elapsed_ns "))
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{name}: no elapsed_ns line in its output"))?;
    let mut hist = new_histogram()?;
    let mut samples = 0;
    for line in lines {
        let ns: u64 = line
            .parse()
            .with_context(|| format!("{name}: bad sample {line:?}"))?;
        record(&mut hist, Duration::from_nanos(ns));
        samples += 1;
    }
    if samples != plan.ops {
        bail!("{name}: {samples} samples, expected {}", plan.ops);
    }
    Ok((hist, Duration::from_nanos(elapsed_ns)))
}

/// Fails with the program's stderr when it did not exit with success.
fn check(name: &str, step: &str, output: &Output) -> anyhow::Result<()> {
    if output.status.success() {
        return Ok(());
    }
    bail!(
        "{name}: {step} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// Whether `program args` runs and exits with success.
fn runs(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Compiles the C program against libmecha.a. Skipped (Err) without `cc` or
/// without libmecha.a; a failing compile is an error.
fn build_c(
    bin_dir: &Path,
    repo: &Path,
    work: &Path,
    binaries: &mut Vec<BinarySize>,
) -> Result<Program, String> {
    let archive = bin_dir.join("libmecha.a");
    if !runs("cc", &["--version"]) {
        return Err("no C compiler (`cc`) found".into());
    }
    if !archive.is_file() {
        return Err(format!(
            "{} not found; build it with `cargo build --release -p mecha-c`",
            archive.display()
        ));
    }
    let source = work.join("bench.c");
    let program = work.join("bench-c");
    let compile = || -> anyhow::Result<()> {
        std::fs::write(&source, C).context("writing bench.c")?;
        let output = Command::new("cc")
            .args(["-O2", "-std=c99", "-Wall", "-Werror", "-I"])
            .arg(repo.join("clients/c/include"))
            .arg(&source)
            .arg(&archive)
            .args(C_LINK)
            .arg("-o")
            .arg(&program)
            .output()
            .context("running cc")?;
        check("C", "compile", &output)
    };
    eprintln!("[mecha-bench] compiling the C client program against libmecha.a ...");
    if let Err(e) = compile() {
        // Shown as the skip reason, in the table as well.
        return Err(format!("{e:#}"));
    }
    binaries.push(stripped_size(
        "C bench program, static libmecha.a, --gc-sections",
        &program,
        work,
    ));
    Ok(Program {
        command: program,
        args: Vec::new(),
        env: Vec::new(),
    })
}

/// Builds the Go program (and a baseline without the client, for its size).
/// Skipped (Err) without `go`.
fn build_go(repo: &Path, work: &Path, binaries: &mut Vec<BinarySize>) -> Result<Program, String> {
    if !runs("go", &["version"]) {
        return Err("no Go toolchain (`go`) found".into());
    }
    let client = repo.join("clients/go");
    let build = |dir: &str, main: &str, with_client: bool| -> anyhow::Result<PathBuf> {
        let dir = work.join(dir);
        std::fs::create_dir_all(&dir).context("creating the Go module")?;
        let mut go_mod = "module mechabench\n\ngo 1.19\n".to_string();
        if with_client {
            go_mod.push_str(&format!(
                "\nrequire mecha.dev/client v0.0.0\n\nreplace mecha.dev/client => {}\n",
                client.display()
            ));
        }
        std::fs::write(dir.join("go.mod"), go_mod).context("writing go.mod")?;
        std::fs::write(dir.join("main.go"), main).context("writing main.go")?;
        let binary = dir.join("bench-go");
        let mut command = Command::new("go");
        command
            .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
            .arg(&binary)
            .arg(".")
            .current_dir(&dir);
        for (key, value) in go_env(work) {
            command.env(key, value);
        }
        let output = command.output().context("running go build")?;
        check("Go", "build", &output)?;
        Ok(binary)
    };
    eprintln!("[mecha-bench] building the Go client program ...");
    let program = build("go-client", GO, true).map_err(|e| format!("{e:#}"))?;
    let size = |path: &Path| std::fs::metadata(path).map(|m| m.len());
    let contribution = build("go-baseline", GO_BASELINE, false)
        .map_err(|e| format!("{e:#}"))
        .and_then(|baseline| {
            let (with, without) = (size(&program), size(&baseline));
            match (with, without) {
                (Ok(with), Ok(without)) => Ok(with.saturating_sub(without)),
                _ => Err("could not read the Go binaries' sizes".into()),
            }
        });
    binaries.push(BinarySize {
        what: "Go client's share of a Go binary (-ldflags=-s -w, with minus without)".into(),
        bytes: contribution,
    });
    Ok(Program {
        command: program,
        args: Vec::new(),
        env: Vec::new(),
    })
}

/// The Go environment: no network, no toolchain download, a build cache
/// even without $HOME.
fn go_env(work: &Path) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("GOPROXY", "off".to_string()),
        ("GOTOOLCHAIN", "local".to_string()),
        ("GOWORK", "off".to_string()),
        ("GOFLAGS", "-mod=mod".to_string()),
    ];
    let has = |key: &str| std::env::var_os(key).is_some_and(|v| !v.is_empty());
    if !has("GOCACHE") && !has("HOME") && !has("XDG_CACHE_HOME") {
        env.push(("GOCACHE", work.join("go-cache").display().to_string()));
    }
    env
}

/// Writes the Python script. Skipped (Err) without `python3` 3.11 or newer
/// (the client's minimum).
fn prepare_python(repo: &Path, work: &Path) -> Result<Program, String> {
    if !runs("python3", &["--version"]) {
        return Err("no `python3` found".into());
    }
    if !runs(
        "python3",
        &["-c", "import sys; sys.exit(sys.version_info < (3, 11))"],
    ) {
        return Err("python3 is older than 3.11, the Python client's minimum".into());
    }
    let script = work.join("bench.py");
    std::fs::write(&script, PYTHON).map_err(|e| format!("writing bench.py: {e}"))?;
    Ok(Program {
        command: PathBuf::from("python3"),
        args: vec![script.display().to_string()],
        env: vec![
            (
                "PYTHONPATH",
                repo.join("clients/python/src").display().to_string(),
            ),
            // No __pycache__ written into the source tree.
            ("PYTHONDONTWRITEBYTECODE", "1".to_string()),
        ],
    })
}

/// The tables in Markdown.
pub fn markdown(r: &Results) -> String {
    let baseline = r
        .rows
        .first()
        .and_then(|row| row.result.as_ref().ok())
        .map(|o| o.p50_us);
    let mut out = format!(
        "state.get of one {}-byte value from the default store (state.redb), one at a time \
         on one connection per client: {} rounds of {} gets per client, every client once per \
         round.\n\n\
         | client | runs as | p50_us | p99_us | p999_us | ops_per_sec | p50 / Rust async p50 | \
         p50 per round |\n\
         |---|---|---:|---:|---:|---:|---:|---|\n",
        r.payload, r.rounds, r.ops
    );
    for row in &r.rows {
        match &row.result {
            Ok(o) => {
                let ratio = match baseline {
                    Some(b) if b > 0.0 => format!("{:.2}x", o.p50_us / b),
                    _ => "n/a".into(),
                };
                let rounds = row
                    .round_p50_us
                    .iter()
                    .map(|p| format!("{p:.0}"))
                    .collect::<Vec<_>>()
                    .join(" / ");
                out.push_str(&format!(
                    "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {} | {} |\n",
                    row.name, row.how, o.p50_us, o.p99_us, o.p999_us, o.ops_per_sec, ratio, rounds
                ));
            }
            Err(reason) => out.push_str(&format!(
                "| {} | skipped: {} | | | | | | |\n",
                row.name, reason
            )),
        }
    }
    out.push_str(
        "\n| client library | files counted | files | lines | code lines |\n\
         |---|---|---:|---:|---:|\n",
    );
    for s in &r.sources {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            s.name, s.what, s.files, s.lines, s.code
        ));
    }
    out.push_str("\n| binary | bytes | MiB |\n|---|---:|---:|\n");
    for b in &r.binaries {
        match &b.bytes {
            Ok(n) => out.push_str(&format!(
                "| {} | {} | {:.2} |\n",
                b.what,
                n,
                *n as f64 / (1024.0 * 1024.0)
            )),
            Err(reason) => out.push_str(&format!("| {} | not measured: {} | |\n", b.what, reason)),
        }
    }
    out
}

/// Writes the results as JSON to `path`.
pub fn write_json(path: &Path, r: &Results) -> anyhow::Result<()> {
    let rows: Vec<_> = r
        .rows
        .iter()
        .map(|row| match &row.result {
            Ok(o) => serde_json::json!({
                "client": row.name,
                "runs_as": row.how,
                "p50_us": o.p50_us,
                "p99_us": o.p99_us,
                "p999_us": o.p999_us,
                "ops_per_sec": o.ops_per_sec,
                "round_p50_us": row.round_p50_us,
            }),
            Err(reason) => serde_json::json!({
                "client": row.name,
                "runs_as": row.how,
                "skipped": reason,
            }),
        })
        .collect();
    let sources: Vec<_> = r
        .sources
        .iter()
        .map(|s| {
            serde_json::json!({
                "library": s.name,
                "files_counted": s.what,
                "files": s.files,
                "lines": s.lines,
                "code_lines": s.code,
            })
        })
        .collect();
    let binaries: Vec<_> = r
        .binaries
        .iter()
        .map(|b| match &b.bytes {
            Ok(n) => serde_json::json!({ "binary": b.what, "bytes": n }),
            Err(reason) => serde_json::json!({ "binary": b.what, "not_measured": reason }),
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({
        "ops_per_round": r.ops,
        "rounds": r.rounds,
        "payload": r.payload,
        "state_get": rows,
        "source_sizes": sources,
        "binary_sizes": binaries,
    }))
    .context("serialising the results")?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}
