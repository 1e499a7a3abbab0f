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
        // Namespaces: a way around the uid the daemon dropped the module to.
        libc::SYS_unshare,
        libc::SYS_setns,
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
    calls.extend([libc::SYS_iopl, libc::SYS_ioperm]);
    calls
}

/// Installs the filter on the calling thread; threads it starts afterwards
/// inherit it, so this runs before the async runtime exists. Sets
/// `no_new_privs` first (mechad already did; a module started by hand has
/// not), since an unprivileged process may only install a filter with it.
pub fn install() -> Result<(), SandboxError> {
    let arch = std::env::consts::ARCH;
    let target =
        seccompiler::TargetArch::try_from(arch).map_err(|_| SandboxError::Arch(arch.to_owned()))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = denied()
        .into_iter()
        // `c_long` is already i64 on 64-bit targets, but not on 32-bit ones.
        .map(|call| {
            #[allow(clippy::useless_conversion)]
            let call = i64::from(call);
            (call, Vec::new())
        })
        .collect();
    let filter = seccompiler::SeccompFilter::new(
        rules,
        seccompiler::SeccompAction::Allow,
        // EPERM is a small positive constant; the cast cannot truncate.
        seccompiler::SeccompAction::Errno(libc::EPERM as u32),
        target,
    )
    .map_err(|e| SandboxError::Build(e.to_string()))?;
    let program: seccompiler::BpfProgram = filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| SandboxError::Build(e.to_string()))?;
    // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1) takes no pointers and only
    // restricts this process.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SandboxError::Install(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    seccompiler::apply_filter(&program).map_err(|e| SandboxError::Install(e.to_string()))
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
}
