//! `compare`: the floors, mecha get/set on the memory and redb stores, and
//! Redis, each measured at every load of a concurrency sweep (1–256
//! connections, one request in flight on each) and a pipelining sweep (1–64
//! requests in flight on one connection), side by side in one run at the
//! same payload size; then the ratios against the baselines of that run.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mecha_client::Client;
use tokio::runtime::Runtime;

use crate::floor::{self, share};
use crate::floor_loop;
use crate::mecha::{self, get_checked};
use crate::redis;
use crate::report::{self, new_histogram, Metric, Outcome};
use crate::Plan;

/// Connections, and requests kept in flight on each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub connections: usize,
    pub depth: usize,
}

impl Load {
    pub const fn new(connections: usize, depth: usize) -> Self {
        Self { connections, depth }
    }

    /// `c=4 d=1`: how the load appears in names and column headers.
    pub fn label(&self) -> String {
        format!("c={} d={}", self.connections, self.depth)
    }
}

/// The concurrency sweep at depth 1, then the pipelining sweep on one
/// connection (depth 1 is the first point of both).
pub const LOADS: [Load; 7] = [
    Load::new(1, 1),
    Load::new(4, 1),
    Load::new(16, 1),
    Load::new(64, 1),
    Load::new(256, 1),
    Load::new(1, 8),
    Load::new(1, 64),
];

/// The single-request load every latency ratio is taken at.
pub const UNLOADED: Load = Load::new(1, 1);
/// The load the throughput ratio against Redis is taken at.
pub const BUSY: Load = Load::new(64, 1);

/// Scenario names, in table order.
pub const FLOOR1: &str = "floor1";
pub const FLOOR2: &str = "floor2";
pub const FLOOR1_LOOP: &str = "floor1 epoll";
pub const FLOOR2_LOOP: &str = "floor2 epoll";
pub const PING: &str = "mecha.ping (daemon only)";
pub const MECHA_GET_MEM: &str = "mecha.get state.memory";
pub const REDIS_GET: &str = "redis crate GET";
pub const REDIS_SET: &str = "redis crate SET";
/// SET through the `redis` crate on the server with `appendfsync always`.
pub const REDIS_SET_AOF: &str = "redis crate SET (AOF always)";
pub const BENCH_GET: &str = "redis-benchmark GET";
const MECHA: [(&str, &str, bool); 4] = [
    (MECHA_GET_MEM, "mem", true),
    ("mecha.set state.memory", "mem", false),
    ("mecha.get state.redb", "disk", true),
    ("mecha.set state.redb", "disk", false),
];

/// One scenario measured at one load.
#[derive(Clone, Debug)]
pub struct Row {
    pub scenario: String,
    pub load: Load,
    pub outcome: Outcome,
}

/// Everything one sweep measured.
pub struct Sweep {
    pub rows: Vec<Row>,
    /// Why a group of scenarios is missing, e.g. Redis not installed.
    pub notes: Vec<String>,
}

impl Sweep {
    pub fn find(&self, scenario: &str, load: Load) -> Option<&Outcome> {
        self.rows
            .iter()
            .find(|r| r.scenario == scenario && r.load == load)
            .map(|r| &r.outcome)
    }

    pub fn push(&mut self, scenario: &str, load: Load, mut outcome: Outcome) {
        report::finished(&outcome);
        outcome.name = format!("{scenario} {}", load.label());
        self.rows.push(Row {
            scenario: scenario.to_string(),
            load,
            outcome,
        });
    }
}

/// A one-line `[n/total] what` progress indicator on stderr: enough for a
/// run of a minute or two, and it needs no dependency and no terminal.
pub struct Progress {
    done: usize,
    total: usize,
}

impl Progress {
    pub fn new(total: usize) -> Self {
        Self { done: 0, total }
    }

    pub fn step(&mut self, what: &str) {
        self.done += 1;
        eprintln!("[{}/{}] {what}", self.done, self.total);
    }
}

/// The number of progress steps of a sweep (the caller adds its own).
pub fn steps(with_redis: bool) -> usize {
    // Per load: four floors, the mecha scenarios, and Redis through the crate
    // (GET and SET), through redis-benchmark (both at once), and SET on the
    // append-only server.
    let per_load = 4 + MECHA.len() + if with_redis { 3 } else { 0 };
    LOADS.len() * per_load + 1
}

/// Runs every scenario at every load against the daemon at `mecha` and, when
/// given, the in-memory redis-server `redis` and the durable one
/// `redis_aof` (`appendfsync always`, the baseline of `mecha.set
/// state.redb`); the floors run in `dir`.
pub fn run(
    dir: &Path,
    mecha: &Path,
    redis: Option<&redis::Server>,
    redis_aof: Option<&redis::Server>,
    plan: &Plan,
    progress: &mut Progress,
) -> anyhow::Result<Sweep> {
    // mecha and Redis get the same runtime per load.
    let (single, multi) = runtimes()?;
    raise_open_files();
    let mut sweep = Sweep {
        rows: Vec::new(),
        notes: Vec::new(),
    };
    single.block_on(async {
        let client = Client::connect(mecha)
            .await
            .context("connecting to mechad")?;
        for (store, _) in mecha::STORES {
            mecha::prefill_store(&client, store, plan.payload).await?;
        }
        if let Some(redis) = redis {
            redis.prefill(plan.payload).await?;
        }
        anyhow::Ok(())
    })?;
    for load in LOADS {
        let runtime: &Runtime = if load.connections == 1 {
            &single
        } else {
            &multi
        };
        for (name, floor, blocking) in [
            (FLOOR1, floor::one_hop as fn(_, _, _) -> _, true),
            (FLOOR2, floor::two_hops, true),
            (FLOOR1_LOOP, floor_loop::one_hop, false),
            (FLOOR2_LOOP, floor_loop::two_hops, false),
        ] {
            progress.step(&format!("{name} {}", load.label()));
            if blocking && !floor::fits(load, plan.payload) {
                sweep.notes.push(format!(
                    "{name} was skipped at {}: {} requests of {} bytes in flight do not fit \
                     in the socket buffers of its blocking client (lower --payload).",
                    load.label(),
                    load.depth,
                    plan.payload
                ));
                continue;
            }
            let outcome = floor(dir, load, plan).with_context(|| format!("scenario {name}"))?;
            sweep.push(name, load, outcome);
        }
        runtime.block_on(mecha_at(mecha, load, plan, &mut sweep, progress))?;
        if let Some(redis) = redis {
            runtime.block_on(redis_at(redis, load, plan, &mut sweep, progress))?;
            progress.step(&format!("redis-benchmark GET, SET {}", load.label()));
            for outcome in redis::benchmark(redis.socket(), load, plan)? {
                let scenario = outcome.name.clone();
                sweep.push(&scenario, load, outcome);
            }
        }
        if let Some(aof) = redis_aof {
            progress.step(&format!("{REDIS_SET_AOF} {}", load.label()));
            let outcome = runtime.block_on(redis_set_at(aof, REDIS_SET_AOF, load, plan))?;
            sweep.push(REDIS_SET_AOF, load, outcome);
        }
    }
    Ok(sweep)
}

/// SET through the `redis` crate on `server` at `load`, on connections of
/// its own.
pub async fn redis_set_at(
    server: &redis::Server,
    name: &str,
    load: Load,
    plan: &Plan,
) -> anyhow::Result<Outcome> {
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(server.connect().await?);
    }
    let value = Arc::new(vec![0xA5u8; plan.payload]);
    measure(name, &conns, load.depth, plan, move |c, i| {
        let value = Arc::clone(&value);
        async move { redis::set(c, i, &value).await }
    })
    .await
}

/// Raises the soft open-file limit to the hard one: floor2 at 256
/// connections holds about 2,000 descriptors in this process (8 per
/// connection: each socket and a clone for its other direction), over the
/// common soft limit of 1024.
/// Best effort: if it fails, a floor that runs out says so in its error.
/// The client runtimes of a sweep: one thread for one connection, like the
/// floors' client, and two for many connections, like several client
/// processes on this two-core machine.
pub fn runtimes() -> anyhow::Result<(tokio::runtime::Runtime, tokio::runtime::Runtime)> {
    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    Ok((single, multi))
}

/// Says what a sweep will run, and with which mechad.
pub fn announce(plan: &Plan, bin_dir: &std::path::Path) {
    eprintln!(
        "[mecha-bench] {} ops after {} warm-up per scenario and load, {}-byte payload; \
         mechad from {}",
        plan.ops,
        plan.warmup,
        plan.payload,
        bin_dir.display()
    );
}

fn raise_open_files() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The mecha scenarios at `load`, on connections of their own.
async fn mecha_at(
    socket: &Path,
    load: Load,
    plan: &Plan,
    sweep: &mut Sweep,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut clients = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        clients.push(
            Client::connect(socket)
                .await
                .context("connecting to mechad")?,
        );
    }
    if load == UNLOADED {
        // PING is answered by mechad itself: one hop through the full client
        // and router stack, which splits mecha's cost into "first hop" and
        // "module hop". Only unloaded, where that split is meaningful.
        progress.step(&format!("{PING} {}", load.label()));
        let outcome = measure(
            PING,
            &clients,
            load.depth,
            plan,
            |c: Client, _| async move { c.ping().await.context("ping") },
        )
        .await?;
        sweep.push(PING, load, outcome);
    }
    let size = plan.payload;
    let value = Arc::new(vec![0xA5u8; size]);
    for (name, store, is_get) in MECHA {
        progress.step(&format!("{name} {}", load.label()));
        let outcome = if is_get {
            measure(name, &clients, load.depth, plan, move |c: Client, i| async move {
                get_checked(&c, store, &mecha::key(i), size).await
            })
            .await?
        } else {
            let value = Arc::clone(&value);
            measure(name, &clients, load.depth, plan, move |c: Client, i| {
                let value = Arc::clone(&value);
                async move { mecha::set_value(c, store, i, &value).await }
            })
            .await?
        };
        sweep.push(name, load, outcome);
    }
    Ok(())
}

/// GET and SET through the `redis` crate at `load`.
async fn redis_at(
    server: &redis::Server,
    load: Load,
    plan: &Plan,
    sweep: &mut Sweep,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let mut conns = Vec::with_capacity(load.connections);
    for _ in 0..load.connections {
        conns.push(server.connect().await?);
    }
    let size = plan.payload;
    progress.step(&format!("{REDIS_GET}, SET {}", load.label()));
    let outcome = measure(REDIS_GET, &conns, load.depth, plan, move |c, i| {
        redis::get(c, i, size)
    })
    .await?;
    sweep.push(REDIS_GET, load, outcome);
    let value = Arc::new(vec![0xA5u8; size]);
    let outcome = measure(REDIS_SET, &conns, load.depth, plan, move |c, i| {
        let value = Arc::clone(&value);
        async move { redis::set(c, i, &value).await }
    })
    .await?;
    sweep.push(REDIS_SET, load, outcome);
    Ok(())
}

/// An untimed warm-up wave, then a timed one; see [`wave`].
pub async fn measure<C, F, Fut>(
    name: &str,
    conns: &[C],
    depth: usize,
    plan: &Plan,
    op: F,
) -> anyhow::Result<Outcome>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    wave(conns, depth, plan.warmup, op.clone())
        .await
        .with_context(|| format!("{name}: warm-up"))?;
    let (latencies, elapsed) = wave(conns, depth, plan.ops, op)
        .await
        .with_context(|| name.to_string())?;
    let mut hist = new_histogram()?;
    for ns in latencies.into_iter().flatten() {
        hist.saturating_record(ns);
    }
    Ok(Outcome::new(name, &hist, plan.ops, elapsed))
}

/// `ops` operations spread over `depth` tasks per connection, so every
/// connection has `depth` requests in flight; each task keeps its latencies
/// (ns) in a plain vector, merged after the clock stops.
async fn wave<C, F, Fut>(
    conns: &[C],
    depth: usize,
    ops: usize,
    op: F,
) -> anyhow::Result<(Vec<Vec<u64>>, Duration)>
where
    C: Clone + Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let workers = conns.len() * depth;
    let mut tasks = tokio::task::JoinSet::new();
    let started = Instant::now();
    for w in 0..workers {
        let n = share(ops, workers, w);
        let (conn, op) = (conns[w % conns.len()].clone(), op.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(n);
            for j in 0..n {
                let t = Instant::now();
                op(conn.clone(), w + j * workers).await?;
                latencies.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
            }
            anyhow::Ok(latencies)
        });
    }
    let mut done = Vec::with_capacity(workers);
    while let Some(joined) = tasks.join_next().await {
        done.push(joined.context("a load task panicked")??);
    }
    Ok((done, started.elapsed()))
}

/// Ratios against the baselines measured in the same run.
#[derive(Debug, Default)]
pub struct Ratios {
    /// mecha.get state.memory over floor2, p50 and p99, one request at a time.
    pub get_p50_vs_floor2: Option<f64>,
    pub get_p99_vs_floor2: Option<f64>,
    /// mecha.get state.memory throughput at 64 connections over
    /// redis-benchmark GET's (and the redis crate's) at 64 clients.
    pub get_ops_vs_redis_benchmark: Option<f64>,
    pub get_ops_vs_redis_crate: Option<f64>,
}

impl Ratios {
    pub fn of(sweep: &Sweep) -> Self {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
            _ => None,
        };
        let at = |s: &str, l: Load, f: Metric| sweep.find(s, l).map(f);
        let (p50, p99, ops) = (
            |o: &Outcome| o.p50_us,
            |o: &Outcome| o.p99_us,
            |o: &Outcome| o.ops_per_sec,
        );
        Self {
            get_p50_vs_floor2: ratio(at(MECHA_GET_MEM, UNLOADED, p50), at(FLOOR2, UNLOADED, p50)),
            get_p99_vs_floor2: ratio(at(MECHA_GET_MEM, UNLOADED, p99), at(FLOOR2, UNLOADED, p99)),
            get_ops_vs_redis_benchmark: ratio(
                at(MECHA_GET_MEM, BUSY, ops),
                at(BENCH_GET, BUSY, ops),
            ),
            get_ops_vs_redis_crate: ratio(at(MECHA_GET_MEM, BUSY, ops), at(REDIS_GET, BUSY, ops)),
        }
    }

    pub fn markdown(&self) -> String {
        let show = |r: Option<f64>| r.map_or("n/a".to_string(), |r| format!("{r:.2}x"));
        format!(
            "| ratio (same run) | value |\n|---|---:|\n\
             | mecha.get state.memory p50 / floor2 p50, c=1 d=1 | {} |\n\
             | mecha.get state.memory p99 / floor2 p99, c=1 d=1 | {} |\n\
             | mecha.get state.memory ops/s / redis-benchmark GET ops/s, 64 connections | {} |\n\
             | mecha.get state.memory ops/s / redis crate GET ops/s, 64 connections | {} |\n",
            show(self.get_p50_vs_floor2),
            show(self.get_p99_vs_floor2),
            show(self.get_ops_vs_redis_benchmark),
            show(self.get_ops_vs_redis_crate),
        )
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "mecha_get_memory_p50_over_floor2_p50_c1_d1": self.get_p50_vs_floor2,
            "mecha_get_memory_p99_over_floor2_p99_c1_d1": self.get_p99_vs_floor2,
            "mecha_get_memory_ops_over_redis_benchmark_get_ops_c64": self.get_ops_vs_redis_benchmark,
            "mecha_get_memory_ops_over_redis_crate_get_ops_c64": self.get_ops_vs_redis_crate,
        })
    }
}

/// Three tables, scenarios by loads: p50 µs, p99 µs and ops/s.
pub fn markdown(sweep: &Sweep) -> String {
    let mut scenarios: Vec<&str> = Vec::new();
    for row in &sweep.rows {
        if !scenarios.contains(&row.scenario.as_str()) {
            scenarios.push(&row.scenario);
        }
    }
    let metrics: [(&str, Metric, usize); 3] = [
        ("p50 µs", |o| o.p50_us, 1),
        ("p99 µs", |o| o.p99_us, 1),
        ("ops/s", |o| o.ops_per_sec, 0),
    ];
    let mut out = String::new();
    for (title, metric, decimals) in metrics {
        out.push_str(&format!("| {title} |"));
        LOADS
            .iter()
            .for_each(|l| out.push_str(&format!(" {} |", l.label())));
        out.push_str("\n|---|");
        LOADS.iter().for_each(|_| out.push_str("---:|"));
        out.push('\n');
        for scenario in &scenarios {
            out.push_str(&format!("| {scenario} |"));
            for load in LOADS {
                let cell = match sweep.find(scenario, load).map(metric) {
                    Some(v) if v.is_finite() => format!("{v:.decimals$}"),
                    Some(_) => "n/a".to_string(),
                    None => "—".to_string(),
                };
                out.push_str(&format!(" {cell} |"));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    for note in &sweep.notes {
        out.push_str(&format!("Note: {note}\n"));
    }
    out
}

/// Every row as a JSON object with `p50_us`, `p99_us` and `ops_per_sec`;
/// NaN (a percentile redis-benchmark did not print) becomes null.
pub fn json_rows(sweep: &Sweep) -> Vec<serde_json::Value> {
    sweep
        .rows
        .iter()
        .map(|r| {
            let o = &r.outcome;
            serde_json::json!({
                "name": o.name,
                "scenario": r.scenario,
                "connections": r.load.connections,
                "depth": r.load.depth,
                "p50_us": o.p50_us,
                "p99_us": o.p99_us,
                "p999_us": o.p999_us,
                "ops_per_sec": o.ops_per_sec,
            })
        })
        .collect()
}
