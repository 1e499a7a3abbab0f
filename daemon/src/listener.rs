//! The application socket: safe creation (directory, stale files, mode) and
//! the accept loop that hands each connection to `conn::serve`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::conn;
use crate::daemon::Daemon;
use crate::peer;

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
    Ok(listener)
}

/// Accepts connections until shutdown, then waits for open connections to
/// finish their in-flight requests.
pub async fn accept_loop(
    listener: UnixListener,
    path: Arc<Path>,
    daemon: Arc<Daemon>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match peer::identify(&stream, &path) {
                    Ok(p) => {
                        conns.spawn(conn::serve(stream, p, Arc::clone(&daemon), shutdown.clone()));
                    }
                    Err(e) => tracing::warn!("rejecting a connection without peer credentials: {e}"),
                },
                // Running out of descriptors must not end the loop; back off briefly.
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            // Reap finished connection tasks so the set stays small.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}
