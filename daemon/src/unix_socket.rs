//! Creating a listening Unix socket safely: its directory, a stale file left
//! by a dead daemon (but never a live one's), its mode and owner. Used for
//! mecha's own sockets and for a personality's.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Another daemon answers on the path.
    #[error("another daemon is already listening on {0}")]
    InUse(PathBuf),
    /// Creating the directory, binding or setting the mode failed.
    #[error("cannot set up socket {path}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Creates the parent directory, removes a stale socket file left by a dead
/// daemon, binds, and applies `mode` (0666 by default: identity comes from
/// peer credentials, not from file permissions).
pub fn bind(
    path: &Path,
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<UnixListener, ListenError> {
    let io = |source| ListenError::Io {
        path: path.to_path_buf(),
        source,
    };
    // The previous daemon's socket, when this one took over from it: the
    // same file, so applications connecting meanwhile never find it missing.
    if let Some(fd) = crate::inherited::take_unix(path) {
        let listener = std::os::unix::net::UnixListener::from(fd);
        listener.set_nonblocking(true).map_err(io)?;
        let listener = UnixListener::from_std(listener).map_err(io)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
        }
        crate::inherited::own(&listener);
        return Ok(listener);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io)?;
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).map_err(io)?;
    }
    crate::inherited::own(&listener);
    Ok(listener)
}
