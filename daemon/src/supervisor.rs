//! Module supervision, modelled on Erlang/OTP: one slot per capability module
//! with a child spec, one_for_one restarts with backoff and restart intensity,
//! health pings, hot restart/upgrade (start new, switch, drain old), and
//! drained shutdown.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{LinkHello, LinkReady, ModuleStatus};
use mecha_abi::{Family, Header, Opcode, Status, MAX_FRAME_CAP, VERSION};
use mecha_wire::{FrameReader, OutFrame, Outbox, Unflushed};
use parking_lot::{Mutex, RwLock};
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};

use crate::childspec::{ChildSpec, Restart, Start};
use crate::crashes::{Ledger, Refusal, Retry};
use crate::events::{self, Kind};
use crate::link::{Link, Replay, LINK_QUEUE};
use crate::spawn::spawn_module;

/// How long a module whose link closed may take to exit by itself.
const EXIT_GRACE: Duration = Duration::from_millis(200);
/// How long a module may take to answer LINK_HELLO.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// More than this many crashes within `window` (not charged to a
    /// tenant) make the module back off: restarts slow down to one every
    /// `crashes::MAX_BACKOFF` at most, and requests meanwhile are answered
    /// UNAVAILABLE at once.
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
    /// A lazy module that has not served yet: the first request wakes it
    /// (`ModuleSlot::wake`) and waits for it as for `Starting`.
    Idle,
    /// No instance serves now, and none is about to: the module is stopped,
    /// or backing off after repeated crashes. The message says why and when
    /// the next try is.
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
    /// When the running instance started.
    since: Option<Instant>,
    /// Why the last instance ended, if one has.
    last_exit: Option<String>,
    /// When the next start is due, while backing off or restarting.
    next_try: Option<Instant>,
}

/// What the dashboard shows of a module besides its STATUS line.
#[derive(Clone, Debug)]
pub struct ModuleDetail {
    /// How long the running instance has run.
    pub uptime: Option<Duration>,
    /// Why the last instance ended, if one has.
    pub last_exit: Option<String>,
    /// How long until the next start, while backing off or restarting.
    pub next_try_in: Option<Duration>,
}

/// A first instance started and handshaken by [`ModuleSlot::prepare`], not
/// yet serving.
pub struct Prepared {
    first: Instance,
    commands: mpsc::Receiver<Command>,
}

impl Prepared {
    /// Stops the instance: the daemon that prepared it gives up.
    pub async fn discard(self) {
        let mut first = self.first;
        let _ = first.child.kill().await;
    }
}

/// One running instance: its process and its link.
struct Instance {
    child: Child,
    link: Arc<Link>,
    started: Instant,
    /// The supervisor killed it (a missed health deadline).
    killed: bool,
}

/// A supervised capability module; stable across restarts of its process.
pub struct ModuleSlot {
    /// Module name, e.g. `state`.
    pub name: String,
    /// The capability family whose opcodes it serves; `None` for a
    /// personality, which serves no opcode and is reached on its own sockets.
    pub family: Option<Family>,
    spec: RwLock<ChildSpec>,
    /// A personality's sockets, bound at its first start and kept for the
    /// daemon's life, so that every instance accepts on the same ones.
    bound: std::sync::OnceLock<Arc<crate::personality::Bound>>,
    route: watch::Sender<Route>,
    status: Mutex<SlotStatus>,
    commands: mpsc::Sender<Command>,
    /// Its crashes: restart backoff, poison requests, tenant charges.
    crashes: Ledger,
    /// Asks the supervisor of an idle (lazy) module to start it; a permit
    /// is kept when nobody waits, so no wake is lost.
    wake: tokio::sync::Notify,
}

impl ModuleSlot {
    /// Starts the first instance of `spec` and its supervisor task. Fails when
    /// the module cannot start, so configuration errors surface at once.
    pub async fn launch(
        spec: ChildSpec,
        family: Option<Family>,
        supervision: Supervision,
    ) -> Result<Arc<Self>, StartError> {
        let (slot, first) = Self::prepare(spec, family, false).await?;
        slot.run(first, supervision).await;
        Ok(slot)
    }

    /// Starts and handshakes the first instance of `spec` without serving
    /// with it: the route stays `Starting` (requests wait) until
    /// [`ModuleSlot::run`]. With `handoff`, the instance is told another
    /// instance still holds its resources (`MECHA_HANDOFF`): a daemon taking
    /// over starts its modules this way while the old daemon's serve on.
    pub async fn prepare(
        spec: ChildSpec,
        family: Option<Family>,
        handoff: bool,
    ) -> Result<(Arc<Self>, Prepared), StartError> {
        let (route, _) = watch::channel(Route::Starting);
        let (commands, command_rx) = mpsc::channel(8);
        let slot = Arc::new(Self {
            name: spec.name.clone(),
            family,
            spec: RwLock::new(spec.clone()),
            bound: std::sync::OnceLock::new(),
            route,
            status: Mutex::new(SlotStatus {
                state: "starting",
                pid: 0,
                restarts: 0,
                since: None,
                last_exit: None,
                next_try: None,
            }),
            commands,
            crashes: Ledger::default(),
            wake: tokio::sync::Notify::new(),
        });
        // Even a lazy module starts once now: its handshake checks its
        // components, so a configuration error stops the daemon's start.
        let first = slot.start_instance(&spec, handoff).await?;
        Ok((
            slot,
            Prepared {
                first,
                commands: command_rx,
            },
        ))
    }

    /// Serves with the instance [`ModuleSlot::prepare`] started (or, for a
    /// lazy module, retires it until the first request) and starts the
    /// supervisor task.
    pub async fn run(self: &Arc<Self>, prepared: Prepared, supervision: Supervision) {
        let Prepared { first, commands } = prepared;
        let spec = self.spec();
        let first = match spec.start {
            Start::Eager => {
                self.install(&first);
                Some(first)
            }
            Start::Lazy => {
                drain(first, spec.shutdown_timeout).await;
                self.set_state("idle", 0);
                self.route.send_replace(Route::Idle);
                // A personality is reached on its own sockets, not by
                // requests: its first caller wakes it (socket activation).
                if let Some(bound) = self.bound.get() {
                    crate::personality::wake_on_caller(
                        bound,
                        Arc::clone(self) as Arc<dyn crate::personality::Wake>,
                    );
                }
                tracing::info!(module = %self.name, "module checked; it starts at its first request (start: lazy)");
                None
            }
        };
        tokio::spawn(Arc::clone(self).supervise(first, commands, supervision));
    }

    /// Asks an idle (lazy) module to start; does nothing to one that runs.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Where requests should go now.
    pub fn route(&self) -> Route {
        self.route.borrow().clone()
    }

    /// Waits until the module is up or down (not starting, nor idle), or
    /// `deadline`. A request waiting here wakes the module whenever its
    /// route is idle, not only when it first looked: a lazy module that a
    /// daemon taking over prepares is `Starting` while connections (and
    /// their held requests) arrive, and turns `Idle` only afterwards, when
    /// no new request would come to wake it for the ones already waiting.
    pub async fn settled_route(&self, deadline: tokio::time::Instant) -> Route {
        let mut rx = self.route.subscribe();
        let settled = tokio::time::timeout_at(deadline, async {
            rx.wait_for(|r| match r {
                Route::Idle => {
                    self.wake();
                    false
                }
                Route::Starting => false,
                _ => true,
            })
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

    /// Whether a request of `tenant` with `fingerprint` is refused because
    /// of the crashes it or its tenant caused (see `crashes`).
    pub fn refusal(&self, tenant: &[u8], fingerprint: u64) -> Option<Refusal> {
        self.crashes.refusal(tenant, fingerprint)
    }

    /// The current child spec.
    pub fn spec(&self) -> ChildSpec {
        self.spec.read().clone()
    }

    fn set_state(&self, state: &'static str, pid: u32) {
        let mut s = self.status.lock();
        s.state = state;
        s.pid = pid;
        s.since = (pid != 0).then(Instant::now);
        s.next_try = None;
    }

    /// Uptime, last exit and next try, for the dashboard.
    pub fn detail(&self) -> ModuleDetail {
        let s = self.status.lock();
        let now = Instant::now();
        ModuleDetail {
            uptime: s.since.map(|t| now.saturating_duration_since(t)),
            last_exit: s.last_exit.clone(),
            next_try_in: s.next_try.map(|t| t.saturating_duration_since(now)),
        }
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
        events::record(
            Kind::ModuleStarted,
            &self.name,
            &format!("pid {} serves", instance.link.pid),
        );
    }

    async fn start_instance(
        &self,
        spec: &ChildSpec,
        handoff: bool,
    ) -> Result<Instance, StartError> {
        let spawn_error = |source| StartError::Spawn {
            binary: spec.binary.clone(),
            source,
        };
        // A personality also gets its session broker and its sockets.
        let mut broker = None;
        let mut passed = Vec::new();
        let mut env = Vec::new();
        if let Some(listen) = &spec.personality {
            let bound = self
                .bound
                .get_or_init(|| Arc::new(crate::personality::Bound::bind(listen)));
            let (ours, theirs) = mecha_wire::session::pair().map_err(spawn_error)?;
            broker = Some((ours, Arc::clone(listen), Arc::clone(bound)));
            passed.push((theirs, mecha_wire::session::SESSION_FD));
            env.push((
                mecha_wire::session::SESSION_FD_ENV.to_owned(),
                mecha_wire::session::SESSION_FD.to_string(),
            ));
            let mut listed = Vec::new();
            for (i, (name, fd)) in bound.sockets.iter().enumerate() {
                let target = mecha_wire::session::SESSION_FD + 1 + i as i32;
                listed.push(format!("{name}={target}"));
                passed.push((fd.try_clone().map_err(spawn_error)?, target));
            }
            env.push((mecha_wire::session::LISTEN_ENV.to_owned(), listed.join(",")));
        }
        let passing: Vec<crate::spawn::Passed<'_>> = passed
            .iter()
            .map(|(fd, target)| crate::spawn::Passed {
                fd: std::os::fd::AsFd::as_fd(fd),
                target: *target,
            })
            .collect();
        let (mut child, link_end) = spawn_module(
            &spec.binary,
            &spec.name,
            spec.confine,
            &spec.env_prefixes,
            handoff,
            &passing,
            &env,
        )
        .map_err(spawn_error)?;
        drop(passing);
        drop(passed);
        if let Some((fd, listen, bound)) = broker {
            crate::personality::hand_over(crate::personality::BrokerEnd {
                fd,
                listen,
                bound,
                module: spec.name.clone(),
            });
        }
        let pid = child.id().unwrap_or(0);
        match handshake(spec, link_end, pid).await {
            Ok(link) => Ok(Instance {
                child,
                link,
                killed: false,
                started: Instant::now(),
            }),
            Err(e) => {
                let _ = child.kill().await;
                Err(e)
            }
        }
    }

    /// The supervisor loop of one slot: watches the running instance, pings it,
    /// restarts it per its child spec (after the backoff its crashes call
    /// for, and never giving up on a permanent module), and obeys
    /// restart/stop commands, which also end a backoff at once.
    async fn supervise(
        self: Arc<Self>,
        first: Option<Instance>,
        mut commands: mpsc::Receiver<Command>,
        sup: Supervision,
    ) {
        let mut current = first;
        // A lazy module waits for its first request before it starts.
        let mut idle = current.is_none();
        // When the next start is due while no instance runs.
        let mut retry_at: Option<tokio::time::Instant> = None;
        // Requests the dead instance had in flight that go to the next one.
        let mut replays: Vec<Replay> = Vec::new();
        let mut health = tokio::time::interval(sup.health_interval);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let due = retry_at.unwrap_or_else(tokio::time::Instant::now);
            tokio::select! {
                reason = instance_ended(&mut current) => {
                    let Some(dead) = current.take() else { continue };
                    retry_at = self.after_exit(dead, reason, &sup, &mut replays);
                }
                _ = tokio::time::sleep_until(due), if retry_at.is_some() => {
                    retry_at = None;
                    let spec = self.spec();
                    match self.start_instance(&spec, false).await {
                        Ok(inst) => {
                            self.install(&inst);
                            replay(&inst.link, &mut replays).await;
                            current = Some(inst);
                        }
                        Err(e) => {
                            tracing::error!(module = %self.name, "restart failed: {e}");
                            events::record(Kind::ModuleStartFailed, &self.name, &e.to_string());
                            fail_replays(&mut replays, &format!("module {} failed to start again: {e}; retry", self.name));
                            let retry = self.crashes.crash(Vec::new(), Duration::ZERO, sup.max_restarts, sup.window);
                            retry_at = Some(self.schedule(retry));
                        }
                    }
                }
                _ = self.wake.notified(), if idle => {
                    idle = false;
                    self.route.send_replace(Route::Starting);
                    self.set_state("starting", 0);
                    let spec = self.spec();
                    match self.start_instance(&spec, false).await {
                        Ok(inst) => {
                            self.install(&inst);
                            current = Some(inst);
                        }
                        Err(e) => {
                            tracing::error!(module = %self.name, "start at the first request failed: {e}");
                            events::record(Kind::ModuleStartFailed, &self.name, &e.to_string());
                            let retry = self.crashes.crash(Vec::new(), Duration::ZERO, sup.max_restarts, sup.window);
                            retry_at = Some(self.schedule(retry));
                        }
                    }
                }
                _ = health.tick() => {
                    if let Some(inst) = &mut current {
                        if inst.link.last_pong().elapsed() > sup.health_timeout {
                            tracing::error!(module = %self.name, pid = inst.link.pid, timeout = ?sup.health_timeout, "module stopped answering health pings; killing it");
                            inst.killed = true;
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
                            idle = false;
                            // An operator's restart ends a backoff and forgets
                            // the crashes that built it up.
                            self.crashes.reset();
                            retry_at = None;
                            if let Some(inst) = &current {
                                replay(&inst.link, &mut replays).await;
                            }
                        }
                        let _ = reply.send(result);
                    }
                    Some(Command::Stop { reply }) => {
                        self.route.send_replace(Route::Down(format!("module {} is stopped", self.name)));
                        fail_replays(&mut replays, &format!("module {} is stopped", self.name));
                        if let Some(old) = current.take() {
                            drain(old, self.spec().shutdown_timeout).await;
                        }
                        self.set_state("stopped", 0);
                        tracing::info!(module = %self.name, "module stopped");
                        events::record(Kind::ModuleStopped, &self.name, "stopped by a reload or at shutdown");
                        let _ = reply.send(());
                        return;
                    }
                },
            }
        }
    }

    /// Handles the exit of the running instance: the route changes before the
    /// link closes, so a request that the dead link refuses finds it already
    /// rerouted; then the crash is recorded and the next start scheduled, if
    /// the restart type wants one. Returns when that start is due.
    fn after_exit(
        &self,
        dead: Instance,
        reason: Ended,
        sup: &Supervision,
        replays: &mut Vec<Replay>,
    ) -> Option<tokio::time::Instant> {
        tracing::warn!(module = %self.name, pid = dead.link.pid, "{}", reason.message);
        let message = format!("pid {}: {}", dead.link.pid, reason.message);
        events::record(Kind::ModuleExited, &self.name, &message);
        self.status.lock().last_exit = Some(message);
        let spec = self.spec();
        let restart = match spec.restart {
            Restart::Permanent => true,
            Restart::Transient => !reason.clean,
            Restart::Temporary => false,
        };
        if !restart {
            self.set_state("stopped", 0);
            self.route.send_replace(Route::Down(format!(
                "module {} exited and its restart policy ({:?}) does not restart it",
                self.name, spec.restart
            )));
            dead.link.close(&reason.message, false);
            return None;
        }
        self.route.send_replace(Route::Starting);
        // The link's reader may have closed it already, keeping the
        // replayable requests; either way they are taken here.
        dead.link.close(&reason.message, true);
        replays.extend(dead.link.take_replays());
        let lost = match reason.external {
            true => Vec::new(),
            false => dead.link.take_lost(),
        };
        let retry = self
            .crashes
            .crash(lost, dead.started.elapsed(), sup.max_restarts, sup.window);
        let due = self.schedule(retry);
        // A replay that cannot reach the next instance within its deadline,
        // or whose module now backs off, is answered now, as it would have
        // been without replays.
        let message = format!(
            "module {} is unavailable: {}; retry",
            self.name, reason.message
        );
        if retry.looping {
            fail_replays(replays, &message);
        } else {
            let (keep, late): (Vec<Replay>, Vec<Replay>) = replays
                .drain(..)
                .partition(|r| r.deadline() > due.into_std());
            *replays = keep;
            for r in late {
                r.fail(Status::Unavailable, &message);
            }
        }
        Some(due)
    }

    /// Publishes the state and route of a module waiting to be restarted, and
    /// returns when the start is due. A crash-looping module answers requests
    /// UNAVAILABLE at once, naming the next try; otherwise requests wait for
    /// the new instance within their deadlines.
    fn schedule(&self, retry: Retry) -> tokio::time::Instant {
        let delay = jitter(retry.delay);
        self.status.lock().restarts += 1;
        if retry.looping {
            let msg = format!(
                "module {} is crash-looping; it backs off and is started again in {} ms \
                 (`mechactl module restart {}` tries at once)",
                self.name,
                delay.as_millis(),
                self.name
            );
            tracing::error!(module = %self.name, "{msg}");
            events::record(Kind::ModuleBackoff, &self.name, &msg);
            self.set_state("backoff", 0);
            self.route.send_replace(Route::Down(msg));
        } else {
            self.set_state("restarting", 0);
        }
        self.status.lock().next_try = Some(Instant::now() + delay);
        tokio::time::Instant::now() + delay
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
            events::record(Kind::ModuleStartFailed, &self.name, &format!("hot restart aborted: {e}"));
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
        events::record(
            Kind::ModuleRestarted,
            &self.name,
            &format!("hot restart: pid {pid} serves"),
        );
        *current = Some(fresh);
        Ok(pid)
    }
}

/// Why an instance ended.
struct Ended {
    message: String,
    /// True for a normal exit with code 0.
    clean: bool,
    /// Killed with SIGKILL by someone other than its supervisor (an
    /// operator, the kernel's OOM killer): the requests in flight did not
    /// cause it, so they are not suspects of a poison request.
    external: bool,
}

impl Ended {
    fn from_status(status: std::io::Result<std::process::ExitStatus>, killed_by_us: bool) -> Self {
        use std::os::unix::process::ExitStatusExt;
        match status {
            Ok(s) => Ended {
                message: format!("the module process exited ({s})"),
                clean: s.success(),
                external: s.signal() == Some(libc::SIGKILL) && !killed_by_us,
            },
            Err(e) => Ended {
                message: format!("waiting for the module failed: {e}"),
                clean: false,
                external: false,
            },
        }
    }
}

/// Resolves when the running instance's process exits or its link closes;
/// never resolves when there is no instance.
async fn instance_ended(current: &mut Option<Instance>) -> Ended {
    let Some(inst) = current else {
        return std::future::pending().await;
    };
    tokio::select! {
        status = inst.child.wait() => Ended::from_status(status, inst.killed),
        _ = inst.link.closed() => {
            // The link closed first; the process is usually exiting too. Its
            // exit status tells why; one that lingers is killed.
            match tokio::time::timeout(EXIT_GRACE, inst.child.wait()).await {
                Ok(status) => Ended::from_status(status, inst.killed),
                Err(_) => {
                    let _ = inst.child.kill().await;
                    Ended { message: "the module closed its link".into(), clean: false, external: false }
                }
            }
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
    old.link.close("the instance was drained", false);
    tracing::info!(module = %old.link.module, pid = old.link.pid, "old instance drained");
}

/// Sends the requests the previous instance died with to `link`, the new
/// one (`Link::replay`), and writes them.
async fn replay(link: &Link, replays: &mut Vec<Replay>) {
    if replays.is_empty() {
        return;
    }
    tracing::info!(module = %link.module, requests = replays.len(), "replaying the reads the previous instance died with");
    let mut unflushed = Unflushed::default();
    for r in replays.drain(..) {
        if let Some(outbox) = link.replay(r).await {
            unflushed.add(&outbox);
        }
    }
    unflushed.flush();
}

/// Answers every kept replay UNAVAILABLE with `message`.
fn fail_replays(replays: &mut Vec<Replay>, message: &str) {
    for r in replays.drain(..) {
        r.fail(Status::Unavailable, message);
    }
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

impl crate::personality::Wake for ModuleSlot {
    fn wake(&self) {
        ModuleSlot::wake(self);
    }
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
