//! Peer name resolution, pluggable: each resolver turns configuration into
//! the addresses to dial and the TLS server name to verify at each. A static
//! table and DNS (every address of a headless service name) exist today; a
//! Kubernetes-API or Consul resolver would be one more implementation.

use std::future::Future;
use std::pin::Pin;

use crate::settings::Discovery;

/// One address to dial, and the name its certificate must be valid for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub addr: String,
    /// The TLS server name checked on dial.
    pub server_name: String,
}

/// The future a resolver returns.
pub type Resolving<'a> = Pin<Box<dyn Future<Output = Vec<Target>> + Send + 'a>>;

/// Finds the peers to dial.
pub trait Resolve: Send + Sync {
    /// The current targets. Failures are logged and yield fewer targets.
    fn resolve(&self) -> Resolving<'_>;
    /// Whether resolving again can find new targets (re-run every announce
    /// interval), or the answer never changes.
    fn changes(&self) -> bool;
}

/// A fixed table of node name → address; the node name is the server name.
pub struct Static {
    table: Vec<(String, String)>,
}

impl Resolve for Static {
    fn resolve(&self) -> Resolving<'_> {
        let targets = self
            .table
            .iter()
            .map(|(name, addr)| Target {
                addr: addr.clone(),
                server_name: name.clone(),
            })
            .collect();
        Box::pin(async move { targets })
    }

    fn changes(&self) -> bool {
        false
    }
}

/// Every address a DNS name resolves to, at one port; the DNS name is the
/// server name (so node certificates carry it as a SAN too).
pub struct Dns {
    name: String,
    port: u16,
}

impl Resolve for Dns {
    fn resolve(&self) -> Resolving<'_> {
        Box::pin(async move {
            match tokio::net::lookup_host((self.name.as_str(), self.port)).await {
                Ok(addrs) => addrs
                    .map(|a| Target {
                        addr: a.to_string(),
                        server_name: self.name.clone(),
                    })
                    .collect(),
                Err(e) => {
                    tracing::warn!(name = %self.name, "resolving peers failed: {e}");
                    Vec::new()
                }
            }
        })
    }

    fn changes(&self) -> bool {
        true
    }
}

/// The resolver the settings ask for, leaving out this node's own entry of a
/// static table; `None` when no peers are configured.
pub fn from_settings(discovery: &Discovery, node: &str) -> Option<Box<dyn Resolve>> {
    match discovery {
        Discovery::None => None,
        Discovery::Static(table) => Some(Box::new(Static {
            table: table.iter().filter(|(n, _)| n != node).cloned().collect(),
        })),
        Discovery::Dns { name, port } => Some(Box::new(Dns {
            name: name.clone(),
            port: *port,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tables_skip_this_node_and_dns_resolves_names() {
        let table = Discovery::Static(vec![
            ("a".into(), "10.0.0.1:1".into()),
            ("b".into(), "10.0.0.2:1".into()),
        ]);
        let r = from_settings(&table, "a").unwrap();
        assert_eq!(
            r.resolve().await,
            vec![Target {
                addr: "10.0.0.2:1".into(),
                server_name: "b".into()
            }]
        );
        assert!(!r.changes());
        let dns = Discovery::Dns {
            name: "localhost".into(),
            port: 7,
        };
        let r = from_settings(&dns, "a").unwrap();
        let found = r.resolve().await;
        assert!(found
            .iter()
            .any(|t| t.addr.ends_with(":7") && t.server_name == "localhost"));
        assert!(r.changes());
        assert!(from_settings(&Discovery::None, "a").is_none());
    }
}
