//! Module supervision: one slot per capability module, started in order,
//! restarted with backoff when it dies, marked failed past a restart
//! intensity, and drained in reverse order at shutdown.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ComponentSpec, LinkHello, LinkReady, ModuleStatus};
use mecha_abi::{Family, Header, Opcode, Status, MAX_FRAME_CAP, VERSION};
use mecha_wire::{write_loop, FrameReader, OutFrame};
use parking_lot::{Mutex, RwLock};
use tokio::io::AsyncWriteExt;
use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use crate::link::{Link, LINK_QUEUE};
use crate::spawn::spawn_module;

/// How long a module may take to answer LINK_HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a draining module may take to exit before it is killed.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// First restart delay; doubled per consecutive crash up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a module instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The binary could not be executed.
    #[error("cannot spawn {binary}: {source}")]
    Spawn {
        /// The module binary.
        binary: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The link failed during the handshake.
    #[error("handshake with module {module} failed: {reason}")]
    Handshake {
        /// The module name.
        module: String,
        /// What happened.
        reason: String,
    },
    /// The module refused its configuration.
    #[error("module {module} rejected its configuration: {message}")]
    Rejected {
        /// The module name.
        module: String,
        /// The module's explanation.
        message: String,
    },
}

/// Restart policy numbers from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct RestartPolicy {
    /// More than this many restarts within `window` marks the module failed.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub window: Duration,
}

struct SlotStatus {
    state: &'static str,
    pid: u32,
    restarts: u32,
}

/// A supervised capability module; stable across restarts of its process.
pub struct ModuleSlot {
    /// Module name, e.g. `state`.
    pub name: String,
    /// The capability family whose opcodes it serves.
    pub family: Family,
    binary: PathBuf,
    data_dir: PathBuf,
    components: Vec<ComponentSpec>,
    current: RwLock<Option<Arc<Link>>>,
    status: Mutex<SlotStatus>,
}

impl ModuleSlot {
    /// A slot for `name`, not yet started.
    pub fn new(
        name: String,
        family: Family,
        binary: PathBuf,
        data_dir: PathBuf,
        components: Vec<ComponentSpec>,
    ) -> Arc<Self> {
        Arc::new(Self {
            name,
            family,
            binary,
            data_dir,
            components,
            current: RwLock::new(None),
            status: Mutex::new(SlotStatus {
                state: "starting",
                pid: 0,
                restarts: 0,
            }),
        })
    }

    /// The running instance, if any.
    pub fn current(&self) -> Option<Arc<Link>> {
        self.current.read().clone()
    }

    /// `starting`, `running`, `restarting`, `failed` or `stopped`.
    pub fn state_name(&self) -> &'static str {
        self.status.lock().state
    }

    fn set_state(&self, state: &'static str, pid: u32) {
        let mut s = self.status.lock();
        s.state = state;
        s.pid = pid;
    }

    /// This module's line in a STATUS reply.
    pub fn status(&self) -> ModuleStatus {
        let s = self.status.lock();
        ModuleStatus {
            name: self.name.clone(),
            pid: s.pid,
            state: s.state.to_string(),
            restarts: s.restarts,
            components: self.components.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// Spawns the module process, performs the handshake, and installs the
    /// link for routing. Returns the child so the caller can watch it.
    pub async fn start(self: &Arc<Self>) -> Result<Child, StartError> {
        let (mut child, link_end) =
            spawn_module(&self.binary, &self.name).map_err(|source| StartError::Spawn {
                binary: self.binary.clone(),
                source,
            })?;
        let pid = child.id().unwrap_or(0);
        match self.handshake(link_end, pid).await {
            Ok(link) => {
                *self.current.write() = Some(link);
                self.set_state("running", pid);
                tracing::info!(module = %self.name, pid, "module running");
                Ok(child)
            }
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }

    async fn handshake(
        &self,
        link_end: std::os::unix::net::UnixStream,
        pid: u32,
    ) -> Result<Arc<Link>, StartError> {
        let fail = |reason: String| StartError::Handshake {
            module: self.name.clone(),
            reason,
        };
        link_end
            .set_nonblocking(true)
            .map_err(|e| fail(e.to_string()))?;
        let stream = tokio::net::UnixStream::from_std(link_end).map_err(|e| fail(e.to_string()))?;
        let (rd, mut wr) = stream.into_split();
        let hello = LinkHello {
            version: VERSION,
            module: self.name.clone(),
            data_dir: self.data_dir.to_string_lossy().into_owned(),
            components: self.components.clone(),
        };
        let body = mecha_abi::encode(&hello).map_err(|e| fail(e.to_string()))?;
        let frame = mecha_abi::encode_frame(Header::request(Opcode::LINK_HELLO, 0), &body)
            .map_err(|e| fail(e.to_string()))?;
        let mut reader = FrameReader::new(rd, MAX_FRAME_CAP);
        let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            wr.write_all(&frame).await?;
            reader.next().await.map_err(std::io::Error::other)
        })
        .await
        .map_err(|_| fail(format!("no answer within {HANDSHAKE_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
        let Some((header, payload)) = answer else {
            return Err(fail("the module exited before answering".into()));
        };
        if Status::from_code(header.status) != Status::Ok {
            let message = mecha_abi::decode::<mecha_abi::msg::ErrorBody>(&payload)
                .map(|b| b.message)
                .unwrap_or_else(|e| e.to_string());
            return Err(StartError::Rejected {
                module: self.name.clone(),
                message,
            });
        }
        let ready: LinkReady = mecha_abi::decode(&payload).map_err(|e| fail(e.to_string()))?;
        tracing::debug!(module = %ready.module, version = %ready.version, "handshake done");
        let (tx, rx) = mpsc::channel::<OutFrame>(LINK_QUEUE);
        tokio::spawn(write_loop(wr, rx));
        let link = Link::new(self.name.clone(), pid, tx);
        tokio::spawn(Arc::clone(&link).read_answers(reader));
        tokio::spawn(Arc::clone(&link).expire_deadlines());
        Ok(link)
    }

    /// Watches a started instance and restarts it when it dies, until shutdown
    /// or until the restart intensity is exceeded.
    pub async fn supervise(
        self: Arc<Self>,
        mut child: Child,
        policy: RestartPolicy,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut recent: VecDeque<Instant> = VecDeque::new();
        let mut backoff = MIN_BACKOFF;
        loop {
            let started = Instant::now();
            let link = self.current();
            let exit = tokio::select! {
                status = child.wait() => Some(status),
                _ = async { match &link { Some(l) => l.closed().await, None => std::future::pending().await } } => None,
                _ = shutdown.changed() => {
                    self.stop(child).await;
                    return;
                }
            };
            // Stop routing to the dead instance and answer its in-flight requests.
            *self.current.write() = None;
            let reason = match exit {
                Some(Ok(status)) => format!("the module process exited ({status})"),
                Some(Err(e)) => format!("waiting for the module failed: {e}"),
                None => {
                    // The link closed first; make sure the process is gone too.
                    let _ = child.kill().await;
                    "the module closed its link".to_string()
                }
            };
            if let Some(l) = link {
                l.close(&reason);
            }
            tracing::warn!(module = %self.name, "{reason}");
            // Restart intensity, as in OTP: too many restarts in the window means
            // the fault is not transient, so stop flapping and report it.
            let now = Instant::now();
            recent.push_back(now);
            while recent
                .front()
                .is_some_and(|t| now.duration_since(*t) > policy.window)
            {
                recent.pop_front();
            }
            if recent.len() > policy.max_restarts as usize {
                tracing::error!(module = %self.name, restarts = recent.len(), window = ?policy.window, "restart intensity exceeded; module marked failed");
                self.set_state("failed", 0);
                return;
            }
            if started.elapsed() > policy.window {
                backoff = MIN_BACKOFF;
            }
            self.set_state("restarting", 0);
            self.status.lock().restarts += 1;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = shutdown.changed() => { self.set_state("stopped", 0); return; }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                match self.start().await {
                    Ok(c) => {
                        child = c;
                        break;
                    }
                    Err(e) => tracing::error!(module = %self.name, "restart failed: {e}"),
                }
            }
        }
    }

    /// Drains and stops the running instance: stop routing to it, let it finish
    /// in-flight requests, then wait for it to exit (killing it after a timeout).
    async fn stop(&self, mut child: Child) {
        let link = self.current.write().take();
        if let Some(link) = &link {
            if link.send_control(Opcode::LINK_DRAIN).await {
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, link.closed()).await;
            }
        }
        if tokio::time::timeout(DRAIN_TIMEOUT, child.wait())
            .await
            .is_err()
        {
            tracing::warn!(module = %self.name, "module did not exit after draining; killing it");
            let _ = child.kill().await;
        }
        if let Some(link) = link {
            link.close("the daemon is shutting down");
        }
        self.set_state("stopped", 0);
        tracing::info!(module = %self.name, "module stopped");
    }
}
