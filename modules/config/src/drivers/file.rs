//! The `configuration.file` driver: node-wide items read from a YAML or JSON
//! file, re-read whenever the file changes (inotify through the `notify`
//! crate, or polling where inotify is unavailable).
//!
//! The file is a map from key to either a scalar value or
//! `{value: ..., metadata: {name: value, ...}}`:
//!
//! ```yaml
//! log-level: debug
//! max-connections: 100
//! feature-x:
//!   value: "on"
//!   metadata: {owner: team-a}
//! ```
//!
//! Scalars (strings, numbers, booleans) become their text. A file whose name
//! ends in `.json` is parsed as JSON, any other as YAML. The parent directory
//! is watched rather than the file, so that editors and tools that replace the
//! file by renaming a new one over it (the safe way to update it) are seen,
//! as are Kubernetes ConfigMap volumes, which swap a symlinked directory.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

use mecha_abi::msg::{ComponentSpec, ConfigItem, ConfigSetItem};
use mecha_module::metadata::Metadata;
use mecha_module::DriverError;
use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode, Watcher};
use parking_lot::Mutex;
use serde::Deserialize;

use super::{initial_revision, next_revision, select, ALLOWED_TENANTS};
use super::{BoxFuture, ConfigError, ConfigStore, Hub, Scope, Subscriber};

/// How long the file must stay quiet after a change before it is read. A tool
/// that rewrites the file in place truncates it and then writes it, and
/// reading in between would publish an empty or half-written file; waiting
/// for the writes to settle avoids that for every ordinary writer.
const QUIET: Duration = Duration::from_millis(100);
/// The polling period used when inotify cannot be set up.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Stack size of the reload thread: parsing a YAML file of nested maps needs
/// little, and the default 8 MiB would count against a module memory limit.
const RELOAD_STACK: usize = 1024 * 1024;
/// The largest file accepted. A configuration file is small; a huge one is a
/// mistake, and reading it whole would cost the module its memory.
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// A value as written in the file: a scalar, or a value with metadata.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawItem {
    Scalar(Scalar),
    Full(FullItem),
}

/// The long form of an item.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FullItem {
    value: Scalar,
    #[serde(default)]
    metadata: BTreeMap<String, Scalar>,
}

/// A scalar, kept as the text it stands for.
#[derive(Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Bool(bool),
    Int(i64),
    Uint(u64),
    Float(f64),
}

impl Scalar {
    fn into_text(self) -> String {
        match self {
            Scalar::Text(s) => s,
            Scalar::Bool(b) => b.to_string(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Uint(u) => u.to_string(),
            Scalar::Float(f) => f.to_string(),
        }
    }
}

/// An item as parsed from the file, before it gets a version.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Parsed {
    value: String,
    metadata: Vec<(String, String)>,
}

/// Why the file's content could not be used. The description never contains
/// a value from the file, because these errors are logged and configuration
/// values may be sensitive.
#[derive(Debug, thiserror::Error)]
enum ParseError {
    #[error(
        "it is not valid {format} at line {line}, column {column}, or not a map of key to value"
    )]
    Syntax {
        format: &'static str,
        line: usize,
        column: usize,
    },
    #[error("it is not valid {format}, or not a map of key to value")]
    Shape { format: &'static str },
    #[error("it contains an empty key")]
    EmptyKey,
}

/// Parses the file's bytes into items, sorted by key.
fn parse(path: &Path, raw: &[u8]) -> Result<BTreeMap<String, Parsed>, ParseError> {
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    // A file holding nothing (or only comments) parses as null: no items.
    let map: Option<BTreeMap<String, RawItem>> = if json {
        if raw.iter().all(u8::is_ascii_whitespace) {
            None
        } else {
            serde_json::from_slice(raw).map_err(|e| ParseError::Syntax {
                format: "JSON",
                line: e.line(),
                column: e.column(),
            })?
        }
    } else {
        serde_norway::from_slice(raw).map_err(|e| match e.location() {
            Some(at) => ParseError::Syntax {
                format: "YAML",
                line: at.line(),
                column: at.column(),
            },
            None => ParseError::Shape { format: "YAML" },
        })?
    };
    let mut items = BTreeMap::new();
    for (key, raw) in map.unwrap_or_default() {
        if key.is_empty() {
            return Err(ParseError::EmptyKey);
        }
        let parsed = match raw {
            RawItem::Scalar(value) => Parsed {
                value: value.into_text(),
                metadata: Vec::new(),
            },
            RawItem::Full(full) => Parsed {
                value: full.value.into_text(),
                metadata: full
                    .metadata
                    .into_iter()
                    .map(|(name, value)| (name, value.into_text()))
                    .collect(),
            },
        };
        items.insert(key, parsed);
    }
    Ok(items)
}

/// Reads the file, refusing one larger than [`MAX_FILE_BYTES`].
fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let file = std::fs::File::open(path)?;
    let mut raw = Vec::new();
    file.take(MAX_FILE_BYTES + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(std::io::Error::other(format!(
            "the file is larger than {MAX_FILE_BYTES} bytes"
        )));
    }
    Ok(raw)
}

/// The items in force and what they were made from.
struct State {
    /// The items, sorted by key, each carrying its version.
    items: BTreeMap<String, ConfigItem>,
    /// The last revision handed out.
    revision: u64,
    /// The bytes the items were parsed from; an event that leaves them
    /// unchanged is not a change.
    raw: Vec<u8>,
}

/// What the store and its watcher thread share.
struct Shared {
    component: String,
    path: PathBuf,
    state: Mutex<State>,
    hub: Arc<Hub>,
    /// Changes ignored because the file could not be read or parsed.
    rejected: AtomicU64,
}

impl Shared {
    /// Reads the file again and publishes what changed. A file that cannot be
    /// read or parsed is logged (without its content) and ignored: the
    /// previous content stays in force until a good version appears.
    fn reload(&self) {
        let raw = match read_file(&self.path) {
            Ok(raw) => raw,
            Err(e) => {
                tracing::warn!(component = %self.component, path = %self.path.display(), "cannot read the configuration file; keeping the previous content: {e}");
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        let mut state = self.state.lock();
        if raw == state.raw {
            return;
        }
        let parsed = match parse(&self.path, &raw) {
            Ok(parsed) => parsed,
            Err(e) => {
                tracing::warn!(component = %self.component, path = %self.path.display(), "ignoring a malformed edit of the configuration file, keeping the previous content: {e}");
                self.rejected.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        state.raw = raw;
        let revision = match next_revision(state.revision) {
            Ok(revision) => revision,
            Err(e) => {
                tracing::error!(component = %self.component, "cannot apply the configuration file: {e}");
                return;
            }
        };
        let version = revision.to_string();
        let mut changed = Vec::new();
        for (key, item) in &parsed {
            let same = state
                .items
                .get(key)
                .is_some_and(|old| old.value == item.value && old.metadata == item.metadata);
            if !same {
                changed.push(ConfigItem {
                    key: key.clone(),
                    value: item.value.clone(),
                    version: version.clone(),
                    metadata: item.metadata.clone(),
                });
            }
        }
        let deleted: Vec<String> = state
            .items
            .keys()
            .filter(|key| !parsed.contains_key(*key))
            .cloned()
            .collect();
        if changed.is_empty() && deleted.is_empty() {
            // Only formatting or comments changed: no item did, so no
            // version moves and nobody is told.
            return;
        }
        state.revision = revision;
        for key in &deleted {
            state.items.remove(key);
        }
        for item in &changed {
            state.items.insert(item.key.clone(), item.clone());
        }
        // Published under the state lock, so that a subscriber's snapshot
        // and the changes after it are ordered.
        self.hub.publish(Scope::All, &changed, &deleted);
        tracing::info!(component = %self.component, changed = changed.len(), deleted = deleted.len(), "configuration file reloaded");
    }
}

/// The watcher in use (inotify or polling); kept only to be dropped with the
/// store, which stops it and, through the closed channel, the reload thread.
type AnyWatcher = Box<dyn Watcher + Send + Sync>;

/// A configuration store backed by a file. Its items are node-wide: every
/// tenant reads the same items (an operator's file configures the node, not
/// one tenant), unless the component restricts its tenants.
pub struct FileStore {
    shared: Arc<Shared>,
    _watcher: AnyWatcher,
}

impl FileStore {
    /// Reads the file named by the metadata field `path` (absolute, or
    /// relative to `data_dir`) and starts watching it. A file that is missing
    /// or malformed at start is a configuration error, so that a mistake is
    /// loud rather than an empty store.
    pub fn open(spec: &ComponentSpec, data_dir: &Path) -> Result<Self, ConfigError> {
        let metadata = Metadata::parse(spec, &["path", ALLOWED_TENANTS])?;
        let config = |reason: String| ConfigError::from(metadata.error(reason));
        let path = data_dir.join(metadata.required("path")?);
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => {
                return Err(config(format!(
                    "{} has no parent directory",
                    path.display()
                )))
            }
        };
        let raw =
            read_file(&path).map_err(|e| config(format!("cannot read {}: {e}", path.display())))?;
        let parsed = parse(&path, &raw)
            .map_err(|e| config(format!("cannot use {}: {e}", path.display())))?;
        let revision = initial_revision();
        let version = revision.to_string();
        let items = parsed
            .into_iter()
            .map(|(key, item)| {
                let item = ConfigItem {
                    key: key.clone(),
                    value: item.value,
                    version: version.clone(),
                    metadata: item.metadata,
                };
                (key, item)
            })
            .collect();
        let shared = Arc::new(Shared {
            component: spec.name.clone(),
            path,
            state: Mutex::new(State {
                items,
                revision,
                raw,
            }),
            hub: Arc::new(Hub::default()),
            rejected: AtomicU64::new(0),
        });
        // A one-slot channel coalesces a burst of events into one pending
        // signal; the reload thread reads the whole file anyway.
        let (tx, rx) = sync_channel(1);
        let watcher = start_watcher(&spec.name, &dir, tx)
            .map_err(|e| config(format!("cannot watch {}: {e}", dir.display())))?;
        let thread_shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("config-watch".to_owned())
            // The thread only reads and parses one file; a small stack keeps
            // it cheap under a module memory limit (RLIMIT_AS counts stacks).
            .stack_size(RELOAD_STACK)
            .spawn(move || reload_loop(&thread_shared, &rx))
            .map_err(|e| {
                ConfigError::Driver(DriverError::Internal(format!(
                    "cannot start the watch thread: {e}"
                )))
            })?;
        // An edit made between the first read and the start of the watch
        // would otherwise go unnoticed until the next one.
        shared.reload();
        Ok(Self {
            shared,
            _watcher: watcher,
        })
    }

    /// The store's subscribers (for tests and diagnostics).
    pub fn hub(&self) -> &Hub {
        &self.shared.hub
    }

    /// How many changes of the file were ignored because it could not be
    /// read or parsed (for tests and diagnostics).
    pub fn rejected_edits(&self) -> u64 {
        self.shared.rejected.load(Ordering::Relaxed)
    }
}

/// Whether a file-system event may mean the file changed. Opening, reading
/// and closing without writing do not; counting them would make the store's
/// own reads trigger new reads forever.
fn relevant(result: &notify::Result<notify::Event>) -> bool {
    match result {
        Ok(event) => !matches!(
            event.kind,
            EventKind::Access(AccessKind::Open(_))
                | EventKind::Access(AccessKind::Read)
                | EventKind::Access(AccessKind::Close(AccessMode::Read))
                | EventKind::Access(AccessKind::Close(AccessMode::Execute))
        ),
        // A watcher error (for example an overflowed event queue) may hide a
        // change, so it is treated as one.
        Err(_) => true,
    }
}

/// Watches `dir` with inotify, falling back to polling where inotify cannot
/// be used (no instances or watches left, or an unsupported file system).
fn start_watcher(
    component: &str,
    dir: &Path,
    tx: SyncSender<()>,
) -> Result<AnyWatcher, notify::Error> {
    let handler = |tx: SyncSender<()>| {
        move |result: notify::Result<notify::Event>| {
            if relevant(&result) {
                // A full channel already holds a signal, which is all the
                // reload thread needs to know.
                let _ = tx.try_send(());
            }
        }
    };
    let inotify = notify::recommended_watcher(handler(tx.clone())).and_then(|mut w| {
        w.watch(dir, RecursiveMode::NonRecursive)?;
        Ok(w)
    });
    match inotify {
        Ok(w) => Ok(Box::new(w)),
        Err(e) => {
            tracing::warn!(component = %component, dir = %dir.display(), "inotify is unavailable ({e}); polling the configuration file every {POLL_INTERVAL:?} instead");
            let config = notify::Config::default().with_poll_interval(POLL_INTERVAL);
            let mut w = notify::PollWatcher::new(handler(tx), config)?;
            w.watch(dir, RecursiveMode::NonRecursive)?;
            Ok(Box::new(w))
        }
    }
}

/// Reloads the file after each burst of change signals, once the file has
/// been quiet for [`QUIET`]; returns when the watcher is gone.
fn reload_loop(shared: &Shared, rx: &Receiver<()>) {
    while rx.recv().is_ok() {
        loop {
            match rx.recv_timeout(QUIET) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        shared.reload();
    }
}

impl ConfigStore for FileStore {
    fn get<'a>(
        &'a self,
        _tenant: &'a str,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<ConfigItem>, ConfigError>> {
        let items = select(Some(&self.shared.state.lock().items), keys);
        Box::pin(async move { Ok(items) })
    }

    fn set<'a>(
        &'a self,
        _tenant: &'a str,
        _items: Vec<ConfigSetItem>,
        _delete: Vec<String>,
    ) -> BoxFuture<'a, Result<Vec<String>, ConfigError>> {
        let err = ConfigError::ReadOnly {
            store: self.shared.component.clone(),
        };
        Box::pin(async move { Err(err) })
    }

    fn subscribe<'a>(
        &'a self,
        tenant: &'a str,
        keys: Vec<String>,
    ) -> BoxFuture<'a, Result<(Vec<ConfigItem>, Subscriber), ConfigError>> {
        // The snapshot and the registration happen under the state lock,
        // which reloads hold while publishing, so no change falls between.
        let state = self.shared.state.lock();
        let snapshot = select(Some(&state.items), &keys);
        let subscriber = self.shared.hub.subscribe(tenant, keys);
        drop(state);
        Box::pin(async move { Ok((snapshot, subscriber)) })
    }
}
