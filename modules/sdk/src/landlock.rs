//! The Landlock rules every module puts on itself once it knows its data
//! directory: it may read (and execute) files anywhere its uid allows, but
//! write, create, remove or rename only beneath its own data directory (and
//! the directory of an embedded database a component places elsewhere with an
//! absolute `path`), and write to `/dev/null`.
//!
//! Reading stays open on purpose: which files a module reads depends on its
//! configuration (a configuration file, a secrets directory, TLS certificates,
//! the resolver's files), and a rule one path short would break a module on a
//! machine the tests never saw. Writing is what an attacker who took over a
//! module would use to persist or to tamper with another module's data, and
//! no module writes outside its data directory. Together with the private
//! (0700) data directories, one module's files are out of every other
//! module's reach even when all run as the same uid.
//!
//! The rules bind the calling thread and the threads it starts afterwards, so
//! the SDK applies them on the module's main thread before `Module::init`,
//! before any driver starts a thread. Kernels without Landlock (before 5.13,
//! or with it disabled) run the module without it and say so in the log;
//! `MECHA_LANDLOCK=off` skips it, for debugging.

use std::path::{Path, PathBuf};

use mecha_abi::msg::LinkHello;

use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus,
    ABI,
};

/// The newest Landlock ABI whose file-system rights these rules handle; on an
/// older kernel the rights it lacks are simply not restricted (best effort).
const ABI_VERSION: ABI = ABI::V5;

/// How far the rules took hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confinement {
    /// Every right the rules handle is enforced.
    Full,
    /// The kernel's Landlock is older than [`ABI_VERSION`]: some rights
    /// (e.g. truncation, device ioctls) are not restricted.
    Partial,
    /// The kernel has no Landlock; nothing is restricted.
    Unsupported,
}

/// Why the rules could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("landlock: {0}")]
pub struct LandlockError(String);

/// True when `MECHA_LANDLOCK=off` asks to skip the rules.
pub fn disabled() -> bool {
    std::env::var("MECHA_LANDLOCK").is_ok_and(|v| v.eq_ignore_ascii_case("off"))
}

/// Where the module described by `hello` may write: its data directory, for
/// each embedded-database component (type `*.redb`) with a `path`, the
/// directory that file is in (a relative `path` is inside the data directory
/// already; an absolute one may be anywhere the operator chose), and the
/// `rootPath` of each `bindings.localstorage` component, the one directory
/// that binding writes files to.
pub fn writable_dirs(hello: &LinkHello) -> Vec<PathBuf> {
    let data_dir = PathBuf::from(&hello.data_dir);
    let mut dirs = vec![data_dir.clone()];
    let field = |spec: &mecha_abi::msg::ComponentSpec, wanted: &str| {
        spec.metadata
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(wanted))
            .map(|(_, value)| data_dir.join(value))
    };
    for spec in &hello.components {
        let dir = if spec.kind.ends_with(".redb") {
            field(spec, "path").and_then(|path| path.parent().map(Path::to_path_buf))
        } else if spec.kind == "bindings.localstorage" {
            field(spec, "rootPath")
        } else {
            None
        };
        if let Some(dir) = dir {
            if !dir.starts_with(&data_dir) {
                dirs.push(dir);
            }
        }
    }
    dirs
}

/// Creates the writable directories that do not exist yet, where the
/// module's uid may: a Landlock rule can only name a directory that exists,
/// and once the rules hold, the module could no longer create one outside
/// its data directory. A directory that cannot be created is left for the
/// driver to report when it opens.
pub fn create_missing(dirs: &[PathBuf]) {
    for dir in dirs {
        if !dir.exists() {
            let _ = std::fs::create_dir_all(dir);
        }
    }
}

/// Restricts the calling thread, and the threads it starts from now on, to
/// writing beneath `writable` (see the module documentation).
pub fn restrict_writes(writable: &[PathBuf]) -> Result<Confinement, LandlockError> {
    let err = |e: &dyn std::fmt::Display| LandlockError(e.to_string());
    let all = AccessFs::from_all(ABI_VERSION);
    let read = AccessFs::from_read(ABI_VERSION);
    let status = Ruleset::default()
        .handle_access(all)
        .map_err(|e| err(&e))?
        .create()
        .map_err(|e| err(&e))?
        .add_rules(path_beneath_rules(["/"], read))
        .map_err(|e| err(&e))?
        // Everything beneath the writable directories except creating device
        // nodes: a module never needs one, and a device node in its data
        // directory would be a door to the hardware (or to another module's
        // disk) for whoever took the module over.
        .add_rules(path_beneath_rules(
            writable,
            all & !(AccessFs::MakeChar | AccessFs::MakeBlock),
        ))
        .map_err(|e| err(&e))?
        .add_rules(path_beneath_rules(
            ["/dev/null"],
            AccessFs::ReadFile | AccessFs::WriteFile,
        ))
        .map_err(|e| err(&e))?
        .restrict_self()
        .map_err(|e| err(&e))?;
    Ok(match status.ruleset {
        RulesetStatus::FullyEnforced => Confinement::Full,
        RulesetStatus::PartiallyEnforced => Confinement::Partial,
        RulesetStatus::NotEnforced => Confinement::Unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs on a thread of its own, because the rules bind the thread that
    /// applies them (and would otherwise bind the test harness's thread).
    #[test]
    fn writes_outside_the_data_directory_are_refused_reads_are_not() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let outside = elsewhere.path().join("readable");
        std::fs::write(&outside, b"before").unwrap();
        let (data_dir, other) = (data.path().to_path_buf(), elsewhere.path().to_path_buf());
        let outcome = std::thread::spawn(move || {
            let confinement = restrict_writes(std::slice::from_ref(&data_dir)).unwrap();
            if confinement == Confinement::Unsupported {
                return None;
            }
            let inside = std::fs::write(data_dir.join("state.redb"), b"ok");
            let created = std::fs::write(other.join("planted"), b"x");
            let overwritten = std::fs::write(other.join("readable"), b"after");
            let read = std::fs::read(other.join("readable"));
            let devnull = std::fs::write("/dev/null", b"x");
            Some((inside, created, overwritten, read, devnull))
        })
        .join()
        .unwrap();
        let Some((inside, created, overwritten, read, devnull)) = outcome else {
            eprintln!("this kernel has no Landlock; nothing to check");
            return;
        };
        inside.expect("the data directory stays writable");
        devnull.expect("/dev/null stays writable");
        for refused in [created, overwritten] {
            let e = refused.expect_err("a write outside the data directory");
            assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
        }
        assert_eq!(read.unwrap(), b"before", "reading elsewhere still works");
        // Threads the test did not restrict are unaffected.
        std::fs::write(elsewhere.path().join("planted"), b"x").unwrap();
    }
}

#[cfg(test)]
mod writable {
    use super::*;
    use mecha_abi::msg::ComponentSpec;

    fn hello(components: Vec<ComponentSpec>) -> LinkHello {
        LinkHello {
            version: mecha_abi::VERSION,
            module: "state".into(),
            data_dir: "/var/lib/mecha/state".into(),
            components,
        }
    }

    fn spec(kind: &str, path: Option<&str>) -> ComponentSpec {
        ComponentSpec {
            name: "c".into(),
            kind: kind.into(),
            metadata: path
                .map(|p| vec![("Path".to_string(), p.to_string())])
                .unwrap_or_default(),
        }
    }

    #[test]
    fn only_embedded_databases_placed_outside_add_a_directory() {
        let dirs = writable_dirs(&hello(vec![
            spec("state.redb", Some("/srv/db/state.redb")),
            spec("state.redb", Some("sub/inside.redb")),
            spec("state.redb", None),
            spec("configuration.file", Some("/etc/mecha/items.yaml")),
        ]));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/var/lib/mecha/state"),
                PathBuf::from("/srv/db")
            ]
        );
    }

    #[test]
    fn a_local_storage_binding_adds_its_root_path() {
        let binding = |root: &str| ComponentSpec {
            name: "files".into(),
            kind: "bindings.localstorage".into(),
            metadata: vec![("rootPath".into(), root.into())],
        };
        let dirs = writable_dirs(&hello(vec![
            binding("/srv/files"),
            binding("inside"),
            spec("bindings.http", Some("/srv/elsewhere")),
        ]));
        assert_eq!(
            dirs,
            vec![
                PathBuf::from("/var/lib/mecha/state"),
                PathBuf::from("/srv/files")
            ]
        );
    }
}
