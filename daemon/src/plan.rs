//! Turning a loaded configuration into child specs: which modules run, with
//! which components, binaries, directories and limits. Used at boot and reload.

use std::path::PathBuf;
use std::time::Duration;

use mecha_abi::Family;

use crate::config::Config;
use crate::supervisor::ChildSpec;

/// Directories fixed at start-up (flags win over the configuration file).
#[derive(Clone, Debug)]
pub struct Paths {
    /// Parent of every module's data directory.
    pub data_dir: PathBuf,
    /// Where `mecha-mod-*` binaries are found by default.
    pub module_dir: PathBuf,
}

/// The capability family a module name serves.
pub fn family_of(module: &str) -> Option<Family> {
    match module {
        "state" => Some(Family::State),
        _ => None,
    }
}

/// One child spec per capability family that has components, in first-seen
/// order. Creates each module's data directory.
pub fn child_specs(config: &Config, paths: &Paths) -> Result<Vec<(Family, ChildSpec)>, String> {
    let mut specs = Vec::new();
    for (name, components) in config.families() {
        let Some(family) = family_of(&name) else {
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "components {names:?}: no module serves the {name:?} family (known: state)"
            ));
        };
        let settings = config
            .settings
            .modules
            .get(&name)
            .cloned()
            .unwrap_or_default();
        let data_dir = paths.data_dir.join(&name);
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("creating data directory {}: {e}", data_dir.display()))?;
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
                memory_limit_mb: settings.memory_limit_mb,
            },
        ));
    }
    if let Some(unknown) = config
        .settings
        .modules
        .keys()
        .find(|m| family_of(m).is_none())
    {
        return Err(format!(
            "Configuration spec.modules.{unknown}: no such module (known: state)"
        ));
    }
    Ok(specs)
}
