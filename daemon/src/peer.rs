//! Kernel-verified peer identity (SO_PEERCRED) and its mapping to a tenant.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use std::sync::Arc;

use mecha_abi::{Family, Opcode};

use crate::config::{DefaultTenant, TenantRule};

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
}

impl Default for Peer {
    fn default() -> Self {
        Self {
            pid: 0,
            uid: 0,
            gid: 0,
            socket: Arc::from(Path::new("")),
            pod: None,
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

/// Reads SO_PEERCRED from a connected Unix socket, and the peer's pod UID.
pub fn identify(socket: &impl AsFd, listening: &Arc<Path>) -> nix::Result<Peer> {
    let cred = getsockopt(socket, PeerCredentials)?;
    let cgroup = proc_root().join(cred.pid().to_string()).join("cgroup");
    let pod = std::fs::read_to_string(cgroup)
        .ok()
        .and_then(|text| pod_uid(&text));
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
        socket: Arc::clone(listening),
        pod,
    })
}

/// Finds the pod UID in a `/proc/<pid>/cgroup` text. Kubelet names pod
/// cgroups `pod<uid>` (cgroupfs driver, dashes) or `…-pod<uid>.slice`
/// (systemd driver, underscores instead of dashes) under a `kubepods` tree.
pub fn pod_uid(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .filter(|l| l.contains("kubepods"))
        .flat_map(|l| l.split('/'))
        .find_map(|segment| {
            // "pod<uid>" (cgroupfs) or "kubepods-<qos>-pod<uid>.slice" (systemd).
            let start = if segment.starts_with("pod") {
                3
            } else {
                segment.find("-pod")? + 4
            };
            let uid = segment[start..]
                .trim_end_matches(".slice")
                .replace('_', "-");
            let valid = uid.len() == 36 && uid.chars().all(|c| c.is_ascii_hexdigit() || c == '-');
            valid.then_some(uid)
        })
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

    /// The tenant of `peer`: the first rule naming its uid, gid, socket or pod; otherwise,
    /// unless the default policy denies, `uid:<uid>`, so that every local user
    /// is its own tenant. The error is the refusal message.
    pub fn resolve(&self, peer: &Peer) -> Result<Tenant, String> {
        if let Some((rule, allow)) = self.rules.iter().find(|(r, _)| self.matches(r, peer)) {
            return Ok(Tenant {
                name: rule.name.clone(),
                allow: allow.clone(),
            });
        }
        match self.default {
            DefaultTenant::Allow => Ok(Tenant {
                name: format!("uid:{}", peer.uid),
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
    fn pod_uids_are_found_in_both_cgroup_drivers() {
        let uid = "0f7e3a52-4b1c-4d2e-9a8b-123456789abc";
        let cgroupfs = format!("0::/kubepods/burstable/pod{uid}/abcdef\n");
        assert_eq!(pod_uid(&cgroupfs).as_deref(), Some(uid));
        let systemd = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-1.scope\n",
            uid.replace('-', "_")
        );
        assert_eq!(pod_uid(&systemd).as_deref(), Some(uid));
        assert_eq!(pod_uid("0::/user.slice/user-1000.slice\n"), None);
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = identify(&a, &Arc::from(Path::new("/x"))).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    }
}
