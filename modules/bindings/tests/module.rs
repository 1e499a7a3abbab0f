//! The rules every binding shares (SPEC §7.9): names, `allowedTenants`,
//! the direction of an operation, and component metadata checked when the
//! module starts.

mod common;

use common::{invoke, message, refused, serve};
use mecha_abi::msg::{BindingAckRequest, BindingSubscribeRequest};
use mecha_mod_bindings::BindingsModule;
use mecha_module::testing::{spec, Served};
use mecha_module::{Opcode, Status};

fn module(dir: &std::path::Path) -> Served<BindingsModule> {
    serve(
        dir,
        vec![
            spec(
                "files",
                "bindings.localstorage",
                &[("rootPath", "files"), ("allowedTenants", "web, jobs")],
            ),
            spec("ticks", "bindings.cron", &[("schedule", "@yearly")]),
        ],
    )
}

fn subscribe(name: &str, max_in_flight: u32) -> BindingSubscribeRequest {
    BindingSubscribeRequest {
        name: name.to_owned(),
        max_in_flight,
        ack_deadline_ms: 0,
    }
}

#[test]
fn names_tenants_and_directions_are_checked_before_anything_is_touched() {
    let dir = tempfile::tempdir().expect("dir");
    let m = module(dir.path());
    refused(
        &invoke(&m, "web", "", "get", b"", &[]),
        Status::InvalidArgument,
        "empty",
    );
    refused(
        &invoke(&m, "web", "nope", "get", b"", &[]),
        Status::NotFound,
        "nope",
    );
    refused(
        &invoke(&m, "other", "files", "create", b"x", &[("fileName", "f")]),
        Status::PermissionDenied,
        "allowedTenants",
    );
    assert!(!dir.path().join("files/f").exists());
    common::ok(&invoke(
        &m,
        "jobs",
        "files",
        "create",
        b"x",
        &[("fileName", "f")],
    ));
    refused(
        &invoke(&m, "web", "files", "", b"", &[]),
        Status::InvalidArgument,
        "operation",
    );

    // The wrong direction is INVALID_ARGUMENT, naming the type.
    refused(
        &invoke(&m, "web", "ticks", "get", b"", &[]),
        Status::InvalidArgument,
        "bindings.cron",
    );
    let reply = m.call("web", Opcode::BINDING_SUBSCRIBE, &subscribe("files", 0));
    refused(&reply, Status::InvalidArgument, "bindings.localstorage");
    let ack = BindingAckRequest {
        name: "files".into(),
        items: Vec::new(),
        nack: false,
    };
    refused(
        &m.call("web", Opcode::BINDING_ACK, &ack),
        Status::InvalidArgument,
        "output binding",
    );
    let reply = m.call("web", Opcode::BINDING_SUBSCRIBE, &subscribe("ticks", 5000));
    refused(&reply, Status::InvalidArgument, "max_in_flight");
    let reply = m.call("web", Opcode::BINDING_SUBSCRIBE, &subscribe("nope", 0));
    refused(&reply, Status::NotFound, "nope");
    let reply = m.handle("web", Opcode::STATE_GET, &[]);
    assert_eq!(reply.status, Status::UnknownOpcode);
    let reply = m.handle("web", Opcode::BINDING_INVOKE, &[1, 2, 3]);
    assert_eq!(reply.status, Status::InvalidArgument, "{}", message(&reply));
}

#[test]
fn unusable_components_stop_the_start_naming_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    for (kind, metadata, needle) in [
        (
            "bindings.cron",
            &[("schedule", "every day")][..],
            "schedule",
        ),
        ("bindings.cron", &[][..], "schedule"),
        (
            "bindings.cron",
            &[("schedule", "@daily"), ("shedule", "x")][..],
            "did you mean \"schedule\"",
        ),
        (
            "bindings.cron",
            &[("schedule", "@daily"), ("direction", "output")][..],
            "direction",
        ),
        (
            "bindings.http",
            &[("url", "https://example.com")][..],
            "https",
        ),
        (
            "bindings.http",
            &[("url", "http://h:1"), ("MTLSRootCA", "/ca.pem")][..],
            "TLS",
        ),
        (
            "bindings.http",
            &[("url", "http://h:1"), ("maxResponseBodySize", "big")][..],
            "maxResponseBodySize",
        ),
        (
            "bindings.http",
            &[("url", "http://h:1"), ("securityToken", "t")][..],
            "securityTokenHeader",
        ),
        (
            "bindings.http",
            &[("url", "http://h:1"), ("maxResponseBytes", "0")][..],
            "maxResponseBytes",
        ),
        ("bindings.localstorage", &[][..], "rootPath"),
        ("bindings.redis", &[][..], "redisHost"),
        (
            "bindings.postgresql",
            &[("connectionString", "host=h"), ("allowedTenants", "")][..],
            "allowedTenants",
        ),
        ("bindings.kafka", &[][..], "bindings.kafka"),
        (
            "bindings.postgresql",
            &[("url", "host=h"), ("connectionString", "host=h")][..],
            "one setting",
        ),
    ] {
        let components = vec![spec("b", kind, metadata)];
        match Served::<BindingsModule>::start(dir.path(), components) {
            Ok(_) => panic!("{kind} {metadata:?} starts"),
            Err(e) => assert!(e.0.contains(needle), "{kind} {metadata:?}: {e}"),
        }
    }
    // Dapr's documented fields load as they are.
    let conn = "host=127.0.0.1 port=1 user=u";
    let ok = [
        spec(
            "c",
            "bindings.cron",
            &[
                ("schedule", "@every 15s"),
                ("direction", "input"),
                ("route", "/c"),
            ],
        ),
        spec(
            "h",
            "bindings.http",
            &[
                ("url", "http://h:1/x"),
                ("errorIfNot2XX", "false"),
                ("direction", "output"),
            ],
        ),
        spec(
            "p",
            "bindings.postgres",
            &[
                ("connectionString", conn),
                ("timeout", "5s"),
                ("maxConns", "2"),
            ],
        ),
        spec(
            "r",
            "bindings.redis",
            &[
                ("redisHost", "h:6379"),
                ("redisPassword", ""),
                ("redisDB", "1"),
            ],
        ),
        spec("l", "bindings.localstorage", &[("rootPath", "files")]),
    ];
    Served::<BindingsModule>::start(dir.path(), ok.to_vec())
        .unwrap_or_else(|e| panic!("Dapr's fields load: {e}"));
}

/// A binding that reaches outside mecha and names no `allowedTenants` serves
/// nobody (deny by default), unless Dapr `scopes` admit tenants; `*` opens
/// it to every tenant. (A cron binding reaches nothing outside and stays
/// open: `daemon/tests/bindings.rs` subscribes to one as two tenants.)
#[test]
fn bindings_that_reach_outside_deny_by_default() {
    let dir = tempfile::tempdir().expect("dir");
    let m = Served::<BindingsModule>::start(
        dir.path(),
        vec![
            spec("closed", "bindings.localstorage", &[("rootPath", "a")]),
            spec(
                "open",
                "bindings.localstorage",
                &[("rootPath", "b"), ("allowedTenants", "*")],
            ),
            spec(
                "scoped",
                "bindings.localstorage",
                &[("rootPath", "c"), ("@tenants", "web")],
            ),
        ],
    )
    .unwrap_or_else(|e| panic!("the module starts: {e}"));
    let create =
        |tenant: &str, name: &str| invoke(&m, tenant, name, "create", b"x", &[("fileName", "f")]);
    refused(
        &create("web", "closed"),
        Status::PermissionDenied,
        "lists no allowedTenants",
    );
    assert!(!dir.path().join("a/f").exists());
    common::ok(&create("anyone", "open"));
    common::ok(&create("web", "scoped"));
    refused(
        &create("other", "scoped"),
        Status::PermissionDenied,
        "scopes",
    );
}
