//! Payloads of the invoke family (`0x07`): app-to-app calls by app id, and the
//! mecha-to-mecha peer frames (`0xF1`) that carry them between nodes.

use serde::{Deserialize, Serialize};

/// INVOKE_REGISTER request: serve `app_id`. Opens a stream (the registration)
/// that lasts until the app cancels it or its connection closes; calls then
/// arrive as INVOKE_CALL requests on the same connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The app id to serve, non-empty.
    pub app_id: String,
    /// The methods served; empty serves every method.
    pub methods: Vec<String>,
}

/// INVOKE_REGISTER answer (opening the registration stream).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterReply {
    /// The app id registered, echoed.
    pub app_id: String,
    /// The name of the node that serves it.
    pub node: String,
}

/// INVOKE request: call `method` of app `app_id`, wherever it runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeRequest {
    /// The callee's app id, non-empty.
    pub app_id: String,
    /// The method, non-empty.
    pub method: String,
    /// The request body, opaque.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Media type of `data`; empty = `application/octet-stream`.
    pub content_type: String,
    /// Name/value pairs passed to the callee.
    pub metadata: Vec<(String, String)>,
    /// The app id the caller calls as; empty = anonymous. Checked against
    /// the caller tenant's `appIds`.
    pub caller_app_id: String,
    /// W3C `traceparent`; empty = generate one.
    pub trace_parent: String,
}

/// INVOKE answer, and the callee's OK answer to INVOKE_CALL.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeReply {
    /// The response body, opaque.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Media type of `data`.
    pub content_type: String,
    /// Name/value pairs returned by the callee.
    pub metadata: Vec<(String, String)>,
}

/// INVOKE_CALL request (daemon → app, on a registered connection), and the
/// PEER_INVOKE request between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvokeCall {
    /// The callee's app id (one the connection registered).
    pub app_id: String,
    /// The method.
    pub method: String,
    /// The request body.
    #[serde(with = "serde_bytes")]
    pub data: Vec<u8>,
    /// Media type of `data`.
    pub content_type: String,
    /// Name/value pairs from the caller.
    pub metadata: Vec<(String, String)>,
    /// The caller's (verified) app id; empty when anonymous.
    pub caller_app_id: String,
    /// The caller's tenant.
    pub caller_tenant: String,
    /// The node the caller is on.
    pub caller_node: String,
    /// W3C `traceparent` of the call, never empty.
    pub trace_parent: String,
}

/// One app id known to the invoke module.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEntry {
    /// The app id.
    pub app_id: String,
    /// The node serving it.
    pub node: String,
    /// True when served on this node.
    pub local: bool,
    /// Registered instances (local), or 1 for a remote node.
    pub instances: u32,
}

/// INVOKE_APPS answer: every app id reachable from this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppsReply {
    /// Sorted by app id, then node.
    pub apps: Vec<AppEntry>,
}

/// LINK_DELIVER request (module → daemon): send request `payload` with
/// `opcode` to the connection that owns the module's stream `stream`, and
/// answer with that connection's response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDeliver {
    /// The link id of a stream the module has open (a registration).
    pub stream: u32,
    /// The opcode of the delivered request; of the module's own family.
    pub opcode: u16,
    /// The delivered request's payload.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// LINK_ROUTE (module → daemon, never answered): later INVOKE requests of
/// `tenant` that match `app_id`, `method` and `caller_app_id` exactly may be
/// delivered by the daemon straight to the connection owning the module's
/// open stream `stream`, as the module would have delivered them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteGrant {
    /// The caller's tenant (the tenant prefix of the calls the route serves).
    pub tenant: String,
    /// The callee's app id.
    pub app_id: String,
    /// The method.
    pub method: String,
    /// The caller app id the calls carry; empty when anonymous.
    pub caller_app_id: String,
    /// The link id of the callee's registration stream.
    pub stream: u32,
    /// The node name the daemon puts in INVOKE_CALL's `caller_node`.
    pub node: String,
    /// The longest one delivery may wait for its answer, in milliseconds
    /// (the module's attempt timeout); the request's deadline still applies.
    pub attempt_ms: u32,
    /// The most calls of `tenant` the daemon may have in flight on routes at
    /// once (the module's per-tenant call limit); beyond it calls take the
    /// module's path.
    pub max_calls: u32,
}

/// LINK_UNROUTE (module → daemon, never answered): forget the routes to
/// `app_id`, or every route when `app_id` is empty.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRevoke {
    /// The callee's app id; empty = all.
    pub app_id: String,
}

/// PEER_HELLO request, and its answer: the first frame each way of a peer link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHello {
    /// Peer-protocol version: 1.
    pub version: u8,
    /// The sender's node name (its certificate SAN when TLS is on).
    pub node: String,
}

/// PEER_ANNOUNCE (never answered): the complete set of app ids the sender
/// serves locally, replacing any earlier announcement.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAnnounce {
    /// The sender's node name.
    pub node: String,
    /// Sorted app ids.
    pub apps: Vec<String>,
}
