"""The contract every runbook relies on to reach the cluster's hosts: what an executor must do.

``tasks.net.executor.Executor`` fulfils it over SSH; the recording fake of the unit tests
(``tests/unit/fakes.py``) fulfils it in memory; runbooks and steps are typed against it, not
against either. Like a connector of other deploy tools: run a command, stage and write files,
read one back, fan work out over hosts; plus what our tasks add: the check that the task may
still change things (interrupts, the cluster's lock), and the steps in flight for the watchdog.
"""
from __future__ import annotations

import threading
from typing import Any, Callable, ContextManager, Iterable, NamedTuple, Optional, Protocol

from tasks.commands.shell import Staged
from tasks.model.cluster import Cluster


class Result(NamedTuple):
    """What one remote command gave: its exit status and its output."""
    exited: int
    stdout: str
    stderr: str


class Connector(Protocol):
    cluster: Cluster
    fence: Any                      # the lock confirmed before every change, once the task holds one
    interrupted: threading.Event    # set by the first Ctrl-C, SIGTERM or SIGHUP
    run_id: str                     # staged files of concurrent runs never collide
    fan_out: int                    # hosts ``parallel`` works on at once

    def reachable(self, host: str) -> Optional[str]: ...

    def forget(self, host: str) -> None: ...

    def check(self, what: str = "the next change") -> None: ...

    def finishing(self) -> ContextManager[None]: ...

    def in_flight(self) -> list: ...

    def stuck(self) -> Optional[str]: ...

    def step(self, host: str, what: str, deadline: float) -> ContextManager[None]: ...

    def run(self, host: str, command: str, *, what: Optional[str] = None, deadline: Optional[int] = None,
            stdin: Optional[str] = None, check: bool = True, change: bool = True, stream: bool = False,
            on_line: Optional[Callable] = None) -> Result: ...

    def read(self, host: str, command: str, *, what: Optional[str] = None, deadline: Optional[int] = None,
             check: bool = True) -> Result: ...

    def stage_files(self, host: str, files: Iterable, *, before: Optional[str] = None, after: Optional[str] = None,
                    undo: Optional[str] = None, what: Optional[str] = None,
                    deadline: Optional[int] = None) -> Staged: ...

    def write_files(self, host: str, files: Iterable) -> None: ...

    def write_file(self, host: str, path: str, content: Any, mode: int = 0o644) -> None: ...

    def read_file(self, host: str, path: str, missing: Any = None) -> Any: ...

    def parallel(self, work: Callable, items: Iterable, *, describe: Callable = str) -> list: ...

    def close(self) -> None: ...
