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

/// One inline command to the Redis at `addr`; its first reply line.
fn redis_cmd(addr: std::net::SocketAddr, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to redis");
    stream
        .write_all(format!("{command}\r\n").as_bytes())
        .expect("write");
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).expect("read");
    line.trim_end().to_owned()
}

/// A Redis stream as an input binding: entries are fanned out in order,
/// acknowledged once durable, and an entry the reader took but never
/// acknowledged (a crash) is read again from the pending list by the next
/// reader.
#[test]
fn a_redis_stream_is_an_input_binding() {
    use mecha_mod_bindings::drivers::{self, redis_stream, Role, Source};
    let Some(server) = servers::redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let stream = unique("events");
    let host = server.host_port();
    let component = spec(
        "events",
        "bindings.redis",
        &[
            ("redisHost", &host),
            ("stream", &stream),
            ("consumerGroup", "g"),
        ],
    );
    let rt = mecha_module::testing::multi_thread_runtime(2);
    let _guard = rt.enter();
    let binding = drivers::open(&component, dir.path(), &mut None).expect("opens");
    let Role::Input(input, Source::RedisStream(source)) = binding.role else {
        panic!("an input binding");
    };
    let sub = rt.block_on(input.subscribe("a", 0, 0)).expect("subscribe");
    assert!(
        redis_cmd(server.addr, &format!("XGROUP CREATE {stream} g $ MKSTREAM")).starts_with("+OK")
    );
    for n in 1..=2 {
        redis_cmd(server.addr, &format!("XADD {stream} * n {n}"));
    }
    // A reader that took the third entry and died before acknowledging it.
    redis_cmd(server.addr, &format!("XADD {stream} * n 3"));
    let taken = redis_cmd(
        server.addr,
        &format!("XREADGROUP GROUP g bindings COUNT 3 STREAMS {stream} >"),
    );
    assert!(taken.starts_with('*'), "{taken}");
    let reader = rt.spawn(redis_stream::run(input.clone(), (*source).clone()));
    let mut got = Vec::new();
    for _ in 0..3 {
        let d = rt
            .block_on(tokio::time::timeout(
                std::time::Duration::from_secs(10),
                sub.next(),
            ))
            .expect("an event in time")
            .expect("an event");
        let fields: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
        assert!(d
            .metadata
            .iter()
            .any(|(k, v)| k == "stream" && v == &stream));
        got.push(fields["n"].as_str().expect("n").to_owned());
    }
    assert_eq!(got, ["1", "2", "3"]);
    mecha_module::testing::wait_until("every entry to be acknowledged", || {
        redis_cmd(server.addr, &format!("XPENDING {stream} g")) == "*4"
            && redis_cmd(server.addr, &format!("XLEN {stream}")) == ":3"
            && pending_count(server.addr, &stream) == 0
    });
    reader.abort();
}

/// How many entries of `stream` group `g` are pending.
fn pending_count(addr: std::net::SocketAddr, stream: &str) -> u64 {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(format!("XPENDING {stream} g\r\n").as_bytes())
        .expect("write");
    let mut reader = BufReader::new(s);
    let mut line = String::new();
    reader.read_line(&mut line).expect("read");
    line.clear();
    reader.read_line(&mut line).expect("read");
    line.trim_start_matches(':')
        .trim()
        .parse()
        .unwrap_or(u64::MAX)
}

/// Without a consumer group on the server, the reader creates it at the
/// stream's end: entries added from then on are events.
#[test]
fn a_redis_stream_binding_creates_its_consumer_group() {
    use mecha_mod_bindings::drivers::{self, redis_stream, Role, Source};
    let Some(server) = servers::redis() else {
        return;
    };
    let dir = tempfile::tempdir().expect("dir");
    let stream = unique("fresh");
    let host = server.host_port();
    let component = spec(
        "fresh",
        "bindings.redis",
        &[("redisHost", &host), ("stream", &stream)],
    );
    let rt = mecha_module::testing::multi_thread_runtime(2);
    let _guard = rt.enter();
    let binding = drivers::open(&component, dir.path(), &mut None).expect("opens");
    let Role::Input(input, Source::RedisStream(source)) = binding.role else {
        panic!("an input binding");
    };
    let sub = rt.block_on(input.subscribe("a", 0, 0)).expect("subscribe");
    let reader = rt.spawn(redis_stream::run(input.clone(), (*source).clone()));
    mecha_module::testing::wait_until("the reader to create its group", || {
        redis_cmd(server.addr, &format!("XINFO GROUPS {stream}")) == "*1"
    });
    redis_cmd(server.addr, &format!("XADD {stream} * k v"));
    let d = rt
        .block_on(tokio::time::timeout(
            std::time::Duration::from_secs(10),
            sub.next(),
        ))
        .expect("an event in time")
        .expect("an event");
    let fields: serde_json::Value = serde_json::from_slice(&d.data).expect("JSON");
    assert_eq!(fields, serde_json::json!({"k": "v"}));
    reader.abort();
}
