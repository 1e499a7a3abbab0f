//! Trace context (SPEC §2.1) against the real mechad: the HELLO feature bit,
//! a traceparent carried from a caller through the daemon and the invoke
//! module to the callee, bad trace contexts refused, and span export over
//! OTLP/HTTP JSON to a collector the test runs on loopback.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::{error_message, invoke_component, invoke_reply, my_uid, Daemon, Raw, CONFIGURATION};
use mecha_abi::msg::{Hello, InvokeCall};
use mecha_abi::{Features, Flags, Header, Opcode, Status, TraceContext, TRACE_LEN};
use mecha_client::{handler, Client, InvokeOptions};

const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// One invoke component; `extra` is appended to the Configuration spec.
fn config(extra: &str) -> String {
    let uid = my_uid();
    let component = invoke_component("node-a", "");
    format!("{component}---\n{CONFIGURATION}  tenants:\n  - name: me\n    uids: [{uid}]\n{extra}")
}

/// A request header with the TRACE flag.
fn traced(opcode: Opcode, id: u32) -> Header {
    let mut h = Header::request(opcode, id);
    h.flags = Flags(Flags::TRACE);
    h
}

/// A raw connection after HELLO, and the HELLO answer's header.
fn raw_hello(d: &Daemon) -> (Raw, Header) {
    let mut raw = Raw::connect(&d.socket);
    let body = mecha_abi::encode(&Hello {
        min_version: 1,
        max_version: 1,
        client: "trace-test".into(),
    })
    .unwrap();
    raw.send(Header::request(Opcode::HELLO, 1), &body);
    let (h, p) = raw.recv().expect("hello answer");
    assert_eq!(h.status, 0, "{}", error_message(&p));
    (raw, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_traceparent_reaches_the_callee_through_the_daemon_and_invoke() {
    let d = Daemon::start_with(Some(&config("")));
    let callee = Client::connect(&d.socket).await.unwrap();
    let seen: Arc<parking_lot::Mutex<Option<InvokeCall>>> = Default::default();
    let seen2 = Arc::clone(&seen);
    let _reg = callee
        .register(
            "echo",
            vec![],
            handler(move |call: InvokeCall| {
                *seen2.lock() = Some(call);
                async move { Ok(invoke_reply(Vec::new())) }
            }),
        )
        .await
        .unwrap();
    let caller = Client::connect(&d.socket)
        .await
        .unwrap()
        .with_trace_parent(TP)
        .unwrap();
    assert!(caller.supports_trace(), "this daemon advertises TRACE");
    caller
        .invoke("echo", "say", b"hi".to_vec(), InvokeOptions::default())
        .await
        .expect("invoke");
    let call = seen.lock().clone().expect("the handler ran");
    let got = TraceContext::parse(&call.trace_parent).expect("a valid traceparent");
    assert_eq!(got.trace_id_hex(), TRACE_ID, "the caller's trace goes on");
    // The daemon's span is the parent the module saw, not the caller's span.
    assert_ne!(mecha_abi::trace::hex(&got.parent_id), PARENT_ID);
    assert!(got.sampled());

    // The header's context wins over the payload's own field.
    let other = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let options = InvokeOptions {
        trace_parent: other.into(),
        ..Default::default()
    };
    caller.invoke("echo", "say", vec![], options).await.unwrap();
    let call = seen.lock().clone().unwrap();
    assert!(
        call.trace_parent.contains(TRACE_ID),
        "{}",
        call.trace_parent
    );

    // Without trace context, the payload's field passes through unchanged.
    let plain = caller.with_trace_context(None);
    let options = InvokeOptions {
        trace_parent: other.into(),
        ..Default::default()
    };
    plain.invoke("echo", "say", vec![], options).await.unwrap();
    assert_eq!(seen.lock().as_ref().unwrap().trace_parent, other);
}

#[test]
fn hello_advertises_trace_and_bad_trace_contexts_are_refused() {
    let d = Daemon::start_with(Some(&config("")));
    let (mut raw, hello) = raw_hello(&d);
    assert!(Features(hello.ext).trace(), "HELLO ext {:#06x}", hello.ext);
    let good = TraceContext::parse(TP).unwrap().encode();

    // A valid context before an empty payload, answered by the daemon and by
    // a module (which receives it on the link).
    let (status, p) = raw.call(traced(Opcode::PING, 2), &good);
    assert_eq!(status, Status::Ok, "{}", error_message(&p));
    let (status, p) = raw.call(traced(Opcode::INVOKE_APPS, 3), &good);
    assert_eq!(status, Status::Ok, "{}", error_message(&p));

    let mut zero_trace = good;
    zero_trace[1..17].fill(0);
    let mut zero_parent = good;
    zero_parent[17..25].fill(0);
    let mut version = good;
    version[0] = 0xff;
    let cases: [(&str, &[u8], &str); 4] = [
        ("short", &good[..10], "fewer than the 26"),
        ("zero trace id", &zero_trace, "all-zero trace id"),
        ("zero parent id", &zero_parent, "all-zero parent id"),
        ("version ff", &version, "version 0xff"),
    ];
    for (i, (what, bytes, want)) in cases.into_iter().enumerate() {
        let id = 10 + u32::try_from(i).unwrap();
        let (status, p) = raw.call(traced(Opcode::INVOKE_APPS, id), bytes);
        assert_eq!(status, Status::InvalidArgument, "{what}");
        let msg = error_message(&p);
        assert!(
            msg.contains("bad trace context") && msg.contains(want),
            "{what}: {msg}"
        );
    }
    // The connection is still in step.
    let (status, _) = raw.call(Header::request(Opcode::PING, 20), &[]);
    assert_eq!(status, Status::Ok);
    // A trace context is part of the payload: the operation's payload follows it.
    let mut with_body = good.to_vec();
    with_body.push(0);
    let (status, p) = raw.call(traced(Opcode::PING, 21), &with_body);
    assert_eq!(status, Status::InvalidArgument, "{}", error_message(&p));
    assert_eq!(TRACE_LEN, good.len());
}

/// A collector on loopback: every POSTed body, answered 200.
fn collector() -> (u16, mpsc::Receiver<(String, Vec<u8>)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            let mut len = 0usize;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    if k.eq_ignore_ascii_case("content-length") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
            }
            let mut body = vec![0u8; len];
            if reader.read_exact(&mut body).is_err() {
                continue;
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}");
            if tx.send((request_line, body)).is_err() {
                return;
            }
        }
    });
    (port, rx)
}

/// The spans of one OTLP JSON body, checking its shape on the way.
fn spans(body: &[u8]) -> Vec<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("the body is JSON");
    let mut out = vec![];
    for rs in v["resourceSpans"].as_array().expect("resourceSpans") {
        for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
            out.extend(ss["spans"].as_array().expect("spans").iter().cloned());
        }
    }
    out
}

fn attr<'a>(span: &'a serde_json::Value, key: &str) -> Option<&'a str> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)?["value"]["stringValue"]
        .as_str()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http_json() {
    let (port, posts) = collector();
    let extra =
        format!("  tracing:\n    otlpEndpoint: \"http://127.0.0.1:{port}\"\n    sampleRate: 1.0\n");
    let d = Daemon::start_with(Some(&config(&extra)));
    let client = Client::connect(&d.socket).await.unwrap();
    let traced = client.with_trace_parent(TP).unwrap();
    traced.apps().await.expect("INVOKE_APPS");
    client.ping().await.expect("PING");

    let (mut apps, mut ping) = (None, None);
    let limit = std::time::Instant::now() + Duration::from_secs(30);
    while apps.is_none() || ping.is_none() {
        let left = limit.saturating_duration_since(std::time::Instant::now());
        let (line, body) = posts
            .recv_timeout(left)
            .expect("the collector received the spans");
        assert!(line.starts_with("POST /v1/traces "), "{line}");
        for span in spans(&body) {
            match span["name"].as_str() {
                Some("INVOKE_APPS") if span["traceId"] == TRACE_ID => apps = Some(span),
                Some("PING") => ping = Some(span),
                _ => {}
            }
        }
    }
    let apps = apps.unwrap();
    assert_eq!(apps["parentSpanId"], PARENT_ID);
    assert_eq!(apps["spanId"].as_str().map(str::len), Some(16));
    assert_eq!(attr(&apps, "mecha.tenant"), Some("me"));
    assert_eq!(attr(&apps, "mecha.module"), Some("invoke"));
    assert_eq!(attr(&apps, "mecha.status"), Some("OK"));
    assert_eq!(apps["status"]["code"], 1);
    // A request without trace context starts a root span of its own trace.
    let ping = ping.unwrap();
    assert_ne!(ping["traceId"], TRACE_ID);
    assert!(ping.get("parentSpanId").is_none());
    assert_eq!(attr(&ping, "mecha.module"), Some("mechad"));
}
