"""The two UIs of the tiny lineage, opened in a real browser (the system's Chromium driven by Playwright).

Once a session: a copy of the session's tiny lineage (`tiny_demo`, shared with tests/orchestration; a copy
because these tests launch runs and both servers write to their stores), `grove ui` on it on two free
ports of 127.0.0.1 (the project's own supervisor: SIGTERM stops both servers at the end), and one
headless Chromium. Every test saves full-page screenshots into one folder, `$GROVE_BROWSER_SHOTS` or else
runs/browser-shots/; the session's last summary lines list them.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from orchestration.profile import REPO_ROOT, RUNS_ENV, Profile
from orchestration.ui import LOOPBACK
from tests.runs_copy import copy_runs_root

SHOTS_ENV = "GROVE_BROWSER_SHOTS"
CHROMIUM_ENV = "GROVE_CHROMIUM"
CHROMIUM_NAMES = ("chromium", "chromium-headless-shell", "chromium-browser")
INSTALL_HINT = (f"install Chromium (Debian/Ubuntu: sudo apt-get install -y chromium; scripts/setup.sh does it when run "
                f"as root) or set {CHROMIUM_ENV} to a Chromium executable")
START_TIMEOUT_S = 240.0  # `dagster dev` loads the code location in a subprocess: slow on a busy 2-core machine
STOP_TIMEOUT_S = 60.0
ACTION_TIMEOUT_MS = 60_000  # each click or expectation (a page of the UIs loads in seconds; the machine may be busy)
SHOTS = pytest.StashKey[list]()
LOCATION_QUERY = ("{ workspaceOrError { __typename ... on PythonError { message } ... on Workspace { locationEntries { "
                  "loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }")


def shots_folder() -> Path:
    return Path(os.environ.get(SHOTS_ENV) or REPO_ROOT / "runs" / "browser-shots")


def find_chromium() -> str | None:
    """`$GROVE_CHROMIUM` (an error when it names no executable), else the first Chromium on PATH, else None."""
    named = os.environ.get(CHROMIUM_ENV, "").strip()
    if named:
        found = shutil.which(named)
        if found is None:
            raise FileNotFoundError(f"{CHROMIUM_ENV}={named}: no such executable")
        return found
    return next((found for name in CHROMIUM_NAMES if (found := shutil.which(name))), None)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[SHOTS] = []


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    saved = config.stash.get(SHOTS, [])
    if saved:
        terminalreporter.write_sep("=", f"browser screenshots: {len(saved)} in {shots_folder()}")
        for path in saved:
            terminalreporter.write_line(str(path))


@dataclass(frozen=True)
class Uis:
    dagster: str  # base URLs
    mlflow: str
    root: Path  # the runs root both serve (a copy of the session's lineage)
    profile: Profile
    log: Path  # both servers' output


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until_answering(urls: list[str], supervisor: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    waiting = list(urls)
    while waiting:
        if supervisor.poll() is not None:
            raise RuntimeError(f"`grove ui` exited with code {supervisor.returncode} before {waiting} answered; its output: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{waiting} did not answer within {START_TIMEOUT_S:.0f} s; `grove ui`'s output: {log}")
        waiting = [url for url in waiting if not answers(url)]
        time.sleep(0.5)


def graphql(dagster: str, query: str) -> dict[str, Any]:
    """The data of a query to the Dagster webserver's GraphQL API."""
    body = json.dumps({"query": query}).encode()
    request = urllib.request.Request(f"{dagster}/graphql", data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if answer.get("errors"):
        raise RuntimeError(f"{dagster}/graphql: {answer['errors']}")
    return answer["data"]


def location_status(dagster: str) -> tuple[str, str]:
    """The code location's load status and, when it failed to load, its error."""
    workspace = graphql(dagster, LOCATION_QUERY)["workspaceOrError"]
    entries = workspace.get("locationEntries") or [{"loadStatus": "MISSING", "locationOrLoadError": workspace}]
    entry = entries[0]
    return entry["loadStatus"], (entry.get("locationOrLoadError") or {}).get("message") or ""


def wait_until_loaded(dagster: str, log: Path) -> None:
    """Until `dagster dev`'s code location has loaded; a load error fails with its message."""
    deadline = time.monotonic() + START_TIMEOUT_S
    status, error = location_status(dagster)
    while status != "LOADED" or error:
        if error:
            raise RuntimeError(f"the code location did not load: {error}\n`grove ui`'s output: {log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the code location is still {status} after {START_TIMEOUT_S:.0f} s; `grove ui`'s output: {log}")
        time.sleep(1.0)
        status, error = location_status(dagster)


def stop(supervisor: subprocess.Popen, log: Path) -> None:
    """SIGTERM to `grove ui`, which stops both servers' process groups; kill it if it hangs."""
    supervisor.send_signal(signal.SIGTERM)
    try:
        code = supervisor.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        supervisor.kill()
        supervisor.wait()
        raise RuntimeError(f"`grove ui` did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; its output: {log}") from None
    assert code == 0, f"`grove ui` stopped with code {code}; its output: {log}"


@pytest.fixture(scope="package")
def chromium() -> str:
    """The Chromium executable, and Playwright importable; else the browser tests are skipped (before the lineage runs)."""
    pytest.importorskip("playwright.sync_api", reason="Playwright is missing: pip install -e '.[test]'")
    executable = find_chromium()
    if executable is None:
        pytest.skip(f"no Chromium found: {INSTALL_HINT}")
    return executable


@pytest.fixture(scope="package")
def uis(chromium: str, tiny_demo: tuple[Any, Path], tiny_profile: Profile, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uis]:
    """`grove ui` on a copy of the tiny lineage, on free ports of 127.0.0.1, until the browser tests are done (package scope:
    the servers and Playwright's event loop must not outlive them, later tests call asyncio.run())."""
    _, lineage = tiny_demo
    folder = tmp_path_factory.mktemp("browser")
    root = copy_runs_root(lineage, folder / "runs")
    dagster_port, mlflow_port = free_port(), free_port()
    grove = Path(sys.executable).with_name("grove")
    command = [str(grove) if grove.exists() else "grove", "ui", "--profile", tiny_profile.name, "--params", str(tiny_profile.params_file),
               "--dagster-port", str(dagster_port), "--mlflow-port", str(mlflow_port)]
    log = folder / "grove-ui.log"
    with open(log, "wb") as output:
        supervisor = subprocess.Popen(command, cwd=REPO_ROOT, env={**os.environ, RUNS_ENV: str(root)}, stdout=output,
                                      stderr=subprocess.STDOUT)
    try:
        found = Uis(f"http://{LOOPBACK}:{dagster_port}", f"http://{LOOPBACK}:{mlflow_port}", root, tiny_profile, log)
        wait_until_answering([f"{found.dagster}/server_info", f"{found.mlflow}/health"], supervisor, log)
        wait_until_loaded(found.dagster, log)
        # What the "Skip" of `dagster dev`'s newsletter invitation does: otherwise it covers the first page opened.
        graphql(found.dagster, "mutation { setNuxSeen }")
        yield found
    finally:
        stop(supervisor, log)


@pytest.fixture(scope="package")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True)
        # expect()'s own default is 5 s; this process runs only these tests' Playwright
        expect.set_options(timeout=ACTION_TIMEOUT_MS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a browser context of its own: no cookies or local storage shared between tests."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(ACTION_TIMEOUT_MS)
    opened = context.new_page()
    yield opened
    context.close()


@pytest.fixture
def screenshot(page: Any, request: pytest.FixtureRequest):
    """`with screenshot("name"):` runs its checks on `page`, then saves a full-page screenshot as
    <shots>/<test>-<name>.png; a failing check saves it too and names it in the failure."""
    folder = shots_folder()
    folder.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def taking(name: str) -> Iterator[Path]:
        path = folder / f"{request.node.name}-{name}.png"
        try:
            yield path
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__}: {exc}\n{save(path)}") from exc
        page.screenshot(path=str(path), full_page=True)
        request.config.stash[SHOTS].append(path)

    def save(path: Path) -> str:
        try:
            page.screenshot(path=str(path), full_page=True)
        except Exception as exc:  # a closed or crashed page: the check's own error matters more
            return f"no screenshot ({type(exc).__name__}: {exc})"
        request.config.stash[SHOTS].append(path)
        return f"screenshot of the page: {path}"

    return taking
