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
from mecha.codec import encode
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
