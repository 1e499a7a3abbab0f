"""Connection behaviour the real daemon cannot be made to show on demand, against a
scripted fake daemon: retries on UNAVAILABLE, answers out of order, stream pushes,
deadlines in the header, connection-fatal frames, reconnecting."""

from __future__ import annotations

import asyncio
import time

import pytest
from conftest import error_body, response

import mecha
import mecha.aio
from mecha.codec import decode, encode
from mecha.payloads import NextIdReply, SetReply, StateEntry, TryLockReply


def unavailable_then(n: int, ok_payload: bytes):
    """Answers the first ``n`` requests UNAVAILABLE, then OK with ``ok_payload``."""
    def handler(state: list, h: tuple, payload: bytes) -> list[bytes]:
        state.append(h)
        if len(state) <= n:
            return [response(h, 8, error_body("module state is unavailable"))]
        return [response(h, 0, ok_payload)]
    return handler


def test_idempotent_read_is_retried(fake) -> None:
    d = fake(unavailable_then(3, encode(StateEntry(b"v", "1"))))
    with mecha.Client(d.path) as c:
        started = time.monotonic()
        assert c.get("k") == StateEntry(b"v", "1")
        assert time.monotonic() - started >= 0.01  # backed off between tries
    gets = [h for h in d.requests if h[2] == 0x0101]
    assert len(gets) == 4 and len({h[3] for h in gets}) == 4
    # Each retry carries the deadline that is left, never more than the first.
    deadlines = [h[6] for h in gets]
    assert deadlines[0] <= 5000 and deadlines == sorted(deadlines, reverse=True)


def test_unconditional_write_is_not_retried_unless_asked(fake) -> None:
    d = fake(unavailable_then(1, encode(SetReply("2"))))
    with mecha.Client(d.path) as c:
        with pytest.raises(mecha.Unavailable) as e:
            c.set("k", b"v")
        assert e.value.retryable and "unavailable" in e.value.message
        assert c.set("k", b"v") == "2"  # the fake now answers OK
    d2 = fake(unavailable_then(1, encode(SetReply("3"))))
    with mecha.Client(d2.path) as c:
        assert c.set("k", b"v", retry=True) == "3"
        assert c.set("k", b"v", etag="2") == "3"  # conditional: retried by default


def test_locks_are_not_retried(fake) -> None:
    d = fake(unavailable_then(1, encode(TryLockReply(True, 9))))
    with mecha.Client(d.path) as c, pytest.raises(mecha.Unavailable):
        c.try_lock("r", "o", 1000)


def test_retry_stops_at_the_deadline(fake) -> None:
    d = fake(unavailable_then(10**9, b""))
    with mecha.Client(d.path) as c:
        started = time.monotonic()
        with pytest.raises(mecha.Unavailable):
            c.get("k", timeout=0.3)
        assert time.monotonic() - started < 0.6


def test_deadline_in_header_and_lock_wait(fake) -> None:
    d = fake(lambda s, h, p: [response(h, 0, encode(TryLockReply(True, 1)))])
    with mecha.Client(d.path, timeout=2.0) as c:
        c.try_lock("r", "o", 1000, wait_ms=3000)
    h = d.requests[-1]
    assert 4900 <= h[6] <= 5000  # timeout + wait (SPEC §7.4.1)
    assert h[1] == 0 and h[4] == 0 and h[5] == 0  # flags, status, ext of a request


def test_no_answer_is_a_client_side_deadline(fake) -> None:
    d = fake(lambda s, h, p: [])
    with mecha.Client(d.path) as c, pytest.raises(mecha.DeadlineExceeded):
        c.ping(timeout=0.05)


def test_connection_fatal_frame_and_reconnect(fake) -> None:
    seen: list[tuple] = []  # across connections (``state`` is per connection)

    def handler(state: list, h: tuple, payload: bytes) -> list[bytes]:
        seen.append(h)
        if len(seen) == 1:  # like §6.3: opcode 0, request id 0
            return [response((1, 0, 0, 0), 3, error_body("bad magic"), opcode=0)]
        return [response(h)]
    d = fake(handler)
    with mecha.Client(d.path) as c:
        with pytest.raises(mecha.InvalidArgument, match="bad magic"):
            c.ping()
        c.ping()  # a new connection
    assert sum(1 for h in d.requests if h[2] == 1) == 2  # two HELLOs


def test_payload_over_max_frame_is_refused_locally(fake) -> None:
    d = fake(lambda s, h, p: [response(h)])
    with mecha.Client(d.path) as c, pytest.raises(mecha.ResourceExhausted):
        c.set("k", bytes(4 << 20))


def test_asyncio_answers_out_of_order_and_streams(fake) -> None:
    def handler(state: list, h: tuple, payload: bytes) -> list[bytes]:
        if h[2] == 0x0401:  # hold 10 SEQ_NEXT requests, then answer in reverse
            state.append(h)
            if len(state) < 10:
                return []
            return [response(r, 0, encode(NextIdReply(r[3] * 100, 1))) for r in reversed(state)]
        if h[2] == 0x0202:  # a stream: OK with STREAM, two pushes, END
            push = lambda flags, body: response(h, 0, body, flags=flags)  # noqa: E731
            return [response(h, 0, b"", flags=0x03), push(0x02, b"one"), push(0x06, b"")]
        return [response(h)]
    d = fake(handler)

    async def main() -> None:
        async with mecha.aio.Client(d.path) as c:
            ids = await asyncio.gather(*[c.next_id("s") for _ in range(10)])
            rids = [h[3] for h in d.requests if h[2] == 0x0401]
            assert ids == [r * 100 for r in rids]  # each caller got its own answer
            from mecha import protocol as p
            op = p.Op(0x0202, b"", None, lambda x: x, False)
            _, stream = await c._open_stream(op)
            frames = [payload async for _, payload in stream]
            assert frames == [b"one", b""]
            await c.ping()
    asyncio.run(main())


def test_asyncio_connection_lost_fails_in_flight(fake) -> None:
    d = fake(lambda s, h, p: [])

    async def main() -> None:
        c = await mecha.aio.Client.connect(d.path)
        task = asyncio.ensure_future(c.ping(timeout=5))
        await asyncio.sleep(0.05)
        assert c._conn is not None
        c._conn.writer.transport.abort()
        with pytest.raises(mecha.MechaConnectionError):
            await task
        await c.close()
    asyncio.run(main())


# -- streams: resubscription and interleaving ----------------------------------------------

def _delivery(offset: int, attempt: int) -> bytes:
    from mecha.payloads import Delivery
    return encode(Delivery("ps", "t", "g", offset, attempt, f"id-{offset}", "", "", "", "", "",
                           "", b"data", [], True))


def pubsub_script(state: list, h: tuple, payload: bytes) -> list[bytes]:
    """Subscribe #1 opens, pushes offset 1 and is reset (END UNAVAILABLE); #2 is answered
    UNAVAILABLE; #3 opens and pushes offset 1 again. An ack is answered after a push of
    offset 2; STREAM_CANCEL is answered, then the stream's END OK."""
    from mecha.payloads import AckReply, SubscribeReply
    if h[2] == 0x0202:
        state.append(h)
        opened = response(h, 0, encode(SubscribeReply(len(state), "ps", "g")), flags=0x03)
        if len(state) == 1:
            return [opened, response(h, 0, _delivery(1, 1), flags=0x02),
                    response(h, 8, error_body("module pubsub restarted"), flags=0x06)]
        if len(state) == 2:
            return [response(h, 8, error_body("module pubsub is starting"))]
        return [opened, response(h, 0, _delivery(1, 2), flags=0x02)]
    if h[2] == 0x0203:
        return [response(state[-1], 0, _delivery(2, 1), flags=0x02),
                response(h, 0, encode(AckReply(1)))]
    if h[2] == 0x0006:
        return [response(h), response(state[-1], 0, b"", flags=0x06)]
    return [response(h)]


def test_subscription_resubscribes_after_reset(fake) -> None:
    d = fake(pubsub_script)
    with mecha.Client(d.path) as c:
        sub = c.subscribe("t", group="g")
        got = [sub.next(timeout=2) for _ in range(2)]
        assert [(x.offset, x.attempt) for x in got] == [(1, 1), (1, 2)]  # type: ignore[union-attr]
        assert sub.reply.subscription_id == 3
        assert sub.ack(got[1])  # type: ignore[arg-type]  # a push arrives before the answer
        assert sub.next(timeout=2).offset == 2  # type: ignore[union-attr]
        sub.cancel()
        assert sub.next() is None
    assert [h[2] for h in d.requests].count(0x0202) == 3


def test_asyncio_subscription_resubscribes_after_reset(fake) -> None:
    d = fake(pubsub_script)

    async def main() -> None:
        async with mecha.aio.Client(d.path) as c:
            sub = await c.subscribe("t", group="g")
            got = [await sub.next(timeout=2) for _ in range(2)]
            assert [(x.offset, x.attempt) for x in got] == [(1, 1), (1, 2)]  # type: ignore[union-attr]
            assert await sub.ack(got[1])  # type: ignore[arg-type]
            assert (await sub.next(timeout=2)).offset == 2  # type: ignore[union-attr]
            await sub.cancel()
            assert await sub.next() is None
    asyncio.run(main())


def test_subscription_error_end_is_raised(fake) -> None:
    from mecha.payloads import SubscribeReply

    def handler(state: list, h: tuple, payload: bytes) -> list[bytes]:
        if h[2] == 0x0202:
            return [response(h, 0, encode(SubscribeReply(1, "ps", "g")), flags=0x03),
                    response(h, 10, error_body("log unreadable"), flags=0x06)]
        return [response(h)]
    d = fake(handler)
    with mecha.Client(d.path) as c, c.subscribe("t") as sub:
        with pytest.raises(mecha.Internal, match="log unreadable"):
            sub.next(timeout=2)
        assert sub.next() is None


def config_script(state: list, h: tuple, payload: bytes) -> list[bytes]:
    """Watch #1: snapshot {a=1, b=2}, push seq 1 (a=10), then seq 3 (a gap). Watch #2:
    snapshot {a=10, c=3}, then END INTERNAL."""
    from mecha.payloads import ConfigGetReply, ConfigItem, ConfigUpdate

    def snap(**kv: str) -> bytes:
        return encode(ConfigGetReply([ConfigItem(k, v, "7") for k, v in kv.items()]))
    if h[2] == 0x0502:
        state.append(h)
        if len(state) == 1:
            return [response(h, 0, snap(a="1", b="2"), flags=0x03),
                    response(h, 0, encode(ConfigUpdate(1, [ConfigItem("a", "10", "8")], [])), flags=0x02),
                    response(h, 0, encode(ConfigUpdate(3, [], ["zz"])), flags=0x02)]
        return [response(h, 0, snap(a="10", c="3"), flags=0x03),
                response(h, 10, error_body("watch failed"), flags=0x06)]
    if h[2] == 0x0006:
        return [response(h), response(state[0], 0, b"", flags=0x06)]
    return [response(h)]


def test_config_watch_resyncs_on_seq_gap(fake) -> None:
    d = fake(config_script)
    with mecha.Client(d.path) as c, c.watch_config() as w:
        assert [i.key for i in w.snapshot] == ["a", "b"]
        u1 = w.next(timeout=2)
        assert u1 is not None and u1.seq == 1 and u1.items[0].value == "10"
        u2 = w.next(timeout=2)  # the diff of the new snapshot, renumbered
        assert u2 is not None and u2.seq == 2
        assert [i.key for i in u2.items] == ["c"] and u2.deleted == ["b"]
        assert sorted(w.items) == ["a", "c"]
        with pytest.raises(mecha.Internal):
            w.next(timeout=2)
    assert [h[2] for h in d.requests].count(0x0006) == 1


def test_asyncio_config_watch_resyncs_on_seq_gap(fake) -> None:
    d = fake(config_script)

    async def main() -> None:
        async with mecha.aio.Client(d.path) as c:
            w = await c.watch_config()
            u1, u2 = await w.next(timeout=2), await w.next(timeout=2)
            assert (u1.seq, u2.seq) == (1, 2)  # type: ignore[union-attr]
            assert [i.key for i in u2.items] == ["c"] and u2.deleted == ["b"]  # type: ignore[union-attr]
            with pytest.raises(mecha.Internal):
                await w.next(timeout=2)
    asyncio.run(main())



def _event(offset: int, attempt: int) -> bytes:
    from mecha.payloads import BindingEvent
    return encode(BindingEvent("nightly", offset, attempt, b"", [("time", f"t{offset}")]))


def binding_script(acks: list[bytes]):
    """Like ``pubsub_script`` for BINDING_SUBSCRIBE: #1 opens, pushes event 1 and is reset;
    #2 is answered UNAVAILABLE; #3 opens and pushes event 1 again (attempt 2). An ack's
    payload is kept in ``acks``, and it is answered after a push of event 2.
    BINDING_INVOKE answers its operation's name followed by its data, and its metadata."""
    from mecha.payloads import AckReply, BindingSubscribeReply, InvokeBindingReply, InvokeBindingRequest

    def handler(state: list, h: tuple, payload: bytes) -> list[bytes]:
        if h[2] == 0x0802:
            state.append(h)
            opened = response(h, 0, encode(BindingSubscribeReply(len(state), "nightly")), flags=0x03)
            if len(state) == 1:
                return [opened, response(h, 0, _event(1, 1), flags=0x02),
                        response(h, 8, error_body("module bindings restarted"), flags=0x06)]
            if len(state) == 2:
                return [response(h, 8, error_body("module bindings is starting"))]
            return [opened, response(h, 0, _event(1, 2), flags=0x02)]
        if h[2] == 0x0803:
            acks.append(payload)
            return [response(state[-1], 0, _event(2, 1), flags=0x02),
                    response(h, 0, encode(AckReply(1)))]
        if h[2] == 0x0801:
            req = decode(InvokeBindingRequest, payload)
            reply = InvokeBindingReply(req.operation.encode() + req.data, req.metadata)
            return [response(h, 0, encode(reply))]
        if h[2] == 0x0006:
            return [response(h), response(state[-1], 0, b"", flags=0x06)]
        return [response(h)]
    return handler


def test_binding_subscription_resubscribes_after_reset(fake) -> None:
    from mecha.payloads import AckItem, BindingAckRequest
    acks: list[bytes] = []
    d = fake(binding_script(acks))
    with mecha.Client(d.path) as c:
        r = c.invoke_binding("files", "get", "x", metadata={"fileName": "a.txt"})
        assert (r.data, r.metadata) == (b"getx", [("fileName", "a.txt")])
        sub = c.subscribe_binding("nightly", max_in_flight=4)
        got = [sub.next(timeout=2) for _ in range(2)]
        assert [(e.offset, e.attempt) for e in got] == [(1, 1), (1, 2)]  # type: ignore[union-attr]
        assert sub.reply.subscription_id == 3 and sub.reply.name == "nightly"
        assert sub.nack(got[1])  # type: ignore[arg-type]  # a push arrives before the answer
        assert sub.next(timeout=2).offset == 2  # type: ignore[union-attr]
        sub.cancel()
        assert sub.next() is None
    assert [h[2] for h in d.requests].count(0x0802) == 3
    # The nack named the event's binding, offset and attempt.
    assert acks == [encode(BindingAckRequest("nightly", [AckItem(1, 2)], True))]


def test_asyncio_binding_subscription_resubscribes_after_reset(fake) -> None:
    from mecha.payloads import AckItem, BindingAckRequest
    acks: list[bytes] = []
    d = fake(binding_script(acks))

    async def main() -> None:
        async with mecha.aio.Client(d.path) as c:
            r = await c.invoke_binding("files", "get", b"y")
            assert (r.data, r.metadata) == (b"gety", [])
            sub = await c.subscribe_binding("nightly")
            got = [await sub.next(timeout=2) for _ in range(2)]
            assert [(e.offset, e.attempt) for e in got] == [(1, 1), (1, 2)]  # type: ignore[union-attr]
            assert await sub.ack(got[1])  # type: ignore[arg-type]
            assert (await sub.next(timeout=2)).offset == 2  # type: ignore[union-attr]
            await sub.cancel()
            assert await sub.next() is None
    asyncio.run(main())
    assert acks == [encode(BindingAckRequest("nightly", [AckItem(1, 2)], False))]
