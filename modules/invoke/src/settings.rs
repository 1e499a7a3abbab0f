//! The invoke component's settings, read from its Dapr-style metadata
//! (`spec.metadata` of the `invoke.mesh` component). Structured items
//! (`accessControl`, `resiliency`, `peers` as a list) arrive as JSON text.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use mecha_module::ComponentSpec;
use serde::de::DeserializeOwned;

use crate::acl::AccessControl;
use crate::resiliency::Resiliency;

/// How peers are found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Discovery {
    /// Only this node; no peer links.
    None,
    /// A fixed table of node name → `host:port`.
    Static(Vec<(String, String)>),
    /// Every address a (headless service) DNS name resolves to, at `port`.
    Dns {
        /// The name to resolve; also the TLS server name checked on dial.
        name: String,
        /// The peers' port.
        port: u16,
    },
}

/// PEM files for mutual TLS on peer links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// This node's certificate chain; its SAN must name the node.
    pub cert: PathBuf,
    /// This node's private key.
    pub key: PathBuf,
    /// The CA that signs every node's certificate (the trust domain).
    pub ca: PathBuf,
}

/// Everything the module is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's name: its identity towards peers.
    pub node: String,
    /// Where peer links are accepted (`host:port`); none = no inbound links.
    pub listen: Option<String>,
    /// Mutual TLS; none = plaintext peer links.
    pub tls: Option<TlsFiles>,
    /// How peers are found.
    pub discovery: Discovery,
    /// How often this node re-announces its app ids and re-resolves peers.
    pub announce_interval: Duration,
    /// Who may call whom.
    pub access: AccessControl,
    /// Timeouts, retries and circuit breakers of outgoing calls.
    pub resiliency: Resiliency,
    /// Tenant → the app ids it may claim (from the daemon's tenant rules).
    pub tenant_app_ids: BTreeMap<String, Vec<String>>,
    /// How long an app id registered at run time stays reserved for its
    /// tenant after its last instance went away (or the module restarted).
    pub reservation_grace: Duration,
    /// Registrations (instances, plus app ids held only by a reservation) one
    /// tenant may have at once.
    pub max_registrations_per_tenant: usize,
    /// Calls one tenant may have waiting in this module at once.
    pub max_calls_per_tenant: usize,
    /// The time one attempt of a call may take when its resiliency policy sets
    /// none. Below the daemon's health timeout, so that calls a callee never
    /// answers free their slots before the daemon would miss a health ping.
    pub call_timeout: Duration,
    /// Whether the module grants the daemon direct routes for calls it has
    /// decided (`directRoutes`, default true; SPEC §8 LINK_ROUTE).
    pub direct_routes: bool,
}

/// Default of `reservationGraceMs`.
pub const DEFAULT_RESERVATION_GRACE: Duration = Duration::from_secs(30);
/// Default of `maxRegistrationsPerTenant`.
pub const DEFAULT_MAX_REGISTRATIONS: usize = 1024;
/// Default of `maxCallsPerTenant`.
pub const DEFAULT_MAX_CALLS: usize = 256;
/// Default of `callTimeoutMs`: below the daemon's default health timeout
/// (3000 ms).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(2000);

/// Reads the settings from the first `invoke.*` component.
pub fn parse(components: &[ComponentSpec]) -> Result<Settings, String> {
    let Some(c) = components.first() else {
        return Err("no invoke component is configured".into());
    };
    if c.kind != "invoke.mesh" {
        return Err(format!(
            "component {:?}: spec.type {:?} is not supported (use invoke.mesh)",
            c.name, c.kind
        ));
    }
    let field = |name: &str| {
        c.metadata
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    };
    let fail = |name: &str, why: String| format!("component {:?} metadata {name}: {why}", c.name);
    let json = |name: &str| -> Result<Option<serde_json::Value>, String> {
        field(name)
            .map(|v| serde_json::from_str(v).map_err(|e| fail(name, e.to_string())))
            .transpose()
    };
    let node = match field("nodeName") {
        Some(n) => n.to_string(),
        None => std::env::var("MECHA_NODE_NAME")
            .or_else(|_| std::env::var("HOSTNAME"))
            .unwrap_or_else(|_| "local".into()),
    };
    let tls = match (
        field("tlsCertFile"),
        field("tlsKeyFile"),
        field("tlsCaFile"),
    ) {
        (None, None, None) => None,
        (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
            cert: cert.into(),
            key: key.into(),
            ca: ca.into(),
        }),
        _ => {
            return Err(fail(
                "tlsCertFile/tlsKeyFile/tlsCaFile",
                "set all three or none".into(),
            ))
        }
    };
    let require_tls = match field("requireTls") {
        None => false,
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| fail("requireTls", format!("{v:?} is not true or false")))?,
    };
    if require_tls && tls.is_none() {
        return Err(fail(
            "requireTls",
            "is true but no tlsCertFile/tlsKeyFile/tlsCaFile are set".into(),
        ));
    }
    let direct_routes = match field("directRoutes") {
        None => true,
        Some(v) => v
            .parse::<bool>()
            .map_err(|_| fail("directRoutes", format!("{v:?} is not true or false")))?,
    };
    let discovery = match (field("peers"), field("dnsName")) {
        (Some(_), Some(_)) => return Err(fail("peers", "set peers or dnsName, not both".into())),
        (Some(p), None) => Discovery::Static(parse_peers(p).map_err(|e| fail("peers", e))?),
        (None, Some(name)) => {
            let port = match field("dnsPort") {
                Some(p) => p
                    .parse()
                    .map_err(|_| fail("dnsPort", format!("{p:?} is not a port")))?,
                None => field("listenAddress")
                    .and_then(|a| a.rsplit(':').next())
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| fail("dnsPort", "needed when listenAddress has none".into()))?,
            };
            Discovery::Dns {
                name: name.to_string(),
                port,
            }
        }
        (None, None) => Discovery::None,
    };
    let number = |name: &str, default: u64| -> Result<u64, String> {
        match field(name) {
            Some(v) => v
                .parse()
                .map_err(|_| fail(name, format!("{v:?} is not a number"))),
            None => Ok(default),
        }
    };
    let positive = |name: &str, default: u64| -> Result<u64, String> {
        match number(name, default)? {
            0 => Err(fail(name, "must be at least 1".into())),
            n => Ok(n),
        }
    };
    let announce_interval = Duration::from_millis(number("announceIntervalMs", 5000)?);
    let as_ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let reservation_grace = Duration::from_millis(number(
        "reservationGraceMs",
        as_ms(DEFAULT_RESERVATION_GRACE),
    )?);
    let call_timeout =
        Duration::from_millis(positive("callTimeoutMs", as_ms(DEFAULT_CALL_TIMEOUT))?);
    let count = |name: &str, default: usize| -> Result<usize, String> {
        let n = positive(name, u64::try_from(default).unwrap_or(u64::MAX))?;
        Ok(usize::try_from(n).unwrap_or(usize::MAX))
    };
    let max_registrations_per_tenant =
        count("maxRegistrationsPerTenant", DEFAULT_MAX_REGISTRATIONS)?;
    let max_calls_per_tenant = count("maxCallsPerTenant", DEFAULT_MAX_CALLS)?;
    Ok(Settings {
        node,
        listen: field("listenAddress").map(str::to_string),
        tls,
        discovery,
        announce_interval,
        access: structured(&json("accessControl")?, "accessControl", &fail)?,
        resiliency: structured(&json("resiliency")?, "resiliency", &fail)?,
        tenant_app_ids: structured(&json("tenantAppIds")?, "tenantAppIds", &fail)?,
        reservation_grace,
        max_registrations_per_tenant,
        max_calls_per_tenant,
        call_timeout,
        direct_routes,
    })
}

fn structured<T: DeserializeOwned + Default>(
    value: &Option<serde_json::Value>,
    name: &str,
    fail: &dyn Fn(&str, String) -> String,
) -> Result<T, String> {
    match value {
        None => Ok(T::default()),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| fail(name, e.to_string())),
    }
}

/// `name=host:port,name=host:port`, or a JSON list of `{name, address}`.
fn parse_peers(text: &str) -> Result<Vec<(String, String)>, String> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Peer {
        name: String,
        address: String,
    }
    if text.trim_start().starts_with('[') {
        let list: Vec<Peer> = serde_json::from_str(text).map_err(|e| e.to_string())?;
        return Ok(list.into_iter().map(|p| (p.name, p.address)).collect());
    }
    text.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| {
            entry
                .split_once('=')
                .map(|(n, a)| (n.trim().to_string(), a.trim().to_string()))
                .filter(|(n, a)| !n.is_empty() && !a.is_empty())
                .ok_or_else(|| format!("{entry:?} is not name=host:port"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(metadata: &[(&str, &str)]) -> Vec<ComponentSpec> {
        vec![ComponentSpec {
            name: "invoke".into(),
            kind: "invoke.mesh".into(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }]
    }

    #[test]
    fn peers_parse_in_both_forms_and_errors_name_the_field() {
        let s = parse(&spec(&[
            ("nodeName", "a"),
            ("peers", "b=127.0.0.1:1, c=h:2"),
        ]))
        .unwrap();
        assert_eq!(
            s.discovery,
            Discovery::Static(vec![
                ("b".into(), "127.0.0.1:1".into()),
                ("c".into(), "h:2".into())
            ])
        );
        let s = parse(&spec(&[("peers", r#"[{"name":"b","address":"h:1"}]"#)])).unwrap();
        assert_eq!(
            s.discovery,
            Discovery::Static(vec![("b".into(), "h:1".into())])
        );
        let e = parse(&spec(&[("peers", "nonsense")])).unwrap_err();
        assert!(e.contains("metadata peers"), "{e}");
        let e = parse(&spec(&[("requireTls", "true")])).unwrap_err();
        assert!(e.contains("requireTls"), "{e}");
        let e = parse(&spec(&[("accessControl", r#"{"defaultAction":"maybe"}"#)])).unwrap_err();
        assert!(e.contains("accessControl"), "{e}");
        let e = parse(&spec(&[("maxCallsPerTenant", "0")])).unwrap_err();
        assert!(e.contains("maxCallsPerTenant"), "{e}");
    }

    #[test]
    fn limits_have_defaults_below_the_health_timeout_and_can_be_set() {
        let s = parse(&spec(&[])).unwrap();
        assert!(s.call_timeout < Duration::from_millis(3000));
        assert_eq!(s.reservation_grace, Duration::from_secs(30));
        assert_eq!(s.max_registrations_per_tenant, 1024);
        let s = parse(&spec(&[
            ("reservationGraceMs", "5"),
            ("maxRegistrationsPerTenant", "3"),
            ("maxCallsPerTenant", "2"),
            ("callTimeoutMs", "100"),
        ]))
        .unwrap();
        assert_eq!(
            (
                s.reservation_grace,
                s.max_registrations_per_tenant,
                s.max_calls_per_tenant,
                s.call_timeout
            ),
            (Duration::from_millis(5), 3, 2, Duration::from_millis(100))
        );
    }
}
