//! Metadata validation of the networked state drivers: every bad component is
//! refused at load with a message naming the component and the field, and a
//! good one opens without its server being reachable.

use mecha_abi::msg::ComponentSpec;
use mecha_mod_state::drivers::{open, StoreError};
use mecha_module::testing::{self, assert_refused, open_in_runtime};
use mecha_module::DriverError;

fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("conf", kind, metadata)
}

fn try_open(spec: &ComponentSpec) -> Result<(), StoreError> {
    open_in_runtime(|| open(spec, std::path::Path::new("/nonexistent")).map(|_| ()))
}

/// The component and reason of a configuration error.
fn config(e: &StoreError) -> Option<(&str, &str)> {
    match e {
        StoreError::Driver(DriverError::Config { component, reason }) => Some((component, reason)),
        _ => None,
    }
}

fn refused(spec: &ComponentSpec, mentions: &str) {
    assert_refused(spec, try_open(spec), config, mentions);
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
