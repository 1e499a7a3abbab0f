"""The metadata API through ``DaprClient``: the components of the daemon with their Dapr
types, the caller's tenant, and the runtime's version."""

from __future__ import annotations

import os

import grpc
from dapr.clients import DaprClient
from dapr.proto import api_service_v1, api_v1

from conftest import Mechad


def test_get_metadata_lists_the_components(dapr_env: Mechad) -> None:
    with DaprClient() as d:
        meta = d.get_metadata()
    types = {c.name: c.type for c in meta.registered_components}
    assert types["statestore"] == "state"
    assert types["lockstore"] == "lock"
    assert types["configstore"] == "configuration"
    assert types["secretstore"] == "secretstores"
    assert types["pubsub"] == "pubsub"
    state = next(c for c in meta.registered_components if c.name == "statestore")
    assert {"ETAG", "TRANSACTIONAL", "TTL"} <= set(state.capabilities)
    # The personality itself is no Dapr component.
    assert "dapr" not in types
    assert meta.extended_metadata["mecha.tenant"] == f"uid:{os.geteuid()}"


def test_the_runtime_version_is_the_daemons(mechad: Mechad) -> None:
    with grpc.insecure_channel(mechad.grpc_tcp) as ch:
        got = api_service_v1.DaprStub(ch).GetMetadata(api_v1.GetMetadataRequest())
    assert got.runtime_version
