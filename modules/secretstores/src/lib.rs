//! `mecha-secretstores`: the secret store driver trait, the secret type, the
//! driver error, and the factory that opens a driver from a component spec
//! (`spec.type` → implementation). The secrets module serves these stores to
//! applications behind its allow lists; mechad opens them itself to resolve
//! `secretKeyRef` metadata when it loads its configuration, which is why they
//! live in a crate of their own, apart from the module runtime.

use std::fmt;
use std::future::Future;
use std::io::Read;
use std::path::Path;
use std::pin::Pin;

use mecha_abi::msg::ComponentSpec;
pub use mecha_metadata::{DriverError, Metadata};
use mecha_metadata::{MetadataError, Wording};

pub mod dir;
pub mod env;
pub mod file;

/// A boxed future, so drivers can be chosen at run time behind `dyn SecretStore`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The driver types this crate opens, for error messages.
const KNOWN_TYPES: &str = "secretstores.local.file, secretstores.local.env, secretstores.local.dir";

/// One secret: a map from keys to values, as in Dapr.
///
/// The pairs are kept sorted by key so every driver answers in the same,
/// documented order. `Debug` prints the keys only: a secret that reaches a log
/// line or a failed assertion must not leak its values.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The (key, value) pairs, sorted by key, keys unique.
    pairs: Vec<(String, String)>,
}

impl Secret {
    /// A single-value secret: one pair whose key is the secret's name.
    pub fn single(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            pairs: vec![(name.into(), value.into())],
        }
    }

    /// A secret of several pairs. Callers pass unique keys (they come from
    /// one map); the pairs are sorted here.
    pub fn from_pairs(mut pairs: Vec<(String, String)>) -> Self {
        pairs.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        Self { pairs }
    }

    /// The pairs, sorted by key.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The pairs, sorted by key, by value.
    pub fn into_pairs(self) -> Vec<(String, String)> {
        self.pairs
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.pairs.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("Secret")
            .field("keys", &keys)
            .finish_non_exhaustive()
    }
}

/// Why a driver could not be opened or could not answer: a failure every
/// capability shares, worded as the secret stores have always worded it
/// ("secret source unavailable: …", "secret store failure: …"). A secret
/// store has no failure of its own: a missing secret is `Ok(None)`.
///
/// An unusable configuration (its metadata, or a source that cannot be
/// opened when the module starts) is [`DriverError::Config`]; a source that
/// cannot be read or parsed right now (a file being replaced, a permission
/// problem) is [`DriverError::Unavailable`], which clients retry; a source
/// holding something this module cannot serve, such as a value that is not
/// UTF-8, is [`DriverError::Internal`].
///
/// No error ever carries a secret value: messages name files, fields,
/// variables and line numbers, never content, because they travel to the
/// caller and into logs.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The shared failure.
    #[error("{}", .0.worded(SECRET_STORE))]
    Driver(#[from] DriverError),
}

/// How secret-store errors name their source; clients have always seen
/// these words.
const SECRET_STORE: Wording = Wording {
    outage: "secret source",
    failure: "secret store",
};

/// This crate cannot take the conversions of the module runtime
/// (`mecha_module::wraps_driver_error!`), since mechad links it and must not
/// link the runtime; metadata errors are the only ones its drivers meet.
impl From<MetadataError> for StoreError {
    fn from(e: MetadataError) -> Self {
        Self::Driver(e.into())
    }
}

/// A source of secrets. Secrets are not scoped by tenant: a store holds the
/// operator's secrets, and who may read which is decided by the component's
/// allow lists (the secrets module's policy, configured with
/// [`POLICY_FIELDS`]) before a driver is asked.
///
/// Semantics every driver must honour (the conformance tests check them):
/// - `get` answers `Ok(None)` for a name the store does not hold, including
///   names the store cannot hold at all (for a secret directory, a name with
///   a `/`); never an error.
/// - Answers reflect the source as it is at the time of the call: a changed
///   file or directory is seen by the next call, without a restart.
/// - `bulk_get` lists every secret `get` would find, sorted by name, each
///   exactly as `get` returns it.
pub trait SecretStore: fmt::Debug + Send + Sync + 'static {
    /// Reads one secret; `None` when the store does not hold it.
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, StoreError>>;

    /// Reads every secret of the store, sorted by name.
    fn bulk_get(&self) -> BoxFuture<'_, Result<Vec<(String, Secret)>, StoreError>>;
}

/// The allow-list fields every secret store component accepts in its
/// metadata, whatever its driver; the secrets module enforces them.
pub const POLICY_FIELDS: [&str; 4] = [
    "allowedTenants",
    "defaultAccess",
    "allowedSecrets",
    "deniedSecrets",
];

/// Opens the driver named by `spec.kind`. Relative paths in the metadata are
/// resolved against `data_dir`, the module's own directory.
pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Box<dyn SecretStore>, StoreError> {
    let metadata = Metadata::lenient(spec)?;
    match spec.kind.as_str() {
        "secretstores.local.file" => Ok(Box::new(file::FileStore::open(&metadata, data_dir)?)),
        "secretstores.local.env" => Ok(Box::new(env::EnvStore::open(&metadata)?)),
        "secretstores.local.dir" => Ok(Box::new(dir::DirStore::open(&metadata, data_dir)?)),
        other => Err(metadata
            .error(format!(
                "unknown secret store type {other:?} (known: {KNOWN_TYPES})"
            ))
            .into()),
    }
}

/// Fails on any field that is neither one of the driver's `driver_fields`
/// nor an allow-list field every store accepts, so that a misspelt field
/// (`allowedTenant`) is an error rather than an open door.
pub(crate) fn check_fields(
    metadata: &Metadata<'_>,
    driver_fields: &[&str],
) -> Result<(), StoreError> {
    Ok(metadata.check_known(&[driver_fields, &POLICY_FIELDS[..]].concat())?)
}

/// Reads all of `file` if it holds at most `limit` bytes; `None` when it holds
/// more. The limit bounds what a misconfigured path (a log file, a device)
/// can make the module allocate.
pub(crate) fn read_limited(
    file: &mut std::fs::File,
    limit: u64,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Ok(None);
    }
    Ok(Some(bytes))
}

/// Runs blocking file work on tokio's blocking pool, so a slow disk never
/// stalls the module's single runtime thread, which also answers the
/// daemon's health pings.
pub(crate) async fn blocking<T, F>(work: F) -> Result<T, StoreError>
where
    F: FnOnce() -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        StoreError::Driver(DriverError::Internal(format!(
            "a file-reading task failed: {e}"
        )))
    })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_the_secret_stores_words() {
        let down = StoreError::from(DriverError::Unavailable("cannot read /s: gone".to_owned()));
        assert_eq!(
            down.to_string(),
            "secret source unavailable: cannot read /s: gone"
        );
        let broken = StoreError::from(DriverError::Internal("not UTF-8".to_owned()));
        assert_eq!(broken.to_string(), "secret store failure: not UTF-8");
        let config = StoreError::from(MetadataError {
            component: "vault".to_owned(),
            reason: "field \"x\" is unknown".to_owned(),
        });
        assert_eq!(
            config.to_string(),
            "component \"vault\": field \"x\" is unknown"
        );
    }
}
