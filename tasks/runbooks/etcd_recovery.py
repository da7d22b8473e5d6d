"""etcd brought back after its quorum is lost: `fab etcd.restore` and `fab etcd.recover`.

``restore`` makes a new etcd cluster of the cluster file's machines from one snapshot: the
snapshot is checked here first (its trailer, its database), uploaded to every machine (0600)
and restored there by etcd's own ``etcdctl snapshot restore`` as that machine's member of a new
cluster (new token), its earlier data kept aside; then etcd starts everywhere. A freshly
prepared machine first gets the release the snapshot records, as setup-cluster installs it,
and is started and put in the balancer once etcd answers. Machines that were installed keep
running their containers throughout (they read etcd only for settings), so the application
keeps serving where it can.

``recover`` makes a one-member cluster of a surviving member: from its own data (etcd's
``--force-new-cluster``, through a drop-in used for one start only) or, when its data is gone
too, from a snapshot. Its cloud config and drop-in then name that one member, the lost machines
leave the balancer and are wiped when they answer, and `fab add-machine` brings replacements in.

Both refuse when etcd still has quorum, and print what they would do under ``--plan``. No member
leads while quorum is lost, so there is no leadership to hand over before a member is stopped. A
lock key held when the snapshot was taken (or when quorum was lost) is stale afterwards: it is
released, and the task takes the lock itself for what follows.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, Optional

from tasks.commands import etcd_recovery as cmd
from tasks.commands import machine
from tasks.model import etcd_snapshot, state
from tasks.model.cluster import check_address
from tasks.model.errors import ConfigError, PreflightError, RemoteError
from tasks.model.release import Release
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, etcd_members, etcd_peers, install, records, steps
from tasks.runbooks.cli import air_task, cluster_of, report


class Snapshot(NamedTuple):
    path: Path
    data: bytes
    facts: etcd_snapshot.Facts


def read_snapshot(path) -> Snapshot:
    """The snapshot file ``path``, checked (trailer, database); ConfigError before anything is contacted."""
    if not path:
        raise ConfigError("--snapshot is required (a file `fab etcd.backup` made)")
    file = Path(path).expanduser()
    try:
        data = file.read_bytes()
    except OSError as e:
        raise ConfigError(f"--snapshot {file}: cannot read ({e.strerror or e})") from None
    return Snapshot(file, data, etcd_snapshot.read(data, f"--snapshot {file}"))


def snapshot_release(cluster, snap: Snapshot) -> Optional[Release]:
    """The release the snapshot records (read from its database), or None."""
    key = state.release_key(cluster)
    text = etcd_snapshot.value_of(snap.data, key, str(snap.path))
    return records.parsed(key, text)[0] if text else None


def stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


# ---------------------------------------------------------------- the machines' facts

def machine_facts(s: Session, addresses) -> dict:
    """address -> its facts (``steps.facts``); PreflightError naming every machine that does not answer."""
    def read(address):
        why = s.ex.reachable(address)
        return (None, f"{address}: unreachable ({why})") if why else (steps.facts(s.ex, address), None)
    found = dict(zip(addresses, s.ex.parallel(read, list(addresses))))
    missing = [why for _, why in found.values() if why]
    if missing:
        raise PreflightError("; ".join(missing) + "; nothing was changed")
    return {a: facts for a, (facts, _) in found.items()}


def is_fresh(facts: dict) -> bool:
    return not machine.fresh_problems(facts)


# ---------------------------------------------------------------- restore

def restore_plan(cluster, snap: Snapshot, facts: dict, release: Optional[Release]) -> list:
    """The lines `etcd.restore --plan` prints: per machine what happens. Pure."""
    lines = [f"etcd.restore: {cluster.name} from {snap.path} (rev {snap.facts.revision}, {snap.facts.keys} keys, "
             f"release {release.id if release else 'none recorded'}): a new etcd cluster of "
             f"{', '.join(cluster.machines)}"]
    for address in cluster.machines:
        if is_fresh(facts[address]):
            lines.append(f"  {address}: freshly prepared: install release {release.id if release else '?'} as "
                         f"setup-cluster does, restore the snapshot, start etcd, start the Air units, balancer")
        else:
            lines.append(f"  {address}: stop etcd, keep its data aside, restore the snapshot, start etcd "
                         f"(its containers keep serving)")
    return lines


def check_restorable(cluster, facts: dict, release: Optional[Release]) -> list:
    """The freshly prepared machines; PreflightError when one needs a release the snapshot lacks."""
    fresh = [a for a in cluster.machines if is_fresh(facts[a])]
    if fresh and release is None:
        raise PreflightError(f"{', '.join(fresh)} freshly prepared but the snapshot records no release to install "
                             f"there; nothing was changed")
    return fresh


def put_snapshot(s: Session, address: str, snap: Snapshot, members, token: str, when: str) -> None:
    """Upload the snapshot (0600) and restore it there as the member ``address`` of ``members``."""
    staged = s.ex.stage_files(address, [(cmd.SNAPSHOT_PATH, snap.data, 0o600)], what="upload the etcd snapshot")
    s.ex.run(address, f"{staged.swap} && {cmd.restore_command(address, members, token, when)}",
             what="restore the etcd snapshot", deadline=s.cluster.timeouts.command + s.cluster.timeouts.stop)


def restore(s: Session, snap: Snapshot, plan_only: bool = False) -> dict:
    """The restore runbook (see the module); returns what was done."""
    cluster, ex, started = s.cluster, s.ex, time.monotonic()
    etcd_members.refuse_with_quorum(ex, cluster, "etcd.restore")
    machines = list(cluster.machines)
    facts = machine_facts(s, machines)
    release = snapshot_release(cluster, snap)
    fresh = check_restorable(cluster, facts, release)
    lines = restore_plan(cluster, snap, facts, release)
    if plan_only:
        print("\n".join(lines))
        return {"planned": True, "fresh": fresh}
    say(lines[0])
    if fresh and release is not None:
        _install_fresh(s, fresh, machines, facts, release)
    when = stamp()
    token = cmd.cluster_token(cluster.name, when)
    ex.check("restoring etcd")
    ex.parallel(lambda a: put_snapshot(s, a, snap, machines, token, when), machines)
    say(f"etcd.restore: snapshot restored on {', '.join(machines)} (token {token}); starting etcd")
    install.start_etcd(s, machines)
    _take_over_lock(s, "etcd.restore")
    if fresh and release is not None:
        ex.parallel(lambda a: install.start_machine(ex, a), fresh)
        routers = balancer.Routers(ex)
        routers.set(sorted(set(routers.listed()) | set(fresh)))
    seconds = time.monotonic() - started
    say(f"etcd.restore: {cluster.name} restored to revision {snap.facts.revision} on {len(machines)} members "
        f"in {seconds:.1f} s")
    return {"machines": machines, "fresh": fresh, "revision": snap.facts.revision, "keys": snap.facts.keys,
            "release": release.id if release else None, "seconds": round(seconds, 1)}


def _install_fresh(s: Session, fresh: list, machines: list, facts: dict, release: Release) -> None:
    """What setup-cluster installs on the freshly prepared machines, short of starting anything."""
    etcd_peers.ensure(s.cluster, machines)
    plans = {a: install.plan_machine(s.ex, a, facts[a]["user_data"], machines, release, "new") for a in fresh}
    say(f"etcd.restore: installing release {release.id} on {', '.join(fresh)}")
    s.ex.parallel(lambda a: install.install_machine(s.ex, a, plans[a], release), fresh)


def _take_over_lock(s: Session, why: str) -> None:
    """The lock key etcd came back with belongs to no running task: released, then taken by this one."""
    holder = s.etcd.force_release(state.lock_key(s.cluster))
    if holder:
        say(f"{why}: released the lock etcd came back with ({', '.join(f'{k}={v}' for k, v in holder.items())})")
    s.take_lock(why)


@air_task(name="restore", help={"cluster": "target cluster", "snapshot": "the snapshot file (fab etcd.backup made it)",
                                "plan": "print what it would do and change nothing", "json": "print the outcome as JSON"})
def restore_task(c, cluster=None, snapshot=None, plan_=False, json_=False):
    """Bring the whole etcd cluster back to a snapshot: a new cluster, every member restored from it."""
    target = cluster_of(cluster)
    snap = read_snapshot(snapshot)
    with session(target, etcd=False, changes=True) as s:
        done = restore(s, snap, plan_)
    if not plan_:
        report(done, json_, f"etcd of {target.name} restored from {snap.path} on {', '.join(done['machines'])}")


# ---------------------------------------------------------------- recover

def check_survivor(cluster, survivor: str, facts: dict, snap: Optional[Snapshot]) -> None:
    """PreflightError when ``survivor`` cannot be recovered from (nothing changed)."""
    if facts.get("etcd_configured") != "yes":
        raise PreflightError(f"{survivor} has no etcd installed (a freshly prepared machine?): "
                             f"`fab etcd.restore --cluster {cluster.name} --snapshot FILE` instead; nothing was changed")
    if snap is None and facts.get("etcd_data") != "yes":
        raise PreflightError(f"{survivor} has no etcd data left: give --snapshot FILE (the newest in "
                             f"backups.folder); nothing was changed")


def recover_plan(cluster, survivor: str, lost: list, snap: Optional[Snapshot]) -> list:
    """The lines `etcd.recover --plan` prints. Pure."""
    source = (f"the snapshot {snap.path} (rev {snap.facts.revision}, {snap.facts.keys} keys)" if snap
              else "its own data (etcd's --force-new-cluster, for one start)")
    return [f"etcd.recover: {cluster.name}: {survivor} becomes a one-member etcd cluster from {source}",
            f"  {survivor}: stop etcd, start it as a new one-member cluster, its drop-in and cloud config naming it "
            f"alone; its containers keep serving",
            *(f"  {a}: out of the balancer, wiped when it answers; `fab add-machine --cluster {cluster.name} --via "
              f"{survivor} --machine {a}` brings it (or a replacement) back" for a in lost)]


def recover(s: Session, survivor: str, snap: Optional[Snapshot], plan_only: bool = False) -> dict:
    """The recover runbook (see the module); returns what was done."""
    cluster, ex, started = s.cluster, s.ex, time.monotonic()
    etcd_members.refuse_with_quorum(ex, cluster, "etcd.recover")
    facts = machine_facts(s, [survivor])[survivor]
    check_survivor(cluster, survivor, facts, snap)
    lost = [a for a in cluster.machines if a != survivor]
    lines = recover_plan(cluster, survivor, lost, snap)
    if plan_only:
        print("\n".join(lines))
        return {"planned": True}
    say(lines[0])
    ex.check(f"recovering etcd on {survivor}")
    if snap is not None:
        put_snapshot(s, survivor, snap, [survivor], cmd.cluster_token(cluster.name, stamp()), stamp())
        ex.run(survivor, machine.start_etcd_command(), what="start etcd")
    else:
        ex.write_file(survivor, cmd.FORCE_DROPIN_PATH, cmd.force_new_cluster_dropin(), 0o644)
        ex.run(survivor, cmd.force_start_command(), what="start etcd as a new one-member cluster")
    etcd_peers.wait_member(s, survivor)
    _one_member_document(s, survivor, facts["user_data"])
    _take_over_lock(s, "etcd.recover")
    _let_go(s, lost)
    seconds = time.monotonic() - started
    say(f"etcd.recover: {survivor} is the one member of {cluster.name}'s etcd ({seconds:.1f} s); bring the "
        f"others in with `fab add-machine --cluster {cluster.name} --via {survivor} --machine ADDRESS`")
    return {"member": survivor, "lost": lost, "seconds": round(seconds, 1)}


def _one_member_document(s: Session, survivor: str, user_data: str) -> None:
    """The survivor's cloud config and drop-in naming it alone, and etcd restarted on its normal unit
    (the force drop-in gone: a later start must not force a new cluster again)."""
    with etcd_api.tunnel(s.ex, survivor) as client:
        release, _ = records.read_release(client, s.cluster)
    if release is None:
        raise RemoteError(f"etcd on {survivor} holds no release record: its cloud config was left naming the lost "
                          f"members (etcd ignores them while its data lasts)")
    document = etcd_peers.final_document(s.ex, survivor, [survivor], release, user_data)
    steps.apply_document(s.ex, survivor, document, user_data)
    s.ex.run(survivor, cmd.without_force_command(), what="restart etcd on its one-member drop-in")
    etcd_peers.wait_member(s, survivor)


def _let_go(s: Session, lost: list) -> None:
    """The lost machines out of the balancer, and wiped when they answer (add-machine needs them fresh)."""
    routers = balancer.Routers(s.ex)
    routers.set([a for a in routers.listed() if a not in lost])
    for address in lost:
        why = s.ex.reachable(address)
        if why:
            say(f"etcd.recover: {address} does not answer ({why}): wipe it (or replace it) before add-machine")
            continue
        steps.wipe(s.ex, address, steps.facts(s.ex, address)["user_data"])
        say(f"etcd.recover: {address} wiped")


@air_task(name="recover", help={"cluster": "target cluster", "machine": "the surviving member",
                                "snapshot": "restore it from this snapshot (when its own data is gone too)",
                                "plan": "print what it would do and change nothing", "json": "print the outcome as JSON"})
def recover_task(c, cluster=None, machine_=None, snapshot=None, plan_=False, json_=False):
    """After a lost quorum: make the surviving member a one-member etcd cluster (its data, or a snapshot)."""
    target = cluster_of(cluster)
    survivor = check_address(machine_, "--machine")
    if survivor not in target.machines:
        raise ConfigError(f"--machine: {survivor} is not a machine of {target.name} ({', '.join(target.machines)})")
    snap = read_snapshot(snapshot) if snapshot else None
    with session(target, etcd=False, changes=True) as s:
        done = recover(s, survivor, snap, plan_)
    if not plan_:
        report(done, json_, f"etcd of {target.name}: one member, {survivor}")
