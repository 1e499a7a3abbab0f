//! A throw-away PostgreSQL cluster for `mecha-bench backends`: initdb in a
//! temporary directory, the server on a loopback port with fsync off, and a
//! direct `tokio-postgres` connection to it.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// A throw-away PostgreSQL cluster on a loopback port (fsync off); dropping
/// it stops the server.
pub struct Postgres {
    child: Child,
    port: u16,
}

impl Postgres {
    /// `None` when PostgreSQL is not installed. As root, the server runs as
    /// the `postgres` user, since PostgreSQL refuses to run as root.
    pub fn start(dir: &Path) -> anyhow::Result<Option<Self>> {
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
            .stdout(Stdio::null());
        // For profiling a driver: the server logs every statement with its
        // duration (parse, bind and execute apart), which shows the round
        // trips an operation makes and what each costs the server.
        match std::env::var_os("MECHA_BENCH_PG_LOG") {
            Some(path) => {
                cmd.args(["-c", "log_min_duration_statement=0"]);
                let log = std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.to_string_lossy()))?;
                cmd.stderr(log);
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
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

    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
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
