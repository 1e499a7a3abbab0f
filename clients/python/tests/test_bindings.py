"""Bindings against the real mechad, configured with a ``bindings.localstorage`` output
binding ``files`` over an empty directory and a ``bindings.cron`` input binding
``ticks`` that fires every second."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import run_mechad

import mecha
import mecha.aio

# How long a test waits for a tick (one comes every second); it only bounds a failure.
PATIENCE = 20.0


@pytest.fixture(scope="module")
def bindings_daemon() -> Iterator[str]:
    root = tempfile.mkdtemp(prefix="mecha-py-files-")
    config = "".join(
        "apiVersion: dapr.io/v1alpha1\nkind: Component\n"
        f"metadata: {{name: {name}}}\nspec: {{type: {kind}, version: v1, metadata: [{meta}]}}\n---\n"
        for name, kind, meta in [
            # Bindings that reach outside mecha serve nobody without allowedTenants.
            ("files", "bindings.localstorage",
             f'{{name: rootPath, value: "{root}"}}, {{name: allowedTenants, value: "*"}}'),
            ("ticks", "bindings.cron", '{name: schedule, value: "@every 1s"}'),
        ])
    try:
        with run_mechad(config) as sock:
            yield sock
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def client(bindings_daemon: str) -> Iterator[mecha.Client]:
    with mecha.Client(bindings_daemon) as c:
        yield c


def test_localstorage_round_trip(client: mecha.Client) -> None:
    created = client.invoke_binding("files", "create", "hello from Python",
                                    metadata={"fileName": "py.txt"})
    assert created.data == b"" and created.metadata == [("fileName", "py.txt")]
    got = client.invoke_binding("files", "get", metadata=[("fileName", "py.txt")])
    assert got.data == b"hello from Python"
    assert "py.txt" in json.loads(client.invoke_binding("files", "list").data)
    client.invoke_binding("files", "delete", metadata={"fileName": "py.txt"})
    with pytest.raises(mecha.NotFound):
        client.invoke_binding("files", "get", metadata={"fileName": "py.txt"})
    with pytest.raises(mecha.InvalidArgument):
        client.invoke_binding("ticks", "get")  # an input binding
    with pytest.raises(mecha.NotFound):
        client.invoke_binding("no-such-binding", "get")


def _next_tick(sub: mecha.BindingSubscription, offset: int | None = None) -> mecha.BindingEvent:
    """The next event (with ``offset``, if given; others are acknowledged on the way)."""
    deadline = time.monotonic() + PATIENCE
    while True:
        event = sub.next(timeout=max(deadline - time.monotonic(), 0.001))
        assert event is not None
        if offset is None or event.offset == offset:
            return event
        sub.ack(event)


def test_cron_ticks_are_acked_and_nacked(client: mecha.Client) -> None:
    with client.subscribe_binding("ticks", max_in_flight=8) as sub:
        assert sub.reply.name == "ticks"
        tick = _next_tick(sub)
        assert (tick.name, tick.attempt, tick.data) == ("ticks", 1, b"")
        time_entry = dict(tick.metadata)["time"]
        assert time_entry.endswith("Z") and len(time_entry) >= 20
        assert sub.ack(tick) is True
        assert client.ack_binding(tick) == 0  # already acknowledged
        nacked = _next_tick(sub)
        assert sub.nack(nacked) is True
        again = _next_tick(sub, nacked.offset)
        assert again.attempt == nacked.attempt + 1
        assert sub.ack(again) is True


def test_asyncio_cron_subscription(bindings_daemon: str) -> None:
    async def main() -> None:
        async with mecha.aio.Client(bindings_daemon) as c:
            r = await c.invoke_binding("files", "list")
            assert isinstance(json.loads(r.data), list)
            sub = await c.subscribe_binding("ticks")
            event = await sub.next(timeout=PATIENCE)
            assert event is not None and "time" in dict(event.metadata)
            assert await sub.ack(event)
            await sub.cancel()
            assert await sub.next() is None
    asyncio.run(main())
