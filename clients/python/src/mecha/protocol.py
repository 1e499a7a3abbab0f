"""Everything the sync and asyncio clients share: the frame header (SPEC §2), the
opcode table (§3), socket selection, the retry policy, and one ``Op`` per operation.

An ``Op`` is a request already built plus the knowledge of how to read its answer, so
each public method is written once here and the two clients only differ in how they
move bytes.
"""

from __future__ import annotations

import math
import os
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, NamedTuple, TypeVar

from . import errors
from . import payloads as t
from .codec import DecodeError, decode, encode

VERSION = 1
CLIENT_NAME = "mecha-python/0.1.0"
MAGIC = b"MCHA"
HEADER = struct.Struct("<4sBBHIHHII")  # magic version flags opcode id status ext deadline len
F_RESPONSE, F_STREAM, F_END = 0x01, 0x02, 0x04
MAX_INCOMING = 64 << 20  # §7.7.2: a client SHOULD accept answers up to 64 MiB
DEFAULT_TIMEOUT = 5.0
GRACE = 1.0  # the daemon answers DEADLINE_EXCEEDED itself; we wait this much longer

# opcode -> (name, request type, OK reply type); None = empty payload (SPEC §3).
OPCODES: dict[int, tuple[str, Any, Any]] = {
    0x0001: ("HELLO", t.Hello, t.HelloReply),
    0x0002: ("PING", None, None),
    0x0003: ("STATUS", None, t.StatusReply),
    0x0004: ("MODULE_RESTART", t.ModuleRestartRequest, t.ModuleRestartReply),
    0x0005: ("RELOAD", None, t.ReloadReply),
    0x0006: ("STREAM_CANCEL", t.StreamCancel, None),
    0x0007: ("DAEMON_UPGRADE", t.DaemonUpgradeRequest, t.DaemonUpgradeReply),
    0x0101: ("STATE_GET", t.GetRequest, t.StateEntry),
    0x0102: ("STATE_SET", t.SetRequest, t.SetReply),
    0x0103: ("STATE_DELETE", t.DeleteRequest, t.DeleteReply),
    0x0104: ("STATE_BULK_GET", t.BulkGetRequest, t.BulkGetReply),
    0x0105: ("STATE_BULK_SET", t.BulkSetRequest, t.TransactReply),
    0x0106: ("STATE_TRANSACT", t.TransactRequest, t.TransactReply),
    0x0201: ("PUBSUB_PUBLISH", t.PublishRequest, t.PublishReply),
    0x0202: ("PUBSUB_SUBSCRIBE", t.SubscribeRequest, t.SubscribeReply),
    0x0203: ("PUBSUB_ACK", t.AckRequest, t.AckReply),
    0x0301: ("LOCK_TRY_LOCK", t.TryLockRequest, t.TryLockReply),
    0x0302: ("LOCK_UNLOCK", t.UnlockRequest, t.UnlockReply),
    0x0303: ("LOCK_EXTEND", t.ExtendLockRequest, t.ExtendLockReply),
    0x0401: ("SEQ_NEXT", t.NextIdRequest, t.NextIdReply),
    0x0501: ("CONFIG_GET", t.ConfigGetRequest, t.ConfigGetReply),
    0x0502: ("CONFIG_SUBSCRIBE", t.ConfigSubscribeRequest, t.ConfigGetReply),
    0x0503: ("CONFIG_SET", t.ConfigSetRequest, t.ConfigSetReply),
    0x0601: ("SECRET_GET", t.SecretGetRequest, t.SecretReply),
    0x0602: ("SECRET_BULK_GET", t.SecretBulkGetRequest, t.SecretBulkReply),
    0x0701: ("INVOKE_REGISTER", t.RegisterRequest, t.RegisterReply),
    0x0702: ("INVOKE", t.InvokeRequest, t.InvokeReply),
    0x0703: ("INVOKE_APPS", None, t.AppsReply),
    0x0704: ("INVOKE_CALL", t.InvokeCall, t.InvokeReply),  # daemon -> app (SPEC §7.8.3)
    0x0801: ("BINDING_INVOKE", t.InvokeBindingRequest, t.InvokeBindingReply),
    0x0802: ("BINDING_SUBSCRIBE", t.BindingSubscribeRequest, t.BindingSubscribeReply),
    0x0803: ("BINDING_ACK", t.BindingAckRequest, t.AckReply),
    0xF001: ("LINK_HELLO", t.LinkHello, t.LinkReady),
    0xF002: ("LINK_PING", None, None),
    0xF003: ("LINK_DRAIN", None, None),
    0xF004: ("LINK_CANCEL", None, None),
    0xF005: ("LINK_DELIVER", t.LinkDeliver, t.InvokeReply),  # the delivered call's answer
    0xF006: ("LINK_ROUTE", t.RouteGrant, None),
    0xF007: ("LINK_UNROUTE", t.RouteRevoke, None),
    0xF101: ("PEER_HELLO", t.PeerHello, t.PeerHello),
    0xF102: ("PEER_ANNOUNCE", t.PeerAnnounce, None),
    0xF103: ("PEER_INVOKE", t.InvokeCall, t.InvokeReply),
}
# Defined in SPEC §3 with payloads "to be specified": none any more.
PENDING_OPCODES: frozenset[int] = frozenset()
# opcode -> push payload type of the stream its OK answer opens (SPEC §3, §6.11).
PUSH_TYPES: dict[int, Any] = {0x0202: t.Delivery, 0x0502: t.ConfigUpdate, 0x0802: t.BindingEvent}


class Header(NamedTuple):
    """The 24-byte frame header without its constant magic (a tuple: cheap to build)."""
    version: int
    flags: int
    opcode: int
    request_id: int
    status: int = 0
    ext: int = 0
    deadline_ms: int = 0
    payload_len: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(MAGIC, self.version, self.flags, self.opcode, self.request_id,
                           self.status, self.ext, self.deadline_ms, self.payload_len)

    @classmethod
    def unpack(cls, raw: bytes) -> Header:
        """Parses a header; bad magic or a hostile length is a ``ProtocolError``,
        since the byte stream cannot be trusted past it."""
        fields = HEADER.unpack(raw)
        if fields[0] != MAGIC:
            raise errors.ProtocolError(f"bad magic {fields[0]!r} from mechad")
        h = cls._make(fields[1:])
        if h.payload_len > MAX_INCOMING:
            raise errors.ProtocolError(f"frame of {h.payload_len} bytes from mechad is too large")
        return h


def request_frame(opcode: int, request_id: int, payload: bytes, deadline_ms: int,
                  version: int = VERSION) -> bytes:
    return HEADER.pack(MAGIC, version, 0, opcode, request_id, 0, 0, deadline_ms, len(payload)) + payload


def deadline_ms(seconds: float) -> int:
    """Seconds left → the header's deadline_ms: at least 1 (0 would mean "daemon
    default"), at most u32::MAX."""
    return min(max(1, math.ceil(seconds * 1000)), 0xFFFFFFFF)


def default_socket_path() -> str:
    """Same rule as mechactl and mechad: ``$MECHA_SOCKET``; else as root
    ``/run/mecha/mecha.sock``; else ``$XDG_RUNTIME_DIR/mecha/mecha.sock``; else
    ``$TMPDIR`` (or /tmp) ``/mecha-<uid>/mecha.sock``."""
    if env := os.environ.get("MECHA_SOCKET"):
        return env
    uid = os.geteuid()
    if uid == 0:
        return "/run/mecha/mecha.sock"
    if xdg := os.environ.get("XDG_RUNTIME_DIR"):
        return os.path.join(xdg, "mecha", "mecha.sock")
    return os.path.join(os.environ.get("TMPDIR") or "/tmp", f"mecha-{uid}", "mecha.sock")


def backoff(attempt: int, remaining: float) -> float | None:
    """Sleep before retry ``attempt`` (0-based): 10 ms doubling to 500 ms, jittered to
    50–100% so clients that failed together do not retry together. None when the sleep
    would not leave time for another try within the deadline."""
    delay = min(0.5, 0.01 * (2 ** min(attempt, 6))) * random.uniform(0.5, 1.0)
    return delay if delay < remaining else None


T = TypeVar("T")
SocketPath = str | os.PathLike[str] | None


@dataclass(slots=True)
class Op(Generic[T]):
    """One operation: request bytes, how to read the answer, and how to retry it.

    ``idempotent`` operations are retried on UNAVAILABLE within the call's deadline;
    ``missing`` means NOT_FOUND is an answer (``post(None)``), not an error."""
    opcode: int
    payload: bytes
    reply: Any
    post: Callable[[Any], T]
    idempotent: bool
    missing: bool = False
    timeout: float | None = None  # None: the client's default timeout
    extra: float = 0.0  # added to the timeout, e.g. a lock's wait

    def result(self, h: Header, payload: bytes) -> T:
        """Turns an answer into the method's return value or raises its error."""
        if h.status != 0:
            if h.status == 1 and self.missing:
                return self.post(None)
            raise status_error(h, payload)
        if self.reply is None:
            if payload:
                raise errors.ProtocolError(f"{len(payload)} bytes where an empty payload is required")
            return self.post(None)
        try:
            return self.post(decode(self.reply, payload))
        except DecodeError as e:
            raise errors.ProtocolError(f"undecodable answer to opcode {self.opcode:#06x}: {e}") from e


def status_error(h: Header, payload: bytes) -> errors.StatusError:
    """The exception for a non-OK answer. Its payload is always an ErrorBody (§5)."""
    try:
        message = decode(t.ErrorBody, payload).message
    except DecodeError as e:
        message = f"(undecodable t.ErrorBody: {e})"
    return errors.error_for(h.status, message, h.opcode)


def _op(opcode: int, req: Any, post: Callable[[Any], T], idempotent: bool, **kw: Any) -> Op[T]:
    return Op(opcode, b"" if req is None else encode(req), OPCODES[opcode][2], post,
              idempotent, **kw)


def _same(x: Any) -> Any:
    return x


def _none(_: Any) -> None:
    return None


def _b(value: bytes | bytearray | memoryview | str) -> bytes:
    """Values are bytes on the wire; a str is stored as its UTF-8 for convenience."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _pairs(metadata: dict[str, str] | Sequence[tuple[str, str]] | None) -> list[tuple[str, str]]:
    """Metadata as the wire's list of pairs, from a dict or any sequence of pairs."""
    if metadata is None or isinstance(metadata, dict):
        return list((metadata or {}).items())
    return [(k, v) for k, v in metadata]


def hello() -> Op[t.HelloReply]:
    return _op(0x0001, t.Hello(VERSION, VERSION, CLIENT_NAME), _same, False)


def ping() -> Op[None]:
    return _op(0x0002, None, _none, True)


def status() -> Op[t.StatusReply]:
    return _op(0x0003, None, _same, True)


def module_restart(module: str, binary: str | None) -> Op[int]:
    return _op(0x0004, t.ModuleRestartRequest(module, binary), lambda r: r.pid, False, timeout=30.0)


def reload() -> Op[t.ReloadReply]:
    return _op(0x0005, None, _same, False, timeout=60.0)


def stream_cancel(stream_id: int) -> Op[None]:
    return _op(0x0006, t.StreamCancel(stream_id), _none, True)


def state_get(key: str, store: str) -> Op[t.StateEntry | None]:
    return _op(0x0101, t.GetRequest(store, key), _same, True, missing=True)


def state_set(key: str, value: bytes | str, etag: str | None, ttl_ms: int | None,
        store: str) -> Op[str]:
    item = t.SetItem(key, _b(value), etag, ttl_ms)
    return _op(0x0102, t.SetRequest(store, item), lambda r: r.etag, etag is not None)


def state_delete(key: str, etag: str | None, store: str) -> Op[bool]:
    return _op(0x0103, t.DeleteRequest(store, t.DeleteItem(key, etag)), lambda r: r.existed,
               etag is not None)


def state_bulk_get(keys: Sequence[str], store: str) -> Op[list[t.BulkGetItem]]:
    return _op(0x0104, t.BulkGetRequest(store, list(keys)), lambda r: r.items, True)


def state_bulk_set(items: Sequence[t.SetItem], store: str) -> Op[list[str]]:
    items = list(items)
    return _op(0x0105, t.BulkSetRequest(store, items), lambda r: list(r.etags),
               all(i.etag is not None for i in items))


def state_transact(ops: Sequence[t.SetItem | t.DeleteItem], store: str) -> Op[list[str | None]]:
    ops = list(ops)
    return _op(0x0106, t.TransactRequest(store, ops), lambda r: list(r.etags),
               all(o.etag is not None for o in ops))


def lock_try_lock(resource: str, owner: str, ttl_ms: int, wait_ms: int, store: str) -> Op[t.TryLockReply]:
    # §7.4.1: the wait counts against the deadline, so the deadline covers both.
    return _op(0x0301, t.TryLockRequest(store, resource, owner, ttl_ms, wait_ms), _same, False,
               extra=wait_ms / 1000)


def lock_unlock(resource: str, owner: str, store: str) -> Op[t.UnlockStatus]:
    return _op(0x0302, t.UnlockRequest(store, resource, owner), lambda r: r.status, False)


def lock_extend(resource: str, owner: str, ttl_ms: int, store: str) -> Op[t.ExtendLockReply]:
    return _op(0x0303, t.ExtendLockRequest(store, resource, owner, ttl_ms), _same, False)


def seq_next(key: str, count: int, store: str) -> Op[range]:
    # §7.5 "Retrying": a resent SEQ_NEXT at worst skips ids, which gaps allow.
    return _op(0x0401, t.NextIdRequest(store, key, count),
               lambda r: range(r.first, r.first + r.count), True)


def secret_get(name: str, store: str) -> Op[dict[str, str] | None]:
    return _op(0x0601, t.SecretGetRequest(store, name),
               lambda r: None if r is None else dict(r.data), True, missing=True)


def secret_bulk_get(store: str) -> Op[dict[str, dict[str, str]]]:
    return _op(0x0602, t.SecretBulkGetRequest(store),
               lambda r: {name: dict(pairs) for name, pairs in r.secrets}, True)


# -- pubsub (§7.3) -----------------------------------------------------------------------


def pubsub_publish(topic: str, data: bytes | str, content_type: str,
                   metadata: dict[str, str] | Sequence[tuple[str, str]] | None, raw: bool,
                   store: str) -> Op[t.PublishReply]:
    # §7.3.1: not idempotent (a resend may store the message twice); retry=True opts in.
    return _op(0x0201, t.PublishRequest(store, topic, _b(data), content_type, _pairs(metadata), raw),
               _same, False)


def pubsub_subscribe(topic: str, group: str, max_in_flight: int, ack_deadline_ms: int,
                     store: str) -> Op[t.SubscribeReply]:
    # Retrying is harmless: an error answer opens no stream (§6.11).
    return _op(0x0202, t.SubscribeRequest(store, topic, group, max_in_flight, ack_deadline_ms),
               _same, True)


def pubsub_ack(deliveries: Sequence[t.Delivery], nack: bool) -> Op[int]:
    """One PUBSUB_ACK for deliveries of one (store, topic, group); returns how many
    items took effect. Acks are idempotent, and a repeated nack names a delivery that
    is no longer outstanding, so it does not take effect twice (§7.3.3)."""
    if not deliveries:
        raise ValueError("nothing to acknowledge")
    first = deliveries[0]
    if any((d.store, d.topic, d.group) != (first.store, first.topic, first.group) for d in deliveries):
        raise ValueError("one ack names deliveries of one store, topic and group")
    items = [t.AckItem(d.offset, d.attempt) for d in deliveries]
    return _op(0x0203, t.AckRequest(first.store, first.topic, first.group, items, nack),
               lambda r: r.applied, True)


# -- bindings (§7.9) ----------------------------------------------------------------------


def binding_invoke(name: str, operation: str, data: bytes | str,
                   metadata: dict[str, str] | Sequence[tuple[str, str]] | None,
                   ) -> Op[t.InvokeBindingReply]:
    # §7.9.1: not idempotent (an operation answered UNAVAILABLE may have taken effect
    # outside, and the daemon never resends it); retry=True opts in.
    return _op(0x0801, t.InvokeBindingRequest(name, operation, _b(data), _pairs(metadata)),
               _same, False)


def binding_subscribe(name: str, max_in_flight: int,
                      ack_deadline_ms: int) -> Op[t.BindingSubscribeReply]:
    # Retrying is harmless: an error answer opens no stream (§6.11).
    return _op(0x0802, t.BindingSubscribeRequest(name, max_in_flight, ack_deadline_ms), _same, True)


def binding_ack(events: Sequence[t.BindingEvent], nack: bool) -> Op[int]:
    """One BINDING_ACK for events of one binding; returns how many items took effect.
    Idempotent for the same reasons as PUBSUB_ACK (§7.9.3)."""
    if not events:
        raise ValueError("nothing to acknowledge")
    name = events[0].name
    if any(e.name != name for e in events):
        raise ValueError("one ack names events of one binding")
    items = [t.AckItem(e.offset, e.attempt) for e in events]
    return _op(0x0803, t.BindingAckRequest(name, items, nack), lambda r: r.applied, True)


# -- configuration (§7.6) ------------------------------------------------------------------


def config_get(keys: Sequence[str], store: str) -> Op[list[t.ConfigItem]]:
    return _op(0x0501, t.ConfigGetRequest(store, list(keys)), lambda r: list(r.items), True)


def config_subscribe(keys: Sequence[str], store: str) -> Op[list[t.ConfigItem]]:
    return _op(0x0502, t.ConfigSubscribeRequest(store, list(keys)), lambda r: list(r.items), True)


def config_set(items: dict[str, str] | Sequence[t.ConfigSetItem], delete: Sequence[str],
               store: str) -> Op[list[str]]:
    # §7.6.3: not idempotent (a resend is a new version watchers see again).
    sets = [t.ConfigSetItem(k, v) for k, v in items.items()] if isinstance(items, dict) else list(items)
    return _op(0x0503, t.ConfigSetRequest(store, sets, list(delete)), lambda r: list(r.versions), False)


# -- invoke (§7.8) ------------------------------------------------------------------------

INVOKE_CALL = 0x0704


def invoke(app_id: str, method: str, data: bytes | str, content_type: str,
           metadata: dict[str, str] | Sequence[tuple[str, str]] | None, caller_app_id: str,
           trace_parent: str) -> Op[t.InvokeReply]:
    # §7.8.2: not idempotent (the callee may have acted); the daemon's resiliency
    # settings retry, not the client.
    req = t.InvokeRequest(app_id, method, _b(data), content_type, _pairs(metadata),
                          caller_app_id, trace_parent)
    return _op(0x0702, req, _same, False)


def invoke_apps() -> Op[list[t.AppEntry]]:
    return _op(0x0703, None, lambda r: list(r.apps), True)


def invoke_register(app_id: str, methods: Sequence[str]) -> Op[t.RegisterReply]:
    # Retrying is harmless: an error answer opens no stream (§6.11).
    return _op(0x0701, t.RegisterRequest(app_id, list(methods)), _same, True)


@dataclass(frozen=True, slots=True)
class Call:
    """A call delivered to a registered app (INVOKE_CALL, §7.8.3): the ``InvokeCall``
    fields plus what answering it needs. ``deadline_ms`` is what was left of the
    caller's deadline when it was sent."""
    request_id: int
    deadline_ms: int
    app_id: str
    method: str
    data: bytes
    content_type: str
    metadata: list[tuple[str, str]]
    caller_app_id: str
    caller_tenant: str
    caller_node: str
    trace_parent: str


def is_call(h: Header) -> bool:
    """A request from the daemon (flags 0x00), which only INVOKE_CALL is."""
    return h.flags == 0 and h.opcode == INVOKE_CALL


def decode_call(h: Header, payload: bytes) -> Call:
    """An INVOKE_CALL frame → ``Call``; ``DecodeError`` if its payload is bad."""
    c = decode(t.InvokeCall, payload)
    return Call(h.request_id, h.deadline_ms, c.app_id, c.method, c.data, c.content_type,
                list(c.metadata), c.caller_app_id, c.caller_tenant, c.caller_node,
                c.trace_parent)


def response_frame(request_id: int, status: int, payload: bytes, version: int = VERSION) -> bytes:
    """The answer to a call the daemon delivered (flags 0x01, opcode INVOKE_CALL)."""
    return HEADER.pack(MAGIC, version, F_RESPONSE, INVOKE_CALL, request_id, status, 0, 0,
                       len(payload)) + payload


def call_answer(request_id: int, result: t.InvokeReply | errors.StatusError,
                version: int = VERSION) -> bytes:
    """The response frame carrying a reply, or a status error's status and message."""
    if isinstance(result, errors.StatusError):
        status = result.status if 0 < result.status <= 0xFFFF else 10
        return response_frame(request_id, status, encode(t.ErrorBody(result.message)), version)
    return response_frame(request_id, 0, encode(result), version)


def as_reply(value: bytes | str | t.InvokeReply | None) -> t.InvokeReply:
    """A handler's return value → ``InvokeReply`` (bytes or str: the body)."""
    if isinstance(value, t.InvokeReply):
        return value
    return t.InvokeReply(_b(value or b""), "", [])


def handler_error(e: BaseException) -> errors.StatusError:
    """What a handler's exception tells the caller: a ``StatusError`` as it is, anything
    else INTERNAL (a failure the caller's resiliency policy may retry, §7.8)."""
    if isinstance(e, errors.StatusError):
        return e
    return errors.Internal(f"{type(e).__name__}: {e}")


# -- streams (§6.11) -----------------------------------------------------------------------

RESUBSCRIBE_STATUSES = frozenset({7, 8})  # END RESOURCE_EXHAUSTED / UNAVAILABLE: open again
RESUBSCRIBE_WINDOW = 30.0  # seconds a stream is re-opened for before the error is raised


@dataclass(slots=True)
class End:
    """The END frame of a stream: ``error`` None for OK (finished, e.g. cancelled)."""
    error: errors.StatusError | None

    @property
    def resumable(self) -> bool:
        """A reset or a fall-behind (§6.11): the client SHOULD open the stream again."""
        return self.error is not None and self.error.status in RESUBSCRIBE_STATUSES


def stream_frame(h: Header, payload: bytes) -> Any:
    """A frame of an open stream → its decoded push, or an ``End``."""
    if h.flags & F_END:
        if h.status == 0:
            if payload:
                raise errors.ProtocolError(f"{len(payload)} bytes in an END OK frame")
            return End(None)
        return End(status_error(h, payload))
    try:
        return decode(PUSH_TYPES[h.opcode], payload)
    except (KeyError, DecodeError) as e:
        raise errors.ProtocolError(f"undecodable push on stream {h.request_id}: {e!r}") from e


class ConfigView:
    """What a configuration watch knows (§7.6.2): the items by key, and the ``seq`` of
    the stream's last push. Pushes are renumbered for the caller, so resubscriptions do
    not show: the caller sees seq 1, 2, 3, ... across them."""

    def __init__(self, snapshot: Sequence[t.ConfigItem]) -> None:
        self.items: dict[str, t.ConfigItem] = {i.key: i for i in snapshot}
        self.stream_seq = 0
        self.seq = 0

    def push(self, upd: t.ConfigUpdate) -> t.ConfigUpdate | None:
        """Applies a push; None means a gap in ``seq`` (pushes were lost): resubscribe."""
        if upd.seq != self.stream_seq + 1:
            return None
        self.stream_seq = upd.seq
        for item in upd.items:
            self.items[item.key] = item
        for key in upd.deleted:
            self.items.pop(key, None)
        self.seq += 1
        return t.ConfigUpdate(self.seq, list(upd.items), list(upd.deleted))

    def resync(self, snapshot: Sequence[t.ConfigItem]) -> t.ConfigUpdate | None:
        """Takes a new stream's snapshot; returns the differences as one update (None
        when nothing changed). Versions are not compared: they may change across module
        restarts without the item changing (§7.6)."""
        new = {i.key: i for i in snapshot}
        changed = [i for k, i in new.items()
                   if (old := self.items.get(k)) is None
                   or (old.value, old.metadata) != (i.value, i.metadata)]
        deleted = [k for k in self.items if k not in new]
        self.items, self.stream_seq = new, 0
        if not changed and not deleted:
            return None
        self.seq += 1
        return t.ConfigUpdate(self.seq, changed, deleted)
