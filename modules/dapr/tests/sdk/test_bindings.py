"""Output bindings through the personality: the SDK's ``invoke_binding`` and Dapr's HTTP
``POST /v1.0/bindings/{name}`` run operations of a mecha binding (``bindings.localstorage``,
open to this uid's tenant only), with Dapr's metadata as their parameters."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message

import grpc
import pytest
from dapr.clients import DaprClient

import conftest
from conftest import DEFAULT_COMPONENTS, Mechad, run_mechad

FILES = """---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: files}
spec:
  type: bindings.localstorage
  version: v1
  metadata:
  - {name: rootPath, value: files}
  - {name: allowedTenants, value: "uid:%(uid)d"}
"""


@pytest.fixture(scope="module")
def daemon() -> Iterator[Mechad]:
    with run_mechad(components=DEFAULT_COMPONENTS + FILES) as d:
        yield d


@pytest.fixture()
def env(daemon: Mechad, monkeypatch: pytest.MonkeyPatch) -> Mechad:
    for k, v in daemon.env().items():
        monkeypatch.setenv(k, v)
    conftest._reload_sdk_settings()
    return daemon


def test_the_sdk_runs_binding_operations(env: Mechad) -> None:
    with DaprClient() as d:
        d.invoke_binding("files", "create", data="hello", binding_metadata={"fileName": "a.txt"})
        got = d.invoke_binding("files", "get", binding_metadata={"fileName": "a.txt"})
        assert got.data == b"hello"
        listed = d.invoke_binding("files", "list")
        assert "a.txt" in json.loads(listed.data)
        with pytest.raises(grpc.RpcError) as raised:
            d.invoke_binding("files", "explode")
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as raised:
            d.invoke_binding("no-such-binding", "get")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def post(env: Mechad, path: str, body: dict) -> tuple[int, bytes, Message]:
    req = urllib.request.Request(env.http + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def test_http_runs_binding_operations(env: Mechad) -> None:
    status, _, headers = post(env, "/v1.0/bindings/files",
                              {"operation": "create", "data": "over http",
                               "metadata": {"fileName": "b.txt"}})
    assert status == 204
    assert headers.get("metadata.fileName") == "b.txt"
    status, body, _ = post(env, "/v1.0/bindings/files",
                           {"operation": "get", "metadata": {"fileName": "b.txt"}})
    assert (status, body) == (200, b"over http")
    status, body, _ = post(env, "/v1.0/bindings/files",
                           {"operation": "get", "metadata": {"fileName": "absent.txt"}})
    assert status == 404
    assert json.loads(body)["errorCode"] == "ERR_INVOKE_OUTPUT_BINDING"
    status, body, _ = post(env, "/v1.0/bindings/files", {"operation": "explode"})
    assert status == 400
    assert json.loads(body)["errorCode"] == "ERR_INVOKE_OUTPUT_BINDING"
