"""The `dapr` scenario's client (started by `mecha-bench dapr`): the official Dapr Python SDK
through mecha's Dapr personality against mecha's own Python client, one process, one thread,
in alternating rounds so that both see the same machine. Prints one JSON object: scenario name
-> list of per-operation times in nanoseconds. A scenario the personality does not serve is
left out, with a note on stderr."""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time

import mecha
from dapr.clients import DaprClient


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--socket", required=True)
    p.add_argument("--grpc-unix", required=True)
    p.add_argument("--grpc-tcp", required=True)
    p.add_argument("--http", required=True, help="host:port")
    p.add_argument("--ops", type=int, required=True)
    p.add_argument("--warmup", type=int, required=True)
    p.add_argument("--payload", type=int, required=True)
    a = p.parse_args()
    value = b"x" * a.payload
    native = mecha.Client(a.socket)
    native.set("bench", value, store="statestore")
    sdk_unix = DaprClient(address=a.grpc_unix)
    sdk_tcp = DaprClient(address=a.grpc_tcp)
    host, port = a.http.rsplit(":", 1)
    web = http.client.HTTPConnection(host, int(port))

    def http_get() -> None:
        web.request("GET", "/v1.0/state/statestore/bench")
        r = web.getresponse()
        r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}")

    scenarios = {
        "native get": lambda: native.get("bench", store="statestore"),
        "native set": lambda: native.set("bench", value, store="statestore"),
        "sdk get_state (unix)": lambda: sdk_unix.get_state("statestore", "bench"),
        "sdk save_state (unix)": lambda: sdk_unix.save_state("statestore", "bench", value),
        "sdk get_state (tcp)": lambda: sdk_tcp.get_state("statestore", "bench"),
        "sdk save_state (tcp)": lambda: sdk_tcp.save_state("statestore", "bench", value),
        "http GET state": http_get,
    }
    for name, op in list(scenarios.items()):
        try:
            for _ in range(a.warmup):
                op()
        except Exception as e:  # noqa: BLE001 - a scenario not served is reported, not fatal
            print(f"[dapr_sdk] skipping {name!r}: {e}", file=sys.stderr)
            del scenarios[name]
    times: dict[str, list[int]] = {name: [] for name in scenarios}
    rounds = max(1, a.ops // 500)
    per_round = max(1, a.ops // rounds)
    clock = time.perf_counter_ns
    for _ in range(rounds):
        for name, op in scenarios.items():
            out = times[name]
            for _ in range(per_round):
                t0 = clock()
                op()
                out.append(clock() - t0)
    json.dump(times, sys.stdout)


if __name__ == "__main__":
    main()
