"""The blocking client.

One connection, one request at a time: a lock serialises calls, so a ``Client`` may be
shared between threads, but calls from different threads queue behind each other. (The
asyncio client, ``mecha.aio.Client``, pipelines instead.) Keeping one request in flight
means a response always answers the request just sent, so no reader thread is needed.

The connection is opened (and HELLO negotiated) by the constructor, so a missing daemon
is reported at once; after a connection is lost or a call times out locally, the next
call reconnects.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Generic, TypeVar

from . import errors
from . import payloads as t
from . import protocol as p

T = TypeVar("T")
R = TypeVar("R")  # a subscription's opening answer
E = TypeVar("E")  # a subscription's push


class Client:
    """A connection to mechad. Every method takes ``timeout`` (seconds, default the
    client's ``timeout``, 5 s) which is sent as the request's deadline; idempotent
    operations (reads, ETag-conditional writes, SEQ_NEXT) are retried on UNAVAILABLE
    within it, others only with ``retry=True``. Values are bytes; a ``str`` value is
    stored as UTF-8. ``store=""`` selects the default store of the family."""

    def __init__(self, socket_path: p.SocketPath = None, *, timeout: float = p.DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(socket_path) if socket_path is not None else p.default_socket_path()
        self.timeout = timeout
        self.hello: t.HelloReply | None = None
        """The daemon's HELLO reply (``tenant``, ``daemon_version``, ``max_frame``)."""
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._next_id = 0
        self._version = p.VERSION
        with self._lock:
            self._ensure(timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._drop()

    # -- control -----------------------------------------------------------------------

    def ping(self, *, timeout: float | None = None) -> None:
        """Liveness check answered by the daemon itself, without any module."""
        return self._call(p.ping(), timeout, None)

    def status(self, *, timeout: float | None = None) -> t.StatusReply:
        return self._call(p.status(), timeout, None)

    def module_restart(self, module: str, *, binary: str | None = None,
                       timeout: float | None = None) -> int:
        """Admin: hot-restart ``module`` (from the absolute path ``binary``, an upgrade);
        returns the new pid. Default timeout 30 s: the daemon answers when done."""
        return self._call(p.module_restart(module, binary), timeout, False)

    def reload(self, *, timeout: float | None = None) -> t.ReloadReply:
        """Admin: re-read the daemon's configuration. Default timeout 60 s."""
        return self._call(p.reload(), timeout, False)

    # -- state -------------------------------------------------------------------------

    def get(self, key: str, *, store: str = "", timeout: float | None = None) -> t.StateEntry | None:
        """The live value and ETag of ``key``, or None if it is missing or expired."""
        return self._call(p.state_get(key, store), timeout, None)

    def set(self, key: str, value: bytes | str, *, etag: str | None = None,
            ttl_ms: int | None = None, store: str = "", timeout: float | None = None,
            retry: bool | None = None) -> str:
        """Write ``key``; returns its new ETag. With ``etag``, only if the stored ETag
        equals it (else ``EtagMismatch``); with ``ttl_ms``, the key expires then."""
        return self._call(p.state_set(key, value, etag, ttl_ms, store), timeout, retry)

    def delete(self, key: str, *, etag: str | None = None, store: str = "",
               timeout: float | None = None, retry: bool | None = None) -> bool:
        """Remove ``key``; returns whether a live key was removed."""
        return self._call(p.state_delete(key, etag, store), timeout, retry)

    def bulk_get(self, keys: Sequence[str], *, store: str = "",
                 timeout: float | None = None) -> list[t.BulkGetItem]:
        """One item per distinct key (at most 1024), in request order; ``entry`` is None for a missing key."""
        return self._call(p.state_bulk_get(keys, store), timeout, None)

    def bulk_set(self, items: Sequence[t.SetItem], *, store: str = "",
                 timeout: float | None = None, retry: bool | None = None) -> list[str]:
        """Atomically write every item (or none); returns the new ETags in order."""
        return self._call(p.state_bulk_set(items, store), timeout, retry)

    def transact(self, ops: Sequence[t.SetItem | t.DeleteItem], *, store: str = "",
                 timeout: float | None = None,
                 retry: bool | None = None) -> list[str | None]:
        """Atomically apply sets and deletes in order; returns the new ETag per set and
        None per delete. An ETag mismatch anywhere changes nothing."""
        return self._call(p.state_transact(ops, store), timeout, retry)

    # -- lock --------------------------------------------------------------------------

    def try_lock(self, resource: str, owner: str, ttl_ms: int, *, wait_ms: int = 0,
                 store: str = "", timeout: float | None = None,
                 retry: bool | None = None) -> t.TryLockReply:
        """Take a lease of ``ttl_ms``, waiting up to ``wait_ms`` for a held lock (the
        deadline is ``timeout`` plus the wait). Not getting it is ``acquired=False``."""
        return self._call(p.lock_try_lock(resource, owner, ttl_ms, wait_ms, store), timeout, retry)

    def unlock(self, resource: str, owner: str, *, store: str = "",
               timeout: float | None = None, retry: bool | None = None) -> t.UnlockStatus:
        return self._call(p.lock_unlock(resource, owner, store), timeout, retry)

    def extend_lock(self, resource: str, owner: str, ttl_ms: int, *, store: str = "",
                    timeout: float | None = None,
                    retry: bool | None = None) -> t.ExtendLockReply:
        """Set the lease to end ``ttl_ms`` from now; the fencing token is unchanged."""
        return self._call(p.lock_extend(resource, owner, ttl_ms, store), timeout, retry)

    # -- sequencer ---------------------------------------------------------------------

    def next_id(self, key: str, *, store: str = "", timeout: float | None = None) -> int:
        """The next id of sequence ``key``: greater than every earlier one, not dense."""
        return self._call(p.seq_next(key, 1, store), timeout, None)[0]

    def next_ids(self, key: str, count: int, *, store: str = "",
                 timeout: float | None = None) -> range:
        """``count`` consecutive ids (1 to 1000000) of sequence ``key``."""
        return self._call(p.seq_next(key, count, store), timeout, None)

    # -- secrets -----------------------------------------------------------------------

    def get_secret(self, name: str, *, store: str = "",
                   timeout: float | None = None) -> dict[str, str] | None:
        """The secret's key → value pairs (one pair named ``name`` for a single-value
        secret), or None if the store has no such secret."""
        return self._call(p.secret_get(name, store), timeout, None)

    def bulk_get_secrets(self, *, store: str = "",
                         timeout: float | None = None) -> dict[str, dict[str, str]]:
        """Every secret of the store the caller may read, by name."""
        return self._call(p.secret_bulk_get(store), timeout, None)

    # -- pubsub ------------------------------------------------------------------------

    def publish(self, topic: str, data: bytes | str, *, content_type: str = "",
                metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                raw: bool = False, store: str = "", timeout: float | None = None,
                retry: bool | None = None) -> t.PublishReply:
        """Append a message to ``topic`` (in a CloudEvents envelope unless ``raw``);
        returns its ``id`` and ``offset``. Not retried unless ``retry=True`` (a resend may
        store it twice)."""
        return self._call(p.pubsub_publish(topic, data, content_type, metadata, raw, store),
                          timeout, retry)

    def subscribe(self, topic: str, *, group: str = "", max_in_flight: int = 0,
                  ack_deadline_ms: int = 0, store: str = "",
                  timeout: float | None = None) -> Subscription:
        """Join ``group`` (default ``default``) of ``topic``; returns a ``Subscription``
        whose ``next()`` yields ``Delivery``s. It owns a connection of its own (so it can
        receive while this client serves other calls); close or cancel it when done."""
        return Subscription(self, p.pubsub_subscribe(topic, group, max_in_flight,
                                                     ack_deadline_ms, store), timeout)

    def ack(self, *deliveries: t.Delivery, nack: bool = False,
            timeout: float | None = None) -> int:
        """Acknowledge (or ``nack``) deliveries of one topic and group from any
        connection (SPEC §7.3.3); returns how many took effect."""
        return self._call(p.pubsub_ack(deliveries, nack), timeout, None)

    # -- bindings ----------------------------------------------------------------------

    def invoke_binding(self, name: str, operation: str, data: bytes | str = b"", *,
                       metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                       timeout: float | None = None,
                       retry: bool | None = None) -> t.InvokeBindingReply:
        """Run ``operation`` on the output binding ``name`` (SPEC §7.9.1); returns its
        ``data`` and ``metadata``. Not retried unless ``retry=True``: an operation
        answered UNAVAILABLE may have taken effect outside."""
        return self._call(p.binding_invoke(name, operation, data, metadata), timeout, retry)

    def subscribe_binding(self, name: str, *, max_in_flight: int = 0, ack_deadline_ms: int = 0,
                          timeout: float | None = None) -> BindingSubscription:
        """Subscribe to the input binding ``name``; returns a ``BindingSubscription``
        whose ``next()`` yields ``BindingEvent``s. Like ``subscribe``, it owns a
        connection of its own; close or cancel it when done."""
        return BindingSubscription(self, p.binding_subscribe(name, max_in_flight, ack_deadline_ms),
                                   timeout)

    def ack_binding(self, *events: t.BindingEvent, nack: bool = False,
                    timeout: float | None = None) -> int:
        """Acknowledge (or ``nack``) events of one binding from any connection (SPEC
        §7.9.3); returns how many took effect."""
        return self._call(p.binding_ack(events, nack), timeout, None)

    # -- invoke ------------------------------------------------------------------------

    def invoke(self, app_id: str, method: str, data: bytes | str = b"", *,
               content_type: str = "",
               metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
               caller_app_id: str = "", trace_parent: str = "",
               timeout: float | None = None) -> bytes:
        """Call ``method`` of the app ``app_id`` (on this node or another) and return
        the body of its reply. The callee's error status is raised as its
        ``StatusError``; ``NotFound`` when nothing serves the app id and method. Never
        retried by the client (the daemon's resiliency settings do)."""
        return self.invoke_reply(app_id, method, data, content_type=content_type,
                                 metadata=metadata, caller_app_id=caller_app_id,
                                 trace_parent=trace_parent, timeout=timeout).data

    def invoke_reply(self, app_id: str, method: str, data: bytes | str = b"", *,
                     content_type: str = "",
                     metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                     caller_app_id: str = "", trace_parent: str = "",
                     timeout: float | None = None) -> t.InvokeReply:
        """``invoke``, returning the whole ``InvokeReply`` (content type, metadata)."""
        return self._call(p.invoke(app_id, method, data, content_type, metadata,
                                   caller_app_id, trace_parent), timeout, None)

    def apps(self, *, timeout: float | None = None) -> list[t.AppEntry]:
        """Every app id reachable from the daemon: local ones and those peers announced."""
        return self._call(p.invoke_apps(), timeout, None)

    def register(self, app_id: str, *, methods: Sequence[str] = (),
                 timeout: float | None = None) -> Registration:
        """Serve ``app_id`` (only ``methods``, if given); returns a ``Registration``
        whose ``next_call()`` yields the calls to answer with ``reply``/``fail``. Like a
        subscription it owns a connection of its own, on which the calls arrive."""
        return Registration(self, p.invoke_register(app_id, methods), timeout)

    def serve(self, app_id: str, handler: Callable[[p.Call], bytes | str | t.InvokeReply | None],
              *, methods: Sequence[str] = (), timeout: float | None = None) -> None:
        """Serve ``app_id`` with ``handler`` until the registration fails (use
        ``register`` and ``Registration.serve``/``stop`` to stop it from another thread): its return value is the reply body (or a whole
        ``InvokeReply``); a ``StatusError`` it raises is answered with that status, any
        other exception with INTERNAL. Calls are handled one at a time, in order."""
        with self.register(app_id, methods=methods, timeout=timeout) as reg:
            reg.serve(handler)

    # -- configuration -----------------------------------------------------------------

    def config_get(self, keys: Sequence[str] = (), *, store: str = "",
                   timeout: float | None = None) -> list[t.ConfigItem]:
        """The items of ``keys`` that exist, in order; no keys: every item, by key."""
        return self._call(p.config_get(keys, store), timeout, None)

    def config_set(self, items: dict[str, str] | Sequence[t.ConfigSetItem],
                   delete: Sequence[str] = (), *, store: str = "",
                   timeout: float | None = None, retry: bool | None = None) -> list[str]:
        """Admin: atomically write ``items`` (key → value, or ``ConfigSetItem``s with
        metadata) and delete ``delete``; returns the new version of each written item."""
        return self._call(p.config_set(items, delete, store), timeout, retry)

    def watch_config(self, keys: Sequence[str] = (), *, store: str = "",
                     timeout: float | None = None) -> ConfigWatch:
        """Watch ``keys`` (none: every key); returns a ``ConfigWatch`` (own connection,
        like ``subscribe``) with the initial ``snapshot`` and ``next()`` → ``ConfigUpdate``."""
        return ConfigWatch(self, p.config_subscribe(keys, store), timeout)

    # -- machinery ---------------------------------------------------------------------

    def _call(self, op: p.Op[T], timeout: float | None, retry: bool | None) -> T:
        """Runs ``op`` within its deadline, retrying UNAVAILABLE with backoff if allowed."""
        total = (timeout if timeout is not None else op.timeout or self.timeout) + op.extra
        deadline = time.monotonic() + total
        attempt = 0
        while True:
            try:
                with self._lock:
                    h, payload = self._exchange(op, deadline - time.monotonic())
                return op.result(h, payload)
            except errors.Unavailable:
                allowed = op.idempotent if retry is None else retry
                delay = p.backoff(attempt, deadline - time.monotonic()) if allowed else None
                if delay is None:
                    raise
                time.sleep(delay)
                attempt += 1

    def _ensure(self, remaining: float) -> socket.socket:
        """The open connection, connecting and negotiating HELLO if there is none."""
        if self._sock is not None:
            return self._sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(max(remaining, 0.001))
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            sock.close()
            raise errors.daemon_absent(self.path) from e
        except OSError as e:
            sock.close()
            raise errors.MechaConnectionError(f"cannot connect to mechad at {self.path}: {e}") from e
        self._sock, self._buf, self._next_id, self._version = sock, bytearray(), 0, p.VERSION
        op = p.hello()
        try:
            self.hello = op.result(*self._exchange(op, remaining, sock))
        except Exception:
            self._drop()
            raise
        self._version = self.hello.version
        return sock

    def _exchange(self, op: p.Op[T], remaining: float,
                  sock: socket.socket | None = None) -> tuple[p.Header, bytes]:
        """Sends one request and reads its answer. Must hold ``_lock``."""
        if remaining <= 0:
            raise errors.DeadlineExceeded("deadline passed before the request was sent")
        sock = sock or self._ensure(remaining)
        if self.hello is not None and len(op.payload) > self.hello.max_frame:
            raise errors.ResourceExhausted(
                f"payload of {len(op.payload)} bytes exceeds max_frame {self.hello.max_frame}")
        self._next_id = self._next_id % 0xFFFFFFFF + 1  # 1..2^32-1, never 0
        rid = self._next_id
        deadline = time.monotonic() + remaining + p.GRACE
        try:
            sock.settimeout(remaining + p.GRACE)
            sock.sendall(p.request_frame(op.opcode, rid, op.payload, p.deadline_ms(remaining),
                                         self._version))
            h = p.Header.unpack(self._recv(sock, p.HEADER.size, deadline))
            payload = self._recv(sock, h.payload_len, deadline)
        except TimeoutError as e:
            self._drop()  # the answer may still come: this connection is out of step
            raise errors.DeadlineExceeded(f"no answer from mechad within {remaining + p.GRACE:.3f} s") from e
        except errors.ProtocolError:
            self._drop()
            raise
        except OSError as e:
            self._drop()
            raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e}") from e
        if h.opcode == 0:  # §6.3/§6.4: connection-fatal; the daemon closes it
            self._drop()
        elif h.request_id != rid or h.opcode != op.opcode or not h.flags & p.F_RESPONSE:
            self._drop()
            raise errors.ProtocolError(f"unexpected frame {h} answering request {rid}")
        return h, payload

    def _recv(self, sock: socket.socket, n: int, deadline: float) -> bytes:
        buf = self._buf
        while len(buf) < n:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            chunk = sock.recv(max(n - len(buf), 65536))
            if not chunk:
                raise ConnectionResetError("mechad closed the connection")
            buf += chunk
        out = bytes(buf[:n])
        del buf[:n]
        return out

    def _drop(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None


# -- streams (SPEC §6.11) ----------------------------------------------------------------


class _StreamConnection(Client):
    """The private connection of one subscription or watch. Requests on it (acks,
    STREAM_CANCEL, a new subscribe) may be answered after pushes of the stream: those
    are kept, in order, for ``read``. Frames of a stream it no longer follows (a
    cancelled one) are ignored (§6.11)."""

    def __init__(self, path: str, timeout: float) -> None:
        self.stream_id = 0
        self.frames: deque[tuple[p.Header, bytes]] = deque()
        # Writes only. ``read`` holds ``_lock`` while it waits, and a registration's
        # answers must still go out meanwhile (another thread may answer a call).
        self._wlock = threading.Lock()
        super().__init__(path, timeout=timeout)

    def _exchange(self, op: p.Op[T], remaining: float,
                  sock: socket.socket | None = None) -> tuple[p.Header, bytes]:
        if remaining <= 0:
            raise errors.DeadlineExceeded("deadline passed before the request was sent")
        sock = sock or self._ensure(remaining)
        if self.hello is not None and len(op.payload) > self.hello.max_frame:
            raise errors.ResourceExhausted(
                f"payload of {len(op.payload)} bytes exceeds max_frame {self.hello.max_frame}")
        self._next_id = self._next_id % 0xFFFFFFFF + 1
        rid = self._next_id
        deadline = time.monotonic() + remaining + p.GRACE
        try:
            sock.settimeout(remaining + p.GRACE)
            with self._wlock:  # a call's response may be written from another thread
                sock.sendall(p.request_frame(op.opcode, rid, op.payload,
                                             p.deadline_ms(remaining), self._version))
            while True:
                h, payload = self._read_frame(sock, deadline)
                if h.opcode == 0 or (h.flags & p.F_RESPONSE and h.request_id == rid):
                    break
                if self._ours(h):
                    self.frames.append((h, payload))
        except TimeoutError as e:
            self._drop()
            raise errors.DeadlineExceeded(f"no answer from mechad within {remaining + p.GRACE:.3f} s") from e
        except errors.ProtocolError:
            self._drop()
            raise
        except OSError as e:
            self._drop()
            raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e}") from e
        if h.opcode == 0:
            self._drop()
        elif h.opcode != op.opcode:
            self._drop()
            raise errors.ProtocolError(f"unexpected frame {h} answering request {rid}")
        elif h.flags & p.F_STREAM:  # a new stream: follow it instead of any earlier one
            self.stream_id = rid
            self.frames.clear()
        elif h.status == 0 and op.opcode in p.PUSH_TYPES:
            self._drop()
            raise errors.ProtocolError(f"opcode {op.opcode:#06x} did not open a stream")
        return h, payload

    def read(self, timeout: float | None) -> tuple[p.Header, bytes]:
        """The next frame of the followed stream; ``TimeoutError`` after ``timeout``
        seconds (None: wait) leaves the connection usable."""
        with self._lock:
            if self.frames:
                return self.frames.popleft()
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                if self._sock is None:
                    raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost")
                try:
                    h, payload = self._read_frame(self._sock, deadline)
                except errors.ProtocolError:
                    self._drop()
                    raise
                except TimeoutError:
                    raise
                except OSError as e:
                    self._drop()
                    raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e}") from e
                if self._ours(h):
                    return h, payload

    def _ours(self, h: p.Header) -> bool:
        """A frame for ``read``: a push or END of the followed stream, or a call the
        daemon delivered (only a registration's connection receives those)."""
        return (not h.flags & p.F_RESPONSE and h.request_id == self.stream_id) or p.is_call(h)

    def send(self, frame: bytes) -> None:
        """Writes a frame that is not answered (a call's response); it does not wait
        for a ``read`` in progress on another thread."""
        with self._wlock:
            sock = self._sock
            if sock is None:
                raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost")
            try:
                # The socket's timeout is whatever the reader set: not changed
                # here, since a reader may be waiting on it right now.
                sock.sendall(frame)
            except OSError as e:
                raise errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e}") from e

    def _read_frame(self, sock: socket.socket, deadline: float | None) -> tuple[p.Header, bytes]:
        """One whole frame; a timeout consumes nothing, so reading can resume later."""
        buf = self._buf
        while True:
            if len(buf) >= p.HEADER.size:
                h = p.Header.unpack(bytes(buf[:p.HEADER.size]))
                end = p.HEADER.size + h.payload_len
                if len(buf) >= end:
                    payload = bytes(buf[p.HEADER.size:end])
                    del buf[:end]
                    return h, payload
            if deadline is None:
                sock.settimeout(None)
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("mechad closed the connection")
            buf += chunk


class _SyncStream:
    """A stream on a connection of its own, re-opened transparently after END
    UNAVAILABLE or RESOURCE_EXHAUSTED for up to 30 s (SPEC §6.11). Use it from one
    thread at a time; ``close()`` (or leaving ``with``) closes its connection, which
    ends the stream."""

    def __init__(self, client: Client, op: p.Op[Any], timeout: float | None) -> None:
        self._conn = _StreamConnection(client.path, client.timeout)
        self._op = op
        self._done = False
        try:
            self._opened = self._conn._call(op, timeout, None)
        except BaseException:
            self._conn.close()
            raise

    def _reopen(self, cause: errors.StatusError | None) -> Any:
        """Opens the stream again, retrying UNAVAILABLE within the resubscribe window."""
        try:
            return self._conn._call(self._op, p.RESUBSCRIBE_WINDOW, True)
        except errors.MechaError as e:
            self.close()
            raise e from cause

    def _frame(self, timeout: float | None) -> Any:
        """The next push, or an ``End`` (after which the stream is done unless resumable)."""
        try:
            item = p.stream_frame(*self._conn.read(timeout))
        except TimeoutError:
            raise TimeoutError(f"nothing on the stream within {timeout} s") from None
        except errors.MechaError:
            self.close()
            raise
        if isinstance(item, p.End) and not item.resumable:
            self.close()
            if item.error is not None:
                raise item.error
        return item

    def cancel(self, *, timeout: float | None = None) -> None:
        """STREAM_CANCEL, wait for the END, close. Deliveries not yet read are not
        acknowledged, so the group delivers them again."""
        if self._done:
            return
        try:
            self._conn._call(p.stream_cancel(self._conn.stream_id), timeout, None)
            deadline = time.monotonic() + (timeout or self._conn.timeout)
            while not self._conn.read(max(deadline - time.monotonic(), 0.001))[0].flags & p.F_END:
                pass
        except (errors.NotFound, TimeoutError, errors.MechaConnectionError):
            pass  # already ended, or gone with the connection closed below
        finally:
            self.close()

    def close(self) -> None:
        self._done = True
        self._conn.close()

    def __enter__(self: Any) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AckedStream(_SyncStream, Generic[R, E]):
    """What pub/sub and binding subscriptions share: at-least-once pushes that are
    acknowledged (or nacked) by the offset and attempt they carry, and a stream that
    subscribes again after a reset, after which the module delivers again whatever was
    not acknowledged."""

    reply: R
    """The opening answer of the latest (re)subscription."""

    def __init__(self, client: Client, op: p.Op[R], timeout: float | None) -> None:
        super().__init__(client, op, timeout)
        self.reply = self._opened

    def _ack_op(self, item: E, nack: bool) -> p.Op[int]:
        raise NotImplementedError

    def next(self, timeout: float | None = None) -> E | None:
        """The next push, waiting up to ``timeout`` seconds (None: for ever;
        ``TimeoutError`` then). None once the subscription was cancelled; a non-OK END
        that cannot be resumed raises its ``StatusError``."""
        while not self._done:
            item = self._frame(timeout)
            if not isinstance(item, p.End):
                return item
            if item.error is None:
                return None
            self.reply = self._reopen(item.error)
        return None

    def ack(self, item: E, *, timeout: float | None = None) -> bool:
        """Acknowledge: never delivered again. False if it had no effect."""
        return self._conn._call(self._ack_op(item, False), timeout, None) > 0

    def nack(self, item: E, *, timeout: float | None = None) -> bool:
        """Fail the delivery: delivered again at once (attempt + 1)."""
        return self._conn._call(self._ack_op(item, True), timeout, None) > 0

    def __iter__(self) -> Iterator[E]:
        return self

    def __next__(self) -> E:
        d = self.next()
        if d is None:
            raise StopIteration
        return d


class Subscription(_AckedStream[t.SubscribeReply, t.Delivery]):
    """A member of a consumer group (``Client.subscribe``). ``next()`` returns the next
    ``Delivery``; ``for d in sub`` iterates until the subscription ends. Acks and nacks
    travel on the subscription's own connection; a nacked delivery may also go to the
    dead-letter topic. ``reply`` is the SubscribeReply of the latest (re)subscription:
    store and group resolved."""

    def _ack_op(self, item: t.Delivery, nack: bool) -> p.Op[int]:
        return p.pubsub_ack([item], nack)


class BindingSubscription(_AckedStream[t.BindingSubscribeReply, t.BindingEvent]):
    """A subscriber of an input binding (``Client.subscribe_binding``). ``next()``
    returns the next ``BindingEvent``; ``for e in sub`` iterates until the subscription
    ends. The subscribers of one tenant share its events; acks and nacks travel on the
    subscription's own connection."""

    def _ack_op(self, item: t.BindingEvent, nack: bool) -> p.Op[int]:
        return p.binding_ack([item], nack)


class ConfigWatch(_SyncStream):
    """A configuration watch (``Client.watch_config``): ``snapshot`` is the items when
    it opened, ``items`` what is known now, ``next()`` the next ``ConfigUpdate``. After a
    reset, a fall-behind or a gap in ``seq`` it subscribes again and reports what changed
    meanwhile as one update, so ``seq`` runs 1, 2, 3, ... without gaps (SPEC §7.6.2)."""

    def __init__(self, client: Client, op: p.Op[list[t.ConfigItem]], timeout: float | None) -> None:
        super().__init__(client, op, timeout)
        self.snapshot: list[t.ConfigItem] = self._opened
        self._view = p.ConfigView(self.snapshot)

    @property
    def items(self) -> dict[str, t.ConfigItem]:
        return dict(self._view.items)

    def next(self, timeout: float | None = None) -> t.ConfigUpdate | None:
        """The next change, waiting up to ``timeout`` (None: for ever; ``TimeoutError``
        then); None once cancelled."""
        while not self._done:
            item = self._frame(timeout)
            if isinstance(item, p.End):
                if item.error is None:
                    return None
                upd = self._view.resync(self._reopen(item.error))
            elif (upd := self._view.push(item)) is None:  # a gap: resubscribe
                try:
                    self._conn._call(p.stream_cancel(self._conn.stream_id), None, None)
                except errors.NotFound:
                    pass
                upd = self._view.resync(self._reopen(None))
            if upd is not None:
                return upd
        return None

    def __iter__(self) -> Iterator[t.ConfigUpdate]:
        return self

    def __next__(self) -> t.ConfigUpdate:
        u = self.next()
        if u is None:
            raise StopIteration
        return u


class Registration(_SyncStream):
    """An app id served on a connection of its own (``Client.register``). ``next_call()``
    returns the next ``Call``; answer each with ``reply`` or ``fail`` (in any order, from
    any thread). It registers again by itself after the invoke module restarts; calls
    arrive only while it is registered, and callers wait (within their deadline) while
    nobody reads. Use ``next_call`` from one thread at a time."""

    reply_info: t.RegisterReply
    """The RegisterReply of the latest (re)registration: the app id and the node."""

    def __init__(self, client: Client, op: p.Op[t.RegisterReply], timeout: float | None) -> None:
        self._stopping = False
        super().__init__(client, op, timeout)
        self.reply_info = self._opened

    def stop(self) -> None:
        """Stops serving, from any thread: a ``next_call`` waiting elsewhere returns None
        (and ``serve`` returns). Shutting the socket down wakes the waiting reader, which
        holds the connection's lock, and ends the registration (its connection closes)."""
        self._stopping = True
        sock = self._conn._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass  # already closed
    @property
    def app_id(self) -> str:
        return self.reply_info.app_id

    def next_call(self, timeout: float | None = None) -> p.Call | None:
        """The next call, waiting up to ``timeout`` seconds (None: for ever;
        ``TimeoutError`` then). None once the registration was cancelled."""
        while not self._done:
            try:
                h, payload = self._conn.read(timeout)
            except TimeoutError:
                raise TimeoutError(f"no call within {timeout} s") from None
            except errors.MechaError:
                self.close()
                if self._stopping:
                    return None
                raise
            if p.is_call(h):
                try:
                    return p.decode_call(h, payload)
                except p.DecodeError as e:
                    # Answered so the caller does not wait for its deadline.
                    self._answer(h.request_id, errors.InvalidArgument(f"undecodable call: {e}"))
                    continue
            item = p.stream_frame(h, payload)
            if not isinstance(item, p.End):
                continue  # a registration has no pushes (§7.8.1); nothing to do with one
            if item.error is None:
                self.close()
                return None
            if not item.resumable:
                self.close()
                raise item.error
            self.reply_info = self._reopen(item.error)
        return None

    def reply(self, call: p.Call, data: bytes | str | t.InvokeReply = b"", *,
              content_type: str = "",
              metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None) -> None:
        """Answer ``call`` with OK and ``data`` as the reply body."""
        reply = data if isinstance(data, t.InvokeReply) else t.InvokeReply(
            p._b(data), content_type, p._pairs(metadata))
        self._answer(call.request_id, reply)

    def fail(self, call: p.Call, error: errors.StatusError) -> None:
        """Answer ``call`` with ``error``'s status and message, e.g.
        ``errors.InvalidArgument("no such order")``."""
        self._answer(call.request_id, error)

    def serve(self, handler: Callable[[p.Call], bytes | str | t.InvokeReply | None]) -> None:
        """Answer every call with ``handler`` (see ``Client.serve``) until cancelled."""
        while (call := self.next_call()) is not None:
            try:
                result: t.InvokeReply | errors.StatusError = p.as_reply(handler(call))
            except Exception as e:  # the handler's failure is the caller's answer
                result = p.handler_error(e)
            self._answer(call.request_id, result)

    def _answer(self, request_id: int, result: t.InvokeReply | errors.StatusError) -> None:
        self._conn.send(p.call_answer(request_id, result, self._conn._version))

    def __iter__(self) -> Iterator[p.Call]:
        return self

    def __next__(self) -> p.Call:
        c = self.next_call()
        if c is None:
            raise StopIteration
        return c
