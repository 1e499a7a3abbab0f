//! Starting a module process: a socketpair link on fd 3, a parent-death signal,
//! a clean environment, and no other descriptor than its standard streams
//! (stdin from /dev/null; stdout and stderr shared with mechad for logs).

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::Path;

use tokio::process::{Child, Command};

/// The descriptor number on which a module finds its link.
pub const LINK_FD: i32 = 3;

/// The most descriptors a module gets besides its link (a personality's
/// broker and its three listening sockets).
pub const MAX_PASSED: usize = 7;

/// Descriptors are moved above this number in the child before they are put
/// in place, so that no source is overwritten by another's target.
const SCRATCH_FD: libc::c_int = 64;

/// A descriptor a module gets besides its link, at a fixed number, with the
/// environment variables that name it.
pub struct Passed<'a> {
    /// The daemon's descriptor.
    pub fd: BorrowedFd<'a>,
    /// Its number in the module.
    pub target: i32,
}

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
    passed: &[Passed<'_>],
    env: &[(String, String)],
) -> std::io::Result<(Child, StdUnixStream)> {
    if passed.len() > MAX_PASSED {
        return Err(std::io::Error::other("too many descriptors for a module"));
    }
    let memory_limit = confine
        .memory_limit_mb
        .map(|mb| mb.saturating_mul(1024 * 1024));
    let open_files = confine.open_files;
    let user = confine.user;
    // std creates both ends with SOCK_CLOEXEC, so neither leaks into other
    // children; the child's end is dup2'ed to fd 3 below, which clears the flag
    // on the copy only.
    let (ours, theirs) = StdUnixStream::pair()?;
    // (source, target) pairs, the link first, in a fixed array: the child
    // may not allocate between fork and exec.
    let mut moves = [(-1, -1); MAX_PASSED + 1];
    moves[0] = (theirs.as_raw_fd(), LINK_FD);
    for (slot, p) in moves[1..].iter_mut().zip(passed) {
        *slot = (p.fd.as_raw_fd(), p.target);
    }
    let count = passed.len() + 1;
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
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
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
            // Every source first moves above the targets (close-on-exec, so
            // the scratch copies vanish at exec), then each lands on its
            // number: a source whose number is another's target is thus
            // never overwritten before it is moved. dup2 clears the
            // close-on-exec flag of the copy it makes.
            let mut scratch = [-1; MAX_PASSED + 1];
            for i in 0..count {
                scratch[i] = libc::fcntl(moves[i].0, libc::F_DUPFD_CLOEXEC, SCRATCH_FD);
                if scratch[i] < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            for i in 0..count {
                if libc::dup2(scratch[i], moves[i].1) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
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
