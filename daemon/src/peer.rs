//! Kernel-verified peer identity (SO_PEERCRED) and its mapping to a tenant.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use std::sync::Arc;

use mecha_abi::{Family, Opcode};

use crate::config::{DefaultTenant, TenantRule};

/// The credentials the kernel recorded for the peer when it connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    /// Process id of the connecting process.
    pub pid: i32,
    /// Its effective user id.
    pub uid: u32,
    /// Its effective group id.
    pub gid: u32,
}

/// Reads SO_PEERCRED from a connected Unix socket.
pub fn credentials(socket: &impl AsFd) -> nix::Result<Peer> {
    let cred = getsockopt(socket, PeerCredentials)?;
    Ok(Peer {
        pid: cred.pid(),
        uid: cred.uid(),
        gid: cred.gid(),
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
            if let Some(f) = (0..=u8::MAX)
                .map(Family::from_byte)
                .find(|f| !matches!(f, Family::Unknown(_) | Family::Link) && f.name() == family)
            {
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
}

impl Tenants {
    /// Builds the mapping from configured rules (first match wins); fails on
    /// an `allow` entry that names nothing.
    pub fn new(rules: Vec<TenantRule>, default: DefaultTenant) -> Result<Self, String> {
        let rules = rules
            .into_iter()
            .map(|r| {
                let allow = match &r.allow {
                    Some(entries) => Some(Arc::new(Allow::parse(&r.name, entries)?)),
                    None => None,
                };
                Ok((r, allow))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { rules, default })
    }

    /// The tenant of `peer`: the first rule naming its uid or gid; otherwise,
    /// unless the default policy denies, `uid:<uid>`, so that every local user
    /// is its own tenant. The error is the refusal message.
    pub fn resolve(&self, peer: &Peer) -> Result<Tenant, String> {
        if let Some((rule, allow)) = self
            .rules
            .iter()
            .find(|(r, _)| r.uids.contains(&peer.uid) || r.gids.contains(&peer.gid))
        {
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
            allow: None,
        };
        let t = Tenants::new(
            vec![
                rule("web", vec![1000], vec![]),
                rule("ops", vec![], vec![50]),
            ],
            DefaultTenant::Allow,
        )
        .unwrap();
        let p = |uid, gid| Peer { pid: 1, uid, gid };
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
        let t = Tenants::new(vec![], DefaultTenant::Deny).unwrap();
        let err = t
            .resolve(&Peer {
                pid: 1,
                uid: 5,
                gid: 5,
            })
            .unwrap_err();
        assert!(err.contains("deny"), "{err}");
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = credentials(&a).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    }
}
