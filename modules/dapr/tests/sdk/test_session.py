"""The personality serves each caller as its own tenant, identified by mechad from the
caller's socket: what a Dapr app reads is what the same uid stored through mecha's own
client, on the Unix socket and on loopback TCP alike, and another uid sees none of it."""

from __future__ import annotations

import json
import os

import grpc
import mecha
from dapr.clients import DaprClient
from dapr.proto import api_v1, api_service_v1

from conftest import NOBODY, Mechad, run_as


def test_a_dapr_app_reads_what_its_uid_stored_natively(dapr_env: Mechad) -> None:
    with mecha.Client(dapr_env.socket) as native:
        native.set("greeting", b"hello from mecha", store="statestore")
    with DaprClient() as d:
        got = d.get_state("statestore", "greeting")
    assert got.data == b"hello from mecha"
    assert got.etag


def test_the_unix_socket_and_tcp_identify_their_caller(mechad: Mechad) -> None:
    with mecha.Client(mechad.socket) as native:
        native.set("same-uid", b"same tenant", store="statestore")
    script = """
        from dapr.clients import DaprClient
        with DaprClient() as d:
            print(d.get_state("statestore", "same-uid").data.decode())
        """
    # The SDK's gRPC library sends the socket's path as the HTTP/2 authority on the
    # Unix socket; the personality accepts it (grpc/authority.rs).
    for endpoint in (mechad.grpc_unix, mechad.grpc_tcp):
        done = run_as(os.geteuid(), script, mechad.env(grpc=endpoint))
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "same tenant", endpoint
    # A client that names itself "localhost" on the Unix socket, as grpc-go does.
    with grpc.insecure_channel(mechad.grpc_unix,
                               options=[("grpc.default_authority", "localhost")]) as ch:
        stub = api_service_v1.DaprStub(ch)
        got = stub.GetState(api_v1.GetStateRequest(store_name="statestore", key="same-uid"))
    assert got.data == b"same tenant"


def test_another_uid_sees_none_of_it(mechad: Mechad) -> None:
    with mecha.Client(mechad.socket) as native:
        native.set("private", b"root's", store="statestore")
    script = """
        import json
        from dapr.clients import DaprClient
        with DaprClient() as d:
            got = d.get_state("statestore", "private")
            print(json.dumps({"data": got.data.decode(), "etag": got.etag}))
        """
    for endpoint in (mechad.grpc_unix, mechad.grpc_tcp):
        done = run_as(NOBODY, script, mechad.env(grpc=endpoint))
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"data": "", "etag": ""}, endpoint
    # The same uid, as a separate process over TCP, does see it.
    done = run_as(os.geteuid(), script, mechad.env())
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["data"] == "root's"
