"""What the bench scripts share, so each holds only what it measures: the project root, put first
on sys.path when this module is imported (a script run as `python bench/X.py` then imports `tasks`
and `sandbox` from this checkout, not bench/sandbox.py), a whole `fab` command run and timed as an
operator runs it, a step timed and printed, the line that sums up repeated figures, and a probe
of requests through a cluster's balancer. Imports
nothing from `tasks`, so the scripts' own imports say which tasks they measure.
"""
from __future__ import annotations

import http.client
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple, Sequence

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SAID = "{what}: {seconds:6.1f} s"
"""`timed`'s line: the step, a colon, its seconds."""
COLUMN = "{what:40} {seconds:7.1f} s"
"""`timed`'s line with the steps in a column, their seconds aligned after it."""


class Ran(NamedTuple):
    """A `fab` command that ended: its wall time (Python's start included) and what it printed."""

    seconds: float
    stdout: str
    stderr: str


def fab(*args: str, env: dict[str, str] | None = None, ok: Iterable[int] = (0,)) -> Ran:
    """`fab ARGS` from the project root, with ``env`` over this process's environment. An exit
    status not in ``ok`` ends the script with the command and its standard error."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    seconds = time.monotonic() - started
    if proc.returncode not in tuple(ok):
        sys.exit(f"fab {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return Ran(seconds, proc.stdout, proc.stderr)


def seconds(step: Callable[..., Any], *args: Any) -> float:
    """Wall time of ``step(*args)``."""
    started = time.monotonic()
    step(*args)
    return time.monotonic() - started


def timed(what: str, step: Callable[..., Any], *args: Any, form: str = SAID) -> float:
    """Runs ``step(*args)``, prints its wall time as ``form`` lays it out (`SAID` or `COLUMN`) and
    returns it."""
    took = seconds(step, *args)
    print(form.format(what=what, seconds=took), flush=True)
    return took


def summary(what: str, figures: Sequence[float], *, width: int, note: str, digits: int = 1) -> str:
    """One line for a repeated measurement: ``what`` in a column ``width`` wide, then the
    figures' min, median and max in seconds with ``digits`` decimals, then ``note`` in brackets."""
    def s(x: float) -> str:
        return f"{x:5.{digits}f} s"
    return (f"{what:{width}} min {s(min(figures))}  median {s(statistics.median(figures))}  "
            f"max {s(max(figures))}  ({note})")


class Probe:
    """GET /version through the ``cluster``'s balancer every 0.05 s in a thread until stopped;
    counts what it sent and what failed."""

    def __init__(self, cluster):
        self.host, self.port = cluster.balancer.host, cluster.balancer.http_port
        self.sent = self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.05):
            self.sent += 1
            try:
                conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
                conn.request("GET", "/version")
                if conn.getresponse().status != 200:
                    self.failed += 1
                conn.close()
            except (OSError, http.client.HTTPException):
                self.failed += 1
