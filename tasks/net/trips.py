"""Round trips: how many times a task waited on a host's answer, per host and kind.

Over a WAN each round trip on the critical path costs the network's RTT, so they, not CPU, decide
how long a task takes there. The executor owns one ``RoundTrips`` per task and counts its own
(``command``: a command on its own channel; ``login``: an SSH connection opened, itself a few
RTTs); the etcd, registry and Docker clients count each HTTP request through ``hook``. A task's
``--json`` reports them (``summary``); ``timeline`` lists them in the order they were counted,
each with when and what (``bench/wan.py --list`` prints a no-op deploy's).
"""
from __future__ import annotations

import threading
import time
from collections import Counter
from typing import NamedTuple

KINDS = ("login", "command", "etcd", "registry", "docker")


class Trip(NamedTuple):
    """One counted round trip: answered ``at`` seconds after the counter was made, ``took`` seconds
    after it was sent (0: not known), on ``host``, of ``kind``; ``what`` it was (a command's
    description, an HTTP request's method and path)."""
    at: float
    host: str
    kind: str
    what: str
    took: float = 0.0


class RoundTrips:
    def __init__(self):
        self._counts: Counter = Counter()
        self._trips: list = []
        self._started = time.monotonic()
        self._lock = threading.Lock()

    def count(self, host: str, kind: str, n: int = 1, what: str = "", took: float = 0.0) -> None:
        at = time.monotonic() - self._started
        with self._lock:
            self._counts[(host, kind)] += n
            self._trips += [Trip(at, host, kind, what, took)] * n

    def hook(self, host: str, kind: str):
        """A requests response hook counting each answered request of a session as one round trip."""
        def counted(response, *args, **kwargs):
            self.count(host, kind, what=request_of(response), took=took_by(response))
            return response
        return counted

    def timeline(self) -> list:
        """Every round trip counted, in order (``Trip``)."""
        with self._lock:
            return list(self._trips)

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


def waits(trips) -> list:
    """The round trips grouped into the waits they cost one after the other: trips whose times
    overlap (sent before the group's last answer) cost one wait together. Each group is a list of
    ``Trip`` in the order they were sent; a trip of unknown duration is taken as sent when answered. Pure."""
    groups: list = []
    end = None
    for trip in sorted(trips, key=lambda t: t.at - t.took):
        if end is None or trip.at - trip.took >= end:
            groups.append([])
            end = trip.at
        groups[-1].append(trip)
        end = max(end, trip.at)
    return groups


def request_of(response) -> str:
    """'METHOD /path' of the request a requests response answers ("" for anything else)."""
    request = getattr(response, "request", None)
    return f"{request.method} {request.path_url}" if request is not None else ""


def took_by(response) -> float:
    """Seconds from a requests response's request sent to its answer's head (0: not known)."""
    elapsed = getattr(response, "elapsed", None)
    return elapsed.total_seconds() if elapsed is not None else 0.0
