//! The seccomp filter every module installs on itself before it starts any
//! thread: the system calls that let a process escape or change the machine
//! (debug other processes, mount, load kernel code, enter namespaces, reboot)
//! fail with EPERM.
//!
//! It is a deny-list, not an allow-list, on purpose. The set of system calls a
//! module makes depends on its drivers' client libraries (Redis, PostgreSQL,
//! etcd, NATS), their versions, glibc and the kernel; an allow-list that is
//! one call short kills a module in production on a machine the tests never
//! saw. Denying what no module ever needs removes the calls an attacker who
//! took over a module would reach for first, and costs nothing when the module
//! behaves. Calls are answered EPERM rather than killing the process, so a
//! library that probes a feature (as glibc does with some of these) degrades
//! instead of crashing.
//!
//! `MECHA_SECCOMP=off` in a module's environment skips the filter, for
//! debugging a module under `strace` or `gdb` (which need `ptrace`).

use std::collections::BTreeMap;

/// Why the filter could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// This CPU architecture has no seccomp support in seccompiler.
    #[error("seccomp: unsupported architecture {0}")]
    Arch(String),
    /// The filter could not be compiled.
    #[error("seccomp: cannot build the filter: {0}")]
    Build(String),
    /// The kernel refused the filter (no seccomp, or no no_new_privs).
    #[error("seccomp: cannot install the filter: {0}")]
    Install(String),
}

/// The system calls no module needs. Everything else is allowed.
fn denied() -> Vec<libc::c_long> {
    let mut calls = vec![
        // Reading or writing other processes' memory.
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_pidfd_getfd,
        // Changing the file system tree.
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_chroot,
        libc::SYS_fsopen,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_open_tree,
        libc::SYS_move_mount,
        libc::SYS_mount_setattr,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        // Namespaces: a way around the uid the daemon dropped the module to
        // (clone with namespace flags is denied in `clone_rules`).
        libc::SYS_unshare,
        libc::SYS_setns,
        // Device nodes (and FIFOs): no module creates either.
        libc::SYS_mknodat,
        // io_uring runs system calls that the filter never sees.
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        // Kernel code and kernel state.
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_personality,
        libc::SYS_fanotify_init,
        // The machine's identity and clock.
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm, libc::SYS_mknod]);
    calls
}

/// The namespace flags that `clone` may not carry: a new user namespace
/// would give the module every capability inside it, and the others are
/// ways out of the view of the machine the daemon gave it.
const NAMESPACE_FLAGS: [libc::c_int; 7] = [
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWCGROUP,
];

/// `clone` is allowed (threads need it) unless its flags (the first
/// argument) hold a namespace flag: one rule per flag, any of which matches.
fn clone_rules() -> Result<Vec<seccompiler::SeccompRule>, SandboxError> {
    NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            // The flags are positive bit masks; the widening cannot change them.
            let bit = *flag as u64;
            let cond = seccompiler::SeccompCondition::new(
                0,
                seccompiler::SeccompCmpArgLen::Qword,
                seccompiler::SeccompCmpOp::MaskedEq(bit),
                bit,
            )
            .map_err(|e| SandboxError::Build(e.to_string()))?;
            seccompiler::SeccompRule::new(vec![cond])
                .map_err(|e| SandboxError::Build(e.to_string()))
        })
        .collect()
}

/// Compiles a filter answering `errno` for `rules` and allowing the rest.
fn compile(
    rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>>,
    errno: i32,
    target: seccompiler::TargetArch,
) -> Result<seccompiler::BpfProgram, SandboxError> {
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        // Errno values are small positive constants; the cast cannot truncate.
        seccompiler::SeccompAction::Errno(errno as u32),
        target,
    )
    .map_err(|e| SandboxError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Build(e.to_string()))
}

/// Installs the filter on the calling thread; threads it starts afterwards
/// inherit it, so this runs before the async runtime exists. Sets
/// `no_new_privs` first (mechad already did; a module started by hand has
/// not), since an unprivileged process may only install a filter with it.
pub fn install() -> Result<(), SandboxError> {
    let arch = std::env::consts::ARCH;
    let target =
        seccompiler::TargetArch::try_from(arch).map_err(|_| SandboxError::Arch(arch.to_owned()))?;
    let mut rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = denied()
        .into_iter()
        // `c_long` is already i64 on 64-bit targets, but not on 32-bit ones.
        .map(|call| {
            #[allow(clippy::useless_conversion)]
            let call = i64::from(call);
            (call, Vec::new())
        })
        .collect();
    #[allow(clippy::useless_conversion)]
    rules.insert(i64::from(libc::SYS_clone), clone_rules()?);
    let program = compile(rules, libc::EPERM, target)?;
    // clone3 passes its flags in memory, where a filter cannot look, so it is
    // answered ENOSYS: the C library then falls back to clone, whose flags
    // the first filter checks. A second filter, since one filter has one
    // errno; ENOSYS from it wins over the first filter's "allow".
    #[allow(clippy::useless_conversion)]
    let clone3 = compile(
        BTreeMap::from([(i64::from(libc::SYS_clone3), Vec::new())]),
        libc::ENOSYS,
        target,
    )?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers and only
    // restricts this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Install(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    seccompiler::apply_filter(&program).map_err(|e| SandboxError::Install(e.to_string()))?;
    seccompiler::apply_filter(&clone3).map_err(|e| SandboxError::Install(e.to_string()))
}

/// Whether the environment asks to skip the filter (`MECHA_SECCOMP=off`).
pub fn disabled() -> bool {
    std::env::var("MECHA_SECCOMP").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The filter applies to the thread that installs it (and its future
    /// children), so the test installs it on a thread of its own and leaves
    /// the test harness unfiltered.
    #[test]
    fn denied_calls_fail_with_eperm_and_others_still_work() {
        let outcome = std::thread::spawn(|| {
            install().expect("the filter installs");
            // SAFETY: unshare(0) and getpid() take no pointers; unshare with
            // no flags changes nothing even when allowed.
            let unshare = unsafe { libc::unshare(0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            // SAFETY: as above.
            let pid = unsafe { libc::getpid() };
            let file = std::fs::read_to_string("/proc/self/status");
            (unshare, errno, pid, file.is_ok())
        })
        .join()
        .expect("the filtered thread ran");
        assert_eq!(outcome.0, -1, "unshare is denied");
        assert_eq!(outcome.1, Some(libc::EPERM));
        assert!(outcome.2 > 0, "ordinary calls still work");
        assert!(outcome.3, "files can still be read");
    }

    /// Device nodes, io_uring, clone with a namespace flag, and clone3 are
    /// refused; threads still start (through clone, after clone3's ENOSYS).
    #[test]
    fn devices_io_uring_and_namespaces_are_refused_threads_still_start() {
        let dir = tempfile::tempdir().expect("temp dir");
        let fifo = std::ffi::CString::new(dir.path().join("fifo").to_str().expect("utf-8"))
            .expect("no NUL");
        let errors = std::thread::spawn(move || {
            install().expect("the filter installs");
            let errno = || std::io::Error::last_os_error().raw_os_error();
            // SAFETY: mknodat reads a NUL-terminated path we own.
            let mknod =
                unsafe { libc::mknodat(libc::AT_FDCWD, fifo.as_ptr(), libc::S_IFIFO | 0o600, 0) };
            let mknod = (mknod, errno());
            // SAFETY: io_uring_setup with a null params pointer would fail
            // with EFAULT if allowed; denied, it touches no memory.
            let uring =
                unsafe { libc::syscall(libc::SYS_io_uring_setup, 1, std::ptr::null::<u8>()) };
            let uring = (uring, errno());
            // SAFETY: CLONE_NEWUSER with CLONE_FS is invalid (EINVAL) when
            // allowed, so no process is ever created here.
            let clone = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    libc::CLONE_NEWUSER | libc::CLONE_FS,
                    0,
                    0,
                    0,
                    0,
                )
            };
            let clone = (clone, errno());
            // SAFETY: clone3 with a null argument would fail with EFAULT if
            // allowed; the filter answers first.
            let clone3 = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<u8>(), 0) };
            let clone3 = (clone3, errno());
            let thread = std::thread::spawn(|| 7).join().ok();
            (mknod, uring, clone, clone3, thread)
        })
        .join()
        .expect("the filtered thread ran");
        assert_eq!(errors.0, (-1, Some(libc::EPERM)), "mknodat");
        assert_eq!(errors.1, (-1, Some(libc::EPERM)), "io_uring_setup");
        assert_eq!(errors.2, (-1, Some(libc::EPERM)), "clone(CLONE_NEWUSER)");
        assert_eq!(errors.3, (-1, Some(libc::ENOSYS)), "clone3");
        assert_eq!(errors.4, Some(7), "threads still start");
    }
}
