//! Metadata validation of the networked state drivers: every bad component is
//! refused at load with a message naming the component and the field, and a
//! good one opens without its server being reachable.

use mecha_abi::msg::ComponentSpec;
use mecha_mod_state::drivers::{open, StoreError};

fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    ComponentSpec {
        name: "conf".to_owned(),
        kind: kind.to_owned(),
        metadata: metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// Opens `spec` inside a runtime, as the module does at init.
fn try_open(spec: &ComponentSpec) -> Result<(), StoreError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    open(spec, std::path::Path::new("/nonexistent")).map(|_| ())
}

fn refused(spec: &ComponentSpec, mentions: &str) {
    match try_open(spec) {
        Err(StoreError::Config { component, reason }) => {
            assert_eq!(component, "conf");
            assert!(
                reason.contains(mentions),
                "{reason:?} mentions {mentions:?}"
            );
        }
        Err(other) => panic!("{spec:?}: expected a configuration error, got {other}"),
        Ok(()) => panic!("{spec:?} was accepted"),
    }
}

#[test]
fn redis_metadata_is_checked_at_load() {
    // Nothing listens on port 1: opening must not try to connect.
    try_open(&spec("state.redis", &[("redisHost", "127.0.0.1:1")])).expect("opens lazily");
    refused(&spec("state.redis", &[]), "\"redisHost\" is required");
    refused(
        &spec("state.redis", &[("redisHost", "localhost")]),
        "host:port",
    );
    refused(
        &spec(
            "state.redis",
            &[("redisHost", "h:1"), ("enableTLS", "true")],
        ),
        "enableTLS",
    );
    refused(
        &spec(
            "state.redis",
            &[("redisHost", "h:1"), ("redisType", "cluster")],
        ),
        "\"redisType\" is \"cluster\"; only \"node\" is supported",
    );
    refused(
        &spec(
            "state.redis",
            &[("redisHost", "h:1"), ("dialTimeout", "soon")],
        ),
        "\"dialTimeout\" must be a duration",
    );
    refused(
        &spec(
            "state.redis",
            &[("redisHost", "h:1"), ("ttlInSeconds", "0")],
        ),
        "\"ttlInSeconds\"",
    );
}

#[test]
fn postgresql_metadata_is_checked_at_load() {
    let good = "host=127.0.0.1 port=1 user=postgres";
    try_open(&spec("state.postgresql", &[("connectionString", good)])).expect("opens lazily");
    refused(
        &spec("state.postgresql", &[]),
        "\"connectionString\" is required",
    );
    refused(
        &spec(
            "state.postgresql",
            &[("connectionString", "host=x sslmode=require")],
        ),
        "sslmode=require",
    );
    refused(
        &spec(
            "state.postgresql",
            &[("connectionString", good), ("tableName", "x; DROP TABLE y")],
        ),
        "\"tableName\" must be a table name",
    );
    refused(
        &spec(
            "state.postgresql",
            &[
                ("connectionString", good),
                ("timeout", "5"),
                ("timeoutInSeconds", "5"),
            ],
        ),
        "give only one",
    );
    refused(
        &spec(
            "state.postgresql",
            &[("connectionString", "port=notanumber")],
        ),
        "not a valid PostgreSQL connection string",
    );
}

#[test]
fn unknown_types_name_the_known_ones() {
    refused(&spec("state.mongodb", &[]), "state.redis, state.postgresql");
}
