"""The canary's judge, pure: counters in, a verdict and its table out.

A judged canary (``fab deploy --canary M --judge``) is compared with the
baseline (the cluster's other machines) over one window, on counters read
twice, at its start and at its end, from each machine's router (requests,
5xx answers, the request time as a cumulative histogram) and from the
balancer (each server's sessions, connection and response errors, server
aborts, failed health checks). Only the differences count, for canary and
baseline alike; a counter that went down (its router restarted) counts from
zero. The checks and their limits follow the cluster file's ``canary:``
section (``tasks.model.cluster.Canary``):

- volume: too few requests on either side is a verdict of its own
  (inconclusive), unless a check already fails;
- errors: the canary's rate may reach ``max_error_rate``, or
  ``max_error_ratio`` times the baseline's when that is higher; while the
  volume is short the rate is taken over ``min_requests`` (errors so many
  that no success to come could clear them fail it all the same);
- failed health checks: no more than the worst baseline machine had;
- latency: the canary's 95th percentile of request time at its router may be
  ``max_latency_ratio`` times the baseline's (taken as at least
  ``min_latency``). haproxy's session time is shown beside it, not judged:
  it is a mean over its last sessions, before the window too (and in
  ``mode tcp`` its HTTP counters are empty, so none of them is used).
"""
from __future__ import annotations

import math
from dataclasses import field
from typing import Optional

from tasks.model.frozen import frozen

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
OK, FAILED, SHORT, SHOWN = "ok", "FAIL", "too few", "shown"
QUANTILE = 0.95
INF = math.inf


@frozen
class RouterCounters:
    """One reading of a router's counters (totals since it started)."""
    requests: int = 0
    errors: int = 0        # 5xx answers
    buckets: tuple = ()    # ((upper bound in seconds, requests at most that long), ...), ascending, cumulative

    def minus(self, earlier: "RouterCounters") -> "RouterCounters":
        """What was counted since ``earlier``; everything, when the router restarted meanwhile."""
        if self.requests < earlier.requests or self.errors < earlier.errors:
            return self
        before = dict(earlier.buckets)
        return RouterCounters(self.requests - earlier.requests, self.errors - earlier.errors,
                              tuple((le, max(0, n - before.get(le, 0))) for le, n in self.buckets))

    def plus(self, other: "RouterCounters") -> "RouterCounters":
        theirs = dict(other.buckets)
        mine = dict(self.buckets)
        bounds = sorted(set(mine) | set(theirs))
        return RouterCounters(self.requests + other.requests, self.errors + other.errors,
                              tuple((le, mine.get(le, 0) + theirs.get(le, 0)) for le in bounds))


@frozen
class BalancerCounters:
    """One reading of haproxy's counters of one machine (its servers in every backend, summed)."""
    sessions: int = 0
    connection_errors: int = 0
    response_errors: int = 0
    aborts: int = 0           # by the server
    check_failures: int = 0
    session_time: int = 0     # ms, haproxy's mean over its last sessions (not a counter)

    @property
    def errors(self) -> int:
        return self.connection_errors + self.response_errors + self.aborts

    def minus(self, earlier: "BalancerCounters") -> "BalancerCounters":
        """Since ``earlier`` (a reload of haproxy starts its counters afresh: then everything)."""
        if self.sessions < earlier.sessions:
            return self
        return BalancerCounters(self.sessions - earlier.sessions,
                                max(0, self.connection_errors - earlier.connection_errors),
                                max(0, self.response_errors - earlier.response_errors),
                                max(0, self.aborts - earlier.aborts),
                                max(0, self.check_failures - earlier.check_failures), self.session_time)


@frozen
class Reading:
    """What one machine's counters said at one time."""
    router: RouterCounters
    balancer: BalancerCounters


@frozen
class Check:
    name: str
    canary: str
    baseline: str
    limit: str
    outcome: str   # OK, FAILED, SHORT, SHOWN
    figures: dict = field(default_factory=dict)


@frozen
class Verdict:
    outcome: str   # PASS, FAIL, INCONCLUSIVE
    machine: str
    baseline: tuple
    window: float  # seconds between the two readings
    weight: float  # percent of new connections the canary had
    checks: tuple

    @property
    def failed(self) -> list:
        return [c for c in self.checks if c.outcome == FAILED]

    def summary(self) -> str:
        """One line: the verdict and the figures that made it."""
        if self.outcome == FAIL:
            why = "; ".join(f"{c.name} {c.canary}, limit {c.limit}" for c in self.failed)
        elif self.outcome == INCONCLUSIVE:
            why = "; ".join(f"{c.name}: canary {c.canary}, baseline {c.baseline}, {c.limit} needed"
                            for c in self.checks if c.outcome == SHORT)
        else:
            why = ", ".join(f"{c.name} {c.canary}" for c in self.checks if c.outcome == OK)
        return f"{self.outcome}: {why}"

    def to_dict(self) -> dict:
        """What the release history keeps of it."""
        return {"verdict": self.outcome, "machine": self.machine, "baseline": list(self.baseline),
                "window": round(self.window, 1), "weight": self.weight,
                "checks": [{"check": c.name, "canary": c.canary, "baseline": c.baseline, "limit": c.limit,
                            "outcome": c.outcome, **c.figures} for c in self.checks]}


# ---------------------------------------------------------------- figures

def quantile(buckets: tuple, q: float = QUANTILE) -> Optional[float]:
    """The ``q`` quantile (seconds) of a cumulative histogram, interpolated within its bucket (as
    Prometheus' histogram_quantile does); None when it counted nothing. In the last, unbounded
    bucket: its lower bound."""
    total = buckets[-1][1] if buckets else 0
    if total <= 0:
        return None
    rank, low, below = q * total, 0.0, 0
    for le, count in buckets:
        if count >= rank:
            if le == INF:
                return low
            return low + (le - low) * ((rank - below) / (count - below) if count > below else 1)
        low, below = le, count
    return low


def rate(errors: int, requests: int) -> float:
    return 100.0 * errors / requests if requests else 0.0


def error_limit(thresholds, baseline_rate: float) -> float:
    """The canary's highest acceptable error rate, percent."""
    return max(thresholds.max_error_rate, thresholds.max_error_ratio * baseline_rate)


def latency_limit(thresholds, baseline_ms: Optional[float]) -> float:
    return thresholds.max_latency_ratio * max(baseline_ms or 0.0, thresholds.min_latency)


def _percent(errors: int, requests: int) -> str:
    return f"{errors}/{requests} ({rate(errors, requests):.1f}%)"


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


# ---------------------------------------------------------------- the judge

def window_of(before: dict, after: dict) -> dict:
    """machine -> Reading of what each machine counted between the two readings."""
    return {m: Reading(after[m].router.minus(before[m].router), after[m].balancer.minus(before[m].balancer))
            for m in after if m in before}


def judge(thresholds, machine: str, before: dict, after: dict, seconds: float, weight: float) -> Verdict:
    """The verdict on ``machine`` (the canary) against the other machines of ``before`` and ``after``
    (machine -> Reading, at the window's start and end), under ``thresholds`` (a Canary)."""
    counted = window_of(before, after)
    canary = counted[machine]
    others = sorted(m for m in counted if m != machine)
    base_router = RouterCounters()
    for m in others:
        base_router = base_router.plus(counted[m].router)
    base_sessions = sum(counted[m].balancer.sessions for m in others)
    base_errors = sum(counted[m].balancer.errors for m in others)
    checks = [
        _volume(thresholds, canary.router.requests, base_router.requests),
        _errors("5xx (router)", thresholds, canary.router.errors, canary.router.requests,
                base_router.errors, base_router.requests),
        _errors("errors (balancer)", thresholds, canary.balancer.errors, canary.balancer.sessions,
                base_errors, base_sessions),
        _check_failures(canary.balancer.check_failures, [counted[m].balancer.check_failures for m in others]),
        _latency(thresholds, quantile(canary.router.buckets), quantile(base_router.buckets),
                 canary.router.requests >= thresholds.min_requests),
        _session_time(canary.balancer.session_time, [counted[m].balancer for m in others]),
    ]
    outcome = FAIL if any(c.outcome == FAILED for c in checks) else \
        INCONCLUSIVE if any(c.outcome == SHORT for c in checks) else PASS
    return Verdict(outcome, machine, tuple(others), seconds, weight, tuple(checks))


def _volume(thresholds, canary: int, baseline: int) -> Check:
    enough = canary >= thresholds.min_requests and baseline >= thresholds.min_requests
    return Check("requests (router)", str(canary), str(baseline), f">= {thresholds.min_requests} each",
                 OK if enough else SHORT, {"canary_requests": canary, "baseline_requests": baseline})


def _errors(name: str, thresholds, errors: int, requests: int, base_errors: int, base_requests: int) -> Check:
    limit = error_limit(thresholds, rate(base_errors, base_requests))
    # Short of volume, the rate over min_requests: a failure no success to come could clear.
    judged = rate(errors, max(requests, thresholds.min_requests))
    return Check(name, _percent(errors, requests), _percent(base_errors, base_requests), f"<= {limit:.1f}%",
                 FAILED if judged > limit else OK,
                 {"canary_errors": errors, "canary_count": requests, "baseline_errors": base_errors,
                  "baseline_count": base_requests, "limit_percent": round(limit, 2)})


def _check_failures(canary: int, baseline: list) -> Check:
    worst = max(baseline, default=0)
    return Check("failed checks (balancer)", str(canary), str(worst), f"<= {worst}", FAILED if canary > worst else OK,
                 {"canary_failures": canary, "baseline_worst": worst})


def _latency(thresholds, canary: Optional[float], baseline: Optional[float], enough: bool) -> Check:
    limit = latency_limit(thresholds, None if baseline is None else baseline * 1000) / 1000
    outcome = OK if canary is None or canary <= limit else FAILED if enough else SHORT
    return Check(f"p{QUANTILE * 100:.0f} request time (router)", _ms(canary), _ms(baseline), f"<= {_ms(limit)}",
                 outcome, {"canary_ms": None if canary is None else round(canary * 1000, 1),
                           "baseline_ms": None if baseline is None else round(baseline * 1000, 1),
                           "limit_ms": round(limit * 1000, 1)})


def _session_time(canary_ms: int, baseline: list) -> Check:
    sessions = sum(b.sessions for b in baseline)
    mean = (sum(b.session_time * b.sessions for b in baseline) / sessions) if sessions else \
        (sum(b.session_time for b in baseline) / len(baseline) if baseline else 0)
    return Check("session time (balancer)", f"{canary_ms} ms", f"{mean:.0f} ms", "(haproxy's mean: not judged)",
                 SHOWN, {"canary_ms": canary_ms, "baseline_ms": round(mean, 1)})


# ---------------------------------------------------------------- the table

def table(verdict: Verdict) -> str:
    """The verdict as printed: a line for the window, one per check, the verdict."""
    rows = [("check", "canary", "baseline", "limit", "outcome")] + \
        [(c.name, c.canary, c.baseline, c.limit, c.outcome) for c in verdict.checks]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    head = (f"canary {verdict.machine} ({verdict.weight:g}% of new connections) vs baseline "
            f"{', '.join(verdict.baseline) or '-'}, over {verdict.window:.1f} s")
    lines = [head] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines + [f"verdict: {verdict.summary()}"])


# ---------------------------------------------------------------- the canary's weight

MAX_WEIGHT = 256  # haproxy's highest server weight


def weights(percent: float, machines: int) -> tuple:
    """(the canary's weight, each other machine's) so that roundrobin gives the canary about ``percent``
    of new connections among ``machines`` (the canary included), within haproxy's 1..256."""
    others = machines - 1
    if others < 1:
        return (1, 1)
    if percent >= 100:
        return (1, 0)
    best = (math.inf, 1, 1)
    for other in range(MAX_WEIGHT, 0, -1):
        mine = min(MAX_WEIGHT, max(1, round(percent * others * other / (100 - percent))))
        error = abs(100 * mine / (mine + others * other) - percent)
        if error < best[0] - 1e-9:
            best = (error, mine, other)
    return best[1], best[2]
