//! Golden-vector tests: builds every vector in `abi/vectors/` from typed values and checks the files and SPEC.md §10 byte for byte.
//!
//! The default run only compares. `MECHA_BLESS=1 cargo test -p mecha-abi --test vectors`
//! rewrites both vector files from the values below; a rewrite changes the ABI, so it
//! must be reviewed like any other change to SPEC.md.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::path::PathBuf;

use mecha_abi::msg::{
    AckItem, AckReply, AckRequest, BulkGetItem, BulkGetReply, BulkGetRequest, BulkSetRequest,
    ComponentSpec, ConfigGetReply, ConfigGetRequest, ConfigItem, ConfigSetItem, ConfigSetReply,
    ConfigSetRequest, ConfigSubscribeRequest, ConfigUpdate, DeleteItem, DeleteReply, DeleteRequest,
    Delivery, ErrorBody, ExtendLockReply, ExtendLockRequest, GetRequest, Hello, HelloReply,
    LinkHello, LinkReady, ModuleRestartReply, ModuleRestartRequest, ModuleStatus, NextIdReply,
    NextIdRequest, PublishReply, PublishRequest, ReloadReply, SecretBulkGetRequest,
    SecretBulkReply, SecretGetRequest, SecretReply, SetItem, SetReply, SetRequest, StateEntry,
    StatusReply, StreamCancel, SubscribeReply, SubscribeRequest, TransactReply, TransactRequest,
    TryLockReply, TryLockRequest, TxOp, UnlockReply, UnlockRequest, UnlockStatus,
};
use mecha_abi::msg::{
    AppEntry, AppsReply, InvokeCall, InvokeReply, InvokeRequest, LinkDeliver, PeerAnnounce,
    PeerHello, RegisterReply, RegisterRequest, RouteGrant, RouteRevoke,
};
use mecha_abi::msg::{
    BindingAckRequest, BindingEvent, BindingSubscribeReply, BindingSubscribeRequest,
    InvokeBindingReply, InvokeBindingRequest,
};
use mecha_abi::msg::{DaemonUpgradeReply, DaemonUpgradeRequest};
use mecha_abi::{
    decode, encode, encode_frame, Features, Flags, Header, Opcode, Status, TraceContext,
    HEADER_LEN, MAX_FRAME_CAP, TRACE_LEN,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Checks that a payload decodes back to the value a vector was built from.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One valid frame: header plus typed payload.
struct Vector {
    name: &'static str,
    meaning: &'static str,
    /// The payload type's name in SPEC.md, or `empty`.
    ty: String,
    /// The header; `payload_len` is filled in by `encode_frame`.
    header: Header,
    payload: Vec<u8>,
    check: Check,
}

/// One payload that a decoder must reject.
struct Invalid {
    name: &'static str,
    meaning: &'static str,
    ty: &'static str,
    payload: Vec<u8>,
    /// Attempts the decode; `Ok` means the decoder wrongly accepted the bytes.
    decode: fn(&[u8]) -> Result<(), String>,
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full).to_string()
}

/// A vector whose payload is one encoded value of type `T`.
fn typed<T>(name: &'static str, meaning: &'static str, header: Header, value: T) -> Vector
where
    T: Serialize + DeserializeOwned + PartialEq + Debug + 'static,
{
    let payload = encode(&value).expect("vector values encode");
    Vector {
        name,
        meaning,
        ty: short_type_name::<T>(),
        header,
        payload,
        check: Box::new(move |bytes| {
            let back: T = decode(bytes).map_err(|e| e.to_string())?;
            if back == value {
                Ok(())
            } else {
                Err(format!("decoded {back:?}, expected {value:?}"))
            }
        }),
    }
}

/// A vector with an empty payload.
fn empty(name: &'static str, meaning: &'static str, header: Header) -> Vector {
    Vector {
        name,
        meaning,
        ty: "empty".to_string(),
        header,
        payload: Vec::new(),
        check: Box::new(|bytes| {
            if bytes.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "expected an empty payload, got {} bytes",
                    bytes.len()
                ))
            }
        }),
    }
}

/// An error response carrying `ErrorBody { message }`.
fn error(
    name: &'static str,
    meaning: &'static str,
    opcode: Opcode,
    request_id: u32,
    status: Status,
    message: &str,
) -> Vector {
    typed(
        name,
        meaning,
        resp(opcode, request_id, status),
        ErrorBody {
            message: message.to_string(),
        },
    )
}

/// A request header as an application sends it.
fn req(opcode: Opcode, request_id: u32, deadline_ms: u32) -> Header {
    Header {
        deadline_ms,
        ..Header::request(opcode, request_id)
    }
}

/// A response header.
fn resp(opcode: Opcode, request_id: u32, status: Status) -> Header {
    req(opcode, request_id, 0).response(status)
}

/// The answer that opens a stream: RESPONSE | STREAM, status OK (SPEC.md §6.11).
fn opening(opcode: Opcode, request_id: u32) -> Header {
    Header {
        flags: Flags(Flags::RESPONSE | Flags::STREAM),
        ..resp(opcode, request_id, Status::Ok)
    }
}

/// The END frame of stream `stream_id` carrying `ErrorBody { message }`.
fn end_error(
    name: &'static str,
    meaning: &'static str,
    opcode: Opcode,
    stream_id: u32,
    status: Status,
    message: &str,
) -> Vector {
    typed(
        name,
        meaning,
        Header::end(opcode, stream_id, status),
        ErrorBody {
            message: message.to_string(),
        },
    )
}

fn item(key: &str, value: &[u8], etag: Option<&str>, ttl_ms: Option<u64>) -> SetItem {
    SetItem {
        key: key.to_string(),
        value: value.to_vec(),
        etag: etag.map(str::to_string),
        ttl_ms,
    }
}

fn entry(value: &[u8], etag: &str) -> StateEntry {
    StateEntry {
        value: value.to_vec(),
        etag: etag.to_string(),
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn config_item(key: &str, value: &str, version: &str, metadata: &[(&str, &str)]) -> ConfigItem {
    ConfigItem {
        key: key.to_string(),
        value: value.to_string(),
        version: version.to_string(),
        metadata: pairs(metadata),
    }
}

/// The message id of the pubsub examples.
const MESSAGE_ID: &str = "3f2a9c4b1d0e8f71-1a";

/// The first delivery of the message published by `pubsub_publish_request`.
fn delivery() -> Delivery {
    Delivery {
        store: "events".to_string(),
        topic: "orders".to_string(),
        group: "billing".to_string(),
        offset: 12,
        attempt: 1,
        id: MESSAGE_ID.to_string(),
        source: "mecha://uid:1000".to_string(),
        event_type: "com.mecha.pubsub.message".to_string(),
        spec_version: "1.0".to_string(),
        data_content_type: "application/json".to_string(),
        time: "2026-11-27T11:25:39.123Z".to_string(),
        trace_parent: String::new(),
        data: b"{\"id\":7}".to_vec(),
        metadata: pairs(&[("partitionKey", "cust-42")]),
        raw: false,
    }
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The tenant the link examples forward for.
const TENANT: &str = "uid:1000";

/// The link-forwarded STATE_GET: `ext` tenant bytes, then the application payload.
/// The W3C traceparent used by the invoke vectors.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The call of vector `invoke_request` as the callee receives it.
fn invoke_call() -> InvokeCall {
    InvokeCall {
        app_id: "checkout".to_string(),
        method: "pay".to_string(),
        data: b"{\"eur\":5}".to_vec(),
        content_type: "application/json".to_string(),
        metadata: pairs(&[("tenant-ref", "42")]),
        caller_app_id: "web".to_string(),
        caller_tenant: "uid:1000".to_string(),
        caller_node: "node-a".to_string(),
        trace_parent: TRACEPARENT.to_string(),
    }
}

fn forwarded_get() -> Vector {
    let app = GetRequest {
        store: String::new(),
        key: "order:1001".to_string(),
    };
    let mut payload = TENANT.as_bytes().to_vec();
    payload.extend_from_slice(&encode(&app).expect("vector values encode"));
    let ext = u16::try_from(TENANT.len()).expect("tenant fits ext");
    Vector {
        name: "link_forwarded_state_get_request",
        meaning: "daemon -> module: STATE_GET of key \"order:1001\" in the default store for tenant \"uid:1000\" (ext = 8 prefix bytes), request id rewritten to link id 4097, 4998 ms of the deadline left",
        ty: "GetRequest".to_string(),
        header: Header {
            ext,
            ..req(Opcode::STATE_GET, 4097, 4998)
        },
        payload,
        check: Box::new(move |bytes| {
            let n = usize::from(ext);
            let (prefix, rest) = bytes
                .split_at_checked(n)
                .ok_or("payload shorter than the tenant prefix")?;
            let tenant = std::str::from_utf8(prefix).map_err(|e| e.to_string())?;
            if tenant != TENANT {
                return Err(format!("tenant {tenant:?}, expected {TENANT:?}"));
            }
            let back: GetRequest = decode(rest).map_err(|e| e.to_string())?;
            if back == app {
                Ok(())
            } else {
                Err(format!("decoded {back:?}, expected {app:?}"))
            }
        }),
    }
}

/// A request with the TRACE flag (SPEC.md §2.1): `prefix` (the tenant on a
/// link, else nothing), the 26-byte trace context, then the payload.
fn traced_get(
    name: &'static str,
    meaning: &'static str,
    mut header: Header,
    tenant: &'static str,
    trace: TraceContext,
) -> Vector {
    let app = GetRequest {
        store: String::new(),
        key: "order:1001".to_string(),
    };
    header.flags = Flags(Flags::TRACE);
    header.ext = u16::try_from(tenant.len()).expect("tenant fits ext");
    let mut payload = tenant.as_bytes().to_vec();
    payload.extend_from_slice(&trace.encode());
    payload.extend_from_slice(&encode(&app).expect("vector values encode"));
    Vector {
        name,
        meaning,
        ty: "GetRequest".to_string(),
        header,
        payload,
        check: Box::new(move |bytes| {
            let (prefix, rest) = bytes
                .split_at_checked(tenant.len())
                .ok_or("payload shorter than the tenant prefix")?;
            if prefix != tenant.as_bytes() {
                return Err(format!("tenant prefix {prefix:?}, expected {tenant:?}"));
            }
            let got = TraceContext::decode(rest).map_err(|e| e.to_string())?;
            if got != trace {
                return Err(format!("trace context {got}, expected {trace}"));
            }
            let back: GetRequest = decode(&rest[TRACE_LEN..]).map_err(|e| e.to_string())?;
            if back == app {
                Ok(())
            } else {
                Err(format!("decoded {back:?}, expected {app:?}"))
            }
        }),
    }
}

/// The trace context of the traced vectors: [`TRACEPARENT`].
fn caller_trace() -> TraceContext {
    TraceContext::parse(TRACEPARENT).expect("a valid traceparent")
}

/// The same trace with the daemon's span `a3ce929d0e0e4736` as the parent.
fn daemon_trace() -> TraceContext {
    TraceContext {
        parent_id: [0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36],
        ..caller_trace()
    }
}

/// Every valid vector, in file order.
fn vectors() -> Vec<Vector> {
    use Opcode as O;
    vec![
        // --- control ---------------------------------------------------------
        typed(
            "hello_request",
            "HELLO, the first frame of a connection: client \"mecha-python/0.1.0\" speaks versions 1..=1",
            req(O::HELLO, 1, 0),
            Hello {
                min_version: 1,
                max_version: 1,
                client: "mecha-python/0.1.0".to_string(),
            },
        ),
        typed(
            "hello_reply",
            "OK answer to HELLO: version 1 agreed, daemon 0.1.0, tenant \"uid:1000\", max_frame 4194304 (4 MiB)",
            resp(O::HELLO, 1, Status::Ok),
            HelloReply {
                version: 1,
                daemon_version: "0.1.0".to_string(),
                tenant: "uid:1000".to_string(),
                max_frame: 4_194_304,
            },
        ),
        typed(
            "hello_reply_with_features",
            "OK answer to HELLO from a daemon that supports trace context: header ext = 0x0001 (feature bit TRACE), otherwise as hello_reply",
            Header {
                ext: Features::TRACE,
                ..resp(O::HELLO, 1, Status::Ok)
            },
            HelloReply {
                version: 1,
                daemon_version: "0.1.0".to_string(),
                tenant: "uid:1000".to_string(),
                max_frame: 4_194_304,
            },
        ),
        empty(
            "ping_request",
            "PING with a 100 ms deadline; empty payload",
            req(O::PING, 2, 100),
        ),
        empty(
            "ping_reply",
            "OK answer to PING; empty payload",
            resp(O::PING, 2, Status::Ok),
        ),
        empty(
            "status_request",
            "STATUS request; empty payload",
            req(O::STATUS, 3, 0),
        ),
        typed(
            "status_reply",
            "OK answer to STATUS: daemon 0.1.0, pid 812, up 86400123 ms, module \"state\" running with two components and module \"pubsub\" restarting after 2 restarts",
            resp(O::STATUS, 3, Status::Ok),
            StatusReply {
                daemon_version: "0.1.0".to_string(),
                pid: 812,
                uptime_ms: 86_400_123,
                modules: vec![
                    ModuleStatus {
                        name: "state".to_string(),
                        pid: 815,
                        state: "running".to_string(),
                        restarts: 0,
                        components: strings(&["statestore", "cache"]),
                    },
                    ModuleStatus {
                        name: "pubsub".to_string(),
                        pid: 0,
                        state: "restarting".to_string(),
                        restarts: 2,
                        components: strings(&["events"]),
                    },
                ],
            },
        ),
        // --- control: admin operations ------------------------------------------
        typed(
            "module_restart_request",
            "MODULE_RESTART (admin) of module \"state\" from its current binary (binary None), with a 30000 ms deadline",
            req(O::MODULE_RESTART, 4, 30_000),
            ModuleRestartRequest {
                module: "state".to_string(),
                binary: None,
            },
        ),
        error(
            "module_restart_permission_denied",
            "PERMISSION_DENIED (6) answering a MODULE_RESTART from uid 1000, which is not root, not the daemon's uid and not in adminUids",
            O::MODULE_RESTART,
            4,
            Status::PermissionDenied,
            "MODULE_RESTART (0x0004) is an admin operation; uid 1000 is not root, the daemon's uid, or in adminUids",
        ),
        typed(
            "module_restart_request_upgrade",
            "MODULE_RESTART (admin) of module \"state\" from the new binary /opt/mecha/bin/mecha-mod-state-0.2.0 (an upgrade), with a 30000 ms deadline",
            req(O::MODULE_RESTART, 5, 30_000),
            ModuleRestartRequest {
                module: "state".to_string(),
                binary: Some("/opt/mecha/bin/mecha-mod-state-0.2.0".to_string()),
            },
        ),
        typed(
            "module_restart_reply",
            "OK answer to MODULE_RESTART: the new instance, pid 2417, serves every new request; the old one drains",
            resp(O::MODULE_RESTART, 5, Status::Ok),
            ModuleRestartReply { pid: 2417 },
        ),
        typed(
            "daemon_upgrade_request",
            "DAEMON_UPGRADE (admin) to the mechad executable /usr/bin/mechad, with a 150000 ms deadline",
            req(O::DAEMON_UPGRADE, 9, 150_000),
            DaemonUpgradeRequest {
                binary: Some("/usr/bin/mechad".into()),
            },
        ),
        typed(
            "daemon_upgrade_reply",
            "OK answer to DAEMON_UPGRADE: daemon pid 812 hands over to the new daemon, pid 5120, which is ready",
            resp(O::DAEMON_UPGRADE, 9, Status::Ok),
            DaemonUpgradeReply {
                old_pid: 812,
                new_pid: 5120,
            },
        ),
        empty(
            "reload_request",
            "RELOAD (admin) with a 60000 ms deadline; empty payload",
            req(O::RELOAD, 6, 60_000),
        ),
        typed(
            "reload_reply",
            "OK answer to RELOAD: module \"lock\" started (newly configured), \"state\" hot-restarted (its components changed), none stopped, \"sequencer\" and \"secrets\" unchanged",
            resp(O::RELOAD, 6, Status::Ok),
            ReloadReply {
                started: strings(&["lock"]),
                restarted: strings(&["state"]),
                stopped: Vec::new(),
                unchanged: strings(&["sequencer", "secrets"]),
            },
        ),
        typed(
            "stream_cancel_request",
            "STREAM_CANCEL of stream 61, the stream opened by this connection's request 61",
            req(O::STREAM_CANCEL, 7, 0),
            StreamCancel { stream_id: 61 },
        ),
        empty(
            "stream_cancel_reply",
            "OK answer to STREAM_CANCEL, sent at once; empty payload (the stream's END frame follows)",
            resp(O::STREAM_CANCEL, 7, Status::Ok),
        ),
        // --- state -----------------------------------------------------------
        typed(
            "state_get_request",
            "STATE_GET of key \"order:1001\" in the default store (empty store name)",
            req(O::STATE_GET, 10, 0),
            GetRequest {
                store: String::new(),
                key: "order:1001".to_string(),
            },
        ),
        traced_get(
            "state_get_request_traced",
            "STATE_GET of key \"order:1001\" with the TRACE flag (0x08): the payload starts with the 26-byte trace context of traceparent 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 (version 00, trace id, parent id, flags 01), then the GetRequest",
            req(O::STATE_GET, 11, 0),
            "",
            caller_trace(),
        ),
        typed(
            "state_get_reply",
            "OK answer to STATE_GET: value {\"qty\":3} (9 bytes) with etag \"41\"",
            resp(O::STATE_GET, 10, Status::Ok),
            entry(b"{\"qty\":3}", "41"),
        ),
        typed(
            "state_set_request_etag_ttl",
            "STATE_SET in store \"statestore\" of key \"session:7f3a\" = \"cart=3\" only if its etag is \"41\", expiring 30000 ms after the write; 250 ms deadline",
            req(O::STATE_SET, 11, 250),
            SetRequest {
                store: "statestore".to_string(),
                item: item("session:7f3a", b"cart=3", Some("41"), Some(30_000)),
            },
        ),
        typed(
            "state_set_reply",
            "OK answer to STATE_SET: the key's new etag is \"42\"",
            resp(O::STATE_SET, 11, Status::Ok),
            SetReply {
                etag: "42".to_string(),
            },
        ),
        typed(
            "state_set_request_plain",
            "STATE_SET in the default store of key \"counter\" = \"7\" without etag (last-write-wins) and without TTL",
            req(O::STATE_SET, 12, 0),
            SetRequest {
                store: String::new(),
                item: item("counter", b"7", None, None),
            },
        ),
        typed(
            "state_set_request_empty_value",
            "STATE_SET of key \"flag:maintenance\" to the empty value, no etag, expiring after 60000 ms",
            req(O::STATE_SET, 13, 0),
            SetRequest {
                store: String::new(),
                item: item("flag:maintenance", b"", None, Some(60_000)),
            },
        ),
        typed(
            "state_set_request_utf8_key",
            "STATE_SET of the non-ASCII key \"usuário:東京\" (15 UTF-8 bytes) = \"olá\" (4 bytes) only if its etag is \"7\", no TTL",
            req(O::STATE_SET, 14, 0),
            SetRequest {
                store: String::new(),
                item: item("usuário:東京", "olá".as_bytes(), Some("7"), None),
            },
        ),
        typed(
            "state_delete_request_etag",
            "STATE_DELETE in store \"statestore\" of key \"session:7f3a\" only if its etag is \"42\"",
            req(O::STATE_DELETE, 15, 0),
            DeleteRequest {
                store: "statestore".to_string(),
                item: DeleteItem {
                    key: "session:7f3a".to_string(),
                    etag: Some("42".to_string()),
                },
            },
        ),
        typed(
            "state_delete_reply_existed",
            "OK answer to STATE_DELETE: a live key was removed (existed = true)",
            resp(O::STATE_DELETE, 15, Status::Ok),
            DeleteReply { existed: true },
        ),
        typed(
            "state_delete_request_no_etag",
            "STATE_DELETE in the default store of key \"order:9999\" without etag",
            req(O::STATE_DELETE, 16, 0),
            DeleteRequest {
                store: String::new(),
                item: DeleteItem {
                    key: "order:9999".to_string(),
                    etag: None,
                },
            },
        ),
        typed(
            "state_delete_reply_missing",
            "OK answer to STATE_DELETE of a missing key: existed = false",
            resp(O::STATE_DELETE, 16, Status::Ok),
            DeleteReply { existed: false },
        ),
        typed(
            "state_bulk_get_request",
            "STATE_BULK_GET of keys \"order:1001\", \"order:1002\", \"order:1003\" in the default store",
            req(O::STATE_BULK_GET, 17, 0),
            BulkGetRequest {
                store: String::new(),
                keys: strings(&["order:1001", "order:1002", "order:1003"]),
            },
        ),
        typed(
            "state_bulk_get_reply_with_missing",
            "OK answer to STATE_BULK_GET in request order: order:1001 found (etag \"41\"), order:1002 missing (entry None), order:1003 found (etag \"39\")",
            resp(O::STATE_BULK_GET, 17, Status::Ok),
            BulkGetReply {
                items: vec![
                    BulkGetItem {
                        key: "order:1001".to_string(),
                        entry: Some(entry(b"{\"qty\":3}", "41")),
                    },
                    BulkGetItem {
                        key: "order:1002".to_string(),
                        entry: None,
                    },
                    BulkGetItem {
                        key: "order:1003".to_string(),
                        entry: Some(entry(b"{\"qty\":1}", "39")),
                    },
                ],
            },
        ),
        typed(
            "state_bulk_set_request",
            "STATE_BULK_SET (atomic) of \"user:1:name\" = \"Ada\" (no etag, no TTL) and \"user:1:email\" = \"ada@example.com\" (etag \"12\", TTL 86400000 ms)",
            req(O::STATE_BULK_SET, 18, 0),
            BulkSetRequest {
                store: String::new(),
                items: vec![
                    item("user:1:name", b"Ada", None, None),
                    item("user:1:email", b"ada@example.com", Some("12"), Some(86_400_000)),
                ],
            },
        ),
        typed(
            "state_bulk_set_reply",
            "OK answer to STATE_BULK_SET: new etags \"43\" and \"44\", one per item in order",
            resp(O::STATE_BULK_SET, 18, Status::Ok),
            TransactReply {
                etags: vec![Some("43".to_string()), Some("44".to_string())],
            },
        ),
        typed(
            "state_transact_request",
            "STATE_TRANSACT in store \"statestore\": Set \"inventory:sku-1\" = \"9\" if etag \"40\", then Delete \"reservation:77\" without etag",
            req(O::STATE_TRANSACT, 19, 0),
            TransactRequest {
                store: "statestore".to_string(),
                ops: vec![
                    TxOp::Set(item("inventory:sku-1", b"9", Some("40"), None)),
                    TxOp::Delete(DeleteItem {
                        key: "reservation:77".to_string(),
                        etag: None,
                    }),
                ],
            },
        ),
        typed(
            "state_transact_reply",
            "OK answer to STATE_TRANSACT: Some(\"45\") for the set, None for the delete",
            resp(O::STATE_TRANSACT, 19, Status::Ok),
            TransactReply {
                etags: vec![Some("45".to_string()), None],
            },
        ),
        // --- pubsub ------------------------------------------------------------
        typed(
            "pubsub_publish_request",
            "PUBSUB_PUBLISH to topic \"orders\" of the default store: data {\"id\":7} (8 bytes) as application/json, metadata partitionKey = \"cust-42\", in a CloudEvents envelope (raw false)",
            req(O::PUBSUB_PUBLISH, 60, 0),
            PublishRequest {
                store: String::new(),
                topic: "orders".to_string(),
                data: b"{\"id\":7}".to_vec(),
                content_type: "application/json".to_string(),
                metadata: pairs(&[("partitionKey", "cust-42")]),
                raw: false,
            },
        ),
        typed(
            "pubsub_publish_reply",
            "OK answer to PUBSUB_PUBLISH: message id \"3f2a9c4b1d0e8f71-1a\", stored at offset 12 of the tenant's topic",
            resp(O::PUBSUB_PUBLISH, 60, Status::Ok),
            PublishReply {
                id: MESSAGE_ID.to_string(),
                offset: 12,
            },
        ),
        error(
            "pubsub_publish_topic_full",
            "RESOURCE_EXHAUSTED (7) answering a PUBSUB_PUBLISH to a topic whose groups still need maxMessages (10000) retained messages; nothing was stored",
            O::PUBSUB_PUBLISH,
            63,
            Status::ResourceExhausted,
            "topic \"orders\" is full: it retains 10000 messages (maxMessages) and consumer group \"billing\" has not acknowledged the oldest; publish again once it catches up",
        ),
        typed(
            "pubsub_subscribe_request",
            "PUBSUB_SUBSCRIBE to topic \"orders\" of the default store as a member of group \"billing\", at most 16 unacknowledged deliveries, ack deadline 10000 ms",
            req(O::PUBSUB_SUBSCRIBE, 61, 0),
            SubscribeRequest {
                store: String::new(),
                topic: "orders".to_string(),
                group: "billing".to_string(),
                max_in_flight: 16,
                ack_deadline_ms: 10_000,
            },
        ),
        typed(
            "pubsub_subscribe_reply",
            "OK answer to PUBSUB_SUBSCRIBE with flags RESPONSE | STREAM (0x03): stream 61 is open; subscription 5 in store \"events\" (the default store), group \"billing\"",
            opening(O::PUBSUB_SUBSCRIBE, 61),
            SubscribeReply {
                subscription_id: 5,
                store: "events".to_string(),
                group: "billing".to_string(),
            },
        ),
        typed(
            "pubsub_delivery_push",
            "push (flags STREAM 0x02, status 0) on stream 61: the first delivery (attempt 1) of offset 12 of \"orders\" to group \"billing\" of store \"events\", CloudEvents envelope from tenant \"uid:1000\", no traceparent",
            Header::push(O::PUBSUB_SUBSCRIBE, 61),
            delivery(),
        ),
        typed(
            "pubsub_ack_request",
            "PUBSUB_ACK (an ack, nack false) in store \"events\" of topic \"orders\", group \"billing\": the delivery of offset 12, attempt 1",
            req(O::PUBSUB_ACK, 62, 0),
            AckRequest {
                store: "events".to_string(),
                topic: "orders".to_string(),
                group: "billing".to_string(),
                items: vec![AckItem {
                    offset: 12,
                    attempt: 1,
                }],
                nack: false,
            },
        ),
        typed(
            "pubsub_ack_reply",
            "OK answer to PUBSUB_ACK: 1 item took effect",
            resp(O::PUBSUB_ACK, 62, Status::Ok),
            AckReply { applied: 1 },
        ),
        // --- lock --------------------------------------------------------------
        typed(
            "lock_try_lock_request_wait",
            "LOCK_TRY_LOCK in store \"lockstore\" of resource \"invoice:7\" for owner \"worker-1\" with a 10000 ms lease, waiting up to 2000 ms; 3000 ms deadline leaves room beyond the wait",
            req(O::LOCK_TRY_LOCK, 30, 3000),
            TryLockRequest {
                store: "lockstore".to_string(),
                resource: "invoice:7".to_string(),
                owner: "worker-1".to_string(),
                ttl_ms: 10_000,
                wait_ms: 2000,
            },
        ),
        typed(
            "lock_try_lock_reply",
            "OK answer to LOCK_TRY_LOCK: acquired, fencing token 42",
            resp(O::LOCK_TRY_LOCK, 30, Status::Ok),
            TryLockReply {
                acquired: true,
                fencing_token: 42,
            },
        ),
        typed(
            "lock_try_lock_reply_not_acquired",
            "OK answer to a LOCK_TRY_LOCK whose lock stayed held: acquired = false, fencing token 0 (not an error)",
            resp(O::LOCK_TRY_LOCK, 31, Status::Ok),
            TryLockReply {
                acquired: false,
                fencing_token: 0,
            },
        ),
        typed(
            "lock_unlock_request",
            "LOCK_UNLOCK in the default store of resource \"invoice:7\" by owner \"worker-2\"",
            req(O::LOCK_UNLOCK, 32, 0),
            UnlockRequest {
                store: String::new(),
                resource: "invoice:7".to_string(),
                owner: "worker-2".to_string(),
            },
        ),
        typed(
            "lock_unlock_reply_belongs_to_others",
            "OK answer to LOCK_UNLOCK: status LockBelongsToOthers (variant 2), another owner holds the lock; nothing changed",
            resp(O::LOCK_UNLOCK, 32, Status::Ok),
            UnlockReply {
                status: UnlockStatus::LockBelongsToOthers,
            },
        ),
        typed(
            "lock_extend_request",
            "LOCK_EXTEND in the default store of resource \"invoice:7\" by owner \"worker-1\": lease ends 10000 ms from now",
            req(O::LOCK_EXTEND, 33, 0),
            ExtendLockRequest {
                store: String::new(),
                resource: "invoice:7".to_string(),
                owner: "worker-1".to_string(),
                ttl_ms: 10_000,
            },
        ),
        typed(
            "lock_extend_reply",
            "OK answer to LOCK_EXTEND: status Success (variant 0), the unchanged fencing token 42",
            resp(O::LOCK_EXTEND, 33, Status::Ok),
            ExtendLockReply {
                status: UnlockStatus::Success,
                fencing_token: 42,
            },
        ),
        // --- sequencer ---------------------------------------------------------
        typed(
            "seq_next_request",
            "SEQ_NEXT of 3 ids of sequence \"order\" in the default sequencer",
            req(O::SEQ_NEXT, 40, 0),
            NextIdRequest {
                store: String::new(),
                key: "order".to_string(),
                count: 3,
            },
        ),
        typed(
            "seq_next_reply",
            "OK answer to SEQ_NEXT: ids 1001, 1002 and 1003 (first 1001, count 3)",
            resp(O::SEQ_NEXT, 40, Status::Ok),
            NextIdReply {
                first: 1001,
                count: 3,
            },
        ),
        // --- configuration -----------------------------------------------------
        typed(
            "config_get_request",
            "CONFIG_GET of keys \"log-level\", \"feature-x\" and \"timeout\" in the default configuration store",
            req(O::CONFIG_GET, 70, 0),
            ConfigGetRequest {
                store: String::new(),
                keys: strings(&["log-level", "feature-x", "timeout"]),
            },
        ),
        typed(
            "config_get_reply",
            "OK answer to CONFIG_GET in request order: \"log-level\" = \"debug\" and \"feature-x\" = \"on\" with metadata owner = \"team-a\", both version \"1764242739123456\"; the missing \"timeout\" is simply absent",
            resp(O::CONFIG_GET, 70, Status::Ok),
            ConfigGetReply {
                items: vec![
                    config_item("log-level", "debug", "1764242739123456", &[]),
                    config_item("feature-x", "on", "1764242739123456", &[("owner", "team-a")]),
                ],
            },
        ),
        typed(
            "config_subscribe_request",
            "CONFIG_SUBSCRIBE to keys \"log-level\" and \"feature-x\" of store \"appconfig\"",
            req(O::CONFIG_SUBSCRIBE, 71, 0),
            ConfigSubscribeRequest {
                store: "appconfig".to_string(),
                keys: strings(&["log-level", "feature-x"]),
            },
        ),
        typed(
            "config_subscribe_reply",
            "OK answer to CONFIG_SUBSCRIBE with flags RESPONSE | STREAM (0x03): stream 71 is open; the snapshot of the watched keys, \"log-level\" = \"debug\" and \"feature-x\" = \"on\" (owner = \"team-a\")",
            opening(O::CONFIG_SUBSCRIBE, 71),
            ConfigGetReply {
                items: vec![
                    config_item("log-level", "debug", "1764242739123456", &[]),
                    config_item("feature-x", "on", "1764242739123456", &[("owner", "team-a")]),
                ],
            },
        ),
        typed(
            "config_update_push",
            "push (flags STREAM 0x02, status 0) on stream 71: ConfigUpdate seq 1, \"feature-x\" changed to \"off\" (version \"1764242801000042\", owner = \"team-a\"), \"log-level\" deleted",
            Header::push(O::CONFIG_SUBSCRIBE, 71),
            ConfigUpdate {
                seq: 1,
                items: vec![config_item(
                    "feature-x",
                    "off",
                    "1764242801000042",
                    &[("owner", "team-a")],
                )],
                deleted: strings(&["log-level"]),
            },
        ),
        typed(
            "config_set_request",
            "CONFIG_SET (admin) in store \"appconfig\": write \"feature-x\" = \"off\" with metadata owner = \"team-a\" and delete \"log-level\", atomically",
            req(O::CONFIG_SET, 72, 0),
            ConfigSetRequest {
                store: "appconfig".to_string(),
                items: vec![ConfigSetItem {
                    key: "feature-x".to_string(),
                    value: "off".to_string(),
                    metadata: pairs(&[("owner", "team-a")]),
                }],
                delete: strings(&["log-level"]),
            },
        ),
        typed(
            "config_set_reply",
            "OK answer to CONFIG_SET: the new version of the one written item, \"1764242801000042\"",
            resp(O::CONFIG_SET, 72, Status::Ok),
            ConfigSetReply {
                versions: strings(&["1764242801000042"]),
            },
        ),
        error(
            "config_set_read_only",
            "INVALID_ARGUMENT (3) answering a CONFIG_SET to \"nodeconfig\", a configuration.file store, which is read-only through the ABI",
            O::CONFIG_SET,
            73,
            Status::InvalidArgument,
            "store \"nodeconfig\" is read-only",
        ),
        // --- stream ends -------------------------------------------------------
        empty(
            "stream_end_ok",
            "END (flags STREAM | END 0x06) of stream 61 with status OK after STREAM_CANCEL: the stream finished; empty payload",
            Header::end(O::PUBSUB_SUBSCRIBE, 61, Status::Ok),
        ),
        end_error(
            "stream_end_unavailable",
            "END (0x06) of stream 61 with UNAVAILABLE (8): reset because the pubsub module exited; the client subscribes again",
            O::PUBSUB_SUBSCRIBE,
            61,
            Status::Unavailable,
            "stream reset: module pubsub: the module exited; resubscribe",
        ),
        end_error(
            "stream_end_resource_exhausted",
            "END (0x06) of stream 71 with RESOURCE_EXHAUSTED (7): the application left 1024 pushes unread, a push was dropped; the client subscribes again",
            O::CONFIG_SUBSCRIBE,
            71,
            Status::ResourceExhausted,
            "stream 71 ended: the application did not read its pushes (1024 queued on the connection); resubscribe",
        ),
        // --- secrets -----------------------------------------------------------
        typed(
            "secret_get_request",
            "SECRET_GET of secret \"db-password\" in store \"vault\"",
            req(O::SECRET_GET, 50, 0),
            SecretGetRequest {
                store: "vault".to_string(),
                name: "db-password".to_string(),
            },
        ),
        typed(
            "secret_get_reply",
            "OK answer to SECRET_GET of a single-value secret: one pair keyed by the secret's name, (\"db-password\", \"s3cr3t\")",
            resp(O::SECRET_GET, 50, Status::Ok),
            SecretReply {
                data: pairs(&[("db-password", "s3cr3t")]),
            },
        ),
        typed(
            "secret_bulk_get_request",
            "SECRET_BULK_GET of the default secret store (empty store name)",
            req(O::SECRET_BULK_GET, 51, 0),
            SecretBulkGetRequest {
                store: String::new(),
            },
        ),
        typed(
            "secret_bulk_get_reply",
            "OK answer to SECRET_BULK_GET sorted by name: \"db\" with pairs (password, pw) and (user, app) sorted by key, and single-value \"token\" = (token, t0k)",
            resp(O::SECRET_BULK_GET, 51, Status::Ok),
            SecretBulkReply {
                secrets: vec![
                    (
                        "db".to_string(),
                        pairs(&[("password", "pw"), ("user", "app")]),
                    ),
                    ("token".to_string(), pairs(&[("token", "t0k")])),
                ],
            },
        ),
        error(
            "error_secret_permission_denied",
            "PERMISSION_DENIED (6) answering a SECRET_GET: store \"vault\" has allowedTenants set without the caller's tenant \"uid:1000\"",
            O::SECRET_GET,
            52,
            Status::PermissionDenied,
            "tenant \"uid:1000\" may not use secret store \"vault\": it is not listed in allowedTenants",
        ),
        // --- invoke ------------------------------------------------------------
        typed(
            "invoke_register_request",
            "INVOKE_REGISTER: serve app id \"checkout\", methods \"pay\" and \"refund\"; opens the registration stream 80",
            req(O::INVOKE_REGISTER, 80, 0),
            RegisterRequest {
                app_id: "checkout".to_string(),
                methods: strings(&["pay", "refund"]),
            },
        ),
        typed(
            "invoke_register_reply",
            "The answer opening registration stream 80 (flags 0x03): app id \"checkout\" is served on node \"node-a\"",
            opening(O::INVOKE_REGISTER, 80),
            RegisterReply {
                app_id: "checkout".to_string(),
                node: "node-a".to_string(),
            },
        ),
        end_error(
            "invoke_register_end_unavailable",
            "END (0x06) of registration stream 80 with UNAVAILABLE: the invoke module restarted; the app registers again",
            O::INVOKE_REGISTER,
            80,
            Status::Unavailable,
            "stream reset: module invoke: the module exited; resubscribe",
        ),
        typed(
            "invoke_request",
            "INVOKE of method \"pay\" of app \"checkout\" with 9 bytes of JSON, one metadata pair, calling as app \"web\", with a traceparent, 2000 ms deadline",
            req(O::INVOKE, 81, 2000),
            InvokeRequest {
                app_id: "checkout".to_string(),
                method: "pay".to_string(),
                data: b"{\"eur\":5}".to_vec(),
                content_type: "application/json".to_string(),
                metadata: pairs(&[("tenant-ref", "42")]),
                caller_app_id: "web".to_string(),
                trace_parent: TRACEPARENT.to_string(),
            },
        ),
        typed(
            "invoke_reply",
            "OK answer to INVOKE: the callee's data \"paid\", its content type and no metadata",
            resp(O::INVOKE, 81, Status::Ok),
            InvokeReply {
                data: b"paid".to_vec(),
                content_type: "text/plain".to_string(),
                metadata: Vec::new(),
            },
        ),
        empty(
            "invoke_apps_request",
            "INVOKE_APPS: list the app ids reachable from this node (empty payload)",
            req(O::INVOKE_APPS, 82, 0),
        ),
        typed(
            "invoke_apps_reply",
            "OK answer to INVOKE_APPS: \"checkout\" with 2 local instances on node-a, \"stock\" announced by node-b",
            resp(O::INVOKE_APPS, 82, Status::Ok),
            AppsReply {
                apps: vec![
                    AppEntry {
                        app_id: "checkout".to_string(),
                        node: "node-a".to_string(),
                        local: true,
                        instances: 2,
                    },
                    AppEntry {
                        app_id: "stock".to_string(),
                        node: "node-b".to_string(),
                        local: false,
                        instances: 1,
                    },
                ],
            },
        ),
        typed(
            "invoke_call_request",
            "daemon -> app: INVOKE_CALL with daemon request id 1 on the callee's connection, the call of vector invoke_request from tenant \"uid:1000\" on node-a, 1998 ms left",
            req(O::INVOKE_CALL, 1, 1998),
            invoke_call(),
        ),
        typed(
            "invoke_call_reply",
            "app -> daemon: the callee's OK response (flags 0x01) to INVOKE_CALL 1",
            resp(O::INVOKE_CALL, 1, Status::Ok),
            InvokeReply {
                data: b"paid".to_vec(),
                content_type: "text/plain".to_string(),
                metadata: Vec::new(),
            },
        ),
        // --- bindings ----------------------------------------------------------
        typed(
            "binding_invoke_request",
            "BINDING_INVOKE of operation \"post\" on output binding \"orders-api\": body {\"id\":7} (8 bytes), metadata path = \"/orders\", 5000 ms deadline",
            req(O::BINDING_INVOKE, 90, 5000),
            InvokeBindingRequest {
                name: "orders-api".to_string(),
                operation: "post".to_string(),
                data: br#"{"id":7}"#.to_vec(),
                metadata: pairs(&[("path", "/orders")]),
            },
        ),
        typed(
            "binding_invoke_reply",
            "OK answer to BINDING_INVOKE: body \"created\", metadata statusCode = \"201\"",
            resp(O::BINDING_INVOKE, 90, Status::Ok),
            InvokeBindingReply {
                data: b"created".to_vec(),
                metadata: pairs(&[("statusCode", "201")]),
            },
        ),
        typed(
            "binding_subscribe_request",
            "BINDING_SUBSCRIBE to input binding \"nightly\", at most 8 unacknowledged events, the binding's default ack deadline (0)",
            req(O::BINDING_SUBSCRIBE, 91, 0),
            BindingSubscribeRequest {
                name: "nightly".to_string(),
                max_in_flight: 8,
                ack_deadline_ms: 0,
            },
        ),
        typed(
            "binding_subscribe_reply",
            "OK answer to BINDING_SUBSCRIBE with flags RESPONSE | STREAM (0x03): stream 91 is open; subscription 3 of binding \"nightly\"",
            opening(O::BINDING_SUBSCRIBE, 91),
            BindingSubscribeReply {
                subscription_id: 3,
                name: "nightly".to_string(),
            },
        ),
        typed(
            "binding_event_push",
            "push (flags STREAM 0x02, status 0) on stream 91: the first delivery (attempt 1) of event 4 of binding \"nightly\", a cron tick with an empty body and metadata time = \"2026-12-07T02:00:00Z\"",
            Header::push(O::BINDING_SUBSCRIBE, 91),
            BindingEvent {
                name: "nightly".to_string(),
                offset: 4,
                attempt: 1,
                data: Vec::new(),
                metadata: pairs(&[("time", "2026-12-07T02:00:00Z")]),
            },
        ),
        typed(
            "binding_ack_request",
            "BINDING_ACK (an ack, nack false) of binding \"nightly\": the delivery of event 4, attempt 1",
            req(O::BINDING_ACK, 92, 0),
            BindingAckRequest {
                name: "nightly".to_string(),
                items: vec![AckItem {
                    offset: 4,
                    attempt: 1,
                }],
                nack: false,
            },
        ),
        typed(
            "binding_ack_reply",
            "OK answer to BINDING_ACK: 1 item took effect",
            resp(O::BINDING_ACK, 92, Status::Ok),
            AckReply { applied: 1 },
        ),
        typed(
            "link_deliver_request",
            "module -> daemon: LINK_DELIVER (module request id 3) of an INVOKE_CALL to the connection owning link stream 4100, 1999 ms left",
            req(O::LINK_DELIVER, 3, 1999),
            LinkDeliver {
                stream: 4100,
                opcode: O::INVOKE_CALL.0,
                payload: encode(&invoke_call()).expect("vector values encode"),
            },
        ),
        typed(
            "link_deliver_reply",
            "daemon -> module: the app's answer to the delivered call, status and payload unchanged",
            resp(O::LINK_DELIVER, 3, Status::Ok),
            InvokeReply {
                data: b"paid".to_vec(),
                content_type: "text/plain".to_string(),
                metadata: Vec::new(),
            },
        ),
        typed(
            "link_route_request",
            "module -> daemon LINK_ROUTE, never answered: tenant shop's INVOKEs of billing.charge as checkout may go straight to the connection owning link stream 4100; one delivery waits at most 2000 ms, at most 256 of shop's routed calls at once",
            req(O::LINK_ROUTE, 0, 0),
            RouteGrant {
                tenant: "shop".to_string(),
                app_id: "billing".to_string(),
                method: "charge".to_string(),
                caller_app_id: "checkout".to_string(),
                stream: 4100,
                node: "node-a".to_string(),
                attempt_ms: 2000,
                max_calls: 256,
            },
        ),
        typed(
            "link_unroute_request",
            "module -> daemon LINK_UNROUTE, never answered: forget every route to app billing (an empty app id: every route)",
            req(O::LINK_UNROUTE, 0, 0),
            RouteRevoke {
                app_id: "billing".to_string(),
            },
        ),
        typed(
            "peer_hello_request",
            "peer link, dialler -> listener: PEER_HELLO from node-a, peer protocol 1",
            req(O::PEER_HELLO, 0, 0),
            PeerHello {
                version: 1,
                node: "node-a".to_string(),
            },
        ),
        typed(
            "peer_hello_reply",
            "peer link, listener -> dialler: PEER_HELLO answer from node-b",
            resp(O::PEER_HELLO, 0, Status::Ok),
            PeerHello {
                version: 1,
                node: "node-b".to_string(),
            },
        ),
        typed(
            "peer_announce_request",
            "peer link: PEER_ANNOUNCE (never answered) — node-a serves \"checkout\" and \"web\"",
            req(O::PEER_ANNOUNCE, 0, 0),
            PeerAnnounce {
                node: "node-a".to_string(),
                apps: strings(&["checkout", "web"]),
            },
        ),
        typed(
            "peer_invoke_request",
            "peer link: PEER_INVOKE id 9 carrying the call of vector invoke_call_request, 1997 ms left",
            req(O::PEER_INVOKE, 9, 1997),
            invoke_call(),
        ),
        typed(
            "peer_invoke_reply",
            "peer link: OK answer to PEER_INVOKE 9, the callee's reply",
            resp(O::PEER_INVOKE, 9, Status::Ok),
            InvokeReply {
                data: b"paid".to_vec(),
                content_type: "text/plain".to_string(),
                metadata: Vec::new(),
            },
        ),
        // --- one error response per non-OK status ------------------------------
        error(
            "error_not_found",
            "NOT_FOUND (1) answering STATE_GET of a missing key",
            O::STATE_GET,
            20,
            Status::NotFound,
            "key \"order:9999\" not found",
        ),
        error(
            "error_etag_mismatch",
            "ETAG_MISMATCH (2) answering a STATE_SET whose etag is stale; nothing changed",
            O::STATE_SET,
            21,
            Status::EtagMismatch,
            "etag mismatch on key \"session:7f3a\"",
        ),
        error(
            "error_invalid_argument",
            "INVALID_ARGUMENT (3) answering a STATE_SET whose payload had one trailing byte",
            O::STATE_SET,
            22,
            Status::InvalidArgument,
            "undecodable payload: 1 trailing bytes after the value",
        ),
        error(
            "error_unknown_opcode",
            "UNKNOWN_OPCODE (4) answering opcode 0x7f01 (family 0x7f is not defined in v1); the opcode is echoed",
            Opcode(0x7F01),
            23,
            Status::UnknownOpcode,
            "unknown opcode 0x7f01",
        ),
        error(
            "error_unsupported_version",
            "UNSUPPORTED_VERSION (5) answering a HELLO whose range 2..=3 does not include 1; the daemon then closes the connection",
            O::HELLO,
            1,
            Status::UnsupportedVersion,
            "client speaks ABI versions 2..=3, this daemon speaks 1..=1",
        ),
        error(
            "error_permission_denied",
            "PERMISSION_DENIED (6) answering a STATE_GET that policy forbids to the caller's tenant",
            O::STATE_GET,
            24,
            Status::PermissionDenied,
            "tenant \"uid:1001\" may not use store \"billing\"",
        ),
        error(
            "error_resource_exhausted",
            "RESOURCE_EXHAUSTED (7) answering request 25 whose payload_len 5000000 exceeds max_frame: opcode 0 marks it connection-fatal; the daemon then stops reading and closes",
            Opcode(0),
            25,
            Status::ResourceExhausted,
            "payload of 5000000 bytes exceeds the maximum frame size of 4194304 bytes",
        ),
        error(
            "error_unavailable",
            "UNAVAILABLE (8, retryable) answering a STATE_GET that was in flight when module \"state\" crashed; answered at once, not at the deadline",
            O::STATE_GET,
            26,
            Status::Unavailable,
            "module state is unavailable: the module exited; retry",
        ),
        error(
            "error_deadline_exceeded",
            "DEADLINE_EXCEEDED (9) answering a STATE_TRANSACT whose 250 ms deadline passed",
            O::STATE_TRANSACT,
            27,
            Status::DeadlineExceeded,
            "module state did not answer before the deadline",
        ),
        error(
            "error_internal",
            "INTERNAL (10) answering a STATE_BULK_GET when the backing store failed",
            O::STATE_BULK_GET,
            28,
            Status::Internal,
            "store failure: I/O error reading /var/lib/mecha/state/statestore.redb",
        ),
        error(
            "error_unsupported",
            "UNSUPPORTED (11) answering a STATE_SET with a TTL on a store whose driver has no expiry",
            O::STATE_SET,
            29,
            Status::Unsupported,
            "component cache (state.example) does not support ttl",
        ),
        error(
            "error_bad_magic",
            "INVALID_ARGUMENT sent once after a frame with bad magic (here \"GET \"): opcode 0, request id 0; the daemon then stops reading and closes",
            Opcode(0),
            0,
            Status::InvalidArgument,
            "bad magic [47, 45, 54, 20]: expected \"MCHA\"",
        ),
        // --- module link -------------------------------------------------------
        typed(
            "link_hello_request",
            "daemon -> module LINK_HELLO: link version 1, module \"state\", data dir /var/lib/mecha/state, components statestore (state.redb, path=statestore.redb) and cache (state.memory, no metadata)",
            req(O::LINK_HELLO, 1, 10_000),
            LinkHello {
                version: 1,
                module: "state".to_string(),
                data_dir: "/var/lib/mecha/state".to_string(),
                components: vec![
                    ComponentSpec {
                        name: "statestore".to_string(),
                        kind: "state.redb".to_string(),
                        metadata: vec![("path".to_string(), "statestore.redb".to_string())],
                    },
                    ComponentSpec {
                        name: "cache".to_string(),
                        kind: "state.memory".to_string(),
                        metadata: Vec::new(),
                    },
                ],
            },
        ),
        typed(
            "link_ready_reply",
            "module -> daemon OK answer to LINK_HELLO: module \"state\" version 0.1.0 is ready",
            resp(O::LINK_HELLO, 1, Status::Ok),
            LinkReady {
                module: "state".to_string(),
                version: "0.1.0".to_string(),
            },
        ),
        empty(
            "link_ping_request",
            "daemon -> module LINK_PING health check with a 1000 ms deadline; empty payload",
            req(O::LINK_PING, 2, 1000),
        ),
        empty(
            "link_ping_reply",
            "module -> daemon OK answer to LINK_PING; empty payload",
            resp(O::LINK_PING, 2, Status::Ok),
        ),
        empty(
            "link_drain_request",
            "daemon -> module LINK_DRAIN with a 30000 ms deadline; empty payload",
            req(O::LINK_DRAIN, 3, 30_000),
        ),
        empty(
            "link_drain_reply",
            "module -> daemon OK answer to LINK_DRAIN after in-flight requests finished; the module then exits",
            resp(O::LINK_DRAIN, 3, Status::Ok),
        ),
        empty(
            "link_cancel_request",
            "daemon -> module LINK_CANCEL: end the stream whose link id is 4098 (the request id); empty payload, never answered",
            req(O::LINK_CANCEL, 4098, 0),
        ),
        empty(
            "link_stream_end_ok",
            "module -> daemon END (0x06) with status OK of the stream whose link id is 4098, after LINK_CANCEL; empty payload",
            Header::end(O::PUBSUB_SUBSCRIBE, 4098, Status::Ok),
        ),
        forwarded_get(),
        traced_get(
            "link_forwarded_state_get_request_traced",
            "daemon -> module: the traced STATE_GET forwarded for tenant \"uid:1000\" (ext = 8) with the TRACE flag (0x08): tenant prefix, then the trace context with the same trace id and the daemon's span a3ce929d0e0e4736 as parent, then the GetRequest; link id 4098",
            req(O::STATE_GET, 4098, 4998),
            TENANT,
            daemon_trace(),
        ),
        typed(
            "link_forwarded_state_get_reply",
            "module -> daemon OK answer to the forwarded STATE_GET: ext 0, link id 4097, value {\"qty\":3} with etag \"41\"",
            resp(O::STATE_GET, 4097, Status::Ok),
            entry(b"{\"qty\":3}", "41"),
        ),
    ]
}

fn reject<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), String> {
    match decode::<T>(bytes) {
        Ok(v) => Err(format!("decoded to {v:?}")),
        Err(_) => Ok(()),
    }
}

fn enc<T: Serialize>(value: &T) -> Vec<u8> {
    encode(value).expect("vector values encode")
}

fn with(mut base: Vec<u8>, at: usize, byte: u8) -> Vec<u8> {
    base[at] = byte;
    base
}

/// Every invalid payload, in file order.
fn invalid_vectors() -> Vec<Invalid> {
    // `DeleteReply { existed: true }` is the single byte 01.
    let delete_reply = enc(&DeleteReply { existed: true });
    // `DeleteItem` in a DeleteRequest: "" store, key "k", etag None.
    let delete_req = enc(&DeleteRequest {
        store: String::new(),
        item: DeleteItem {
            key: "k".to_string(),
            etag: None,
        },
    });
    let get_req = enc(&GetRequest {
        store: String::new(),
        key: "k".to_string(),
    });
    let tx_req = enc(&TransactRequest {
        store: String::new(),
        ops: vec![TxOp::Delete(DeleteItem {
            key: "k".to_string(),
            etag: None,
        })],
    });
    let mut trailing = get_req.clone();
    trailing.push(0);
    let mut huge = (1u64 << 62).to_le_bytes().to_vec();
    huge.extend_from_slice(b"abc");
    let next_id = enc(&NextIdRequest {
        store: String::new(),
        key: "order".to_string(),
        count: 3,
    });
    let mut next_id_trailing = next_id.clone();
    next_id_trailing.push(0);
    let ack_req = enc(&AckRequest {
        store: String::new(),
        topic: "t".to_string(),
        group: String::new(),
        items: Vec::new(),
        nack: false,
    });
    let subscribe_req = enc(&SubscribeRequest {
        store: String::new(),
        topic: "t".to_string(),
        group: String::new(),
        max_in_flight: 16,
        ack_deadline_ms: 0,
    });
    // ConfigGetRequest: store "", then a keys count of 2^62 followed by 3 bytes.
    let mut config_huge = enc(&String::new());
    config_huge.extend_from_slice(&(1u64 << 62).to_le_bytes());
    config_huge.extend_from_slice(b"abc");
    vec![
        Invalid {
            name: "bool_not_0_or_1",
            meaning: "DeleteReply whose bool byte is 2",
            ty: "DeleteReply",
            payload: with(delete_reply, 0, 2),
            decode: reject::<DeleteReply>,
        },
        Invalid {
            name: "option_tag_2",
            meaning: "DeleteRequest (store \"\", key \"k\") whose Option tag for etag is 2",
            ty: "DeleteRequest",
            payload: with(delete_req.clone(), delete_req.len() - 1, 2),
            decode: reject::<DeleteRequest>,
        },
        Invalid {
            name: "enum_variant_2",
            meaning: "TransactRequest with one op whose TxOp variant index is 2 (only 0 and 1 exist)",
            ty: "TransactRequest",
            payload: with(tx_req, 16, 2),
            decode: reject::<TransactRequest>,
        },
        Invalid {
            name: "invalid_utf8",
            meaning: "GetRequest whose key is the single byte ff, which is not UTF-8",
            ty: "GetRequest",
            payload: with(get_req.clone(), get_req.len() - 1, 0xff),
            decode: reject::<GetRequest>,
        },
        Invalid {
            name: "trailing_byte",
            meaning: "a valid GetRequest followed by one extra 00 byte",
            ty: "GetRequest",
            payload: trailing,
            decode: reject::<GetRequest>,
        },
        Invalid {
            name: "truncated",
            meaning: "GetRequest missing the last byte of its key",
            ty: "GetRequest",
            payload: get_req[..get_req.len() - 1].to_vec(),
            decode: reject::<GetRequest>,
        },
        Invalid {
            name: "length_prefix_beyond_payload",
            meaning: "GetRequest whose store length prefix claims 2^62 bytes but 3 follow; must fail without allocating",
            ty: "GetRequest",
            payload: huge,
            decode: reject::<GetRequest>,
        },
        Invalid {
            name: "empty_payload_for_struct",
            meaning: "an empty payload where a GetRequest is required",
            ty: "GetRequest",
            payload: Vec::new(),
            decode: reject::<GetRequest>,
        },
        Invalid {
            name: "unlock_status_undefined_variant",
            meaning: "UnlockReply whose UnlockStatus variant index is 3 (only 0, 1 and 2 exist)",
            ty: "UnlockReply",
            payload: 3u32.to_le_bytes().to_vec(),
            decode: reject::<UnlockReply>,
        },
        Invalid {
            name: "seq_next_count_truncated",
            meaning: "NextIdRequest (store \"\", key \"order\") whose u32 count has 2 of its 4 bytes",
            ty: "NextIdRequest",
            payload: next_id[..next_id.len() - 2].to_vec(),
            decode: reject::<NextIdRequest>,
        },
        Invalid {
            name: "seq_next_trailing_byte",
            meaning: "a valid NextIdRequest (store \"\", key \"order\", count 3) followed by one extra 00 byte",
            ty: "NextIdRequest",
            payload: next_id_trailing,
            decode: reject::<NextIdRequest>,
        },
        Invalid {
            name: "ack_request_nack_not_bool",
            meaning: "AckRequest (store \"\", topic \"t\", group \"\", no items) whose nack bool byte is 2",
            ty: "AckRequest",
            payload: with(ack_req.clone(), ack_req.len() - 1, 2),
            decode: reject::<AckRequest>,
        },
        Invalid {
            name: "subscribe_request_truncated",
            meaning: "SubscribeRequest (store \"\", topic \"t\", group \"\", max_in_flight 16) with none of the 4 bytes of ack_deadline_ms",
            ty: "SubscribeRequest",
            payload: subscribe_req[..subscribe_req.len() - 4].to_vec(),
            decode: reject::<SubscribeRequest>,
        },
        Invalid {
            name: "config_get_request_count_beyond_payload",
            meaning: "ConfigGetRequest (store \"\") whose keys count claims 2^62 strings but 3 bytes follow; must fail without allocating",
            ty: "ConfigGetRequest",
            payload: config_huge,
            decode: reject::<ConfigGetRequest>,
        },
    ]
}

// ---------------------------------------------------------------------------
// File format (abi/vectors/README.md).

fn abi_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    // Only lowercase hex is accepted, so that the files have one spelling.
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(format!("{:?} is not a lowercase hex digit", char::from(c))),
    };
    s.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Ok(digit(*hi)? << 4 | digit(*lo)?),
            _ => Err("odd number of hex digits".to_string()),
        })
        .collect()
}

/// One parsed block: its `key: value` lines in order.
type Block = Vec<(String, String)>;

fn parse_blocks(text: &str, keys: &[&str]) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut cur: Block = Vec::new();
    for (n, line) in text.lines().enumerate() {
        if line.starts_with('#') {
            continue;
        }
        if line.trim().is_empty() {
            if !cur.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
            continue;
        }
        let (k, v) = line
            .split_once(':')
            .unwrap_or_else(|| panic!("line {}: expected `key: value`: {line:?}", n + 1));
        assert!(keys.contains(&k), "line {}: unknown key {k:?}", n + 1);
        cur.push((k.to_string(), v.trim_start_matches(' ').to_string()));
    }
    if !cur.is_empty() {
        blocks.push(cur);
    }
    for b in &blocks {
        let got: Vec<&str> = b.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(got, keys, "every block has exactly these keys, in order");
    }
    blocks
}

fn field<'a>(block: &'a Block, key: &str) -> &'a str {
    &block
        .iter()
        .find(|(k, _)| k == key)
        .expect("parse_blocks checked the keys")
        .1
}

const V1_HEADER: &str = "\
# mecha ABI v1 golden vectors: valid frames (header + payload). Format: abi/vectors/README.md.
# Generated from abi/tests/vectors.rs with `MECHA_BLESS=1 cargo test -p mecha-abi --test vectors`.
# Normative: a change here is a change to the ABI.
";

const INVALID_HEADER: &str = "\
# mecha ABI v1 golden vectors: payloads (no header) that a decoder of `type` must reject.
# Format: abi/vectors/README.md. Generated from abi/tests/vectors.rs with `MECHA_BLESS=1`.
";

fn render_valid(vs: &[Vector]) -> String {
    let mut out = String::from(V1_HEADER);
    for v in vs {
        let frame = encode_frame(v.header, &v.payload).expect("vector frames encode");
        out.push_str(&format!(
            "\nname: {}\nmeaning: {}\ntype: {}\nframe: {}\n",
            v.name,
            v.meaning,
            v.ty,
            hex(&frame)
        ));
    }
    out
}

fn render_invalid(vs: &[Invalid]) -> String {
    let mut out = String::from(INVALID_HEADER);
    for v in vs {
        out.push_str(&format!(
            "\nname: {}\nmeaning: {}\ntype: {}\npayload: {}\n",
            v.name,
            v.meaning,
            v.ty,
            hex(&v.payload)
        ));
        // An empty value is written as `payload:` so that no line ends in a space.
        if v.payload.is_empty() {
            out.truncate(out.len() - 2);
            out.push('\n');
        }
    }
    out
}

fn blessing() -> bool {
    std::env::var("MECHA_BLESS").is_ok_and(|v| v == "1")
}

/// Reads a vector file, first rewriting it from `rendered` when blessing.
fn load(file: &str, rendered: &str) -> String {
    let path = abi_dir().join("vectors").join(file);
    if blessing() {
        std::fs::write(&path, rendered).expect("write vector file");
    }
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn check_names(kind: &str, built: &[&str], in_file: &[&str]) {
    let b: BTreeSet<&str> = built.iter().copied().collect();
    let f: BTreeSet<&str> = in_file.iter().copied().collect();
    assert_eq!(b.len(), built.len(), "{kind}: duplicate name in the test");
    assert_eq!(f.len(), in_file.len(), "{kind}: duplicate name in the file");
    let missing: Vec<_> = b.difference(&f).collect();
    let uncovered: Vec<_> = f.difference(&b).collect();
    assert!(
        missing.is_empty(),
        "{kind}: built but not in the file: {missing:?}"
    );
    assert!(
        uncovered.is_empty(),
        "{kind}: in the file but not covered by the test: {uncovered:?}"
    );
    assert_eq!(built, in_file, "{kind}: order differs");
    for n in built {
        assert!(
            !n.is_empty()
                && n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
            "{kind}: name {n:?} is not snake_case"
        );
    }
}

// ---------------------------------------------------------------------------
// Tests.

#[test]
fn valid_vectors_match_the_file() {
    let vs = vectors();
    let text = load("v1.txt", &render_valid(&vs));
    let blocks = parse_blocks(&text, &["name", "meaning", "type", "frame"]);
    let built: Vec<&str> = vs.iter().map(|v| v.name).collect();
    let in_file: Vec<&str> = blocks.iter().map(|b| field(b, "name")).collect();
    check_names("v1.txt", &built, &in_file);

    for (v, b) in vs.iter().zip(&blocks) {
        let name = v.name;
        assert_eq!(field(b, "meaning"), v.meaning, "{name}: meaning");
        assert_eq!(field(b, "type"), v.ty, "{name}: type");
        let bytes = unhex(field(b, "frame")).unwrap_or_else(|e| panic!("{name}: {e}"));

        // Encode direction: the typed value gives exactly the file's bytes.
        let built = encode_frame(v.header, &v.payload).expect("vector frames encode");
        assert_eq!(hex(&bytes), hex(&built), "{name}: encoded bytes differ");

        // Decode direction: the file's bytes give back the typed value.
        let head: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().expect("24 bytes");
        let header = Header::decode(&head, MAX_FRAME_CAP).unwrap_or_else(|e| panic!("{name}: {e}"));
        let payload = &bytes[HEADER_LEN..];
        let expected = Header {
            payload_len: u32::try_from(v.payload.len()).expect("small payload"),
            ..v.header
        };
        assert_eq!(header, expected, "{name}: header");
        assert_eq!(header.payload_len as usize, payload.len(), "{name}: length");
        (v.check)(payload).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn invalid_vectors_match_the_file_and_are_rejected() {
    let vs = invalid_vectors();
    let text = load("v1-invalid.txt", &render_invalid(&vs));
    let blocks = parse_blocks(&text, &["name", "meaning", "type", "payload"]);
    let built: Vec<&str> = vs.iter().map(|v| v.name).collect();
    let in_file: Vec<&str> = blocks.iter().map(|b| field(b, "name")).collect();
    check_names("v1-invalid.txt", &built, &in_file);

    for (v, b) in vs.iter().zip(&blocks) {
        let name = v.name;
        assert_eq!(field(b, "meaning"), v.meaning, "{name}: meaning");
        assert_eq!(field(b, "type"), v.ty, "{name}: type");
        let bytes = unhex(field(b, "payload")).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(hex(&bytes), hex(&v.payload), "{name}: bytes differ");
        (v.decode)(&bytes).unwrap_or_else(|e| panic!("{name}: decoder accepted it: {e}"));
    }
}

/// The opcodes SPEC.md §3 defines, in table order.
const DEFINED_OPCODES: [Opcode; 42] = [
    Opcode::HELLO,
    Opcode::PING,
    Opcode::STATUS,
    Opcode::MODULE_RESTART,
    Opcode::RELOAD,
    Opcode::STREAM_CANCEL,
    Opcode::DAEMON_UPGRADE,
    Opcode::STATE_GET,
    Opcode::STATE_SET,
    Opcode::STATE_DELETE,
    Opcode::STATE_BULK_GET,
    Opcode::STATE_BULK_SET,
    Opcode::STATE_TRANSACT,
    Opcode::PUBSUB_PUBLISH,
    Opcode::PUBSUB_SUBSCRIBE,
    Opcode::PUBSUB_ACK,
    Opcode::LOCK_TRY_LOCK,
    Opcode::LOCK_UNLOCK,
    Opcode::LOCK_EXTEND,
    Opcode::SEQ_NEXT,
    Opcode::CONFIG_GET,
    Opcode::CONFIG_SUBSCRIBE,
    Opcode::CONFIG_SET,
    Opcode::SECRET_GET,
    Opcode::SECRET_BULK_GET,
    Opcode::INVOKE_REGISTER,
    Opcode::INVOKE,
    Opcode::INVOKE_APPS,
    Opcode::INVOKE_CALL,
    Opcode::BINDING_INVOKE,
    Opcode::BINDING_SUBSCRIBE,
    Opcode::BINDING_ACK,
    Opcode::LINK_HELLO,
    Opcode::LINK_PING,
    Opcode::LINK_DRAIN,
    Opcode::LINK_CANCEL,
    Opcode::LINK_DELIVER,
    Opcode::LINK_ROUTE,
    Opcode::LINK_UNROUTE,
    Opcode::PEER_HELLO,
    Opcode::PEER_ANNOUNCE,
    Opcode::PEER_INVOKE,
];

/// Defined opcodes whose payloads are not final: SPEC.md §3 lists them as "to be
/// specified" and no vector pins them yet. Payloads pending; vectors added with
/// the module. Empty: every defined opcode is specified.
const PAYLOADS_PENDING: [Opcode; 0] = [];

/// Defined opcodes whose OK answer opens a stream (SPEC.md §6.11).
const OPENS_STREAM: [Opcode; 4] = [
    Opcode::PUBSUB_SUBSCRIBE,
    Opcode::CONFIG_SUBSCRIBE,
    Opcode::INVOKE_REGISTER,
    Opcode::BINDING_SUBSCRIBE,
];

/// Stream-opening opcodes whose streams carry no pushes, only their END: an
/// invoke registration lives as a stream so that it ends with its connection
/// or its module instance (SPEC.md §7.8.1).
const STREAM_WITHOUT_PUSHES: [Opcode; 1] = [Opcode::INVOKE_REGISTER];

/// Defined opcodes that are never answered (SPEC.md §8), so they have a request
/// vector but no response vector.
const NEVER_ANSWERED: [Opcode; 4] = [
    Opcode::LINK_CANCEL,
    Opcode::LINK_ROUTE,
    Opcode::LINK_UNROUTE,
    Opcode::PEER_ANNOUNCE,
];

/// `DEFINED_OPCODES` is exactly the set of opcodes `mecha_abi::Opcode` names, so a
/// new opcode cannot be added to the crate without reaching SPEC.md and the vectors.
#[test]
fn defined_opcodes_are_every_named_opcode() {
    let named: Vec<Opcode> = (0..=u16::MAX)
        .map(Opcode)
        .filter(|op| op.name().is_some())
        .collect();
    let mut listed = DEFINED_OPCODES.to_vec();
    listed.sort();
    assert_eq!(listed, named, "DEFINED_OPCODES differs from Opcode::name");
    for op in PAYLOADS_PENDING
        .iter()
        .chain(&NEVER_ANSWERED)
        .chain(&OPENS_STREAM)
    {
        assert!(DEFINED_OPCODES.contains(op), "{op} is not defined");
    }
}

/// Every defined opcode appears in at least one request and one OK response vector
/// (except as `PAYLOADS_PENDING` and `NEVER_ANSWERED` say), and every non-OK status
/// in at least one error vector. Stream frames count as neither: a push is not a
/// request, an END is not an answer.
#[test]
fn vectors_cover_every_opcode_and_status() {
    let vs = vectors();
    for op in DEFINED_OPCODES {
        let is = |resp: bool| {
            vs.iter().any(|v| {
                let kind = if resp {
                    v.header.flags.is_response()
                } else {
                    v.header.flags == Flags(0)
                };
                v.header.opcode == op && kind && v.header.status == 0
            })
        };
        if PAYLOADS_PENDING.contains(&op) {
            // Payloads pending; vectors added with the module.
            assert!(
                !is(false) && !is(true),
                "{op} has vectors: remove it from PAYLOADS_PENDING"
            );
            continue;
        }
        assert!(is(false), "no request vector for {op}");
        if NEVER_ANSWERED.contains(&op) {
            assert!(
                !is(true),
                "{op} is never answered, yet has a response vector"
            );
        } else {
            assert!(is(true), "no OK response vector for {op}");
        }
    }
    for status in Status::ALL.iter().skip(1) {
        assert!(
            vs.iter().any(|v| v.header.status == status.code()
                && v.header.flags == Flags(Flags::RESPONSE)
                && v.ty == "ErrorBody"),
            "no error vector for {status}"
        );
    }
}

/// Stream frames (SPEC.md §6.11) are well formed, and every stream-opening opcode
/// has its opening answer and a push pinned, and END frames of the three statuses
/// a client must tell apart (OK, UNAVAILABLE, RESOURCE_EXHAUSTED) are pinned.
#[test]
fn stream_vectors_are_well_formed_and_cover_every_stream() {
    const OPENING: Flags = Flags(Flags::RESPONSE | Flags::STREAM);
    const PUSH: Flags = Flags(Flags::STREAM);
    const END: Flags = Flags(Flags::STREAM | Flags::END);
    let vs = vectors();
    for v in &vs {
        let (h, name) = (v.header, v.name);
        if !h.flags.is_stream() && !h.flags.is_end() {
            continue;
        }
        assert!(
            OPENS_STREAM.contains(&h.opcode),
            "{name}: stream flags on {}, which opens no stream",
            h.opcode
        );
        assert_eq!((h.ext, h.deadline_ms), (0, 0), "{name}: ext and deadline");
        match h.flags {
            OPENING | PUSH => assert_eq!(h.status, 0, "{name}: status"),
            END if h.status == 0 => assert_eq!(v.ty, "empty", "{name}: END OK is empty"),
            END => assert_eq!(v.ty, "ErrorBody", "{name}: END with an error"),
            other => panic!("{name}: flags {other:?} are not a stream frame's"),
        }
    }
    for op in OPENS_STREAM {
        let has = |flags: Flags| {
            vs.iter()
                .any(|v| v.header.opcode == op && v.header.flags == flags)
        };
        assert!(has(OPENING), "no opening answer vector for {op}");
        assert_eq!(
            has(PUSH),
            !STREAM_WITHOUT_PUSHES.contains(&op),
            "push vectors for {op}"
        );
        assert!(
            !vs.iter().any(|v| v.header.opcode == op
                && v.header.flags == Flags(Flags::RESPONSE)
                && v.header.status == 0),
            "{op}: an OK answer without STREAM"
        );
    }
    for status in [Status::Ok, Status::Unavailable, Status::ResourceExhausted] {
        assert!(
            vs.iter()
                .any(|v| v.header.flags == END && v.header.status == status.code()),
            "no END vector with {status}"
        );
    }
}

/// SPEC.md §3 lists every defined opcode with the code's number and name.
#[test]
fn spec_opcode_table_lists_every_defined_opcode() {
    let spec = std::fs::read_to_string(abi_dir().join("SPEC.md")).expect("read SPEC.md");
    for op in DEFINED_OPCODES {
        let name = op.name().unwrap_or_else(|| panic!("{op} has no name"));
        // SPEC.md spells hex digits in either case (`0x0101`, `0xF001`).
        let row = format!("| `0x{:04x}` | {} ", op.0, name.to_ascii_lowercase());
        let line = spec
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with(&row))
            .unwrap_or_else(|| panic!("SPEC.md §3 lacks the row for {op}"));
        assert_eq!(
            PAYLOADS_PENDING.contains(&op),
            line.contains("to be specified"),
            "SPEC.md §3 row for {op} must say \"to be specified\" exactly when its payloads are pending: {line}"
        );
    }
}

/// The annotated hex dumps in SPEC.md §10 are the same bytes as the vectors they name.
///
/// In SPEC.md a dump starts with a line `vector: <name>` inside a fenced block;
/// each following line holds hex bytes before a `|` and an annotation after it.
#[test]
fn spec_examples_match_the_vectors() {
    let spec = std::fs::read_to_string(abi_dir().join("SPEC.md")).expect("read SPEC.md");
    let frames: Vec<(&str, Vec<u8>)> = vectors()
        .iter()
        .map(|v| {
            (
                v.name,
                encode_frame(v.header, &v.payload).expect("vector frames encode"),
            )
        })
        .collect();

    let mut examples: Vec<(String, Vec<u8>)> = Vec::new();
    let mut current: Option<(String, Vec<u8>)> = None;
    for line in spec.lines() {
        if let Some(name) = line.strip_prefix("vector: ") {
            assert!(current.is_none(), "nested `vector:` line in SPEC.md");
            current = Some((name.trim().to_string(), Vec::new()));
            continue;
        }
        let Some((_, bytes)) = current.as_mut() else {
            continue;
        };
        if line.starts_with("```") {
            examples.extend(current.take());
            continue;
        }
        let hexpart = line.split('|').next().unwrap_or("");
        for tok in hexpart.split_whitespace() {
            assert!(
                tok.len() == 2,
                "SPEC.md: {tok:?} is not a hex byte in {line:?}"
            );
            bytes.push(u8::from_str_radix(tok, 16).expect("hex byte in SPEC.md"));
        }
    }
    assert!(current.is_none(), "unterminated example in SPEC.md");

    let required = [
        "hello_request",
        "hello_reply",
        "state_set_request_etag_ttl",
        "state_get_reply",
        "error_not_found",
        "state_transact_request",
        "lock_try_lock_request_wait",
        "seq_next_request",
        "error_secret_permission_denied",
        "pubsub_subscribe_reply",
        "pubsub_delivery_push",
        "config_update_push",
        "stream_end_ok",
        "stream_end_unavailable",
        "state_get_request_traced",
    ];
    for r in required {
        assert!(
            examples.iter().any(|(n, _)| n == r),
            "SPEC.md lacks the worked example {r}"
        );
    }
    for (name, bytes) in &examples {
        let (_, frame) = frames
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("SPEC.md example names unknown vector {name}"));
        assert_eq!(hex(bytes), hex(frame), "SPEC.md example {name} differs");
    }
}
