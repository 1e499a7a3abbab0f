"""The metadata API through ``DaprClient``: the components the caller's tenant may use,
with their types, the caller's tenant, its app id, and the runtime's version."""

from __future__ import annotations

import os

import grpc
from dapr.clients import DaprClient
from dapr.proto import api_service_v1, api_v1

import json

from conftest import NOBODY, Mechad, run_as, run_mechad


def test_get_metadata_lists_the_components(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        meta = d.get_metadata()
    types = {c.name: c.type for c in meta.registered_components}
    assert types["statestore"] == "state.redb"
    assert types["lockstore"] == "lock.redb"
    assert types["configstore"] == "configuration.memory"
    assert types["secretstore"] == "secretstores.local.env"
    assert types["pubsub"] == "pubsub.redb"
    state = next(c for c in meta.registered_components if c.name == "statestore")
    assert {"ETAG", "TRANSACTIONAL", "TTL"} <= set(state.capabilities)
    # The personality itself is no Dapr component.
    assert "dapr" not in types
    assert meta.extended_metadata["mecha.tenant"] == f"uid:{os.geteuid()}"


def test_the_runtime_version_is_the_daemons(mechad: Mechad) -> None:
    with grpc.insecure_channel(mechad.grpc_tcp) as ch:
        got = api_service_v1.DaprStub(ch).GetMetadata(api_v1.GetMetadataRequest())
    assert got.runtime_version


def test_another_tenant_sees_only_what_it_may_use() -> None:
    """The secret store admits only root's tenant (``allowedTenants``), a tenant with an
    allow list sees only those families, and a tenant's app id is its rule's."""
    settings = f"""
        tenants:
        - {{name: readers, uids: [{NOBODY}], allow: [STATE_GET, lock], appIds: [reader-app]}}
        """
    with run_mechad(settings=settings) as d:
        script = """
            import json
            from dapr.clients import DaprClient
            with DaprClient() as c:
                m = c.get_metadata()
                print(json.dumps({"id": m.application_id,
                                  "names": sorted(x.name for x in m.registered_components)}))
            """
        done = run_as(NOBODY, script, d.env())
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {
            "id": "reader-app", "names": ["lockstore", "statestore"]}
