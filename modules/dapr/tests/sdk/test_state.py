"""The state API through the official Dapr Python SDK's ``DaprClient``: reads, bulk reads,
saves with ETags (first-write and last-write), TTL, deletes, bulk deletes and transactions,
answered with Dapr's codes, and values that agree with mecha's own client."""

from __future__ import annotations

import json
import time

import grpc
import mecha
import pytest
from dapr.clients import DaprClient
from dapr.clients.grpc._request import TransactionalStateOperation, TransactionOperationType
from dapr.clients.grpc._state import Concurrency, StateItem, StateOptions
from dapr.proto import api_service_v1, api_v1, common_v1

from conftest import NOBODY, Mechad, run_as

STORE = "statestore"


def test_a_saved_value_reads_back_with_its_etag(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "order-1", b"\x00binary\xff")
        got = d.get_state(STORE, "order-1")
        assert got.data == b"\x00binary\xff"
        assert got.etag
        # A missing key is an empty answer, not an error.
        missing = d.get_state(STORE, "no-such-key")
        assert missing.data == b"" and missing.etag == ""


def test_values_agree_with_the_native_client(dapr_env: Mechad) -> None:
    with DaprClient() as d, mecha.Client(dapr_env.socket) as native:
        d.save_state(STORE, "shared-1", "from dapr")
        entry = native.get("shared-1", store=STORE)
        assert entry is not None and entry.value == b"from dapr"
        # The ETag is the store's own: the native client sees the same one.
        assert entry.etag == d.get_state(STORE, "shared-1").etag


def test_a_stale_etag_is_aborted(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "counter", "1")
        first = d.get_state(STORE, "counter").etag
        d.save_state(STORE, "counter", "2", etag=first)
        with pytest.raises(grpc.RpcError) as stale:
            d.save_state(STORE, "counter", "3", etag=first)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        assert d.get_state(STORE, "counter").data == b"2"
        # First-write concurrency with the current ETag succeeds.
        current = d.get_state(STORE, "counter").etag
        first_write = StateOptions(concurrency=Concurrency.first_write)
        d.save_state(STORE, "counter", "3", etag=current, options=first_write)
        # Last-write concurrency ignores a stale ETag, as Dapr's stores do.
        last_write = StateOptions(concurrency=Concurrency.last_write)
        d.save_state(STORE, "counter", "4", etag=first, options=last_write)
        assert d.get_state(STORE, "counter").data == b"4"
        # First-write without an ETag ("only if absent") cannot be served by mecha: refused.
        with pytest.raises(grpc.RpcError) as refused:
            d.save_state(STORE, "counter", "5", options=first_write)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "first-write" in refused.value.details()


def test_ttl_in_seconds_expires_the_key(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "short-lived", "soon gone", state_metadata={"ttlInSeconds": "1"})
        assert d.get_state(STORE, "short-lived").data == b"soon gone"
        deadline = time.monotonic() + 20
        while d.get_state(STORE, "short-lived").data:
            assert time.monotonic() < deadline, "the key did not expire"
            time.sleep(0.05)
        with pytest.raises(grpc.RpcError) as bad:
            d.save_state(STORE, "k", "v", state_metadata={"ttlInSeconds": "soon"})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_unknown_metadata_is_refused_by_name(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        with pytest.raises(grpc.RpcError) as bad:
            d.save_state(STORE, "k", "v", state_metadata={"queryIndexName": "x"})
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "queryIndexName" in bad.value.details()
        # Dapr's optional hints are accepted.
        d.save_state(STORE, "k", "v", state_metadata={"contentType": "text/plain"})


def test_bulk_save_and_bulk_get(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_bulk_state(STORE, [StateItem("bulk-a", "A"), StateItem("bulk-b", b"B")])
        got = d.get_bulk_state(STORE, ["bulk-a", "bulk-b", "bulk-missing", "bulk-a"], parallelism=4)
        by_key = {i.key: i for i in got.items}
        assert [i.key for i in got.items] == ["bulk-a", "bulk-b", "bulk-missing"]
        assert by_key["bulk-a"].data == b"A" and by_key["bulk-a"].etag
        assert by_key["bulk-b"].data == b"B"
        assert by_key["bulk-missing"].data == b"" and by_key["bulk-missing"].etag == ""
        assert all(i.error == "" for i in got.items)


def test_delete_with_and_without_etag(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "doomed", "x")
        etag = d.get_state(STORE, "doomed").etag
        d.save_state(STORE, "doomed", "y")
        with pytest.raises(grpc.RpcError) as stale:
            d.delete_state(STORE, "doomed", etag=etag)
        assert stale.value.code() == grpc.StatusCode.ABORTED
        d.delete_state(STORE, "doomed", etag=d.get_state(STORE, "doomed").etag)
        assert d.get_state(STORE, "doomed").data == b""
        # Deleting a missing key is not an error.
        d.delete_state(STORE, "doomed")


def test_delete_bulk_state(dapr_env: Mechad) -> None:
    # The SDK has no wrapper for DeleteBulkState; its generated stub does.
    with DaprClient() as d:
        d.save_bulk_state(STORE, [StateItem("gone-1", "1"), StateItem("gone-2", "2")])
    with grpc.insecure_channel(dapr_env.grpc_tcp) as ch:
        stub = api_service_v1.DaprStub(ch)
        stub.DeleteBulkState(api_v1.DeleteBulkStateRequest(
            store_name=STORE, states=[common_v1.StateItem(key="gone-1"),
                                      common_v1.StateItem(key="gone-2")]))
    with DaprClient() as d:
        assert d.get_state(STORE, "gone-1").data == b""
        assert d.get_state(STORE, "gone-2").data == b""


def test_a_transaction_applies_all_or_nothing(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "tx-old", "old")
        d.execute_state_transaction(STORE, [
            TransactionalStateOperation(key="tx-new", data="new"),
            TransactionalStateOperation(key="tx-old", operation_type=TransactionOperationType.delete),
        ])
        assert d.get_state(STORE, "tx-new").data == b"new"
        assert d.get_state(STORE, "tx-old").data == b""
        stale = d.get_state(STORE, "tx-new").etag
        d.save_state(STORE, "tx-new", "newer")
        with pytest.raises(grpc.RpcError) as failed:
            d.execute_state_transaction(STORE, [
                TransactionalStateOperation(key="tx-other", data="never"),
                TransactionalStateOperation(key="tx-new", data="lost", etag=stale),
            ])
        assert failed.value.code() == grpc.StatusCode.ABORTED
        assert d.get_state(STORE, "tx-other").data == b""
        assert d.get_state(STORE, "tx-new").data == b"newer"


def test_an_unknown_store_is_invalid_argument(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        with pytest.raises(grpc.RpcError) as unknown:
            d.get_state("no-such-store", "k")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_uid_cannot_see_or_change_the_state(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        d.save_state(STORE, "mine", "root's secret plan")
    script = """
        import json
        from dapr.clients import DaprClient
        with DaprClient() as d:
            seen = d.get_state("statestore", "mine").data.decode()
            bulk = [i.data.decode() for i in d.get_bulk_state("statestore", ["mine"]).items]
            d.save_state("statestore", "mine", "nobody was here")
            d.delete_state("statestore", "mine")
            print(json.dumps({"seen": seen, "bulk": bulk}))
        """
    done = run_as(NOBODY, script, dapr_env.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"seen": "", "bulk": [""]}
    with DaprClient() as d:
        assert d.get_state(STORE, "mine").data == b"root's secret plan"
