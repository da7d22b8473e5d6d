"""Adding and removing machines, with etcd reconfigured safely.

A new machine joins etcd as a *learner* before its etcd starts, and is
promoted once it has caught up: a learner does not vote, so a new member
that fails to start never costs the cluster its quorum (a plain member
added to a one-member cluster loses quorum at once). It then runs exactly
the release recorded in etcd, not whatever is newest in the registry. A
failure midway removes the membership it added and says so.

A removal takes the machine out of the balancer first, stops it politely
when it answers, hands etcd's leadership to another member when it leads,
removes it from etcd, and wipes its etcd and Air units so it can be added
back later (a learner left behind by a failed add is removed the same way). It is refused when the members left alive could
not keep quorum, or when one member would remain, unless forced. A removal whose wipe failed (or
whose machine did not answer) is finished by ``machine.wipe``, which refuses a machine that is
still an etcd member or in the balancer.
"""
from __future__ import annotations

import time
from typing import Optional

from cloudconfig.units import peer_url
from tasks.commands import machine
from tasks.model import roles, rollout_plan, state
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, Interrupted, LostLock, PreflightError, RemoteError
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, etcd_backup, etcd_peers, records, steps
from tasks.runbooks.cli import air_task, cluster_of, report
from tasks.runbooks.install import install_machine, plan_machine
from tasks.runbooks.settings import apply as apply_settings


def quorum(voters: int) -> int:
    return voters // 2 + 1


def removal_problem(members: list, alive: set, leaving: str) -> Optional[str]:
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


def _probe(ex, address) -> tuple:
    """(answers SSH, runs etcd, has Air units installed, where its cloud config is) for one machine."""
    if ex.reachable(address):
        return False, False, False, None
    facts = steps.facts(ex, address)
    return (True, facts.get("etcd_active") == "active", facts.get("air_units", "0") not in ("", "0"),
            facts["user_data"])


def _check_via(client, cluster, via):
    if _member(client, via) is None:
        raise ConfigError(f"--via {via} is not an etcd member of {cluster.name}")


def add(s: Session, via: str, new: str) -> str:
    """Add ``new``; returns its role (an etcd member while there are fewer than the cluster's
    ``etcd_members``, else a worker)."""
    cluster, ex, client = s.cluster, s.ex, s.etcd
    _check_via(client, cluster, via)
    members = client.members()
    if any(not m.started or m.learner for m in members):
        raise PreflightError("etcd has a member that has not started or is still a learner; "
                             "finish or remove it first (fab remove-machine)")
    if _member(client, new) is not None:
        raise PreflightError(f"{new} is already an etcd member of {cluster.name}")
    release, _ = records.read_release(client, cluster)
    if release is None:
        raise PreflightError(f"{cluster.name} has no release recorded in etcd: run setup-cluster first")
    role = roles.joins_as(len(members), cluster.etcd_members)
    addresses = [state.member_address(m) for m in members] + ([new] if role == roles.MEMBER else [])
    why = ex.reachable(new)
    if why:
        raise PreflightError(f"{new}: unreachable ({why}); nothing was changed")
    facts = steps.facts(ex, new)
    problems = machine.fresh_problems(facts)
    if problems:
        raise PreflightError(f"{new}: not a fresh machine: {', '.join(problems)}; nothing was changed")
    plan = plan_machine(ex, new, facts["user_data"], addresses, release, "existing")
    etcd_peers.ensure(cluster, [new])  # its peer certificate: local files only, before any change
    etcd_backup.before_change(s, "add-machine")
    apply_settings(s, "add-machine")
    say(f"add-machine: installing release {release.id} on {new}, as an etcd {role}")
    added: list = []  # the etcd member it became, once added
    try:
        install_machine(ex, new, plan, release)
        join(s, new, role, added)
        # The release's components: one new in the cluster file joins with the next deploy.
        running = rollout_plan.running_components(cluster, release)
        steps.start(ex, new, running)
        steps.wait_healthy(ex, new, components=running)
        steps.resume_os_updates(ex, new)
    except AirError as failure:
        if isinstance(failure, LostLock):
            raise LostLock(f"{failure}; {new} was left half-added" +
                           (f" (etcd member {added[0].id}): remove it with fab remove-machine" if added else
                            f": `fab machine.wipe --cluster {cluster.name} --machine {new}` wipes it")) from None
        with ex.finishing():
            undone = _undo_add(s, new, added[0] if added else None, plan.user_data)
        raise (Interrupted if isinstance(failure, Interrupted) else AirError)(
            f"add-machine {new} failed: {failure}\n{undone}") from None
    balancer.Routers(ex).add(new)
    _say_added(cluster, new, role, release)
    return role


def _say_added(cluster, new: str, role: str, release) -> None:
    say(f"add-machine: {new} is {'a member' if role == roles.MEMBER else 'a worker'} and serves release {release.id}")
    if new not in cluster.machines:
        say(f"add-machine: add {new} to the machines of {cluster.file}: deploys reach the machines listed there "
            f"and the etcd members")


def join(s: Session, new: str, role: str, added: list) -> None:
    """``new``, installed, joins etcd: a member joins as a learner (put in ``added`` at once, for the
    undo) and is promoted once caught up; a worker starts its etcd proxy to the members."""
    if role == roles.WORKER:
        s.ex.run(new, machine.start_etcd_proxy_command(), what="start the etcd proxy")
        return
    s.ex.check(f"adding {new} to etcd")
    added.append(s.etcd.add_member(peer_url(new), learner=True))
    s.ex.run(new, machine.start_etcd_command(), what="start etcd")
    promote(s, added[0].id)


def _undo_add(s: Session, new, added, user_data) -> str:
    """Remove the membership an add made and wipe the machine; says what became of it. A cleanup
    that fails is reported after the failure it cleans up after, never instead of it."""
    said = []
    member = added is not None
    try:
        if added is not None:
            s.etcd.remove_member(added.id)
            member = False
            said.append("its etcd membership was removed again")
        steps.wipe(s.ex, new, user_data)
        said.append("it was wiped; the cluster is as before")
    except AirError as e:
        said.append(f"cleaning up failed too ({e}): `fab {'remove-machine' if member else 'machine.wipe'} "
                    f"--cluster {s.cluster.name} --machine {new}` finishes it")
    return " and ".join(said)


def promote(s: Session, member_id: str) -> None:
    """Promote learner ``member_id``, asked of etcd's leader: with authentication on, a follower
    passes a promotion on to the leader without the client's login, and the leader refuses it
    (the request then hangs until its timeout; an etcd bug seen on 3.4)."""
    leader_id = s.etcd.status()["leader"]
    leader = next((m for m in s.etcd.members() if m.id == leader_id), None)
    if leader is None or leader_id == s.etcd.status()["member"]:
        s.etcd.promote(member_id, timeout=s.cluster.timeouts.healthy)
        return
    with etcd_api.tunnel(s.ex, state.member_address(leader)) as at_leader:
        at_leader.promote(member_id, timeout=s.cluster.timeouts.healthy)


def hand_over_leadership(s: Session, leaving: str, via: str, task: str = "remove-machine") -> None:
    """When ``leaving`` leads etcd, move leadership to ``via`` first: a leader removed (or rebooted)
    while leading leaves the cluster without one until an election, and writes in flight get no answer."""
    members = {state.member_address(m): m for m in s.etcd.members()}
    leader_id = s.etcd.status()["leader"]
    if members.get(leaving) is None or members[leaving].id != leader_id:
        return
    say(f"{task}: {leaving} leads etcd; handing leadership to {via}")
    s.ex.check(f"moving etcd leadership off {leaving}")
    with etcd_api.tunnel(s.ex, leaving) as at_leader:
        at_leader.move_leader(members[via].id)
    deadline = time.monotonic() + s.cluster.timeouts.healthy
    while s.etcd.status()["leader"] != members[via].id:
        if time.monotonic() > deadline:
            raise RemoteError(f"etcd leadership did not move to {via} within {s.cluster.timeouts.healthy} s")
        time.sleep(0.2)


def remove(s: Session, via: str, old: str, force: bool = False) -> bool:
    """Remove ``old``; returns whether it answered (and so was also stopped and wiped)."""
    cluster, ex, client = s.cluster, s.ex, s.etcd
    _check_via(client, cluster, via)
    member = _member(client, old)
    if member is None and old in cluster.machines:
        return remove_worker(s, old)
    if member is None:
        raise ConfigError(f"{old} is not an etcd member of {cluster.name}")
    addresses = [state.member_address(m) for m in client.members()]
    voters = [state.member_address(m) for m in client.members() if not m.learner]
    probes = dict(zip(addresses, ex.parallel(lambda a: _probe(ex, a), addresses)))
    alive = {a for a, (_, etcd_up, _, _) in probes.items() if etcd_up}
    # Learners do not vote: removing one never costs quorum, and they count for none.
    problem = None if member.learner else removal_problem(voters, alive, old)
    if problem and not force:
        raise PreflightError(f"refusing to remove {old}: {problem}. Nothing was changed "
                             f"(--force removes it anyway)")
    etcd_backup.before_change(s, "remove-machine")
    balancer.Routers(ex).remove(old)
    answers, runs_etcd, installed, user_data = probes[old]
    if installed:  # a learner left by a failed add may have none
        say(f"remove-machine: stopping the Air units on {old}")
        steps.stop(ex, old)
    if runs_etcd and not member.learner:
        hand_over_leadership(s, old, via)
    ex.check(f"removing {old} from etcd")
    client.remove_member(member.id)
    _wipe_removed_member(s, old, answers, user_data)
    keep_members(s, old, voted=not member.learner)
    return answers


def _wipe_removed_member(s: Session, old: str, answers: bool, user_data) -> None:
    """The wipe of a member just removed from etcd and the balancer, when it answers."""
    finish = f"`fab machine.wipe --cluster {s.cluster.name} --machine {old}`"
    if not answers:
        say(f"warning: {old} did not answer: it was removed from etcd and the balancer only; "
            f"{finish} wipes it once it answers, before it is used again")
        return
    try:
        steps.wipe(s.ex, old, user_data)
    except AirError as e:
        raise type(e)(f"{old} was removed from etcd and the balancer, but wiping it failed ({e}); "
                      f"{finish} finishes it") from None
    say(f"remove-machine: {old} removed and wiped")


def remove_worker(s: Session, old: str) -> bool:
    """Remove worker ``old``: out of the balancer, stopped politely and wiped (etcd is not touched).
    Returns whether it answered."""
    ex = s.ex
    balancer.Routers(ex).remove(old)
    answers, _, installed, user_data = _probe(ex, old)
    if not answers:
        say(f"warning: worker {old} did not answer: it was removed from the balancer only; "
            f"`fab machine.wipe --cluster {s.cluster.name} --machine {old}` wipes it once it answers")
        return False
    if installed:
        say(f"remove-machine: stopping the Air units on worker {old}")
        steps.stop(ex, old)
    steps.wipe(ex, old, user_data)
    say(f"remove-machine: worker {old} removed and wiped (remove it from the machines of {s.cluster.file})")
    return True


def keep_members(s: Session, gone: str, voted: bool = True) -> Optional[str]:
    """After the removal of member ``gone`` (a voting one: a learner's removal changes no count):
    promote a worker of the cluster file (the first that answers and runs the etcd proxy) while etcd
    has fewer members than ``etcd_members``. Returns the one promoted, if any."""
    cluster, ex = s.cluster, s.ex
    members = [state.member_address(m) for m in s.etcd.members()]
    if not voted or roles.joins_as(len(members), cluster.etcd_members) == roles.WORKER:
        return None
    candidates = [a for a in roles.workers(cluster.machines, members) if a != gone]

    def a_worker(address) -> bool:
        return not ex.reachable(address) and steps.facts(ex, address).get("etcd_proxy") == "yes"
    answering = [a for a, yes in zip(candidates, ex.parallel(a_worker, candidates)) if yes]
    worker = roles.to_promote(candidates, answering)
    if worker is None:
        if candidates:
            say(f"warning: etcd has {len(members)} members of {cluster.etcd_members} and no worker answers to be "
                f"promoted ({', '.join(candidates)})")
        return None
    promote_worker(s, worker, members)
    return worker


def promote_worker(s: Session, worker: str, members: list) -> None:
    """``worker`` becomes an etcd member: its proxy gives way to a member etcd (its cloud config
    rewritten so), which joins as a learner and is promoted once it has caught up. Its applications
    reach etcd again once it is a voting member (a learner serves no reads)."""
    cluster, ex, client = s.cluster, s.ex, s.etcd
    release, _ = records.read_release(client, cluster)
    if release is None:
        raise PreflightError(f"{cluster.name} has no release recorded in etcd: cannot promote {worker}")
    user_data = steps.facts(ex, worker)["user_data"]
    plan = plan_machine(ex, worker, user_data, members + [worker], release, "existing")
    say(f"remove-machine: promoting worker {worker} to etcd member (learner, then voting)")
    etcd_peers.ensure(cluster, [worker])
    ex.check(f"promoting {worker}")
    added = None
    try:
        ex.run(worker, machine.retire_etcd_proxy_command(), what="stop the etcd proxy")
        steps.apply_document(ex, worker, plan.doc, plan.user_data)
        etcd_peers.deliver(ex, worker)
        added = client.add_member(peer_url(worker), learner=True)
        ex.run(worker, machine.start_etcd_command(), what="start etcd")
        promote(s, added.id)
    except AirError as failure:
        state_now = (f"it is etcd member {added.id} (perhaps still a learner): `fab remove-machine --cluster "
                     f"{cluster.name} --machine {worker}` removes it" if added else
                     "its etcd proxy is stopped: its applications do not reach etcd")
        raise type(failure)(f"promoting worker {worker} failed: {failure}; the cluster serves with "
                            f"{len(members)} etcd members, and {worker} is left so: {state_now}") from None
    say(f"remove-machine: {worker} is an etcd member ({len(members) + 1} members)")


def wipe_removed(s: Session, address: str) -> None:
    """Finish a removal whose wipe failed: ``address`` back to a freshly prepared machine
    (``steps.wipe``). Refused, changing nothing, while it is an etcd member of the cluster or in its
    balancer (``remove-machine`` takes it out of both first)."""
    cluster, ex = s.cluster, s.ex
    member = _member(s.etcd, address)
    if member is not None:
        raise PreflightError(f"{address} is {'a learner' if member.learner else 'an etcd member'} of {cluster.name}: "
                             f"`fab remove-machine --cluster {cluster.name} --machine {address}` removes and wipes "
                             f"it; nothing was changed")
    if address in balancer.Routers(ex).listed():
        raise PreflightError(f"{address} is in the balancer of {cluster.name} though not an etcd member: "
                             f"`fab balancer.remove --cluster {cluster.name} --machine {address}` takes it out "
                             f"first; nothing was changed")
    why = ex.reachable(address)
    if why:
        raise PreflightError(f"{address}: unreachable ({why}); nothing was changed")
    user_data = steps.facts(ex, address)["user_data"]
    ex.check(f"the wipe of {address}")
    steps.wipe(ex, address, user_data)
    say(f"machine.wipe: {address} wiped (etcd, the Air units and the cluster's secrets gone; its data kept)")


@air_task(name="add-machine", help={"cluster": "target cluster", "via": "an existing member",
                                    "machine": "address of the freshly prepared machine",
                                    "json": "print the outcome as JSON"})
def add_machine(c, cluster=None, via=None, machine_=None, json_=False):
    """Add a freshly prepared machine to the cluster (etcd learner, promoted, current release, balancer)."""
    target = cluster_of(cluster)
    via, new = check_address(via, "--via"), check_address(machine_, "--machine")
    with session(target, f"add-machine {new}", via) as s:
        role = add(s, via, new)
        release, _ = records.read_release(s.etcd, target)
    report({"machine": new, "member": role == roles.MEMBER, "role": role, "release": release.id if release else None},
           json_, f"{new} is a{'n etcd member' if role == roles.MEMBER else ' worker'} of {target.name}")


@air_task(name="remove-machine", help={"cluster": "target cluster", "via": "another member",
                                       "machine": "address of the machine to remove (may be powered off)",
                                       "force": "remove even when quorum or redundancy is at risk",
                                       "json": "print the outcome as JSON"})
def remove_machine(c, cluster=None, via=None, machine_=None, force=False, json_=False):
    """Remove a machine from the cluster: balancer, polite stop, etcd, wipe."""
    target = cluster_of(cluster)
    via, old = check_address(via, "--via"), check_address(machine_, "--machine")
    if via == old:
        raise ConfigError("--via must be another member than --machine")
    with session(target, f"remove-machine {old}", via) as s:
        wiped = remove(s, via, old, force)
    report({"machine": old, "removed": True, "wiped": wiped}, json_,
           f"{old} removed from {target.name}" + ("" if wiped else " (it did not answer: wipe it before reuse)"))


@air_task(name="wipe", help={"cluster": "target cluster",
                             "machine": "address of a machine no longer a member (a removal whose wipe failed)",
                             "json": "print the outcome as JSON"})
def wipe_machine(c, cluster=None, machine_=None, json_=False):
    """Wipe a machine removed from the cluster (etcd, Air units, secrets): finishes a removal whose wipe failed."""
    target = cluster_of(cluster)
    address = check_address(machine_, "--machine")
    with session(target, f"machine.wipe {address}") as s:
        wipe_removed(s, address)
    report({"machine": address, "wiped": True}, json_, f"{address} wiped")
