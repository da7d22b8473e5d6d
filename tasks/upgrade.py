"""Upgrading machines to a release without downtime: facts, a plan, then one machine at a time.

First the facts of every machine (its release file, components, unit states,
whether the balancer routes to it) and a pure ``plan``: a machine already
serving the release is left alone, one that runs it but is out of the
balancer (a deploy killed after its start) is only checked and put back, the
others restart just the components whose version changes. Then every machine
to upgrade pulls the images and has its files staged, all at once, while
still serving. Then group by group (one machine by default; ``--batch`` never
takes out so many that most of the cluster is out of the balancer) the group
leaves the balancer in the same reload that puts the previous group back, one
command restarts what changes on the staged files, and the health check must
pass. At the first failure the machine is put back on the release it ran
before and into the balancer, nothing further is touched, and the error names
the machine, the failed check and the journal's last lines.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from . import balancer, machine, remote, state
from .cli import air_task, cluster_of
from .cluster import check_address
from .errors import AirError, ConfigError, HealthError, RemoteError
from .release import Release
from .remote import say


# What bringing one machine to a release takes (``machine_action``).
NOTHING, READD, UPGRADE = "nothing", "re-add", "upgrade"


class UpgradeFailed(AirError):
    """An upgrade stopped; the message names the machines and the state each was left in."""


def install_release(conn, cluster, address, members, release, base_doc) -> None:
    doc = machine.final_document(cluster, address, members, "existing", release, base_doc)
    machine.apply_document(conn, cluster, doc)


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


@dataclass(frozen=True)
class Step:
    machine: str
    action: str           # UPGRADE or READD
    restart: tuple = ()   # components whose units restart (UPGRADE)


def plan(cluster, release: Release, facts: dict, listed) -> list:
    """The steps bringing the machines of ``facts`` (address -> ``machine.release_facts``) to
    ``release``, in address order; a machine already serving it has none. Pure."""
    steps = []
    for address in sorted(facts):
        fact = facts[address]
        action = machine_action(fact["release"], fact["units"], address in listed, release.id)
        if action == UPGRADE:
            steps.append(Step(address, UPGRADE,
                              tuple(machine.to_restart(fact["components"], fact["units"], release, cluster))))
        elif action == READD:
            steps.append(Step(address, READD))
    return steps


def routed(members, serving, done, out) -> list:
    """Who the balancer sends traffic to: the members that served at the start or are done, but
    none of ``out`` (the machines being upgraded). Pure; in the members' order."""
    return [m for m in members if (m in serving or m in done) and m not in out]


def read_facts(cluster, conns) -> dict:
    addresses = sorted(conns)
    return dict(zip(addresses, remote.parallel(lambda a: machine.release_facts(conns[a], cluster), addresses)))


def prepare(cluster, conns, steps, release, members, base_doc) -> dict:
    """Pull the release and stage its files on every machine to upgrade, all at once (serving is
    not disturbed); returns address -> ``remote.Staged``."""
    def one(step):
        conn = conns[step.machine]
        machine.pull(conn, cluster, release, step.restart)
        doc = machine.final_document(cluster, step.machine, members, "existing", release, base_doc)
        return machine.stage_document(conn, cluster, doc)
    upgrades = [s for s in steps if s.action == UPGRADE]
    return dict(zip((s.machine for s in upgrades), remote.parallel(one, upgrades)))


def carry_out(cluster, conn, step: Step, staged, release, previous, members, base_doc) -> tuple:
    """One machine, out of the balancer: restart what changes on the staged files, then its health
    check. Returns (None, None) on success, else (why, restored?) with ``previous`` restored if it can be."""
    started = time.monotonic()
    try:
        if step.action == UPGRADE:
            remote.run(conn, " && ".join([machine.stop_command(cluster, step.restart), staged.swap,
                                          machine.start_command(cluster, step.restart)]),
                       what=f"restart {', '.join(step.restart) or 'nothing'} on release {release.id}",
                       timeout=cluster.timeouts.stop + 60)
        machine.wait_healthy(conn, cluster)
    except (HealthError, RemoteError) as failure:
        restored, how = _restore(conn, cluster, step.machine, members, previous, base_doc)
        return f"upgrade of {step.machine} to {release.id} failed: {failure}\n{how}", restored
    took = f"{time.monotonic() - started:.1f} s"
    say(f"upgrade: {step.machine} runs {release.id}, restarted {', '.join(step.restart) or 'nothing'} ({took})"
        if step.action == UPGRADE else
        f"upgrade: {step.machine} already ran {release.id}; healthy, back in the balancer ({took})")
    return None, None


def _restore(conn, cluster, address, members, previous, base_doc) -> tuple:
    if previous is None:
        return False, f"{address} is out of the balancer; no earlier release to restore."
    try:
        machine.stop(conn, cluster)
        install_release(conn, cluster, address, members, previous, base_doc)
        machine.start(conn, cluster)
        machine.wait_healthy(conn, cluster)
        return True, f"{address} is back on release {previous.id} and in the balancer."
    except AirError as e:
        return False, f"restoring {address} to {previous.id} failed too ({e}); it is out of the balancer."


def execute(cluster, conns, steps, release, previous, members, routers, batch: int = 1) -> list:
    """Carry out ``steps``: prepare every machine at once, then group by group take the group out of
    the balancer (the same reload puts the previous group back), restart and check it. Stops at the
    first failure; returns the machines done."""
    base_doc = machine.base_document(cluster)
    staged = prepare(cluster, conns, steps, release, members, base_doc)
    serving, done = routers.listed(), []
    for i in range(0, len(steps), batch):
        group = steps[i:i + batch]
        routers.set(routed(members, serving, done, [s.machine for s in group]))
        outcomes = remote.parallel(lambda s: carry_out(cluster, conns[s.machine], s, staged.pop(s.machine, None),
                                                        release, previous, members, base_doc), group)
        failed = [(s, why, restored) for s, (why, restored) in zip(group, outcomes) if why]
        done += [s.machine for s, (why, _) in zip(group, outcomes) if not why]
        if failed:
            back = [s.machine for s, _, restored in failed if restored]
            routers.set(routed(members, serving, done + back, [s.machine for s, _, r in failed if not r]))
            for address, files in staged.items():  # machines never reached keep nothing staged
                remote.run(conns[address], files.discard, check=False)
            message = "\n".join(why for _, why, _ in failed)
            if done:
                message += (f"\nalready upgraded to {release.id}: {', '.join(done)} "
                            f"(fab rolling-upgrade puts them back on the cluster's release)")
            raise UpgradeFailed(message)
    routers.set(routed(members, serving, done, []))
    return done


def batch_limit(machines: int, wanted: int) -> int:
    """How many machines may be upgraded at once: a majority always stays in the balancer."""
    return max(1, min(int(wanted), (machines - 1) // 2))


def member_machines(client) -> list:
    return [state.member_address(m) for m in client.members() if not m.learner]


def open_all(cluster, addresses) -> tuple:
    """(connections by address, 'address (why)' for each that cannot be logged in to), at once."""
    def open_one(address):
        conn = remote.connect(cluster, address)
        why = remote.reachable(conn)
        if why:
            conn.close()
        return conn, why
    opened = dict(zip(addresses, remote.parallel(open_one, addresses)))
    down = [f"{a} ({why})" for a, (_, why) in opened.items() if why]
    return {a: conn for a, (conn, why) in opened.items() if not why}, down


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
            lines.append(f"{address}: out of the balancer, restart {', '.join(step.restart) or 'nothing'} "
                         f"on {release.id}, health check, back in")
    return lines


def upgrade(cluster, client, release: Release, previous: Release, only=None, batch: int = 1,
            dry: bool = False) -> list:
    """Bring the member machines (or ``only`` those) to ``release``; returns those that changed.
    Refuses at once, changing nothing, when one of them does not answer: a machine found down
    halfway would leave the cluster on two releases. ``dry``: print the plan, change nothing."""
    members = sorted(member_machines(client))
    routers = balancer.Routers(cluster)
    # The balancer is reached while the machines are: neither waits for the other.
    with ThreadPoolExecutor(max_workers=1) as pool:
        opening = pool.submit(routers.__enter__)
        conns, down = open_all(cluster, only or members)
        facts = read_facts(cluster, conns) if not down else {}
    try:
        opening.result()
        if down:
            raise UpgradeFailed(f"not upgrading {cluster.name} to {release.id}: unreachable: {'; '.join(down)}. "
                                f"No machine was changed.")
        steps = plan(cluster, release, facts, routers.listed())
        if dry:
            for line in describe(steps, conns, release):
                print(line)
            return []
        for address in sorted(set(conns) - {s.machine for s in steps}):
            say(f"upgrade: {address} already runs {release.id}; left alone")
        return execute(cluster, conns, steps, release, previous, members, routers,
                       batch_limit(len(members), batch))
    finally:
        routers.__exit__(None, None, None)
        for conn in conns.values():
            conn.close()


def rolling_with_record(cluster, client, release: Release, previous: Release, batch=1, **meta) -> list:
    """The rolling upgrade, with the cluster's current release and history kept right in etcd."""
    record = state.write_release(client, cluster, release, outcome="upgrading", **meta)
    try:
        changed = upgrade(cluster, client, release, previous, batch=batch)
    except AirError as failure:
        record["outcome"] = f"failed: {str(failure).splitlines()[0]}"
        state.add_history(client, cluster, record)
        if previous is not None:
            state.write_release(client, cluster, previous, outcome="restored after a failed upgrade")
        raise
    record["outcome"] = "succeeded"
    state.write_release(client, cluster, release, **{k: v for k, v in record.items() if k not in ("id", "components")})
    state.add_history(client, cluster, record)
    return changed


def target_release(cluster, via=None, release_id=None):
    """(release wanted, release the cluster is recorded at) from etcd; ``release_id`` picks one from history."""
    with state.cluster_etcd(cluster, via) as client:
        current, _ = state.read_release(client, cluster)
        if release_id is None:
            if current is None:
                raise ConfigError(f"cluster {cluster.name} has no release recorded in etcd: run setup-cluster")
            return current, current
        for record in reversed(state.history(client, cluster)):
            if record["id"] == release_id:
                return Release.from_dict(record), current
    raise ConfigError(f"no release {release_id!r} in the history of {cluster.name} (see fab releases)")


@air_task(name="upgrade-machine", help={"cluster": "target cluster", "machine": "machine address",
                                        "release": "release id (default: the cluster's current release)",
                                        "via": "member to reach etcd through"})
def upgrade_machine_task(c, cluster=None, machine_=None, release=None, via=None):
    """Upgrade one machine to the cluster's release (drain, stop politely, install, start, check, re-add)."""
    target = cluster_of(cluster)
    address = check_address(machine_, "--machine")
    via = check_address(via, "--via") if via else None
    wanted, current = target_release(target, via, release)
    with state.cluster_etcd(target, via) as client:
        members = sorted(member_machines(client))
        if address not in members:
            raise ConfigError(f"{address} is not an etcd member of {target.name} (members: {', '.join(members)})")
        changed = upgrade(target, client, wanted, current, only=[address])
    print(f"{address}: {'upgraded to' if changed else 'already runs'} release {wanted.id}")


@air_task(name="rolling-upgrade", help={"cluster": "target cluster", "via": "member to reach etcd through",
                                        "batch": "machines upgraded at once (capped to keep a majority serving)",
                                        "release": "release id (default: the cluster's current release)",
                                        "plan": "print what each machine needs and change nothing"})
def rolling_upgrade(c, cluster=None, via=None, batch=1, release=None, plan_=False):
    """Upgrade every member machine to the cluster's release, one at a time."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    wanted, current = target_release(target, via, release)
    with state.cluster_etcd(target, via) as client:
        changed = upgrade(target, client, wanted, current, batch=int(batch), dry=plan_)
    if not plan_:
        print(f"release {wanted.id}: {len(changed)} machine(s) upgraded")
