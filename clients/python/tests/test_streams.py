"""Pub/sub and configuration against the real mechad (embedded default: ``pubsub.redb``
store ``pubsub``, ``configuration.memory`` store ``configstore``)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

import mecha
import mecha.aio


@pytest.fixture
def client(mechad: str):
    with mecha.Client(mechad) as c:
        yield c


@pytest.fixture
def topic() -> str:
    return f"py-topic-{uuid.uuid4().hex[:12]}"


def test_publish_subscribe_ack(client: mecha.Client, topic: str) -> None:
    sent = client.publish(topic, b"\x00hello", content_type="text/plain",
                          metadata={"partitionKey": "k1"})
    assert sent.offset >= 1 and sent.id
    with client.subscribe(topic, group="g1", max_in_flight=8) as sub:
        assert sub.reply.store == "pubsub" and sub.reply.group == "g1"
        d = sub.next(timeout=5)
        assert d is not None
        assert (d.topic, d.group, d.offset, d.attempt) == (topic, "g1", sent.offset, 1)
        assert d.data == b"\x00hello" and d.id == sent.id and not d.raw
        assert d.data_content_type == "text/plain" and d.spec_version == "1.0"
        assert d.source == f"mecha://{client.hello.tenant}"  # type: ignore[union-attr]
        assert d.metadata == [("partitionKey", "k1")]
        # The client keeps serving other calls while the subscription waits.
        second = client.publish(topic, "two")
        assert sub.next(timeout=5).data == b"two"  # type: ignore[union-attr]
        assert sub.ack(d) is True
        with pytest.raises(TimeoutError):
            sub.next(timeout=0.3)
    # Acked from any connection; the unacked second message comes back to a new member.
    with client.subscribe(topic, group="g1") as sub:
        again = sub.next(timeout=5)
        assert again is not None and again.offset == second.offset and again.attempt >= 2
        assert client.ack(again) == 1
        with pytest.raises(TimeoutError):
            sub.next(timeout=0.3)


def test_nack_redelivers_with_next_attempt(client: mecha.Client, topic: str) -> None:
    client.publish(topic, b"retry me", raw=True)
    with client.subscribe(topic) as sub:
        first = sub.next(timeout=5)
        assert first is not None and first.raw and first.source == "" and first.group == "default"
        assert sub.nack(first) is True
        second = sub.next(timeout=5)
        assert second is not None and second.offset == first.offset
        assert second.attempt == first.attempt + 1
        assert sub.nack(first) is False  # stale: already delivered again
        assert sub.ack(second) is True


def test_two_groups_both_receive(client: mecha.Client, topic: str) -> None:
    a = client.subscribe(topic, group="a")
    b = client.subscribe(topic, group="b")
    try:
        sent = client.publish(topic, b"fan-out")
        for sub, group in ((a, "a"), (b, "b")):
            d = sub.next(timeout=5)
            assert d is not None and d.group == group and d.offset == sent.offset
            assert sub.ack(d)
    finally:
        a.close()
        b.close()


def test_cancel_ends_subscription(client: mecha.Client, topic: str) -> None:
    sub = client.subscribe(topic)
    client.publish(topic, b"x")
    assert sub.next(timeout=5) is not None
    sub.cancel()
    assert sub.next(timeout=1) is None
    assert list(sub) == []
    sub.cancel()  # idempotent


def test_publish_errors(client: mecha.Client) -> None:
    with pytest.raises(mecha.InvalidArgument):
        client.publish("", b"x")
    with pytest.raises(mecha.InvalidArgument, match="no-such-store"):
        client.subscribe("t", store="no-such-store")


def test_config_set_get_watch(client: mecha.Client) -> None:
    k = f"py-cfg-{uuid.uuid4().hex[:12]}"
    v1 = client.config_set({f"{k}:a": "1", f"{k}:b": "2"})
    assert len(v1) == 2 and v1[0] == v1[1]
    items = client.config_get([f"{k}:b", f"{k}:missing", f"{k}:a"])
    assert [(i.key, i.value) for i in items] == [(f"{k}:b", "2"), (f"{k}:a", "1")]
    with client.watch_config([f"{k}:a", f"{k}:b", f"{k}:c"]) as w:
        assert {i.key: i.value for i in w.snapshot} == {f"{k}:a": "1", f"{k}:b": "2"}
        client.config_set([mecha.ConfigSetItem(f"{k}:c", "3", [("owner", "py")])],
                          delete=[f"{k}:b"])
        upd = w.next(timeout=5)
        assert upd is not None and upd.seq == 1 and upd.deleted == [f"{k}:b"]
        assert [(i.key, i.value, i.metadata) for i in upd.items] == [(f"{k}:c", "3", [("owner", "py")])]
        client.config_set({f"{k}:unwatched": "x", f"{k}:a": "10"})
        upd = w.next(timeout=5)
        assert upd is not None and upd.seq == 2 and [i.value for i in upd.items] == ["10"]
        assert sorted(w.items) == [f"{k}:a", f"{k}:c"]
        w.cancel()
        assert w.next(timeout=1) is None
    with pytest.raises(mecha.InvalidArgument):
        client.config_get([""])


def test_asyncio_pubsub_and_config(mechad: str, topic: str) -> None:
    k = f"py-cfg-{uuid.uuid4().hex[:12]}"

    async def main() -> None:
        async with mecha.aio.Client(mechad) as c:
            sub = await c.subscribe(topic, group="aio")
            watch = await c.watch_config([k])
            assert watch.snapshot == []
            sent = [await c.publish(topic, f"m{i}") for i in range(3)]
            got = []
            async for d in sub:
                got.append(d)
                if d.data == b"m1" and d.attempt == 1:
                    assert await sub.nack(d)
                else:
                    assert await sub.ack(d)
                if len(got) == 4:
                    break
            assert [(d.data, d.attempt) for d in got] == [
                (b"m0", 1), (b"m1", 1), (b"m1", 2), (b"m2", 1)] or \
                sorted((d.offset, d.attempt) for d in got) == sorted(
                    [(sent[0].offset, 1), (sent[1].offset, 1), (sent[1].offset, 2), (sent[2].offset, 1)])
            await c.config_set({k: "on"})
            upd = await watch.next(timeout=5)
            assert upd is not None and upd.items[0].value == "on"
            assert [i.value for i in await c.config_get([k])] == ["on"]
            await sub.cancel()
            assert await sub.next(timeout=1) is None
            await watch.cancel()
            assert [u async for u in watch] == []
            await c.ping()  # the connection is still fine
    asyncio.run(main())


def test_module_restart_resubscribes_transparently(client: mecha.Client, topic: str) -> None:
    """A hot restart ends every stream with UNAVAILABLE (SPEC §6.11): the subscription
    opens again and gets the unacked message back; the watch reports what the
    restarted in-memory configuration store lost."""
    k = f"py-cfg-{uuid.uuid4().hex[:12]}"
    client.config_set({k: "v"})
    sent = client.publish(topic, b"unacked")
    with client.subscribe(topic) as sub, client.watch_config([k]) as w:
        first = sub.next(timeout=5)
        assert first is not None and first.offset == sent.offset
        client.module_restart("pubsub")
        again = sub.next(timeout=30)
        assert again is not None and again.offset == sent.offset
        assert sub.ack(again)
        client.module_restart("config")
        upd = w.next(timeout=30)
        assert upd is not None and upd.seq == 1 and upd.deleted == [k] and upd.items == []
