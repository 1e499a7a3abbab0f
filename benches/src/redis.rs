//! Redis as a baseline: the real `redis-server` started by the bench on a
//! temporary Unix socket, with persistence off (the in-memory baseline) or
//! with an append-only file synced on every write (the durable baseline),
//! measured two ways — with its own `redis-benchmark` (C, one event loop)
//! and with the official `redis` crate timed by the same code and
//! histograms as mecha.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use redis::aio::MultiplexedConnection;
use redis::AsyncCommands;

use crate::report::Outcome;
use crate::sweep::Load;
use crate::Plan;

/// Keys the bench fills in advance and reads, in redis-benchmark's own
/// `-r` key format (`key:` and 12 digits), so both clients hit the same keys.
pub const KEYS: usize = 1000;

/// How long redis-server may take to accept on its socket.
const START_LIMIT: Duration = Duration::from_secs(10);

/// The `redis` crate key for operation `i`.
pub fn key(i: usize) -> String {
    format!("key:{:012}", i % KEYS)
}

/// A running redis-server; dropping it kills the process.
pub struct Server {
    child: Child,
    socket: PathBuf,
}

/// What a server keeps on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Persistence {
    /// Nothing: an in-memory store, like mecha's state.memory.
    None,
    /// An append-only file fsynced before every write is answered
    /// (`appendfsync always`): the durability of mecha's redb stores, whose
    /// writes are answered after an fsync'd commit. Redis groups the fsyncs
    /// of the clients served in one event-loop turn, which is the group
    /// commit mecha's redb writer is measured against.
    AofAlways,
}

impl Server {
    /// Starts `redis-server` with its socket and files in `dir`; `None` when
    /// it is not installed, so the caller can skip the Redis scenarios.
    pub fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        Self::start_with(dir, None, Persistence::None)
    }

    /// Like [`Server::start`], listening also on loopback TCP `port`, for
    /// mecha's `state.redis` driver, which reaches Redis by host:port.
    pub fn start_tcp(dir: &Path, port: u16) -> anyhow::Result<Option<Self>> {
        Self::start_with(dir, Some(port), Persistence::None)
    }

    /// Like [`Server::start`], with `--appendonly yes --appendfsync always`:
    /// its socket and append-only file in `dir/redis-aof`, beside (not
    /// instead of) an in-memory server started in `dir`.
    pub fn start_aof(dir: &Path) -> anyhow::Result<Option<Self>> {
        let dir = dir.join("redis-aof");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Self::start_with(&dir, None, Persistence::AofAlways)
    }

    fn start_with(
        dir: &Path,
        port: Option<u16>,
        persistence: Persistence,
    ) -> anyhow::Result<Option<Self>> {
        let socket = dir.join("redis.sock");
        let port = port.map_or_else(|| "0".to_owned(), |p| p.to_string());
        let aof: &[&str] = match persistence {
            Persistence::None => &["--appendonly", "no"],
            Persistence::AofAlways => &["--appendonly", "yes", "--appendfsync", "always"],
        };
        let spawned = Command::new("redis-server")
            // Port 0 (no TCP) unless asked: nothing else on the machine can
            // reach or clash with it. No snapshots either way.
            .args(["--port", &port, "--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(aof)
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--daemonize", "no"])
            .args(["--loglevel", "warning"])
            .arg("--dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).context("spawning redis-server"),
        };
        let mut server = Self { child, socket };
        let deadline = Instant::now() + START_LIMIT;
        while std::os::unix::net::UnixStream::connect(&server.socket).is_err() {
            if let Some(status) = server
                .child
                .try_wait()
                .context("checking on redis-server")?
            {
                bail!("redis-server exited during start-up: {status}");
            }
            if Instant::now() > deadline {
                bail!("redis-server did not listen within {START_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(Some(server))
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A new multiplexed connection: requests sent from clones of it share
    /// the socket and are pipelined, like clones of `mecha_client::Client`.
    pub async fn connect(&self) -> anyhow::Result<MultiplexedConnection> {
        redis::Client::open(redis::ConnectionAddr::Unix(self.socket.clone()))
            .context("configuring the redis client")?
            .get_multiplexed_async_connection()
            .await
            .context("connecting to redis-server")
    }

    /// Writes every key once, so every get of either client hits.
    pub async fn prefill(&self, payload: usize) -> anyhow::Result<()> {
        let mut conn = self.connect().await?;
        let value = vec![0xA5u8; payload];
        let mut pipe = redis::pipe();
        for i in 0..KEYS {
            pipe.set(key(i), &value).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .context("prefilling redis")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Its files are in the bench's temporary directory, so a kill loses
        // nothing anyone needs.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One GET through the `redis` crate that must return a value of `size` bytes.
pub async fn get(mut conn: MultiplexedConnection, i: usize, size: usize) -> anyhow::Result<()> {
    let value: Option<Vec<u8>> = conn.get(key(i)).await.context("redis GET")?;
    match value {
        Some(v) if v.len() == size => Ok(()),
        Some(v) => bail!("redis GET: {} bytes, expected {size}", v.len()),
        None => bail!("redis GET {}: not found after prefill", key(i)),
    }
}

/// One SET through the `redis` crate.
pub async fn set(mut conn: MultiplexedConnection, i: usize, value: &[u8]) -> anyhow::Result<()> {
    conn.set::<_, _, ()>(key(i), value)
        .await
        .context("redis SET")
}

/// Runs `redis-benchmark` for GET and SET at `load` (`-c` connections, `-P`
/// requests in flight on each) and returns its GET and SET rows.
pub fn benchmark(socket: &Path, load: Load, plan: &Plan) -> anyhow::Result<Vec<Outcome>> {
    let output = Command::new("redis-benchmark")
        .arg("-s")
        .arg(socket)
        .args(["-c", &load.connections.to_string()])
        .args(["-n", &plan.ops.to_string()])
        .args(["-P", &load.depth.to_string()])
        .args(["-d", &plan.payload.to_string()])
        // Random keys among the prefilled ones, as the other clients use.
        .args(["-r", &KEYS.to_string()])
        .args(["-t", "get,set", "--csv"])
        .stdin(Stdio::null())
        .output()
        .context("running redis-benchmark (is it installed with redis-server?)")?;
    if !output.status.success() {
        bail!(
            "redis-benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    parse_csv(&String::from_utf8_lossy(&output.stdout))
}

/// Parses redis-benchmark's `--csv` output: a header row naming the columns
/// (`rps` always; `p50_latency_ms` and `p99_latency_ms` since Redis 7), then
/// one row per test. Missing latency columns become NaN ("n/a" in tables).
fn parse_csv(text: &str) -> anyhow::Result<Vec<Outcome>> {
    let split = |line: &str| -> Vec<String> {
        line.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header = split(lines.next().context("redis-benchmark printed nothing")?);
    let column = |name: &str| header.iter().position(|h| h == name);
    let rps = column("rps").context("redis-benchmark CSV has no rps column")?;
    let (p50, p99) = (column("p50_latency_ms"), column("p99_latency_ms"));
    let mut rows = Vec::new();
    for line in lines {
        let fields = split(line);
        let number = |i: Option<usize>| -> anyhow::Result<f64> {
            match i.and_then(|i| fields.get(i)) {
                Some(f) => f
                    .parse::<f64>()
                    .with_context(|| format!("redis-benchmark CSV: bad number {f:?}")),
                None => Ok(f64::NAN),
            }
        };
        let test = fields.first().context("redis-benchmark CSV: empty row")?;
        rows.push(Outcome {
            name: format!("redis-benchmark {test}"),
            p50_us: number(p50)? * 1000.0,
            p99_us: number(p99)? * 1000.0,
            p999_us: f64::NAN,
            ops_per_sec: number(Some(rps))?,
        });
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_7_csv() {
        let text = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
                    \"SET\",\"166666.67\",\"0.164\",\"0.016\",\"0.047\",\"0.127\",\"6.711\",\"6.727\"\n\
                    \"GET\",\"285714.28\",\"0.092\",\"0.008\",\"0.039\",\"0.071\",\"3.223\",\"3.231\"\n";
        let rows = parse_csv(text).expect("parses");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].name, "redis-benchmark GET");
        assert!((rows[1].ops_per_sec - 285714.28).abs() < 1e-6);
        assert!((rows[1].p50_us - 39.0).abs() < 1e-9);
        assert!((rows[0].p99_us - 6711.0).abs() < 1e-9);
    }

    #[test]
    fn older_csv_without_percentiles_gives_nan() {
        let rows = parse_csv("\"test\",\"rps\"\n\"GET\",\"1000.00\"\n").expect("parses");
        assert!(rows[0].p50_us.is_nan() && rows[0].p99_us.is_nan());
        assert!((rows[0].ops_per_sec - 1000.0).abs() < 1e-9);
    }
}
