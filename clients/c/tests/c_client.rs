//! The C library from C, against the real daemon: builds `libmecha.a` and
//! `libmecha.so`, installs each into a throwaway prefix with a `mecha.pc`
//! generated from `mecha.pc.in`, compiles `tests/c_api.c` (static) and
//! `examples/hello.c` (shared) with the system `cc` and the flags pkg-config
//! gives, starts `mechad` on a temporary socket and runs both programs.
//! Also checks that the shared library exports exactly the header's functions.

mod common;

use std::collections::BTreeSet;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::{Duration, Instant};

/// The module binaries the test daemon's configuration starts.
const MODULES: [&str; 8] = [
    "mecha-mod-bindings",
    "mecha-mod-state",
    "mecha-mod-pubsub",
    "mecha-mod-invoke",
    "mecha-mod-lock",
    "mecha-mod-sequencer",
    "mecha-mod-config",
    "mecha-mod-secrets",
];
/// Environment prefix of the test daemon's default secret store.
const SECRET_PREFIX: &str = "MECHA_C_TEST_SECRET_";
/// How long a compiled C program may run.
const RUN_LIMIT: Duration = Duration::from_secs(120);

/// `target/<profile>`: where this test binary's crate, the library and the
/// daemon's binaries are built (this binary lives in its `deps/`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    exe.parent()
        .and_then(Path::parent)
        .expect("the test binary is in target/<profile>/deps")
        .to_path_buf()
}

/// Runs cargo with `args` in the same target directory and profile.
fn cargo(args: &[&str]) -> Output {
    let dir = profile_dir();
    let target = dir.parent().expect("target/<profile> has a parent");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).arg("--target-dir").arg(target);
    if dir.ends_with("release") {
        cmd.arg("--release");
    }
    cmd.current_dir(common::crate_dir())
        .output()
        .expect("running cargo")
}

/// Builds the library's C artifacts once per test process. A crate's
/// integration tests only need its rlib, so cargo does not necessarily
/// produce (or refresh) the cdylib and staticlib for them; this build does.
fn library_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let out = cargo(&["build", "-p", "mecha-c", "--lib"]);
        assert!(
            out.status.success(),
            "cargo build -p mecha-c failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dir = profile_dir();
        for lib in ["libmecha.a", "libmecha.so"] {
            assert!(
                dir.join(lib).is_file(),
                "{lib} was not built in {}",
                dir.display()
            );
        }
        dir
    })
}

/// The directory holding mechad and the modules, built if any is missing.
/// The workspace build may fail for a moment while another crate is being
/// edited (the machine is shared), so it is retried a few times.
fn binary_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = profile_dir();
        let present = || {
            std::iter::once("mechad")
                .chain(MODULES)
                .all(|b| dir.join(b).is_file())
        };
        let mut last_error = String::new();
        for attempt in 1..=3 {
            if present() {
                return dir;
            }
            if attempt > 1 {
                std::thread::sleep(Duration::from_secs(20));
            }
            let out = cargo(&["build", "--workspace", "--bins", "--exclude", "mecha-bench"]);
            last_error = String::from_utf8_lossy(&out.stderr).into_owned();
        }
        assert!(
            present(),
            "building mechad and its modules failed:\n{last_error}"
        );
        dir
    })
}

/// The configuration: the usual stores, a default secret store reading the
/// environment, a file store holding a multi-valued secret, a localstorage
/// output binding over the directory `files_root` and a cron input binding.
fn config_yaml(secrets_file: &Path, files_root: &Path) -> String {
    let component = |name: &str, kind: &str, metadata: &str| {
        format!(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata: {{name: {name}}}\n\
             spec: {{type: {kind}, version: v1, metadata: [{metadata}]}}\n---\n"
        )
    };
    [
        component("statestore", "state.redb", ""),
        component("lockstore", "lock.redb", ""),
        component("sequencer", "sequencer.redb", ""),
        component("pubsub", "pubsub.memory", ""),
        component("configstore", "configuration.memory", ""),
        component("invoke", "invoke.mesh", ""),
        component(
            "secretstore",
            "secretstores.local.env",
            &format!("{{name: prefix, value: {SECRET_PREFIX}}}, {{name: allowedTenants, value: \"*\"}}"),
        ),
        component(
            "localfiles",
            "bindings.localstorage",
            &format!(
                "{{name: rootPath, value: {:?}}}, {{name: allowedTenants, value: \"*\"}}",
                files_root.to_str().expect("temporary paths are UTF-8")
            ),
        ),
        component("ticks", "bindings.cron", "{name: schedule, value: \"@every 1s\"}"),
        component(
            "files",
            "secretstores.local.file",
            &format!(
                "{{name: secretsFile, value: {:?}}}, {{name: multiValued, value: \"true\"}}, {{name: allowedTenants, value: \"*\"}}",
                secrets_file.to_str().expect("temporary paths are UTF-8")
            ),
        ),
    ]
    .concat()
}

/// A running mechad in a temporary directory; stopped on drop.
struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Child,
}

impl Daemon {
    fn start() -> Self {
        let bins = binary_dir();
        let dir = tempfile::tempdir().expect("temp dir");
        let secrets = dir.path().join("secrets.json");
        std::fs::write(&secrets, r#"{"db": {"user": "admin", "password": "pw-1"}}"#)
            .expect("writing the secrets file");
        let config = dir.path().join("mecha.yaml");
        let files_root = dir.path().join("files");
        std::fs::create_dir(&files_root).expect("creating the localstorage root");
        std::fs::write(&config, config_yaml(&secrets, &files_root)).expect("writing the config");
        let socket = dir.path().join("mecha.sock");
        let mut child = Command::new(bins.join("mechad"))
            .arg("--socket")
            .arg(&socket)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .arg("--module-dir")
            .arg(bins)
            .arg("--config")
            .arg(&config)
            .env("MECHA_LOG", "warn")
            .env_remove("MECHA_SOCKET")
            .env_remove("MECHA_CONFIG")
            .env(format!("{SECRET_PREFIX}DB_PASSWORD"), "s3cr3t")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning mechad");
        let deadline = Instant::now() + Duration::from_secs(30);
        while UnixStream::connect(&socket).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("mechad exited during start-up: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "mechad did not listen within 30 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { dir, socket, child }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGTERM first, so mechad stops its modules; SIGKILL if it hangs.
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) takes plain integers; `pid` is our own child,
            // not yet reaped, so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Installs the header, one library file and a `mecha.pc` generated from
/// `mecha.pc.in` under `prefix`, as `make install` would.
fn install(prefix: &Path, library: &str) {
    let include = prefix.join("include");
    let pkgconfig = prefix.join("lib/pkgconfig");
    std::fs::create_dir_all(&include).expect("creating include/");
    std::fs::create_dir_all(&pkgconfig).expect("creating lib/pkgconfig/");
    std::fs::copy(
        common::crate_dir().join("include/mecha.h"),
        include.join("mecha.h"),
    )
    .expect("copying mecha.h");
    std::fs::copy(
        library_dir().join(library),
        prefix.join("lib").join(library),
    )
    .expect("copying the library");
    let template = std::fs::read_to_string(common::crate_dir().join("mecha.pc.in"))
        .expect("reading mecha.pc.in");
    let pc = template
        .replace(
            "@PREFIX@",
            prefix.to_str().expect("temporary paths are UTF-8"),
        )
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    assert!(!pc.contains('@'), "mecha.pc.in has an unknown placeholder");
    std::fs::write(pkgconfig.join("mecha.pc"), pc).expect("writing mecha.pc");
}

/// The compiler and linker flags for the library under `prefix`, from
/// pkg-config (as a user gets them). Without pkg-config on the machine the
/// same flags are read from the generated file directly.
fn pkg_config_flags(prefix: &Path, static_link: bool) -> Vec<String> {
    let pkgconfig = prefix.join("lib/pkgconfig");
    let mut cmd = Command::new("pkg-config");
    if static_link {
        cmd.arg("--static");
    }
    cmd.args(["--cflags", "--libs", "mecha"])
        .env("PKG_CONFIG_PATH", &pkgconfig);
    match cmd.output() {
        Ok(out) => {
            assert!(
                out.status.success(),
                "pkg-config rejects the generated mecha.pc:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        }
        Err(e) => {
            eprintln!("pkg-config is not available ({e}); reading mecha.pc directly");
            let pc = std::fs::read_to_string(pkgconfig.join("mecha.pc")).expect("mecha.pc");
            let field = |name: &str| {
                pc.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or("")
                    .replace("${includedir}", &format!("{}/include", prefix.display()))
                    .replace("${libdir}", &format!("{}/lib", prefix.display()))
            };
            let mut flags = format!("{} {}", field("Cflags:"), field("Libs:"));
            if static_link {
                flags = format!("{flags} {}", field("Libs.private:"));
            }
            flags.split_whitespace().map(str::to_owned).collect()
        }
    }
}

/// Compiles one C source into `out` with `flags` (after the source, as
/// static linking needs).
fn cc(source: &Path, out: &Path, flags: &[String]) {
    let compiler = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let result = Command::new(&compiler)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg(source)
        .args(flags)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        result.status.success(),
        "{compiler} {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&result.stderr)
    );
}

/// Runs `cmd` to completion, killing it after [`RUN_LIMIT`].
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the C program");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(RUN_LIMIT) {
        Ok(out) => out.expect("waiting for the C program"),
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                // SAFETY: kill(2) takes plain integers; the child has not
                // been reaped (its waiter has not returned), so the pid is
                // still ours.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            panic!("the C program did not finish within {RUN_LIMIT:?}");
        }
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn c_api_test_linked_statically_passes_against_the_real_daemon() {
    let work = tempfile::tempdir().expect("temp dir");
    let prefix = work.path().join("static-prefix");
    install(&prefix, "libmecha.a");
    let flags = pkg_config_flags(&prefix, true);
    let exe = work.path().join("c_api");
    cc(&common::crate_dir().join("tests/c_api.c"), &exe, &flags);

    let daemon = Daemon::start();
    // Configuration items are written by admins only; this process runs as
    // the daemon's uid, which makes it one (SPEC §6.10).
    mecha_client::blocking::Client::connect(&daemon.socket)
        .and_then(|c| c.set_config_value("", "greeting", "hello, C"))
        .expect("writing the configuration item the C test reads");

    let absent = daemon.dir.path().join("nobody-listens-here.sock");
    let mut cmd = Command::new(&exe);
    cmd.arg(&daemon.socket)
        .arg(&absent)
        .env_remove("MECHA_SOCKET");
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("# all passed") && !stdout.contains("not ok"),
        "the C test failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    // Enough checks ran that a truncated run is noticed.
    let checks = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(checks >= 50, "only {checks} checks ran:\n{stdout}");
    assert!(
        stdout.contains("ok") && stdout.contains("invoke echo-c: the callee echoes the data"),
        "the invoke checks did not run:\n{stdout}"
    );
    assert!(
        stdout.contains("ok") && stdout.contains("- a tick arrives"),
        "the bindings checks did not run:\n{stdout}"
    );
}

#[test]
fn hello_example_linked_dynamically_runs() {
    let work = tempfile::tempdir().expect("temp dir");
    let prefix = work.path().join("shared-prefix");
    install(&prefix, "libmecha.so");
    let mut flags = pkg_config_flags(&prefix, false);
    flags.push(format!("-Wl,-rpath,{}", prefix.join("lib").display()));
    let exe = work.path().join("hello");
    cc(&common::crate_dir().join("examples/hello.c"), &exe, &flags);

    let daemon = Daemon::start();
    let mut cmd = Command::new(&exe);
    cmd.arg(&daemon.socket);
    let out = run(cmd);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "hello failed ({}):\n{stdout}\n{}",
        out.status,
        text(&out.stderr)
    );
    assert!(
        stdout.contains("state: hello from C (12 bytes, etag ")
            && stdout.contains("unchanged: yes")
            && stdout.contains("lock: acquired, fencing token ")
            && stdout.contains("next id: 1"),
        "unexpected output:\n{stdout}"
    );

    // Without a daemon the example explains itself and fails.
    let absent = work.path().join("absent.sock");
    let mut cmd = Command::new(&exe);
    cmd.arg(&absent);
    let out = run(cmd);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ERR_CONNECT")
            && stderr.contains(&format!("is mechad running? socket: {}", absent.display())),
        "unexpected message: {stderr}"
    );
}

#[test]
fn shared_library_exports_exactly_the_header_functions() {
    let so = library_dir().join("libmecha.so");
    let out = match Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&so)
        .output()
    {
        Ok(out) if out.status.success() => out,
        other => {
            eprintln!("nm is not usable here ({other:?}); the symbol check is skipped");
            return;
        }
    };
    // Lines are "ADDRESS TYPE NAME".
    let exported: BTreeSet<String> = text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .map(str::to_owned)
        .collect();
    let declared: BTreeSet<String> = common::parse_header(&common::header_text())
        .functions
        .into_keys()
        .collect();
    assert_eq!(
        exported, declared,
        "libmecha.so must export exactly the functions of mecha.h, nothing else"
    );
}
