"""The asyncio client: many requests in flight on one connection.

A single reader task reads every frame the daemon sends and hands each response to the
future of the request with that id (SPEC §1: answers may come in any order). Because
the reader never stops, the daemon's backpressure (§6.4) cannot deadlock a caller that
pipelines. Frames of a stream (§6.11) are routed to a per-stream
queue, read by ``Subscription`` and ``ConfigWatch``, which share the client's connection.

Methods and semantics are those of ``mecha.Client`` (see its docstrings); here they are
coroutines. Connect with ``await Client.connect(...)`` or ``async with Client(...)``;
otherwise the first call connects. A lost connection fails the calls in flight with
``MechaConnectionError`` and the next call reconnects.
"""

from __future__ import annotations

import asyncio
import os
import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from . import errors
from . import payloads as t
from . import protocol as p

__all__ = ["Client", "Stream", "Subscription", "BindingSubscription", "ConfigWatch", "Registration"]
T = TypeVar("T")
R = TypeVar("R")  # a subscription's opening answer
E = TypeVar("E")  # a subscription's push
Frame = tuple[p.Header, bytes]
Reply = bytes | str | t.InvokeReply | None
Handler = Callable[[p.Call], Reply | Awaitable[Reply]]


class _Conn:
    """One socket, its reader task, and the requests and streams waiting on it."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
        self.reader, self.writer, self.path = reader, writer, path
        self.pending: dict[int, asyncio.Future[Frame]] = {}
        self.streams: dict[int, asyncio.Queue[Frame | None]] = {}
        self.opened: dict[int, asyncio.Queue[Frame | None]] = {}  # until _open_stream takes it
        # app id -> the registration stream whose queue receives its calls (§7.8.3)
        self.callees: dict[str, int] = {}
        self.version = p.VERSION
        self.error: Exception | None = None
        self._next = 0
        self.task = asyncio.get_running_loop().create_task(self._read_loop())

    def new_id(self) -> int:
        """The next id after the last one, skipping 0 and ids still in flight."""
        while True:
            self._next = self._next % 0xFFFFFFFF + 1
            if self._next not in self.pending and self._next not in self.streams:
                return self._next

    async def _read_loop(self) -> None:
        err: Exception
        try:
            while True:
                h = p.Header.unpack(await self.reader.readexactly(p.HEADER.size))
                payload = await self.reader.readexactly(h.payload_len) if h.payload_len else b""
                if p.is_call(h):  # a request from the daemon, in its own id space
                    self._route_call(h, payload)
                    continue
                if not h.flags & p.F_RESPONSE:  # a push on a stream
                    q = self.streams.get(h.request_id)
                    if q is not None:
                        q.put_nowait((h, payload))
                        if h.flags & p.F_END:
                            del self.streams[h.request_id]
                    continue
                if h.opcode == 0 and h.request_id == 0:  # §6.3: bad magic, connection-fatal
                    err = p.status_error(h, payload)
                    break
                if h.flags & p.F_STREAM:  # register before any push of it is read
                    self.streams[h.request_id] = self.opened[h.request_id] = asyncio.Queue()
                    if h.opcode == 0x0701 and h.status == 0:
                        # Calls may follow at once: route the app id to the new
                        # stream before reading on, not when the opener resumes.
                        try:
                            self.callees[p.decode(t.RegisterReply, payload).app_id] = h.request_id
                        except p.DecodeError:
                            pass  # the opener reports the undecodable answer
                fut = self.pending.pop(h.request_id, None)
                if fut is not None and not fut.done():
                    fut.set_result((h, payload))
        except errors.ProtocolError as e:
            err = e
        except (asyncio.IncompleteReadError, OSError) as e:
            err = errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e!r}")
        self.fail(err)

    def _route_call(self, h: p.Header, payload: bytes) -> None:
        """Queues a delivered call on its app id's registration stream, or answers it at
        once when it cannot be served, so that its caller does not wait for its deadline."""
        try:
            app_id = p.decode_call(h, payload).app_id
        except p.DecodeError as e:
            self.answer(h.request_id, errors.InvalidArgument(f"undecodable call: {e}"))
            return
        q = self.streams.get(self.callees.get(app_id, 0))
        if q is None:
            self.answer(h.request_id, errors.Unavailable(f"this connection serves no app {app_id!r}"))
            return
        q.put_nowait((h, payload))

    def answer(self, request_id: int, result: t.InvokeReply | errors.StatusError) -> None:
        """Queues the response to a delivered call (the writer buffers it)."""
        if self.error is None:
            self.writer.write(p.call_answer(request_id, result, self.version))

    def fail(self, err: Exception) -> None:
        """Ends the connection: every waiting request and stream gets ``err``."""
        if self.error is None:
            self.error = err
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(self.error)
        self.pending.clear()
        for q in self.streams.values():
            q.put_nowait(None)
        self.streams.clear()
        self.writer.close()
        if self.task is not asyncio.current_task():
            self.task.cancel()


class Stream:
    """The frames the daemon pushes on a stream the connection opened, as raw
    ``(Header, payload)`` pairs; iteration ends after the END frame. ``Subscription``
    and ``ConfigWatch`` decode them."""

    def __init__(self, client: Client, conn: _Conn, stream_id: int) -> None:
        self.client, self.stream_id, self._done = client, stream_id, False
        self._queue = conn.opened.pop(stream_id)
        self._conn = conn

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Frame:
        if self._done:
            raise StopAsyncIteration
        frame = await self._queue.get()
        if frame is None:
            self._done = True
            raise self._conn.error or errors.MechaConnectionError("stream ended")
        self._done = bool(frame[0].flags & p.F_END)
        return frame

    async def cancel(self, *, timeout: float | None = None) -> None:
        """STREAM_CANCEL; the END frame follows on the iterator."""
        await self.client._call(p.stream_cancel(self.stream_id), timeout, None)


class Client:
    """An asyncio connection to mechad; see ``mecha.Client`` for every method."""

    def __init__(self, socket_path: p.SocketPath = None, *,
                 timeout: float = p.DEFAULT_TIMEOUT) -> None:
        self.path = os.fspath(socket_path) if socket_path is not None else p.default_socket_path()
        self.timeout = timeout
        self.hello: t.HelloReply | None = None
        self._conn: _Conn | None = None
        self._connecting = asyncio.Lock()

    @classmethod
    async def connect(cls, socket_path: p.SocketPath = None, *,
                      timeout: float = p.DEFAULT_TIMEOUT) -> Client:
        client = cls(socket_path, timeout=timeout)
        await client._ensure(timeout)
        return client

    async def __aenter__(self) -> Client:
        await self._ensure(self.timeout)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.fail(errors.MechaConnectionError("client closed"))
            try:
                await conn.writer.wait_closed()
            except OSError:
                pass  # already broken: nothing left to flush

    # -- operations (semantics: mecha.Client) ---------------------------------------------

    async def ping(self, *, timeout: float | None = None) -> None:
        return await self._call(p.ping(), timeout, None)

    async def status(self, *, timeout: float | None = None) -> t.StatusReply:
        return await self._call(p.status(), timeout, None)

    async def module_restart(self, module: str, *, binary: str | None = None,
                             timeout: float | None = None) -> int:
        return await self._call(p.module_restart(module, binary), timeout, False)

    async def reload(self, *, timeout: float | None = None) -> t.ReloadReply:
        return await self._call(p.reload(), timeout, False)

    async def get(self, key: str, *, store: str = "",
                  timeout: float | None = None) -> t.StateEntry | None:
        return await self._call(p.state_get(key, store), timeout, None)

    async def set(self, key: str, value: bytes | str, *, etag: str | None = None,
                  ttl_ms: int | None = None, store: str = "", timeout: float | None = None,
                  retry: bool | None = None) -> str:
        return await self._call(p.state_set(key, value, etag, ttl_ms, store), timeout, retry)

    async def delete(self, key: str, *, etag: str | None = None, store: str = "",
                     timeout: float | None = None, retry: bool | None = None) -> bool:
        return await self._call(p.state_delete(key, etag, store), timeout, retry)

    async def bulk_get(self, keys: Sequence[str], *, store: str = "",
                       timeout: float | None = None) -> list[t.BulkGetItem]:
        return await self._call(p.state_bulk_get(keys, store), timeout, None)

    async def bulk_set(self, items: Sequence[t.SetItem], *, store: str = "",
                       timeout: float | None = None, retry: bool | None = None) -> list[str]:
        return await self._call(p.state_bulk_set(items, store), timeout, retry)

    async def transact(self, ops: Sequence[t.SetItem | t.DeleteItem], *, store: str = "",
                       timeout: float | None = None,
                       retry: bool | None = None) -> list[str | None]:
        return await self._call(p.state_transact(ops, store), timeout, retry)

    async def try_lock(self, resource: str, owner: str, ttl_ms: int, *, wait_ms: int = 0,
                       store: str = "", timeout: float | None = None,
                       retry: bool | None = None) -> t.TryLockReply:
        return await self._call(p.lock_try_lock(resource, owner, ttl_ms, wait_ms, store),
                                timeout, retry)

    async def unlock(self, resource: str, owner: str, *, store: str = "",
                     timeout: float | None = None, retry: bool | None = None) -> t.UnlockStatus:
        return await self._call(p.lock_unlock(resource, owner, store), timeout, retry)

    async def extend_lock(self, resource: str, owner: str, ttl_ms: int, *, store: str = "",
                          timeout: float | None = None,
                          retry: bool | None = None) -> t.ExtendLockReply:
        return await self._call(p.lock_extend(resource, owner, ttl_ms, store), timeout, retry)

    async def next_id(self, key: str, *, store: str = "", timeout: float | None = None) -> int:
        return (await self._call(p.seq_next(key, 1, store), timeout, None))[0]

    async def next_ids(self, key: str, count: int, *, store: str = "",
                       timeout: float | None = None) -> range:
        return await self._call(p.seq_next(key, count, store), timeout, None)

    async def get_secret(self, name: str, *, store: str = "",
                         timeout: float | None = None) -> dict[str, str] | None:
        return await self._call(p.secret_get(name, store), timeout, None)

    async def bulk_get_secrets(self, *, store: str = "",
                               timeout: float | None = None) -> dict[str, dict[str, str]]:
        return await self._call(p.secret_bulk_get(store), timeout, None)

    async def publish(self, topic: str, data: bytes | str, *, content_type: str = "",
                      metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                      raw: bool = False, store: str = "", timeout: float | None = None,
                      retry: bool | None = None) -> t.PublishReply:
        return await self._call(p.pubsub_publish(topic, data, content_type, metadata, raw, store),
                                timeout, retry)

    async def subscribe(self, topic: str, *, group: str = "", max_in_flight: int = 0,
                        ack_deadline_ms: int = 0, store: str = "",
                        timeout: float | None = None) -> Subscription:
        """Like ``mecha.Client.subscribe``, but the stream shares this connection."""
        op = p.pubsub_subscribe(topic, group, max_in_flight, ack_deadline_ms, store)
        sub = Subscription(self, op)
        await sub._open(timeout)
        return sub

    async def ack(self, *deliveries: t.Delivery, nack: bool = False,
                  timeout: float | None = None) -> int:
        return await self._call(p.pubsub_ack(deliveries, nack), timeout, None)

    async def invoke_binding(self, name: str, operation: str, data: bytes | str = b"", *,
                             metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                             timeout: float | None = None,
                             retry: bool | None = None) -> t.InvokeBindingReply:
        return await self._call(p.binding_invoke(name, operation, data, metadata), timeout, retry)

    async def subscribe_binding(self, name: str, *, max_in_flight: int = 0,
                                ack_deadline_ms: int = 0,
                                timeout: float | None = None) -> BindingSubscription:
        """Like ``mecha.Client.subscribe_binding``, but the stream shares this connection."""
        sub = BindingSubscription(self, p.binding_subscribe(name, max_in_flight, ack_deadline_ms))
        await sub._open(timeout)
        return sub

    async def ack_binding(self, *events: t.BindingEvent, nack: bool = False,
                          timeout: float | None = None) -> int:
        return await self._call(p.binding_ack(events, nack), timeout, None)

    async def config_get(self, keys: Sequence[str] = (), *, store: str = "",
                         timeout: float | None = None) -> list[t.ConfigItem]:
        return await self._call(p.config_get(keys, store), timeout, None)

    async def config_set(self, items: dict[str, str] | Sequence[t.ConfigSetItem],
                         delete: Sequence[str] = (), *, store: str = "",
                         timeout: float | None = None, retry: bool | None = None) -> list[str]:
        return await self._call(p.config_set(items, delete, store), timeout, retry)

    async def invoke(self, app_id: str, method: str, data: bytes | str = b"", *,
                     content_type: str = "",
                     metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                     caller_app_id: str = "", trace_parent: str = "",
                     timeout: float | None = None) -> bytes:
        reply = await self.invoke_reply(app_id, method, data, content_type=content_type,
                                        metadata=metadata, caller_app_id=caller_app_id,
                                        trace_parent=trace_parent, timeout=timeout)
        return reply.data

    async def invoke_reply(self, app_id: str, method: str, data: bytes | str = b"", *,
                           content_type: str = "",
                           metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None,
                           caller_app_id: str = "", trace_parent: str = "",
                           timeout: float | None = None) -> t.InvokeReply:
        return await self._call(p.invoke(app_id, method, data, content_type, metadata,
                                         caller_app_id, trace_parent), timeout, None)

    async def apps(self, *, timeout: float | None = None) -> list[t.AppEntry]:
        return await self._call(p.invoke_apps(), timeout, None)

    async def register(self, app_id: str, *, methods: Sequence[str] = (),
                       timeout: float | None = None) -> Registration:
        """Like ``mecha.Client.register``, but calls arrive on this connection."""
        reg = Registration(self, p.invoke_register(app_id, methods))
        await reg._open(timeout)
        return reg

    async def serve(self, app_id: str, handler: Handler, *, methods: Sequence[str] = (),
                    timeout: float | None = None) -> None:
        """Serve ``app_id`` with ``handler`` (a function or coroutine function of a
        ``Call``; see ``mecha.Client.serve``) until the registration ends; calls are
        handled concurrently. Cancelling the task serving stops serving."""
        reg = await self.register(app_id, methods=methods, timeout=timeout)
        try:
            await reg.serve(handler)
        finally:
            await reg.cancel()

    async def watch_config(self, keys: Sequence[str] = (), *, store: str = "",
                           timeout: float | None = None) -> ConfigWatch:
        watch = ConfigWatch(self, p.config_subscribe(keys, store))
        await watch._open(timeout)
        return watch

    # -- machinery ------------------------------------------------------------------------

    async def _call(self, op: p.Op[T], timeout: float | None, retry: bool | None) -> T:
        """Runs ``op`` within its deadline, retrying UNAVAILABLE with backoff if allowed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else op.timeout or self.timeout) + op.extra
        attempt = 0
        while True:
            try:
                conn = await self._ensure(deadline - loop.time())
                return op.result(*await self._exchange(conn, op, deadline - loop.time()))
            except errors.Unavailable:
                allowed = op.idempotent if retry is None else retry
                delay = p.backoff(attempt, deadline - loop.time()) if allowed else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def _open_stream(self, op: p.Op[T], timeout: float | None = None) -> tuple[T, Stream]:
        """Sends a request that opens a stream (§6.11): PUBSUB_SUBSCRIBE, CONFIG_SUBSCRIBE."""
        conn = await self._ensure(timeout or self.timeout)
        h, payload = await self._exchange(conn, op, timeout or self.timeout)
        result = op.result(h, payload)
        if not h.flags & p.F_STREAM:
            raise errors.ProtocolError(f"opcode {op.opcode:#06x} did not open a stream")
        return result, Stream(self, conn, h.request_id)

    async def _ensure(self, remaining: float) -> _Conn:
        """The open connection, connecting and negotiating HELLO if there is none.
        Other callers wait on the lock, so nothing is sent before HELLO is answered."""
        conn = self._conn
        if conn is not None and conn.error is None:
            return conn
        async with self._connecting:
            if self._conn is not None and self._conn.error is None:
                return self._conn
            if remaining <= 0:
                raise errors.DeadlineExceeded("deadline passed before connecting")
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(self.path), remaining)
            except (FileNotFoundError, ConnectionRefusedError) as e:
                raise errors.daemon_absent(self.path) from e
            except TimeoutError as e:
                raise errors.DeadlineExceeded(f"connecting to {self.path} timed out") from e
            except OSError as e:
                raise errors.MechaConnectionError(f"cannot connect to mechad at {self.path}: {e}") from e
            conn = _Conn(reader, writer, self.path)
            op = p.hello()
            try:
                self.hello = op.result(*await self._exchange(conn, op, remaining))
            except Exception as e:
                conn.fail(e)
                raise
            conn.version = self.hello.version
            self._conn = conn
            return conn

    async def _exchange(self, conn: _Conn, op: p.Op[Any], remaining: float) -> Frame:
        """Sends one request on ``conn`` and waits for the frame answering it."""
        if remaining <= 0:
            raise errors.DeadlineExceeded("deadline passed before the request was sent")
        if self.hello is not None and len(op.payload) > self.hello.max_frame:
            raise errors.ResourceExhausted(
                f"payload of {len(op.payload)} bytes exceeds max_frame {self.hello.max_frame}")
        if conn.error is not None:
            raise conn.error
        rid = conn.new_id()
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        conn.pending[rid] = fut
        try:
            conn.writer.write(p.request_frame(op.opcode, rid, op.payload,
                                              p.deadline_ms(remaining), conn.version))
            async with asyncio.timeout(remaining + p.GRACE):  # no extra task per request
                await conn.writer.drain()  # waits only while the daemon applies backpressure
                h, payload = await fut
        except errors.MechaError:
            raise  # set by the reader (connection lost); some are OSErrors, keep them as they are
        except TimeoutError as e:
            raise errors.DeadlineExceeded(f"no answer from mechad within {remaining + p.GRACE:.3f} s") from e
        except OSError as e:
            err = errors.MechaConnectionError(f"connection to mechad at {self.path} lost: {e}")
            conn.fail(err)
            raise err from e
        finally:
            conn.pending.pop(rid, None)
        if h.opcode not in (op.opcode, 0):
            bad = errors.ProtocolError(f"frame {h} answers request {rid} of opcode {op.opcode:#06x}")
            conn.fail(bad)
            raise bad
        return h, payload


class _AioStream:
    """A stream on the client's connection, re-opened transparently after END
    UNAVAILABLE or RESOURCE_EXHAUSTED for up to 30 s (SPEC §6.11)."""

    def __init__(self, client: Client, op: p.Op[Any]) -> None:
        self.client, self._op = client, op
        self._stream: Stream | None = None
        self._done = False

    async def _open(self, timeout: float | None, window: float | None = None) -> Any:
        """Opens (again); with ``window``, retries UNAVAILABLE for that long."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (window if window is not None else timeout or self.client.timeout)
        attempt = 0
        while True:
            try:
                result, self._stream = await self.client._open_stream(self._op, deadline - loop.time())
                return result
            except errors.Unavailable:
                delay = p.backoff(attempt, deadline - loop.time()) if window is not None else None
                if delay is None:
                    raise
                await asyncio.sleep(delay)
                attempt += 1

    async def _reopen(self, cause: errors.StatusError | None) -> Any:
        try:
            return await self._open(None, p.RESUBSCRIBE_WINDOW)
        except errors.MechaError as e:
            self._done = True
            raise e from cause

    async def _raw(self, timeout: float | None) -> Frame | None:
        """The stream's next frame; None after the iterator ended."""
        assert self._stream is not None
        try:
            async with asyncio.timeout(timeout):
                return await self._stream.__anext__()
        except StopAsyncIteration:
            self._done = True
            return None
        except errors.MechaError:
            self._done = True
            raise
        except TimeoutError:
            raise TimeoutError(f"nothing on the stream within {timeout} s") from None

    async def _frame(self, timeout: float | None) -> Any:
        frame = await self._raw(timeout)
        if frame is None:
            return p.End(None)
        item = p.stream_frame(*frame)
        if isinstance(item, p.End) and not item.resumable:
            self._done = True
            if item.error is not None:
                raise item.error
        return item

    async def _cancel_stream(self, timeout: float | None = None) -> None:
        if self._stream is not None:
            try:
                await self._stream.cancel(timeout=timeout)
            except errors.NotFound:
                pass

    async def cancel(self, *, timeout: float | None = None) -> None:
        """STREAM_CANCEL and wait for the END. Deliveries not yet read are delivered again."""
        if self._done:
            return
        self._done = True
        try:
            await self._cancel_stream(timeout)
            assert self._stream is not None
            async with asyncio.timeout(timeout or self.client.timeout):
                async for _ in self._stream:
                    pass
        except (TimeoutError, errors.MechaConnectionError):
            pass

    async def __aenter__(self: Any) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.cancel()


class _AckedStream(_AioStream, Generic[R, E]):
    """``mecha.client._AckedStream`` for asyncio: what pub/sub and binding
    subscriptions share (``await next()``, ``async for``, ``ack``/``nack``)."""

    reply: R

    def _ack_op(self, item: E, nack: bool) -> p.Op[int]:
        raise NotImplementedError

    async def _open(self, timeout: float | None, window: float | None = None) -> Any:
        self.reply = await super()._open(timeout, window)
        return self.reply

    async def next(self, timeout: float | None = None) -> E | None:
        while not self._done:
            item = await self._frame(timeout)
            if not isinstance(item, p.End):
                return item
            if item.error is None:
                return None
            await self._reopen(item.error)
        return None

    async def ack(self, item: E, *, timeout: float | None = None) -> bool:
        return await self.client._call(self._ack_op(item, False), timeout, None) > 0

    async def nack(self, item: E, *, timeout: float | None = None) -> bool:
        return await self.client._call(self._ack_op(item, True), timeout, None) > 0

    def __aiter__(self) -> _AckedStream[R, E]:
        return self

    async def __anext__(self) -> E:
        d = await self.next()
        if d is None:
            raise StopAsyncIteration
        return d


class Subscription(_AckedStream[t.SubscribeReply, t.Delivery]):
    """``mecha.client.Subscription`` for asyncio: ``await next()``, ``async for``."""

    def _ack_op(self, item: t.Delivery, nack: bool) -> p.Op[int]:
        return p.pubsub_ack([item], nack)


class BindingSubscription(_AckedStream[t.BindingSubscribeReply, t.BindingEvent]):
    """``mecha.client.BindingSubscription`` for asyncio: ``await next()``, ``async for``."""

    def _ack_op(self, item: t.BindingEvent, nack: bool) -> p.Op[int]:
        return p.binding_ack([item], nack)


class ConfigWatch(_AioStream):
    """``mecha.client.ConfigWatch`` for asyncio."""

    snapshot: list[t.ConfigItem]

    async def _open(self, timeout: float | None, window: float | None = None) -> Any:
        items = await super()._open(timeout, window)
        if not hasattr(self, "_view"):
            self.snapshot = items
            self._view = p.ConfigView(items)
        return items

    @property
    def items(self) -> dict[str, t.ConfigItem]:
        return dict(self._view.items)

    async def next(self, timeout: float | None = None) -> t.ConfigUpdate | None:
        while not self._done:
            item = await self._frame(timeout)
            if isinstance(item, p.End):
                if item.error is None:
                    return None
                upd = self._view.resync(await self._reopen(item.error))
            elif (upd := self._view.push(item)) is None:  # a gap: resubscribe
                await self._cancel_stream()
                upd = self._view.resync(await self._reopen(None))
            if upd is not None:
                return upd
        return None

    def __aiter__(self) -> ConfigWatch:
        return self

    async def __anext__(self) -> t.ConfigUpdate:
        u = await self.next()
        if u is None:
            raise StopAsyncIteration
        return u


class Registration(_AioStream):
    """``mecha.client.Registration`` for asyncio: the calls arrive on the client's own
    connection; ``await next_call()``, ``async for``, ``reply``/``fail``."""

    reply_info: t.RegisterReply

    async def _open(self, timeout: float | None, window: float | None = None) -> Any:
        # The reader has routed the app id to the new stream (``_Conn._read_loop``).
        self.reply_info = await super()._open(timeout, window)
        return self.reply_info

    @property
    def app_id(self) -> str:
        return self.reply_info.app_id

    async def cancel(self, *, timeout: float | None = None) -> None:
        await super().cancel(timeout=timeout)
        if self._stream is not None:
            conn = self._stream._conn
            # Forget the stream: its id may be reused by a later stream of this connection.
            if conn.callees.get(self.reply_info.app_id) == self._stream.stream_id:
                del conn.callees[self.reply_info.app_id]

    async def next_call(self, timeout: float | None = None) -> p.Call | None:
        """The next call, waiting up to ``timeout`` (None: for ever; ``TimeoutError``
        then); None once the registration was cancelled."""
        while not self._done:
            frame = await self._raw(timeout)
            if frame is None:
                return None
            h, payload = frame
            if p.is_call(h):
                try:
                    return p.decode_call(h, payload)
                except p.DecodeError as e:  # the reader checked; kept for safety
                    self._conn().answer(h.request_id, errors.InvalidArgument(str(e)))
                    continue
            item = p.stream_frame(h, payload)
            if not isinstance(item, p.End):
                continue  # a registration has no pushes (§7.8.1)
            if item.error is None:
                self._done = True
                return None
            if not item.resumable:
                self._done = True
                raise item.error
            await self._reopen(item.error)
        return None

    async def reply(self, call: p.Call, data: bytes | str | t.InvokeReply = b"", *,
                    content_type: str = "",
                    metadata: dict[str, str] | Sequence[tuple[str, str]] | None = None) -> None:
        """Answer ``call`` with OK and ``data`` as the reply body."""
        reply = data if isinstance(data, t.InvokeReply) else t.InvokeReply(
            p._b(data), content_type, p._pairs(metadata))
        await self._answer(call, reply)

    async def fail(self, call: p.Call, error: errors.StatusError) -> None:
        """Answer ``call`` with ``error``'s status and message."""
        await self._answer(call, error)

    async def serve(self, handler: Handler) -> None:
        """Answer every call with ``handler``, each in a task of its own, until the
        registration ends."""
        tasks: set[asyncio.Task[None]] = set()
        while (call := await self.next_call()) is not None:
            task = asyncio.get_running_loop().create_task(self._handle(handler, call))
            tasks.add(task)  # a strong reference, or the task may vanish mid-way
            task.add_done_callback(tasks.discard)

    async def _handle(self, handler: Handler, call: p.Call) -> None:
        try:
            value = handler(call)
            if inspect.isawaitable(value):
                value = await value
            result: t.InvokeReply | errors.StatusError = p.as_reply(value)
        except Exception as e:  # the handler's failure is the caller's answer
            result = p.handler_error(e)
        try:
            await self._answer(call, result)
        except errors.MechaError:
            pass  # the connection is gone: the daemon has failed the call already

    def _conn(self) -> _Conn:
        assert self._stream is not None
        return self._stream._conn

    async def _answer(self, call: p.Call, result: t.InvokeReply | errors.StatusError) -> None:
        conn = self._conn()
        if conn.error is not None:
            raise conn.error
        conn.answer(call.request_id, result)
        try:
            await conn.writer.drain()
        except OSError as e:
            raise errors.MechaConnectionError(f"connection to mechad at {conn.path} lost: {e}") from e

    def __aiter__(self) -> Registration:
        return self

    async def __anext__(self) -> p.Call:
        c = await self.next_call()
        if c is None:
            raise StopAsyncIteration
        return c
