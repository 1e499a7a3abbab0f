//! Real backing servers for the conformance suite: Redis, PostgreSQL, etcd and
//! NATS (JetStream), each started once per test process on a free loopback
//! port with its data in a temporary directory, and stopped when the process
//! exits.
//!
//! A server whose binary is not installed makes the tests that need it skip
//! with a message, unless `MECHA_REQUIRE_SERVERS=1` (set by `.ci/run`, which
//! installs every server), in which case they fail.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running server: where it listens and the directory it keeps data in.
#[derive(Debug)]
pub struct Server {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub dir: PathBuf,
}

impl Server {
    /// `host:port`, the form Dapr's `redisHost` and NATS URLs use.
    pub fn host_port(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

/// Redis with keyspace notifications on (the Redis configuration driver
/// watches keys through them, as Dapr's does), no persistence.
pub fn redis() -> Option<&'static Server> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let port = free_port();
        let dir = server_dir("redis");
        let addr = start("redis", redis_command(port, &dir)?, port, None);
        wait_ready("redis", Duration::from_secs(20), || {
            tcp_exchange(addr, b"PING\r\n").is_some_and(|r| r.starts_with("+PONG"))
        });
        Some(Server {
            name: "redis",
            addr,
            dir,
        })
    })
    .as_ref()
    .or_else(|| missing("redis-server"))
}

/// PostgreSQL with trust authentication for user `postgres` on loopback, and
/// fsync off (the data is thrown away). Runs as the `postgres` user when the
/// tests run as root, since PostgreSQL refuses to run as root.
pub fn postgres() -> Option<&'static Server> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let bindir = postgres_bindir()?;
        let port = free_port();
        let dir = server_dir("postgres");
        let data = dir.join("data");
        let user = run_as_postgres(&dir);
        let mut init = Command::new(bindir.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        if let Some((uid, gid)) = user {
            init.uid(uid).gid(gid);
        }
        let out = init.output().expect("running initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.display()))
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            .args(["-c", "max_connections=200"]);
        let addr = start("postgres", cmd, port, user);
        let isready = bindir.join("pg_isready");
        wait_ready("postgres", Duration::from_secs(30), || {
            Command::new(&isready)
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .is_ok_and(|s| s.success())
        });
        Some(Server {
            name: "postgres",
            addr,
            dir,
        })
    })
    .as_ref()
    .or_else(|| missing("postgres (the postgresql package)"))
}

/// A single-member etcd cluster on loopback.
pub fn etcd() -> Option<&'static Server> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let (port, peer) = (free_port(), free_port());
        let dir = server_dir("etcd");
        let addr = start("etcd", etcd_command(port, peer, &dir)?, port, None);
        wait_ready("etcd", Duration::from_secs(30), || {
            tcp_exchange(
                addr,
                b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
            )
            .is_some_and(|r| r.contains("\"health\":\"true\""))
        });
        Some(Server {
            name: "etcd",
            addr,
            dir,
        })
    })
    .as_ref()
    .or_else(|| missing("etcd (the etcd-server package)"))
}

/// NATS with JetStream enabled, storing streams in the temporary directory.
pub fn nats() -> Option<&'static Server> {
    static S: OnceLock<Option<Server>> = OnceLock::new();
    S.get_or_init(|| {
        let port = free_port();
        let dir = server_dir("nats");
        let addr = start("nats", nats_command(port, &dir)?, port, None);
        wait_ready("nats", Duration::from_secs(20), || {
            tcp_exchange(addr, b"").is_some_and(|r| r.starts_with("INFO"))
        });
        Some(Server {
            name: "nats",
            addr,
            dir,
        })
    })
    .as_ref()
    .or_else(|| missing("nats-server"))
}

/// Starts a server owned by one test, for tests of a driver's behaviour
/// while its server is down and after it returns (the shared servers stay up
/// for the whole process). Killed when the returned handle drops.
pub fn private(name: &'static str, mut cmd: Command, port: u16) -> PrivateServer {
    set_parent_death_signal(&mut cmd);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    PrivateServer {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    }
}

/// A server owned by one test (see [`private`]); killed when dropped.
pub struct PrivateServer {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command that starts a Redis on `port` keeping nothing on disk, with
/// keyspace notifications on, or `None` when Redis is not installed.
pub fn redis_command(port: u16, dir: &Path) -> Option<Command> {
    let bin = find(&["redis-server"])?;
    let mut cmd = Command::new(bin);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--notify-keyspace-events", "KEA"])
        .arg("--dir")
        .arg(dir);
    Some(cmd)
}

/// The command that starts a NATS with JetStream on `port`, keeping its
/// streams in `dir` (so they survive a restart of the server), or `None` when
/// NATS is not installed.
pub fn nats_command(port: u16, dir: &Path) -> Option<Command> {
    let bin = find(&["nats-server"])?;
    let mut cmd = Command::new(bin);
    cmd.args(["-js", "-a", "127.0.0.1", "-p", &port.to_string()])
        .arg("-sd")
        .arg(dir.join("jetstream"));
    Some(cmd)
}

/// Waits for a TCP port on loopback to accept connections.
pub fn wait_port(addr: SocketAddr, limit: Duration) {
    wait_ready("a private server", limit, || {
        TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
}

/// A free loopback port: bound, read and released. Another process could take
/// it in between, which on a test machine is rare enough to accept.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a loopback port")
}

/// A name no other test in this process (or an earlier run against the same
/// server) uses, for keys, tables, topics and prefixes: lowercase ASCII
/// letters, digits and underscores, so it is valid in every backend.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{}_{n}_{nanos}", std::process::id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        .to_lowercase()
}

/// Servers started by this process, killed and cleaned up at exit.
struct Started {
    children: Vec<(u32, PathBuf)>,
}

static STARTED: Mutex<Started> = Mutex::new(Started {
    children: Vec::new(),
});

/// Starts `cmd` from a thread that lives as long as the process, so the
/// parent-death signal (which follows the spawning *thread*) fires only when
/// the whole test process goes, even if it is killed. Normal exits clean up
/// through `atexit`, which also removes the data directories.
fn start(name: &'static str, mut cmd: Command, port: u16, user: Option<(u32, u32)>) -> SocketAddr {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Spawn>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Spawn>();
        std::thread::Builder::new()
            .name("server-spawner".into())
            .spawn(move || {
                // Keeps every child handle, so nothing reaps or drops them
                // early; the loop ends only with the process.
                let mut children = Vec::new();
                for mut job in rx {
                    let result = job.cmd.spawn().map(|child| {
                        let pid = child.id();
                        children.push(child);
                        pid
                    });
                    let _ = job.reply.send(result);
                }
                loop {
                    std::thread::park();
                }
            })
            .expect("starting the server spawner thread");
        // SAFETY: `kill_servers` is an `extern "C" fn()` with no arguments,
        // which is what atexit expects; registering it once is guarded by
        // the OnceLock this closure runs in.
        unsafe {
            libc::atexit(kill_servers);
        }
        Mutex::new(tx)
    });
    set_parent_death_signal(&mut cmd);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    let dir = std::env::temp_dir().join(format!("mecha-conformance-{name}-{}", std::process::id()));
    let log = std::fs::File::create(dir.join("server.log")).ok();
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    match log {
        Some(f) => cmd.stderr(f),
        None => cmd.stderr(Stdio::null()),
    };
    let (reply, rx) = mpsc::channel();
    spawner
        .lock()
        .expect("spawner lock")
        .send(Spawn { cmd, reply })
        .expect("the spawner thread is alive");
    let pid = rx
        .recv()
        .expect("the spawner thread answers")
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    STARTED
        .lock()
        .expect("server list lock")
        .children
        .push((pid, dir));
    SocketAddr::from(([127, 0, 0, 1], port))
}

struct Spawn {
    cmd: Command,
    reply: mpsc::Sender<std::io::Result<u32>>,
}

extern "C" fn kill_servers() {
    let Ok(started) = STARTED.lock() else { return };
    for (pid, dir) in &started.children {
        if let Ok(pid) = i32::try_from(*pid) {
            // SAFETY: sending a signal to a child this process started; a
            // pid that already exited is at worst a harmless ESRCH.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn set_parent_death_signal(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches only
    // the child being set up.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A fresh data directory for `name`, removed when the process exits.
fn server_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mecha-conformance-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("creating a server directory");
    dir
}

/// When running as root, hands `dir` to the `postgres` user and returns its
/// ids; PostgreSQL will not run as root.
fn run_as_postgres(dir: &Path) -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let user = nix::unistd::User::from_name("postgres")
        .ok()
        .flatten()
        .or_else(|| {
            nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
                .ok()
                .flatten()
        })
        .expect("a postgres or nobody user to run PostgreSQL as");
    nix::unistd::chown(dir, Some(user.uid), Some(user.gid)).expect("chown the postgres directory");
    Some((user.uid.as_raw(), user.gid.as_raw()))
}

fn postgres_bindir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

fn find(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    dirs.extend(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from));
    names
        .iter()
        .find_map(|n| dirs.iter().map(|d| d.join(n)).find(|p| p.is_file()))
}

fn missing(what: &str) -> Option<&'static Server> {
    assert!(
        std::env::var("MECHA_REQUIRE_SERVERS").as_deref() != Ok("1"),
        "{what} is not installed, and MECHA_REQUIRE_SERVERS=1 requires it"
    );
    eprintln!("skipping: {what} is not installed (apt-get install redis-server postgresql etcd-server nats-server)");
    None
}

fn wait_ready(name: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ready() {
        if Instant::now() >= deadline {
            // The data directory (and the log in it) goes at exit, so the
            // log's tail is put into the failure message.
            let log = std::env::temp_dir()
                .join(format!("mecha-conformance-{name}-{}", std::process::id()))
                .join("server.log");
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(2000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!("{name} did not become ready within {limit:?}; its log ends:\n{tail}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects, sends `request`, and returns what the server says first.
fn tcp_exchange(addr: SocketAddr, request: &[u8]) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    if !request.is_empty() {
        s.write_all(request).ok()?;
    }
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// A private server that a test can start, stop and start again on the same
/// port and data, to check how a driver behaves while its server is down and
/// after it returns. It is created stopped: outage tests begin with the
/// server down, and a server killed while it first initialises its data (as
/// etcd can be, right after its port opens) may not come back.
pub struct Restartable {
    pub name: &'static str,
    pub port: u16,
    command: Box<dyn Fn() -> Command>,
    /// How the server is asked to stop: SIGINT is PostgreSQL's fast
    /// shutdown, which (unlike SIGTERM) does not wait for clients to leave.
    stop_signal: i32,
    server: Option<PrivateServer>,
    /// Dropped last, after the server is gone.
    _dir: tempfile::TempDir,
}

impl Restartable {
    /// A private Redis, not started; `None` when Redis is not installed.
    pub fn redis() -> Option<Self> {
        if find(&["redis-server"]).is_none() {
            missing("redis-server");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let path = dir.path().to_path_buf();
        // Unlike the shared server this one keeps its data (an fsync'd
        // append-only file), so a sequence survives the server's restart as
        // it would in production.
        // (Later arguments override earlier ones.)
        let command = Box::new(move || {
            let mut cmd = redis_command(port, &path).expect("redis-server exists");
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            cmd
        });
        Some(Self::stopped("redis", port, command, libc::SIGTERM, dir))
    }

    /// A private PostgreSQL on a fresh data directory, not started; `None` when
    /// PostgreSQL is not installed.
    pub fn postgres() -> Option<Self> {
        let Some(bindir) = postgres_bindir() else {
            missing("postgres (the postgresql package)");
            return None;
        };
        let dir = tempfile::tempdir().expect("a temp dir");
        let user = run_as_postgres(dir.path());
        let data = dir.path().join("data");
        let mut init = Command::new(bindir.join("initdb"));
        init.arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if let Some((uid, gid)) = user {
            init.uid(uid).gid(gid);
        }
        assert!(init.status().expect("running initdb").success(), "initdb");
        let port = free_port();
        let sockets = dir.path().to_path_buf();
        let command = Box::new(move || {
            let mut cmd = Command::new(bindir.join("postgres"));
            cmd.arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
                .arg("-c")
                .arg(format!("unix_socket_directories={}", sockets.display()))
                .args(["-c", "fsync=off"]);
            if let Some((uid, gid)) = user {
                cmd.uid(uid).gid(gid);
            }
            cmd
        });
        Some(Self::stopped("postgres", port, command, libc::SIGINT, dir))
    }

    /// A private single-member etcd, not started; `None` when etcd is not
    /// installed. Its data stays on disk across restarts.
    pub fn etcd() -> Option<Self> {
        if find(&["etcd"]).is_none() {
            missing("etcd (the etcd-server package)");
            return None;
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        let (port, peer) = (free_port(), free_port());
        let path = dir.path().to_path_buf();
        let command = Box::new(move || etcd_command(port, peer, &path).expect("etcd exists"));
        Some(Self::stopped("etcd", port, command, libc::SIGTERM, dir))
    }

    fn stopped(
        name: &'static str,
        port: u16,
        command: Box<dyn Fn() -> Command>,
        stop_signal: i32,
        dir: tempfile::TempDir,
    ) -> Self {
        Self {
            name,
            port,
            command,
            stop_signal,
            server: None,
            _dir: dir,
        }
    }

    /// Starts the server and waits until it accepts connections.
    pub fn start(&mut self) {
        assert!(self.server.is_none(), "{} is already running", self.name);
        let server = private(self.name, (self.command)(), self.port);
        wait_port(server.addr, Duration::from_secs(30));
        self.server = Some(server);
    }

    /// Stops the server and waits until it has exited.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            if let Ok(pid) = i32::try_from(server.child.id()) {
                // SAFETY: signalling a child this process started and has
                // not reaped yet, so the pid still names it.
                unsafe {
                    libc::kill(pid, self.stop_signal);
                }
            }
            let _ = server.child.wait();
        }
    }
}

impl Drop for Restartable {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs one SQL statement with `psql` against the PostgreSQL on `port` and
/// returns its unaligned output, for tests that look at what a driver
/// stored.
pub fn psql(port: u16, sql: &str) -> String {
    let bindir = postgres_bindir().expect("PostgreSQL is installed");
    let out = Command::new(bindir.join("psql"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args(["-d", "postgres", "-XAtq", "-c", sql])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The command that starts a single-member etcd with its client port
/// `port` and peer port `peer`, keeping its data in `dir` (so a restart on
/// the same directory keeps the keys), or `None` when etcd is not installed.
pub fn etcd_command(port: u16, peer: u16, dir: &Path) -> Option<Command> {
    let bin = find(&["etcd"])?;
    let client_url = format!("http://127.0.0.1:{port}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new(bin);
    cmd.args(["--name", "mecha", "--log-level", "error"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url])
        .args(["--initial-advertise-peer-urls", &peer_url])
        .arg("--initial-cluster")
        .arg(format!("mecha={peer_url}"));
    Some(cmd)
}

/// Sends one JSON request to etcd's gateway (`POST path`) and returns the
/// answer's body, for tests that write to etcd as another application would.
pub fn etcd_post(addr: SocketAddr, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect to etcd");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: etcd\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).expect("write to etcd");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read from etcd");
    assert!(answer.starts_with("HTTP/1.1 200"), "etcd answered {answer}");
    answer
}

/// Standard base64, the encoding etcd's JSON gateway uses for bytes.
pub fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(A[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}
