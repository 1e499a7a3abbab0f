//! Module supervision, modelled on Erlang/OTP: one slot per capability module
//! with a child spec, one_for_one restarts with backoff and restart intensity,
//! health pings, hot restart/upgrade (start new, switch, drain old), and
//! drained shutdown.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{LinkHello, LinkReady, ModuleStatus};
use mecha_abi::{Family, Header, Opcode, Status, MAX_FRAME_CAP, VERSION};
use mecha_wire::{FrameReader, OutFrame, Outbox};
use parking_lot::{Mutex, RwLock};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

use crate::childspec::{ChildSpec, Restart};
use crate::link::{Link, LINK_QUEUE};
use crate::spawn::spawn_module;

/// How long a module may take to answer LINK_HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Delay before the second restart in a row; the first restart after a
/// healthy run is immediate, as in OTP. Doubled per crash up to `MAX_BACKOFF`.
const MIN_BACKOFF: Duration = Duration::from_millis(20);
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

/// Daemon-wide supervision numbers.
#[derive(Clone, Copy, Debug)]
pub struct Supervision {
    /// More than this many restarts within `window` marks a module failed.
    pub max_restarts: u32,
    /// See `max_restarts`.
    pub window: Duration,
    /// How often each module is pinged.
    pub health_interval: Duration,
    /// A module that has not answered a ping for this long is killed.
    pub health_timeout: Duration,
}

/// Where requests for a module go right now.
#[derive(Clone)]
pub enum Route {
    /// The running instance.
    Up(Arc<Link>),
    /// An instance is being started; requests may wait for it.
    Starting,
    /// No instance will come without an operator; the message says why.
    Down(String),
}

enum Command {
    Restart {
        spec: ChildSpec,
        reply: oneshot::Sender<Result<u32, String>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

struct SlotStatus {
    state: &'static str,
    pid: u32,
    restarts: u32,
}

/// One running instance: its process and its link.
struct Instance {
    child: Child,
    link: Arc<Link>,
    started: Instant,
}

/// A supervised capability module; stable across restarts of its process.
pub struct ModuleSlot {
    /// Module name, e.g. `state`.
    pub name: String,
    /// The capability family whose opcodes it serves.
    pub family: Family,
    spec: RwLock<ChildSpec>,
    route: watch::Sender<Route>,
    status: Mutex<SlotStatus>,
    commands: mpsc::Sender<Command>,
}

impl ModuleSlot {
    /// Starts the first instance of `spec` and its supervisor task. Fails when
    /// the module cannot start, so configuration errors surface at once.
    pub async fn launch(
        spec: ChildSpec,
        family: Family,
        supervision: Supervision,
    ) -> Result<Arc<Self>, StartError> {
        let (route, _) = watch::channel(Route::Starting);
        let (commands, command_rx) = mpsc::channel(8);
        let slot = Arc::new(Self {
            name: spec.name.clone(),
            family,
            spec: RwLock::new(spec.clone()),
            route,
            status: Mutex::new(SlotStatus {
                state: "starting",
                pid: 0,
                restarts: 0,
            }),
            commands,
        });
        let first = slot.start_instance(&spec, false).await?;
        slot.install(&first);
        tokio::spawn(Arc::clone(&slot).supervise(first, command_rx, supervision));
        Ok(slot)
    }

    /// Where requests should go now.
    pub fn route(&self) -> Route {
        self.route.borrow().clone()
    }

    /// Waits until the module is up or down (not starting), or `deadline`.
    pub async fn settled_route(&self, deadline: tokio::time::Instant) -> Route {
        let mut rx = self.route.subscribe();
        let settled = tokio::time::timeout_at(deadline, async {
            rx.wait_for(|r| !matches!(r, Route::Starting))
                .await
                .map(|r| r.clone())
        })
        .await;
        match settled {
            Ok(Ok(route)) => route,
            Ok(Err(_)) => Route::Down(format!("module {} is gone", self.name)),
            Err(_) => Route::Starting,
        }
    }

    /// Waits until the route no longer points at `link` (or `deadline`).
    pub async fn route_moved_from(&self, link: &Arc<Link>, deadline: tokio::time::Instant) {
        let mut rx = self.route.subscribe();
        let _ = tokio::time::timeout_at(
            deadline,
            rx.wait_for(|r| !matches!(r, Route::Up(l) if Arc::ptr_eq(l, link))),
        )
        .await;
    }

    /// The current child spec.
    pub fn spec(&self) -> ChildSpec {
        self.spec.read().clone()
    }

    fn set_state(&self, state: &'static str, pid: u32) {
        let mut s = self.status.lock();
        s.state = state;
        s.pid = pid;
    }

    /// This module's line in a STATUS reply.
    pub fn status(&self) -> ModuleStatus {
        let components = self
            .spec
            .read()
            .components
            .iter()
            .map(|c| c.name.clone())
            .collect();
        let s = self.status.lock();
        ModuleStatus {
            name: self.name.clone(),
            pid: s.pid,
            state: s.state.to_string(),
            restarts: s.restarts,
            components,
        }
    }

    /// Hot restart: start a fresh instance of `spec` (the current one when
    /// `None`), switch new requests to it, drain the old one. If the new
    /// instance fails to start, the old one keeps serving and the error says why.
    /// Returns the new instance's pid.
    pub async fn restart(&self, spec: Option<ChildSpec>) -> Result<u32, String> {
        let spec = spec.unwrap_or_else(|| self.spec());
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Restart { spec, reply })
            .await
            .map_err(|_| format!("module {} is no longer supervised", self.name))?;
        answer
            .await
            .map_err(|_| format!("module {} supervisor stopped", self.name))?
    }

    /// Drains and stops the module for good.
    pub async fn stop(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Stop { reply }).await.is_ok() {
            let _ = done.await;
        }
    }

    fn install(&self, instance: &Instance) {
        self.set_state("running", instance.link.pid);
        self.route
            .send_replace(Route::Up(Arc::clone(&instance.link)));
        tracing::info!(module = %self.name, pid = instance.link.pid, "module running");
    }

    async fn start_instance(
        &self,
        spec: &ChildSpec,
        handoff: bool,
    ) -> Result<Instance, StartError> {
        let (mut child, link_end) = spawn_module(&spec.binary, &spec.name, spec.confine, handoff)
            .map_err(|source| StartError::Spawn {
            binary: spec.binary.clone(),
            source,
        })?;
        let pid = child.id().unwrap_or(0);
        match handshake(spec, link_end, pid).await {
            Ok(link) => Ok(Instance {
                child,
                link,
                started: Instant::now(),
            }),
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }

    /// The supervisor loop of one slot: watches the running instance, pings it,
    /// restarts it per its child spec, and obeys restart/stop commands.
    async fn supervise(
        self: Arc<Self>,
        first: Instance,
        mut commands: mpsc::Receiver<Command>,
        sup: Supervision,
    ) {
        let mut current = Some(first);
        let mut crashes: VecDeque<Instant> = VecDeque::new();
        let mut backoff = Duration::ZERO;
        let mut health = tokio::time::interval(sup.health_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                reason = instance_ended(&mut current) => {
                    let Some(dead) = current.take() else { continue };
                    tracing::warn!(module = %self.name, pid = dead.link.pid, "{}", reason.message);
                    // A module that ran longer than the intensity window had a
                    // healthy run: restart it at once rather than after the
                    // backoff its earlier crashes built up.
                    if dead.started.elapsed() > sup.window {
                        backoff = Duration::ZERO;
                    }
                    let spec = self.spec();
                    let restart = match spec.restart {
                        Restart::Permanent => true,
                        Restart::Transient => !reason.clean,
                        Restart::Temporary => false,
                    };
                    // The route changes before the link closes, so a request
                    // that the dead link refuses finds it already rerouted.
                    if !restart {
                        self.set_state("stopped", 0);
                        self.route.send_replace(Route::Down(format!(
                            "module {} exited and its restart policy ({:?}) does not restart it",
                            self.name, spec.restart
                        )));
                        dead.link.close(&reason.message);
                        continue;
                    }
                    self.route.send_replace(Route::Starting);
                    dead.link.close(&reason.message);
                    current = self.restart_after_crash(&spec, &mut crashes, &mut backoff, &sup).await;
                }
                _ = health.tick() => {
                    if let Some(inst) = &mut current {
                        if inst.link.last_pong().elapsed() > sup.health_timeout {
                            tracing::error!(module = %self.name, pid = inst.link.pid, timeout = ?sup.health_timeout, "module stopped answering health pings; killing it");
                            let _ = inst.child.start_kill();
                        } else {
                            inst.link.send_control(Opcode::LINK_PING).await;
                        }
                    }
                }
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Restart { spec, reply }) => {
                        let result = self.hot_restart(&mut current, spec).await;
                        if result.is_ok() {
                            crashes.clear();
                            backoff = Duration::ZERO;
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::Stop { reply }) => {
                        self.route.send_replace(Route::Down(format!("module {} is stopped", self.name)));
                        if let Some(old) = current.take() {
                            drain(old, self.spec().shutdown_timeout).await;
                        }
                        self.set_state("stopped", 0);
                        tracing::info!(module = %self.name, "module stopped");
                        let _ = reply.send(());
                        return;
                    }
                },
            }
        }
    }

    /// Restarts after a crash with exponential backoff and jitter, until an
    /// instance runs or the restart intensity is exceeded (then `None`).
    async fn restart_after_crash(
        &self,
        spec: &ChildSpec,
        crashes: &mut VecDeque<Instant>,
        backoff: &mut Duration,
        sup: &Supervision,
    ) -> Option<Instance> {
        loop {
            // Restart intensity, as in OTP: too many restarts in the window means
            // the fault is not transient, so stop flapping and say so.
            let now = Instant::now();
            crashes.push_back(now);
            while crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > sup.window)
            {
                crashes.pop_front();
            }
            if crashes.len() > sup.max_restarts as usize {
                let msg = format!(
                    "module {} failed: more than {} restarts within {:?}; fix the cause, then run `mechactl module restart {}`",
                    self.name, sup.max_restarts, sup.window, self.name
                );
                tracing::error!(module = %self.name, "{msg}");
                self.set_state("failed", 0);
                self.route.send_replace(Route::Down(msg));
                return None;
            }
            self.set_state("restarting", 0);
            self.status.lock().restarts += 1;
            tokio::time::sleep(jitter(*backoff)).await;
            *backoff = (*backoff * 2).clamp(MIN_BACKOFF, MAX_BACKOFF);
            match self.start_instance(spec, false).await {
                Ok(inst) => {
                    self.install(&inst);
                    return Some(inst);
                }
                Err(e) => tracing::error!(module = %self.name, "restart failed: {e}"),
            }
        }
    }

    /// Starts and handshakes a new instance before touching the old one, so a
    /// binary that does not start leaves the old instance serving. Then new
    /// requests wait (within their deadlines) while the old instance drains
    /// and exits, and only then flow to the new one: two instances never serve
    /// at once, so modules with exclusive resources (a database file lock) hand
    /// them over cleanly. The pause is the old instance's drain time.
    async fn hot_restart(
        &self,
        current: &mut Option<Instance>,
        spec: ChildSpec,
    ) -> Result<u32, String> {
        let fresh = self.start_instance(&spec, current.is_some()).await.map_err(|e| {
            tracing::warn!(module = %self.name, "hot restart aborted, the running instance keeps serving: {e}");
            e.to_string()
        })?;
        let pid = fresh.link.pid;
        if let Some(old) = current.take() {
            self.route.send_replace(Route::Starting);
            drain(old, self.spec().shutdown_timeout).await;
        }
        *self.spec.write() = spec;
        self.install(&fresh);
        self.status.lock().restarts += 1;
        *current = Some(fresh);
        Ok(pid)
    }
}

/// Why an instance ended.
struct Ended {
    message: String,
    /// True for a normal exit with code 0.
    clean: bool,
}

/// Resolves when the running instance's process exits or its link closes;
/// never resolves when there is no instance.
async fn instance_ended(current: &mut Option<Instance>) -> Ended {
    let Some(inst) = current else {
        return std::future::pending().await;
    };
    tokio::select! {
        status = inst.child.wait() => match status {
            Ok(s) => Ended { message: format!("the module process exited ({s})"), clean: s.success() },
            Err(e) => Ended { message: format!("waiting for the module failed: {e}"), clean: false },
        },
        _ = inst.link.closed() => {
            // The link closed first; make sure the process is gone too.
            let _ = inst.child.kill().await;
            Ended { message: "the module closed its link".into(), clean: false }
        }
    }
}

/// Retires an instance: no new requests, wait for those in flight, then ask it
/// to exit, killing it if it does not within `timeout`.
async fn drain(mut old: Instance, timeout: Duration) {
    old.link.stop_accepting();
    if tokio::time::timeout(timeout, old.link.idle())
        .await
        .is_err()
    {
        tracing::warn!(module = %old.link.module, pid = old.link.pid, "in-flight requests did not finish while draining");
    }
    // Streams live on the instance that opened them; their clients resubscribe
    // and land on the new instance.
    old.link.reset_streams("was restarted");
    old.link.send_control(Opcode::LINK_DRAIN).await;
    if tokio::time::timeout(timeout, old.child.wait())
        .await
        .is_err()
    {
        tracing::warn!(module = %old.link.module, pid = old.link.pid, "module did not exit after draining; killing it");
        let _ = old.child.kill().await;
    }
    old.link.close("the instance was drained");
    tracing::info!(module = %old.link.module, pid = old.link.pid, "old instance drained");
}

/// Spreads restarts of many modules over time: ±25 % of `base`. The clock's
/// nanoseconds are random enough to de-synchronise restarts; nothing here
/// needs unpredictability.
fn jitter(base: Duration) -> Duration {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let factor = 0.75 + f64::from(nanos % 1000) / 2000.0;
    base.mul_f64(factor)
}

/// LINK_HELLO over a fresh link, then the link's reader, writer and deadline tasks.
async fn handshake(
    spec: &ChildSpec,
    link_end: std::os::unix::net::UnixStream,
    pid: u32,
) -> Result<Arc<Link>, StartError> {
    let fail = |reason: String| StartError::Handshake {
        module: spec.name.clone(),
        reason,
    };
    link_end
        .set_nonblocking(true)
        .map_err(|e| fail(e.to_string()))?;
    // A failure only costs fairness under overload (see LINK_SNDBUF).
    if let Err(e) = nix::sys::socket::setsockopt(
        &link_end,
        nix::sys::socket::sockopt::SndBuf,
        &crate::link::LINK_SNDBUF,
    ) {
        tracing::debug!(module = %spec.name, "cannot size the link's send buffer: {e}");
    }
    let (rd, wr) = mecha_wire::sock::split(link_end).map_err(|e| fail(e.to_string()))?;
    let (tx, writer) = Outbox::new(wr, LINK_QUEUE);
    tokio::spawn(writer);
    let hello = LinkHello {
        version: VERSION,
        module: spec.name.clone(),
        data_dir: spec.data_dir.to_string_lossy().into_owned(),
        components: spec.components.clone(),
    };
    let body = mecha_abi::encode(&hello).map_err(|e| fail(e.to_string()))?;
    tx.send(OutFrame::new(Header::request(Opcode::LINK_HELLO, 0), body))
        .map_err(|_| fail("the link closed before LINK_HELLO was sent".into()))?;
    let mut reader = FrameReader::new(rd, MAX_FRAME_CAP);
    let answer = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
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
            module: spec.name.clone(),
            message,
        });
    }
    let ready: LinkReady = mecha_abi::decode(&payload).map_err(|e| fail(e.to_string()))?;
    tracing::debug!(module = %ready.module, version = %ready.version, "handshake done");
    let link = Link::new(spec.name.clone(), pid, tx);
    link.set_features(mecha_abi::Features(header.ext));
    tokio::spawn(Arc::clone(&link).read_answers(reader));
    tokio::spawn(Arc::clone(&link).expire_deadlines());
    Ok(link)
}
