"""Upgrading machines to a release, one at a time, without downtime.

``upgrade_machine`` is the per-machine runbook: pull the new images first
(while still serving), take the machine out of the balancer, stop the Air
units politely, install the release's cloud config, start, wait until
healthy, put it back. A machine already serving the release (release file,
every unit active, in the balancer) is left alone; one that runs it but is
out of the balancer (a deploy killed after its start) is only checked and
put back. When it fails, the machine is put back on the release it ran
before and returned to the balancer, and the error names the machine and
the failed check. ``rolling_upgrade`` takes the machines from etcd's member
list, refuses at once when one of them does not answer, and upgrades them
one after another (``--batch`` allows a few at once, never so many that
most of the cluster is out of the balancer), stopping at the first failure.
"""
from __future__ import annotations

import time

from . import balancer, machine, remote, state
from .cli import air_task, cluster_of
from .cluster import check_address
from .errors import AirError, ConfigError, HealthError, RemoteError
from .release import Release
from .remote import say


# What bringing one machine to a release takes (``machine_action``).
NOTHING, READD, UPGRADE = "nothing", "re-add", "upgrade"


class UpgradeFailed(AirError):
    def __init__(self, address, message, restored):
        self.address = address
        self.restored = restored
        super().__init__(message)


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


def action_on(conn, cluster, address, release: Release, listed) -> str:
    """``machine_action`` of the machine on ``conn``; ``listed``: the balancer's machines."""
    return machine_action(machine.running_release(conn), machine.unit_states(conn, cluster),
                          address in listed, release.id)


def upgrade_machine(cluster, conn, release: Release, previous: Release, members, base_doc, routers) -> bool:
    """Bring the machine on ``conn`` to ``release`` (its images already pulled); True when it changed.

    Only the units whose version changes (or that are not active) restart. On
    failure the machine is put back on ``previous`` and UpgradeFailed is raised.
    """
    address = conn.host
    units = machine.unit_states(conn, cluster)
    action = machine_action(machine.running_release(conn), units, address in routers.listed(), release.id)
    if action == NOTHING:
        say(f"upgrade: {address} already runs {release.id}; left alone")
        return False
    started = time.monotonic()
    restart = machine.to_restart(machine.running_components(conn), units, release, cluster) \
        if action == UPGRADE else []
    if action == UPGRADE:
        # Everything is uploaded while the machine still serves; out of the balancer, one command
        # stops what changes, swaps the files in and starts it again.
        doc = machine.final_document(cluster, address, members, "existing", release, base_doc)
        swap = machine.stage_document(conn, cluster, doc)
    routers.remove(address)
    try:
        if action == UPGRADE:
            remote.run(conn, " && ".join([machine.stop_command(cluster, restart), swap,
                                          machine.start_command(cluster, restart)]),
                       what=f"restart {', '.join(restart) or 'nothing'} on release {release.id}",
                       timeout=cluster.timeouts.stop + 60)
        machine.wait_healthy(conn, cluster)
    except (HealthError, RemoteError) as failure:
        restored = _restore(conn, cluster, address, members, previous, base_doc, routers)
        raise UpgradeFailed(address, f"upgrade of {address} to {release.id} failed: {failure}\n{restored}",
                            restored=previous is not None) from None
    routers.add(address)
    took = f"{time.monotonic() - started:.1f} s"
    say(f"upgrade: {address} runs {release.id}, restarted {', '.join(restart) or 'nothing'} ({took})"
        if action == UPGRADE else f"upgrade: {address} already ran {release.id}; healthy, back in the balancer ({took})")
    return True


def _restore(conn, cluster, address, members, previous, base_doc, routers) -> str:
    if previous is None:
        return f"{address} is out of the balancer; no earlier release to restore."
    try:
        machine.stop(conn, cluster)
        install_release(conn, cluster, address, members, previous, base_doc)
        machine.start(conn, cluster)
        machine.wait_healthy(conn, cluster)
        routers.add(address)
        return f"{address} is back on release {previous.id} and in the balancer."
    except AirError as e:
        return f"restoring {address} to {previous.id} failed too ({e}); it is out of the balancer."


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


def rolling(cluster, client, release: Release, previous: Release, batch: int = 1) -> list:
    """Upgrade every member machine (``client``: the cluster's etcd) to ``release``; returns those that changed."""
    members = sorted(member_machines(client))
    conns, down = open_all(cluster, members)
    try:
        # Checked before any change: a machine found down halfway would leave the cluster on two releases.
        if down:
            raise UpgradeFailed(", ".join(d.split()[0] for d in down),
                                f"not upgrading {cluster.name} to {release.id}: unreachable: {'; '.join(down)}. "
                                f"No machine was changed.", restored=False)
        # Pulling does not disturb service: every machine fetches the release at once, before its turn.
        remote.parallel(lambda a: machine.pull(conns[a], cluster, release), members)
        return _roll(cluster, conns, members, release, previous, batch_limit(len(members), batch))
    finally:
        for conn in conns.values():
            conn.close()


def _roll(cluster, conns, members, release, previous, step) -> list:
    base_doc = machine.base_document(cluster)
    changed = []
    with balancer.Routers(cluster) as routers:
        def upgrade(address):
            return upgrade_machine(cluster, conns[address], release, previous, members, base_doc, routers)

        for i in range(0, len(members), step):
            group = members[i:i + step]
            try:
                # One machine at a time needs no fan-out, whose error would name the machine once more.
                results = [upgrade(group[0])] if len(group) == 1 else remote.parallel(upgrade, group)
            except AirError as failure:
                if not changed:
                    raise
                raise UpgradeFailed(", ".join(group), f"{failure}\nalready upgraded to {release.id}: "
                                    f"{', '.join(changed)} (fab rolling-upgrade puts them back on the cluster's "
                                    f"release)", restored=False) from None
            changed += [a for a, did in zip(group, results) if did]
    return changed


def rolling_with_record(cluster, client, release: Release, previous: Release, batch=1, **meta) -> list:
    """The rolling upgrade, with the cluster's current release and history kept right in etcd."""
    record = state.write_release(client, cluster, release, outcome="upgrading", **meta)
    try:
        changed = rolling(cluster, client, release, previous, batch)
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
    with remote.connect(target, address) as conn, balancer.Routers(target) as routers:
        machine.pull(conn, target, wanted)
        changed = upgrade_machine(target, conn, wanted, current, members, machine.base_document(target), routers)
    print(f"{address}: {'upgraded to' if changed else 'already runs'} release {wanted.id}")


@air_task(name="rolling-upgrade", help={"cluster": "target cluster", "via": "member to reach etcd through",
                                        "batch": "machines upgraded at once (capped to keep a majority serving)",
                                        "release": "release id (default: the cluster's current release)"})
def rolling_upgrade(c, cluster=None, via=None, batch=1, release=None):
    """Upgrade every member machine to the cluster's release, one at a time."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    wanted, current = target_release(target, via, release)
    with state.cluster_etcd(target, via) as client:
        changed = rolling(target, client, wanted, current, int(batch))
    print(f"release {wanted.id}: {len(changed)} machine(s) upgraded")
