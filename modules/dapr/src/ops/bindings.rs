//! Dapr's output bindings on mecha's: InvokeBinding becomes a native
//! BINDING_INVOKE of the binding named by the component (SPEC §7.9), with
//! Dapr's metadata as the operation's parameters.

use mecha_client::Client;

use super::Failure;

/// Dapr's error code for a failed binding invocation.
pub const ERR_BINDING: &str = "ERR_INVOKE_OUTPUT_BINDING";

/// A binding's answer: its data and metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// The result body.
    pub data: Vec<u8>,
    /// Facts about the result.
    pub metadata: Vec<(String, String)>,
}

/// Runs `operation` on the output binding `name`. Dapr's metadata is a map
/// in no particular order; it is sorted so the binding sees the same
/// parameters whatever order the caller's library sent them in.
pub async fn invoke(
    client: &Client,
    name: &str,
    operation: &str,
    data: Vec<u8>,
    mut metadata: Vec<(String, String)>,
) -> Result<Output, Failure> {
    if name.is_empty() {
        return Err(Failure::invalid(ERR_BINDING, "the binding name is empty"));
    }
    if operation.is_empty() {
        return Err(Failure::invalid(
            ERR_BINDING,
            format!("no operation given for binding {name}"),
        ));
    }
    metadata.sort();
    let reply = client
        .invoke_binding(name, operation, data, metadata)
        .await
        .map_err(|e| binding_failure(&e))?;
    Ok(Output {
        data: reply.data,
        metadata: reply.metadata,
    })
}

/// A failed BINDING_INVOKE as Dapr reports it: ERR_INVOKE_OUTPUT_BINDING,
/// HTTP 500 unless the request was at fault (400), refused (403), named no
/// binding (404) or hit a limit (429).
fn binding_failure(e: &mecha_client::Error) -> Failure {
    let mut f = Failure::native(e, ERR_BINDING);
    if f.status == mecha_abi::Status::NotFound {
        f.http = 404;
    }
    f
}
