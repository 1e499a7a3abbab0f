//! Turning a loaded configuration into child specs: which modules run, with
//! which components, binaries, directories and limits. Used at boot and reload.

use std::path::{Path, PathBuf};
use std::time::Duration;

use mecha_abi::msg::ComponentSpec;
use mecha_abi::Family;

use mecha_metadata::{FILE_FIELDS, SCOPE_TENANTS};

use crate::childspec::{ChildSpec, Start};
use crate::config::{Config, RunAs};

/// Directories fixed at start-up (flags win over the configuration file).
#[derive(Clone, Debug)]
pub struct Paths {
    /// Parent of every module's data directory.
    pub data_dir: PathBuf,
    /// Where `mecha-mod-*` binaries are found by default.
    pub module_dir: PathBuf,
    /// The directory of mecha's socket, where a personality's Unix socket
    /// goes by default.
    pub socket_dir: PathBuf,
}

/// Module names that have a module binary today, for error messages.
const KNOWN: &str =
    "state, pubsub, lock, sequencer, secretstores, configuration, invoke, bindings, personality";

/// The module serving components whose `spec.type` starts with `prefix`
/// (Dapr's component families), and its capability family; a personality
/// (`personality.dapr`, the Dapr API) serves no family.
pub fn module_for_prefix(prefix: &str) -> Option<(&'static str, Option<Family>)> {
    let family = match prefix {
        "personality" => return Some(("dapr", None)),
        "state" => ("state", Family::State),
        "lock" => ("lock", Family::Lock),
        "pubsub" => ("pubsub", Family::PubSub),
        "sequencer" => ("sequencer", Family::Sequencer),
        "secretstores" => ("secrets", Family::Secrets),
        "configuration" => ("config", Family::Configuration),
        "invoke" => ("invoke", Family::Invoke),
        "bindings" => ("bindings", Family::Bindings),
        _ => return None,
    };
    Some((family.0, Some(family.1)))
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
        "bindings",
        "personality",
    ]
    .iter()
    .filter_map(|p| module_for_prefix(p))
    .any(|(name, _)| name == module)
}

/// When module `name` serves: its own `start`, else the daemon's
/// `moduleStart`, else eager. Two kinds of module must be up while nobody
/// calls them, so they are eager under `moduleStart: lazy` and may not be made
/// lazy: an invoke module that other nodes reach (its component names peers,
/// a DNS name or a listen address), and a bindings module with an input
/// binding, whose events (cron ticks, stream entries) arrive while no
/// application is connected and are kept for the tenants that subscribed.
fn start_of(
    name: &str,
    own: Option<Start>,
    default: Option<Start>,
    components: &[ComponentSpec],
) -> Result<Start, String> {
    let has_field = |c: &ComponentSpec, fields: &[&str]| {
        c.metadata
            .iter()
            .any(|(field, _)| fields.iter().any(|n| field.eq_ignore_ascii_case(n)))
    };
    let always_up = match name {
        "invoke"
            if components
                .iter()
                .any(|c| has_field(c, &["peers", "dnsName", "listenAddress"])) =>
        {
            Some("an invoke module with peers, dnsName or listenAddress is called by other nodes")
        }
        "bindings"
            if components.iter().any(|c| {
                c.kind == "bindings.cron"
                    || (c.kind == "bindings.redis" && has_field(c, &["stream"]))
            }) =>
        {
            Some(
                "a bindings module with an input binding receives events while nobody is connected",
            )
        }
        "dapr" if components.iter().any(|c| has_field(c, &["appCallbacks"])) => Some(
            "a Dapr personality with appCallbacks registers those apps for callers of any kind",
        ),
        _ => None,
    };
    match (own, always_up) {
        (Some(Start::Lazy), Some(why)) => Err(format!(
            "modules.{name}.start: lazy: {why} and must start with the daemon"
        )),
        (Some(start), _) => Ok(start),
        (None, Some(_)) => Ok(Start::Eager),
        (None, None) => Ok(default.unwrap_or_default()),
    }
}

/// One child spec per capability family that has components, in first-seen
/// order. Creates each module's data directory.
pub fn child_specs(
    config: &Config,
    paths: &Paths,
) -> Result<Vec<(Option<Family>, ChildSpec)>, String> {
    let mut specs = Vec::new();
    for (prefix, components) in config.families() {
        let Some((name, family)) = module_for_prefix(&prefix) else {
            let names: Vec<&str> = components.iter().map(|c| c.name.as_str()).collect();
            return Err(format!(
                "components {names:?}: no module serves the {prefix:?} component family (known: {KNOWN})"
            ));
        };
        let name = name.to_string();
        let components = with_scopes(components, config, family)?;
        let components = match family {
            Some(Family::Invoke) => with_tenant_app_ids(components, config),
            _ => components,
        };
        let personality = personality_of(&name, &components, paths)?;
        let mut components = without_tokens(components);
        if personality.is_some() {
            if let Some(first) = components.first_mut() {
                first.metadata.push((
                    mecha_metadata::PERSONALITY_CATALOG.to_owned(),
                    catalog(config),
                ));
            }
        }
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
        // The directory exists before its user is chosen, which looks at
        // whether other users can reach it.
        std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("creating data directory {}: {e}", data_dir.display()))?;
        let user = module_user(
            settings.user,
            config.settings.module_user,
            &components,
            &data_dir,
        );
        private_dir(&data_dir, user)?;
        let env_prefixes = env_prefixes(&components);
        let binary = settings
            .binary
            .unwrap_or_else(|| paths.module_dir.join(format!("mecha-mod-{name}")));
        let start = start_of(
            &name,
            settings.start,
            config.settings.module_start,
            &components,
        )?;
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
                    user,
                },
                env_prefixes,
                start,
                personality,
            },
        ));
    }
    if let Some(unknown) = config.settings.modules.keys().find(|m| !is_module(m)) {
        return Err(format!(
            "Configuration spec.modules.{unknown}: no such module (known: state, pubsub, lock, sequencer, secrets, config, invoke, bindings, dapr)"
        ));
    }
    Ok(specs)
}

/// Where the Dapr personality listens: one `personality.dapr` component
/// (two would fight over the same sockets).
fn personality_of(
    name: &str,
    components: &[ComponentSpec],
    paths: &Paths,
) -> Result<Option<std::sync::Arc<crate::personality::Listen>>, String> {
    if name != "dapr" {
        return Ok(None);
    }
    let [only] = components else {
        return Err(format!(
            "{} personality.dapr components: the Dapr personality takes one",
            components.len()
        ));
    };
    if !only
        .kind
        .eq_ignore_ascii_case(crate::personality::DAPR_TYPE)
    {
        return Err(format!(
            "component {:?}: type {:?} is not a personality mecha has (personality.dapr)",
            only.name, only.kind
        ));
    }
    crate::personality::Listen::from_component(only, &paths.socket_dir)
        .map(|l| Some(std::sync::Arc::new(l)))
}

/// What a personality may tell a tenant about the node (Dapr's GetMetadata):
/// every component with its type, and who may use it — `tenants`, when
/// not every tenant may (the tenants its `scopes` admit, or its
/// `allowedTenants`; secret stores and bindings that reach outside mecha
/// admit none without them) — and each tenant's allow list and app ids.
/// JSON, for the module to filter by the caller's tenant.
fn catalog(config: &Config) -> String {
    let components: Vec<serde_json::Value> = config
        .components
        .iter()
        .filter(|c| !c.kind.starts_with("personality."))
        .map(|c| {
            let allowed = c
                .metadata
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("allowedTenants"))
                .map(|(_, v)| {
                    v.split(',')
                        .map(|t| t.trim().to_owned())
                        .collect::<Vec<_>>()
                });
            let scoped = config.scopes.get(&c.name).map(|scopes| {
                scope_tenants(config, scopes)
                    .into_iter()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            });
            let closed_by_default = c.kind.starts_with("secretstores.")
                || (c.kind.starts_with("bindings.") && c.kind != "bindings.cron");
            let tenants = match (allowed, scoped) {
                (Some(a), _) if a.iter().any(|t| t == "*") => None,
                (Some(mut a), Some(s)) => {
                    a.extend(s);
                    Some(a)
                }
                (Some(a), None) | (None, Some(a)) => Some(a),
                (None, None) if closed_by_default => Some(Vec::new()),
                (None, None) => None,
            };
            serde_json::json!({"name": c.name, "type": c.kind, "tenants": tenants})
        })
        .collect();
    let rules = &config.settings.tenants;
    let allow: serde_json::Map<String, serde_json::Value> = rules
        .iter()
        .filter_map(|t| Some((t.name.clone(), serde_json::json!(t.allow.as_ref()?))))
        .collect();
    let app_ids: serde_json::Map<String, serde_json::Value> = rules
        .iter()
        .filter_map(|t| Some((t.name.clone(), serde_json::json!(t.app_ids.as_ref()?))))
        .collect();
    serde_json::json!({"components": components, "allow": allow, "appIds": app_ids}).to_string()
}

/// The tenants a component's Dapr `scopes` admit: those whose `appIds`
/// name one of the scoped app ids.
fn scope_tenants<'a>(config: &'a Config, scopes: &[String]) -> Vec<&'a str> {
    config
        .settings
        .tenants
        .iter()
        .filter(|t| {
            t.app_ids
                .as_ref()
                .is_some_and(|ids| ids.iter().any(|id| scopes.contains(id)))
        })
        .map(|t| t.name.as_str())
        .collect()
}

/// The components as the module gets them: without the API tokens, which
/// only mechad needs (it maps a caller's token to a tenant).
fn without_tokens(mut components: Vec<ComponentSpec>) -> Vec<ComponentSpec> {
    for c in &mut components {
        c.metadata
            .retain(|(k, _)| !k.eq_ignore_ascii_case(crate::personality::TOKENS_FIELD));
    }
    components
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

/// Hands each component's Dapr `scopes` to its module as the tenants they
/// admit (`SCOPE_TENANTS`): the tenants whose `appIds` list names one of the
/// scoped app ids. An app id registered at run time does not count: any
/// tenant may register a free app id, so it proves nothing about who may use
/// a component. The invoke module's component has no scopes: its access
/// control decides who calls whom.
fn with_scopes(
    mut components: Vec<ComponentSpec>,
    config: &Config,
    family: Option<Family>,
) -> Result<Vec<ComponentSpec>, String> {
    for component in &mut components {
        let Some(scopes) = config.scopes.get(&component.name) else {
            continue;
        };
        if family == Some(Family::Invoke) {
            return Err(format!(
                "component {:?}: scopes do not apply to invoke.mesh; its accessControl decides who may call whom",
                component.name
            ));
        }
        let tenants = scope_tenants(config, scopes);
        component
            .metadata
            .push((SCOPE_TENANTS.to_owned(), tenants.join(",")));
    }
    Ok(components)
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

/// The uid and gid a module runs as; `None` keeps the daemon's own.
///
/// Only a root daemon can choose: then a module runs as its own `user`, or
/// else as the unprivileged module user (`moduleUser`, the system user
/// `mecha`, or `nobody`) — unless one of its components names a file
/// outside its data directory, which is the operator's and often readable by
/// root alone; such a module keeps root's uid, still without capabilities
/// (see `spawn.rs`), until the operator gives it a `user` who can read it.
fn module_user(
    own: Option<RunAs>,
    default: Option<RunAs>,
    components: &[mecha_abi::msg::ComponentSpec],
    data_dir: &Path,
) -> Option<(u32, u32)> {
    if let Some(u) = own {
        return Some((u.uid, u.gid));
    }
    if !nix::unistd::geteuid().is_root() {
        return None;
    }
    let names_files = components
        .iter()
        .flat_map(|c| c.metadata.iter())
        .filter(|(k, _)| FILE_FIELDS.iter().any(|f| k.eq_ignore_ascii_case(f)))
        .any(|(_, v)| Path::new(v).is_absolute() && !Path::new(v).starts_with(data_dir));
    if names_files {
        return Some((0, 0));
    }
    if let Some(blocked) = unsearchable_ancestor(data_dir) {
        tracing::warn!(
            data_dir = %data_dir.display(),
            "{} is not searchable by other users, so an unprivileged module user could not reach its data; the module keeps the daemon's uid (without capabilities)",
            blocked.display()
        );
        return Some((0, 0));
    }
    Some(default.map_or_else(unprivileged, |u| (u.uid, u.gid)))
}

/// The first directory above `dir` that users other than its owner may not
/// search (no `o+x`), if any: a module running as another user could not
/// reach its data directory through it.
fn unsearchable_ancestor(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    dir.ancestors()
        .skip(1)
        .filter(|p| !p.as_os_str().is_empty())
        .find(|p| {
            std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o001 == 0)
                .unwrap_or(true)
        })
        .map(Path::to_path_buf)
}

/// The system user `mecha` if the machine has one, else `nobody`.
fn unprivileged() -> (u32, u32) {
    match nix::unistd::User::from_name("mecha") {
        Ok(Some(u)) => (u.uid.as_raw(), u.gid.as_raw()),
        _ => (NOBODY, NOBODY),
    }
}

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// Makes a module's (existing) data directory readable only by its owner
/// (0700), and hands it, with everything in it, to the module's user, so
/// modules cannot read each other's data and a module whose user changed
/// still owns files an earlier instance made.
fn private_dir(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| format!("restricting data directory {}: {e}", dir.display()))?;
    if let Some((uid, gid)) = owner {
        chown_tree(dir, uid, gid, 8)
            .map_err(|e| format!("handing data directory {} to uid {uid}: {e}", dir.display()))?;
    }
    Ok(())
}

/// Hands `path` and what is beneath it (to `depth` levels) to `uid`/`gid`,
/// without following symbolic links.
fn chown_tree(path: &Path, uid: u32, gid: u32, depth: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    if depth == 0 || !std::fs::symlink_metadata(path)?.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(path)? {
        chown_tree(&entry?.path(), uid, gid, depth - 1)?;
    }
    Ok(())
}
