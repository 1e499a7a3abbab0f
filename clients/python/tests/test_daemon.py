"""Against the real mechad (fixture ``mechad`` in conftest.py), with its embedded default
configuration: durable state, lock and sequencer stores, and secrets from the
daemon's ``MECHA_SECRET_*`` environment."""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
import uuid

import pytest
from conftest import SECRET_VALUE

import mecha
import mecha.aio
from mecha import DeleteItem, SetItem, UnlockStatus


@pytest.fixture
def client(mechad: str):
    with mecha.Client(mechad) as c:
        yield c


@pytest.fixture
def key() -> str:
    """A key no other test uses: the daemon lives for the whole session."""
    return f"py-{uuid.uuid4().hex[:12]}"


def test_hello_and_status(client: mecha.Client) -> None:
    assert client.hello is not None and client.hello.version == 1
    assert client.hello.tenant.startswith("uid:") and client.hello.max_frame >= 4 << 20
    client.ping()
    st = client.status()
    assert st.pid > 0 and {m.name for m in st.modules} >= {"state", "lock", "sequencer", "secrets"}


def test_state_round_trip(client: mecha.Client, key: str) -> None:
    assert client.get(key) is None
    etag = client.set(key, b"\x00hello\xff")
    entry = client.get(key)
    assert entry is not None and entry.value == b"\x00hello\xff" and entry.etag == etag
    client.set(key, "text is stored as UTF-8: é")
    assert client.get(key).value == "text is stored as UTF-8: é".encode()  # type: ignore[union-attr]
    assert client.delete(key) is True
    assert client.delete(key) is False
    assert client.get(key) is None


def test_etag_conflict(client: mecha.Client, key: str) -> None:
    first = client.set(key, b"1")
    second = client.set(key, b"2", etag=first)
    assert second != first
    with pytest.raises(mecha.EtagMismatch) as e:
        client.set(key, b"3", etag=first)
    assert e.value.status == 2 and key in e.value.message
    with pytest.raises(mecha.EtagMismatch):
        client.delete(key, etag=first)
    assert client.get(key).value == b"2"  # type: ignore[union-attr]
    assert client.delete(key, etag=second) is True


def test_invalid_argument_and_store(client: mecha.Client, key: str) -> None:
    with pytest.raises(mecha.InvalidArgument):
        client.get("")
    with pytest.raises(mecha.InvalidArgument):
        client.set(key, b"x", ttl_ms=0)
    with pytest.raises(mecha.InvalidArgument, match="no-such-store"):
        client.get(key, store="no-such-store")


def test_ttl_expiry(client: mecha.Client, key: str) -> None:
    client.set(key, b"short-lived", ttl_ms=200)
    assert client.get(key) is not None
    deadline = time.monotonic() + 5
    while client.get(key) is not None:
        assert time.monotonic() < deadline, "key did not expire within 5 s"
        time.sleep(0.05)


def test_bulk_get_and_bulk_set(client: mecha.Client, key: str) -> None:
    etags = client.bulk_set([SetItem(f"{key}:a", b"A"), SetItem(f"{key}:b", b"B", ttl_ms=60000)])
    assert len(etags) == 2
    # A key asked twice is answered once, at its first place (SPEC §7.2.4).
    items = client.bulk_get([f"{key}:a", f"{key}:missing", f"{key}:b", f"{key}:a"])
    assert [i.key for i in items] == [f"{key}:a", f"{key}:missing", f"{key}:b"]
    assert [None if i.entry is None else i.entry.value for i in items] == [b"A", None, b"B"]
    assert items[0].entry.etag == etags[0]  # type: ignore[union-attr]


def test_transaction_atomicity(client: mecha.Client, key: str) -> None:
    a, b = f"{key}:a", f"{key}:b"
    etag_a = client.set(a, b"1")
    client.set(b, b"1")
    # The second op's ETag is stale, so the first op must not apply either.
    with pytest.raises(mecha.EtagMismatch):
        client.transact([SetItem(a, b"2", etag=etag_a), DeleteItem(b, etag="0")])
    assert client.get(a).value == b"1" and client.get(b) is not None  # type: ignore[union-attr]
    result = client.transact([SetItem(a, b"2", etag=etag_a), DeleteItem(b)])
    assert result[0] is not None and result[1] is None
    assert client.get(a).value == b"2" and client.get(b) is None  # type: ignore[union-attr]


def test_lock_exclusivity_and_fencing(client: mecha.Client, key: str) -> None:
    first = client.try_lock(key, "owner-1", 10_000)
    assert first.acquired and first.fencing_token >= 1
    assert not client.try_lock(key, "owner-2", 10_000).acquired
    assert not client.try_lock(key, "owner-1", 10_000).acquired  # re-acquire is not a grant
    assert client.unlock(key, "owner-2") is UnlockStatus.LOCK_BELONGS_TO_OTHERS
    ext = client.extend_lock(key, "owner-1", 10_000)
    assert ext.status is UnlockStatus.SUCCESS and ext.fencing_token == first.fencing_token
    assert client.unlock(key, "owner-1") is UnlockStatus.SUCCESS
    assert client.unlock(key, "owner-1") is UnlockStatus.LOCK_DOES_NOT_EXIST
    second = client.try_lock(key, "owner-2", 10_000)
    assert second.acquired and second.fencing_token > first.fencing_token
    # A waiting try_lock gets the lock once the lease ends.
    third = client.try_lock(key, "owner-3", 5_000, wait_ms=0)
    assert not third.acquired and third.fencing_token == 0
    client.extend_lock(key, "owner-2", 150)
    waited = client.try_lock(key, "owner-3", 5_000, wait_ms=3_000)
    assert waited.acquired and waited.fencing_token > second.fencing_token


def test_sequencer_monotonic(client: mecha.Client, key: str) -> None:
    ids = [client.next_id(key) for _ in range(20)]
    block = client.next_ids(key, 1000)
    assert len(block) == 1000 and block[0] > ids[-1]
    after = client.next_id(key)
    assert all(x < y for x, y in zip(ids, ids[1:], strict=False)) and after > block[-1]
    with pytest.raises(mecha.InvalidArgument):
        client.next_ids(key, 0)


def test_secret_get(client: mecha.Client) -> None:
    assert client.get_secret("DB_PASSWORD") == {"DB_PASSWORD": SECRET_VALUE}
    assert client.get_secret("NO_SUCH_SECRET") is None
    assert client.bulk_get_secrets()["DB_PASSWORD"] == {"DB_PASSWORD": SECRET_VALUE}


def test_admin_module_restart_and_reload(client: mecha.Client, key: str) -> None:
    """The tests run as the daemon's own uid, so they are admins (SPEC §6.10)."""
    client.set(key, b"survives")
    before = {m.name: m for m in client.status().modules}
    pid = client.module_restart("sequencer")
    assert pid > 0 and pid != before["sequencer"].pid
    assert client.next_id(key) >= 1
    with pytest.raises(mecha.NotFound):
        client.module_restart("no-such-module")
    reloaded = client.reload()
    assert reloaded.stopped == [] and "state" in reloaded.unchanged
    assert client.get(key).value == b"survives"  # type: ignore[union-attr]


def test_asyncio_pipelined(mechad: str, key: str) -> None:
    async def main() -> None:
        async with mecha.aio.Client(mechad) as c:
            await c.set(key, b"0")
            writes = [c.set(f"{key}:{i}", str(i)) for i in range(100)]
            assert len(set(await asyncio.gather(*writes))) == 100
            reads = await asyncio.gather(*[c.get(f"{key}:{i}") for i in range(100)])
            assert [r.value for r in reads] == [str(i).encode() for i in range(100)]  # type: ignore[union-attr]
            ids = await asyncio.gather(*[c.next_id(key) for _ in range(100)])
            assert len(set(ids)) == 100
            assert (await c.get_secret("DB_PASSWORD")) == {"DB_PASSWORD": SECRET_VALUE}
            assert (await c.try_lock(key, "a", 5000)).acquired
            assert await c.unlock(key, "a") is UnlockStatus.SUCCESS
            assert await c.get(f"{key}:missing") is None
    asyncio.run(main())


def test_daemon_absent() -> None:
    path = os.path.join(tempfile.mkdtemp(prefix="mecha-none-"), "mecha.sock")
    with pytest.raises(mecha.MechaConnectionError) as e:
        mecha.Client(path)
    assert str(e.value) == f"is mechad running? socket: {path}"

    async def main() -> None:
        with pytest.raises(mecha.MechaConnectionError, match="is mechad running"):
            await mecha.aio.Client.connect(path)
    asyncio.run(main())
