"""A judged canary, read and acted on: `fab deploy --canary M --judge [SECONDS] [--weight PERCENT]`.

Once the candidate runs on M (``deploy.deploy_canary``), ``judge`` gives M
its share of the balancer's new connections (haproxy's runtime ``set
weight``, the other machines sharing the rest), reads every machine's
counters (its router's, over SSH, and the balancer's ``show stat``) at the
window's start and end, puts the weights back and returns the verdict of
``tasks.model.canary``; a Ctrl-C during the window ends the wait at once
(then the deploy rolls the canary back). ``act`` carries the verdict out:
*pass*, the deploy continues to every machine as a plain deploy does; *fail*,
M goes back to the cluster's release and the release is recorded
``aborted`` with the figures that failed it; *inconclusive*, the candidate
stays on M, nothing else changes, and the task ends with its own status.
The table of the checks is printed, and kept in the release records.
"""
from __future__ import annotations

import time

from tasks.commands import counters, haproxy
from tasks.model import canary as model
from tasks.model.errors import AirError, ConfigError, Interrupted, RemoteError
from tasks.net.progress import say
from tasks.runbooks import balancer, records

INCONCLUSIVE_STATUS = 3  # the exit status of a deploy whose canary could not be judged


class CanaryFailed(AirError):
    """The judged canary failed its checks; it was rolled back."""


class CanaryInconclusive(AirError):
    """Too little traffic to judge the canary: it stays, nothing else changed."""
    exit_status = INCONCLUSIVE_STATUS


def check_options(cluster, canary, judge, weight) -> tuple:
    """(window seconds or None, weight percent) of the command line, checked before anything is
    contacted: ``judge`` True takes the cluster file's window."""
    if judge in (None, False):
        if weight is not None:
            raise ConfigError("--weight goes with --judge")
        return None, None
    if canary is None:
        raise ConfigError("--judge needs --canary MACHINE")
    seconds = cluster.canary.window if judge is True else _number("--judge", judge, 1, 86400, whole=True)
    percent = cluster.canary.weight if weight is None else _number("--weight", weight, 0, 100)
    return seconds, percent


def _number(flag: str, text, low: float, high: float, whole: bool = False):
    try:
        value = int(text) if whole else float(text)
    except (TypeError, ValueError):
        value = None
    if value is None or not (low <= value <= high if whole else low < value <= high):
        kind = "whole seconds" if whole else "a percentage"
        raise ConfigError(f"{flag}: {text!r} is not {kind} from {low:g} to {high:g}")
    return value


def readings(s, machines) -> dict:
    """machine -> model.Reading: each router's counters (read on the machines at once) and the
    balancer's view of each."""
    command = counters.counters_command(s.cluster)

    def router(address):
        text = s.ex.read(address, command, what="read the router's counters").stdout
        try:
            return counters.parse_counters(text)
        except ValueError as e:
            raise RemoteError(f"{address}: `{command}` answered no counters ({e}): does the front component "
                              f"answer canary.counters ({s.cluster.canary.counters})?") from None
    routers = dict(zip(machines, s.ex.parallel(router, machines)))
    stat = s.ex.read(s.cluster.balancer.host, haproxy.stat_command(s.cluster), what="read haproxy's counters").stdout
    try:
        seen = haproxy.parse_counters(stat)
    except ValueError as e:
        raise RemoteError(f"{s.cluster.balancer.host}: {e}") from None
    return {m: model.Reading(routers[m], seen.get(m, model.BalancerCounters())) for m in machines}


def set_weights(s, weights: dict) -> None:
    s.ex.run(s.cluster.balancer.host, haproxy.api_command(s.cluster, haproxy.set_weights(s.cluster, weights)),
             what="set the canary's weight in the balancer")


def judge(s, machine: str, seconds: int, weight: float) -> model.Verdict:
    """The verdict on ``machine`` after ``seconds`` with ``weight`` percent of new connections, against
    the other machines in the balancer. The weights go back when it ends, but after a failing
    verdict: the canary keeps its small share until its rollback drains it (``act``). Interrupted
    (weights back) when Ctrl-C ends the window."""
    routed = balancer.Routers(s.ex).listed()
    others = [m for m in routed if m != machine]
    if machine not in routed or not others:
        raise AirError(f"canary: {machine} and at least one other machine must be in the balancer to judge it "
                       f"(it routes to {', '.join(routed) or 'no machine'})")
    mine, theirs = model.weights(weight, len(routed))
    set_weights(s, {machine: mine, **{m: theirs for m in others}})
    verdict = None
    try:
        before, started = readings(s, routed), time.monotonic()
        say(f"canary: judging {machine} for {seconds} s with {weight:g}% of new connections "
            f"(weights {mine} and {theirs}); Ctrl-C rolls it back")
        if s.ex.interrupted.wait(seconds):
            raise Interrupted(f"interrupted while judging the canary on {machine}")
        after, elapsed = readings(s, routed), time.monotonic() - started
        verdict = model.judge(s.cluster.canary, machine, before, after, elapsed, weight)
    except RemoteError as e:
        raise RemoteError(f"canary not judged: {e}; the candidate stays on {machine}: `fab deploy --cluster "
                          f"{s.cluster.name}` continues it, `fab rollback --cluster {s.cluster.name}` puts it back") from None
    finally:
        if verdict is None or verdict.outcome != model.FAIL:
            even_out(s, routed)
    for line in model.table(verdict).splitlines():
        say(f"canary: {line}")
    return verdict


def even_out(s, machines) -> None:
    """Every machine back to the weight of the routers file (also after an interrupt)."""
    with s.ex.finishing():
        set_weights(s, {m: "100%" for m in machines})


def act(s, verdict: model.Verdict, release, carry_on, roll_back) -> None:
    """Carry ``verdict`` out for the candidate ``release``: ``carry_on(judged)`` continues the deploy to
    every machine (pass); ``roll_back(outcome, judged)`` puts the canary back (fail)."""
    judged = verdict.to_dict()
    if verdict.outcome == model.PASS:
        carry_on(judged)
        return
    if verdict.outcome == model.FAIL:
        try:
            roll_back(f"aborted: canary on {verdict.machine}: {verdict.summary()}", judged)
        finally:
            even_out(s, (verdict.machine, *verdict.baseline))
        raise CanaryFailed(f"canary on {verdict.machine} failed ({verdict.summary()}); rolled back: it runs the "
                           f"cluster's release again")
    _, record = records.read_candidate(s.etcd, s.cluster)
    records.write_candidate(s.etcd, s.cluster, release, record["machines"],
                            **{**{k: v for k, v in record.items() if k not in ("id", "components", "machines")},
                               "judged": judged})
    raise CanaryInconclusive(f"canary on {verdict.machine} not judged ({verdict.summary()}); the candidate "
                             f"{release.id} stays there, nothing else changed: `fab deploy --cluster "
                             f"{s.cluster.name}` continues it, `fab rollback --cluster {s.cluster.name}` puts it back")
