"""The payload types of SPEC §4.1, one frozen dataclass per type, fields in wire order.

Class names are the SPEC's type names, so ``PAYLOAD_TYPES`` (name → type) can resolve
the ``type:`` line of a golden vector, and field order *is* the wire order: do not
reorder fields. ``Delivery``, ``ConfigUpdate`` and ``BindingEvent`` are the push payloads
of the PUBSUB_SUBSCRIBE, CONFIG_SUBSCRIBE and BINDING_SUBSCRIBE streams (SPEC §6.11).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Annotated, Any

from .codec import U8, U16, U32, U64, Variants

# -- control family ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorBody:
    message: str


@dataclass(frozen=True, slots=True)
class Hello:
    min_version: U8
    max_version: U8
    client: str


@dataclass(frozen=True, slots=True)
class HelloReply:
    version: U8
    daemon_version: str
    tenant: str
    max_frame: U32


@dataclass(frozen=True, slots=True)
class ModuleStatus:
    name: str
    pid: U32
    state: str
    restarts: U32
    components: list[str]


@dataclass(frozen=True, slots=True)
class StatusReply:
    daemon_version: str
    pid: U32
    uptime_ms: U64
    modules: list[ModuleStatus]


@dataclass(frozen=True, slots=True)
class ModuleRestartRequest:
    module: str
    binary: str | None


@dataclass(frozen=True, slots=True)
class ModuleRestartReply:
    pid: U32


@dataclass(frozen=True, slots=True)
class DaemonUpgradeRequest:
    binary: str | None


@dataclass(frozen=True, slots=True)
class DaemonUpgradeReply:
    old_pid: U32
    new_pid: U32


@dataclass(frozen=True, slots=True)
class ReloadReply:
    started: list[str]
    restarted: list[str]
    stopped: list[str]
    unchanged: list[str]


@dataclass(frozen=True, slots=True)
class StreamCancel:
    stream_id: U32

# -- state family --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StateEntry:
    value: bytes
    etag: str


@dataclass(frozen=True, slots=True)
class SetItem:
    """One write. ``etag`` makes it conditional (first-write-wins); ``ttl_ms`` > 0
    makes the key expire that long after the write."""
    key: str
    value: bytes
    etag: str | None = None
    ttl_ms: U64 | None = None


@dataclass(frozen=True, slots=True)
class DeleteItem:
    key: str
    etag: str | None = None


@dataclass(frozen=True, slots=True)
class GetRequest:
    store: str
    key: str


@dataclass(frozen=True, slots=True)
class SetRequest:
    store: str
    item: SetItem


@dataclass(frozen=True, slots=True)
class SetReply:
    etag: str


@dataclass(frozen=True, slots=True)
class DeleteRequest:
    store: str
    item: DeleteItem


@dataclass(frozen=True, slots=True)
class DeleteReply:
    existed: bool


@dataclass(frozen=True, slots=True)
class BulkGetRequest:
    store: str
    keys: list[str]


@dataclass(frozen=True, slots=True)
class BulkGetItem:
    key: str
    entry: StateEntry | None


@dataclass(frozen=True, slots=True)
class BulkGetReply:
    items: list[BulkGetItem]


@dataclass(frozen=True, slots=True)
class BulkSetRequest:
    store: str
    items: list[SetItem]


# SPEC's enum TxOp: variant 0 Set(SetItem), variant 1 Delete(DeleteItem). In Python an
# operation is just a SetItem or a DeleteItem.
TxOp = Annotated[SetItem | DeleteItem, Variants]


@dataclass(frozen=True, slots=True)
class TransactRequest:
    store: str
    ops: list[TxOp]


@dataclass(frozen=True, slots=True)
class TransactReply:
    etags: list[str | None]

# -- pubsub family -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublishRequest:
    store: str
    topic: str
    data: bytes
    content_type: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)
    raw: bool = False


@dataclass(frozen=True, slots=True)
class PublishReply:
    id: str
    offset: U64


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    store: str
    topic: str
    group: str = ""
    max_in_flight: U32 = 0
    ack_deadline_ms: U32 = 0


@dataclass(frozen=True, slots=True)
class SubscribeReply:
    subscription_id: U64
    store: str
    group: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """The push of a PUBSUB_SUBSCRIBE stream; ``offset`` and ``attempt`` identify it in
    PUBSUB_ACK."""
    store: str
    topic: str
    group: str
    offset: U64
    attempt: U32
    id: str
    source: str
    event_type: str
    spec_version: str
    data_content_type: str
    time: str
    trace_parent: str
    data: bytes
    metadata: list[tuple[str, str]]
    raw: bool


@dataclass(frozen=True, slots=True)
class AckItem:
    offset: U64
    attempt: U32


@dataclass(frozen=True, slots=True)
class AckRequest:
    store: str
    topic: str
    group: str
    items: list[AckItem]
    nack: bool = False


@dataclass(frozen=True, slots=True)
class AckReply:
    applied: U32

# -- lock family ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TryLockRequest:
    store: str
    resource: str
    owner: str
    ttl_ms: U64
    wait_ms: U64


@dataclass(frozen=True, slots=True)
class TryLockReply:
    acquired: bool
    fencing_token: U64


@dataclass(frozen=True, slots=True)
class UnlockRequest:
    store: str
    resource: str
    owner: str


class UnlockStatus(enum.IntEnum):
    """Outcome of an unlock or extend; all three are OK answers, not errors."""
    SUCCESS = 0
    LOCK_DOES_NOT_EXIST = 1
    LOCK_BELONGS_TO_OTHERS = 2


@dataclass(frozen=True, slots=True)
class UnlockReply:
    status: UnlockStatus


@dataclass(frozen=True, slots=True)
class ExtendLockRequest:
    store: str
    resource: str
    owner: str
    ttl_ms: U64


@dataclass(frozen=True, slots=True)
class ExtendLockReply:
    status: UnlockStatus
    fencing_token: U64

# -- sequencer family ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NextIdRequest:
    store: str
    key: str
    count: U32


@dataclass(frozen=True, slots=True)
class NextIdReply:
    first: U64
    count: U32

# -- configuration family ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConfigItem:
    key: str
    value: str
    version: str
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConfigGetRequest:
    store: str
    keys: list[str]


@dataclass(frozen=True, slots=True)
class ConfigGetReply:
    """CONFIG_GET's answer, and the snapshot that opens a CONFIG_SUBSCRIBE stream."""
    items: list[ConfigItem]


@dataclass(frozen=True, slots=True)
class ConfigSubscribeRequest:
    store: str
    keys: list[str]


@dataclass(frozen=True, slots=True)
class ConfigUpdate:
    """The push of a CONFIG_SUBSCRIBE stream; a gap in ``seq`` means pushes were lost."""
    seq: U64
    items: list[ConfigItem]
    deleted: list[str]


@dataclass(frozen=True, slots=True)
class ConfigSetItem:
    key: str
    value: str
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConfigSetRequest:
    store: str
    items: list[ConfigSetItem]
    delete: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConfigSetReply:
    versions: list[str]

# -- secrets family ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretGetRequest:
    store: str
    name: str


@dataclass(frozen=True, slots=True)
class SecretReply:
    data: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class SecretBulkGetRequest:
    store: str


@dataclass(frozen=True, slots=True)
class SecretBulkReply:
    secrets: list[tuple[str, list[tuple[str, str]]]]

# -- invoke family (SPEC §7.8) ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RegisterRequest:
    app_id: str
    methods: list[str]


@dataclass(frozen=True, slots=True)
class RegisterReply:
    app_id: str
    node: str


@dataclass(frozen=True, slots=True)
class InvokeRequest:
    app_id: str
    method: str
    data: bytes
    content_type: str = ""
    metadata: list[tuple[str, str]] = field(default_factory=list)
    caller_app_id: str = ""
    trace_parent: str = ""


@dataclass(frozen=True, slots=True)
class InvokeReply:
    data: bytes
    content_type: str
    metadata: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class InvokeCall:
    app_id: str
    method: str
    data: bytes
    content_type: str
    metadata: list[tuple[str, str]]
    caller_app_id: str
    caller_tenant: str
    caller_node: str
    trace_parent: str


@dataclass(frozen=True, slots=True)
class AppEntry:
    app_id: str
    node: str
    local: bool
    instances: U32


@dataclass(frozen=True, slots=True)
class AppsReply:
    apps: list[AppEntry]


@dataclass(frozen=True, slots=True)
class PeerHello:
    version: U8
    node: str


@dataclass(frozen=True, slots=True)
class PeerAnnounce:
    node: str
    apps: list[str]

# -- bindings family (SPEC §7.9) ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class InvokeBindingRequest:
    name: str
    operation: str
    data: bytes = b""
    metadata: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class InvokeBindingReply:
    data: bytes
    metadata: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class BindingSubscribeRequest:
    name: str
    max_in_flight: U32 = 0
    ack_deadline_ms: U32 = 0


@dataclass(frozen=True, slots=True)
class BindingSubscribeReply:
    subscription_id: U64
    name: str


@dataclass(frozen=True, slots=True)
class BindingEvent:
    """The push of a BINDING_SUBSCRIBE stream; ``name``, ``offset`` and ``attempt``
    identify it in BINDING_ACK."""
    name: str
    offset: U64
    attempt: U32
    data: bytes
    metadata: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class BindingAckRequest:
    name: str
    items: list[AckItem]
    nack: bool = False

# -- module link (§8): not used by applications, kept so every vector can be replayed


@dataclass(frozen=True, slots=True)
class ComponentSpec:
    name: str
    kind: str
    metadata: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class LinkHello:
    version: U8
    module: str
    data_dir: str
    components: list[ComponentSpec]


@dataclass(frozen=True, slots=True)
class LinkReady:
    module: str
    version: str


@dataclass(frozen=True, slots=True)
class LinkDeliver:
    stream: U32
    opcode: U16
    payload: bytes


@dataclass(frozen=True, slots=True)
class RouteGrant:
    tenant: str
    app_id: str
    method: str
    caller_app_id: str
    stream: U32
    node: str
    attempt_ms: U32
    max_calls: U32


@dataclass(frozen=True, slots=True)
class RouteRevoke:
    app_id: str


PAYLOAD_TYPES: dict[str, Any] = {
    name: obj for name, obj in list(globals().items())
    if isinstance(obj, type) and obj.__module__ == __name__
}
PAYLOAD_TYPES["TxOp"] = TxOp
"""Every SPEC §4.1 type this client implements, by its SPEC name."""
