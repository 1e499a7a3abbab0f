//! `bindings.redis` and `bindings.postgresql` against real servers on
//! loopback (started once per test process; a missing server skips unless
//! `MECHA_REQUIRE_SERVERS=1`): their operations, request and answer
//! metadata, the `maxResponseBytes` bound, and errors.

mod common;

use common::servers::{self, unique};
use common::{invoke, meta, ok, refused, serve};
use mecha_module::testing::spec;
use mecha_module::Status;

#[test]
fn redis_sets_gets_expires_and_deletes_keys() {
    let Some(server) = servers::redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let host = server.host_port();
    let m = serve(
        dir.path(),
        vec![spec(
            "cache",
            "bindings.redis",
            &[("redisHost", &host), ("maxResponseBytes", "10")],
        )],
    );
    let key = unique("binding");
    ok(&invoke(
        &m,
        "t",
        "cache",
        "create",
        b"value",
        &[("key", &key)],
    ));
    assert_eq!(
        ok(&invoke(&m, "t", "cache", "get", b"", &[("key", &key)])).data,
        b"value"
    );
    ok(&invoke(
        &m,
        "t",
        "cache",
        "create",
        b"0123456789A",
        &[("key", &key)],
    ));
    refused(
        &invoke(&m, "t", "cache", "get", b"", &[("key", &key)]),
        Status::ResourceExhausted,
        "maxResponseBytes",
    );
    ok(&invoke(&m, "t", "cache", "delete", b"", &[("key", &key)]));
    assert!(ok(&invoke(&m, "t", "cache", "get", b"", &[("key", &key)]))
        .data
        .is_empty());

    let short = unique("binding");
    ok(&invoke(
        &m,
        "t",
        "cache",
        "create",
        b"v",
        &[("key", &short), ("ttlInSeconds", "1")],
    ));
    mecha_module::testing::wait_until("the key to expire", || {
        ok(&invoke(&m, "t", "cache", "get", b"", &[("key", &short)]))
            .data
            .is_empty()
    });
    refused(
        &invoke(
            &m,
            "t",
            "cache",
            "create",
            b"v",
            &[("key", &short), ("ttlInSeconds", "soon")],
        ),
        Status::InvalidArgument,
        "ttlInSeconds",
    );
    refused(
        &invoke(&m, "t", "cache", "create", b"v", &[]),
        Status::InvalidArgument,
        "key",
    );
    refused(
        &invoke(&m, "t", "cache", "increment", b"", &[("key", &key)]),
        Status::InvalidArgument,
        "increment",
    );
}

#[test]
fn redis_down_is_unavailable() {
    let dir = tempfile::tempdir().expect("dir");
    let host = format!("127.0.0.1:{}", servers::free_port());
    let m = serve(
        dir.path(),
        vec![spec("cache", "bindings.redis", &[("redisHost", &host)])],
    );
    refused(
        &invoke(&m, "t", "cache", "get", b"", &[("key", "k")]),
        Status::Unavailable,
        "cache",
    );
}

#[test]
fn postgresql_execs_and_queries_with_parameters() {
    let Some(server) = servers::postgres() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let conn = format!(
        "host=127.0.0.1 port={} user=postgres dbname=postgres",
        server.port()
    );
    let m = serve(
        dir.path(),
        vec![spec(
            "db",
            "bindings.postgresql",
            &[("connectionString", &conn), ("maxResponseBytes", "200")],
        )],
    );
    let table = unique("orders");
    let create = format!("CREATE TABLE {table} (id int primary key, who text, price float8)");
    ok(&invoke(&m, "t", "db", "exec", b"", &[("sql", &create)]));
    let insert = format!("INSERT INTO {table} (id, who, price) VALUES ($1, $2, $3), ($4, $5, $6)");
    let inserted = ok(&invoke(
        &m,
        "t",
        "db",
        "exec",
        b"",
        &[
            ("sql", &insert),
            ("params", r#"[1, "ann", 1.5, 2, null, 2]"#),
        ],
    ));
    assert_eq!(meta(&inserted, "rows-affected"), Some("2"));
    assert_eq!(meta(&inserted, "operation"), Some("exec"));
    for field in ["start-time", "end-time", "duration", "sql"] {
        assert!(meta(&inserted, field).is_some(), "{field}");
    }
    let select = format!("SELECT id, who, price FROM {table} WHERE id >= $1 ORDER BY id");
    let rows = ok(&invoke(
        &m,
        "t",
        "db",
        "query",
        b"",
        &[("sql", &select), ("params", "[1]")],
    ));
    let rows: serde_json::Value = serde_json::from_slice(&rows.data).expect("JSON");
    assert_eq!(rows, serde_json::json!([[1, "ann", 1.5], [2, null, 2.0]]));

    // Bad requests, an SQL error, a result over the limit.
    refused(
        &invoke(
            &m,
            "t",
            "db",
            "query",
            b"",
            &[("sql", &select), ("params", "[1, 2]")],
        ),
        Status::InvalidArgument,
        "parameters",
    );
    refused(
        &invoke(
            &m,
            "t",
            "db",
            "query",
            b"",
            &[("sql", &select), ("params", r#"["x"]"#)],
        ),
        Status::InvalidArgument,
        "$1",
    );
    refused(
        &invoke(&m, "t", "db", "exec", b"", &[("sql", "SELEKT 1")]),
        Status::Internal,
        "syntax",
    );
    let many = "SELECT g, 'padding padding padding' FROM generate_series(1, 100) g";
    refused(
        &invoke(&m, "t", "db", "query", b"", &[("sql", many)]),
        Status::ResourceExhausted,
        "maxResponseBytes",
    );
    ok(&invoke(&m, "t", "db", "close", b"", &[]));
    // `close` is a no-op: the pool still serves.
    ok(&invoke(
        &m,
        "t",
        "db",
        "query",
        b"",
        &[("sql", &select), ("params", "[2]")],
    ));
}
