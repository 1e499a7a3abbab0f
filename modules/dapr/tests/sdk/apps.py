"""Callees for the invocation tests, each answering with a JSON description of the call it
got: a mecha-native app (registered with mecha's Python client), a Dapr-style gRPC app (Dapr's
``AppCallback`` service from the SDK's generated stubs) and a plain HTTP app (the standard
library's server), as Dapr apps serve on their app port."""

from __future__ import annotations

import json
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
import mecha
from dapr.proto import appcallback_service_v1, common_v1
from google.protobuf.any_pb2 import Any as GrpcAny


class NativeApp:
    """``app_id`` served by mecha's Python client on ``socket`` until ``stop``."""

    def __init__(self, socket: str, app_id: str) -> None:
        self.client = mecha.Client(socket)
        self.registration = self.client.register(app_id)
        self.thread = threading.Thread(target=self.registration.serve, args=(self.answer,),
                                       daemon=True)
        self.thread.start()

    @staticmethod
    def answer(call: mecha.Call) -> mecha.InvokeReply:
        body = {"method": call.method, "data": call.data.decode(errors="replace"),
                "content_type": call.content_type, "metadata": dict(call.metadata)}
        return mecha.InvokeReply(json.dumps(body).encode(), "application/json", [])

    def stop(self) -> None:
        self.registration.stop()
        self.thread.join(timeout=10)
        self.client.close()


class _Callback(appcallback_service_v1.AppCallbackServicer):
    def OnInvoke(self, request: Any, context: Any) -> Any:
        if request.method == "fail":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        ext = request.http_extension
        body = {"method": request.method, "data": request.data.value.decode(errors="replace"),
                "content_type": request.content_type, "verb": ext.verb,
                "query": ext.querystring}
        return common_v1.InvokeResponse(data=GrpcAny(value=json.dumps(body).encode()),
                                        content_type="application/json")


class GrpcApp:
    """Dapr's ``AppCallback`` service on ``127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        appcallback_service_v1.add_AppCallbackServicer_to_server(_Callback(), self.server)
        self.server.add_insecure_port(f"127.0.0.1:{port}")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=None)


class _Handler(BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length).decode(errors="replace")
        path, _, query = self.path.partition("?")
        if path == "/missing":
            body, status = b"nothing here", 404
        else:
            body = json.dumps({"verb": self.command, "path": path, "query": query, "data": data,
                               "content_type": self.headers.get("Content-Type", ""),
                               "x_user": self.headers.get("x-user", "")}).encode()
            status = 200
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


class HttpApp:
    """A plain HTTP app on ``127.0.0.1:port``."""

    def __init__(self, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_for_apps(native: mecha.Client, wanted: set[str], within: float = 30) -> None:
    """Waits until every app id in ``wanted`` has a local registration."""
    deadline = time.monotonic() + within
    while True:
        local = {a.app_id for a in native.apps() if a.local}
        if wanted <= local:
            return
        assert time.monotonic() < deadline, f"registered: {sorted(local)}, wanted {sorted(wanted)}"
        time.sleep(0.05)


def eventually(attempt: Any, within: float = 30) -> Any:
    """``attempt()``'s result once it stops raising, trying until ``within`` seconds pass."""
    deadline = time.monotonic() + within
    while True:
        try:
            return attempt()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
