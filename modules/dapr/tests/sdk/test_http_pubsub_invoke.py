"""Dapr's HTTP API for pub/sub and invocation, with raw HTTP as Dapr's documentation's curl
examples send it: publishing (enveloped, raw, and an app's own CloudEvent), bulk publishing,
invoking an app with any verb, query string and headers, and Dapr's JSON errors."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from email.message import Message

import mecha
import pytest
from dapr.clients import DaprClient

from apps import NativeApp, wait_for_apps
from conftest import Mechad
from streams import Reader


def send(mechad: Mechad, method: str, path: str, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, bytes, Message]:
    req = urllib.request.Request(mechad.http + path, data=body or None, method=method,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.read(), r.headers
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers


def topic() -> str:
    return f"h-{uuid.uuid4().hex[:12]}"


def test_publish_enveloped_and_raw(mechad: Mechad) -> None:
    t = topic()
    with mecha.Client(mechad.socket) as native, native.subscribe(t, store="pubsub") as sub:
        status, _, _ = send(mechad, "POST", f"/v1.0/publish/pubsub/{t}", b'{"status": "done"}',
                            {"Content-Type": "application/json"})
        assert status == 204
        d = sub.next(timeout=20)
        assert (d.data, d.data_content_type, d.event_type, d.raw) == (
            b'{"status": "done"}', "application/json", "com.dapr.event.sent", False)
        sub.ack(d)
        status, _, _ = send(mechad, "POST", f"/v1.0/publish/pubsub/{t}?metadata.rawPayload=true",
                            b"raw bytes", {"Content-Type": "application/octet-stream"})
        assert status == 204
        d = sub.next(timeout=20)
        assert (d.data, d.raw) == (b"raw bytes", True)
        sub.ack(d)


def test_an_apps_own_cloud_event_reaches_a_dapr_subscriber_as_written(
        mechad: Mechad, dapr_env: Mechad) -> None:
    t = topic()
    event = {"specversion": "1.0", "id": "order-7", "source": "shop", "type": "order.paid",
             "datacontenttype": "application/json", "data": {"total": 12}}
    with DaprClient() as d:
        reader = Reader(d.subscribe("pubsub", t))
        try:
            status, _, _ = send(mechad, "POST", f"/v1.0/publish/pubsub/{t}",
                                json.dumps(event).encode(),
                                {"Content-Type": "application/cloudevents+json"})
            assert status == 204
            msg = reader.next()
            assert (msg.id(), msg.source(), msg.type()) == ("order-7", "shop", "order.paid")
            assert msg.data() == {"total": 12}
            reader.subscription.respond_success(msg)
        finally:
            reader.close()


def test_bulk_publish_over_http(mechad: Mechad) -> None:
    t = topic()
    entries = [{"entryId": "a", "event": "first", "contentType": "text/plain"},
               {"entryId": "b", "event": {"n": 2}, "contentType": "application/json"}]
    with mecha.Client(mechad.socket) as native, native.subscribe(t, store="pubsub") as sub:
        status, _, _ = send(mechad, "POST", f"/v1.0-alpha1/publish/bulk/pubsub/{t}",
                            json.dumps(entries).encode(), {"Content-Type": "application/json"})
        assert status == 204
        got = {}
        for _ in range(2):
            d = sub.next(timeout=20)
            got[d.data_content_type] = d.data
            sub.ack(d)
        assert got["text/plain"] == b"first"
        assert json.loads(got["application/json"]) == {"n": 2}
    entries.append({"entryId": "c", "event": "x", "metadata": {"ttlInSeconds": "1"}})
    status, body, _ = send(mechad, "POST", f"/v1.0-alpha1/publish/bulk/pubsub/{t}",
                           json.dumps(entries).encode(), {"Content-Type": "application/json"})
    assert status == 500
    assert [e["entryId"] for e in json.loads(body)["failedEntries"]] == ["c"]


def test_publish_errors_are_daprs(mechad: Mechad) -> None:
    status, body, _ = send(mechad, "POST", f"/v1.0/publish/pubsub/{topic()}?metadata.ttlInSeconds=3",
                           b"x")
    assert status == 400
    assert json.loads(body)["errorCode"] == "ERR_PUBSUB_REQUEST_METADATA"
    status, body, _ = send(mechad, "POST", f"/v1.0/publish/nosuch/{topic()}", b"x")
    assert status == 404
    assert json.loads(body)["errorCode"] == "ERR_PUBSUB_NOT_FOUND"
    status, body, _ = send(mechad, "POST", "/v1.0/publish/pubsub/", b"x")
    assert status == 404
    assert json.loads(body)["errorCode"] == "ERR_TOPIC_EMPTY"
    status, _, _ = send(mechad, "POST", "/v1.0/publish/pubsub/t", b"{}",
                        {"Content-Type": "application/cloudevents+json; charset=utf-8"})
    assert status == 204
    status, body, _ = send(mechad, "POST", "/v1.0/publish/pubsub/t", b"[1]",
                           {"Content-Type": "application/cloudevents+json"})
    assert status == 400
    assert json.loads(body)["errorCode"] == "ERR_PUBSUB_CLOUD_EVENTS_SER"


@pytest.fixture()
def echo(mechad: Mechad) -> Iterator[None]:
    app = NativeApp(mechad.socket, "http-echo")
    try:
        with mecha.Client(mechad.socket) as native:
            wait_for_apps(native, {"http-echo"})
        yield
    finally:
        app.stop()


def test_invoke_with_any_verb_query_and_headers(mechad: Mechad, echo: None) -> None:
    for verb in ["GET", "POST", "PUT", "DELETE", "PATCH"]:
        body = b"" if verb in ("GET", "DELETE") else b"payload"
        status, answer, headers = send(mechad, verb, "/v1.0/invoke/http-echo/method/items/7?a=1&b=x",
                                       body, {"x-user": "ann", "Content-Type": "text/plain"})
        assert status == 200, answer
        assert headers["Content-Type"] == "application/json"
        got = json.loads(answer)
        assert got["method"] == "items/7"
        assert got["data"] == body.decode()
        assert got["metadata"]["http.verb"] == verb
        assert got["metadata"]["http.querystring"] == "a=1&b=x"
        assert got["metadata"]["x-user"] == "ann"
        assert "dapr-api-token" not in got["metadata"]


def test_invoke_errors_are_daprs(mechad: Mechad) -> None:
    status, body, _ = send(mechad, "POST", "/v1.0/invoke/nobody-serves-this/method/x", b"")
    assert status == 404
    assert json.loads(body)["errorCode"] == "ERR_DIRECT_INVOKE"
    status, _, _ = send(mechad, "GET", "/v1.0/invoke/app-without-method")
    assert status == 404
    status, body, _ = send(mechad, "GET", "/v1.0/actors/a/b/method/c")
    assert status == 501
    assert json.loads(body)["errorCode"] == "ERR_API_UNIMPLEMENTED"
    assert "GET /v1.0/actors/a/b/method/c" in json.loads(body)["message"]


def test_invoke_by_the_dapr_app_id_header(mechad: Mechad, echo: None) -> None:
    status, answer, _ = send(mechad, "POST", "/orders/9?x=1", b"hi",
                             {"dapr-app-id": "http-echo", "Content-Type": "text/plain"})
    assert status == 200, answer
    got = json.loads(answer)
    assert (got["method"], got["data"]) == ("orders/9", "hi")
    assert got["metadata"]["http.querystring"] == "x=1"
    assert "dapr-app-id" not in got["metadata"]


def test_what_one_request_may_carry_is_bounded(mechad: Mechad, echo: None) -> None:
    # A body over Dapr's 4 MiB request limit is refused once the limit is read, before it
    # is buffered whole.
    port = int(mechad.http.rsplit(":", 1)[1])
    body = b"x" * ((4 << 20) + 1)
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        s.sendall(b"POST /v1.0/publish/pubsub/big HTTP/1.1\r\nhost: localhost\r\n"
                  b"content-length: %d\r\n\r\n" % len(body) + body)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413"), answer[:80]
    # More headers than a call carries to its callee.
    headers = {f"x-h{i}": "v" for i in range(80)}
    status, answer, _ = send(mechad, "POST", "/v1.0/invoke/http-echo/method/m", b"", headers)
    assert status == 400
    assert json.loads(answer)["errorCode"] == "ERR_DIRECT_INVOKE"
    # More bulk entries than one request may publish.
    entries = [{"entryId": str(i), "event": "e", "contentType": "text/plain"}
               for i in range(1025)]
    status, answer, _ = send(mechad, "POST", f"/v1.0-alpha1/publish/bulk/pubsub/{topic()}",
                             json.dumps(entries).encode(), {"Content-Type": "application/json"})
    assert status == 400
    assert json.loads(answer)["errorCode"] == "ERR_PUBSUB_EVENTS_SER"
