//! Loading the daemon's YAML configuration: Dapr-shaped `Component` documents
//! and one optional `Configuration` document, from a file or a directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use mecha_abi::msg::ComponentSpec;
use serde::Deserialize;

/// API versions accepted on documents: Dapr's, so Dapr files load unchanged,
/// and mecha's own.
const API_VERSIONS: [&str; 2] = ["dapr.io/v1alpha1", "mecha.io/v1alpha1"];

/// Why the configuration could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or directory could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// What was being read.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or does not match its schema.
    #[error("{path}: document {doc}{name}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based document index within the file.
        doc: usize,
        /// ` (name "x")` when the document's metadata.name is known.
        name: String,
        /// What is wrong, naming the field.
        message: String,
    },
    /// Two components share a name.
    #[error("{path}: component {name:?} is defined twice")]
    Duplicate {
        /// The file of the second definition.
        path: PathBuf,
        /// The repeated name.
        name: String,
    },
    /// Two `Configuration` documents were given.
    #[error("{path}: a second Configuration document; only one is allowed")]
    SecondConfiguration {
        /// The file of the second document.
        path: PathBuf,
    },
}

/// Daemon-wide settings from the `Configuration` document (`spec`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Settings {
    /// Socket path; `--socket` and `MECHA_SOCKET` take precedence.
    pub socket_path: Option<PathBuf>,
    /// Socket file mode as an octal string such as "0660"; default "0666".
    pub socket_mode: Option<String>,
    /// Data directory; `--data-dir` takes precedence.
    pub data_dir: Option<PathBuf>,
    /// Directory holding the `mecha-mod-*` binaries; default: beside `mechad`.
    pub module_dir: Option<PathBuf>,
    /// Largest accepted payload in bytes; default 4 MiB, at most 64 MiB.
    pub max_frame_bytes: Option<u32>,
    /// Deadline for requests that carry none; default 5000 ms.
    pub default_timeout_ms: Option<u32>,
    /// Requests one connection may have in flight; default 256.
    pub max_in_flight_per_connection: Option<u32>,
    /// Restart intensity: more than `max_restarts` crashes within
    /// `restart_window_secs` make a module back off (restarts at most every
    /// 30 s, requests answered UNAVAILABLE meanwhile); it is never given up
    /// on. Defaults 5 and 30.
    pub max_restarts: Option<u32>,
    /// See `max_restarts`.
    pub restart_window_secs: Option<u64>,
    /// Tenant rules, first match wins; unmatched peers are their pod's tenant
    /// (`pod:<uid>`) or their uid's (`uid:<uid>`).
    #[serde(default)]
    pub tenants: Vec<TenantRule>,
    /// Additional listening sockets, each with its own path, mode and owner;
    /// tenant rules can match the socket a peer connected to.
    #[serde(default)]
    pub sockets: Vec<ExtraSocket>,
    /// A YAML list of `{uid, namespace, name}` pods, so tenant rules can name
    /// pods as `namespace/name` (the pod UID comes from the peer's cgroup).
    pub pods_file: Option<PathBuf>,
    /// `allow` (default): a peer no rule matches is its own tenant,
    /// `pod:<uid>` in a pod or `uid:<uid>`; `deny`: it is refused with
    /// PERMISSION_DENIED.
    pub default_tenant: Option<DefaultTenant>,
    /// Who may restart, upgrade and reload besides the defaults (see
    /// [`Admins`]).
    #[serde(default)]
    pub admins: Admins,
    /// Peer uids allowed to restart, upgrade and reload: the older spelling
    /// of `admins.uids`, merged into it.
    #[serde(default)]
    pub admin_uids: Vec<u32>,
    /// How often modules are health-pinged; default 1000 ms.
    pub health_interval_ms: Option<u64>,
    /// A module silent for this long is killed and restarted; default 3000 ms.
    pub health_timeout_ms: Option<u64>,
    /// Per-tenant quotas (connections, in-flight, rate, payload size, bytes
    /// queued unread).
    #[serde(default)]
    pub quotas: crate::quota::Quotas,
    /// The user modules run as when the daemon is root and a module has no
    /// `user` of its own. Default: the system user `mecha` if there is one,
    /// else `nobody` (65534). A module whose components name files outside
    /// its data directory (a secrets file, TLS keys, a configuration file)
    /// keeps the daemon's uid, without capabilities, unless it has a `user`.
    pub module_user: Option<RunAs>,
    /// Per-module child-spec settings, keyed by module name (`state`, ...).
    #[serde(default)]
    pub modules: BTreeMap<String, ModuleSettings>,
    /// When modules without a `start` of their own serve: `eager` (the
    /// default) or `lazy`. A networked invoke module (peers, dnsName or
    /// listenAddress) stays eager under `lazy`: other nodes call it; so does a
    /// bindings module with an input binding, whose events arrive while
    /// nobody is connected.
    pub module_start: Option<crate::childspec::Start>,
    /// The local HTTP endpoint for probes and metrics (`--http` wins).
    pub http: Option<HttpSettings>,
    /// Span export over OTLP/HTTP JSON (`--otlp-endpoint` wins). Off when absent.
    pub tracing: Option<TracingSettings>,
}

/// The `admins` section: the explicit list of who may run admin operations
/// (MODULE_RESTART, RELOAD). Besides it, only the daemon's own uid (when it
/// is not root) and root in the daemon's own mount namespace (an operator on
/// the host of a systemd daemon, or `kubectl exec` into mechad's pod) are
/// admins: root in another container is not.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Admins {
    /// Peer uids (listing 0 makes every root an admin, in any container).
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Tenant names (from the tenant rules: a socket only operators can
    /// reach, a pod, a group).
    #[serde(default)]
    pub tenants: Vec<String>,
}

impl Settings {
    /// The admins the configuration names, `adminUids` merged in.
    pub fn admin_list(&self) -> Admins {
        let mut admins = self.admins.clone();
        admins.uids.extend(self.admin_uids.iter().copied());
        admins
    }
}

/// The `tracing` section: where and how much to export.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TracingSettings {
    /// The collector's OTLP/HTTP base URL, `http://host:port` (spans are
    /// POSTed to `<endpoint>/v1/traces`). Absent or empty: no export.
    pub otlp_endpoint: Option<String>,
    /// Fraction of root spans (requests without a sampled trace context)
    /// exported, 0.0 to 1.0. Default 1.0. A request's own sampled flag wins.
    pub sample_rate: Option<f64>,
}

/// The `http` section: where `/healthz`, `/readyz` and `/metrics` are served.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpSettings {
    /// `host:port` such as `127.0.0.1:9464`, or `off`. Default: off, except
    /// `0.0.0.0:9464` inside a Kubernetes pod.
    pub address: Option<String>,
    /// Whether the node dashboard is served at `/` (default true). It is
    /// shown only to peers on the loopback interface unless
    /// `dashboardTokenFile` is set.
    pub dashboard: Option<bool>,
    /// A file holding a token (its first line) that admits a browser from
    /// anywhere to the dashboard, as an admin: `Authorization: Bearer
    /// <token>`, or `/#token=<token>` in the address, which the page sends so.
    pub dashboard_token_file: Option<PathBuf>,
}

/// One module's child-spec settings.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModuleSettings {
    /// `permanent` (default), `transient` or `temporary`.
    pub restart: Option<crate::childspec::Restart>,
    /// `eager` (default: `moduleStart`) or `lazy`.
    pub start: Option<crate::childspec::Start>,
    /// How long a draining instance may take; default 5000 ms.
    pub shutdown_timeout_ms: Option<u64>,
    /// Address-space limit in MiB (RLIMIT_AS); none by default.
    pub memory_limit_mb: Option<u64>,
    /// Open-file limit (RLIMIT_NOFILE); inherited by default.
    pub open_files: Option<u64>,
    /// Run the module as this user (numeric uid and gid); the daemon must be
    /// root. Its data directory is handed to that user.
    pub user: Option<RunAs>,
    /// The executable; default `<moduleDir>/mecha-mod-<name>`.
    pub binary: Option<PathBuf>,
}

/// A listening socket besides the main one.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtraSocket {
    /// Its path.
    pub path: PathBuf,
    /// Its file mode as an octal string; default "0666".
    pub mode: Option<String>,
    /// Its owner; default the daemon's user.
    pub owner: Option<RunAs>,
}

/// What happens to a peer that no tenant rule matches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultTenant {
    /// It becomes its own tenant: `pod:<uid>` in a pod, else `uid:<uid>`.
    #[default]
    Allow,
    /// It is refused.
    Deny,
}

/// A numeric uid and gid to run a module as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAs {
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
}

/// Maps kernel-verified peer credentials to a named tenant.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRule {
    /// The tenant name.
    pub name: String,
    /// Peer uids that belong to the tenant.
    #[serde(default)]
    pub uids: Vec<u32>,
    /// Peer gids (primary group) that belong to the tenant.
    #[serde(default)]
    pub gids: Vec<u32>,
    /// Peers that connected through one of these sockets belong to the tenant.
    #[serde(default)]
    pub sockets: Vec<PathBuf>,
    /// Kubernetes pods (by the pod UID in the peer's cgroup): a pod UID, or
    /// `namespace/name` looked up in `podsFile`.
    #[serde(default)]
    pub pods: Vec<String>,
    /// Operations the tenant may use: family names (`state`, `pubsub`, ...,
    /// also written `state.*`) or opcode names (`STATE_GET`, any case).
    /// Absent: everything. Control operations (HELLO, PING, STATUS) are always
    /// allowed; admin ones follow `admins`.
    pub allow: Option<Vec<String>>,
    /// App ids the tenant may register as, and call as (INVOKE's
    /// `caller_app_id`). Absent: any app id not held by another tenant.
    #[serde(rename = "appIds")]
    pub app_ids: Option<Vec<String>>,
}

/// The loaded configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Components in load order.
    pub components: Vec<ComponentSpec>,
    /// Daemon-wide settings.
    pub settings: Settings,
    /// Metadata values to fetch from a secret store before the components
    /// are handed to their modules (Dapr's `secretKeyRef`), see
    /// `crate::secret_ref`. Their placeholders in `components` are empty.
    pub secret_refs: Vec<SecretRef>,
    /// Dapr's `scopes` of each component that has them, by component name:
    /// the app ids that may use it. `plan.rs` turns them into the tenants
    /// that hold those app ids.
    pub scopes: BTreeMap<String, Vec<String>>,
}

/// A metadata value that names a secret instead of holding a value:
/// `secretKeyRef: {name, key}`, read from the component's `auth.secretStore`
/// (or, without one, from the first secret store component).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    /// Where the reference was written, for error messages.
    pub file: PathBuf,
    /// The component whose metadata holds the reference.
    pub component: String,
    /// The metadata field to fill.
    pub field: String,
    /// The secret store component to read from, when the component names one.
    pub store: Option<String>,
    /// The secret's name in that store.
    pub name: String,
    /// The key within the secret; without one, the secret must hold exactly
    /// one pair.
    pub key: Option<String>,
}

/// One YAML document. Unknown top-level fields are refused: Dapr's
/// `scopes` was once ignored here, which opened a component to every tenant
/// that the file meant for a few apps.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    api_version: String,
    kind: String,
    metadata: Metadata,
    spec: serde_norway::Value,
    /// Dapr's `auth.secretStore`: where `secretKeyRef`s are read from.
    #[serde(default)]
    auth: Option<Auth>,
    /// Dapr's `scopes`: the app ids that may use the component.
    #[serde(default)]
    scopes: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Auth {
    secret_store: String,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
}

#[derive(Deserialize)]
struct ComponentBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    metadata: Vec<MetadataItem>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataItem {
    name: String,
    #[serde(default)]
    value: serde_norway::Value,
    /// Dapr's reference to a secret, instead of a literal value.
    #[serde(default)]
    secret_key_ref: Option<SecretKeyRef>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyRef {
    name: String,
    #[serde(default)]
    key: Option<String>,
}

impl Config {
    /// The built-in configuration used when no `--config` is given: every
    /// capability on its embedded driver, durable where the capability keeps
    /// data, so a newcomer gets all of them with zero setup.
    pub fn embedded_default() -> Self {
        let own_tenant = format!("uid:{}", nix::unistd::geteuid().as_raw());
        let component = |name: &str, kind: &str, metadata: &[(&str, &str)]| ComponentSpec {
            name: name.into(),
            kind: kind.into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        Self {
            components: vec![
                component("statestore", "state.redb", &[]),
                component("pubsub", "pubsub.redb", &[]),
                component("lockstore", "lock.redb", &[]),
                component("sequencer", "sequencer.redb", &[]),
                // Writable by admins (`mechactl config set`), watched by apps.
                component("configstore", "configuration.memory", &[]),
                // Only variables with this prefix are visible, never the
                // daemon's whole environment, and only to the daemon's own
                // user: secrets are denied to every other tenant by default.
                component(
                    "secretstore",
                    "secretstores.local.env",
                    &[("prefix", "MECHA_SECRET_"), ("allowedTenants", &own_tenant)],
                ),
                // Local service invocation; no peers, so nothing listens on
                // the network until a configuration adds them.
                component("invoke", "invoke.mesh", &[]),
                // Dapr's gRPC and HTTP APIs, on dapr.sock beside mecha's
                // socket and Dapr's loopback ports 50001 and 3500. mechad
                // holds the sockets; the module starts at the first caller.
                component("dapr", "personality.dapr", &[]),
            ],
            settings: Settings {
                modules: BTreeMap::from([(
                    "dapr".to_owned(),
                    ModuleSettings {
                        start: Some(crate::childspec::Start::Lazy),
                        ..ModuleSettings::default()
                    },
                )]),
                ..Settings::default()
            },
            secret_refs: Vec::new(),
            scopes: BTreeMap::new(),
        }
    }

    /// Loads a YAML file, or every `.yaml`/`.yml` file of a directory in name order.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read_err = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let files = if path.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(read_err)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            files.sort();
            files
        } else {
            vec![path.to_path_buf()]
        };
        let mut config = Config::default();
        let mut have_settings = false;
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ConfigError::Read {
                path: file.clone(),
                source,
            })?;
            config.add_file(&file, &text, &mut have_settings)?;
        }
        Ok(config)
    }

    fn add_file(
        &mut self,
        file: &Path,
        text: &str,
        have_settings: &mut bool,
    ) -> Result<(), ConfigError> {
        for (i, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
            let invalid = |name: &str, message: String| ConfigError::Invalid {
                path: file.to_path_buf(),
                doc: i + 1,
                name: if name.is_empty() {
                    String::new()
                } else {
                    format!(" (name {name:?})")
                },
                message,
            };
            let value =
                serde_norway::Value::deserialize(doc).map_err(|e| invalid("", e.to_string()))?;
            if value.is_null() {
                continue; // An empty document, e.g. after a trailing `---`.
            }
            let env: Envelope =
                serde_norway::from_value(value).map_err(|e| invalid("", e.to_string()))?;
            let name = env.metadata.name.as_str();
            if !API_VERSIONS.contains(&env.api_version.as_str()) {
                return Err(invalid(
                    name,
                    format!(
                        "apiVersion: {:?} is not supported (use one of {API_VERSIONS:?})",
                        env.api_version
                    ),
                ));
            }
            match env.kind.as_str() {
                "Component" => {
                    let body: ComponentBody = serde_norway::from_value(env.spec)
                        .map_err(|e| invalid(name, format!("spec: {e}")))?;
                    let store = env.auth.map(|a| a.secret_store);
                    let (component, refs) =
                        component_spec(name, body).map_err(|m| invalid(name, m))?;
                    if self.components.iter().any(|c| c.name == component.name) {
                        return Err(ConfigError::Duplicate {
                            path: file.to_path_buf(),
                            name: component.name,
                        });
                    }
                    self.secret_refs
                        .extend(refs.into_iter().map(|(field, r)| SecretRef {
                            file: file.to_path_buf(),
                            component: component.name.clone(),
                            field,
                            store: store.clone(),
                            name: r.name,
                            key: r.key,
                        }));
                    if let Some(scopes) = env.scopes {
                        if scopes.iter().any(|s| s.trim().is_empty()) {
                            return Err(invalid(name, "scopes: an app id is empty".into()));
                        }
                        self.scopes.insert(component.name.clone(), scopes);
                    }
                    self.components.push(component);
                }
                "Configuration" => {
                    if env.scopes.is_some() {
                        return Err(invalid(name, "scopes: only a Component has scopes".into()));
                    }
                    if *have_settings {
                        return Err(ConfigError::SecondConfiguration {
                            path: file.to_path_buf(),
                        });
                    }
                    *have_settings = true;
                    self.settings = serde_norway::from_value(env.spec)
                        .map_err(|e| invalid(name, format!("spec: {e}")))?;
                }
                other => {
                    return Err(invalid(
                        name,
                        format!(
                            "kind: {other:?} is not supported (use Component or Configuration)"
                        ),
                    ))
                }
            }
        }
        Ok(())
    }

    /// Components grouped by capability family (`state`, ...), in first-seen order.
    pub fn families(&self) -> Vec<(String, Vec<ComponentSpec>)> {
        let mut order: Vec<String> = Vec::new();
        let mut groups: BTreeMap<String, Vec<ComponentSpec>> = BTreeMap::new();
        for c in &self.components {
            let family = c.kind.split('.').next().unwrap_or_default().to_string();
            if !groups.contains_key(&family) {
                order.push(family.clone());
            }
            groups.entry(family).or_default().push(c.clone());
        }
        order
            .into_iter()
            .map(|f| {
                let group = groups.remove(&f).unwrap_or_default();
                (f, group)
            })
            .collect()
    }
}

/// The component, and its metadata fields that are secret references (left
/// empty in the component until they are resolved).
type Parsed = (ComponentSpec, Vec<(String, SecretKeyRef)>);

/// The mecha type of a Dapr type name that mecha spells differently: Dapr's
/// in-memory stores are mecha's `memory` ones.
fn dapr_alias(kind: &str) -> Option<String> {
    let (family, driver) = kind.split_once('.')?;
    (driver == "in-memory").then(|| format!("{family}.memory"))
}

fn component_spec(name: &str, body: ComponentBody) -> Result<Parsed, String> {
    if name.is_empty() {
        return Err("metadata.name: must not be empty".into());
    }
    if !body.kind.contains('.') {
        return Err(format!(
            "spec.type: {:?} must look like <family>.<driver>, e.g. state.redb",
            body.kind
        ));
    }
    let mut metadata = Vec::with_capacity(body.metadata.len());
    let mut refs = Vec::new();
    for item in body.metadata {
        // Names starting with '@' are the daemon's own, passed to modules
        // (`@tenants`, the tenants a component's scopes admit).
        if item.name.starts_with('@') {
            return Err(format!(
                "spec.metadata {:?}: names starting with '@' are reserved",
                item.name
            ));
        }
        if let Some(r) = item.secret_key_ref {
            if !item.value.is_null() {
                return Err(format!(
                    "spec.metadata {:?}: give either value or secretKeyRef, not both",
                    item.name
                ));
            }
            if r.name.is_empty() {
                return Err(format!(
                    "spec.metadata {:?}: secretKeyRef.name must not be empty",
                    item.name
                ));
            }
            metadata.push((item.name.clone(), String::new()));
            refs.push((item.name, r));
            continue;
        }
        let value = match item.value {
            serde_norway::Value::String(s) => s,
            serde_norway::Value::Number(n) => n.to_string(),
            serde_norway::Value::Bool(b) => b.to_string(),
            serde_norway::Value::Null => String::new(),
            // Structured settings (an invoke component's accessControl and
            // resiliency) travel to the module as JSON text, which it parses.
            nested @ (serde_norway::Value::Mapping(_) | serde_norway::Value::Sequence(_)) => {
                serde_json::to_string(&nested).map_err(|e| {
                    format!(
                        "spec.metadata {:?}: value cannot be passed on: {e}",
                        item.name
                    )
                })?
            }
            serde_norway::Value::Tagged(_) => {
                return Err(format!(
                    "spec.metadata {:?}: tagged values are not supported",
                    item.name
                ))
            }
        };
        metadata.push((item.name, value));
    }
    Ok((
        ComponentSpec {
            name: name.to_string(),
            kind: dapr_alias(&body.kind).unwrap_or(body.kind),
            metadata,
        },
        refs,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str) -> Result<Config, ConfigError> {
        let mut c = Config::default();
        let mut have = false;
        c.add_file(Path::new("test.yaml"), text, &mut have)
            .map(|()| c)
    }

    #[test]
    fn dapr_component_and_configuration_load() {
        let c = load_str(
            "apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: cache\nspec:\n  type: state.memory\n  version: v1\n  metadata:\n  - name: ttl\n    value: 10\n---\napiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: mecha\nspec:\n  maxFrameBytes: 1024\n  tenants:\n  - name: web\n    uids: [1000]\n",
        )
        .unwrap();
        assert_eq!(c.components[0].kind, "state.memory");
        assert_eq!(c.components[0].metadata, vec![("ttl".into(), "10".into())]);
        assert_eq!(c.settings.max_frame_bytes, Some(1024));
        assert_eq!(c.settings.tenants[0].uids, vec![1000]);
    }

    #[test]
    fn the_deploy_example_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/mecha.yaml");
        let c = Config::load(&path).unwrap();
        let kinds: Vec<&str> = c.components.iter().map(|c| c.kind.as_str()).collect();
        for kind in [
            "state.redb",
            "state.memory",
            "lock.redb",
            "sequencer.redb",
            "secretstores.local.env",
        ] {
            assert!(kinds.contains(&kind), "{kind} missing from the example");
        }
        assert_eq!(c.settings.tenants.len(), 2);
        assert_eq!(c.families()[0].0, "state");
        // Structured metadata (the invoke component's) travels as JSON text.
        let invoke = c
            .components
            .iter()
            .find(|c| c.kind == "invoke.mesh")
            .unwrap();
        let acl = &invoke
            .metadata
            .iter()
            .find(|(k, _)| k == "accessControl")
            .unwrap()
            .1;
        let acl: serde_json::Value = serde_json::from_str(acl).unwrap();
        assert_eq!(acl["policies"][0]["appId"], "billing");
        assert_eq!(
            c.settings.tenants[0].app_ids.as_deref(),
            Some(&["billing".to_string(), "checkout".to_string()][..])
        );
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let e = load_str("apiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: a\nspec:\n  type: state.memory\n---\napiVersion: dapr.io/v1alpha1\nkind: Component\nmetadata:\n  name: b\nspec:\n  metadata: []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("test.yaml")
                && e.contains("document 2")
                && e.contains("\"b\"")
                && e.contains("type"),
            "{e}"
        );
        let e = load_str("apiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata:\n  name: x\nspec:\n  maxFrameBytez: 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("maxFrameBytez"), "{e}");
    }
}
