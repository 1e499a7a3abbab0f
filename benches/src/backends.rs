//! mecha on a real backend against that backend's own Rust client, in one
//! run: `state.get`/`state.set` through mecha on `state.redis` against GET/SET
//! with the `redis` crate on the same Redis, and through mecha on
//! `state.postgresql` against the same SELECT/upsert with `tokio-postgres` on
//! the same PostgreSQL. The ratio is what mecha's two Unix-socket hops and its
//! ETag bookkeeping cost on top of the network store an application would
//! otherwise call itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mecha_client::{Client, SetOptions};

use crate::mecha::sequential;
use crate::report::Outcome;
use crate::Plan;

/// Keys read and written, cycled through.
const KEYS: usize = 1000;

fn key(i: usize) -> String {
    format!("bench-{}", i % KEYS)
}

/// Runs every scenario whose server is installed; the notes say what was
/// skipped.
pub async fn run(bin_dir: &Path, plan: &Plan) -> anyhow::Result<(Vec<Outcome>, Vec<String>)> {
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    let value = vec![0xA5u8; plan.payload];

    let redis_port = crate::daemon::free_port()?;
    let redis = crate::redis::Server::start_tcp(dir.path(), redis_port)?;
    let pg = Postgres::start(&dir.path().join("pg"))?;
    let mut config = String::new();
    if redis.is_some() {
        config.push_str(&format!(
            "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: onredis}}\nspec:\n  type: state.redis\n  version: v1\n  metadata:\n  - {{name: redisHost, value: \"127.0.0.1:{redis_port}\"}}\n"
        ));
    } else {
        notes.push("redis-server is not installed: Redis rows skipped".into());
    }
    if let Some(pg) = &pg {
        config.push_str(&format!(
            "---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: onpg}}\nspec:\n  type: state.postgresql\n  version: v1\n  metadata:\n  - {{name: connectionString, value: \"{}\"}}\n  - {{name: tableName, value: mecha_state}}\n",
            pg.url()
        ));
    } else {
        notes.push("PostgreSQL is not installed: PostgreSQL rows skipped".into());
    }
    if config.is_empty() {
        return Ok((out, notes));
    }
    let daemon =
        crate::daemon::Daemon::start_config(bin_dir, dir.path(), &config, &["mecha-mod-state"])?;
    let client = Client::connect(daemon.socket())
        .await
        .context("connecting to mechad")?;

    if let Some(redis) = &redis {
        for i in 0..KEYS {
            client
                .set("onredis", &key(i), value.clone(), SetOptions::default())
                .await
                .context("prefilling through mecha")?;
        }
        let mut direct = redis.connect().await?;
        let mut pipe = redis::pipe();
        for i in 0..KEYS {
            pipe.set(format!("direct-{}", key(i)), &value).ignore();
        }
        pipe.query_async::<()>(&mut direct)
            .await
            .context("prefilling redis")?;
        out.push(
            sequential("mecha state.get (state.redis)", plan, |i| {
                let (client, size) = (&client, value.len());
                async move { crate::mecha::get_checked(client, "onredis", &key(i), size).await }
            })
            .await?,
        );
        out.push(
            sequential("redis crate GET", plan, |i| {
                let mut conn = direct.clone();
                async move {
                    let got: Option<Vec<u8>> =
                        redis::AsyncCommands::get(&mut conn, format!("direct-{}", key(i)))
                            .await
                            .context("redis GET")?;
                    got.map(|_| ()).context("redis GET: missing key")
                }
            })
            .await?,
        );
        out.push(
            sequential("mecha state.set (state.redis)", plan, |i| {
                let (client, value) = (&client, value.clone());
                async move {
                    client
                        .set("onredis", &key(i), value, SetOptions::default())
                        .await
                        .map(drop)
                        .context("mecha set")
                }
            })
            .await?,
        );
        out.push(
            sequential("redis crate SET", plan, |i| {
                let (mut conn, value) = (direct.clone(), value.clone());
                async move {
                    redis::AsyncCommands::set::<_, _, ()>(
                        &mut conn,
                        format!("direct-{}", key(i)),
                        value,
                    )
                    .await
                    .context("redis SET")
                }
            })
            .await?,
        );
    }

    if let Some(pg) = &pg {
        for i in 0..KEYS {
            client
                .set("onpg", &key(i), value.clone(), SetOptions::default())
                .await
                .context("prefilling through mecha")?;
        }
        let direct = pg.connect().await?;
        direct
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS direct (key TEXT PRIMARY KEY, value BYTEA NOT NULL)",
            )
            .await
            .context("creating the direct table")?;
        let upsert = direct
            .prepare("INSERT INTO direct (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value")
            .await
            .context("preparing the upsert")?;
        let select = direct
            .prepare("SELECT value FROM direct WHERE key = $1")
            .await
            .context("preparing the select")?;
        for i in 0..KEYS {
            direct
                .execute(&upsert, &[&key(i), &value])
                .await
                .context("prefilling postgres")?;
        }
        out.push(
            sequential("mecha state.get (state.postgresql)", plan, |i| {
                let (client, size) = (&client, value.len());
                async move { crate::mecha::get_checked(client, "onpg", &key(i), size).await }
            })
            .await?,
        );
        out.push(
            sequential("tokio-postgres SELECT", plan, |i| {
                let (direct, select) = (&direct, &select);
                async move {
                    let row = direct
                        .query_one(select, &[&key(i)])
                        .await
                        .context("SELECT")?;
                    let v: Vec<u8> = row.try_get(0).context("reading the value")?;
                    if v.len() != plan.payload {
                        bail!("SELECT: {} bytes", v.len());
                    }
                    Ok(())
                }
            })
            .await?,
        );
        out.push(
            sequential("mecha state.set (state.postgresql)", plan, |i| {
                let (client, value) = (&client, value.clone());
                async move {
                    client
                        .set("onpg", &key(i), value, SetOptions::default())
                        .await
                        .map(drop)
                        .context("mecha set")
                }
            })
            .await?,
        );
        out.push(
            sequential("tokio-postgres upsert", plan, |i| {
                let (direct, upsert, value) = (&direct, &upsert, value.clone());
                async move {
                    direct
                        .execute(upsert, &[&key(i), &value])
                        .await
                        .map(drop)
                        .context("upsert")
                }
            })
            .await?,
        );
    }
    drop(client);
    daemon.stop()?;
    Ok((out, notes))
}

/// The Markdown table, with each mecha row's p50 and p99 over the direct
/// client's row that follows it.
pub fn markdown(rows: &[Outcome], notes: &[String]) -> String {
    let mut s = String::from(
        "| scenario | p50_us | p99_us | ops_per_sec | mecha / direct p50 | mecha / direct p99 |\n|---|---:|---:|---:|---:|---:|\n",
    );
    for (i, o) in rows.iter().enumerate() {
        let ratio = match (o.name.starts_with("mecha"), rows.get(i + 1)) {
            (true, Some(direct)) => format!(
                "{:.2}× | {:.2}×",
                o.p50_us / direct.p50_us,
                o.p99_us / direct.p99_us
            ),
            _ => "| ".to_owned(),
        };
        s.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.0} | {ratio} |\n",
            o.name, o.p50_us, o.p99_us, o.ops_per_sec
        ));
    }
    for n in notes {
        s.push_str(&format!("\nNote: {n}\n"));
    }
    s
}

/// A throw-away PostgreSQL cluster on a loopback port (fsync off); dropping
/// it stops the server.
struct Postgres {
    child: Child,
    port: u16,
}

impl Postgres {
    /// `None` when PostgreSQL is not installed. As root, the server runs as
    /// the `postgres` user, since PostgreSQL refuses to run as root.
    fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
        let Some(bin) = postgres_bindir() else {
            return Ok(None);
        };
        std::fs::create_dir_all(dir).context("creating the PostgreSQL directory")?;
        let user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .context("looking up the postgres user")?
                .context("no postgres user to run PostgreSQL as")?;
            nix::unistd::chown(dir, Some(u.uid), Some(u.gid)).context("chown")?;
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let as_user = |cmd: &mut Command| {
            if let Some((uid, gid)) = user {
                std::os::unix::process::CommandExt::uid(cmd, uid);
                std::os::unix::process::CommandExt::gid(cmd, gid);
            }
        };
        let data = dir.join("data");
        let mut init = Command::new(bin.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut init);
        if !init.status().context("running initdb")?.success() {
            bail!("initdb failed");
        }
        let port = crate::daemon::free_port()?;
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_user(&mut cmd);
        let child = cmd.spawn().context("starting postgres")?;
        let pg = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(Some(pg));
            }
            if Instant::now() > deadline {
                bail!("PostgreSQL did not become ready");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::connect(&self.url(), tokio_postgres::NoTls)
            .await
            .context("connecting to PostgreSQL")?;
        tokio::spawn(conn);
        Ok(client)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown; the data is thrown away.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGINT,
        );
        let _ = self.child.wait();
    }
}

fn postgres_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").is_file())
        .collect();
    dirs.sort();
    dirs.pop()
}
