//! Dapr's metadata API in protocol-neutral terms: what the caller's
//! session can say about the runtime. The components come from the
//! daemon's STATUS (each module with the component names it serves); a
//! component's Dapr type is reported as its family (`state`, `pubsub`,
//! `lock`, `configuration`, `secretstores`, `bindings`), because STATUS does
//! not name the driver behind a component. The Dapr app id is empty: the
//! native session does not say which app ids the caller's tenant holds.
//! The tenant itself is reported in the extended metadata.

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

/// The Dapr family of a mecha module, and the Dapr capabilities its
/// components have; `None` for modules Dapr has no component type for.
fn family(module: &str) -> Option<(&'static str, &'static [&'static str])> {
    match module {
        // Every mecha state store keeps ETags, runs transactions and
        // expires keys (SPEC §7.2).
        "state" => Some(("state", &["ETAG", "TRANSACTIONAL", "TTL"])),
        "pubsub" => Some(("pubsub", &[])),
        "lock" => Some(("lock", &[])),
        "config" => Some(("configuration", &[])),
        "secrets" => Some(("secretstores", &[])),
        "bindings" => Some(("bindings", &[])),
        _ => None,
    }
}

/// Reads the runtime's metadata through the caller's session.
pub async fn get(client: &Client) -> Result<Metadata, DaprError> {
    let status = client
        .status()
        .await
        .map_err(|e| native(GET, "failed to read the runtime's status", e))?;
    let mut components = Vec::new();
    for module in &status.modules {
        let Some((kind, capabilities)) = family(&module.name) else {
            continue;
        };
        for name in &module.components {
            components.push(Component {
                name: name.clone(),
                kind: kind.into(),
                version: "v1".into(),
                capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            });
        }
    }
    Ok(Metadata {
        id: String::new(),
        runtime_version: status.daemon_version,
        components,
        extended: [(TENANT_KEY.to_string(), client.tenant().to_string())].into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_map_to_daprs_families() {
        assert_eq!(family("config").map(|f| f.0), Some("configuration"));
        assert_eq!(family("secrets").map(|f| f.0), Some("secretstores"));
        assert_eq!(family("sequencer"), None);
        assert_eq!(family("dapr"), None);
    }
}
