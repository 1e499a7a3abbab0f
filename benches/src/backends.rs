//! mecha on real backends against each backend's own Rust client, in one
//! run. Every operation is measured three ways, taking turns in rounds:
//! through mecha on the networked driver, directly with the client an
//! application would otherwise link (the `redis` crate over loopback TCP,
//! `tokio-postgres` with prepared statements), and through mecha on the
//! embedded in-memory driver of the same capability. mecha on a backend
//! pays its own path (the two Unix-socket hops, the module) plus the
//! backend's round trip, so the *tax* is mecha's time over the sum of the
//! other two: 1.0× means the driver adds nothing of its own.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use mecha_abi::msg::UnlockStatus;
use mecha_client::{Client, PublishOptions, SetOptions};

use crate::pg_server::Postgres;
use crate::report::{self, new_histogram, record, Outcome};
use crate::Plan;

/// Keys read and written, cycled through.
const KEYS: usize = 1000;

/// Rounds in which the three ways of an operation take turns.
const ROUNDS: usize = 10;

/// The lease of the locks taken; each is released at once.
const LOCK_TTL: Duration = Duration::from_secs(30);

/// The owner named by every lock of the bench.
const OWNER: &str = "bench-owner";

/// The module binaries the bench's mechad needs.
const MODULES: [&str; 4] = [
    "mecha-mod-state",
    "mecha-mod-lock",
    "mecha-mod-sequencer",
    "mecha-mod-pubsub",
];

fn key(i: usize) -> String {
    format!("bench-{}", i % KEYS)
}

/// One operation measured three ways.
#[derive(Clone, Debug)]
pub struct Group {
    /// What is measured, e.g. `state get on state.redis`.
    pub op: String,
    /// Through mecha on the networked driver.
    pub mecha: Outcome,
    /// The backend's own client doing the equivalent.
    pub direct: Outcome,
    /// Through mecha on the capability's in-memory driver.
    pub memory: Outcome,
}

impl Group {
    /// mecha's p50 over the sum of the direct client's and the in-memory
    /// driver's p50: what the driver adds beyond the two costs it cannot
    /// avoid.
    pub fn tax(&self) -> f64 {
        self.mecha.p50_us / (self.direct.p50_us + self.memory.p50_us)
    }
}

/// Times the three ways of one operation in interleaved rounds: after a
/// warm-up of each, `ROUNDS` times a tenth of the operations of `mecha`,
/// then of `direct`, then of `memory`. On a shared 2-vCPU machine the cost of
/// a wake-up drifts with the load of the moment; interleaving lets the three
/// see the same moments, so their ratio holds even when the figures move.
pub(crate) async fn measure<A, AF, B, BF, C, CF>(
    op: &str,
    plan: &Plan,
    names: [&str; 3],
    mut mecha: A,
    mut direct: B,
    mut memory: C,
) -> anyhow::Result<Group>
where
    A: FnMut(usize) -> AF,
    AF: Future<Output = anyhow::Result<()>>,
    B: FnMut(usize) -> BF,
    BF: Future<Output = anyhow::Result<()>>,
    C: FnMut(usize) -> CF,
    CF: Future<Output = anyhow::Result<()>>,
{
    report::started(op, plan);
    let mut hists = [new_histogram()?, new_histogram()?, new_histogram()?];
    let mut took = [Duration::ZERO; 3];
    let [m, d, e] = &mut hists;
    let warmup = 0..plan.warmup;
    turn(&mut mecha, warmup.clone(), None)
        .await
        .with_context(|| names[0].to_owned())?;
    turn(&mut direct, warmup.clone(), None)
        .await
        .with_context(|| names[1].to_owned())?;
    turn(&mut memory, warmup, None)
        .await
        .with_context(|| names[2].to_owned())?;
    let per_round = plan.ops.div_ceil(ROUNDS);
    let mut start = plan.warmup;
    while start < plan.warmup + plan.ops {
        let range = start..(start + per_round).min(plan.warmup + plan.ops);
        took[0] += turn(&mut mecha, range.clone(), Some(m))
            .await
            .with_context(|| names[0].to_owned())?;
        took[1] += turn(&mut direct, range.clone(), Some(d))
            .await
            .with_context(|| names[1].to_owned())?;
        took[2] += turn(&mut memory, range.clone(), Some(e))
            .await
            .with_context(|| names[2].to_owned())?;
        start = range.end;
    }
    let [m, d, e] = hists;
    let group = Group {
        op: op.to_owned(),
        mecha: Outcome::new(names[0], &m, plan.ops, took[0]),
        direct: Outcome::new(names[1], &d, plan.ops, took[1]),
        memory: Outcome::new(names[2], &e, plan.ops, took[2]),
    };
    for o in [&group.mecha, &group.direct, &group.memory] {
        report::finished(o);
    }
    Ok(group)
}

/// Runs `op(i)` for each `i` of `range`, one at a time, recording each into
/// `hist` if given; returns the time it all took.
async fn turn<F, Fut>(
    op: &mut F,
    range: std::ops::Range<usize>,
    mut hist: Option<&mut Histogram<u64>>,
) -> anyhow::Result<Duration>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    for i in range {
        let t = Instant::now();
        op(i).await?;
        if let Some(hist) = hist.as_deref_mut() {
            record(hist, t.elapsed());
        }
    }
    Ok(started.elapsed())
}

/// A Dapr component document.
pub(crate) fn component(name: &str, kind: &str, fields: &[(&str, String)]) -> String {
    let mut doc = format!(
        "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\nspec:\n  type: {kind}\n  version: v1\n"
    );
    doc.push_str(if fields.is_empty() {
        "  metadata: []\n"
    } else {
        "  metadata:\n"
    });
    for (field, value) in fields {
        doc.push_str(&format!("  - {{name: {field}, value: \"{value}\"}}\n"));
    }
    doc
}

/// Runs every group whose server is installed; the notes say what was
/// skipped.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<(Vec<Group>, Vec<String>)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut groups = Vec::new();
    let mut notes = Vec::new();
    let value = vec![0xA5u8; plan.payload];

    let redis_port = crate::daemon::free_port()?;
    let redis = crate::redis::Server::start_tcp(dir.path(), redis_port)?;
    let pg = Postgres::start(&dir.path().join("pg"))?;
    let mut config = [
        component("mem", "state.memory", &[]),
        component("lockmem", "lock.memory", &[]),
        component("seqmem", "sequencer.memory", &[]),
        component("psmem", "pubsub.memory", &[]),
    ]
    .concat();
    if redis.is_some() {
        let host = [("redisHost", format!("127.0.0.1:{redis_port}"))];
        for (name, kind) in [
            ("onredis", "state.redis"),
            ("lockredis", "lock.redis"),
            ("seqredis", "sequencer.redis"),
            ("psredis", "pubsub.redis"),
        ] {
            config.push_str(&component(name, kind, &host));
        }
    } else {
        notes.push("redis-server is not installed: Redis rows skipped".into());
    }
    if let Some(pg) = &pg {
        config.push_str(&component(
            "onpg",
            "state.postgresql",
            &[
                ("connectionString", pg.url()),
                ("tableName", "mecha_state".to_owned()),
            ],
        ));
        config.push_str(&component(
            "seqpg",
            "sequencer.postgresql",
            &[("connectionString", pg.url())],
        ));
    } else {
        notes.push("PostgreSQL is not installed: PostgreSQL rows skipped".into());
    }
    notes.push(
        "lock.etcd and pubsub.jetstream are not measured here (BENCHMARKS.md, Backends)".into(),
    );
    let daemon = crate::daemon::Daemon::start_config(bin_dir, dir.path(), &config, &MODULES)?;
    let client = Client::connect(daemon.socket())
        .await
        .context("connecting to mechad")?;
    for i in 0..KEYS {
        client
            .set("mem", &key(i), value.clone(), SetOptions::default())
            .await
            .context("prefilling state.memory")?;
    }

    if redis.is_some() {
        let direct = redis::Client::open(format!("redis://127.0.0.1:{redis_port}/"))
            .context("configuring the redis client")?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis-server over TCP")?;
        redis_groups(&client, direct, &value, plan, &mut groups).await?;
    }
    if let Some(pg) = &pg {
        let direct = pg.connect().await?;
        postgres_groups(&client, &direct, &value, plan, &mut groups).await?;
    }
    drop(client);
    daemon.stop()?;
    Ok((groups, notes))
}

/// A get through mecha that must find a value of `size` bytes.
async fn get(client: &Client, store: &str, i: usize, size: usize) -> anyhow::Result<()> {
    crate::mecha::get_checked(client, store, &key(i), size).await
}

/// A set through mecha without ETag or TTL.
async fn set(client: &Client, store: &str, i: usize, value: &[u8]) -> anyhow::Result<()> {
    client
        .set(store, &key(i), value.to_vec(), SetOptions::default())
        .await
        .map(drop)
        .with_context(|| format!("set {store}"))
}

/// A try-lock and its unlock through mecha: one lock cycle.
async fn lock_cycle(client: &Client, store: &str, i: usize) -> anyhow::Result<()> {
    let resource = key(i);
    let token = client
        .try_lock(store, &resource, OWNER, LOCK_TTL, None)
        .await
        .with_context(|| format!("try-lock {store}"))?;
    if token.is_none() {
        bail!("try-lock {store}/{resource}: held by another owner");
    }
    match client.unlock(store, &resource, OWNER).await {
        Ok(UnlockStatus::Success) => Ok(()),
        Ok(other) => bail!("unlock {store}/{resource}: {other:?}"),
        Err(e) => Err(e).with_context(|| format!("unlock {store}")),
    }
}

/// One id through mecha.
async fn next_id(client: &Client, store: &str, i: usize) -> anyhow::Result<()> {
    client
        .next_id(store, &key(i))
        .await
        .map(drop)
        .with_context(|| format!("next id {store}"))
}

/// One publish through mecha.
async fn publish(client: &Client, store: &str, value: &[u8]) -> anyhow::Result<()> {
    client
        .publish(
            store,
            "bench-topic",
            value.to_vec(),
            PublishOptions::default(),
        )
        .await
        .map(drop)
        .with_context(|| format!("publish {store}"))
}

/// The Redis groups: state get and set, a lock cycle, a sequencer id and a
/// publish, each against the `redis` crate doing the nearest equivalent.
async fn redis_groups(
    client: &Client,
    direct: redis::aio::MultiplexedConnection,
    value: &[u8],
    plan: &Plan,
    groups: &mut Vec<Group>,
) -> anyhow::Result<()> {
    let size = value.len();
    for i in 0..KEYS {
        set(client, "onredis", i, value).await?;
    }
    let mut pipe = redis::pipe();
    for i in 0..KEYS {
        pipe.set(format!("direct-{}", key(i)), value).ignore();
    }
    pipe.query_async::<()>(&mut direct.clone())
        .await
        .context("prefilling redis")?;
    let conn = || direct.clone();

    groups.push(
        measure(
            "state get on state.redis",
            plan,
            [
                "mecha state.get (state.redis)",
                "redis GET",
                "mecha state.get (state.memory)",
            ],
            |i| get(client, "onredis", i, size),
            |i| {
                let mut conn = conn();
                async move {
                    let got: Option<Vec<u8>> =
                        redis::AsyncCommands::get(&mut conn, format!("direct-{}", key(i)))
                            .await
                            .context("redis GET")?;
                    got.map(drop).context("redis GET: missing key")
                }
            },
            |i| get(client, "mem", i, size),
        )
        .await?,
    );
    groups.push(
        measure(
            "state set on state.redis",
            plan,
            [
                "mecha state.set (state.redis)",
                "redis SET",
                "mecha state.set (state.memory)",
            ],
            |i| set(client, "onredis", i, value),
            |i| {
                let mut conn = conn();
                async move {
                    redis::AsyncCommands::set::<_, _, ()>(
                        &mut conn,
                        format!("direct-{}", key(i)),
                        value,
                    )
                    .await
                    .context("redis SET")
                }
            },
            |i| set(client, "mem", i, value),
        )
        .await?,
    );
    // The usual compare-and-delete release of a `SET NX PX` lock.
    let unlock = redis::Script::new(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) \
         else return 0 end",
    );
    groups.push(
        measure(
            "try-lock + unlock on lock.redis",
            plan,
            [
                "mecha try-lock + unlock (lock.redis)",
                "redis SET NX PX + compare-and-delete script",
                "mecha try-lock + unlock (lock.memory)",
            ],
            |i| lock_cycle(client, "lockredis", i),
            |i| {
                let (mut conn, unlock) = (conn(), &unlock);
                async move {
                    let name = format!("direct-lock-{}", key(i));
                    let set: Option<String> = redis::cmd("SET")
                        .arg(&name)
                        .arg(OWNER)
                        .arg("NX")
                        .arg("PX")
                        .arg(LOCK_TTL.as_millis().to_string())
                        .query_async(&mut conn)
                        .await
                        .context("redis SET NX PX")?;
                    if set.is_none() {
                        bail!("redis SET NX PX: held");
                    }
                    let released: i64 = unlock
                        .key(&name)
                        .arg(OWNER)
                        .invoke_async(&mut conn)
                        .await
                        .context("redis unlock script")?;
                    if released != 1 {
                        bail!("redis unlock script: not released");
                    }
                    Ok(())
                }
            },
            |i| lock_cycle(client, "lockmem", i),
        )
        .await?,
    );
    groups.push(
        measure(
            "next id on sequencer.redis",
            plan,
            [
                "mecha seq.next (sequencer.redis)",
                "redis INCR",
                "mecha seq.next (sequencer.memory)",
            ],
            |i| next_id(client, "seqredis", i),
            |i| {
                let mut conn = conn();
                async move {
                    redis::AsyncCommands::incr::<_, _, i64>(
                        &mut conn,
                        format!("direct-seq-{}", key(i)),
                        1,
                    )
                    .await
                    .map(drop)
                    .context("redis INCR")
                }
            },
            |i| next_id(client, "seqmem", i),
        )
        .await?,
    );
    groups.push(
        measure(
            "publish on pubsub.redis",
            plan,
            [
                "mecha publish (pubsub.redis)",
                "redis XADD",
                "mecha publish (pubsub.memory)",
            ],
            |_| publish(client, "psredis", value),
            |_| {
                let mut conn = conn();
                async move {
                    redis::cmd("XADD")
                        .arg("direct-topic")
                        .arg("*")
                        .arg("data")
                        .arg(value)
                        .query_async::<String>(&mut conn)
                        .await
                        .map(drop)
                        .context("redis XADD")
                }
            },
            |_| publish(client, "psmem", value),
        )
        .await?,
    );
    Ok(())
}

/// The PostgreSQL groups: state get and set and a sequencer id, against
/// `tokio-postgres` running the same kind of statement, prepared.
async fn postgres_groups(
    client: &Client,
    direct: &tokio_postgres::Client,
    value: &[u8],
    plan: &Plan,
    groups: &mut Vec<Group>,
) -> anyhow::Result<()> {
    let size = value.len();
    for i in 0..KEYS {
        set(client, "onpg", i, value).await?;
    }
    direct
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS direct (key TEXT PRIMARY KEY, value BYTEA NOT NULL); \
             CREATE TABLE IF NOT EXISTS direct_seq (key TEXT PRIMARY KEY, bound BIGINT NOT NULL)",
        )
        .await
        .context("creating the direct tables")?;
    let upsert = direct
        .prepare(
            "INSERT INTO direct (key, value) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
        )
        .await
        .context("preparing the upsert")?;
    let select = direct
        .prepare("SELECT value FROM direct WHERE key = $1")
        .await
        .context("preparing the select")?;
    let bump = direct
        .prepare(
            "INSERT INTO direct_seq AS s (key, bound) VALUES ($1, 1) \
             ON CONFLICT (key) DO UPDATE SET bound = s.bound + 1 RETURNING bound",
        )
        .await
        .context("preparing the counter upsert")?;
    for i in 0..KEYS {
        direct
            .execute(&upsert, &[&key(i), &value])
            .await
            .context("prefilling postgres")?;
    }
    groups.push(
        measure(
            "state get on state.postgresql",
            plan,
            [
                "mecha state.get (state.postgresql)",
                "tokio-postgres SELECT",
                "mecha state.get (state.memory)",
            ],
            |i| get(client, "onpg", i, size),
            |i| {
                let select = &select;
                async move {
                    let row = direct
                        .query_one(select, &[&key(i)])
                        .await
                        .context("SELECT")?;
                    let v: Vec<u8> = row.try_get(0).context("reading the value")?;
                    if v.len() != size {
                        bail!("SELECT: {} bytes", v.len());
                    }
                    Ok(())
                }
            },
            |i| get(client, "mem", i, size),
        )
        .await?,
    );
    groups.push(
        measure(
            "state set on state.postgresql",
            plan,
            [
                "mecha state.set (state.postgresql)",
                "tokio-postgres upsert",
                "mecha state.set (state.memory)",
            ],
            |i| set(client, "onpg", i, value),
            |i| {
                let upsert = &upsert;
                async move {
                    direct
                        .execute(upsert, &[&key(i), &value])
                        .await
                        .map(drop)
                        .context("upsert")
                }
            },
            |i| set(client, "mem", i, value),
        )
        .await?,
    );
    groups.push(
        measure(
            "next id on sequencer.postgresql",
            plan,
            [
                "mecha seq.next (sequencer.postgresql)",
                "tokio-postgres counter upsert",
                "mecha seq.next (sequencer.memory)",
            ],
            |i| next_id(client, "seqpg", i),
            |i| {
                let bump = &bump;
                async move {
                    direct
                        .query_one(bump, &[&key(i)])
                        .await
                        .map(drop)
                        .context("counter upsert")
                }
            },
            |i| next_id(client, "seqmem", i),
        )
        .await?,
    );
    Ok(())
}

/// The Markdown table: one line per group with the three p50s and the tax,
/// then every scenario's p50, p99 and throughput. `third` is the third way's
/// column title ("mecha on memory"), `short` its name in the tax's formula.
pub fn markdown(groups: &[Group], notes: &[String], third: &str, short: &str) -> String {
    let mut s = format!(
        "| operation | mecha p50 µs | direct p50 µs | {third} p50 µs | tax = mecha ÷ (direct + {short}) |\n|---|---:|---:|---:|---:|\n",
    );
    for g in groups {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2}× |\n",
            g.op,
            g.mecha.p50_us,
            g.direct.p50_us,
            g.memory.p50_us,
            g.tax()
        ));
    }
    s.push_str("\n| scenario | p50 µs | p99 µs | ops/s |\n|---|---:|---:|---:|\n");
    for o in groups.iter().flat_map(|g| [&g.mecha, &g.direct, &g.memory]) {
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} |\n",
            o.name, o.p50_us, o.p99_us, o.ops_per_sec
        ));
    }
    for n in notes {
        s.push_str(&format!("\nNote: {n}\n"));
    }
    s
}

/// Writes `{"scenarios": [...], "groups": [...]}`: every scenario as the
/// other commands write them, and each group's three names and tax.
pub fn write_json(path: &Path, groups: &[Group]) -> anyhow::Result<()> {
    let scenarios: Vec<_> = groups
        .iter()
        .flat_map(|g| [&g.mecha, &g.direct, &g.memory])
        .map(Outcome::json)
        .collect();
    let groups: Vec<_> = groups
        .iter()
        .map(|g| {
            serde_json::json!({
                "op": g.op,
                "mecha": g.mecha.name,
                "direct": g.direct.name,
                "memory": g.memory.name,
                "tax": g.tax(),
            })
        })
        .collect();
    report::write_json_value(
        path,
        &serde_json::json!({ "scenarios": scenarios, "groups": groups }),
    )
}
