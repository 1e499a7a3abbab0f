//! Starting a module process: a socketpair link on fd 3, a parent-death signal,
//! a clean environment, and no other descriptor than its standard streams
//! (stdin from /dev/null; stdout and stderr shared with mechad for logs).

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;

use tokio::process::{Child, Command};

/// The descriptor number on which a module finds its link.
pub const LINK_FD: i32 = 3;

/// The highest capability number to drop from the bounding set; numbers the
/// running kernel does not know are refused, harmlessly.
const LAST_CAPABILITY: libc::c_int = 63;

/// The daemon's variables every module inherits: its log settings, the
/// sandbox switches (for debugging), and the node name the invoke module
/// announces to its peers.
const PASSED: [&str; 7] = [
    "MECHA_LOG",
    "MECHA_LOG_FORMAT",
    "MECHA_LANDLOCK",
    "MECHA_SECCOMP",
    "MECHA_NODE_NAME",
    "HOSTNAME",
    "RUST_BACKTRACE",
];

/// What a module process may do: least privilege, applied in the child
/// before exec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Confinement {
    /// Address-space cap (RLIMIT_AS) in MiB: a module that exceeds it fails to
    /// allocate, dies, and is restarted instead of starving the node.
    pub memory_limit_mb: Option<u64>,
    /// Open-file cap (RLIMIT_NOFILE).
    pub open_files: Option<u64>,
    /// Run as this uid and gid (supplementary groups dropped); needs root.
    pub user: Option<(u32, u32)>,
}

/// Spawns `binary` with one end of a fresh socketpair as fd 3 and returns the
/// child and the daemon's end of the link. The child always gets
/// `no_new_privs`, so neither it nor anything it executes can gain privileges
/// (setuid binaries, file capabilities); `confine` adds limits and a uid.
///
/// Must be called from a runtime worker thread, never from a blocking-pool
/// thread: Linux delivers the parent-death signal when the *thread* that forked
/// the child exits, and pool threads exit when idle, which would kill modules.
pub fn spawn_module(
    binary: &Path,
    module: &str,
    confine: Confinement,
    env_prefixes: &[String],
    handoff: bool,
) -> std::io::Result<(Child, StdUnixStream)> {
    let memory_limit = confine
        .memory_limit_mb
        .map(|mb| mb.saturating_mul(1024 * 1024));
    let open_files = confine.open_files;
    let user = confine.user;
    // std creates both ends with SOCK_CLOEXEC, so neither leaks into other
    // children; the child's end is dup2'ed to fd 3 below, which clears the flag
    // on the copy only.
    let (ours, theirs) = StdUnixStream::pair()?;
    let child_fd = theirs.as_raw_fd();
    let parent_pid = std::process::id();
    let mut cmd = Command::new(binary);
    // A clean environment: the daemon's holds the operator's settings and
    // credentials, which a module (and a tenant able to subvert it) must not
    // see. It gets the daemon's own MECHA_* settings and the variables its
    // components name.
    cmd.env_clear();
    cmd.envs(std::env::vars_os().filter(|(name, _)| {
        let name = name.as_encoded_bytes();
        PASSED.iter().any(|p| name == p.as_bytes())
            || env_prefixes.iter().any(|p| name.starts_with(p.as_bytes()))
    }));
    cmd.env("MECHA_LINK_FD", LINK_FD.to_string())
        .env("MECHA_MODULE", module)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if handoff {
        // Tells the module an older instance may still hold its resources.
        cmd.env("MECHA_HANDOFF", "1");
    }
    // SAFETY: the closure runs in the forked child before exec, where only
    // async-signal-safe functions may be called. It calls only dup2, fcntl,
    // prctl, setrlimit, setgroups, setgid, setuid and getppid (all
    // async-signal-safe system calls),
    // allocates nothing and touches no locks; it reads integers captured by value.
    unsafe {
        cmd.pre_exec(move || {
            if child_fd == LINK_FD {
                let flags = libc::fcntl(LINK_FD, libc::F_GETFD);
                if flags < 0 || libc::fcntl(LINK_FD, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            } else if libc::dup2(child_fd, LINK_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for (resource, value) in [
                (libc::RLIMIT_AS, memory_limit),
                (libc::RLIMIT_NOFILE, open_files),
            ] {
                if let Some(v) = value {
                    let limit = libc::rlimit {
                        rlim_cur: v,
                        rlim_max: v,
                    };
                    if libc::setrlimit(resource, &limit) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
            }
            // No capabilities, whatever the uid: with the bounding set empty
            // and no ambient ones, exec gives the module none, even as root
            // (a root module still owns root's files, but cannot override
            // permissions, mount, trace, load modules or bind low ports).
            // Dropping needs CAP_SETPCAP, which only a root daemon has; a
            // daemon without it has no capabilities to pass on, so failures
            // are ignored. It must happen before setuid, which would lose
            // the right to do it.
            let _ = libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL,
                0,
                0,
                0,
            );
            for cap in 0..=LAST_CAPABILITY {
                let _ = libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
            }
            if let Some((uid, gid)) = user {
                // Groups first: after setuid the process may no longer change them.
                if libc::setgroups(0, std::ptr::null()) < 0
                    || libc::setgid(gid) < 0
                    || libc::setuid(uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Modules must never outlive the daemon, even when it is SIGKILLed.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon may have died between fork and prctl; then the signal
            // will never come, so leave now instead of running as an orphan.
            if libc::getppid() as u32 != parent_pid {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(theirs);
    Ok((child, ours))
}
