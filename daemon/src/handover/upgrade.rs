//! `mechactl daemon upgrade` (DAEMON_UPGRADE) and SIGUSR2: start a new
//! mechad that takes over from this one, and tell the requester how it went.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::oneshot;

/// How long the new daemon may take to be ready to take over.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// After the new process exited, how long to wait for the reason it sent.
const REASON_GRACE: Duration = Duration::from_millis(500);

/// Starts `binary` (this daemon's own by default) with this daemon's
/// arguments and `--takeover required`, and waits until it is ready to take
/// over (its pid) or has failed (why). The old daemon serves throughout.
pub async fn start(daemon: &crate::daemon::Daemon, binary: Option<PathBuf>) -> Result<u32, String> {
    let binary = binary.unwrap_or_else(|| daemon.exe.clone());
    crate::daemon::trusted_binary(&binary)?;
    let (tx, rx) = oneshot::channel();
    {
        let mut waiter = daemon.upgrade.waiter.lock();
        if waiter.as_ref().is_some_and(|w| !w.is_closed()) {
            return Err("a daemon upgrade is already under way".into());
        }
        *waiter = Some(tx);
    }
    let mut cmd = tokio::process::Command::new(&binary);
    cmd.args(own_args())
        .arg("--takeover=required")
        .stdin(Stdio::null())
        // Its own process group: a signal meant for the old daemon's group
        // (a terminal's ^C) does not reach the new one.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
    tracing::info!(binary = %binary.display(), pid = child.id().unwrap_or(0), "upgrading: a new mechad starts and takes over");
    let mut rx = rx;
    let outcome = tokio::select! {
        biased;
        outcome = &mut rx => outcome.unwrap_or_else(|_| Err("the hand-over ended without an outcome".into())),
        status = child.wait() => {
            match tokio::time::timeout(REASON_GRACE, &mut rx).await {
                Ok(Ok(outcome)) => outcome,
                _ => Err(format!(
                    "the new mechad ({}) exited before taking over ({})",
                    binary.display(),
                    status.map_or_else(|e| e.to_string(), |s| s.to_string())
                )),
            }
        }
        () = tokio::time::sleep(START_TIMEOUT) => Err(format!("the new mechad was not ready within {START_TIMEOUT:?}")),
    };
    daemon.upgrade.waiter.lock().take();
    if outcome.is_err() {
        let _ = child.start_kill();
    }
    outcome
}

/// This daemon's command-line arguments, without any `--takeover`.
fn own_args() -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in std::env::args_os().skip(1) {
        if skip_value {
            skip_value = false;
            continue;
        }
        let text = arg.to_string_lossy();
        if text == "--takeover" {
            skip_value = true;
            continue;
        }
        if text.starts_with("--takeover=") {
            continue;
        }
        out.push(arg);
    }
    out
}
