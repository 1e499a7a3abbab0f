//! OTP's child spec: everything needed to start one module, and when it is
//! started again. Built from the configuration (`plan`), kept by the module's
//! supervisor slot.

use std::path::PathBuf;
use std::time::Duration;

use mecha_abi::msg::ComponentSpec;

use crate::spawn::Confinement;

/// When a module that exited is started again (OTP's restart types).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Restart {
    /// Always restarted.
    #[default]
    Permanent,
    /// Restarted only after an abnormal exit (a signal or a non-zero code).
    Transient,
    /// Never restarted.
    Temporary,
}

/// When a module's first instance serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Start {
    /// At daemon start, and from then on.
    #[default]
    Eager,
    /// At the first request for it. The daemon still starts it once at boot
    /// to check its components (a configuration error stops the start, as
    /// for an eager module), then lets it exit until a request needs it: a
    /// node pays memory only for the capabilities its applications use.
    Lazy,
}

/// Everything needed to start one module: OTP's child spec.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildSpec {
    /// Module name, e.g. `state`.
    pub name: String,
    /// The executable.
    pub binary: PathBuf,
    /// The module's private data directory.
    pub data_dir: PathBuf,
    /// Components the module serves; the first is the default.
    pub components: Vec<ComponentSpec>,
    /// Restart type.
    pub restart: Restart,
    /// How long a draining instance may take before it is killed.
    pub shutdown_timeout: Duration,
    /// Limits and identity of the module process.
    pub confine: Confinement,
    /// Prefixes of the daemon's environment variables the module's
    /// components read (a `secretstores.local.env` store's `prefix`); the
    /// module sees these and the daemon's own `MECHA_*` settings, nothing
    /// else of the daemon's environment.
    pub env_prefixes: Vec<String>,
    /// Whether it serves from daemon start or from its first request.
    pub start: Start,
    /// For a personality (the Dapr API), where it listens and which apps
    /// it may serve calls for; `None` for a capability module.
    pub personality: Option<std::sync::Arc<crate::personality::Listen>>,
}
