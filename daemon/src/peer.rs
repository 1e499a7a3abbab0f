//! Kernel-verified peer identity (SO_PEERCRED) and its mapping to a tenant.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use std::sync::{Arc, OnceLock};

use mecha_abi::{Family, Opcode};

use crate::config::{DefaultTenant, TenantRule};
use crate::pod::CgroupView;

/// What the kernel tells about a peer: its credentials (SO_PEERCRED) when it
/// connected, the socket it connected through, and its Kubernetes pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id of the connecting process.
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
    /// The listening socket it connected to.
    pub socket: Arc<Path>,
    /// The pod UID from its cgroup, when it runs in a Kubernetes pod.
    pub pod: Option<String>,
    /// It runs in the daemon's own mount namespace: on the daemon's host (or
    /// in the daemon's own container), not in another container.
    pub local: bool,
    /// It reached mechad through a personality's session broker (the Dapr
    /// API), not on mechad's own socket. Such a session is never an admin:
    /// a personality is a module, and a module must not be able to act as
    /// an admin on a caller's behalf.
    pub personality: bool,
}

impl Default for Peer {
    fn default() -> Self {
        Self {
            pid: 0,
            uid: 0,
            gid: 0,
            socket: Arc::from(Path::new("")),
            pod: None,
            local: false,
            personality: false,
        }
    }
}

/// Where /proc is; tests point it at a fabricated tree (`MECHA_PROC_ROOT`,
/// test-only) to exercise pod identity without Kubernetes.
fn proc_root() -> PathBuf {
    std::env::var_os("MECHA_PROC_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/proc"))
}

/// How this daemon sees other processes' cgroups, read once: the daemon's
/// cgroup namespace never changes, nor does the host's pid 1.
fn cgroup_view() -> &'static CgroupView {
    static VIEW: OnceLock<CgroupView> = OnceLock::new();
    VIEW.get_or_init(|| CgroupView::read(&proc_root()))
}

/// Why a connection could not be identified.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    /// The socket has no peer credentials.
    #[error("no peer credentials: {0}")]
    Credentials(#[from] nix::Error),
    /// The connecting process exited before what /proc says about it could be
    /// trusted: its pid may already name another process.
    #[error("the connecting process {0} exited before it could be identified")]
    Gone(i32),
}

/// Reads SO_PEERCRED from a connected Unix socket, and what /proc says of the
/// peer: its pod UID and its mount namespace.
///
/// A pid can be reused once its process is gone, and the socket may outlive
/// the process that connected (passed to another). So the peer is held by a
/// pidfd (SO_PEERPIDFD, which names the connecting process itself; or
/// pidfd_open right away on kernels before 6.5) while /proc is read, and a
/// peer found dead afterwards is refused: what was read may describe
/// someone else.
pub fn identify(socket: &impl AsFd, listening: &Arc<Path>) -> Result<Peer, IdentifyError> {
    let cred = getsockopt(socket, PeerCredentials)?;
    let pidfd = peer_pidfd(socket).or_else(|| pidfd_open(cred.pid()));
    let cgroup = proc_root().join(cred.pid().to_string()).join("cgroup");
    let pod = std::fs::read_to_string(cgroup)
        .ok()
        .and_then(|text| cgroup_view().pod_uid(&text));
    // Only a root peer is ever asked where it runs (`Daemon::is_admin`), so
    // nobody else costs the two /proc reads.
    let local = cred.uid() == 0 && same_mount_namespace(cred.pid());
    if pidfd.as_ref().is_some_and(|fd| !alive(fd)) {
        return Err(IdentifyError::Gone(cred.pid()));
    }
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        socket: Arc::clone(listening),
        pod,
        local,
        personality: false,
    })
}

/// SO_PEERPIDFD (Linux 6.5): a pidfd of the process that connected.
const SO_PEERPIDFD: libc::c_int = 77;

/// The peer's pidfd from the socket, where the kernel supports it.
fn peer_pidfd(socket: &impl AsFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, a c_int whose
    // size `len` holds; the socket descriptor is valid for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            std::ptr::addr_of_mut!(fd).cast(),
            &mut len,
        )
    };
    // SAFETY: on success the kernel returned a new descriptor that nothing
    // else owns.
    (rc == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A pidfd of process `pid`, for kernels without SO_PEERPIDFD.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor
    // or -1; it touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = libc::c_int::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Whether the process behind `pidfd` has not exited (signal 0 checks
/// without sending anything). EPERM means it exists but belongs to a user
/// the daemon may not signal (a daemon that is not root): alive.
fn alive(pidfd: &OwnedFd) -> bool {
    // SAFETY: pidfd_send_signal with signal 0 and no siginfo only checks the
    // process; the descriptor is valid for the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether process `pid` shares the daemon's mount namespace. False when
/// either namespace cannot be read (a daemon that is not root may not read
/// another user's), so doubt never grants admin rights.
pub(crate) fn same_mount_namespace(pid: i32) -> bool {
    let ns = |p: PathBuf| std::fs::read_link(p).ok();
    match (
        ns(PathBuf::from(format!("/proc/{pid}/ns/mnt"))),
        ns(PathBuf::from("/proc/self/ns/mnt")),
    ) {
        (Some(theirs), Some(ours)) => theirs == ours,
        _ => false,
    }
}

/// The operations one tenant may use, from its rule's `allow` list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allow {
    families: Vec<Family>,
    opcodes: Vec<Opcode>,
}

impl Allow {
    /// Parses `allow` entries: family names (`state`, `state.*`) or opcode
    /// names (`STATE_GET`, any case). Unknown names are configuration errors.
    pub fn parse(tenant: &str, entries: &[String]) -> Result<Self, String> {
        let mut allow = Allow {
            families: Vec::new(),
            opcodes: Vec::new(),
        };
        for entry in entries {
            let family = entry.trim_end_matches(".*");
            if let Some(f) = (0..=u8::MAX).map(Family::from_byte).find(|f| {
                !matches!(f, Family::Unknown(_) | Family::Link | Family::Peer) && f.name() == family
            }) {
                allow.families.push(f);
            } else if let Some(op) = (0..=u16::MAX)
                .map(Opcode)
                .find(|op| op.name().is_some_and(|n| n.eq_ignore_ascii_case(entry)))
            {
                allow.opcodes.push(op);
            } else {
                return Err(format!(
                    "Configuration spec.tenants[{tenant}].allow: {entry:?} is neither a capability family nor an opcode name"
                ));
            }
        }
        Ok(allow)
    }

    /// Whether `opcode` is allowed.
    pub fn permits(&self, opcode: Opcode) -> bool {
        self.families.contains(&opcode.family()) || self.opcodes.contains(&opcode)
    }
}

/// Who a connection belongs to.
#[derive(Clone, Debug)]
pub struct Tenant {
    /// The tenant name that scopes every key.
    pub name: String,
    /// What it may use; `None` means everything.
    pub allow: Option<Arc<Allow>>,
}

/// Maps peers to tenants. Identity never comes from the application: the
/// rules only see what the kernel reported.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    rules: Vec<(TenantRule, Option<Arc<Allow>>)>,
    default: DefaultTenant,
    /// Pod UID → `namespace/name`, from the pods file.
    pods: HashMap<String, String>,
}

/// One entry of the pods file.
#[derive(serde::Deserialize)]
struct PodEntry {
    uid: String,
    namespace: String,
    name: String,
}

/// Loads a pods file: a YAML list of `{uid, namespace, name}`.
pub fn load_pods(path: &Path) -> Result<HashMap<String, String>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("podsFile {}: {e}", path.display()))?;
    let pods: Vec<PodEntry> =
        serde_norway::from_str(&text).map_err(|e| format!("podsFile {}: {e}", path.display()))?;
    Ok(pods
        .into_iter()
        .map(|p| (p.uid, format!("{}/{}", p.namespace, p.name)))
        .collect())
}

impl Tenants {
    /// Builds the mapping from configured rules (first match wins); fails on
    /// an `allow` entry that names nothing.
    pub fn new(
        rules: Vec<TenantRule>,
        default: DefaultTenant,
        pods: HashMap<String, String>,
    ) -> Result<Self, String> {
        let rules = rules
            .into_iter()
            .map(|r| {
                // '@' starts the names of shared namespaces (a component's
                // `sharedTenants`), which must never equal a tenant's.
                if r.name.is_empty() || r.name.starts_with('@') || r.name.contains('\0') {
                    return Err(format!(
                        "tenant name {:?}: must be non-empty, not start with '@' and hold no NUL",
                        r.name
                    ));
                }
                let allow = match &r.allow {
                    Some(entries) => Some(Arc::new(Allow::parse(&r.name, entries)?)),
                    None => None,
                };
                Ok((r, allow))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self {
            rules,
            default,
            pods,
        })
    }

    /// Whether `rule` names `peer` by uid, gid, socket or pod.
    fn matches(&self, rule: &TenantRule, peer: &Peer) -> bool {
        let pod_match = peer.pod.as_ref().is_some_and(|uid| {
            let named = self.pods.get(uid);
            rule.pods
                .iter()
                .any(|p| p == uid || named.is_some_and(|n| n == p))
        });
        rule.uids.contains(&peer.uid)
            || rule.gids.contains(&peer.gid)
            || rule.sockets.iter().any(|s| s.as_path() == &*peer.socket)
            || pod_match
    }

    /// The tenant of `peer`: the first rule naming its uid, gid, socket or
    /// pod; otherwise, unless the default policy denies, its pod
    /// (`pod:<namespace>/<name>` when the pods file names it, else
    /// `pod:<uid>`) when it runs in one, or `uid:<uid>`: every pod, and every
    /// local user outside pods, is its own tenant. Pods that share a uid (or
    /// all run as root) are still apart. The error is the refusal message.
    /// Tenant `name`, with its rule's allow list if a rule names it (a
    /// tenant a Dapr API token stands for).
    pub fn named(&self, name: &str) -> Tenant {
        let allow = self
            .rules
            .iter()
            .find(|(r, _)| r.name == name)
            .and_then(|(_, allow)| allow.clone());
        Tenant {
            name: name.to_owned(),
            allow,
        }
    }

    /// The tenant whose rule's `appIds` names `app_id`, if one does.
    pub fn owner_of(&self, app_id: &str) -> Option<Tenant> {
        self.rules
            .iter()
            .find(|(r, _)| {
                r.app_ids
                    .as_ref()
                    .is_some_and(|ids| ids.iter().any(|id| id == app_id))
            })
            .map(|(rule, allow)| Tenant {
                name: rule.name.clone(),
                allow: allow.clone(),
            })
    }

    pub fn resolve(&self, peer: &Peer) -> Result<Tenant, String> {
        if let Some((rule, allow)) = self.rules.iter().find(|(r, _)| self.matches(r, peer)) {
            return Ok(Tenant {
                name: rule.name.clone(),
                allow: allow.clone(),
            });
        }
        match self.default {
            DefaultTenant::Allow => Ok(Tenant {
                name: match &peer.pod {
                    Some(uid) => match self.pods.get(uid) {
                        Some(named) => format!("pod:{named}"),
                        None => format!("pod:{uid}"),
                    },
                    None => format!("uid:{}", peer.uid),
                },
                allow: None,
            }),
            DefaultTenant::Deny => Err(format!(
                "uid {} gid {} matches no tenant rule and the default tenant policy is deny",
                peer.uid, peer.gid
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_uid_then_gid_else_uid_tenant() {
        let rule = |name: &str, uids: Vec<u32>, gids: Vec<u32>| TenantRule {
            name: name.into(),
            uids,
            gids,
            sockets: vec![],
            pods: vec![],
            allow: None,
            app_ids: None,
        };
        let t = Tenants::new(
            vec![
                rule("web", vec![1000], vec![]),
                rule("ops", vec![], vec![50]),
            ],
            DefaultTenant::Allow,
            HashMap::new(),
        )
        .unwrap();
        let p = |uid, gid| Peer {
            pid: 1,
            uid,
            gid,
            ..Peer::default()
        };
        assert_eq!(t.resolve(&p(1000, 50)).unwrap().name, "web");
        assert_eq!(t.resolve(&p(1001, 50)).unwrap().name, "ops");
        assert_eq!(t.resolve(&p(1002, 7)).unwrap().name, "uid:1002");
    }

    #[test]
    fn allow_lists_parse_families_and_opcodes() {
        let a = Allow::parse("t", &["state_get".into(), "pubsub.*".into()]).unwrap();
        assert!(a.permits(Opcode::STATE_GET) && a.permits(Opcode::PUBSUB_PUBLISH));
        assert!(!a.permits(Opcode::STATE_SET));
        assert!(Allow::parse("t", &["nonsense".into()])
            .unwrap_err()
            .contains("nonsense"));
    }

    #[test]
    fn default_deny_refuses_unmatched_peers() {
        let t = Tenants::new(vec![], DefaultTenant::Deny, HashMap::new()).unwrap();
        let err = t
            .resolve(&Peer {
                pid: 1,
                uid: 5,
                gid: 5,
                ..Peer::default()
            })
            .unwrap_err();
        assert!(err.contains("deny"), "{err}");
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = identify(&a, &Arc::from(Path::new("/x"))).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    }
}
