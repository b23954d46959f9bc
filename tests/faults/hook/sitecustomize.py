"""Fault-injection hook for the tests in tests/faults (never installed outside them).

The fault tests put this folder first on PYTHONPATH of a subprocess they start in its own session,
so Python imports it at start-up in that process and in every Python process it starts (the Pipes
training and inference processes, DVC). With GROVE_FAULT_ROOT unset it does nothing.

It counts the file-system writes under the watched folders (an open for writing, a rename or
replace, a removal) through a Python audit hook, appending one line per write to
GROVE_FAULT_LOG (shared by every process, under an flock, so the count is global and in order).
With GROVE_FAULT_KILL_AT=k it sends SIGKILL to the whole process group at the k-th write: at once
(before the write happens), or GROVE_FAULT_DELAY seconds later (somewhere inside the writes and
work that follow). Writes by C and Rust code (pyarrow, safetensors) are not audited; the
temporary file that each atomic write opens from Python, and its rename, are.
"""

import os


def _watched_path(event, args):
    """The path a write-like audit event touches, or None."""
    if event == "open":
        path, mode, flags = args
        if mode is not None:
            writes = any(c in mode for c in "wax+")
        else:
            writes = bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))
        return path if writes else None
    if event == "os.rename":
        return args[1]  # os.replace too: the destination is what a reader sees
    # not os.mkdir: `mkdir(parents=True)` tries folders that may already exist, so their count
    # depends on what a run found, and a folder is never a half file
    if event in ("os.remove", "shutil.rmtree"):
        return args[0]
    return None


def _install(root):
    import fcntl
    import signal
    import threading

    log_path = os.environ["GROVE_FAULT_LOG"]
    prefixes = [os.path.join(root, p) for p in os.environ.get("GROVE_FAULT_PREFIXES", "").split(os.pathsep) if p] or [root]
    kill_at = int(os.environ.get("GROVE_FAULT_KILL_AT", "0") or 0)
    delay = float(os.environ.get("GROVE_FAULT_DELAY", "0") or 0)
    state = threading.local()  # the hook's own log writes are audited too

    def kill():
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def record(event, path):
        fd = os.open(log_path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            count = os.pread(fd, size, 0).count(b"\n") + 1 if size else 1
            os.write(fd, f"{count}\t{os.getpid()}\t{event}\t{os.path.relpath(path, root)}\n".encode())
            return count
        finally:
            os.close(fd)

    def hook(event, args):
        if getattr(state, "busy", False):
            return
        path = _watched_path(event, args)
        if path is None or isinstance(path, int):
            return
        state.busy = True
        try:
            path = os.path.abspath(os.fsdecode(path))
            if not any(path == p or path.startswith(p + os.sep) for p in prefixes):
                return
            count = record(event, path)
        finally:
            state.busy = False
        if kill_at and count == kill_at:
            if delay > 0:
                timer = threading.Timer(delay, kill)
                timer.daemon = True
                timer.start()
                # a short-lived writer (a DVC command) can exit before the delay ends, and a daemon
                # timer dies with it: the kill then lands at its exit instead of never
                import atexit

                atexit.register(kill)
            else:
                kill()

    import sys

    sys.addaudithook(hook)


if os.environ.get("GROVE_FAULT_ROOT"):
    _install(os.environ["GROVE_FAULT_ROOT"])
