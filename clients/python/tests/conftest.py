"""Shared fixtures: where the repository is, the golden vectors, a real ``mechad``, and a
scriptable fake daemon for behaviour the real one cannot be made to show on demand
(UNAVAILABLE, out-of-order answers, stream pushes)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO = Path(os.environ.get("MECHA_REPO", Path(__file__).resolve().parents[3]))
VECTORS = REPO / "abi" / "vectors"
SPEC = REPO / "abi" / "SPEC.md"
# mechad and every module binary of the workspace (modules/NAME with a main.rs).
MODULES = ["mechad"] + [f"mecha-mod-{d.name}" for d in sorted((REPO / "modules").glob("*"))
                        if (d / "src" / "main.rs").exists()]
SECRET_VALUE = "s3cr3t-from-env"


def read_vectors(path: Path) -> list[dict[str, str]]:
    """The block format of abi/vectors/README.md."""
    blocks: list[dict[str, str]] = []
    cur: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").split("\n"):
        if line.startswith("#"):
            continue
        if not line.strip():
            if cur:
                blocks.append(cur)
            cur = {}
            continue
        key, _, value = line.partition(":")
        cur[key] = value.lstrip(" ")
    if cur:
        blocks.append(cur)
    return blocks


def _binaries() -> Path:
    """``$MECHA_BIN_DIR``, else ``${CARGO_TARGET_DIR:-/work/target}/debug``, built with
    cargo into that target directory if a binary is missing there."""
    if d := os.environ.get("MECHA_BIN_DIR"):
        bins = Path(d)
        if missing := [m for m in MODULES if not (bins / m).exists()]:
            pytest.fail(f"MECHA_BIN_DIR={d} lacks {', '.join(missing)}")
        return bins
    target = os.environ.get("CARGO_TARGET_DIR") or "/work/target"
    bins = Path(target) / "debug"
    if not all((bins / m).exists() for m in MODULES):
        build = subprocess.run(
            ["cargo", "build", "--workspace", "--bins", "--exclude", "mecha-bench"],
            cwd=REPO, capture_output=True, text=True, env={**os.environ, "CARGO_TARGET_DIR": target})
        if build.returncode != 0:
            pytest.fail(f"cargo build failed:\n{build.stderr[-4000:]}")
    return bins


@contextlib.contextmanager
def run_mechad(config: str | None = None) -> Iterator[str]:
    """Runs the real daemon on a temporary socket, with ``config`` (YAML) as its
    configuration or else its embedded default; yields the socket path. Builds the
    binaries first if they are missing."""
    bins = _binaries()
    tmp = Path(tempfile.mkdtemp(prefix="mecha-py-"))
    sock = tmp / "mecha.sock"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MECHA_")}
    env["MECHA_SECRET_DB_PASSWORD"] = SECRET_VALUE
    args = [str(bins / "mechad"), "--socket", str(sock), "--data-dir", str(tmp / "data"),
            "--module-dir", str(bins)]
    if config is not None:
        (tmp / "mecha.yaml").write_text(config)
        args += ["--config", str(tmp / "mecha.yaml")]
    log = open(tmp / "mechad.log", "wb")
    proc = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mechad exited with {proc.returncode}:\n{(tmp / 'mechad.log').read_text()}")
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(str(sock))
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("mechad did not create its socket within 30 s")
                time.sleep(0.02)
        yield str(sock)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def mechad() -> Iterator[str]:
    """Starts the real daemon on its embedded default for the whole session; yields
    the socket path."""
    with run_mechad() as sock:
        yield sock


# -- a fake daemon -----------------------------------------------------------------------

HDR = struct.Struct("<4sBBHIHHII")
Frame = tuple[tuple, bytes]  # (unpacked header fields after magic, payload)
Handler = Callable[[list, tuple, bytes], list[bytes]]


def response(req: tuple, status: int = 0, payload: bytes = b"", flags: int = 1,
             opcode: int | None = None) -> bytes:
    """A response frame answering the request header ``req`` (fields after magic)."""
    version, _, op, rid = req[:4]
    return HDR.pack(b"MCHA", version, flags, op if opcode is None else opcode, rid,
                    status, 0, 0, len(payload)) + payload


def error_body(message: str) -> bytes:
    raw = message.encode()
    return len(raw).to_bytes(8, "little") + raw


class FakeDaemon:
    """Answers HELLO itself and every other request with ``handler(state, header,
    payload)``, which returns the frames to send now (possibly none, possibly answers
    to earlier requests kept in ``state``). Records every request header."""

    HELLO_REPLY = bytes([1]) + error_body("fake") + error_body("uid:0") + (4 << 20).to_bytes(4, "little")

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.dir = tempfile.mkdtemp(prefix="mecha-fake-")
        self.path = os.path.join(self.dir, "fake.sock")
        self.requests: list[tuple] = []
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(self.path)
        self.srv.listen()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.srv.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        state: list = []
        f = conn.makefile("rb")
        with conn:
            while True:
                raw = f.read(24)
                if len(raw) < 24:
                    return
                magic, *fields = HDR.unpack(raw)
                payload = f.read(fields[-1])
                h = tuple(fields)
                self.requests.append(h)
                is_hello = h[2] == 1
                out = [response(h, payload=self.HELLO_REPLY)] if is_hello else self.handler(state, h, payload)
                for frame in out:
                    conn.sendall(frame)

    def close(self) -> None:
        self.srv.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def fake() -> Iterator[Callable[[Handler], FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(handler: Handler) -> FakeDaemon:
        made.append(FakeDaemon(handler))
        return made[-1]
    yield make
    for d in made:
        d.close()
