"""Dapr's HTTP lock, secrets, configuration and metadata APIs with raw HTTP, as Dapr's
documentation's curl examples send them."""

from __future__ import annotations

import json

import mecha

from conftest import SECRET_VALUE, Mechad
from test_http_state import error_code, request


def test_lock_and_unlock(mechad: Mechad) -> None:
    lock = {"resourceId": "http-res", "lockOwner": "a", "expiryInSeconds": 60}
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/lock/lockstore", lock)
    assert (status, json.loads(body)) == (200, {"success": True})
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/lock/lockstore",
                              {**lock, "lockOwner": "b"})
    assert (status, json.loads(body)) == (200, {"success": False})
    unlock = {"resourceId": "http-res", "lockOwner": "b"}
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/unlock/lockstore", unlock)
    assert (status, json.loads(body)) == (200, {"status": 2})
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/unlock/lockstore",
                              {**unlock, "lockOwner": "a"})
    assert (status, json.loads(body)) == (200, {"status": 0})
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/unlock/lockstore",
                              {**unlock, "lockOwner": "a"})
    assert (status, json.loads(body)) == (200, {"status": 1})
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/lock/lockstore",
                              {**lock, "expiryInSeconds": 0})
    assert status == 400 and error_code(body) == "ERR_MALFORMED_REQUEST"
    status, _, body = request(mechad, "POST", "/v1.0-alpha1/lock/no-such-store", lock)
    assert status == 400 and error_code(body) == "ERR_LOCK_STORE_NOT_FOUND"


def test_secrets(mechad: Mechad) -> None:
    status, _, body = request(mechad, "GET", "/v1.0/secrets/secretstore/DB_PASSWORD")
    assert (status, json.loads(body)) == (200, {"DB_PASSWORD": SECRET_VALUE})
    status, _, body = request(mechad, "GET", "/v1.0/secrets/secretstore/bulk")
    assert status == 200
    assert json.loads(body)["DB_PASSWORD"] == {"DB_PASSWORD": SECRET_VALUE}
    status, _, body = request(mechad, "GET", "/v1.0/secrets/no-such-store/DB_PASSWORD")
    assert status == 401 and error_code(body) == "ERR_SECRET_STORE_NOT_FOUND"


def test_configuration(mechad: Mechad) -> None:
    with mecha.Client(mechad.socket) as native:
        native.config_set({"http.a": "1", "http.b": "2"}, store="configstore")
    status, _, body = request(mechad, "GET", "/v1.0/configuration/configstore?key=http.a&key=http.b")
    assert status == 200
    items = json.loads(body)
    assert items["http.a"]["value"] == "1" and items["http.a"]["version"]
    assert items["http.b"]["value"] == "2"
    status, _, _ = request(mechad, "GET", "/v1.0/configuration/configstore?key=http.none")
    assert status == 204
    status, _, body = request(mechad, "GET", "/v1.0/configuration/no-such-store?key=a")
    assert status == 400 and error_code(body) == "ERR_CONFIGURATION_STORE_NOT_FOUND"
    # Subscribing over HTTP needs an app channel to call back: not served.
    status, _, body = request(mechad, "GET", "/v1.0/configuration/configstore/subscribe")
    assert status == 501 and "gRPC" in json.loads(body)["message"]


def test_metadata(mechad: Mechad) -> None:
    status, _, body = request(mechad, "GET", "/v1.0/metadata")
    assert status == 200
    meta = json.loads(body)
    assert {"name": "statestore", "type": "state.redb", "version": "v1",
            "capabilities": ["ETAG", "TRANSACTIONAL", "TTL"]} in meta["components"]
    assert meta["runtimeVersion"]
    assert meta["extended"]["mecha.tenant"].startswith("uid:")
    status, _, _ = request(mechad, "PUT", "/v1.0/metadata/attr", {"v": 1})
    assert status == 501
