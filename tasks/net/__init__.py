"""The only code that opens sockets or channels: the SSH executor and its tunnels, the progress
display, a task's session (executor, etcd client, lock), the etcd and registry clients and the
Docker Engine API.

The HTTP stacks (requests, etcd3gw, docker) are imported when a task first speaks HTTP, not when
`fab` starts: a module names them with ``deferred`` (and imports them for the type checker only).
"""
from __future__ import annotations

import importlib
import threading


class deferred:
    """Module ``name``, imported on the first use of one of its attributes; the import system's own
    locks make that safe from several threads at once."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)

    def __repr__(self) -> str:
        return f"deferred({self._name!r})"


def warm(names) -> None:
    """Import the modules ``names`` in a background thread, now: a task that will speak HTTP soon
    has its stack loaded while it waits on the network (its SSH connections), not after. A module
    that fails to import here fails again, and is reported, at its first use."""
    def load() -> None:
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError:
                return
    threading.Thread(target=load, name="imports ahead", daemon=True).start()
