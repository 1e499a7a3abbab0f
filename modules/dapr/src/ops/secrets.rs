//! Dapr's secrets API in protocol-neutral terms: GetSecret and
//! GetBulkSecret on the caller's native session, whose allow lists decide
//! what the caller may read. Dapr's per-request metadata asks a store for
//! things mecha's secret stores do not have (a version, a namespace), so
//! any is refused with its name.

use std::collections::{BTreeMap, HashMap};

use mecha_client::Client;

use super::dapr_error::{native, require_store, Api, DaprError};
use super::hints;

/// Dapr's codes for a secret read. A missing secret store is 401 in
/// Dapr's HTTP API, unlike the other APIs' 400.
pub const GET: Api = Api {
    store_not_found: "ERR_SECRET_STORE_NOT_FOUND",
    store_not_found_http: 401,
    failed: "ERR_SECRET_GET",
};

/// A secret: its (key, value) pairs.
pub type Secret = BTreeMap<String, String>;

/// Reads secret `name` of `store`.
pub async fn get(
    client: &Client,
    store: &str,
    name: &str,
    metadata: &HashMap<String, String>,
) -> Result<Secret, DaprError> {
    require_store(GET, store)?;
    hints::check(metadata, &[], &[], "secret")?;
    if name.is_empty() {
        return Err(DaprError::malformed("the secret's key is empty"));
    }
    let pairs = client.get_secret(store, name).await.map_err(|e| {
        let mut e = native(
            GET,
            &format!("failed getting secret with key {name} from secret store {store}"),
            e,
        );
        // Dapr answers a secret its store does not have as a failed read
        // (500 / INTERNAL), not as a missing resource.
        if e.grpc == tonic::Code::NotFound {
            e.grpc = tonic::Code::Internal;
            e.http = 500;
        }
        e
    })?;
    Ok(pairs.into_iter().collect())
}

/// Reads every secret of `store` the caller may see, by name.
pub async fn get_bulk(
    client: &Client,
    store: &str,
    metadata: &HashMap<String, String>,
) -> Result<BTreeMap<String, Secret>, DaprError> {
    require_store(GET, store)?;
    hints::check(metadata, &[], &[], "bulk secret")?;
    let secrets = client.bulk_get_secrets(store).await.map_err(|e| {
        native(
            GET,
            &format!("failed getting secrets from secret store {store}"),
            e,
        )
    })?;
    Ok(secrets
        .into_iter()
        .map(|(name, pairs)| (name, pairs.into_iter().collect()))
        .collect())
}
