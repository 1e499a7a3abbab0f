//! Turning a loaded configuration into child specs: which modules run, with
//! which components, binaries, directories and limits. Used at boot and reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mecha_abi::Family;

use crate::childspec::ChildSpec;
use crate::config::Config;

/// Directories fixed at start-up (flags win over the configuration file).
#[derive(Clone, Debug)]
pub struct Paths {
    /// Parent of every module's data directory.
    pub data_dir: PathBuf,
    /// Where `mecha-mod-*` binaries are found by default.
    pub module_dir: PathBuf,
}

/// Module names that have a module binary today, for error messages.
const KNOWN: &str = "state, pubsub, lock, sequencer, secretstores, configuration, invoke";

/// The module serving components whose `spec.type` starts with `prefix`
/// (Dapr's component families), and its capability family.
pub fn module_for_prefix(prefix: &str) -> Option<(&'static str, Family)> {
    match prefix {
        "state" => Some(("state", Family::State)),
        "lock" => Some(("lock", Family::Lock)),
        "pubsub" => Some(("pubsub", Family::PubSub)),
        "sequencer" => Some(("sequencer", Family::Sequencer)),
        "secretstores" => Some(("secrets", Family::Secrets)),
        "configuration" => Some(("config", Family::Configuration)),
        "invoke" => Some(("invoke", Family::Invoke)),
        _ => None,
    }
}

/// The secrets module's data directory under `data_dir`, against which secret
/// stores resolve relative paths (also when the daemon reads a secret for a
/// `secretKeyRef`).
pub fn secrets_data_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets")
}

/// Whether `module` names a module (for `spec.modules` keys).
fn is_module(module: &str) -> bool {
    [
        "state",
        "pubsub",
        "lock",
        "sequencer",
        "secretstores",
        "configuration",
        "invoke",
    ]
    .iter()
    .filter_map(|p| module_for_prefix(p))
    .any(|(name, _)| name == module)
}

/// One child spec per capability family that has components, in first-seen
/// order. Creates each module's data directory.
pub fn child_specs(config: &Config, paths: &Paths) -> Result<Vec<(Family, ChildSpec)>, String> {
    let mut specs = Vec::new();
    for (prefix, components) in config.families() {
        let Some((name, family)) = module_for_prefix(&prefix) else {
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "components {names:?}: no module serves the {prefix:?} component family (known: {KNOWN})"
            ));
        };
        let name = name.to_string();
        let components = match family {
            Family::Invoke => with_tenant_app_ids(components, config),
            _ => components,
        };
        let settings = config
            .settings
            .modules
            .get(&name)
            .cloned()
            .unwrap_or_default();
        let data_dir = if name == "secrets" {
            secrets_data_dir(&paths.data_dir)
        } else {
            paths.data_dir.join(&name)
        };
        private_dir(&data_dir, settings.user.map(|u| (u.uid, u.gid)))?;
        let env_prefixes = env_prefixes(&components);
        let binary = settings
            .binary
            .unwrap_or_else(|| paths.module_dir.join(format!("mecha-mod-{name}")));
        specs.push((
            family,
            ChildSpec {
                name,
                binary,
                data_dir,
                components,
                restart: settings.restart.unwrap_or_default(),
                shutdown_timeout: Duration::from_millis(
                    settings.shutdown_timeout_ms.unwrap_or(5000),
                ),
                confine: crate::spawn::Confinement {
                    memory_limit_mb: settings.memory_limit_mb,
                    open_files: settings.open_files,
                    user: settings.user.map(|u| (u.uid, u.gid)),
                },
                env_prefixes,
            },
        ));
    }
    if let Some(unknown) = config.settings.modules.keys().find(|m| !is_module(m)) {
        return Err(format!(
            "Configuration spec.modules.{unknown}: no such module (known: state, pubsub, lock, sequencer, secrets, config, invoke)"
        ));
    }
    Ok(specs)
}

/// The environment prefixes `components` read: each environment secret
/// store's `prefix` (the store refuses to start without one).
fn env_prefixes(components: &[mecha_abi::msg::ComponentSpec]) -> Vec<String> {
    components
        .iter()
        .filter(|c| c.kind == "secretstores.local.env")
        .flat_map(|c| c.metadata.iter())
        .filter(|(k, v)| k.eq_ignore_ascii_case("prefix") && !v.is_empty())
        .map(|(_, v)| v.clone())
        .collect()
}

/// Hands the tenants' `appIds` allow lists to the invoke module, which
/// enforces them, as the metadata item `tenantAppIds` of its first component:
/// a JSON object from tenant name to app ids. Tenants without a list are
/// absent (they may claim any app id another tenant does not hold).
fn with_tenant_app_ids(
    mut components: Vec<mecha_abi::msg::ComponentSpec>,
    config: &Config,
) -> Vec<mecha_abi::msg::ComponentSpec> {
    let lists: std::collections::BTreeMap<&str, &Vec<String>> = config
        .settings
        .tenants
        .iter()
        .filter_map(|t| t.app_ids.as_ref().map(|ids| (t.name.as_str(), ids)))
        .collect();
    if let (Some(first), false) = (components.first_mut(), lists.is_empty()) {
        let json = serde_json::to_string(&lists).unwrap_or_default();
        first.metadata.push(("tenantAppIds".into(), json));
    }
    components
}

/// Creates a module's data directory readable only by its owner (0700), and
/// hands it to the module's user when it runs as one, so modules cannot read
/// each other's data.
fn private_dir(dir: &std::path::Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("creating data directory {}: {e}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("restricting data directory {}: {e}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(dir, Some(uid), Some(gid))
            .map_err(|e| format!("handing data directory {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok(())
}
