//! What the bindings suites share: the module served without a link, request
//! helpers, a loopback HTTP server for `bindings.http`, and the real Redis
//! and PostgreSQL servers of the daemon's conformance suite.
#![allow(dead_code)]

#[path = "../../../../daemon/tests/conformance/servers.rs"]
pub mod servers;

mod http_server;
#[allow(unused_imports)]
pub use http_server::http_server;

use std::path::Path;
use std::time::Duration;

use mecha_abi::msg::{ComponentSpec, ErrorBody, InvokeBindingReply, InvokeBindingRequest};
use mecha_mod_bindings::BindingsModule;
use mecha_module::testing::Served;
use mecha_module::{Ctx, Opcode, Reply, Status};

/// Starts the module with `components` in `dir`.
///
/// Bindings that reach outside mecha serve nobody without `allowedTenants`
/// (deny by default); a component here that names no list is opened to every
/// tenant (`*`), so that each test states only the access it is about.
pub fn serve(dir: &Path, mut components: Vec<ComponentSpec>) -> Served<BindingsModule> {
    for c in &mut components {
        let listed = c
            .metadata
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("allowedTenants"));
        if !listed && c.kind != "bindings.cron" {
            c.metadata
                .push(("allowedTenants".to_owned(), "*".to_owned()));
        }
    }
    Served::start(dir, components).unwrap_or_else(|e| panic!("the module starts: {e}"))
}

/// A BINDING_INVOKE payload.
pub fn invoke_request(name: &str, op: &str, data: &[u8], meta: &[(&str, &str)]) -> Vec<u8> {
    mecha_abi::encode(&InvokeBindingRequest {
        name: name.to_owned(),
        operation: op.to_owned(),
        data: data.to_vec(),
        metadata: meta
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    })
    .expect("encode")
}

/// BINDING_INVOKE as `tenant`.
pub fn invoke(
    m: &Served<BindingsModule>,
    tenant: &str,
    name: &str,
    op: &str,
    data: &[u8],
    meta: &[(&str, &str)],
) -> Reply {
    m.handle(
        tenant,
        Opcode::BINDING_INVOKE,
        &invoke_request(name, op, data, meta),
    )
}

/// The answer of a successful invoke.
pub fn ok(reply: &Reply) -> InvokeBindingReply {
    assert_eq!(reply.status, Status::Ok, "{}", message(reply));
    mecha_abi::decode(&reply.payload).expect("an InvokeBindingReply")
}

/// The message of an error answer.
pub fn message(reply: &Reply) -> String {
    mecha_abi::decode::<ErrorBody>(&reply.payload)
        .map(|b| b.message)
        .unwrap_or_default()
}

/// Asserts an error answer with `status` whose message mentions `needle`.
pub fn refused(reply: &Reply, status: Status, needle: &str) {
    let text = message(reply);
    assert_eq!(reply.status, status, "{text}");
    assert!(text.contains(needle), "{text:?} mentions {needle:?}");
}

/// The value of metadata entry `name`.
pub fn meta<'a>(reply: &'a InvokeBindingReply, name: &str) -> Option<&'a str> {
    reply
        .metadata
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// BINDING_INVOKE with the request's deadline `after` from now, run on the
/// module's runtime beside other work.
pub async fn invoke_within(
    m: &BindingsModule,
    after: Duration,
    name: &str,
    op: &str,
    meta: &[(&str, &str)],
) -> Reply {
    use mecha_module::Module;
    let ctx = Ctx::detached_with_deadline("t", Opcode::BINDING_INVOKE, after);
    m.handle(ctx, &invoke_request(name, op, b"", meta)).await
}
