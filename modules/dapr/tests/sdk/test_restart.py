"""The personality is a module like any other: killed or hot-restarted while a Dapr app
calls it, the app sees UNAVAILABLE at most and its SDK reconnects by itself, and apps on
mecha's own socket notice nothing."""

from __future__ import annotations

import os
import signal
import threading
import time

import grpc
import mecha
from dapr.clients import DaprClient

from conftest import Mechad


def personality_pid(native: mecha.Client) -> int:
    (dapr,) = [m for m in native.status().modules if m.name == "dapr"]
    return dapr.pid if dapr.state == "running" else 0


def wait_for(what: str, check, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        time.sleep(0.01)


class Load:
    """Native calls on one thread and Dapr SDK calls on another until stopped; counts what
    failed and how."""

    def __init__(self, d: Mechad) -> None:
        self.d, self.stop = d, threading.Event()
        self.native_errors: list[str] = []
        self.sdk_codes: list[str] = []
        self.sdk_ok = 0
        self.threads = [threading.Thread(target=self.native), threading.Thread(target=self.sdk)]

    def native(self) -> None:
        with mecha.Client(self.d.socket) as c:
            while not self.stop.is_set():
                try:
                    c.set("n", b"native", store="statestore")
                    assert c.get("n", store="statestore").value == b"native"
                except Exception as e:  # noqa: BLE001 - every failure is what the test counts
                    self.native_errors.append(repr(e))

    def sdk(self) -> None:
        with DaprClient() as c:
            while not self.stop.is_set():
                try:
                    assert c.get_state("statestore", "n").data in (b"", b"native")
                    self.sdk_ok += 1
                except Exception as e:  # noqa: BLE001
                    code = getattr(getattr(e, "_err", None), "code", None)
                    self.sdk_codes.append(str(e.code() if hasattr(e, "code") else code or e))

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def served_after(load: Load, count: int) -> bool:
    return load.sdk_ok >= count


def check_outage(load: Load) -> None:
    assert load.native_errors == [], load.native_errors
    for code in load.sdk_codes:
        assert "UNAVAILABLE" in code.upper(), load.sdk_codes


def test_a_killed_personality_costs_dapr_apps_only_unavailable(dapr_env: Mechad) -> None:
    with mecha.Client(dapr_env.socket) as native, Load(dapr_env) as load:
        wait_for("SDK calls served", lambda: load.sdk_ok >= 20)
        for _ in range(3):
            pid = wait_for("the personality running", lambda: personality_pid(native))
            os.kill(pid, signal.SIGKILL)
            wait_for("a new personality", lambda: personality_pid(native) not in (0, pid))
            before = load.sdk_ok
            wait_for("SDK calls served again", lambda: load.sdk_ok >= before + 20)
    check_outage(load)


def test_a_hot_restart_under_load_keeps_dapr_apps_served(dapr_env: Mechad) -> None:
    with mecha.Client(dapr_env.socket) as native, Load(dapr_env) as load:
        wait_for("SDK calls served", lambda: load.sdk_ok >= 20)
        pid = personality_pid(native)
        native.module_restart("dapr")
        wait_for("a new personality", lambda: personality_pid(native) not in (0, pid))
        before = load.sdk_ok
        wait_for("SDK calls served again", lambda: load.sdk_ok >= before + 20)
    check_outage(load)
