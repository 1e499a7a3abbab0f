//! Dapr's output bindings on mecha's: InvokeBinding becomes a native
//! BINDING_INVOKE of the binding named by the component (SPEC §7.9), with
//! Dapr's metadata as the operation's parameters.

use mecha_client::Client;

use super::dapr_error::{self, Api, DaprError};

/// Dapr's error code for a failed binding invocation.
pub const ERR_BINDING: &str = "ERR_INVOKE_OUTPUT_BINDING";

/// Dapr's error codes of bindings: every failure is
/// ERR_INVOKE_OUTPUT_BINDING, HTTP 500 unless the request was at fault
/// (400), refused (403), named no binding (404) or hit a limit (429).
pub const API: Api = Api {
    store_not_found: ERR_BINDING,
    store_not_found_http: 404,
    failed: ERR_BINDING,
};

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
) -> Result<Output, DaprError> {
    if name.is_empty() {
        return Err(DaprError::invalid(ERR_BINDING, "the binding name is empty"));
    }
    if operation.is_empty() {
        return Err(DaprError::invalid(
            ERR_BINDING,
            format!("no operation given for binding {name}"),
        ));
    }
    metadata.sort();
    let reply = client
        .invoke_binding(name, operation, data, metadata)
        .await
        .map_err(|e| {
            // Dapr reports every failure of a binding, a bad operation
            // included, under the binding's own code.
            let mut e = dapr_error::native(API, "binding", e);
            if e.grpc == tonic::Code::InvalidArgument {
                e.code = ERR_BINDING;
            }
            e
        })?;
    Ok(Output {
        data: reply.data,
        metadata: reply.metadata,
    })
}
