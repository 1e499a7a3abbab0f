//! The `secretstores.local.file` driver: secrets from one JSON or YAML file,
//! Dapr's local file secret store.
//!
//! Metadata (Dapr's names, matched ignoring case):
//! - `secretsFile` (required): the file. Absolute, or relative to the
//!   module's data directory. `.yaml`/`.yml` files are YAML, every other
//!   file is JSON (Dapr reads JSON).
//! - `nestedSeparator` (default `:`): joins the keys of nested mappings, and
//!   the indexes of lists, into secret names.
//! - `multiValued` (default `false`): when true, each top-level key is one
//!   secret, and a mapping below it becomes the secret's pairs (flattened
//!   further with the separator); a scalar becomes one pair keyed by the name.
//!   When false, every leaf is a single-value secret named by its path.
//!
//! Scalars that are not strings become their text (`true`, `42`, `1.5`), and
//! null becomes the empty string, as in Dapr.
//!
//! # Freshness
//!
//! The file is parsed when the module starts (a missing or broken file fails
//! the start, loudly) and again whenever it changes: each request `stat`s the
//! file and reuses the parsed secrets only if device, inode, size, mtime and
//! ctime are all unchanged *and* the file had settled when it was read. The
//! last condition is git's "racy clean" rule: file times come from a coarse
//! clock, so a file rewritten in place within the same clock tick, at the same
//! size, would look unchanged; a file whose ctime was recent when it was read
//! is therefore read again on every request until it is old enough that any
//! later write must move its ctime. A file that cannot be read or parsed any
//! more is answered UNAVAILABLE (never with the old secrets, so a secret
//! removed from the file is never served again).

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;

use crate::{blocking, check_fields, read_limited, BoxFuture, Metadata, Secret, SecretStore};
use crate::{DriverError, StoreError};

/// The metadata fields this driver reads.
pub const FIELDS: [&str; 3] = ["secretsFile", "nestedSeparator", "multiValued"];

/// The largest secrets file read. A reply holding all of it must still fit
/// the daemon's default frame limit (4 MiB), so a larger file could not be
/// served in bulk anyway.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// How old a file's last change must be, when it is read, for the parsed
/// result to be trusted while the file's stamp stays the same. Far above the
/// coarsest timestamp granularity of local file systems.
const SETTLE: Duration = Duration::from_secs(2);

/// The secrets of one parsed file, by name.
type Secrets = BTreeMap<String, Secret>;

/// The file formats understood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// A secret store backed by one JSON or YAML file.
pub struct FileStore {
    /// Shared with the blocking tasks that read the file.
    source: Arc<Source>,
}

impl fmt::Debug for FileStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only the configuration: the cache holds secret values.
        f.debug_struct("FileStore")
            .field("path", &self.source.path)
            .field("format", &self.source.format)
            .field("nested_separator", &self.source.separator)
            .field("multi_valued", &self.source.multi_valued)
            .finish_non_exhaustive()
    }
}

/// The file, how to read it, and the last parse.
struct Source {
    path: PathBuf,
    format: Format,
    separator: String,
    multi_valued: bool,
    cache: Mutex<Option<Cached>>,
}

/// The result of the last successful parse.
struct Cached {
    /// The file's stamp when it was read.
    stamp: Stamp,
    /// Whether the file had settled when it was read (see the module docs).
    trusted: bool,
    /// What it held.
    secrets: Arc<Secrets>,
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file's last change (ctime, which no tool can set back)
    /// lies at least [`SETTLE`] before `read_at`.
    fn settled_before(&self, read_at: SystemTime) -> bool {
        let (secs, nanos) = self.ctime;
        let Ok(secs) = u64::try_from(secs) else {
            // A change before 1970 is a clock that cannot be reasoned about.
            return false;
        };
        let changed = SystemTime::UNIX_EPOCH
            + Duration::from_secs(secs)
            + Duration::from_nanos(u64::try_from(nanos).unwrap_or(0));
        changed
            .checked_add(SETTLE)
            .is_some_and(|settled| settled <= read_at)
    }
}

impl FileStore {
    /// Reads the metadata and parses the file once, so that a missing or
    /// broken file fails the module's start instead of its first request.
    pub fn open(metadata: &Metadata<'_>, data_dir: &Path) -> Result<Self, StoreError> {
        check_fields(metadata, &FIELDS)?;
        // `join` keeps an absolute path as it is.
        let path = data_dir.join(metadata.required("secretsFile")?);
        // An empty separator is refused: joining keys with nothing would make
        // `a.bc` and `ab.c` collide.
        let separator = metadata.str("nestedSeparator")?.unwrap_or(":");
        let format = match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("yaml") || ext.eq_ignore_ascii_case("yml") => {
                Format::Yaml
            }
            _ => Format::Json,
        };
        let source = Source {
            path,
            format,
            separator: separator.to_owned(),
            multi_valued: metadata.bool("multiValued")?.unwrap_or(false),
            cache: Mutex::new(None),
        };
        source
            .load()
            .map_err(|reason| StoreError::from(metadata.error(reason)))?;
        Ok(Self {
            source: Arc::new(source),
        })
    }

    /// The file's secrets as they are now.
    async fn secrets(&self) -> Result<Arc<Secrets>, StoreError> {
        let source = Arc::clone(&self.source);
        blocking(move || {
            source
                .load()
                .map_err(|reason| StoreError::Driver(DriverError::Unavailable(reason)))
        })
        .await
    }
}

impl SecretStore for FileStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, StoreError>> {
        Box::pin(async move { Ok(self.secrets().await?.get(name).cloned()) })
    }

    fn bulk_get(&self) -> BoxFuture<'_, Result<Vec<(String, Secret)>, StoreError>> {
        Box::pin(async move {
            let secrets = self.secrets().await?;
            Ok(secrets
                .iter()
                .map(|(name, secret)| (name.clone(), secret.clone()))
                .collect())
        })
    }
}

impl Source {
    /// The current secrets: the cached parse while the file is unchanged,
    /// else a fresh one. Blocks on file I/O. The error names the file and
    /// what is wrong, never its content.
    fn load(&self) -> Result<Arc<Secrets>, String> {
        let shown = self.path.display();
        let stamp = std::fs::metadata(&self.path)
            .map(|meta| Stamp::of(&meta))
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        if let Some(cached) = self.cache.lock().as_ref() {
            if cached.trusted && cached.stamp == stamp {
                return Ok(Arc::clone(&cached.secrets));
            }
        }
        // Taken before the file is opened, so "settled" is judged against a
        // moment no later than the read itself.
        let read_at = SystemTime::now();
        let mut file =
            std::fs::File::open(&self.path).map_err(|e| format!("cannot read {shown}: {e}"))?;
        // The stamp of the file actually opened, which may be newer than the
        // one above if the file was just replaced.
        let stamp = file
            .metadata()
            .map(|meta| Stamp::of(&meta))
            .map_err(|e| format!("cannot read {shown}: {e}"))?;
        let bytes = read_limited(&mut file, MAX_FILE_BYTES)
            .map_err(|e| format!("cannot read {shown}: {e}"))?
            .ok_or_else(|| format!("{shown} is larger than {MAX_FILE_BYTES} bytes"))?;
        let secrets = Arc::new(
            self.parse(&bytes)
                .map_err(|reason| format!("{shown}: {reason}"))?,
        );
        *self.cache.lock() = Some(Cached {
            stamp,
            trusted: stamp.settled_before(read_at),
            secrets: Arc::clone(&secrets),
        });
        Ok(secrets)
    }

    /// Parses the file's bytes into secrets.
    fn parse(&self, bytes: &[u8]) -> Result<Secrets, String> {
        let root = match self.format {
            Format::Json => {
                let value: serde_json::Value = serde_json::from_slice(bytes).map_err(json_error)?;
                if value.is_null() {
                    return Ok(Secrets::new());
                }
                Node::from_json(value)
            }
            Format::Yaml => {
                let value: serde_norway::Value =
                    serde_norway::from_slice(bytes).map_err(yaml_error)?;
                // An empty YAML file is null: a store with no secrets yet.
                if value.is_null() {
                    return Ok(Secrets::new());
                }
                Node::from_yaml(value, "")?
            }
        };
        let Node::Map(entries) = root else {
            return Err("the top level must be a mapping of secret names to values".into());
        };
        let mut secrets = Secrets::new();
        if self.multi_valued {
            for (name, node) in entries {
                let secret = match node {
                    Node::Leaf(value) => Secret::single(name.clone(), value),
                    nested => {
                        let mut pairs = BTreeMap::new();
                        for (key, child) in nested.children() {
                            flatten(key, child, &self.separator, &mut pairs)?;
                        }
                        Secret::from_pairs(pairs.into_iter().collect())
                    }
                };
                secrets.insert(name, secret);
            }
        } else {
            let mut flat = BTreeMap::new();
            for (name, node) in entries {
                flatten(name, node, &self.separator, &mut flat)?;
            }
            secrets.extend(
                flat.into_iter()
                    .map(|(name, value)| (name.clone(), Secret::single(name, value))),
            );
        }
        Ok(secrets)
    }
}

/// A parsed document, reduced to what secrets are made of. It has no `Debug`
/// on purpose: its leaves are secret values.
enum Node {
    /// A scalar, as text.
    Leaf(String),
    /// A mapping, in document order.
    Map(Vec<(String, Node)>),
    /// A sequence.
    List(Vec<Node>),
}

impl Node {
    fn from_json(value: serde_json::Value) -> Self {
        use serde_json::Value;
        match value {
            Value::Null => Node::Leaf(String::new()),
            Value::Bool(b) => Node::Leaf(b.to_string()),
            Value::Number(n) => Node::Leaf(n.to_string()),
            Value::String(s) => Node::Leaf(s),
            Value::Array(items) => Node::List(items.into_iter().map(Node::from_json).collect()),
            Value::Object(map) => Node::Map(
                map.into_iter()
                    .map(|(key, child)| (key, Node::from_json(child)))
                    .collect(),
            ),
        }
    }

    /// Converts a YAML value found at `at`, the path of keys leading to it
    /// ("" at the top), which errors name; they never name a value.
    fn from_yaml(value: serde_norway::Value, at: &str) -> Result<Self, String> {
        let here = || {
            if at.is_empty() {
                "the top level".to_owned()
            } else {
                format!("key {at:?}")
            }
        };
        let below = |key: &str| {
            if at.is_empty() {
                key.to_owned()
            } else {
                format!("{at}.{key}")
            }
        };
        use serde_norway::Value;
        Ok(match value {
            Value::Null => Node::Leaf(String::new()),
            Value::Bool(b) => Node::Leaf(b.to_string()),
            Value::Number(n) => Node::Leaf(n.to_string()),
            Value::String(s) => Node::Leaf(s),
            Value::Sequence(items) => Node::List(
                items
                    .into_iter()
                    .enumerate()
                    .map(|(i, child)| Node::from_yaml(child, &below(&i.to_string())))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Mapping(map) => {
                let mut entries = Vec::with_capacity(map.len());
                for (key, child) in map {
                    let key = match key {
                        Value::String(s) => s,
                        Value::Number(n) => n.to_string(),
                        Value::Bool(b) => b.to_string(),
                        _ => return Err(format!("a key under {} is not a string", here())),
                    };
                    let child = Node::from_yaml(child, &below(&key))?;
                    entries.push((key, child));
                }
                Node::Map(entries)
            }
            Value::Tagged(_) => {
                return Err(format!("{} has a YAML tag, which is not supported", here()))
            }
        })
    }

    /// The entries of a mapping, or the items of a list keyed by their index
    /// (`0`, `1`, ...); nothing for a leaf.
    fn children(self) -> Vec<(String, Node)> {
        match self {
            Node::Leaf(_) => Vec::new(),
            Node::Map(entries) => entries,
            Node::List(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, child)| (i.to_string(), child))
                .collect(),
        }
    }
}

/// Adds the leaves under `node` to `out`, named `name` joined with their key
/// path by `separator`, as Dapr flattens nested secrets.
fn flatten(
    name: String,
    node: Node,
    separator: &str,
    out: &mut BTreeMap<String, String>,
) -> Result<(), String> {
    match node {
        Node::Leaf(value) => {
            if out.contains_key(&name) {
                // Silently keeping either value would depend on key order.
                return Err(format!(
                    "two entries are both named {name:?} once nested keys are joined with \
                     {separator:?}; rename one or change nestedSeparator"
                ));
            }
            out.insert(name, value);
        }
        nested => {
            for (key, child) in nested.children() {
                flatten(format!("{name}{separator}{key}"), child, separator, out)?;
            }
        }
    }
    Ok(())
}

/// Describes a JSON parse failure by kind and position only: serde_json's own
/// messages are content-free today, but nothing promises that.
fn json_error(e: serde_json::Error) -> String {
    use serde_json::error::Category;
    let kind = match e.classify() {
        Category::Io => "a read error",
        Category::Syntax => "a syntax error",
        Category::Data => "a data error",
        Category::Eof => "an unexpected end of file",
    };
    format!(
        "not valid JSON: {kind} at line {} column {}",
        e.line(),
        e.column()
    )
}

/// Describes a YAML parse failure by position only, since a YAML error's
/// text may quote the document.
fn yaml_error(e: serde_norway::Error) -> String {
    match e.location() {
        Some(at) => format!(
            "not valid YAML: an error at line {} column {}",
            at.line(),
            at.column()
        ),
        None => "not valid YAML (no position known)".into(),
    }
}
