"""The distributed lock API (alpha1) through ``DaprClient``: a lock contended by two owners,
Dapr's unlock statuses, and locks that belong to one uid only."""

from __future__ import annotations

import json
import warnings

import grpc
import pytest
from dapr.clients import DaprClient
from dapr.clients.grpc._response import UnlockResponseStatus

from conftest import NOBODY, Mechad, run_as

STORE = "lockstore"

# The SDK warns on every call that the lock API is alpha.
pytestmark = pytest.mark.filterwarnings("ignore:The Distributed Lock API")


def test_a_lock_contended_by_two_owners(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        assert d.try_lock(STORE, "invoice-7", "worker-1", 60).success
        # The second owner is refused while the first holds it (and so is the first, again).
        assert not d.try_lock(STORE, "invoice-7", "worker-2", 60).success
        assert d.unlock(STORE, "invoice-7", "worker-2").status == \
            UnlockResponseStatus.lock_belongs_to_others
        assert d.unlock(STORE, "invoice-7", "worker-1").status == UnlockResponseStatus.success
        assert d.unlock(STORE, "invoice-7", "worker-1").status == \
            UnlockResponseStatus.lock_does_not_exist
        # Released, the lock goes to the second owner.
        assert d.try_lock(STORE, "invoice-7", "worker-2", 60).success
        assert d.unlock(STORE, "invoice-7", "worker-2").status == UnlockResponseStatus.success


def test_the_sdks_with_statement_unlocks(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        with d.try_lock(STORE, "scoped", "owner-a", 60) as lock:
            assert lock
            assert not d.try_lock(STORE, "scoped", "owner-b", 60).success
        assert d.try_lock(STORE, "scoped", "owner-b", 60).success
        d.unlock(STORE, "scoped", "owner-b")


def test_bad_requests_are_invalid_argument(dapr_env: Mechad) -> None:
    # The SDK checks blank names and expiry itself; these reach the personality.
    with DaprClient() as d:
        with pytest.raises(grpc.RpcError) as unknown:
            d.try_lock("no-such-lock-store", "r", "o", 10)
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as too_long:
            d.try_lock(STORE, "r", "o", 10 * 24 * 3600)
        assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_uid_has_locks_of_its_own(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        assert d.try_lock(STORE, "per-tenant", "root-owner", 60).success
    script = """
        import json, warnings
        warnings.simplefilter("ignore")
        from dapr.clients import DaprClient
        with DaprClient() as d:
            unlocked = d.unlock("lockstore", "per-tenant", "root-owner").status.name
            got = d.try_lock("lockstore", "per-tenant", "nobody-owner", 60).success
            print(json.dumps({"unlock": unlocked, "lock": got}))
        """
    done = run_as(NOBODY, script, dapr_env.env())
    assert done.returncode == 0, done.stderr
    # Nobody's namespace has no such lock, and taking its own does not touch root's.
    assert json.loads(done.stdout) == {"unlock": "lock_does_not_exist", "lock": True}
    with DaprClient() as d, warnings.catch_warnings():
        assert not d.try_lock(STORE, "per-tenant", "another-root-owner", 60).success
        assert d.unlock(STORE, "per-tenant", "root-owner").status == UnlockResponseStatus.success
