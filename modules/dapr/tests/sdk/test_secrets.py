"""The secrets API through ``DaprClient``: a secret and the bulk read, from a store whose
allow list admits only the test's uid, so another uid is refused."""

from __future__ import annotations

import grpc
import pytest
from dapr.clients import DaprClient

from conftest import NOBODY, SECRET_VALUE, Mechad, run_as

STORE = "secretstore"


def test_get_secret(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        got = d.get_secret(STORE, "DB_PASSWORD")
    assert got.secret == {"DB_PASSWORD": SECRET_VALUE}


def test_get_bulk_secret(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        got = d.get_bulk_secret(STORE)
    assert got.secrets["DB_PASSWORD"] == {"DB_PASSWORD": SECRET_VALUE}


def test_missing_secret_and_unknown_store(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        with pytest.raises(grpc.RpcError) as missing:
            d.get_secret(STORE, "NO_SUCH_SECRET")
        # Dapr answers a secret its store lacks as a failed read.
        assert missing.value.code() == grpc.StatusCode.INTERNAL
        with pytest.raises(grpc.RpcError) as unknown:
            d.get_secret("no-such-secret-store", "DB_PASSWORD")
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as meta:
            d.get_secret(STORE, "DB_PASSWORD", secret_metadata={"version_id": "2"})
        assert meta.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_uid_is_refused(dapr_env: Mechad) -> None:
    script = """
        import grpc
        from dapr.clients import DaprClient
        with DaprClient() as d:
            try:
                d.get_secret("secretstore", "DB_PASSWORD")
                print("served")
            except grpc.RpcError as e:
                print(e.code().name)
        """
    done = run_as(NOBODY, script, dapr_env.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "PERMISSION_DENIED"
