"""Running a command on the operator's own machine: the cluster file's hooks.

``run_local`` runs a command through ``sh -c`` in a folder, with the environment it is given
(nothing more: the caller decides what it may see), gives each line of its output (standard
error merged) to ``on_line`` as it comes, and stops it, its children too, when its deadline
passes. The one place a task starts a local process.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path
from typing import Callable

from tasks.model.errors import DeadlineError

KILL_AFTER = 5  # s between SIGTERM and SIGKILL for a command past its deadline


def run_local(command: str, env: dict, cwd: Path, deadline: int, on_line: Callable, what: str) -> int:
    """The exit status of ``command`` (``sh -c``, in ``cwd``, with exactly ``env``); DeadlineError when
    it did not end within ``deadline`` s (then it and its children were stopped)."""
    proc = subprocess.Popen(["sh", "-c", command], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    reader = threading.Thread(target=_read, args=(proc, on_line), daemon=True)
    reader.start()
    try:
        status = proc.wait(timeout=deadline)
    except subprocess.TimeoutExpired:
        _stop(proc)
        reader.join(KILL_AFTER)
        raise DeadlineError(f"{what}: not done within {deadline} s (stopped)") from None
    reader.join(KILL_AFTER)
    return status


def _read(proc: subprocess.Popen, on_line: Callable) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        on_line(raw.decode(errors="replace").rstrip("\n"))


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to its process group, SIGKILL when it is still there ``KILL_AFTER`` s later."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=KILL_AFTER)
            return
        except subprocess.TimeoutExpired:
            continue
