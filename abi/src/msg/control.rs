//! Payloads of the control family, answered by the daemon itself.

use serde::{Deserialize, Serialize};

/// The payload of every non-OK response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// A human-readable explanation, naming the key, limit or module involved.
    pub message: String,
}

/// HELLO request: the versions the client can speak.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Lowest ABI version the client speaks.
    pub min_version: u8,
    /// Highest ABI version the client speaks.
    pub max_version: u8,
    /// Free-form client name and version, for logs.
    pub client: String,
}

/// HELLO response: what was agreed and who the daemon thinks the caller is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The version every later frame on this connection uses.
    pub version: u8,
    /// The daemon's software version.
    pub daemon_version: String,
    /// The tenant the kernel-verified peer credentials mapped to.
    pub tenant: String,
    /// The largest payload the daemon accepts on this connection.
    pub max_frame: u32,
}

/// STATUS response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The daemon's software version.
    pub daemon_version: String,
    /// The daemon's process id.
    pub pid: u32,
    /// Milliseconds since the daemon started.
    pub uptime_ms: u64,
    /// One entry per module, in start order.
    pub modules: Vec<ModuleStatus>,
}

/// One module in a STATUS response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleStatus {
    /// Module name, e.g. `state`.
    pub name: String,
    /// Process id of the current instance, 0 when none runs.
    pub pid: u32,
    /// `idle` (a lazy module before its first request, which starts it),
    /// `starting`, `running`, `restarting`, `backoff` (crash-looping: the
    /// next try is delayed, requests are answered UNAVAILABLE) or `stopped`.
    pub state: String,
    /// How many times the module was restarted since the daemon started.
    pub restarts: u32,
    /// Names of the components this module serves.
    pub components: Vec<String>,
}

/// MODULE_RESTART request (admin only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRestartRequest {
    /// The module to restart, e.g. `state`.
    pub module: String,
    /// A new executable to run (an upgrade); none restarts the current one.
    pub binary: Option<String>,
}

/// MODULE_RESTART response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleRestartReply {
    /// Process id of the new instance, which now serves every new request.
    pub pid: u32,
}

/// DAEMON_UPGRADE request (admin only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonUpgradeRequest {
    /// The mechad executable to start; none starts the one the running
    /// daemon was started from (after a package upgrade replaced it).
    pub binary: Option<String>,
}

/// DAEMON_UPGRADE response, sent once the new daemon is ready and the
/// hand-over begins; the connection then moves to the new daemon with
/// every other one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonUpgradeReply {
    /// The daemon answering, which hands over.
    pub old_pid: u32,
    /// The daemon taking over.
    pub new_pid: u32,
}

/// RELOAD response: what changed, by module name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReply {
    /// Modules that did not run before and were started.
    pub started: Vec<String>,
    /// Modules whose components or settings changed, hot-restarted.
    pub restarted: Vec<String>,
    /// Modules no longer configured, drained and stopped.
    pub stopped: Vec<String>,
    /// Modules left untouched.
    pub unchanged: Vec<String>,
}

/// STREAM_CANCEL request: end a stream this connection opened. The daemon
/// answers OK at once; the stream's END frame follows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCancel {
    /// The stream id: the request id of the request that opened it.
    pub stream_id: u32,
}
