"""The front component's own counters: the command that reads them on a machine, and its parser.

A judged canary (``tasks.runbooks.canary``) reads, on every machine, what its
router counted since it started: requests, 5xx answers, and the request time
as a cumulative histogram, answered in Prometheus' text format on the path
``canary.counters`` of the front component's plain port, asked from the
machine itself (the sample router answers it to loopback only). Counters and
buckets are totals, so the difference of two readings is the window between
them (``tasks.model.canary``).
"""
from __future__ import annotations

import math
import re

from tasks.commands.shell import q
from tasks.model.canary import RouterCounters

REQUESTS = "air_requests_total"
ERRORS = "air_responses_5xx_total"
BUCKET = "air_request_seconds_bucket"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{le="([^"]*)"\})?\s+(\S+)\s*$')


def counters_command(cluster) -> str:
    """Read the front component's counters on the machine it runs on."""
    url = f"http://127.0.0.1:{cluster.front.port}{cluster.canary.counters}"
    return f"curl -fsS -m 5 {q(url)}"


def parse_counters(text: str) -> RouterCounters:
    """The RouterCounters of a counters answer; ValueError when it lacks the totals (not a counters
    answer at all: the path is not the component's counters)."""
    found: dict = {}
    buckets = []
    for line in (text or "").splitlines():
        match = _SAMPLE.match(line.strip())
        if not match or line.startswith("#"):
            continue
        name, le, value = match.groups()
        number = float(value)
        if name == BUCKET and le is not None:
            buckets.append((math.inf if le == "+Inf" else float(le), int(number)))
        elif name in (REQUESTS, ERRORS):
            found[name] = int(number)
    if REQUESTS not in found or ERRORS not in found:
        raise ValueError(f"no {REQUESTS} and {ERRORS} in the answer")
    return RouterCounters(found[REQUESTS], found[ERRORS], tuple(sorted(buckets)))
