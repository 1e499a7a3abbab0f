"""The node dashboard in a real headless Chromium (Selenium), against a real mechad.

Run by ``run-tests.sh`` (which CI calls), as root: the tests switch uids to be a
second tenant and a non-admin viewer, as another user on the node would be.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import mecha
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

REPO = Path(__file__).resolve().parents[3]
NOBODY = 65534
WAIT = 30

if os.geteuid() != 0:
    pytest.skip("the dashboard browser tests switch uids and must run as root", allow_module_level=True)


def binaries() -> Path:
    target = os.environ.get("CARGO_TARGET_DIR") or "/work/target"
    bins = Path(os.environ.get("MECHA_BIN_DIR") or Path(target) / "debug")
    if not (bins / "mechad").exists():
        pytest.fail(f"no mechad in {bins}: build the workspace first (cargo build)")
    return bins


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Daemon:
    """A real mechad on the embedded default, with its HTTP endpoint on loopback."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = str(root / "mecha.sock")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(root / "mechad.log", "wb")
        self.proc = subprocess.Popen(
            [str(binaries() / "mechad"), "--socket", self.socket, "--data-dir", str(root / "data"),
             "--http", f"127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(self.url + "/readyz", timeout=1).status == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"mechad did not become ready; see {root / 'mechad.log'}")

    def api(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.load(r)

    def module(self, name: str) -> dict:
        return next(m for m in self.api("/api/modules") if m["name"] == name)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def as_uid(uid: int, work, hold: bool = False) -> int:
    """Runs ``work()`` in a child process switched to ``uid``; with ``hold`` the child
    stays (its connections open) until killed. Returns the child's pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            work()
            if hold:
                signal.pause()
        except BaseException:  # noqa: BLE001 - a child must never return into pytest
            code = 1
        os._exit(code)
    return pid


def reap(pid: int, kill: bool = False) -> int:
    if kill:
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def browser(root: Path, name: str, uid: int | None = None) -> webdriver.Chrome:
    """Headless Chromium driven by chromedriver, run as ``uid`` when given (so that
    the browser's connections to mechad belong to that uid)."""
    profile = root / f"profile-{name}"
    profile.mkdir()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,2000", f"--user-data-dir={profile}", "--no-first-run"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if uid is not None:
        os.chown(profile, uid, uid)
        wrapper = root / f"chromedriver-{name}"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"exec setpriv --reuid={uid} --regid={uid} --clear-groups "
            f"env HOME={profile} {driver_path} \"$@\"\n")
        wrapper.chmod(0o755)
        driver_path = str(wrapper)
    return webdriver.Chrome(options=options, service=Service(executable_path=driver_path))


def wait_for(driver, condition, what: str, timeout: float = WAIT):
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(condition, message=what)


def cell(driver, row: str, column: str) -> str:
    try:
        return driver.find_element(By.CSS_SELECTOR, f"{row} td.{column}").text
    except Exception:  # noqa: BLE001 - the table is re-rendered under us
        return ""


def total(driver, name: str) -> int:
    text = driver.find_element(By.ID, f"{name}-total").text.strip("()")
    return int(text) if text.isdigit() else -1


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def click_restart(driver, module: str) -> str:
    driver.find_element(By.CSS_SELECTOR, f'#modules tr[data-module="{module}"] button.restart').click()
    wait_for(driver, EC.alert_is_present(), "the confirmation dialog").accept()
    wait_for(driver, lambda d: d.find_element(By.ID, "notice").text, "the restart's outcome")
    return driver.find_element(By.ID, "notice").text


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="mecha-dashboard-"))
    d.chmod(0o755)  # other uids reach the socket inside
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def daemon(root: Path) -> Iterator[Daemon]:
    d = Daemon(root)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def admin(root: Path, daemon: Daemon) -> Iterator[webdriver.Chrome]:
    driver = browser(root, "admin")
    driver.get(daemon.url + "/")
    yield driver
    driver.quit()


def test_the_page_loads_and_every_module_runs(daemon: Daemon, admin) -> None:
    modules = [m["name"] for m in daemon.api("/api/modules")]
    assert len(modules) == 8, modules
    for name in modules:
        # The Dapr personality is socket-activated: idle until a Dapr caller comes.
        state = "idle" if name == "dapr" else "running"
        wait_for(admin, lambda d, n=name, s=state: cell(d, f'#modules tr[data-module="{n}"]', "state") == s,
                 f"module {name} shown as {state}")
    wait_for(admin, lambda d: "admin" in d.find_element(By.ID, "viewer").text, "the viewer shown as admin")
    assert admin.find_elements(By.CSS_SELECTOR, "#components tbody tr"), "components are listed"
    assert console_errors(admin) == []


def test_a_killed_module_shows_its_restart(daemon: Daemon, admin) -> None:
    before = daemon.module("lock")
    os.kill(before["pid"], signal.SIGKILL)
    row = '#modules tr[data-module="lock"]'
    wait_for(admin, lambda d: cell(d, row, "restarts") == str(before["restarts"] + 1)
             and cell(d, row, "state") == "running", "the restart count going up")
    assert cell(admin, row, "pid") != str(before["pid"])
    events = admin.find_element(By.ID, "events").text
    assert "module exited" in events and "lock" in events


def test_a_second_tenant_appears(daemon: Daemon, admin) -> None:
    def connect() -> None:
        c = mecha.Client(daemon.socket)
        c.set("seen-by-the-dashboard", "yes")

    child = as_uid(NOBODY, connect, hold=True)
    try:
        row = f'#tenants tr[data-tenant="uid:{NOBODY}"]'
        wait_for(admin, lambda d: d.find_elements(By.CSS_SELECTOR, row), "the second tenant listed")
        wait_for(admin, lambda d: cell(d, row, "name") == f"uid:{NOBODY}", "its name")
        assert console_errors(admin) == []
    finally:
        reap(child, kill=True)


def test_restart_works_for_an_admin(daemon: Daemon, admin) -> None:
    before = daemon.module("state")
    text = click_restart(admin, "state")
    assert text.startswith("Restarted state"), text
    after = daemon.module("state")
    assert after["restarts"] == before["restarts"] + 1 and after["pid"] != before["pid"]
    row = '#modules tr[data-module="state"]'
    wait_for(admin, lambda d: cell(d, row, "restarts") == str(after["restarts"]), "the new count shown")


def test_restart_is_refused_to_a_non_admin(root: Path, daemon: Daemon) -> None:
    driver = browser(root, "nobody", uid=NOBODY)
    try:
        driver.get(daemon.url + "/")
        wait_for(driver, lambda d: "read-only" in d.find_element(By.ID, "viewer").text,
                 "the viewer shown as read-only")
        before = daemon.module("state")
        text = click_restart(driver, "state")
        assert "refused" in text and f"uid {NOBODY} is not an admin" in text, text
        assert daemon.module("state")["pid"] == before["pid"]
        events = daemon.api("/api/events")
        assert any(e["kind"] == "admin_refused" for e in events)
    finally:
        driver.quit()


def test_a_thousand_tenants_and_two_hundred_apps_stay_paged(daemon: Daemon, admin) -> None:
    def one_request() -> None:
        mecha.Client(daemon.socket).status()

    started = time.monotonic()
    children = []
    for uid in range(40000, 41000):
        children.append(as_uid(uid, one_request))
        if len(children) >= 32:
            assert reap(children.pop(0)) == 0
    for pid in children:
        assert reap(pid) == 0
    client = mecha.Client(daemon.socket)
    registrations = [client.register(f"app-{i:03d}") for i in range(200)]
    print(f"\n1000 tenants and 200 apps made in {time.monotonic() - started:.1f} s")
    try:
        loaded = time.monotonic()
        admin.get(daemon.url + "/")
        # Root, the thousand, nobody if the earlier test ran, and the metrics'
        # "(other)" series that tenants past its first thousand share.
        wait_for(admin, lambda d: total(d, "tenants") >= 1001, "every tenant counted")
        print(f"page shown with every tenant in {time.monotonic() - loaded:.2f} s")
        # The apps listing is reused for two seconds, so the new ones may
        # show one refresh later.
        wait_for(admin, lambda d: total(d, "apps") == 200, "every app counted")
        for path in ("/api/tenants?limit=25", "/api/tenants?limit=25&q=uid%3A40999", "/api/apps?limit=25"):
            print(f"{path} answered in {timed_api(daemon, path) * 1000:.1f} ms")
        assert len(admin.find_elements(By.CSS_SELECTOR, "#tenants tbody tr")) == 25
        assert len(admin.find_elements(By.CSS_SELECTOR, "#apps tbody tr")) == 25
        # Paging and filtering go through the server; the page holds one page.
        admin.find_element(By.CSS_SELECTOR, '.pager[data-list="apps"] button[data-step="1"]').click()
        wait_for(admin, lambda d: d.find_elements(By.CSS_SELECTOR, '#apps tr[data-app="app-025"]'), "page two")
        box = admin.find_element(By.ID, "tenants-filter")
        filtered = time.monotonic()
        box.send_keys("uid:40999")
        wait_for(admin, lambda d: total(d, "tenants") == 1, "the filter applied")
        print(f"tenant filter answered in {time.monotonic() - filtered:.2f} s")
        assert admin.find_elements(By.CSS_SELECTOR, '#tenants tr[data-tenant="uid:40999"]')
        assert console_errors(admin) == []
    finally:
        for r in registrations:
            r.close()


def busy_seconds(daemon: Daemon) -> int:
    """How many of the newest history points in a row saw requests."""
    n = 0
    for p in reversed(daemon.api("/api/history")["points"]):
        if p["rate"] <= 0:
            break
        n += 1
    return n


def timed_api(daemon: Daemon, path: str) -> float:
    started = time.monotonic()
    daemon.api(path)
    return time.monotonic() - started


def test_a_screenshot_under_load(daemon: Daemon, admin) -> None:
    stop = threading.Event()

    def load(n: int) -> None:
        c = mecha.Client(daemon.socket)
        i = 0
        while not stop.is_set():
            c.set(f"load-{n}-{i % 100}", "x" * 64)
            c.get(f"load-{n}-{i % 100}")
            i += 1

    workers = [threading.Thread(target=load, args=(n,), daemon=True) for n in range(4)]
    for w in workers:
        w.start()
    try:
        admin.get(daemon.url + "/")
        box = admin.find_element(By.ID, "tenants-filter")
        box.clear()
        # The charts show the load once a dozen busy seconds are sampled.
        wait_for(admin, lambda d: busy_seconds(daemon) >= 12, "a dozen seconds of load sampled", timeout=60)
        wait_for(admin, lambda d: float(cell(d, '#modules tr[data-module="state"]', "rate") or 0) > 0,
                 "the state module's rate shown")
        path = Path(os.environ.get("MECHA_DASHBOARD_SCREENSHOT") or daemon.root / "dashboard.png")
        assert admin.save_screenshot(str(path))
        print(f"\nscreenshot: {path}")
        points = daemon.api("/api/history")["points"]
        assert any(p["rate"] > 0 for p in points), "the history shows the load"
        assert console_errors(admin) == []
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)
