//! Dapr's metadata API in protocol-neutral terms: the components the
//! caller's tenant may use, with their types, from the catalog mechad gave
//! this personality at start (`set_catalog`), filtered by the tenant its
//! session has; the tenant's app id (the first of its rule's `appIds`); the
//! runtime's version from STATUS; and the tenant itself, in the extended
//! metadata.

use std::collections::BTreeMap;

use mecha_client::Client;

use super::dapr_error::{native, Api, DaprError};

/// Dapr's codes for a metadata read.
pub const GET: Api = Api {
    store_not_found: "ERR_METADATA_GET",
    store_not_found_http: 500,
    failed: "ERR_METADATA_GET",
};

/// The extended-metadata key naming the caller's tenant.
pub const TENANT_KEY: &str = "mecha.tenant";

/// One component as Dapr lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Component {
    /// The component's name.
    pub name: String,
    /// Its Dapr type: the family.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its version.
    pub version: String,
    /// What it can do, in Dapr's capability names.
    pub capabilities: Vec<String>,
}

/// What GetMetadata answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// The app id (empty; see the file's notes).
    pub id: String,
    /// The daemon's version.
    pub runtime_version: String,
    /// The components.
    pub components: Vec<Component>,
    /// Extra facts: the caller's tenant.
    pub extended: BTreeMap<String, String>,
}

/// The node's component catalog as mechad handed it to this personality
/// (`mecha_metadata::PERSONALITY_CATALOG`), set once at start.
static CATALOG: std::sync::OnceLock<Catalog> = std::sync::OnceLock::new();

/// Every component with its type and who may use it, and each tenant's
/// allow list and app ids.
#[derive(Clone, Debug, Default, serde::Deserialize)]
pub struct Catalog {
    #[serde(default)]
    components: Vec<Entry>,
    #[serde(default)]
    allow: BTreeMap<String, Vec<String>>,
    #[serde(default, rename = "appIds")]
    app_ids: BTreeMap<String, Vec<String>>,
}

#[derive(Clone, Debug, serde::Deserialize)]
struct Entry {
    name: String,
    #[serde(rename = "type")]
    kind: String,
    /// `None`: every tenant may use it.
    tenants: Option<Vec<String>>,
}

/// Keeps the catalog mechad sent (`json`); a catalog that does not parse
/// leaves GetMetadata listing nothing, and is logged.
pub fn set_catalog(json: &str) {
    match serde_json::from_str::<Catalog>(json) {
        Ok(c) => {
            let _ = CATALOG.set(c);
        }
        Err(e) => tracing::warn!("the component catalog from mechad does not parse: {e}"),
    }
}

impl Catalog {
    /// The components `tenant` may use, as Dapr lists them.
    fn components_for(&self, tenant: &str) -> Vec<Component> {
        let allow = self.allow.get(tenant);
        self.components
            .iter()
            .filter(|c| {
                c.tenants
                    .as_ref()
                    .is_none_or(|t| t.iter().any(|t| t == tenant))
            })
            .filter_map(|c| {
                let (family, capabilities) = family(&c.kind)?;
                allowed(allow, family).then(|| Component {
                    name: c.name.clone(),
                    kind: c.kind.clone(),
                    version: "v1".into(),
                    capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
                })
            })
            .collect()
    }
}

/// The native family of a component type, and the Dapr capabilities of its
/// components; `None` for types Dapr has no API for here.
fn family(kind: &str) -> Option<(mecha_abi::Family, &'static [&'static str])> {
    use mecha_abi::Family;
    let prefix = kind.split('.').next().unwrap_or_default();
    match prefix {
        // Every mecha state store keeps ETags, runs transactions and
        // expires keys (SPEC §7.2).
        "state" => Some((Family::State, &["ETAG", "TRANSACTIONAL", "TTL"])),
        "pubsub" => Some((Family::PubSub, &[])),
        "lock" => Some((Family::Lock, &[])),
        "configuration" => Some((Family::Configuration, &[])),
        "secretstores" => Some((Family::Secrets, &[])),
        "bindings" => Some((Family::Bindings, &[])),
        _ => None,
    }
}

/// Whether an allow list (`None`: everything) lets its tenant use `family`:
/// it names the family, or one of the family's opcodes.
fn allowed(allow: Option<&Vec<String>>, family: mecha_abi::Family) -> bool {
    let Some(list) = allow else { return true };
    list.iter().any(|entry| {
        entry.eq_ignore_ascii_case(family.name())
            || (0..=u16::MAX).map(mecha_abi::Opcode).any(|op| {
                op.family() == family && op.name().is_some_and(|n| n.eq_ignore_ascii_case(entry))
            })
    })
}

/// Reads the runtime's metadata through the caller's session: the
/// components its tenant may use, and its app id (the first of its
/// tenant rule's `appIds`).
pub async fn get(client: &Client) -> Result<Metadata, DaprError> {
    let status = client
        .status()
        .await
        .map_err(|e| native(GET, "failed to read the runtime's status", e))?;
    let tenant = client.tenant();
    let catalog = CATALOG.get().cloned().unwrap_or_default();
    Ok(Metadata {
        id: catalog
            .app_ids
            .get(tenant)
            .and_then(|ids| ids.first().cloned())
            .unwrap_or_default(),
        runtime_version: status.daemon_version,
        components: catalog.components_for(tenant),
        extended: [(TENANT_KEY.to_string(), tenant.to_string())].into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_sees_the_components_it_may_use() {
        let catalog: Catalog = serde_json::from_str(
            r#"{"components": [
                {"name": "statestore", "type": "state.redb", "tenants": null},
                {"name": "secretstore", "type": "secretstores.local.env", "tenants": ["uid:0"]},
                {"name": "orders", "type": "bindings.http", "tenants": []},
                {"name": "ids", "type": "sequencer.redb", "tenants": null},
                {"name": "events", "type": "pubsub.redb", "tenants": null}
             ],
             "allow": {"readers": ["STATE_GET", "lock"]},
             "appIds": {"uid:0": ["checkout"]}}"#,
        )
        .expect("a catalog");
        let names = |tenant: &str| -> Vec<String> {
            catalog
                .components_for(tenant)
                .into_iter()
                .map(|c| c.name)
                .collect()
        };
        assert_eq!(names("uid:0"), ["statestore", "secretstore", "events"]);
        assert_eq!(names("uid:1000"), ["statestore", "events"]);
        assert_eq!(names("readers"), ["statestore"]);
        let state = &catalog.components_for("uid:0")[0];
        assert_eq!(
            (state.kind.as_str(), state.capabilities.len()),
            ("state.redb", 3)
        );
    }
}
