//! Opening files strictly beneath a directory: `openat2(2)` with
//! `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, so the kernel itself refuses a
//! name that climbs out (`..`, an absolute path) or passes through a
//! symbolic link anywhere on its way, including one planted inside the
//! directory after the check of the name.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};

/// Opens `name` beneath the directory `root` with `flags` (`O_CLOEXEC` is
/// added) and, when creating, `mode`.
///
/// Fails with `ELOOP` for a symbolic link on the way, `EXDEV` for a name
/// that would leave `root`, and `ENOSYS` on kernels before Linux 5.6, which
/// lack `openat2`; the caller words those.
pub fn open(root: &File, name: &str, flags: libc::c_int, mode: libc::mode_t) -> io::Result<File> {
    let path = CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: `open_how` is a plain C struct of integers, for which all
    // zeroes is a valid value (and the kernel requires unused fields zero).
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0);
    how.mode = u64::from(mode);
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS;
    // SAFETY: openat2 reads the NUL-terminated `path` and `how`, whose size
    // is passed with it; both outlive the call. `root` is an open directory
    // descriptor owned by the caller.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            path.as_ptr(),
            std::ptr::from_ref(&how),
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned this descriptor to us, and nothing
    // else owns it.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Removes the file `base` (a single name, no `/`) from the open directory
/// `dir`. `unlinkat` does not follow a symbolic link in its last component:
/// it removes the link itself.
pub fn unlink(dir: &File, base: &str) -> io::Result<()> {
    let path = CString::new(base).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: unlinkat reads the NUL-terminated `path`, which outlives the
    // call; `dir` is an open directory descriptor owned by the caller.
    let done = unsafe { libc::unlinkat(dir.as_raw_fd(), path.as_ptr(), 0) };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_or_pass_a_link_are_refused() {
        let outer = tempfile::tempdir().expect("a directory");
        let root_path = outer.path().join("root");
        std::fs::create_dir(&root_path).expect("mkdir");
        std::fs::write(outer.path().join("secret"), b"s").expect("write");
        std::fs::write(root_path.join("inside"), b"i").expect("write");
        std::os::unix::fs::symlink(outer.path().join("secret"), root_path.join("link"))
            .expect("symlink");
        let root = File::open(&root_path).expect("open root");
        let read = |name: &str| open(&root, name, libc::O_RDONLY, 0).map(|_| ());
        if matches!(read("inside"), Err(e) if e.raw_os_error() == Some(libc::ENOSYS)) {
            return;
        }
        read("inside").expect("a file inside opens");
        for name in ["../secret", "link", "/etc/passwd"] {
            let e = read(name).expect_err(name);
            assert!(
                matches!(e.raw_os_error(), Some(libc::EXDEV | libc::ELOOP)),
                "{name}: {e}"
            );
        }
    }
}
