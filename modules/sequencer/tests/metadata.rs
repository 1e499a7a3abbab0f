//! Metadata validation of the networked sequencer drivers: every bad
//! component is refused at load with a message naming the component and the
//! field, and a good one opens without its server being reachable.

use mecha_abi::msg::ComponentSpec;
use mecha_mod_sequencer::drivers::{open, SeqError};
use mecha_module::testing::{self, assert_refused, open_in_runtime};
use mecha_module::DriverError;

fn spec(kind: &str, metadata: &[(&str, &str)]) -> ComponentSpec {
    testing::spec("ids", kind, metadata)
}

fn try_open(spec: &ComponentSpec) -> Result<(), SeqError> {
    open_in_runtime(|| open(spec, std::path::Path::new("/nonexistent")).map(|_| ()))
}

/// The component and reason of a configuration error.
fn config(e: &SeqError) -> Option<(&str, &str)> {
    match e {
        SeqError::Driver(DriverError::Config { component, reason }) => Some((component, reason)),
        _ => None,
    }
}

fn refused(spec: &ComponentSpec, mentions: &str) {
    assert_refused(spec, try_open(spec), config, mentions);
}

#[test]
fn redis_metadata_is_checked_at_load() {
    // Nothing listens on port 1: opening must not try to connect.
    let host = ("redisHost", "127.0.0.1:1");
    try_open(&spec("sequencer.redis", &[host, ("segmentSize", "100")])).expect("opens lazily");
    refused(&spec("sequencer.redis", &[]), "\"redisHost\" is required");
    refused(
        &spec("sequencer.redis", &[host, ("segmentSize", "0")]),
        "\"segmentSize\"",
    );
    refused(
        &spec("sequencer.redis", &[host, ("redisDB", "-1")]),
        "\"redisDB\"",
    );
    refused(&spec("sequencer.redis", &[host, ("path", "x")]), "\"path\"");
}

#[test]
fn postgresql_metadata_is_checked_at_load() {
    let conn = ("connectionString", "host=127.0.0.1 port=1 user=postgres");
    try_open(&spec("sequencer.postgresql", &[conn])).expect("opens lazily");
    refused(
        &spec("sequencer.postgresql", &[]),
        "\"connectionString\" is required",
    );
    refused(
        &spec("sequencer.postgresql", &[conn, ("tableName", "1abc")]),
        "\"tableName\"",
    );
    refused(
        &spec("sequencer.postgresql", &[conn, ("maxConns", "0")]),
        "\"maxConns\"",
    );
}

#[test]
fn unknown_types_name_the_known_ones() {
    refused(
        &spec("sequencer.etcd", &[]),
        "sequencer.redis, sequencer.postgresql",
    );
}
