//! `bindings.http` against a real loopback HTTP server: methods, the `path`
//! and header metadata, the security token, the answer's metadata, non-2xx
//! statuses, bounded bodies, and a slow target that neither outlives the
//! request's deadline nor holds up other requests.

mod common;

use std::time::Duration;

use common::{http_server, invoke, invoke_within, meta, ok, refused, serve};
use mecha_module::testing::spec;
use mecha_module::Status;

fn binding(url: &str, extra: &[(&str, &str)]) -> mecha_abi::msg::ComponentSpec {
    let mut metadata = vec![("url", url)];
    metadata.extend_from_slice(extra);
    spec("web", "bindings.http", &metadata)
}

#[test]
fn requests_carry_path_headers_body_and_token_and_answers_carry_status_and_headers() {
    let addr = http_server();
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("http://{addr}/echo");
    let m = serve(
        dir.path(),
        vec![binding(
            &url,
            &[
                ("securityToken", "s3cret"),
                ("securityTokenHeader", "X-Token"),
            ],
        )],
    );
    let reply = ok(&invoke(
        &m,
        "t",
        "web",
        "post",
        b"hello",
        &[("path", "/items/7"), ("X-Trace", "abc")],
    ));
    let text = String::from_utf8(reply.data.clone()).expect("text");
    assert!(text.starts_with("POST /echo/items/7 HTTP/1.1"), "{text}");
    assert!(text.contains("X-Trace: abc"), "{text}");
    assert!(text.contains("X-Token: s3cret"), "{text}");
    assert!(text.ends_with("hello"), "{text}");
    assert!(
        !text.contains("path:"),
        "path is not sent as a header: {text}"
    );
    assert_eq!(meta(&reply, "statusCode"), Some("200"));
    assert_eq!(meta(&reply, "status"), Some("200 OK"));
    assert_eq!(meta(&reply, "X-Echo"), Some("yes"));

    // `create` is a POST; `get` sends no body; `head` reads none.
    let created = ok(&invoke(&m, "t", "web", "create", b"x", &[]));
    assert!(String::from_utf8_lossy(&created.data).starts_with("POST /echo HTTP/1.1"));
    let got = ok(&invoke(&m, "t", "web", "get", b"ignored", &[]));
    assert!(!String::from_utf8_lossy(&got.data).contains("ignored"));
    let head = ok(&invoke(&m, "t", "web", "head", b"", &[]));
    assert!(head.data.is_empty());
    refused(
        &invoke(&m, "t", "web", "fly", b"", &[]),
        Status::InvalidArgument,
        "fly",
    );
    refused(
        &invoke(&m, "t", "web", "get", b"", &[("path", "../admin")]),
        Status::InvalidArgument,
        "climbs",
    );
    refused(
        &invoke(&m, "t", "web", "get", b"", &[("X-Bad", "a\r\nInjected: 1")]),
        Status::InvalidArgument,
        "request",
    );
}

#[test]
fn a_status_outside_2xx_is_an_error_unless_error_if_not_2xx_is_false() {
    let addr = http_server();
    let dir = tempfile::tempdir().expect("dir");
    let base = format!("http://{addr}");
    let lenient = spec(
        "lenient",
        "bindings.http",
        &[("url", &base), ("errorIfNot2XX", "false")],
    );
    let m = serve(dir.path(), vec![binding(&base, &[]), lenient]);
    refused(
        &invoke(&m, "t", "web", "get", b"", &[("path", "status/500")]),
        Status::Internal,
        "500",
    );
    let reply = ok(&invoke(
        &m,
        "t",
        "lenient",
        "get",
        b"",
        &[("path", "status/503")],
    ));
    assert_eq!(meta(&reply, "statusCode"), Some("503"));
    assert_eq!(reply.data, b"fail");
}

#[test]
fn a_body_over_the_limit_is_resource_exhausted_and_the_binding_keeps_serving() {
    let addr = http_server();
    let dir = tempfile::tempdir().expect("dir");
    let base = format!("http://{addr}");
    let small = spec(
        "small",
        "bindings.http",
        &[("url", &base), ("maxResponseBodySize", "16")],
    );
    let m = serve(dir.path(), vec![binding(&base, &[]), small]);
    for path in ["big", "chunked-big"] {
        refused(
            &invoke(&m, "t", "web", "get", b"", &[("path", path)]),
            Status::ResourceExhausted,
            "maxResponseBytes",
        );
    }
    refused(
        &invoke(&m, "t", "small", "get", b"", &[("path", "echo")]),
        Status::ResourceExhausted,
        "maxResponseBytes",
    );
    ok(&invoke(&m, "t", "web", "get", b"", &[("path", "echo")]));
}

#[test]
fn a_slow_target_meets_the_deadline_while_other_requests_are_answered() {
    let addr = http_server();
    let dir = tempfile::tempdir().expect("dir");
    let m = serve(dir.path(), vec![binding(&format!("http://{addr}"), &[])]);
    let (slow, fast) = m.block(async {
        let slow = invoke_within(
            m.module(),
            Duration::from_secs(3),
            "web",
            "get",
            &[("path", "slow")],
        );
        let fast = async {
            // Sent once the slow request is on its way, and answered before
            // the slow request's deadline ends it.
            tokio::task::yield_now().await;
            let reply = invoke_within(
                m.module(),
                Duration::from_secs(10),
                "web",
                "get",
                &[("path", "echo")],
            )
            .await;
            (reply, std::time::Instant::now())
        };
        let ((slow, slow_done), (fast, fast_done)) =
            tokio::join!(async { (slow.await, std::time::Instant::now()) }, fast);
        assert!(
            fast_done < slow_done,
            "the fast request waited for the slow one"
        );
        (slow, fast)
    });
    refused(&slow, Status::DeadlineExceeded, "deadline");
    ok(&fast);
}

#[test]
fn an_unreachable_target_is_unavailable() {
    let port = common::servers::free_port();
    let dir = tempfile::tempdir().expect("dir");
    let m = serve(
        dir.path(),
        vec![binding(&format!("http://127.0.0.1:{port}"), &[])],
    );
    refused(
        &invoke(&m, "t", "web", "get", b"", &[]),
        Status::Unavailable,
        "web",
    );
}

#[test]
fn the_request_trace_goes_on_to_the_target() {
    use mecha_module::{Ctx, Module, Opcode};
    let addr = http_server();
    let dir = tempfile::tempdir().expect("dir");
    let m = serve(
        dir.path(),
        vec![binding(&format!("http://{addr}/echo"), &[])],
    );
    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut ctx = Ctx::detached("t", Opcode::BINDING_INVOKE);
    ctx.trace = Some(mecha_abi::TraceContext::parse(trace).expect("a trace context"));
    let payload = common::invoke_request("web", "get", b"", &[]);
    let reply = ok(&m.block(m.module().handle(ctx, &payload)));
    let text = String::from_utf8(reply.data).expect("text");
    assert!(text.contains(&format!("traceparent: {trace}")), "{text}");
    // Without a trace, none is sent.
    let reply = ok(&invoke(&m, "t", "web", "get", b"", &[]));
    assert!(!String::from_utf8_lossy(&reply.data).contains("traceparent"));
}
