"""Service invocation through the personality: the SDK's ``invoke_method`` (over HTTP, its
default, and over gRPC) reaches a mecha-native app; and Dapr-style apps listed in the
personality's ``appCallbacks`` (an ``AppCallback`` gRPC server, a plain HTTP server) are
reached by app id from the SDK and from mecha's own client, served as the tenant that owns
their app ids."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import mecha
import pytest
from dapr.clients import DaprClient

import conftest
from apps import GrpcApp, HttpApp, NativeApp, eventually, wait_for_apps
from conftest import Mechad, free_port, run_mechad

GRPC_PORT, HTTP_PORT = free_port(), free_port()


@pytest.fixture(scope="module")
def daemon() -> Iterator[Mechad]:
    """A daemon whose personality serves two Dapr-style apps, owned by root's tenant."""
    personality = (f'- {{name: appCallbacks, value: "grpc-app=grpc://127.0.0.1:{GRPC_PORT},'
                   f'http-app=http://127.0.0.1:{HTTP_PORT}"}}\n')
    settings = """
        tenants:
        - name: me
          uids: [0]
          appIds: [grpc-app, http-app, native-app]
        """
    grpc_app, http_app = GrpcApp(GRPC_PORT), HttpApp(HTTP_PORT)
    try:
        with run_mechad(personality=personality, settings=settings) as d:
            with mecha.Client(d.socket) as native:
                wait_for_apps(native, {"grpc-app", "http-app"})
            yield d
    finally:
        grpc_app.stop()
        http_app.stop()


@pytest.fixture()
def env(daemon: Mechad, monkeypatch: pytest.MonkeyPatch) -> Mechad:
    for k, v in daemon.env().items():
        monkeypatch.setenv(k, v)
    conftest._reload_sdk_settings()
    return daemon


@pytest.fixture()
def native_app(env: Mechad) -> Iterator[None]:
    app = NativeApp(env.socket, "native-app")
    try:
        with mecha.Client(env.socket) as native:
            wait_for_apps(native, {"native-app"})
        yield
    finally:
        app.stop()


def use_grpc(monkeypatch: pytest.MonkeyPatch) -> None:
    from dapr.conf import settings
    monkeypatch.setattr(settings, "DAPR_API_METHOD_INVOCATION_PROTOCOL", "grpc")


def test_invoke_method_over_http_reaches_a_native_app(env: Mechad, native_app: None) -> None:
    with DaprClient() as d:
        resp = d.invoke_method("native-app", "orders/7", data='{"n": 1}',
                               content_type="application/json", http_verb="PUT",
                               http_querystring=(("a", "1"),))
    got = resp.json()
    assert got["method"] == "orders/7"
    assert got["data"] == '{"n": 1}'
    assert got["content_type"] == "application/json"
    assert got["metadata"]["http.verb"] == "PUT"
    assert got["metadata"]["http.querystring"] == "a=1"


def test_invoke_method_over_grpc_reaches_a_native_app(env: Mechad, native_app: None,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    use_grpc(monkeypatch)
    with DaprClient() as d:
        resp = d.invoke_method("native-app", "hello", data=b"hi", content_type="text/plain")
    assert resp.content_type == "application/json"
    got = json.loads(resp.data)
    assert (got["method"], got["data"], got["content_type"]) == ("hello", "hi", "text/plain")
    assert "http.verb" not in got["metadata"]


def test_a_dapr_grpc_app_is_reached_from_the_sdk_and_from_mecha(
        env: Mechad, monkeypatch: pytest.MonkeyPatch) -> None:
    use_grpc(monkeypatch)
    with DaprClient() as d:
        resp = d.invoke_method("grpc-app", "hello", data=b"hi", content_type="text/plain",
                               http_verb="POST", http_querystring=(("x", "y"),))
        got = json.loads(resp.data)
        assert got == {"method": "hello", "data": "hi", "content_type": "text/plain",
                       "verb": 3, "query": "x=y"}
        # The callee's error status comes back to the caller (the SDK raises gRPC's own
        # error for invoke_method and invoke_binding).
        with pytest.raises(grpc.RpcError) as raised:
            d.invoke_method("grpc-app", "fail", data=b"")
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    with mecha.Client(env.socket) as native:
        reply = native.invoke_reply("grpc-app", "from-mecha", b"native", content_type="text/plain")
    assert reply.content_type == "application/json"
    assert json.loads(reply.data)["method"] == "from-mecha"


def test_a_dapr_http_app_gets_the_verb_path_query_and_headers(env: Mechad) -> None:
    with DaprClient() as d:
        resp = d.invoke_method("http-app", "orders/7", data="x", content_type="text/plain",
                               http_verb="PATCH", http_querystring=(("a", "1"), ("b", "2")),
                               metadata=(("x-user", "ann"),))
    assert resp.json() == {"verb": "PATCH", "path": "/orders/7", "query": "a=1&b=2",
                           "data": "x", "content_type": "text/plain", "x_user": "ann"}
    with mecha.Client(env.socket) as native:
        body = json.loads(native.invoke("http-app", "ping", b"", content_type="text/plain"))
    # A call that names no verb reaches an HTTP app as POST, as Dapr's does.
    assert (body["verb"], body["path"]) == ("POST", "/ping")
    with pytest.raises(mecha.NotFound):
        mecha.Client(env.socket).invoke("http-app", "missing", b"")


def test_callees_are_served_again_after_the_invoke_module_and_the_personality_restart(
        env: Mechad) -> None:
    with mecha.Client(env.socket) as native:
        for module in ["invoke", "dapr"]:
            native.module_restart(module)

            def call() -> dict:
                with mecha.Client(env.socket) as c:
                    return json.loads(c.invoke("grpc-app", "again", b"x", timeout=5))

            assert eventually(call)["method"] == "again"
            body = eventually(lambda: json.loads(native.invoke("http-app", "again", b"")))
            assert body["path"] == "/again"
