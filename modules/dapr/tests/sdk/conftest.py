"""Shared fixtures of the Dapr SDK suite: the real ``mechad`` with the Dapr personality on a
temporary Unix socket and free loopback ports, and ways to reach it as an application would
(``DaprClient`` from the official ``dapr`` package, raw HTTP, the native mecha client), also as
another uid."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(os.environ.get("MECHA_REPO", Path(__file__).resolve().parents[4]))
MODULES = ["mechad"] + [f"mecha-mod-{d.name}" for d in sorted((REPO / "modules").glob("*"))
                        if (d / "src" / "main.rs").exists()]
SECRET_VALUE = "s3cr3t-from-env"

# The components every test daemon has besides the personality: the embedded default's.
DEFAULT_COMPONENTS = """
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: statestore}
spec: {type: state.redb, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: pubsub}
spec: {type: pubsub.redb, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: lockstore}
spec: {type: lock.redb, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: configstore}
spec: {type: configuration.memory, version: v1}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: secretstore}
spec:
  type: secretstores.local.env
  version: v1
  metadata:
  - {name: prefix, value: MECHA_SECRET_}
  - {name: allowedTenants, value: "uid:%(uid)d"}
---
apiVersion: dapr.io/v1alpha1
kind: Component
metadata: {name: invoke}
spec: {type: invoke.mesh, version: v1}
"""


def _binaries() -> Path:
    """``$MECHA_BIN_DIR``, else ``${CARGO_TARGET_DIR:-/work/target}/debug``, built with cargo
    into that target directory if a binary is missing there."""
    if d := os.environ.get("MECHA_BIN_DIR"):
        return Path(d)
    target = os.environ.get("CARGO_TARGET_DIR") or "/work/target"
    bins = Path(target) / "debug"
    if not all((bins / m).exists() for m in MODULES):
        build = subprocess.run(
            ["cargo", "build", "--workspace", "--bins", "--exclude", "mecha-bench"],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "CARGO_TARGET_DIR": target})
        if build.returncode != 0:
            pytest.fail(f"cargo build failed:\n{build.stderr[-4000:]}")
    return bins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class Mechad:
    """A running daemon and the endpoints an application uses."""

    dir: Path
    socket: str
    """mecha's own socket (the native ABI)."""
    grpc_unix: str
    """Dapr's gRPC API on a Unix socket, as ``DAPR_GRPC_ENDPOINT`` takes it."""
    grpc_tcp: str
    """Dapr's gRPC API on TCP, ``127.0.0.1:PORT``."""
    http: str
    """Dapr's HTTP API, ``http://127.0.0.1:PORT``."""
    proc: subprocess.Popen

    def env(self, grpc: str | None = None) -> dict[str, str]:
        """The environment a Dapr application gets to reach this daemon: gRPC on the Unix
        socket unless ``grpc`` says otherwise (``self.grpc_tcp`` for loopback TCP)."""
        return {
            "DAPR_GRPC_ENDPOINT": grpc or self.grpc_unix,
            "DAPR_HTTP_ENDPOINT": self.http,
            "DAPR_HEALTH_TIMEOUT": "10",
            "MECHA_SOCKET": self.socket,
        }

    def log(self) -> str:
        return (self.dir / "mechad.log").read_text(errors="replace")


@contextlib.contextmanager
def run_mechad(components: str = DEFAULT_COMPONENTS, personality: str = "",
               settings: str = "") -> Iterator[Mechad]:
    """Runs the real daemon with the Dapr personality (and ``components``, YAML documents),
    extra personality metadata (``personality``: YAML list items) and a ``Configuration``
    document's ``spec`` (``settings``), on a temporary socket and free ports."""
    bins = _binaries()
    tmp = Path(tempfile.mkdtemp(prefix="mecha-dapr-"))
    # Readable by other uids (tests run some clients as nobody).
    tmp.chmod(0o755)
    sock = tmp / "mecha.sock"
    grpc_unix = tmp / "dapr.sock"
    grpc_port, http_port = free_port(), free_port()
    config = textwrap.dedent(f"""
        apiVersion: dapr.io/v1alpha1
        kind: Component
        metadata: {{name: dapr}}
        spec:
          type: personality.dapr
          version: v1
          metadata:
          - {{name: grpcSocket, value: "{grpc_unix}"}}
          - {{name: grpcAddress, value: "127.0.0.1:{grpc_port}"}}
          - {{name: httpAddress, value: "127.0.0.1:{http_port}"}}
        """) + textwrap.indent(textwrap.dedent(personality), "  ")
    config += "---\n" + components % {"uid": os.geteuid()}
    if settings:
        config += "---\napiVersion: mecha.io/v1alpha1\nkind: Configuration\nmetadata: {name: mecha}\nspec:\n"
        config += textwrap.indent(textwrap.dedent(settings), "  ")
    (tmp / "mecha.yaml").write_text(config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHA_")}
    env["MECHA_SECRET_DB_PASSWORD"] = SECRET_VALUE
    args = [str(bins / "mechad"), "--socket", str(sock), "--data-dir", str(tmp / "data"),
            "--module-dir", str(bins), "--config", str(tmp / "mecha.yaml")]
    log = open(tmp / "mechad.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    daemon = Mechad(tmp, str(sock), f"unix://{grpc_unix}", f"127.0.0.1:{grpc_port}",
                    f"http://127.0.0.1:{http_port}", proc)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mechad exited with {proc.returncode}:\n{daemon.log()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                with socket.create_connection(("127.0.0.1", http_port), timeout=1):
                    pass
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"mechad did not serve within 30 s:\n{daemon.log()}")
                time.sleep(0.02)
        yield daemon
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def mechad() -> Iterator[Mechad]:
    """The real daemon with the personality and the embedded default's components, shared
    by the tests of one file."""
    with run_mechad() as daemon:
        yield daemon


@pytest.fixture()
def dapr_env(mechad: Mechad, monkeypatch: pytest.MonkeyPatch) -> Mechad:
    """Points this process's Dapr SDK at the daemon (the SDK reads its settings from the
    environment when a client is made)."""
    for k, v in mechad.env().items():
        monkeypatch.setenv(k, v)
    _reload_sdk_settings()
    return mechad


def _reload_sdk_settings() -> None:
    """The SDK reads ``DAPR_*`` variables into ``dapr.conf.settings`` at import; read them
    again so each daemon's endpoints apply."""
    from dapr.conf import settings
    for name in dir(settings):
        if name.isupper() and name in os.environ:
            setattr(settings, name, os.environ[name])


def run_as(uid: int, code: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs Python ``code`` in a fresh interpreter as ``uid`` (needs root), with ``env``
    added; returns the finished process (stdout, stderr as text)."""
    def demote() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    full = {"PATH": os.environ.get("PATH", ""), "HOME": "/tmp", **env}
    python = sys.executable
    if uid != os.geteuid():
        # This interpreter may live where other uids cannot reach it (pyenv under /root):
        # use the system's, with this venv's packages, which are readable by all.
        python = shutil.which("python3", path="/usr/bin:/bin") or python
        full["PYTHONPATH"] = os.pathsep.join(site.getsitepackages())
    return subprocess.run([python, "-c", textwrap.dedent(code)], env=full,
                          capture_output=True, text=True, timeout=timeout,
                          preexec_fn=demote if uid != os.geteuid() else None)


NOBODY = 65534
