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

/// Why a reload did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The configuration is invalid; nothing changed.
    #[error("{0}")]
    Config(String),
    /// A module could not be started or restarted; the reload stopped there.
    #[error("{0}")]
    Apply(String),
}

/// Why a module restart or upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// No module of that name is configured.
    #[error("no module named {0:?} is running")]
    NoSuchModule(String),
    /// The new instance did not start; the old one keeps serving.
    #[error("{0}")]
    Failed(String),
}

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
    /// Quota state by tenant (replaced on reload; open connections keep theirs).
    pub quotas: RwLock<Arc<crate::quota::Registry>>,
    /// Who may run admin operations besides the defaults (replaced on reload).
    pub admins: RwLock<crate::config::Admins>,
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
    /// Request, connection and module metrics (`/metrics`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// The span exporter, when tracing is configured (fixed at start-up).
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// What connections do during a daemon hand-over (`handover`).
    pub freeze: Arc<crate::handover::freeze::Freeze>,
    /// The daemon upgrade under way, if any (`handover::upgrade`).
    pub upgrade: crate::handover::waiter::Upgrade,
    /// The binary this daemon was started from: the default of an upgrade.
    pub exe: PathBuf,
}

impl Daemon {
    /// The module serving `family`, if one is configured.
    pub fn module_for(&self, family: Family) -> Option<Arc<ModuleSlot>> {
        self.modules
            .read()
            .iter()
            .find(|m| m.family == Some(family))
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

    /// Whether `peer`, of `tenant`, may restart modules and reload the
    /// configuration: listed in `admins`, or the daemon's own uid when that
    /// is not root, or root in the daemon's own mount namespace. Root in
    /// another container (without a user namespace it is uid 0 too) is not.
    pub fn is_admin(&self, peer: &Peer, tenant: &str) -> bool {
        if peer.personality {
            return false;
        }
        let own = nix::unistd::geteuid().as_raw();
        let admins = self.admins.read();
        (peer.uid == own && (own != 0 || peer.local))
            || admins.uids.contains(&peer.uid)
            || admins.tenants.iter().any(|t| t == tenant)
    }

    /// Loads the configuration the daemon was started with, secret
    /// references resolved.
    pub async fn load_config(&self) -> Result<Config, String> {
        let mut config = match &self.config_path {
            Some(path) => Config::load(path).map_err(|e| e.to_string())?,
            None => Config::embedded_default(),
        };
        let secrets_dir = crate::plan::secrets_data_dir(&self.paths.data_dir);
        crate::secret_ref::resolve(&mut config, &secrets_dir).await?;
        Ok(config)
    }

    /// Re-reads the configuration and applies the differences: new modules
    /// start, changed ones are hot-restarted, removed ones drain and stop,
    /// unchanged ones are untouched. A configuration with errors changes
    /// nothing (`ReloadError::Config`). A module that fails to start stops the
    /// reload where it is (`ReloadError::Apply`): what was already applied
    /// stays, every module keeps being supervised, and removals are skipped.
    pub async fn reload(&self) -> Result<ReloadReply, ReloadError> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let config = self.load_config().await.map_err(ReloadError::Config)?;
        let specs = child_specs(&config, &self.paths).map_err(ReloadError::Config)?;
        let pods = match &config.settings.pods_file {
            Some(path) => crate::peer::load_pods(path).map_err(ReloadError::Config)?,
            None => Default::default(),
        };
        let tenants = Tenants::new(
            config.settings.tenants.clone(),
            config.settings.default_tenant.unwrap_or_default(),
            pods,
        )
        .map_err(ReloadError::Config)?;
        let mut reply = ReloadReply::default();
        let running: Vec<Arc<ModuleSlot>> = self.modules.read().clone();
        let mut next: Vec<Arc<ModuleSlot>> = Vec::with_capacity(specs.len());
        let mut failure = None;
        for (family, spec) in specs {
            let name = spec.name.clone();
            let existing = running.iter().find(|m| m.name == name);
            if failure.is_some() {
                // Past a failure nothing more changes; keep what runs.
                next.extend(existing.cloned());
                continue;
            }
            match existing {
                Some(slot) if slot.spec() == spec => {
                    reply.unchanged.push(name);
                    next.push(Arc::clone(slot));
                }
                Some(slot) => {
                    next.push(Arc::clone(slot));
                    match slot.restart(Some(spec)).await {
                        Ok(_) => reply.restarted.push(name),
                        Err(e) => failure = Some(format!("restarting module {name}: {e}")),
                    }
                }
                None => match ModuleSlot::launch(spec, family, self.supervision).await {
                    Ok(slot) => {
                        reply.started.push(name);
                        next.push(slot);
                    }
                    Err(e) => failure = Some(format!("starting module {name}: {e}")),
                },
            }
        }
        for slot in &running {
            if next.iter().any(|m| Arc::ptr_eq(m, slot)) {
                continue;
            }
            if failure.is_some() {
                next.push(Arc::clone(slot));
            } else {
                slot.stop().await;
                reply.stopped.push(slot.name.clone());
            }
        }
        *self.modules.write() = next;
        if let Some(why) = failure {
            tracing::error!(?reply, "reload stopped part-way: {why}");
            return Err(ReloadError::Apply(format!(
                "{why} (applied before the failure: started {:?}, restarted {:?})",
                reply.started, reply.restarted
            )));
        }
        *self.tenants.write() = tenants;
        *self.admins.write() = config.settings.admin_list();
        *self.quotas.write() =
            Arc::new(crate::quota::Registry::new(config.settings.quotas.clone()));
        tracing::info!(?reply, "configuration reloaded");
        Ok(reply)
    }

    /// Hot-restarts module `name`, from `binary` when given (an upgrade).
    pub async fn restart_module(
        &self,
        name: &str,
        binary: Option<PathBuf>,
    ) -> Result<u32, RestartError> {
        let _one_at_a_time = self.admin_lock.lock().await;
        let slot = self
            .module_named(name)
            .ok_or_else(|| RestartError::NoSuchModule(name.to_string()))?;
        let mut spec = slot.spec();
        if let Some(binary) = binary {
            trusted_binary(&binary).map_err(RestartError::Failed)?;
            spec.binary = binary;
        }
        slot.restart(Some(spec)).await.map_err(RestartError::Failed)
    }

    /// Stops every module in reverse start order, each drained before the next.
    pub async fn stop_modules(&self) {
        let modules: Vec<Arc<ModuleSlot>> = self.modules.read().clone();
        for slot in modules.iter().rev() {
            slot.stop().await;
        }
    }
}

/// Refuses an upgrade binary that someone other than root or the daemon's own
/// user could have written: the module would run it with the daemon's
/// authority over the module's data. The file must be a regular file owned by
/// root or the daemon's uid, writable by its owner alone.
pub fn trusted_binary(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("upgrade binary {}: {e}", path.display()))?;
    let own = nix::unistd::geteuid().as_raw();
    if !meta.is_file() {
        return Err(format!(
            "upgrade binary {} is not a regular file",
            path.display()
        ));
    }
    if meta.uid() != 0 && meta.uid() != own {
        return Err(format!(
            "upgrade binary {} is owned by uid {}, not by root or the daemon's uid {own}",
            path.display(),
            meta.uid()
        ));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(format!(
            "upgrade binary {} is writable by its group or others (mode {:o})",
            path.display(),
            meta.mode() & 0o7777
        ));
    }
    Ok(())
}
