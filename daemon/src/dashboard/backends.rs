//! Whether a networked component's server is reachable: the address its
//! metadata names (Redis, PostgreSQL, etcd, NATS), and a TCP connect to it.
//!
//! Only the host and port are taken from the metadata, never credentials,
//! since the dashboard shows the address. Results are kept for [`FRESH`], so
//! a dashboard polling every few seconds does not open a connection to every
//! backend each time, and each probe gives up after [`CONNECT_TIMEOUT`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a probe result is reused.
const FRESH: Duration = Duration::from_secs(10);
/// How long a probe waits for the server to accept.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// The `host:port` a component of type `kind` reaches, when it is a
/// networked driver whose address its metadata names.
pub fn address(kind: &str, metadata: &[(String, String)]) -> Option<String> {
    let field = |name: &str| {
        metadata
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
    };
    let driver = kind.rsplit_once('.').map_or(kind, |(_, d)| d);
    match driver {
        "redis" => with_port(field("redisHost")?, 6379),
        "postgresql" | "postgres" => postgres(field("connectionString")?),
        "etcd" => url_host(first(field("endpoints")?), 2379),
        "jetstream" | "nats" => url_host(first(field("natsURL")?), 4222),
        _ => None,
    }
}

/// The first of a comma-separated list.
fn first(list: &str) -> &str {
    list.split(',').next().unwrap_or_default().trim()
}

/// `host:port` from `scheme://user:password@host:port/path`, or from a bare
/// `host:port`, without the credentials.
fn url_host(url: &str, default_port: u16) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    with_port(host, default_port)
}

/// `host:port`, adding `default_port` when `host` has none. A Unix socket
/// path is no TCP address.
fn with_port(host: &str, default_port: u16) -> Option<String> {
    if host.is_empty() || host.starts_with('/') {
        return None;
    }
    let has_port = match host.strip_prefix('[') {
        Some(v6) => v6.contains("]:"),
        None => host.contains(':'),
    };
    Some(if has_port {
        host.to_string()
    } else {
        format!("{host}:{default_port}")
    })
}

/// The server of a PostgreSQL connection string, URL or `key=value` form.
fn postgres(conn: &str) -> Option<String> {
    if conn.contains("://") {
        return url_host(conn, 5432);
    }
    let value = |key: &str| {
        conn.split_whitespace()
            .filter_map(|pair| pair.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.trim_matches('\''))
    };
    let host = value("host").unwrap_or("localhost");
    let host = first(host);
    if host.starts_with('/') {
        return None;
    }
    let port = value("port")
        .and_then(|p| first(p).parse().ok())
        .unwrap_or(5432);
    Some(format!("{host}:{port}"))
}

/// Probe results by address.
#[derive(Default)]
pub struct Probes {
    known: Mutex<HashMap<String, (Instant, bool)>>,
}

impl Probes {
    /// Whether `address` accepts TCP connections, from a probe at most
    /// [`FRESH`] old.
    pub async fn reachable(&self, address: &str) -> bool {
        if let Some((at, up)) = self.known.lock().get(address) {
            if at.elapsed() < FRESH {
                return *up;
            }
        }
        let up = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
            Ok(Ok(_))
        );
        let mut known = self.known.lock();
        // Addresses come from the configuration, so the map is as small as
        // its component list; a reload may retire some, hence the sweep.
        known.retain(|_, (at, _)| at.elapsed() < FRESH * 6);
        known.insert(address.to_string(), (Instant::now(), up));
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn addresses_without_credentials() {
        assert_eq!(
            address("state.redis", &md(&[("redisHost", "10.0.0.1:6380")])).as_deref(),
            Some("10.0.0.1:6380")
        );
        assert_eq!(
            address("lock.redis", &md(&[("redisHost", "cache")])).as_deref(),
            Some("cache:6379")
        );
        assert_eq!(
            address(
                "state.postgresql",
                &md(&[("connectionString", "host=db port=5433 user=u password=p")])
            )
            .as_deref(),
            Some("db:5433")
        );
        assert_eq!(
            address(
                "state.postgresql",
                &md(&[("connectionString", "postgres://u:secret@db:6000/x")])
            )
            .as_deref(),
            Some("db:6000")
        );
        assert_eq!(
            address(
                "lock.etcd",
                &md(&[("endpoints", "http://e1:2379,http://e2:2379")])
            )
            .as_deref(),
            Some("e1:2379")
        );
        assert_eq!(
            address("pubsub.jetstream", &md(&[("natsURL", "nats://user:pw@n1")])).as_deref(),
            Some("n1:4222")
        );
        assert_eq!(address("state.redb", &md(&[("path", "/x")])), None);
        assert_eq!(
            address(
                "state.postgresql",
                &md(&[("connectionString", "host=/run/pg")])
            ),
            None
        );
    }

    #[tokio::test]
    async fn probes_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let open = listener.local_addr().unwrap().to_string();
        let probes = Probes::default();
        assert!(probes.reachable(&open).await);
        drop(listener);
        // The result is reused while fresh, even though the port closed.
        assert!(probes.reachable(&open).await);
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        assert!(!probes.reachable(&closed).await);
    }
}
