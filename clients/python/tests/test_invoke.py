"""Service invocation (SPEC §7.8) against the real mechad: the sync and asyncio
callers, registrations answered by hand and by ``serve``, and error statuses."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import mecha
import mecha.aio
from mecha import errors


@pytest.fixture
def client(mechad: str) -> Iterator[mecha.Client]:
    with mecha.Client(mechad) as c:
        yield c


def app() -> str:
    return f"py-{uuid.uuid4().hex[:10]}"


def test_invoke_a_registration_answered_by_hand(client: mecha.Client) -> None:
    name = app()
    with client.register(name) as reg:
        assert reg.app_id == name
        assert any(a.app_id == name and a.local for a in client.apps())
        got: dict[str, object] = {}

        def callee() -> None:
            call = reg.next_call(timeout=10)
            assert call is not None
            got["call"] = call
            reg.reply(call, call.data.upper(), content_type="text/plain")
            call = reg.next_call(timeout=10)
            assert call is not None
            reg.fail(call, errors.InvalidArgument("no such order"))

        t = threading.Thread(target=callee)
        t.start()
        with mecha.Client(client.path) as caller:
            reply = caller.invoke_reply(name, "shout", b"hi", content_type="text/plain",
                                        metadata={"k": "v"}, caller_app_id="")
            assert reply.data == b"HI" and reply.content_type == "text/plain"
            with pytest.raises(errors.InvalidArgument, match="no such order"):
                caller.invoke(name, "order", "x")
        t.join(10)
        call = got["call"]
        assert isinstance(call, mecha.Call)
        assert (call.app_id, call.method, call.data, call.content_type) == (
            name, "shout", b"hi", "text/plain")
        assert ("k", "v") in call.metadata and call.trace_parent.startswith("00-")


def test_serve_and_stop(client: mecha.Client) -> None:
    name = app()
    reg = client.register(name)

    def handler(call: mecha.Call) -> bytes:
        if call.method == "boom":
            raise RuntimeError("kaput")
        return call.data[::-1]

    t = threading.Thread(target=reg.serve, args=(handler,))
    t.start()
    assert client.invoke(name, "reverse", b"abc") == b"cba"
    with pytest.raises(errors.Internal, match="kaput"):
        client.invoke(name, "boom")
    reg.stop()
    t.join(10)
    assert not t.is_alive()
    with pytest.raises(errors.NotFound):
        client.invoke(name, "reverse", b"abc", timeout=2)


def test_unknown_app_is_not_found(client: mecha.Client) -> None:
    with pytest.raises(errors.NotFound):
        client.invoke(app(), "anything", b"")
    with pytest.raises(errors.InvalidArgument):
        client.invoke("", "m")


def test_asyncio_invoke_and_serve(mechad: str) -> None:
    name = app()

    async def main() -> None:
        async with mecha.aio.Client(mechad) as callee, mecha.aio.Client(mechad) as caller:
            async def handler(call: mecha.Call) -> bytes:
                await asyncio.sleep(0.01)
                return b"echo:" + call.data

            server = asyncio.create_task(callee.serve(name, handler))
            for _ in range(100):  # until the registration is in place
                if any(a.app_id == name for a in await caller.apps()):
                    break
                await asyncio.sleep(0.02)
            results = await asyncio.gather(*(caller.invoke(name, "m", f"{i}") for i in range(5)))
            assert results == [f"echo:{i}".encode() for i in range(5)]
            server.cancel()
            with pytest.raises(asyncio.CancelledError):
                await server

            # By hand, on the same connection as the caller: the reader keeps going.
            reg = await caller.register(name)
            pending = asyncio.create_task(caller.invoke(name, "hello", b"x"))
            call = await reg.next_call(timeout=5)
            assert call is not None and call.method == "hello"
            await reg.reply(call, b"y")
            assert await pending == b"y"
            pending = asyncio.create_task(caller.invoke(name, "nope"))
            call = await reg.next_call(timeout=5)
            assert call is not None
            await reg.fail(call, errors.PermissionDenied("not you"))
            with pytest.raises(errors.PermissionDenied, match="not you"):
                await pending
            await reg.cancel()
            assert await reg.next_call(timeout=1) is None
            with pytest.raises(errors.NotFound):
                await caller.invoke(name, "hello")
            await caller.ping()
    asyncio.run(main())


def test_module_restart_registers_again(client: mecha.Client) -> None:
    """A hot restart of the invoke module ends the registration with UNAVAILABLE
    (SPEC §7.8.1): ``next_call`` registers again and the app id is served again."""
    name = app()
    with client.register(name) as reg:
        client.module_restart("invoke")
        done: dict[str, bytes] = {}

        def caller() -> None:
            with mecha.Client(client.path) as c:
                for _ in range(100):  # until the new registration is in place
                    try:
                        done["reply"] = c.invoke(name, "m", b"again", timeout=2)
                        return
                    except (errors.NotFound, errors.Unavailable):
                        time.sleep(0.05)

        t = threading.Thread(target=caller)
        t.start()
        call = reg.next_call(timeout=30)
        assert call is not None and call.data == b"again"
        reg.reply(call, b"ok")
        t.join(10)
        assert done.get("reply") == b"ok"
