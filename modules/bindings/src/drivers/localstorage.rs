//! `bindings.localstorage` (output): files in one directory, `rootPath`.
//! Operations `create` (the request's data into the file named by metadata
//! `fileName`, or a generated name; answered with metadata `fileName`),
//! `get` (the file's contents), `list` (a JSON array of the names beneath
//! `rootPath`) and `delete`.
//!
//! Every name is resolved by the kernel strictly beneath `rootPath` (see
//! [`beneath`](super::beneath)): no `..`, no absolute path, no symbolic
//! link on the way, so a tenant cannot read or write a file outside it, even
//! through a link planted inside. Subdirectories that exist may be named
//! (`a/b.txt`); `create` does not make directories.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use mecha_abi::msg::InvokeBindingReply;
use mecha_module::metadata::Metadata;
use mecha_module::{BoxFuture, DriverError};

use super::{beneath, Call, Output};
use crate::error::BindingError;

/// The fields of `bindings.localstorage` beyond the shared ones.
pub const FIELDS: [&str; 1] = ["rootPath"];

const OPERATIONS: [&str; 4] = ["create", "get", "list", "delete"];

/// Files one `list` walks at most: the answer is bounded by
/// `maxResponseBytes`, and this bounds the time a tree of empty
/// directories could take.
const MAX_LISTED: usize = 100_000;

/// A local storage binding.
pub struct LocalStorage {
    /// `rootPath`, for messages and `list`.
    root_path: PathBuf,
    /// The open root directory every name is resolved beneath.
    root: Arc<File>,
    /// Makes generated names unique within this instance.
    counter: AtomicU64,
}

impl LocalStorage {
    /// Opens `rootPath` (absolute, or relative to the module's data
    /// directory), creating it if it is missing.
    pub fn open(metadata: &Metadata<'_>, data_dir: &Path) -> Result<Self, BindingError> {
        let root_path = data_dir.join(metadata.required("rootPath")?);
        let unusable = |e: io::Error| -> BindingError {
            metadata
                .error(format!(
                    "metadata field \"rootPath\": cannot use directory {}: {e}",
                    root_path.display()
                ))
                .into()
        };
        std::fs::create_dir_all(&root_path).map_err(unusable)?;
        let root = File::open(&root_path).map_err(unusable)?;
        if !root.metadata().map_err(unusable)?.is_dir() {
            return Err(unusable(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        Ok(Self {
            root_path,
            root: Arc::new(root),
            counter: AtomicU64::new(0),
        })
    }

    fn generated_name(&self) -> String {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{nanos:x}-{:x}-{n}", std::process::id())
    }
}

/// Refuses what `openat2` would refuse anyway, with a clearer message:
/// an empty name, an absolute one, one with a `..` or NUL.
fn check_name(name: &str) -> Result<(), BindingError> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name.split('/').any(|part| part == "..");
    if bad {
        return Err(BindingError::Invalid(format!(
            "fileName {name:?} must be a relative name beneath rootPath, without \"..\""
        )));
    }
    Ok(())
}

/// Words a file-system failure on `name`.
fn fs_error(name: &str, e: &io::Error) -> BindingError {
    match e.raw_os_error() {
        Some(libc::ENOENT) => BindingError::NotFound(format!("file {name:?} does not exist")),
        Some(libc::ELOOP | libc::EXDEV) => BindingError::Invalid(format!(
            "fileName {name:?} leaves rootPath or passes through a symbolic link"
        )),
        Some(libc::EISDIR | libc::ENOTDIR) => {
            BindingError::Invalid(format!("fileName {name:?} is or passes a non-file"))
        }
        Some(libc::ENOSYS) => BindingError::Driver(DriverError::Internal(
            "bindings.localstorage needs openat2 (Linux 5.6 or later)".to_owned(),
        )),
        _ => BindingError::Driver(DriverError::Internal(format!("file {name:?}: {e}"))),
    }
}

fn reply(data: Vec<u8>, metadata: Vec<(String, String)>) -> InvokeBindingReply {
    InvokeBindingReply { data, metadata }
}

impl Output for LocalStorage {
    fn invoke<'a>(
        &'a self,
        call: Call<'a>,
    ) -> BoxFuture<'a, Result<InvokeBindingReply, BindingError>> {
        Box::pin(async move {
            let root = Arc::clone(&self.root);
            let limit = call.limit;
            match call.operation {
                "create" => {
                    let (name, generated) = match call.get("fileName").filter(|n| !n.is_empty()) {
                        Some(name) => (name.to_owned(), false),
                        None => (self.generated_name(), true),
                    };
                    check_name(&name)?;
                    let data = call.data.to_vec();
                    blocking(move || {
                        let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC;
                        if generated {
                            flags |= libc::O_EXCL;
                        }
                        let mut file = beneath::open(&root, &name, flags, 0o640)
                            .map_err(|e| fs_error(&name, &e))?;
                        file.write_all(&data)
                            .and_then(|()| file.sync_data())
                            .map_err(|e| fs_error(&name, &e))?;
                        Ok(reply(Vec::new(), vec![("fileName".to_owned(), name)]))
                    })
                    .await
                }
                "get" => {
                    let name = call.required("fileName")?.to_owned();
                    check_name(&name)?;
                    blocking(move || {
                        // Non-blocking, so that opening a FIFO does not wait
                        // for a writer; it is then refused as not a file.
                        let file =
                            beneath::open(&root, &name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
                                .map_err(|e| fs_error(&name, &e))?;
                        let meta = file.metadata().map_err(|e| fs_error(&name, &e))?;
                        if !meta.is_file() {
                            return Err(fs_error(
                                &name,
                                &io::Error::from_raw_os_error(libc::EISDIR),
                            ));
                        }
                        if meta.size() > limit as u64 {
                            return Err(call_too_large("get", limit, meta.size()));
                        }
                        let mut data = Vec::new();
                        // The file may grow after the size check; the read
                        // is bounded all the same.
                        file.take(limit as u64 + 1)
                            .read_to_end(&mut data)
                            .map_err(|e| fs_error(&name, &e))?;
                        if data.len() > limit {
                            return Err(call_too_large("get", limit, data.len() as u64));
                        }
                        Ok(reply(data, Vec::new()))
                    })
                    .await
                }
                "delete" => {
                    let name = call.required("fileName")?.to_owned();
                    check_name(&name)?;
                    blocking(move || {
                        // Resolved first as every other name is, so a
                        // symbolic link is refused here too rather than
                        // removed (which would be harmless, but
                        // inconsistent).
                        beneath::open(&root, &name, libc::O_PATH, 0)
                            .map_err(|e| fs_error(&name, &e))?;
                        let (parent, base) = match name.rsplit_once('/') {
                            Some((parent, base)) => (Some(parent), base),
                            None => (None, name.as_str()),
                        };
                        if base.is_empty() || base == "." {
                            return Err(fs_error(
                                &name,
                                &io::Error::from_raw_os_error(libc::EISDIR),
                            ));
                        }
                        let dir = match parent {
                            Some(parent) => {
                                beneath::open(&root, parent, libc::O_PATH | libc::O_DIRECTORY, 0)
                                    .map_err(|e| fs_error(&name, &e))?
                            }
                            None => root.try_clone().map_err(|e| fs_error(&name, &e))?,
                        };
                        beneath::unlink(&dir, base).map_err(|e| fs_error(&name, &e))?;
                        Ok(reply(Vec::new(), Vec::new()))
                    })
                    .await
                }
                "list" => {
                    let root_path = self.root_path.clone();
                    blocking(move || list(&root_path, limit)).await
                }
                _ => Err(call.unknown("bindings.localstorage", &OPERATIONS)),
            }
        })
    }
}

fn call_too_large(operation: &str, limit: usize, size: u64) -> BindingError {
    BindingError::TooLarge(format!(
        "the result of operation {operation:?} ({size} bytes) is larger than the binding's \
         maxResponseBytes, {limit} bytes; nothing of it is returned"
    ))
}

/// The names of the regular files beneath `root`, as a JSON array, without
/// following symbolic links; refused once the answer would pass `limit`.
fn list(root: &Path, limit: usize) -> Result<InvokeBindingReply, BindingError> {
    let mut names: Vec<String> = Vec::new();
    let mut size = 2usize;
    let mut dirs = vec![PathBuf::new()];
    let mut seen = 0usize;
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(root.join(&dir)).map_err(|e| fs_error(&dir.to_string_lossy(), &e))?;
        for entry in entries {
            let entry = entry.map_err(|e| fs_error(&dir.to_string_lossy(), &e))?;
            seen += 1;
            if seen > MAX_LISTED {
                return Err(call_too_large("list", limit, u64::MAX));
            }
            let kind = entry
                .file_type()
                .map_err(|e| fs_error(&dir.to_string_lossy(), &e))?;
            let rel = dir.join(entry.file_name());
            if kind.is_dir() {
                dirs.push(rel);
            } else if kind.is_file() {
                let name = rel.to_string_lossy().into_owned();
                size += name.len() + 3;
                if size > limit {
                    return Err(call_too_large("list", limit, size as u64));
                }
                names.push(name);
            }
        }
    }
    names.sort();
    let data = serde_json::to_vec(&names)
        .map_err(|e| BindingError::Driver(DriverError::Internal(e.to_string())))?;
    if data.len() > limit {
        return Err(call_too_large("list", limit, data.len() as u64));
    }
    Ok(reply(data, Vec::new()))
}

/// Runs file work on the blocking pool, so a slow disk never stalls the
/// runtime thread that also answers health pings.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, BindingError> + Send + 'static,
) -> Result<T, BindingError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| {
        BindingError::Driver(DriverError::Internal(format!("file task failed: {e}")))
    })?
}
