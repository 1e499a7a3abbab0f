//! Test harness: builds the workspace binaries, starts the real `mechad` on a
//! temporary socket, and offers raw-frame helpers for protocol tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ErrorBody, Hello, HelloReply};
use mecha_abi::{Header, Opcode, Status, HEADER_LEN};

/// The directory holding mechad, mechactl and every module binary, built once
/// per test process. Cargo only builds the binaries of the package under test,
/// so the module and CLI binaries are built here with the same profile.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let mechad = PathBuf::from(env!("CARGO_BIN_EXE_mechad"));
        let dir = mechad
            .parent()
            .expect("mechad has a parent directory")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--exclude", "mecha-bench"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        let status = cmd
            .status()
            .expect("running cargo build for the module binaries");
        assert!(status.success(), "building module binaries failed");
        dir
    })
}

/// Waits for `cond` to hold, polling, or panics with `what` after `limit`.
pub fn wait_until(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running mechad on a temporary socket and data directory.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    config: Option<PathBuf>,
    env: Vec<(String, String)>,
    /// A command mechad is started through (it ends by exec'ing its
    /// arguments), e.g. to place mechad in a cgroup first; empty: none.
    wrapper: Vec<String>,
    pub child: Option<Child>,
}

impl Daemon {
    /// Starts mechad on the embedded default configuration.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Starts mechad with `config` written to a YAML file, if given.
    pub fn start_with(config: Option<&str>) -> Self {
        Self::start_in(tempfile::tempdir().expect("temp dir"), config, Vec::new())
    }

    /// Starts mechad in `dir` (which the config may refer to) with extra
    /// environment variables.
    pub fn start_in(
        dir: tempfile::TempDir,
        config: Option<&str>,
        env: Vec<(String, String)>,
    ) -> Self {
        Self::start_wrapped(dir, config, env, Vec::new())
    }

    /// Like [`Self::start_in`], with mechad started through `wrapper`: a
    /// command that ends by exec'ing the arguments it is given (mechad's
    /// command line), so that mechad keeps the pid the test sees.
    pub fn start_wrapped(
        dir: tempfile::TempDir,
        config: Option<&str>,
        env: Vec<(String, String)>,
        wrapper: Vec<String>,
    ) -> Self {
        let socket = dir.path().join("mecha.sock");
        let data_dir = dir.path().join("data");
        let config = config.map(|text| {
            let path = dir.path().join("config.yaml");
            std::fs::write(&path, text).expect("writing config");
            path
        });
        let mut d = Self {
            dir,
            socket,
            data_dir,
            config,
            env,
            wrapper,
            child: None,
        };
        d.spawn();
        d
    }

    /// The mechad command line this daemon runs with.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(bin_dir().join("mechad"));
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--module-dir")
            .arg(bin_dir())
            .env("MECHA_LOG", "warn")
            .env_remove("MECHA_SOCKET")
            .env_remove("MECHA_CONFIG")
            .stdin(Stdio::null());
        if let Some(c) = &self.config {
            cmd.arg("--config").arg(c);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn spawn(&mut self) {
        let mut cmd = self.command();
        if let Some((program, args)) = self.wrapper.split_first() {
            let mut wrapped = Command::new(program);
            wrapped
                .args(args)
                .arg(cmd.get_program())
                .args(cmd.get_args())
                .stdin(Stdio::null());
            for (key, value) in cmd.get_envs() {
                match value {
                    Some(value) => wrapped.env(key, value),
                    None => wrapped.env_remove(key),
                };
            }
            cmd = wrapped;
        }
        let mut child = cmd.spawn().expect("spawning mechad");
        let socket = self.socket.clone();
        wait_until(Duration::from_secs(20), "mechad to listen", || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mechad exited during start-up: {status}");
            }
            UnixStream::connect(&socket).is_ok()
        });
        self.child = Some(child);
    }

    /// mechad's pid.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon is running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("waiting for mechad") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "mechad did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the daemon with SIGKILL (its modules die with it, by their
    /// parent-death signal) and starts it again on the same data.
    pub fn kill_and_restart(&mut self) {
        let mut child = self.child.take().expect("daemon is running");
        let _ = child.kill();
        let _ = child.wait();
        self.spawn();
    }

    /// Stops the daemon cleanly and starts it again on the same data.
    pub fn restart(&mut self) {
        let status = self.stop();
        assert!(status.success(), "mechad exited with {status}");
        self.spawn();
    }

    /// A blocking client connected to this daemon.
    pub fn client(&self) -> mecha_client::blocking::Client {
        mecha_client::blocking::Client::connect(&self.socket).expect("client connects")
    }

    /// Runs mechactl against this daemon.
    pub fn mechactl(&self, args: &[&str]) -> std::process::Output {
        self.mechactl_cmd(args).output().expect("running mechactl")
    }

    /// A mechactl command against this daemon, to adjust before running.
    pub fn mechactl_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin_dir().join("mechactl"));
        cmd.arg("--socket").arg(&self.socket).args(args);
        cmd
    }

    /// The pid of the running module `name`, from STATUS.
    pub fn module_pid(&self, name: &str) -> u32 {
        let status = self.client().status().expect("status");
        status
            .modules
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.pid)
            .unwrap_or(0)
    }

    /// Hot-restarts module `name` with `mechactl module restart` and waits
    /// until a new instance runs; panics if mechactl fails or no new
    /// instance is up within 10 s.
    pub fn restart_module(&self, name: &str) {
        let before = self.module_pid(name);
        let out = self.mechactl(&["module", "restart", name]);
        assert!(
            out.status.success(),
            "restart {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        wait_until(
            Duration::from_secs(10),
            &format!("the {name} module to restart"),
            || self.module_pid(name) != before,
        );
    }
}

/// The header of mecha's `Configuration` document; the caller follows it
/// with the lines of its `spec`, each indented by two spaces.
pub const CONFIGURATION: &str =
    "apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: mecha\nspec:\n";

/// The invoke module's component (`invoke.mesh`) on node `node`; `metadata`
/// holds its further metadata items, YAML list items indented by two spaces.
pub fn invoke_component(node: &str, metadata: &str) -> String {
    format!(
        "apiVersion: mecha.io/v1alpha1\nkind: Component\nmetadata:\n  name: invoke\n\
         spec:\n  type: invoke.mesh\n  metadata:\n  - name: nodeName\n    value: {node}\n\
         {metadata}"
    )
}

/// The invoke component's `accessControl` item (for [`invoke_component`])
/// in the shape of `deploy/config/mecha.yaml`: every call is allowed except
/// to app `billing`, which only `callers` may call (YAML list items indented
/// by eight spaces, e.g. `        - appId: checkout\n          action: allow\n`).
pub fn billing_access_control(callers: &str) -> String {
    format!(
        "  - name: accessControl\n    value:\n      defaultAction: allow\n      policies:\n      \
         - appId: billing\n        defaultAction: deny\n        callers:\n{callers}"
    )
}

/// A callee's answer to an invocation: `data`, with neither content type
/// nor metadata.
pub fn invoke_reply(data: Vec<u8>) -> mecha_abi::msg::InvokeReply {
    mecha_abi::msg::InvokeReply {
        data,
        content_type: String::new(),
        metadata: vec![],
    }
}

/// The real uid of this test process, for the tenant rules of a
/// configuration.
pub fn my_uid() -> u32 {
    // SAFETY: getuid(2) has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

/// A Dapr `Component` document, the form a user would write: component
/// `name` of type `kind` with `metadata`, each value quoted.
pub fn component(name: &str, kind: &str, metadata: &[(&str, String)]) -> String {
    let mut doc = format!(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: {name}\n\
         spec:\n  type: {kind}\n  version: v1\n  metadata:"
    );
    if metadata.is_empty() {
        doc.push_str(" []\n");
    } else {
        doc.push('\n');
    }
    for (k, v) in metadata {
        doc.push_str(&format!("  - name: {k}\n    value: \"{v}\"\n"));
    }
    doc
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asserts that `refused` is RESOURCE_EXHAUSTED with a message naming
/// `field`, as a per-tenant quota answers.
pub fn assert_exhausted(refused: &mecha_client::Error, field: &str) {
    assert_eq!(
        refused.status(),
        Some(Status::ResourceExhausted),
        "{refused}"
    );
    assert!(refused.to_string().contains(field), "{refused}");
}

/// Sends `sig` to `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) takes plain integers and has no memory-safety preconditions.
    let rc = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// The parent pid of `pid`, from /proc.
pub fn parent_pid(pid: u32) -> u32 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("reading /proc stat");
    // The command name may contain spaces, so parse after its closing paren.
    let rest = &stat[stat.rfind(')').expect("stat has a comm field") + 2..];
    rest.split_whitespace()
        .nth(1)
        .expect("ppid field")
        .parse()
        .expect("numeric ppid")
}

/// Runs mechad with `config` until it exits, which it must, with an error:
/// returns what it wrote to stderr.
pub fn start_fails(config: &str) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("config.yaml");
    std::fs::write(&file, config).expect("writing the config");
    let out = Command::new(bin_dir().join("mechad"))
        .arg("--config")
        .arg(&file)
        .arg("--socket")
        .arg(dir.path().join("m.sock"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--module-dir")
        .arg(bin_dir())
        .output()
        .expect("running mechad");
    assert!(
        !out.status.success(),
        "mechad started with a bad configuration"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The live (not zombie) children of `pid`, from /proc.
pub fn child_pids(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                return false;
            };
            let Some(close) = stat.rfind(')') else {
                return false;
            };
            let mut fields = stat[close + 2..].split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|f| f.parse::<u32>().ok());
            ppid == Some(pid) && state != Some("Z")
        })
        .collect()
}

/// A raw connection that speaks frames by hand, as a foreign client would.
pub struct Raw {
    pub stream: UnixStream,
}

impl Raw {
    /// Connects without sending anything.
    pub fn connect(socket: &Path) -> Self {
        let stream = UnixStream::connect(socket).expect("raw connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Self { stream }
    }

    /// Wraps a socket already connected (e.g. by [`connect_as`]).
    pub fn from_stream(stream: UnixStream) -> Self {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        Self { stream }
    }

    /// Connects and completes HELLO.
    pub fn hello(socket: &Path) -> (Self, HelloReply) {
        let mut raw = Self::connect(socket);
        let (status, p) = raw.hello_status();
        assert_eq!(status, Status::Ok, "hello failed: {}", error_message(&p));
        (raw, mecha_abi::decode(&p).expect("hello reply decodes"))
    }

    /// Sends HELLO and returns the answer's status and payload (a refused
    /// connection answers with request id 0, so the id is not checked).
    /// A refused connection may be answered and shut down before HELLO is
    /// even written, so a failed write is not an error: the answer is
    /// already waiting to be read.
    pub fn hello_status(&mut self) -> (Status, Vec<u8>) {
        let body = mecha_abi::encode(&Hello {
            min_version: 1,
            max_version: 1,
            client: "raw-test".into(),
        })
        .expect("encode hello");
        let frame = mecha_abi::encode_frame(Header::request(Opcode::HELLO, 1), &body)
            .expect("encode frame");
        let _ = self.stream.write_all(&frame);
        let (h, p) = self.recv().expect("hello answer");
        (Status::from_code(h.status), p)
    }

    /// Writes one frame.
    pub fn send(&mut self, header: Header, payload: &[u8]) {
        let frame = mecha_abi::encode_frame(header, payload).expect("encode frame");
        self.stream.write_all(&frame).expect("write frame");
    }

    /// Writes raw bytes.
    pub fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write bytes");
    }

    /// Reads one frame; `None` on EOF.
    pub fn recv(&mut self) -> Option<(Header, Vec<u8>)> {
        let mut head = [0u8; HEADER_LEN];
        match self.stream.read_exact(&mut head) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return None,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
            Err(e) => panic!("reading a frame header: {e}"),
        }
        let header = Header::decode(&head, u32::MAX).expect("daemon sends valid headers");
        let mut payload = vec![0u8; header.payload_len as usize];
        self.stream
            .read_exact(&mut payload)
            .expect("reading a payload");
        Some((header, payload))
    }

    /// Sends a request and returns its status and payload, asserting the id.
    pub fn call(&mut self, header: Header, payload: &[u8]) -> (Status, Vec<u8>) {
        self.send(header, payload);
        let (h, p) = self.recv().expect("an answer");
        assert_eq!(h.request_id, header.request_id, "answer to another request");
        assert!(h.flags.is_response());
        (Status::from_code(h.status), p)
    }
}

/// The message of an error payload, or a note that it is not one.
pub fn error_message(payload: &[u8]) -> String {
    mecha_abi::decode::<ErrorBody>(payload)
        .map(|b| b.message)
        .unwrap_or_else(|e| format!("(not an ErrorBody: {e})"))
}

/// The uid (and gid) of `nobody`, used to act as a second local user.
pub const NOBODY: u32 = 65534;

/// Fails (never skips) when not root: switching to uid 65534 needs it.
pub fn require_root() {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: it runs mechactl as uid {NOBODY} (nobody) to check tenant \
         isolation; run `cargo test -p mechad --test tenants` as root (CI does)"
    );
}

/// True when "other" may search every directory above `path` and read and
/// execute `path` itself.
pub fn usable_by_others(path: &Path) -> bool {
    let mode = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.permissions().mode())
            .unwrap_or(0)
    };
    path.ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .all(|dir| mode(dir) & 0o001 != 0)
        && mode(path) & 0o005 == 0o005
}

/// Makes the daemon's temporary directory (which holds the socket) searchable
/// by nobody; tempdirs are created 0700.
pub fn open_to_nobody(d: &Daemon) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod the daemon's temp dir");
    assert!(
        usable_by_others(d.dir.path()),
        "{} must be reachable by nobody",
        d.dir.path().display()
    );
}

/// A mechactl binary that nobody can execute: the built one if its path is
/// traversable, else a 0755 copy inside the daemon's (opened) temp dir.
pub fn nobody_mechactl_binary(d: &Daemon) -> Option<PathBuf> {
    let built = bin_dir().join("mechactl");
    if usable_by_others(&built) {
        return None;
    }
    let dir = d.dir.path().join("bin");
    std::fs::create_dir_all(&dir).expect("creating the bin copy dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let copy = dir.join("mechactl");
    if !copy.exists() {
        std::fs::copy(&built, &copy).expect("copying mechactl");
        std::fs::set_permissions(&copy, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    assert!(
        usable_by_others(&copy),
        "{} must be executable by nobody",
        copy.display()
    );
    Some(copy)
}

/// mechactl `args` against `d`, run as uid/gid 65534.
pub fn mechactl_as_nobody(d: &Daemon, args: &[&str]) -> Output {
    let mut cmd = match nobody_mechactl_binary(d) {
        None => d.mechactl_cmd(args),
        Some(copy) => {
            let mut cmd = Command::new(copy);
            cmd.arg("--socket").arg(&d.socket).args(args);
            cmd
        }
    };
    cmd.uid(NOBODY).gid(NOBODY).env_remove("MECHA_SOCKET");
    cmd.output().expect("running mechactl as nobody")
}

/// Connects to `socket` as uid `uid` and gid `gid`, as another user's process
/// would (see [`as_user`]), so the kernel records the other user in the
/// socket's SO_PEERCRED. Needs root (see [`require_root`]).
pub fn connect_as(socket: &Path, uid: u32, gid: u32) -> std::io::Result<UnixStream> {
    let socket = socket.to_path_buf();
    as_user(uid, gid, move || UnixStream::connect(&socket))
}

/// Runs `work` on a thread of its own whose credentials are switched to
/// `uid`/`gid` (raw `setresgid`/`setresuid`, which change only the calling
/// thread, unlike glibc's wrappers); the thread ends with `work`, so whatever
/// it creates (a socket) belongs to the other user. Needs root.
pub fn as_user<T: Send + 'static>(
    uid: u32,
    gid: u32,
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    std::thread::spawn(move || {
        // SAFETY: setresgid/setresuid take plain integers; called through
        // syscall(2) they change the credentials of this thread only, which
        // ends right after `work`.
        let rc = unsafe {
            if libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) != 0
                || libc::syscall(libc::SYS_setresgid, gid, gid, gid) != 0
            {
                -1
            } else {
                libc::syscall(libc::SYS_setresuid, uid, uid, uid)
            }
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        work()
    })
    .join()
    .map_err(|_| std::io::Error::other("the switched thread panicked"))?
}

impl Daemon {
    /// A blocking client connected as uid/gid `id` (see [`connect_as`]).
    pub fn client_as(&self, id: u32) -> mecha_client::blocking::Client {
        let stream = connect_as(&self.socket, id, id).expect("connecting as another uid");
        mecha_client::blocking::Client::from_stream(stream, &self.socket)
            .expect("client negotiates as another uid")
    }
}

/// Stops a daemon that took over (by a hand-over) when the test ends: the
/// test did not start it, so `Daemon`'s drop would not.
pub struct Reaper(pub u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        signal(self.0, libc::SIGTERM);
        let until = Instant::now() + Duration::from_secs(20);
        while alive(self.0) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(self.0) {
            signal(self.0, libc::SIGKILL);
        }
    }
}

pub fn alive(pid: u32) -> bool {
    // A zombie (exited, not yet reaped by its parent) counts as gone.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}
