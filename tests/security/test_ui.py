"""`grove ui`: both servers bind to 127.0.0.1 unless told otherwise, and Ctrl-C or SIGTERM stops every
process they started (each server's whole process group), SIGKILL following SIGTERM after the timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from orchestration.profile import load_profile
from orchestration.ui import LOOPBACK, is_loopback, ui_servers

REPO = Path(__file__).resolve().parents[2]


def option(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_both_uis_bind_to_loopback_by_default_on_the_profiles_stores(tmp_path):
    profile = load_profile("demo")
    servers = {s.name: s for s in ui_servers(profile, tmp_path / "runs")}
    assert set(servers) == {"dagster", "mlflow"}
    for server in servers.values():
        assert option(server.command, "--host") == LOOPBACK and server.url.startswith("http://127.0.0.1:")
    dagster, mlflow = servers["dagster"].command, servers["mlflow"].command
    assert dagster[1:3] == ["dev", "-w"] and Path(option(dagster, "-w")) == REPO / "workspace.yaml"
    assert servers["dagster"].env["DAGSTER_HOME"] == str(tmp_path / "runs" / "dagster_home")
    assert (tmp_path / "runs" / "dagster_home" / "dagster.yaml").is_file()
    assert servers["dagster"].env["GROVE_RUNS"] == str((tmp_path / "runs").resolve())
    assert servers["dagster"].env["GROVE_PROFILE"] == "demo"
    assert mlflow[1] == "ui" and option(mlflow, "--backend-store-uri") == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"


def test_another_host_is_used_only_when_asked_for_and_warned_about(tmp_path, caplog):
    servers = ui_servers(load_profile("demo"), tmp_path / "runs", host="0.0.0.0", dagster_port=3100, mlflow_port=5100)
    assert [option(s.command, "--host") for s in servers] == ["0.0.0.0", "0.0.0.0"]
    assert [option(s.command, "--port") for s in servers] == ["3100", "5100"]
    assert "can launch and edit runs" in caplog.text
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.org")


# A stand-in server: records its pid and its child's, then sleeps; with "stubborn" it ignores SIGTERM.
FAKE = """
import os, signal, subprocess, sys, time
pids, stubborn = sys.argv[1], sys.argv[2] == "stubborn"
if stubborn:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
with open(pids, "w") as handle:
    handle.write(f"{os.getpid()} {child.pid}")
time.sleep(600)
"""


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def start_supervisor(tmp_path: Path, servers: list[dict], timeout: float = 1.0) -> subprocess.Popen:
    code = ("import json, sys; from orchestration.ui import Server, run_servers; "
            "sys.exit(run_servers([Server(**s) for s in json.loads(sys.argv[1])], stop_timeout_s=float(sys.argv[2]), poll_s=0.1))")
    return subprocess.Popen([sys.executable, "-c", code, json.dumps(servers), str(timeout)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def fake(tmp_path: Path, name: str, mode: str = "plain") -> dict:
    return {"name": name, "command": [sys.executable, "-c", FAKE, str(tmp_path / f"{name}.pids"), mode], "url": "http://127.0.0.1:1"}


def wait_for_pids(tmp_path: Path, names: list[str]) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        files = [tmp_path / f"{name}.pids" for name in names]
        if all(f.exists() and f.read_text() for f in files):
            return [int(pid) for f in files for pid in f.read_text().split()]
        time.sleep(0.05)
    raise AssertionError("the stand-in servers did not start")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_every_process_of_both_servers(tmp_path, signum):
    supervisor = start_supervisor(tmp_path, [fake(tmp_path, "dagster"), fake(tmp_path, "mlflow", "stubborn")])
    pids = wait_for_pids(tmp_path, ["dagster", "mlflow"])
    assert all(alive(pid) for pid in pids)
    started = time.monotonic()
    supervisor.send_signal(signum)
    assert supervisor.wait(30) == 0
    assert time.monotonic() - started < 10  # the stubborn one is killed after the 1 s timeout
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


def test_a_server_that_exits_stops_the_other_and_gives_its_exit_code(tmp_path):
    # exits with 3 once the other one has started
    pids = str(tmp_path / "dagster.pids")
    wait_then_fail = f"import os, sys, time\nwhile not (os.path.exists({pids!r}) and os.path.getsize({pids!r})): time.sleep(0.05)\nsys.exit(3)"
    failing = {"name": "mlflow", "command": [sys.executable, "-c", wait_then_fail], "url": "http://127.0.0.1:1"}
    supervisor = start_supervisor(tmp_path, [fake(tmp_path, "dagster"), failing])
    assert supervisor.wait(60) == 3
    pids = wait_for_pids(tmp_path, ["dagster"])
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if alive(pid)] == []


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return found


@pytest.mark.slow
def test_the_real_mlflow_ui_listens_on_loopback_only_and_stops(tmp_path):
    port = free_port()
    mlflow = next(s for s in ui_servers(load_profile("demo"), tmp_path / "runs", mlflow_port=port) if s.name == "mlflow")
    supervisor = start_supervisor(tmp_path, [{"name": mlflow.name, "command": mlflow.command, "url": mlflow.url}], timeout=10)
    try:
        deadline = time.monotonic() + 120
        while not listening_addresses(port) and time.monotonic() < deadline and supervisor.poll() is None:
            time.sleep(0.2)
        assert listening_addresses(port) == {LOOPBACK}
    finally:
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(60) == 0
    assert listening_addresses(port) == set()
