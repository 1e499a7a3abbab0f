//! Who may see the dashboard and who may act on it.
//!
//! The dashboard names tenants and apps, so it is shown only to peers on the
//! loopback interface (a local operator, `kubectl port-forward` into mechad's
//! pod), or to a browser presenting the configured token. Two browser
//! attacks are closed as well: DNS rebinding (a page of another site that
//! resolves its own name to 127.0.0.1 to read the API) by accepting from
//! loopback peers only `Host` names that are loopback, and cross-site
//! requests (a page making the operator's browser POST a restart) by
//! requiring a header no cross-site form can send and no cross-site script
//! may send without a CORS pre-flight, which this endpoint never grants.

use std::net::{IpAddr, SocketAddr};

use mecha_http::RequestHead;

use super::loopback;
use crate::daemon::Daemon;
use crate::peer::Peer;

/// The header every state-changing request must carry.
pub const ACTION_HEADER: &str = "X-Mecha-Dashboard";

/// Who is asking.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Viewer {
    /// A peer on the loopback interface.
    Local {
        /// Its address.
        peer: SocketAddr,
        /// Ours, as it reached us.
        local: SocketAddr,
    },
    /// A browser with the configured token: an admin, from anywhere.
    Token,
}

/// Why a request is refused, as an HTTP status and a message.
pub type Refusal = (u16, String);

/// The viewer of `head` from `peer`, or why it may not see the dashboard.
pub fn viewer(
    head: &RequestHead,
    peer: SocketAddr,
    local: SocketAddr,
    token: Option<&str>,
) -> Result<Viewer, Refusal> {
    if let Some(token) = token {
        if presented(head).is_some_and(|given| same_secret(given, token)) {
            return Ok(Viewer::Token);
        }
    }
    if !is_loopback(peer.ip()) {
        let how = match token {
            Some(_) => "present the dashboard token (Authorization: Bearer <token>)",
            None => "set spec.http.dashboardTokenFile to reach it from elsewhere",
        };
        return Err((
            403,
            format!("the dashboard is shown to loopback peers only; {how}"),
        ));
    }
    if let Some(host) = head.header("Host") {
        if !loopback_host(host, local) {
            return Err((
                403,
                format!("Host {host:?} is not a loopback name; open the dashboard as http://127.0.0.1:{}/", local.port()),
            ));
        }
    }
    Ok(Viewer::Local { peer, local })
}

/// The token a request presents: `Authorization: Bearer <token>`.
fn presented(head: &RequestHead) -> Option<&str> {
    let value = head.header("Authorization")?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Compares without stopping at the first difference, so the time taken
/// does not tell an attacker how much of a guess was right.
fn same_secret(given: &str, expected: &str) -> bool {
    let (a, b) = (given.as_bytes(), expected.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, byte) in b.iter().enumerate() {
        diff |= a.get(i).copied().unwrap_or(0) ^ byte;
    }
    diff == 0
}

fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        v4 => v4.is_loopback(),
    }
}

/// A `Host` value naming a loopback address or `localhost`, with or
/// without a port.
fn loopback_host(host: &str, local: SocketAddr) -> bool {
    let name = match host.strip_prefix('[') {
        // "[::1]:9464" or "[::1]".
        Some(rest) => rest.split(']').next().unwrap_or_default(),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<IpAddr>()
            .is_ok_and(|ip| is_loopback(ip) || ip == local.ip())
}

/// Whether `viewer` may act as an admin (restart modules): a token holder
/// may; a loopback peer may when the uid owning its socket is an admin by
/// the daemon's rules (`Daemon::is_admin`), root counting only in the
/// daemon's own mount namespace. `Err` says why not.
pub fn admin(viewer: Viewer, daemon: &Daemon) -> Result<String, String> {
    let (peer, local) = match viewer {
        Viewer::Token => return Ok("token".into()),
        Viewer::Local { peer, local } => (peer, local),
    };
    let Some(owner) = loopback::owner(peer, local) else {
        return Err("the connection's owner cannot be found in the kernel's socket table".into());
    };
    let own = nix::unistd::geteuid().as_raw();
    let pid = if owner.uid == 0 && own == 0 {
        loopback::holder(owner.inode)
    } else {
        None
    };
    let peer = Peer {
        pid: pid.unwrap_or(0),
        uid: owner.uid,
        local: pid.is_some_and(crate::peer::same_mount_namespace),
        ..Peer::default()
    };
    let tenant = daemon
        .tenants
        .read()
        .resolve(&peer)
        .map(|t| t.name)
        .unwrap_or_else(|_| format!("uid:{}", owner.uid));
    if daemon.is_admin(&peer, &tenant) {
        Ok(format!("uid {}", owner.uid))
    } else {
        Err(format!(
            "uid {} is not an admin of this daemon (see `admins` in the Configuration)",
            owner.uid
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".into(),
            target: "/api/modules".into(),
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn loopback_peers_and_token_holders_only() {
        let local: SocketAddr = "127.0.0.1:9464".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let far: SocketAddr = "10.1.2.3:40000".parse().unwrap();
        let ok = head(&[("Host", "127.0.0.1:9464")]);
        assert!(matches!(
            viewer(&ok, lo, local, None),
            Ok(Viewer::Local { .. })
        ));
        assert!(viewer(&head(&[("Host", "localhost")]), lo, local, None).is_ok());
        assert!(viewer(&head(&[]), lo, local, None).is_ok());
        // DNS rebinding: a foreign name resolved to loopback.
        let rebound = viewer(&head(&[("Host", "evil.example:9464")]), lo, local, None);
        assert_eq!(rebound.unwrap_err().0, 403);
        assert_eq!(viewer(&ok, far, local, None).unwrap_err().0, 403);
        let bearer = head(&[("Authorization", "Bearer s3cret")]);
        assert_eq!(
            viewer(&bearer, far, local, Some("s3cret")),
            Ok(Viewer::Token)
        );
        let wrong = head(&[("Authorization", "Bearer s3cre")]);
        assert!(viewer(&wrong, far, local, Some("s3cret")).is_err());
        assert!(viewer(&bearer, far, local, None).is_err());
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abd", "abc"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("abcd", "abc"));
        assert!(!same_secret("", "abc"));
    }
}
