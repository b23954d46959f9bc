"""`grove ui`: the Dagster UI (`dagster dev` on a profile's Dagster home and workspace.yaml) and the MLflow
UI (on the profile's tracking store), started together and stopped together.

Both servers bind to 127.0.0.1 unless `host` says otherwise: the Dagster UI launches runs and the
MLflow UI edits runs, and neither asks who is calling, so they are reachable from this machine only
by default. Each server runs in a process group of its own. A terminal's Ctrl-C then reaches only
this supervisor, which stops every process of each group (`dagster dev` starts a webserver, a daemon
and code servers): SIGTERM first, SIGKILL for whatever is left after `stop_timeout_s`. SIGTERM to
the supervisor (a service manager stopping it) does the same, and so does one server exiting.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from orchestration.profile import PARAMS_ENV, PROFILE_ENV, REPO_ROOT, RUNS_ENV, Profile

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
DAGSTER_PORT = 3000
MLFLOW_PORT = 5000
WORKSPACE = REPO_ROOT / "workspace.yaml"


@dataclass(frozen=True)
class Server:
    name: str
    command: list[str]
    url: str
    env: Mapping[str, str] = field(default_factory=dict)  # set on top of this process's environment


def _executable(name: str) -> str:
    """The console script next to this interpreter (the project's venv), else the one on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost
        return False


def _url(host: str, port: int) -> str:
    shown = LOOPBACK if host in ("0.0.0.0", "::") else host
    return f"http://{shown}:{port}"


def ui_servers(profile: Profile, root: Path, host: str = LOOPBACK, dagster_port: int = DAGSTER_PORT,
               mlflow_port: int = MLFLOW_PORT) -> list[Server]:
    """The two servers of a profile's runs root: `dagster dev` and `mlflow ui`, both on `host`."""
    from orchestration.definitions import experiment_name
    from orchestration.demo import prepare_home
    from orchestration.resources import LAYOUT, MlflowResource

    if not is_loopback(host):
        log.warning("the UIs will listen on %s: whoever reaches this machine's ports %d and %d can launch and edit runs "
                    "(neither server authenticates)", host, dagster_port, mlflow_port)
    home = prepare_home(root / LAYOUT["dagster_home"], int(profile.get("orchestration.gpu_slots", 1)))
    # the code location that `dagster dev` loads builds its definitions from the same profile, file and root
    location_env = {"DAGSTER_HOME": str(home), PROFILE_ENV: profile.name, PARAMS_ENV: str(Path(profile.params_file).resolve()),
                    RUNS_ENV: str(root.resolve())}
    store = MlflowResource.local(root, experiment_name(profile)).store_uri
    return [
        Server("dagster", [_executable("dagster"), "dev", "-w", str(WORKSPACE), "--host", host, "--port", str(dagster_port)],
               _url(host, dagster_port), location_env),
        Server("mlflow", [_executable("mlflow"), "ui", "--backend-store-uri", store, "--host", host, "--port", str(mlflow_port)],
               _url(host, mlflow_port)),
    ]


def _signal_group(process: subprocess.Popen, signum: int) -> bool:
    """Send `signum` to the process's group; False when no process of the group is left."""
    try:
        os.killpg(process.pid, signum)
        return True
    except ProcessLookupError:
        return False


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader, so a finished one does not count as alive
    return _signal_group(process, 0)


def stop_servers(processes: Sequence[subprocess.Popen], timeout_s: float) -> None:
    """SIGTERM to every group, then SIGKILL to the groups that still have a process after `timeout_s`."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(_group_alive(p) for p in processes):
        time.sleep(0.1)
    for process in processes:
        if _group_alive(process):
            log.warning("pid %d's process group ignored SIGTERM for %.0f s: killing it", process.pid, timeout_s)
            _signal_group(process, signal.SIGKILL)
    for process in processes:
        process.wait()


def run_servers(servers: Sequence[Server], stop_timeout_s: float = 10.0, poll_s: float = 0.5) -> int:
    """Start the servers, each in a new session; block until SIGINT, SIGTERM or one of them exits; stop
    them all. Returns 0 after a signal, else the exit code of the server that ended first (1 if 0)."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
    processes: list[subprocess.Popen] = []
    code = 0
    try:
        for server in servers:
            processes.append(subprocess.Popen(server.command, env={**os.environ, **server.env}, start_new_session=True))
            log.info("%s UI: %s (pid %d)", server.name, server.url, processes[-1].pid)
        while not stop.is_set():
            ended = [(s, p) for s, p in zip(servers, processes) if p.poll() is not None]
            if ended:
                server, process = ended[0]
                log.error("%s UI exited with code %d; stopping the others", server.name, process.returncode)
                code = process.returncode or 1
                break
            stop.wait(poll_s)
    finally:
        if received:
            log.info("%s: stopping the UIs", signal.Signals(received[0]).name)
        stop_servers(processes, stop_timeout_s)
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code
