//! The state shared by every connection: limits, tenant rules, and the module
//! slots indexed by capability family.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mecha_abi::msg::StatusReply;
use mecha_abi::Family;

use crate::peer::Tenants;
use crate::supervisor::ModuleSlot;

/// Everything a connection needs to serve requests.
pub struct Daemon {
    /// Largest payload accepted from applications.
    pub max_frame: u32,
    /// Deadline applied to requests that carry none.
    pub default_timeout: Duration,
    /// Requests one connection may have in flight.
    pub max_in_flight: u32,
    /// Peer → tenant mapping.
    pub tenants: Tenants,
    /// Modules in start order.
    pub modules: Vec<Arc<ModuleSlot>>,
    /// When the daemon started, for uptime.
    pub started: Instant,
}

impl Daemon {
    /// The module serving `family`, if one is configured.
    pub fn module_for(&self, family: Family) -> Option<&Arc<ModuleSlot>> {
        self.modules.iter().find(|m| m.family == family)
    }

    /// The STATUS reply: version, uptime and per-module state.
    pub fn status(&self) -> StatusReply {
        StatusReply {
            daemon_version: env!("CARGO_PKG_VERSION").to_string(),
            pid: std::process::id(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            modules: self.modules.iter().map(|m| m.status()).collect(),
        }
    }
}
