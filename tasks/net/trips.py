"""Round trips: how many times a task waited on a host's answer, per host and kind.

Over a WAN each round trip on the critical path costs the network's RTT, so they, not CPU, decide
how long a task takes there. The executor owns one ``RoundTrips`` per task and counts its own
(``command``: a command on its own channel; ``login``: an SSH connection opened, itself a few
RTTs); the etcd, registry and Docker clients count each HTTP request through ``hook``. A task's
``--json`` reports them (``summary``).
"""
from __future__ import annotations

import threading
from collections import Counter

KINDS = ("login", "command", "etcd", "registry", "docker")


class RoundTrips:
    def __init__(self):
        self._counts: Counter = Counter()
        self._lock = threading.Lock()

    def count(self, host: str, kind: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(host, kind)] += n

    def hook(self, host: str, kind: str):
        """A requests response hook counting each answered request of a session as one round trip."""
        def counted(response, *args, **kwargs):
            self.count(host, kind)
            return response
        return counted

    def of(self, host: str, kinds=KINDS) -> int:
        with self._lock:
            return sum(n for (h, kind), n in self._counts.items() if h == host and kind in kinds)

    def total(self, kinds=KINDS) -> int:
        with self._lock:
            return sum(n for (_, kind), n in self._counts.items() if kind in kinds)

    def summary(self) -> dict:
        """{host: {kind: n}} and the total: what ``--json`` reports."""
        with self._lock:
            hosts: dict = {}
            for (host, kind), n in sorted(self._counts.items()):
                hosts.setdefault(host, {})[kind] = n
            return {"hosts": hosts, "total": sum(self._counts.values())}
