"""The rules of a rollout: what each machine needs to run a release, and in which order.

A machine runs the components both the cluster file and the release have (``running_components``);
``to_restart`` and ``to_remove`` say which of its units change; ``machine_action`` says whether a
machine needs nothing, only to be put back into the balancer, or an upgrade; ``plan`` makes the
steps of every machine, ``drift`` the warning about a cluster that is not as recorded,
``unavailable`` how many machines may be out at once (``batch_limit`` the majority that always
serves), ``groups`` the steps taken out of the balancer together (at most one etcd member each, the
leader last), ``stops`` whether failures so far end the rollout. Pure: facts in, steps out
(``tasks.runbooks.upgrade.Rollout`` carries them out).
"""
from __future__ import annotations

from dataclasses import field
from typing import Optional

import cloudconfig
from cloudconfig.units import unit_name
from tasks.model.frozen import frozen
from tasks.model.release import Release

# What bringing one machine to a release takes (``machine_action``).
NOTHING, READD, UPGRADE = "nothing", "re-add", "upgrade"


def machine_action(running: str, units: dict, listed: bool, release_id: str) -> str:
    """What bringing one machine to ``release_id`` takes, from its facts.

    ``running``: its release file; ``units``: unit -> ``systemctl is-active``;
    ``listed``: whether the balancer routes to it. The release file alone is
    not enough: a deploy killed between installing and re-adding leaves it
    right on a machine that is out of the balancer or not started.
    """
    if running != release_id or not units or set(units.values()) != {"active"}:
        return UPGRADE
    return NOTHING if listed else READD


@frozen
class Step:
    machine: str
    action: str           # UPGRADE or READD
    restart: tuple = ()   # components whose units restart (UPGRADE)
    remove: tuple = ()    # components whose units are stopped, disabled and removed (UPGRADE)


@frozen
class Extra:
    """What a rollout does on one machine besides bringing it to its release (secrets.apply):
    ``restart`` these components too, stage ``files`` with the release's, run ``before`` ahead of
    swapping them in and ``after`` right after (both while its components are stopped), and
    ``undo`` when the machine is put back after a failure."""
    restart: tuple = ()
    files: tuple = field(default=(), repr=False)  # (path, content, mode): may be secrets
    before: str = ""
    after: str = ""
    undo: str = ""


def changes(step: Step) -> str:
    """What an upgrade step restarts and removes, in words. Pure."""
    return f"restart {', '.join(step.restart) or 'nothing'}" + (f", remove {', '.join(step.remove)}" if step.remove else "")


def plan(cluster, release: Release, facts: dict, listed, extras: dict = None) -> list:
    """The steps bringing the machines of ``facts`` (address -> ``machine.release_facts``) to
    ``release``, in address order; a machine already serving it has none. A machine runs the
    components both the cluster file and the release have: one new there is installed, one
    installed but no longer there is removed. ``extras``: address -> Extra, whose components
    restart as well (a step of their own when the release needs none). Pure."""
    steps = []
    extras = extras or {}
    running = set(running_components(cluster, release))
    wanted = units_of(cluster, running)
    for address in sorted(facts):
        fact = facts[address]
        units = {u: state for u, state in fact["units"].items() if u in wanted}
        remove = tuple(to_remove(fact["components"], release, cluster))
        action = UPGRADE if remove else machine_action(fact["release"], units, address in listed, release.id)
        more = {c for c in (extras[address].restart if address in extras else ()) if c in running}
        if action == UPGRADE or more:
            restart = set(to_restart(fact["components"], fact["units"], release, cluster)) \
                if action == UPGRADE else set()
            steps.append(Step(address, UPGRADE, tuple(c.name for c in cluster.components if c.name in restart | more),
                              remove))
        elif action == READD:
            steps.append(Step(address, READD))
    return steps


def _machine(step: Step) -> str:
    return step.machine


def routed(members, serving, done, out) -> list:
    """Who the balancer sends traffic to: the members that served at the start or are done, but
    none of ``out`` (the machines being upgraded). Pure; in the members' order."""
    return [m for m in members if (m in serving or m in done) and m not in out]


def drift(cluster, members, facts: dict, listed, recorded: Optional[Release], canary: dict = None) -> Optional[str]:
    """One warning line when the cluster is not as recorded (a member out of the balancer, a
    machine on another release), with the command that fixes it; None when all is as recorded.
    ``canary``: machine -> the candidate release id it may run instead (a canary deploy). Pure."""
    canary = canary or {}
    problems = [f"{m} is out of the balancer" for m in members if m not in listed]
    if recorded is not None:
        problems += [f"{m} runs release {facts[m]['release'] or '(none)'}, not the recorded {recorded.id}"
                     for m in members if m in facts and facts[m]["release"] not in (recorded.id, canary.get(m))]
    if not problems:
        return None
    return f"warning: {cluster.name} drifted: {'; '.join(problems)} (`fab rolling-upgrade --cluster {cluster.name}` fixes it)"


def describe(steps, machines, release: Release) -> list:
    """The plan in words, one line per machine (what ``--plan`` prints). Pure."""
    planned = {s.machine: s for s in steps}
    lines = []
    for address in sorted(machines):
        step = planned.get(address)
        if step is None:
            lines.append(f"{address}: already runs {release.id}; nothing to do")
        elif step.action == READD:
            lines.append(f"{address}: runs {release.id}; health check, then back into the balancer")
        else:
            lines.append(f"{address}: out of the balancer, {changes(step)} on {release.id}, health check, back in")
    return lines


def batch_limit(machines: int, wanted: int) -> int:
    """How many machines may be upgraded at once: a majority always stays in the balancer."""
    return max(1, min(int(wanted), (machines - 1) // 2))


def unavailable(machines: int, max_unavailable: str) -> int:
    """How many of ``machines`` may be out of the balancer at once: ``max_unavailable`` ("N", or "P%" of
    them rounded down), at least one, and never so many that most are out (``batch_limit``)."""
    if max_unavailable.endswith("%"):
        return batch_limit(machines, machines * int(max_unavailable[:-1]) // 100)
    return batch_limit(machines, int(max_unavailable))


def groups(steps, members, machines: int, max_unavailable: str, leader: Optional[str] = None) -> list:
    """``steps`` in the groups that leave the balancer together, in order: at most ``unavailable(machines,
    max_unavailable)`` machines each and at most one etcd member (``members``: addresses) each. The members
    take the last groups, one each, etcd's ``leader`` the very last (its leadership moves once, at the end);
    the workers fill the groups from the first, in the steps' order. As few groups as that allows."""
    limit = unavailable(machines, max_unavailable)
    ones = sorted((s for s in steps if s.machine in members), key=lambda s: s.machine == leader)
    workers = [s for s in steps if s.machine not in members]
    count = max(len(ones), -(-len(steps) // limit))
    member_of = [None] * (count - len(ones)) + ones
    result = []
    for member in member_of:
        room = limit - (member is not None)
        result.append(workers[:room] + ([member] if member else []))
        workers = workers[room:]
    return result


def stops(failed: int, left_out: int, max_failures: int) -> bool:
    """Whether a rollout ends after ``failed`` machines failed, ``left_out`` of them not restored (still out
    of the balancer: capacity is gone, whatever the budget): more failures than ``max_failures``, or any."""
    return left_out > 0 or failed > max_failures


def units_of(cluster, components=None) -> list:
    """The Air units of ``components`` (names; default: all), in the cluster's order."""
    return [unit_name(c.name) for c in cluster.components if components is None or c.name in components]


def running_components(cluster, release) -> list:
    """Names of the components a machine on ``release`` runs: those of the cluster file that the
    release has an image of, in the cluster's order (``cloudconfig.installed_components``)."""
    return [c.name for c in cloudconfig.installed_components(cluster, release)]


def to_restart(running: dict, units: dict, release, cluster) -> list:
    """Components whose unit must be (re)started to run ``release``: another version, not active,
    or not installed yet (new in the cluster file)."""
    wanted = release.versions()
    return [name for name in running_components(cluster, release)
            if running.get(name) != wanted[name] or units.get(unit_name(name)) != "active"]


def to_remove(running: dict, release, cluster) -> list:
    """Components installed on the machine (its components file) that it does not run on
    ``release``: gone from the cluster file, or absent from the release."""
    wanted = running_components(cluster, release)
    return sorted(name for name in running if name not in wanted)
