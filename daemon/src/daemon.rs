//! The state shared by every connection: limits, tenant rules, the module
//! slots, and the operations that change them (restart, reload).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::{ReloadReply, StatusReply};
use mecha_abi::Family;
use parking_lot::RwLock;

use crate::config::Config;
use crate::peer::{Peer, Tenants};
use crate::plan::{child_specs, Paths};
use crate::supervisor::{ModuleSlot, Supervision};

/// Everything a connection needs to serve requests.
pub struct Daemon {
    /// Largest payload accepted from applications.
    pub max_frame: u32,
    /// Deadline applied to requests that carry none.
    pub default_timeout: Duration,
    /// Requests one connection may have in flight.
    pub max_in_flight: u32,
    /// Peer → tenant mapping (replaced on reload).
    pub tenants: RwLock<Tenants>,
    /// Uids allowed to run admin operations, besides root and our own uid.
    pub admin_uids: RwLock<Vec<u32>>,
    /// Modules in start order (changed on reload).
    pub modules: RwLock<Vec<Arc<ModuleSlot>>>,
    /// When the daemon started, for uptime.
    pub started: Instant,
    /// Where the configuration came from; `None` for the embedded default.
    pub config_path: Option<PathBuf>,
    /// Directories fixed at start-up.
    pub paths: Paths,
    /// Supervision numbers for modules started later.
    pub supervision: Supervision,
    /// Serialises reloads and restarts so two never interleave.
    pub admin_lock: tokio::sync::Mutex<()>,
}

impl Daemon {
    /// The module serving `family`, if one is configured.
    pub fn module_for(&self, family: Family) -> Option<Arc<ModuleSlot>> {
        self.modules
            .read()
            .iter()
            .find(|m| m.family == family)
            .cloned()
    }

    /// The module named `name`.
    pub fn module_named(&self, name: &str) -> Option<Arc<ModuleSlot>> {
        self.modules.read().iter().find(|m| m.name == name).cloned()
    }

    /// The STATUS reply: version, uptime and per-module state.
    pub fn status(&self) -> StatusReply {
        StatusReply {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            modules: self.modules.read().iter().map(|m| m.status()).collect(),
        }
    }

    /// Whether `peer` may restart modules and reload the configuration.
    pub fn is_admin(&self, peer: &Peer) -> bool {
        peer.uid == 0
            || peer.uid == nix::unistd::geteuid().as_raw()
            || self.admin_uids.read().contains(&peer.uid)
    }

    /// Loads the configuration the daemon was started with.
    pub fn load_config(&self) -> Result<Config, String> {
        match &self.config_path {
            Some(path) => Config::load(path).map_err(|e| e.to_string()),
            None => Ok(Config::embedded_default()),
        }
    }

    /// Re-reads the configuration and applies the differences: new modules
    /// start, changed ones are hot-restarted, removed ones drain and stop,
    /// unchanged ones are untouched. A configuration with errors changes nothing.
    pub async fn reload(&self) -> Result<ReloadReply, String> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let config = self.load_config()?;
        let specs = child_specs(&config, &self.paths)?;
        let mut reply = ReloadReply::default();
        let running: Vec<Arc<ModuleSlot>> = self.modules.read().clone();
        let mut next = Vec::with_capacity(specs.len());
        for (family, spec) in specs {
            let name = spec.name.clone();
            match running.iter().find(|m| m.name == name) {
                Some(slot) if slot.spec() == spec => {
                    reply.unchanged.push(name);
                    next.push(Arc::clone(slot));
                }
                Some(slot) => {
                    slot.restart(Some(spec))
                        .await
                        .map_err(|e| format!("restarting module {name}: {e}"))?;
                    reply.restarted.push(name);
                    next.push(Arc::clone(slot));
                }
                None => {
                    let slot = ModuleSlot::launch(spec, family, self.supervision)
                        .await
                        .map_err(|e| format!("starting module {name}: {e}"))?;
                    reply.started.push(name);
                    next.push(slot);
                }
            }
        }
        for slot in &running {
            if !next.iter().any(|m| Arc::ptr_eq(m, slot)) {
                slot.stop().await;
                reply.stopped.push(slot.name.clone());
            }
        }
        *self.modules.write() = next;
        *self.tenants.write() = Tenants::new(config.settings.tenants.clone());
        *self.admin_uids.write() = config.settings.admin_uids.clone();
        tracing::info!(?reply, "configuration reloaded");
        Ok(reply)
    }

    /// Hot-restarts module `name`, from `binary` when given (an upgrade).
    pub async fn restart_module(&self, name: &str, binary: Option<PathBuf>) -> Result<u32, String> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let slot = self
            .module_named(name)
            .ok_or_else(|| format!("no module named {name:?} is running"))?;
        let mut spec = slot.spec();
        if let Some(binary) = binary {
            spec.binary = binary;
        }
        slot.restart(Some(spec)).await
    }

    /// Stops every module in reverse start order, each drained before the next.
    pub async fn stop_modules(&self) {
        let modules: Vec<Arc<ModuleSlot>> = self.modules.read().clone();
        for slot in modules.iter().rev() {
            slot.stop().await;
        }
    }
}
