"""What a task shows while it runs: progress lines on standard error.

``say`` prints one line (clearing the live progress line first, when one stands on a terminal);
``progress_line`` renders the steps still running, which the executor redraws every
``PROGRESS_EVERY`` seconds once a step has run ``PROGRESS_AFTER`` seconds.
"""
from __future__ import annotations

import sys
import threading

# Reentrant: the SIGINT handler says what it does, and may run while the main thread is inside say().
_print_lock = threading.RLock()
_progress_shown = threading.Event()  # a progress line stands on the terminal, to be cleared first



PROGRESS_EVERY = 0.5  # seconds between redraws of the progress line on a terminal


PROGRESS_AFTER = 1.0  # a step shows in it once it has run this long


def say(message: str) -> None:
    """Progress for the operator, on standard error (standard output is for results)."""
    with _print_lock:
        if _progress_shown.is_set():
            sys.stderr.write("\r\x1b[K")
            _progress_shown.clear()
        print(message, file=sys.stderr, flush=True)


def progress_line(steps, now: float, width: int = 100) -> str:
    """One line of the remote steps running longer than ``PROGRESS_AFTER``, per machine with its
    time so far: what a terminal shows while pulls, health checks and the like run. Pure.
    ``steps``: (host, what, started) triples."""
    shown = [f"{host}: {what} {now - started:.0f}s" for host, what, started in sorted(steps, key=lambda s: s[0])
             if now - started >= PROGRESS_AFTER]
    line = "… " + " · ".join(shown) if shown else ""
    return line if len(line) <= width else line[:width - 1] + "…"
