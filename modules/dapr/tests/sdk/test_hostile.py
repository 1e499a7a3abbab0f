"""A tenant reaching mecha through the Dapr personality is held to the same rules as on
mecha's own socket: a uid the tenant rules deny is refused (with Dapr's error body on
HTTP), and a tenant at its connection quota cannot hold more of the personality's
connections, while every other tenant keeps being served."""

from __future__ import annotations

import json
import os
import socket
import time

from dapr.clients import DaprClient

from conftest import DEFAULT_COMPONENTS, NOBODY, run_as, run_mechad

GET_HEALTH = b"GET /v1.0/healthz HTTP/1.1\r\nhost: localhost\r\n\r\n"


def http_answer(port: int, request: bytes = GET_HEALTH, timeout: float = 10) -> bytes:
    """One raw HTTP exchange; what the server sent before closing or within ``timeout``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_a_denied_uid_is_refused_on_every_endpoint_and_others_are_served() -> None:
    settings = """
        defaultTenant: deny
        tenants:
        - {name: ops, uids: [0]}
        """
    with run_mechad(settings=settings) as d:
        port = int(d.http.rsplit(":", 1)[1])
        script = f"""
            import json, socket
            s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
            s.sendall({GET_HEALTH!r})
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\\r\\n\\r\\n")
            print(json.dumps({{"status": head.split(b" ")[1].decode(), "body": body.decode()}}))
            """
        done = run_as(NOBODY, script, {})
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert answer["status"] == "403", answer
        assert "deny" in json.loads(answer["body"])["message"]
        # Over gRPC the connection is closed: the SDK reports the call failed.
        sdk = """
            from dapr.clients import DaprClient
            from dapr.clients.exceptions import DaprGrpcError
            try:
                with DaprClient() as c:
                    c.get_state("statestore", "k")
                print("served")
            except Exception as e:
                print("refused")
            """
        env = d.env()
        env["DAPR_HEALTH_TIMEOUT"] = "1"
        done = run_as(NOBODY, sdk, env)
        assert done.stdout.strip().splitlines()[-1] == "refused", (done.stdout, done.stderr)
        # Root's tenant is served on both.
        assert http_answer(port).startswith(b"HTTP/1.1 204")
        done = run_as(os.geteuid(), sdk, d.env())
        assert done.stdout.strip().splitlines()[-1] == "served", done.stderr


def test_a_tenant_at_its_connection_quota_holds_no_more_connections() -> None:
    settings = """
        quotas:
          tenants:
            "uid:65534": {maxConnections: 4}
        """
    with run_mechad(settings=settings) as d:
        port = int(d.http.rsplit(":", 1)[1])
        # nobody opens many connections and keeps them open; past its quota each one is
        # answered 429 and closed by the personality, so it holds only its quota's worth.
        script = f"""
            import json, socket, time
            held, statuses = [], []
            for _ in range(40):
                s = socket.create_connection(("127.0.0.1", {port}), timeout=10)
                held.append(s)
            time.sleep(0)
            for s in held:
                s.sendall({GET_HEALTH!r})
            for s in held:
                data = b""
                try:
                    while b"\\r\\n\\r\\n" not in data:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                except OSError:
                    pass
                statuses.append(data.split(b" ")[1].decode() if data else "closed")
            print(json.dumps(statuses))
            """
        done = run_as(NOBODY, script, {})
        assert done.returncode == 0, done.stderr
        statuses = json.loads(done.stdout)
        assert statuses.count("204") == 4, statuses
        assert statuses.count("429") + statuses.count("closed") == 36, statuses
        assert "429" in statuses, statuses
        # Another tenant is unaffected.
        assert http_answer(port).startswith(b"HTTP/1.1 204")
        os.environ.update(d.env())
        from conftest import _reload_sdk_settings
        _reload_sdk_settings()
        with DaprClient() as c:
            assert c.get_state("statestore", "nothing").data == b""
