//! The metadata fields Dapr defines for the component types mecha shares with
//! it, so that a component file copied from Dapr's documentation loads as it
//! is: a field Dapr defines but mecha does not implement is accepted with a
//! warning that it has no effect, unless ignoring it would make mecha weaker
//! than the file asks (TLS, access control, a different server topology), in
//! which case it is refused with the reason.
//!
//! The lists are the field names of each type's `metadata.yaml` in Dapr's
//! components-contrib, the fields its authentication profiles add, and the
//! fields the Dapr runtime itself reads for every component of a family.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

/// Fields of Dapr's Redis client settings, shared by every Redis-backed type.
const REDIS: &[&str] = &[
    "redisHost",
    "redisPort",
    "redisUsername",
    "redisPassword",
    "redisType",
    "redisDB",
    "redisMaxRetries",
    "redisMinRetryInterval",
    "redisMaxRetryInterval",
    "dialTimeout",
    "readTimeout",
    "writeTimeout",
    "poolSize",
    "poolTimeout",
    "maxConnAge",
    "minIdleConns",
    "idleCheckFrequency",
    "idleTimeout",
    "enableTLS",
    "insecureSkipTLSVerify",
    "clientCert",
    "clientKey",
    "failover",
    "sentinelMasterName",
    "sentinelUsername",
    "sentinelPassword",
    "useOIDC",
    "oidcTokenEndpoint",
    "oidcClientID",
    "oidcClientAssertionCert",
    "oidcClientAssertionKey",
    "oidcResource",
    "oidcAudience",
    "oidcScopes",
    "oidcKid",
    "oidcCACert",
    "useEntraID",
];

/// Fields of Dapr's PostgreSQL connection settings.
const POSTGRES: &[&str] = &[
    "connectionString",
    "host",
    "hostaddr",
    "port",
    "database",
    "user",
    "password",
    "sslRootCert",
    "timeout",
    "maxConns",
    "connectionMaxIdleTime",
    "queryExecMode",
];

/// Dapr's Azure AD (Entra ID) authentication profile.
const AZURE_AD: &[&str] = &[
    "azureTenantId",
    "azureClientId",
    "azureClientSecret",
    "azureCertificate",
    "azureCertificateFile",
    "azureCertificatePassword",
    "azureEnvironment",
];

/// Dapr's AWS IAM authentication profile.
const AWS: &[&str] = &[
    "awsRegion",
    "region",
    "accessKey",
    "secretKey",
    "sessionToken",
    "sessionName",
    "assumeRoleArn",
    "trustAnchorArn",
    "trustProfileArn",
];

/// Fields the Dapr runtime reads for every component of a family.
fn runtime_fields(family: &str) -> &'static [&'static str] {
    match family {
        "state" => &[
            "actorStateStore",
            "keyPrefix",
            "outboxPublishPubsub",
            "outboxPublishTopic",
            "outboxPubsub",
            "outboxDiscardWhenMissingState",
        ],
        "pubsub" => &[
            "consumerID",
            "allowedTopics",
            "protectedTopics",
            "publishingScopes",
            "subscriptionScopes",
        ],
        "bindings" => &["direction", "route"],
        _ => &[],
    }
}

/// Fields of one Dapr component type, beyond the shared sets.
fn type_fields(kind: &str) -> Vec<&'static str> {
    let own: &[&str] = match kind {
        "state.redis" => &[
            "redeliverInterval",
            "processingTimeout",
            "ttlInSeconds",
            "queryIndexes",
        ],
        "state.postgresql" => &[
            "tableName",
            "tablePrefix",
            "metadataTableName",
            "cleanupInterval",
        ],
        "pubsub.redis" => &[
            "consumerID",
            "redeliverInterval",
            "processingTimeout",
            "queueDepth",
            "concurrency",
            "maxLenApprox",
            "streamTTL",
        ],
        "pubsub.jetstream" => &[
            "natsURL",
            "jwt",
            "seedKey",
            "token",
            "tls_client_cert",
            "tls_client_key",
            "name",
            "streamName",
            "durableName",
            "queueGroupName",
            "startSequence",
            "startTime",
            "flowControl",
            "ackWait",
            "maxDeliver",
            "maxAckPending",
            "replicas",
            "memoryStorage",
            "rateLimit",
            "heartbeat",
            "deliverPolicy",
            "ackPolicy",
            "domain",
            "apiPrefix",
            "concurrency",
            "backOff",
        ],
        "lock.redis" => &[
            "maxRetries",
            "maxRetryBackoff",
            "redeliverInterval",
            "processingTimeout",
        ],
        "secretstores.local.env" => &["prefix"],
        "secretstores.local.file" => &["secretsFile", "nestedSeparator", "multiValued"],
        "bindings.cron" => &["schedule"],
        "bindings.http" => &[
            "url",
            "responseTimeout",
            "maxResponseBodySize",
            "MTLSRootCA",
            "MTLSClientCert",
            "MTLSClientKey",
            "MTLSRenegotiation",
            "securityToken",
            "securityTokenHeader",
            "errorIfNot2XX",
        ],
        "bindings.localstorage" => &["rootPath", "fileName"],
        _ => &[],
    };
    let mut fields = own.to_vec();
    let redis = matches!(
        kind,
        "state.redis" | "pubsub.redis" | "lock.redis" | "configuration.redis" | "bindings.redis"
    );
    let postgres = matches!(kind, "state.postgresql" | "bindings.postgresql");
    if redis {
        fields.extend_from_slice(REDIS);
        fields.extend_from_slice(AZURE_AD);
    }
    if postgres {
        fields.extend_from_slice(POSTGRES);
        fields.extend_from_slice(AZURE_AD);
        fields.extend_from_slice(AWS);
    }
    fields
}

/// What to do with a field that the driver does not know.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// Dapr defines it for this type; it has no effect in mecha.
    Inert,
    /// Dapr defines it, but ignoring it would weaken what the file asks for.
    Refused(&'static str),
    /// Dapr does not define it for this type either.
    Unknown,
}

/// Judges field `name` with `value` of a component of type `kind`.
pub(crate) fn judge(kind: &str, name: &str, value: &str) -> Judgement {
    let family = kind.split('.').next().unwrap_or_default();
    let defined = type_fields(kind)
        .into_iter()
        .chain(runtime_fields(family).iter().copied())
        .any(|f| f.eq_ignore_ascii_case(name));
    if !defined {
        return Judgement::Unknown;
    }
    match refusal(name, value) {
        Some(why) => Judgement::Refused(why),
        None => Judgement::Inert,
    }
}

/// Why ignoring field `name` set to `value` would make mecha weaker than the
/// component file asks, if it would.
fn refusal(name: &str, value: &str) -> Option<&'static str> {
    let off = matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "false" | "0" | "no"
    );
    let is = |n: &str| name.eq_ignore_ascii_case(n);
    if ["enableTLS", "failover", "useOIDC", "useEntraID"]
        .iter()
        .any(|n| is(n))
    {
        return (!off).then_some(
            "mecha connects without it, which is weaker or reaches another server than the file asks",
        );
    }
    if is("redisType") {
        return (!value.eq_ignore_ascii_case("node") && !value.trim().is_empty())
            .then_some("mecha speaks to a single Redis node only");
    }
    let security = [
        "clientCert",
        "clientKey",
        "sslRootCert",
        "MTLSRootCA",
        "MTLSClientCert",
        "MTLSClientKey",
        "tls_client_cert",
        "tls_client_key",
        "sentinelMasterName",
        "allowedTopics",
        "protectedTopics",
        "publishingScopes",
        "subscriptionScopes",
    ];
    if security.iter().any(|n| is(n)) && !value.trim().is_empty() {
        return Some(
            "it configures TLS, access control or the server topology, and mecha would ignore it",
        );
    }
    None
}

/// True the first time (component, field) is seen by this process, so that
/// a driver that checks its metadata twice warns once.
pub(crate) fn first_warning(component: &str, field: &str) -> bool {
    static SEEN: OnceLock<Mutex<HashSet<(String, String)>>> = OnceLock::new();
    let seen = SEEN.get_or_init(Default::default);
    let mut seen = match seen.lock() {
        Ok(guard) => guard,
        Err(poisoned) => poisoned.into_inner(),
    };
    seen.insert((component.to_owned(), field.to_ascii_lowercase()))
}

/// The name in `candidates` closest to `name` (ignoring case), if it is close
/// enough to be a likely misspelling: at most a third of its length away, and
/// at most 3 edits.
pub(crate) fn closest<'c>(name: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (distance(name, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance between `a` and `b`, ignoring ASCII case.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_lowercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_lowercase()).collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Every field Dapr defines for `kind` (its type and its family), for
/// suggestions.
pub(crate) fn defined(kind: &str) -> Vec<&'static str> {
    let family = kind.split('.').next().unwrap_or_default();
    let mut all = type_fields(kind);
    all.extend_from_slice(runtime_fields(family));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dapr_fields_without_effect_are_inert() {
        assert_eq!(
            judge("state.redis", "actorStateStore", "true"),
            Judgement::Inert
        );
        assert_eq!(judge("state.redis", "QUERYINDEXES", "[]"), Judgement::Inert);
        assert_eq!(
            judge("pubsub.redis", "redeliverInterval", "10s"),
            Judgement::Inert
        );
        assert_eq!(
            judge("state.redb", "actorStateStore", "true"),
            Judgement::Inert
        );
        assert_eq!(
            judge("bindings.cron", "direction", "input"),
            Judgement::Inert
        );
    }

    #[test]
    fn fields_dapr_does_not_define_for_the_type_are_unknown() {
        assert_eq!(judge("state.redis", "redisHots", "x"), Judgement::Unknown);
        assert_eq!(judge("state.memory", "redisHost", "x"), Judgement::Unknown);
        assert_eq!(
            judge("secretstores.local.env", "actorStateStore", "true"),
            Judgement::Unknown
        );
    }

    #[test]
    fn ignoring_security_settings_is_refused() {
        for (kind, name, value) in [
            ("state.redis", "enableTLS", "true"),
            ("state.redis", "redisType", "cluster"),
            ("state.redis", "failover", "true"),
            ("state.postgresql", "sslRootCert", "/etc/ca.pem"),
            ("pubsub.redis", "publishingScopes", "app1=topic1"),
            ("bindings.http", "MTLSRootCA", "/etc/ca.pem"),
        ] {
            assert!(
                matches!(judge(kind, name, value), Judgement::Refused(_)),
                "{kind} {name}"
            );
        }
        assert_eq!(judge("state.redis", "enableTLS", "false"), Judgement::Inert);
        assert_eq!(judge("state.redis", "redisType", "node"), Judgement::Inert);
    }

    #[test]
    fn close_names_are_suggested() {
        let known = ["redisHost", "redisPassword", "ttlInSeconds"];
        assert_eq!(closest("redisHots", &known), Some("redisHost"));
        assert_eq!(closest("REDISPASWORD", &known), Some("redisPassword"));
        assert_eq!(closest("zzz", &known), None);
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
