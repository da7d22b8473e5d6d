"""Adding and removing machines, with etcd reconfigured safely.

A new machine joins etcd as a *learner* before its etcd starts, and is
promoted once it has caught up: a learner does not vote, so a new member
that fails to start never costs the cluster its quorum (a plain member
added to a one-member cluster loses quorum at once). It then runs exactly
the release recorded in etcd, not whatever is newest in the registry. A
failure midway removes the membership it added and says so.

A removal takes the machine out of the balancer first, stops it politely
when it answers, removes it from etcd, and wipes its etcd and Air units so it
can be added back later. It is refused when the members left alive could
not keep quorum, or when one member would remain, unless forced.
"""
from __future__ import annotations

from cloudconfig.units import ETCD_PEER_PORT, url

from . import balancer, machine, remote, state
from .cli import air_task, cluster_of
from .cluster import check_address
from .errors import AirError, ConfigError, PreflightError
from .install import install_machine
from .remote import say


def quorum(voters: int) -> int:
    return voters // 2 + 1


def removal_problem(members: list, alive: set, leaving: str) -> str:
    """Why removing ``leaving`` is unsafe (None when it is safe). Pure: members are addresses."""
    remaining = [m for m in members if m != leaving]
    if len(remaining) < 2:
        return f"it would leave {len(remaining)} etcd member (no redundancy at all)"
    up = [m for m in remaining if m in alive]
    if len(up) < quorum(len(remaining)):
        down = sorted(set(remaining) - alive)
        return (f"the {len(remaining)} members left need {quorum(len(remaining))} running for quorum, "
                f"but only {len(up)} answer ({', '.join(down)} down)")
    return None


def _member(client, address):
    return next((m for m in client.members() if state.member_address(m) == address), None)


def _probe(cluster, address) -> tuple:
    """(answers SSH, runs etcd) for one machine."""
    conn = remote.connect(cluster, address)
    try:
        if remote.reachable(conn):
            return False, False
        return True, machine.facts(conn, cluster).get("etcd_active") == "active"
    finally:
        conn.close()


def _check_via(client, cluster, via):
    if _member(client, via) is None:
        raise ConfigError(f"--via {via} is not an etcd member of {cluster.name}")


def add(cluster, via: str, new: str) -> None:
    with state.cluster_etcd(cluster, via) as client:
        _check_via(client, cluster, via)
        members = client.members()
        if any(not m.started or m.learner for m in members):
            raise PreflightError("etcd has a member that has not started or is still a learner; "
                                 "finish or remove it first (etcdctl member list)")
        if _member(client, new) is not None:
            raise PreflightError(f"{new} is already an etcd member of {cluster.name}")
        release, _ = state.read_release(client, cluster)
        if release is None:
            raise PreflightError(f"{cluster.name} has no release recorded in etcd: run setup-cluster first")
        addresses = [state.member_address(m) for m in members] + [new]
        conn = remote.connect(cluster, new)
        why = remote.reachable(conn)
        if why:
            raise PreflightError(f"{new}: unreachable ({why}); nothing was changed")
        with conn:
            problems = machine.fresh_problems(machine.facts(conn, cluster))
            if problems:
                raise PreflightError(f"{new}: not a fresh machine: {', '.join(problems)}; nothing was changed")
            say(f"add-machine: installing release {release.id} on {new}")
            added = None
            try:
                install_machine(cluster, new, addresses, release, machine.base_document(cluster), state="existing")
                added = client.add_member(url(new, ETCD_PEER_PORT), learner=True)
                remote.run(conn, machine.start_etcd_command(), what="start etcd")
                client.promote(added.id, timeout=cluster.timeouts.healthy)
                machine.start(conn, cluster)
                machine.wait_healthy(conn, cluster)
            except AirError as failure:
                if added is not None:
                    client.remove_member(added.id)
                machine.wipe(conn, cluster)
                undone = "its etcd membership was removed again and " if added is not None else ""
                raise AirError(f"add-machine {new} failed: {failure}\n"
                               f"{undone}it was wiped; the cluster is as before") from None
        state.write_machines(client, cluster, addresses)
    balancer.add(cluster, new)
    say(f"add-machine: {new} is a member and serves release {release.id}")


def remove(cluster, via: str, old: str, force: bool = False) -> None:
    if via == old:
        raise ConfigError("--via must be another member than --machine")
    with state.cluster_etcd(cluster, via) as client:
        _check_via(client, cluster, via)
        member = _member(client, old)
        if member is None:
            raise ConfigError(f"{old} is not an etcd member of {cluster.name}")
        addresses = [state.member_address(m) for m in client.members()]
        voters = [state.member_address(m) for m in client.members() if not m.learner]
        probes = dict(zip(addresses, remote.parallel(lambda a: _probe(cluster, a), addresses)))
        alive = {a for a, (_, etcd_up) in probes.items() if etcd_up}
        # Learners do not vote: removing one never costs quorum, and they count for none.
        problem = None if member.learner else removal_problem(voters, alive, old)
        if problem and not force:
            raise PreflightError(f"refusing to remove {old}: {problem}. Nothing was changed "
                                 f"(--force removes it anyway)")
        balancer.remove(cluster, old)
        answers = probes[old][0]
        with remote.connect(cluster, old) as conn:
            if answers:
                say(f"remove-machine: stopping the Air units on {old}")
                machine.stop(conn, cluster)
            client.remove_member(member.id)
            if answers:
                machine.wipe(conn, cluster)
        state.write_machines(client, cluster, [a for a in addresses if a != old])
    if answers:
        say(f"remove-machine: {old} removed and wiped")
    else:
        say(f"warning: {old} did not answer: it was removed from etcd and the balancer only; "
            f"wipe it before using it again")


@air_task(name="add-machine", help={"cluster": "target cluster", "via": "an existing member",
                                    "machine": "address of the freshly prepared machine"})
def add_machine(c, cluster=None, via=None, machine_=None):
    """Add a freshly prepared machine to the cluster (etcd learner, promoted, current release, balancer)."""
    target = cluster_of(cluster)
    add(target, check_address(via, "--via"), check_address(machine_, "--machine"))


@air_task(name="remove-machine", help={"cluster": "target cluster", "via": "another member",
                                       "machine": "address of the machine to remove (may be powered off)",
                                       "force": "remove even when quorum or redundancy is at risk"})
def remove_machine(c, cluster=None, via=None, machine_=None, force=False):
    """Remove a machine from the cluster: balancer, polite stop, etcd, wipe."""
    target = cluster_of(cluster)
    remove(target, check_address(via, "--via"), check_address(machine_, "--machine"), force)
