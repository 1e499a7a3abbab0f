"""Dapr's HTTP state API with raw HTTP, as Dapr's documentation's curl examples send it:
saves (JSON values stored as their JSON text), reads with ETag headers, deletes with
If-Match, bulk reads, transactions, and Dapr's statuses and error bodies."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

import mecha
from dapr.clients import DaprClient

from conftest import Mechad

STORE = "statestore"


def request(m: Mechad, method: str, path: str, body: object | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request to the personality; (status, headers, body)."""
    url = urllib.parse.urlsplit(m.http)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        data = None if body is None else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json",
                                                       **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def error_code(body: bytes) -> str:
    return json.loads(body)["errorCode"]


def test_save_then_get_returns_the_json_and_its_etag(mechad: Mechad) -> None:
    status, _, _ = request(mechad, "POST", f"/v1.0/state/{STORE}",
                           [{"key": "order", "value": {"id": 7, "items": ["tea"]}},
                            {"key": "name", "value": "Ada"}])
    assert status == 204
    status, headers, body = request(mechad, "GET", f"/v1.0/state/{STORE}/order")
    assert status == 200
    assert json.loads(body) == {"id": 7, "items": ["tea"]}
    assert headers["etag"]
    assert headers["content-type"] == "application/json"
    status, _, body = request(mechad, "GET", f"/v1.0/state/{STORE}/name")
    assert (status, body) == (200, b'"Ada"')


def test_a_missing_key_is_204(mechad: Mechad) -> None:
    status, _, body = request(mechad, "GET", f"/v1.0/state/{STORE}/never-saved")
    assert (status, body) == (204, b"")


def test_values_agree_across_http_grpc_and_native(mechad: Mechad, dapr_env: Mechad) -> None:
    # HTTP stores a JSON value as its JSON text; gRPC and mecha's client read those bytes.
    request(mechad, "POST", f"/v1.0/state/{STORE}", [{"key": "via-http", "value": {"a": 1}}])
    with DaprClient() as d, mecha.Client(mechad.socket) as native:
        assert json.loads(d.get_state(STORE, "via-http").data) == {"a": 1}
        assert json.loads(native.get("via-http", store=STORE).value) == {"a": 1}
        # Bytes saved through gRPC come back unchanged over HTTP.
        d.save_state(STORE, "via-grpc", b"raw bytes")
    status, _, body = request(mechad, "GET", f"/v1.0/state/{STORE}/via-grpc")
    assert (status, body) == (200, b"raw bytes")


def test_a_stale_etag_is_409_and_if_match_deletes(mechad: Mechad) -> None:
    request(mechad, "POST", f"/v1.0/state/{STORE}", [{"key": "cas", "value": 1}])
    _, headers, _ = request(mechad, "GET", f"/v1.0/state/{STORE}/cas")
    first = headers["etag"]
    status, _, _ = request(mechad, "POST", f"/v1.0/state/{STORE}",
                           [{"key": "cas", "value": 2, "etag": first}])
    assert status == 204
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}",
                              [{"key": "cas", "value": 3, "etag": first,
                                "options": {"concurrency": "first-write"}}])
    assert status == 409
    assert error_code(body) == "ERR_STATE_SAVE"
    status, _, body = request(mechad, "DELETE", f"/v1.0/state/{STORE}/cas",
                              headers={"If-Match": first})
    assert status == 409
    assert error_code(body) == "ERR_STATE_DELETE"
    _, headers, _ = request(mechad, "GET", f"/v1.0/state/{STORE}/cas")
    status, _, _ = request(mechad, "DELETE", f"/v1.0/state/{STORE}/cas",
                           headers={"If-Match": headers["etag"]})
    assert status == 204
    assert request(mechad, "GET", f"/v1.0/state/{STORE}/cas")[0] == 204


def test_ttl_from_item_metadata_and_query(mechad: Mechad) -> None:
    request(mechad, "POST", f"/v1.0/state/{STORE}",
            [{"key": "ttl-item", "value": "x", "metadata": {"ttlInSeconds": "1"}}])
    request(mechad, "POST", f"/v1.0/state/{STORE}?metadata.ttlInSeconds=1",
            [{"key": "ttl-query", "value": "y"}])
    deadline = time.monotonic() + 20
    for key in ["ttl-item", "ttl-query"]:
        while request(mechad, "GET", f"/v1.0/state/{STORE}/{key}")[0] != 204:
            assert time.monotonic() < deadline, f"{key} did not expire"
            time.sleep(0.05)


def test_bulk_get(mechad: Mechad) -> None:
    request(mechad, "POST", f"/v1.0/state/{STORE}",
            [{"key": "b1", "value": {"n": 1}}, {"key": "b2", "value": "two"}])
    with mecha.Client(mechad.socket) as native:
        native.set("b3", b"not json", store=STORE)
        native.set("b4", b"\xff\xfe", store=STORE)
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}/bulk",
                              {"keys": ["b1", "b2", "b3", "b4", "b-missing"], "parallelism": 2})
    assert status == 200
    items = {i["key"]: i for i in json.loads(body)}
    assert items["b1"]["data"] == {"n": 1} and items["b1"]["etag"]
    assert items["b2"]["data"] == "two"
    # A stored value that is not JSON is given as a JSON string of its text...
    assert items["b3"]["data"] == "not json"
    # ...or, when it is not text, as the item's error.
    assert "data" not in items["b4"] and items["b4"]["error"]
    assert items["b-missing"] == {"key": "b-missing"}


def test_transaction(mechad: Mechad) -> None:
    request(mechad, "POST", f"/v1.0/state/{STORE}", [{"key": "t-old", "value": 0}])
    status, _, _ = request(mechad, "POST", f"/v1.0/state/{STORE}/transaction", {
        "operations": [
            {"operation": "upsert", "request": {"key": "t-new", "value": {"ok": True}}},
            {"operation": "delete", "request": {"key": "t-old"}},
        ]})
    assert status == 204
    assert json.loads(request(mechad, "GET", f"/v1.0/state/{STORE}/t-new")[2]) == {"ok": True}
    assert request(mechad, "GET", f"/v1.0/state/{STORE}/t-old")[0] == 204
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}/transaction", {
        "operations": [{"operation": "merge", "request": {"key": "t-new"}}]})
    assert status == 400
    assert error_code(body) == "ERR_NOT_SUPPORTED_STATE_OPERATION"


def test_bad_requests_answer_daprs_errors(mechad: Mechad) -> None:
    status, _, body = request(mechad, "GET", "/v1.0/state/no-such-store/k")
    assert status == 400 and error_code(body) == "ERR_STATE_STORE_NOT_FOUND"
    # An empty store name does not fall back to mecha's default store.
    status, _, body = request(mechad, "GET", "/v1.0/state//k")
    assert status == 400 and error_code(body) == "ERR_STATE_STORE_NOT_FOUND"
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}", {"not": "a list"})
    assert status == 400 and error_code(body) == "ERR_MALFORMED_REQUEST"
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}", [{"value": 1}])
    assert status == 400 and error_code(body) == "ERR_MALFORMED_REQUEST"
    status, _, body = request(mechad, "POST", f"/v1.0/state/{STORE}",
                              [{"key": "k", "value": 1, "metadata": {"unknownHint": "x"}}])
    assert status == 400 and "unknownHint" in json.loads(body)["message"]
    status, _, body = request(mechad, "GET", f"/v1.0/state/{STORE}/k?consistency=sometimes")
    assert status == 400
    status, _, body = request(mechad, "PUT", f"/v1.0/state/{STORE}/k")
    assert status == 501 and error_code(body) == "ERR_API_UNIMPLEMENTED"
