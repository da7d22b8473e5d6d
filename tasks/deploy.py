"""Deploy, history and rollback: the replacement of `cap <stage> deploy`.

``deploy`` is the whole runbook under the cluster's lock: build on the build
server, push what changed, record the release in etcd, roll the cluster to
it, record the outcome. A deploy whose release is already serving
everywhere (release file, units active, in the balancer) ends early and
restarts nothing. The lock is a key in the cluster's etcd held by a lease,
so a killed deploy's lock expires by itself.
"""
from __future__ import annotations

import json
import time

from . import balancer, machine, remote, state, upgrade
from .build import build_all, parse_branches
from .cli import air_task, build_host, cluster_of
from .cluster import check_address
from .errors import ConfigError, LockedError
from .push import push_all
from .release import Release
from .remote import say


def _lock(client, cluster, why: str, wait: bool):
    holder = {"who": state.operator(), "since": state.now(), "why": why}
    while True:
        try:
            return client.acquire(state.lock_key(cluster), holder, cluster.timeouts.lock)
        except LockedError:
            if not wait:
                raise
            time.sleep(1)


def running_everywhere(cluster, release: Release, members) -> bool:
    """True when every member serves ``release``: nothing for a rolling upgrade to do."""
    def facts(address):
        with remote.connect(cluster, address) as conn:
            return machine.release_facts(conn, cluster)
    found = dict(zip(members, remote.parallel(facts, members)))
    return not upgrade.plan(cluster, release, found, balancer.listed(cluster))


def deploy_release(cluster, host, branch, via=None, wait=False, batch=1) -> Release:
    """``branch``: the main repository's branch, or Branches (components' own branches too)."""
    branch = parse_branches(cluster, branch)
    started = time.monotonic()
    with state.cluster_etcd(cluster, via) as client:
        with _lock(client, cluster, f"deploy {branch}", wait):
            built = build_all(cluster, host, branch)
            release, steps = push_all(cluster, host, built["images"])
            current, record = state.read_release(client, cluster)
            if record and record.get("outcome") == "upgrading":
                # A deploy was killed midway: its release never proved itself, so a failure
                # now goes back to the last release that did.
                current = last_good(state.history(client, cluster)) or current
            members = sorted(upgrade.member_machines(client))
            if current is not None and current.id == release.id and running_everywhere(cluster, release, members):
                say(f"deploy: {cluster.name} already runs release {release.id}; nothing to do "
                    f"({time.monotonic() - started:.1f} s)")
                return release
            upgrade.rolling_with_record(cluster, client, release, current, batch=batch,
                                        branch=built["branch"], commit=built["commit"], sources=built["sources"])
    say(f"deploy: {cluster.name} runs release {release.id} ({time.monotonic() - started:.1f} s)")
    return release


@air_task(help={"cluster": "target cluster", "branch": "branch to deploy (default: the cluster's build.branch); "
                "COMPONENT=B for a component with its own repository (repeatable)",
                "via": "member to reach etcd through", "wait": "wait for another deploy's lock instead of failing",
                "batch": "machines upgraded at once"}, iterable=["branch"])
def deploy(c, cluster=None, branch=None, via=None, wait=False, batch=1):
    """Build, push what changed and roll the cluster to it, under the cluster's deploy lock."""
    target = cluster_of(cluster)
    branch = parse_branches(target, branch)
    via = check_address(via, "--via") if via else None
    release = deploy_release(target, build_host(c, target), branch, via, wait, int(batch))
    print(f"release {release.id}")


@air_task(help={"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"})
def releases(c, cluster=None, via=None, json_=False):
    """List the cluster's releases, oldest first, with their outcome."""
    target = cluster_of(cluster)
    with state.cluster_etcd(target, via and check_address(via, "--via")) as client:
        records = state.history(client, target)
        current, _ = state.read_release(client, target)
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
                "via": "member to reach etcd through"})
def rollback(c, cluster=None, to=None, via=None):
    """Roll the cluster back to an earlier release, through the same gated rolling upgrade."""
    target = cluster_of(cluster)
    via = via and check_address(via, "--via")
    with state.cluster_etcd(target, via) as client:
        with _lock(client, target, "rollback", False):
            # Read under the lock: a deploy that just ended may have changed both.
            current, _ = state.read_release(client, target)
            chosen = rollback_target(state.history(client, target), current and current.id, to, target.name)
            wanted = Release.from_dict(chosen)
            upgrade.rolling_with_record(target, client, wanted, current, rollback_from=current and current.id)
    print(f"release {wanted.id}")


@air_task(name="status", help={"cluster": "target cluster", "via": "member to reach etcd through"})
def lock_status(c, cluster=None, via=None):
    """Show who holds the cluster's deploy lock."""
    target = cluster_of(cluster)
    with state.cluster_etcd(target, via and check_address(via, "--via")) as client:
        holder = client.holder(state.lock_key(target))
    print("free" if holder is None else " ".join(f"{k}={v}" for k, v in holder.items()))


@air_task(name="release", help={"cluster": "target cluster", "via": "member to reach etcd through"})
def lock_release(c, cluster=None, via=None):
    """Release the cluster's deploy lock by force (when its holder is known to be gone)."""
    target = cluster_of(cluster)
    with state.cluster_etcd(target, via and check_address(via, "--via")) as client:
        holder = client.force_release(state.lock_key(target))
    print("was free" if holder is None else "released the lock of " + " ".join(f"{k}={v}" for k, v in holder.items()))
