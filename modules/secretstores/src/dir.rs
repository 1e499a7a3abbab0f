//! The `secretstores.local.dir` driver (mecha's own): a directory in which
//! each file is one secret, the way Kubernetes mounts a Secret into a pod.
//!
//! Metadata (matched ignoring case):
//! - `secretsDir` (required): the directory. Absolute, or relative to the
//!   module's data directory. It must exist when the module starts.
//!
//! A file's name is the secret's name and its whole content, unchanged (a
//! trailing newline included, as Kubernetes stores it), is the value of the
//! secret's single pair, keyed by the name. Names starting with `.` are not
//! secrets: that skips dotfiles and the machinery of Kubernetes' atomic
//! updates (`..data`, `..2024_01_01_...`), while the secret entries, which
//! are symlinks into `..data`, are read through. Subdirectories are not
//! secrets, and neither is a file larger than 1 MiB (Kubernetes' own limit
//! for a whole Secret), nor one whose name or content is not UTF-8 (the ABI
//! carries text): `get` reports such a file as an error, `bulk_get` leaves
//! it out.
//!
//! Files are read at every request, so a changed, added or removed file is
//! seen at once; Kubernetes swaps all keys of a Secret in one rename, so a
//! read sees either the old or the new version of each file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::{blocking, check_fields, read_limited, BoxFuture, Metadata, Secret, SecretStore};
use crate::{DriverError, StoreError};

/// The metadata fields this driver reads.
pub const FIELDS: [&str; 1] = ["secretsDir"];

/// The largest secret file served: Kubernetes' limit for a whole Secret.
const MAX_SECRET_BYTES: u64 = 1 << 20;

/// A secret store over a directory of files.
#[derive(Debug)]
pub struct DirStore {
    /// The directory, shared with the blocking tasks that read it.
    dir: Arc<PathBuf>,
}

/// What reading one directory entry found.
enum Entry {
    /// A secret.
    Secret(Secret),
    /// Nothing that is a secret (missing, a directory).
    Absent,
    /// A file that cannot be served; the reason names it, never its content.
    Unservable(String),
}

impl DirStore {
    /// Reads the metadata and checks that the directory exists.
    pub fn open(metadata: &Metadata<'_>, data_dir: &Path) -> Result<Self, StoreError> {
        check_fields(metadata, &FIELDS)?;
        // `join` keeps an absolute path as it is.
        let dir = data_dir.join(metadata.required("secretsDir")?);
        let reason = match std::fs::metadata(&dir) {
            Ok(meta) if meta.is_dir() => return Ok(Self { dir: Arc::new(dir) }),
            Ok(_) => format!("{} is not a directory", dir.display()),
            Err(e) => format!("cannot use {}: {e}", dir.display()),
        };
        Err(metadata.error(reason).into())
    }
}

impl SecretStore for DirStore {
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Option<Secret>, StoreError>> {
        Box::pin(async move {
            // A name that is not a plain, visible file name could reach
            // outside the directory (`../x`, `a/b`) or into Kubernetes'
            // machinery (`..data`); no such secret exists here.
            if !is_secret_name(name) {
                return Ok(None);
            }
            let dir = Arc::clone(&self.dir);
            let name = name.to_owned();
            match blocking(move || read_entry(&dir, &name)).await? {
                Entry::Secret(secret) => Ok(Some(secret)),
                Entry::Absent => Ok(None),
                Entry::Unservable(reason) => Err(StoreError::Driver(DriverError::Internal(reason))),
            }
        })
    }

    fn bulk_get(&self) -> BoxFuture<'_, Result<Vec<(String, Secret)>, StoreError>> {
        let dir = Arc::clone(&self.dir);
        Box::pin(blocking(move || read_all(&dir)))
    }
}

/// Whether `name` can be the name of a secret file in the directory.
fn is_secret_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\0'])
}

/// Reads the secret file `name` of `dir`, following symlinks. Blocks.
fn read_entry(dir: &Path, name: &str) -> Result<Entry, StoreError> {
    let path = dir.join(name);
    let unavailable = |e: std::io::Error| {
        StoreError::Driver(DriverError::Unavailable(format!(
            "cannot read {}: {e}",
            path.display()
        )))
    };
    let mut file = match std::fs::File::open(&path) {
        Ok(file) => file,
        // The file went away, or a symlink's target did (a Kubernetes update
        // in progress removes old targets only after the swap).
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Entry::Absent),
        Err(e) => return Err(unavailable(e)),
    };
    if !file.metadata().map_err(unavailable)?.is_file() {
        return Ok(Entry::Absent);
    }
    let Some(bytes) = read_limited(&mut file, MAX_SECRET_BYTES).map_err(unavailable)? else {
        return Ok(Entry::Unservable(format!(
            "{} is larger than {MAX_SECRET_BYTES} bytes",
            path.display()
        )));
    };
    match String::from_utf8(bytes) {
        Ok(value) => Ok(Entry::Secret(Secret::single(name, value))),
        Err(_) => Ok(Entry::Unservable(format!(
            "{} is not valid UTF-8",
            path.display()
        ))),
    }
}

/// Reads every secret file of `dir`, sorted by name. Blocks.
fn read_all(dir: &Path) -> Result<Vec<(String, Secret)>, StoreError> {
    let unavailable = |e: std::io::Error| {
        StoreError::Driver(DriverError::Unavailable(format!(
            "cannot list {}: {e}",
            dir.display()
        )))
    };
    let mut secrets = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unavailable)? {
        let entry = entry.map_err(unavailable)?;
        let Ok(name) = entry.file_name().into_string() else {
            tracing::warn!(dir = %dir.display(), "skipping a file whose name is not UTF-8");
            continue;
        };
        if !is_secret_name(&name) {
            continue;
        }
        match read_entry(dir, &name)? {
            Entry::Secret(secret) => secrets.push((name, secret)),
            Entry::Absent => {}
            Entry::Unservable(reason) => tracing::warn!("skipping a secret file: {reason}"),
        }
    }
    secrets.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(secrets)
}
