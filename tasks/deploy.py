"""Deploy, history and rollback: the replacement of `cap <stage> deploy`.

``deploy`` is the whole runbook under the cluster's lock: build on the build
server, push what changed, record the release in etcd, roll the cluster to
it, record the outcome. The rollout's plan tells whether anything is to be
done: a deploy whose release is already serving everywhere (release file,
units active, in the balancer) ends early and restarts nothing. The lock is a
key in the cluster's etcd held by a lease (``tasks.session``), so a killed
deploy's lock expires by itself.
"""
from __future__ import annotations

import json
import time

from . import state, upgrade
from .build import build_all, parse_branches
from .cli import air_task, build_host, cluster_of
from .cluster import check_address
from .errors import ConfigError
from .push import print_report, push_all
from .release import Release
from .remote import say
from .session import session


def deploy_release(s, host, branch, batch=1, dry=False) -> Release:
    """The deploy runbook in a session holding the cluster's lock: build, push what changed,
    record the release, roll the cluster to it. ``branch``: the main repository's branch, or
    Branches (components' own branches too). ``dry``: build, then print what push and the
    rollout would do, pushing and changing nothing."""
    started = time.monotonic()
    cluster = s.cluster
    branch = parse_branches(cluster, branch)
    built = build_all(s.ex, host, branch)
    release, steps = push_all(s.ex, host, built["images"], dry=dry)
    current, record = state.read_release(s.etcd, cluster)
    if record and record.get("outcome") == "upgrading":
        # A deploy was killed midway: its release never proved itself, so a failure
        # now goes back to the last release that did.
        current = last_good(state.history(s.etcd, cluster)) or current
    rollout = upgrade.Rollout(s, release, current, batch=batch)
    if dry:
        print_report(release, steps, False)
        upgrade.print_plan(rollout)
        return release
    if current is not None and current.id == release.id and rollout.nothing_to_do:
        say(f"deploy: {cluster.name} already runs release {release.id}; nothing to do "
            f"({time.monotonic() - started:.1f} s)")
        return release
    rollout.apply_recorded(branch=built["branch"], commit=built["commit"], sources=built["sources"])
    say(f"deploy: {cluster.name} runs release {release.id} ({time.monotonic() - started:.1f} s)")
    return release


@air_task(help={"cluster": "target cluster", "branch": "branch to deploy (default: the cluster's build.branch); "
                "COMPONENT=B for a component with its own repository (repeatable)",
                "via": "member to reach etcd through", "wait": "wait for another task's lock instead of failing",
                "batch": "machines upgraded at once",
                "plan": "build, then print what push and the rollout would do; push and change nothing"},
          iterable=["branch"])
def deploy(c, cluster=None, branch=None, via=None, wait=False, batch=1, plan_=False):
    """Build, push what changed and roll the cluster to it, under the cluster's lock."""
    target = cluster_of(cluster)
    branch = parse_branches(target, branch)
    via = check_address(via, "--via") if via else None
    with session(target, f"deploy {branch}", via, wait) as s:
        release = deploy_release(s, build_host(c, target), branch, int(batch), dry=plan_)
    if not plan_:
        print(f"release {release.id}")


@air_task(help={"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"})
def releases(c, cluster=None, via=None, json_=False):
    """List the cluster's releases, oldest first, with their outcome."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        records = state.history(s.etcd, target)
        current, _ = state.read_release(s.etcd, target)
    if json_:
        print(json.dumps(records, indent=1))
        return
    for r in records:
        mark = "*" if current and r["id"] == current.id else " "
        versions = " ".join(f"{k}={v['version']}" for k, v in sorted(r["components"].items()))
        # every repository that went into it: URL, branch and commit
        sources = "".join(f"  {s['repository']} {s['branch']}@{s['commit'][:10]}" for s in r.get("sources", []))
        print(f"{mark} {r['when']}  {r['id']}  {r.get('outcome', '?'):10.40}  {r.get('branch', '-')}  {versions}"
              f"{sources}")


GOOD_OUTCOMES = ("succeeded", "installed")


def last_good(records: list):
    """The newest release in ``records`` (oldest first) whose rollout succeeded, or None."""
    good = [r for r in records if r.get("outcome") in GOOD_OUTCOMES]
    return Release.from_dict(good[-1]) if good else None


def rollback_target(records: list, current_id: str = None, to: str = None, cluster_name: str = "the cluster") -> dict:
    """The history record a rollback goes to: release ``to``, else the newest successful one that is
    not ``current_id``. ``records`` oldest first, as ``state.history`` gives them."""
    good = [r for r in records if r.get("outcome") in GOOD_OUTCOMES]
    if to:
        chosen = next((r for r in reversed(good) if r["id"] == to), None)
        if chosen is None:
            raise ConfigError(f"no successful release {to!r} in the history of {cluster_name}")
        return chosen
    chosen = next((r for r in reversed(good) if r["id"] != current_id), None)
    if chosen is None:
        raise ConfigError(f"no earlier successful release of {cluster_name} to roll back to")
    return chosen


@air_task(help={"cluster": "target cluster", "to": "release id (default: the previous successful one)",
                "via": "member to reach etcd through", "plan": "print what each machine needs and change nothing"})
def rollback(c, cluster=None, to=None, via=None, plan_=False):
    """Roll the cluster back to an earlier release, through the same gated rolling upgrade."""
    target = cluster_of(cluster)
    via = via and check_address(via, "--via")
    with session(target, None if plan_ else "rollback", via) as s:
        # Read under the lock: a deploy that just ended may have changed both.
        current, _ = state.read_release(s.etcd, target)
        chosen = rollback_target(state.history(s.etcd, target), current and current.id, to, target.name)
        wanted = Release.from_dict(chosen)
        rollout = upgrade.Rollout(s, wanted, current)
        if plan_:
            upgrade.print_plan(rollout)
            return
        rollout.apply_recorded(rollback_from=current and current.id)
    print(f"release {wanted.id}")


@air_task(name="status", help={"cluster": "target cluster", "via": "member to reach etcd through"})
def lock_status(c, cluster=None, via=None):
    """Show who holds the cluster's lock."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        holder = s.etcd.holder(state.lock_key(target))
    print("free" if holder is None else " ".join(f"{k}={v}" for k, v in holder.items()))


@air_task(name="release", help={"cluster": "target cluster", "via": "member to reach etcd through"})
def lock_release(c, cluster=None, via=None):
    """Release the cluster's lock by force (when its holder is known to be gone)."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        holder = s.etcd.force_release(state.lock_key(target))
    print("was free" if holder is None else "released the lock of " + " ".join(f"{k}={v}" for k, v in holder.items()))
