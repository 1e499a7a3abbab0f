//! Kernel-verified peer identity (SO_PEERCRED) and its mapping to a tenant.

use std::os::fd::AsFd;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

use crate::config::TenantRule;

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

/// Maps peers to tenant names. Identity never comes from the application: the
/// rules only see what the kernel reported.
#[derive(Clone, Debug, Default)]
pub struct Tenants {
    rules: Vec<TenantRule>,
}

impl Tenants {
    /// Builds the mapping from configured rules (first match wins).
    pub fn new(rules: Vec<TenantRule>) -> Self {
        Self { rules }
    }

    /// The tenant of `peer`: the first rule naming its uid or gid, otherwise
    /// `uid:<uid>`, so that by default every local user is its own tenant.
    pub fn resolve(&self, peer: &Peer) -> String {
        self.rules
            .iter()
            .find(|r| r.uids.contains(&peer.uid) || r.gids.contains(&peer.gid))
            .map(|r| r.name.clone())
            .unwrap_or_else(|| format!("uid:{}", peer.uid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_match_by_uid_then_gid_else_uid_tenant() {
        let t = Tenants::new(vec![
            TenantRule {
                name: "web".into(),
                uids: vec![1000],
                gids: vec![],
            },
            TenantRule {
                name: "ops".into(),
                uids: vec![],
                gids: vec![50],
            },
        ]);
        let p = |uid, gid| Peer { pid: 1, uid, gid };
        assert_eq!(t.resolve(&p(1000, 50)), "web");
        assert_eq!(t.resolve(&p(1001, 50)), "ops");
        assert_eq!(t.resolve(&p(1002, 7)), "uid:1002");
    }

    #[test]
    fn credentials_of_a_socketpair_are_our_own() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = credentials(&a).unwrap();
        assert_eq!(peer.pid as u32, std::process::id());
        assert_eq!(peer.uid, nix::unistd::getuid().as_raw());
    }
}
