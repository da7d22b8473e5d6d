"""The etcd members' peer TLS: the cluster's CA, one certificate per member, and their delivery.

etcd members talk to each other over TLS (``cloudconfig.units.etcd_dropin``) and each side shows
a certificate issued by the cluster's own CA, so a machine without one cannot join. This module
owns where they are kept (``<secrets folder>/etcd-peer/``: ``ca.crt``, ``ca.key``,
``<address>.crt``, ``<address>.key``, every file 0600, the folder 0700, outside what
``machine.secret_files`` installs into containers), the plan of what is missing (pure), making
it (the ``cryptography`` package: no key ever reaches argv or a log), and the files and the
command that put a member's certificate, key and the CA certificate on its machine, owned by the
user etcd runs as. ``fab etcd.certificates --cluster C`` makes what is missing; setup-cluster
and add-machine do it too before anything on the cluster changes; ``--renew`` gives every member
a new certificate, one member at a time (``renew_all``). ``fab etcd.migrate-peers`` moves a
cluster installed with plaintext peers to TLS, one member at a time (``migrate``). Both restart
etcd on one member after another, so both refuse a cluster where that costs quorum (``restart_problem``).

A member's certificate names its address (its only subject alternative name), and etcd accepts a
peer's client certificate only from a connection coming from an address the certificate names:
a member holding another member's certificate and key is refused (etcd's own SAN check on its TLS
listeners; ``--peer-cert-allowed-cn``/``-hostname`` take one name for every peer, so they cannot
tell members apart and are not used).
"""
from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

import cloudconfig
from cloudconfig.units import (
    ETCD_PEER_CA,
    ETCD_PEER_CERT,
    ETCD_PEER_DIR,
    ETCD_PEER_KEY,
    ETCD_USER,
    etcd_peer_files_dropin,
    peer_url,
)
from tasks.commands import machine
from tasks.commands.shell import q
from tasks.model import state
from tasks.model.cluster import check_address, check_addresses
from tasks.model.errors import AirError, ConfigError, Halt, HealthError, PreflightError, RemoteError
from tasks.net import deferred
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import etcd_backup, etcd_members, records, steps
from tasks.runbooks.cli import air_task, cluster_of, report

if TYPE_CHECKING:
    from tasks.model import certificates as issuing
else:
    issuing = deferred("tasks.model.certificates")  # cryptography loads when a certificate is made or read

FOLDER = "etcd-peer"  # inside the cluster's secrets folder
CA = "ca"


def folder_of(cluster) -> Path:
    return Path(cluster.secrets) / FOLDER


# ---------------------------------------------------------------- the plan (pure)

class Plan(NamedTuple):
    """What to make: the CA (when it is missing) and the members' certificates that are missing."""
    new_ca: bool
    members: tuple

    @property
    def empty(self) -> bool:
        return not self.new_ca and not self.members


def plan(present, members) -> Plan:
    """What ``present`` (the file names of the folder) lacks for ``members``. Pure.

    A member certificate without the CA that issued it is refused: a new CA would not trust it,
    and the members running with it would stop trusting each other."""
    present = set(present)
    has_ca = {f"{CA}.crt", f"{CA}.key"} <= present
    if not has_ca and any(name.endswith(".crt") and name != f"{CA}.crt" for name in present):
        raise ConfigError(f"the etcd peer CA ({CA}.crt and {CA}.key) is missing but member certificates "
                          f"remain: put the CA back (the members trust only it), or, for a cluster not "
                          f"set up yet, empty the folder to start over")
    missing = tuple(m for m in members if not {f"{m}.crt", f"{m}.key"} <= present)
    return Plan(not has_ca, missing)


def describe(p: Plan, cluster_name: str) -> str:
    """One line saying what ``p`` makes. Pure."""
    if p.empty:
        return f"etcd peers: {cluster_name}: the CA and every member certificate are present"
    parts = (["the cluster CA"] if p.new_ca else []) + [f"the certificate of {m}" for m in p.members]
    return f"etcd peers: {cluster_name}: making {', '.join(parts)}"


def machine_files(ca_cert: bytes, cert: bytes, key: bytes) -> list:
    """``(path, content, 0600)`` for a member's machine: the CA certificate, its certificate and key. Pure."""
    return [(ETCD_PEER_CA, ca_cert, 0o600), (ETCD_PEER_CERT, cert, 0o600), (ETCD_PEER_KEY, key, 0o600)]


def own_command() -> str:
    """Gives the installed files to the user etcd runs as (it reads them after dropping root),
    their folder 0700. Pure."""
    return f"chown -R {q(ETCD_USER)}: {q(ETCD_PEER_DIR)} && chmod 0700 {q(ETCD_PEER_DIR)}"


# ---------------------------------------------------------------- making them

def _write_private(path: Path, content: bytes) -> None:
    """A new file, 0600 from its creation on (never readable by others, not even for a moment)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(content)


def ensure(cluster, members) -> Plan:
    """Make the CA and the certificates of ``members`` that the cluster's folder lacks; returns what
    was made. Touches only that local folder."""
    folder = folder_of(cluster)
    present = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    todo = plan(present, members)
    if todo.empty:
        return todo
    say(describe(todo, cluster.name))
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    if todo.new_ca:
        for stale in (folder / f"{CA}.crt", folder / f"{CA}.key"):
            stale.unlink(missing_ok=True)  # half a CA issued nothing (``plan`` refuses otherwise)
        cert, key = issuing.new_ca(cluster.name, now)
        _write_private(folder / f"{CA}.key", key)
        _write_private(folder / f"{CA}.crt", cert)
    ca_cert, ca_key = (folder / f"{CA}.crt").read_bytes(), (folder / f"{CA}.key").read_bytes()
    for member in todo.members:
        for stale in (folder / f"{member}.crt", folder / f"{member}.key"):
            stale.unlink(missing_ok=True)  # a half-made pair (one of the two files) is made again
        cert, key = issuing.new_member(member, ca_cert, ca_key, now)
        _write_private(folder / f"{member}.key", key)
        _write_private(folder / f"{member}.crt", cert)
    return todo


def files_for(cluster, address: str) -> list:
    """The files ``address``'s machine gets (``machine_files``), read from the cluster's folder;
    ConfigError when its certificate is missing or was not issued by the cluster's CA."""
    folder = folder_of(cluster)
    try:
        ca_cert, cert, key = ((folder / name).read_bytes() for name in (f"{CA}.crt", f"{address}.crt", f"{address}.key"))
    except FileNotFoundError as e:
        raise ConfigError(f"{e.filename}: missing; `fab etcd.certificates --cluster {cluster.name}` makes it") from None
    if not issuing.issued_by(cert, ca_cert):
        raise ConfigError(f"{folder / (address + '.crt')}: not issued by the cluster's etcd peer CA "
                          f"({folder / (CA + '.crt')}); remove it and its key, then "
                          f"`fab etcd.certificates --cluster {cluster.name}`") from None
    return machine_files(ca_cert, cert, key)


def deliver(ex, address: str) -> None:
    """Put the member's certificate, key and the CA certificate on its machine (0600, owned by etcd's user)."""
    staged = ex.stage_files(address, files_for(ex.cluster, address))
    ex.run(address, f"{staged.swap} && {own_command()}", what="install the etcd peer certificate")


@air_task(name="certificates", help={"cluster": "target cluster",
                                     "machines": "comma-separated addresses (default: the cluster file's)",
                                     "renew": "new certificates for every member, one member at a time, each "
                                              "restarted and healthy before the next",
                                     "json": "print what was made as JSON"})
def certificates(c, cluster=None, machines=None, renew=False, json_=False):
    """Make the etcd peer CA and member certificates that are missing (secrets folder); --renew replaces the members'."""
    target = cluster_of(cluster)
    if renew:
        if machines:
            raise ConfigError("--renew renews every member's certificate: leave out --machines")
        with session(target, "etcd.certificates --renew") as s:
            renewed = renew_all(s)
        report({"cluster": target.name, "renewed": renewed}, json_,
               f"etcd peers of {target.name}: renewed the certificates of {', '.join(renewed)}")
        return
    chosen = check_addresses(machines, "--machines") if machines else list(target.machines)
    made = ensure(target, chosen)
    report({"cluster": target.name, "folder": str(folder_of(target)), "ca_made": made.new_ca,
            "certificates_made": list(made.members)}, json_, describe(made, target.name).replace("making", "made"))


# ---------------------------------------------------------------- one member restarted at a time

def restart_problem(voters: int, task: str) -> Optional[str]:
    """Why restarting etcd on one member after another would cost quorum (None when it does not). Pure.

    With two members both vote and both are needed: each restart loses quorum for a while, and a
    member that does not come back on its new files leaves the other without quorum until
    `fab etcd.recover`. The restarts of these tasks are the very step that may not come back, so
    such a cluster is refused rather than risked; with three members or more one is down at a time."""
    from tasks.runbooks.membership import quorum  # membership imports this module
    if voters - 1 >= quorum(voters):
        return None
    return (f"{task} restarts etcd on one member at a time, and with {voters} voting member(s) a member "
            f"restarting leaves {voters - 1}, below the quorum of {quorum(voters)} (one that does not come "
            f"back leaves the cluster without quorum); it needs three members or more")


def checked_members(listed: list, task: str) -> list:
    """``listed`` (the etcd members), when every one has started and votes and a restart of one keeps quorum."""
    if any(not m.started or m.learner for m in listed):
        raise PreflightError("etcd has a member that has not started or is still a learner; finish or remove "
                             "it first (fab remove-machine); nothing was changed")
    problem = restart_problem(len(listed), task)
    if problem:
        raise PreflightError(f"{problem}; nothing was changed")
    return listed


def unhealthy_problem(answers: dict) -> Optional[str]:
    """Which members (address -> ``etcd_members.Answer``) do not answer a quorum read, or None. Pure."""
    bad = [f"{a} ({answers[a].error or 'no quorum read'})" for a in sorted(answers) if not answers[a].healthy]
    return f"etcd not healthy on {', '.join(bad)}" if bad else None


def _all_healthy(s: Session, addresses: list, before: str) -> etcd_members.Quorum:
    """Every member asked at once; HealthError naming those that are not healthy."""
    answers = etcd_members.ask_all(s.ex, addresses, etcd_members.SURE_WITHIN, etcd_members.SURE_TIMEOUT)
    problem = unhealthy_problem(answers)
    if problem:
        raise HealthError(f"{problem}: not {before}")
    return etcd_members.quorum_of(answers)


def wait_member(s: Session, address: str) -> None:
    """Until the member on ``address`` answers a quorum read on its own loopback (after a restart):
    it is up and has caught up with the leader (etcd answers a read only once it applied everything
    committed before it)."""
    deadline = time.monotonic() + s.cluster.timeouts.healthy
    why = "no answer"
    while True:
        try:
            with etcd_api.tunnel(s.ex, address) as member:
                if member.healthy():
                    return
                why = "no quorum"
        except RemoteError as e:
            why = str(e)
        if time.monotonic() > deadline:
            raise HealthError(f"{address}: etcd not healthy within {s.cluster.timeouts.healthy} s after its "
                              f"restart ({why})")
        time.sleep(0.5)


def step_aside(s: Session, address: str, members: list, task: str) -> None:
    """Before etcd on ``address`` restarts: leadership handed to another member when it leads (no
    election with writes in flight), and the session's own way into etcd (the lock's renewals too)
    moved off it, as os-upgrade does before a reboot."""
    from tasks.runbooks import membership  # it imports this module
    other = next(a for a in members if a != address)
    membership.hand_over_leadership(s, address, other, task)
    s.move_etcd(address, other)


def _stopped(failure: BaseException, summary: str) -> BaseException:
    """``failure`` with ``summary`` after it, in its own kind when the command line treats that kind
    apart (an interrupt, a lost lock), else as a RemoteError; anything not ours is left as it is."""
    if not isinstance(failure, AirError):
        say(summary)  # a bug keeps its trace, after what the task knows of the cluster
        return failure
    kind = type(failure) if isinstance(failure, Halt) else RemoteError
    between = "\n" if "\n" in str(failure) else "; "  # a one-line error stays one line
    return kind(f"{failure}{between}{summary}")


# ---------------------------------------------------------------- renewing the member certificates

def renew_summary(cluster_name: str, done: list, members: list, in_hand: Optional[str] = None) -> str:
    """What a renewal that stopped leaves: which members run a new certificate. Pure."""
    left = [a for a in members if a not in done and a != in_hand]
    return ("renewed: " + (", ".join(done) or "none") +
            (f"; {in_hand}: stopped during its restart on a new certificate" if in_hand else "") +
            f"; not renewed: {', '.join(left) or 'none'}; the old and the new certificates are both of the "
            f"cluster's CA, so the members still trust each other; "
            f"`fab etcd.certificates --cluster {cluster_name} --renew` renews them all again")


def renew_all(s: Session) -> list:
    """New certificates for every member, one member at a time: followers first, the leader last
    (its restart is an election). Before each: every member healthy. Each: its new certificate and
    key staged on its machine and swapped in, etcd restarted on them, then healthy and caught up
    (``wait_member``); only then are they kept in the cluster's folder. Returns the members renewed."""
    cluster, ex = s.cluster, s.ex
    listed = checked_members(s.etcd.members(), "etcd.certificates --renew")
    if plaintext(listed):
        raise PreflightError(f"etcd peers of {', '.join(plaintext(listed))} are plaintext: move them to TLS first "
                             f"(fab etcd.migrate-peers --cluster {cluster.name}); nothing was changed")
    addresses = sorted(state.member_address(m) for m in listed)
    ca_cert, ca_key = _ca_of(cluster)
    found = _all_healthy(s, addresses, "renewing; nothing was changed")
    order = etcd_backup.defrag_order(addresses, found.leader)
    etcd_backup.before_change(s, "etcd.certificates --renew")
    done: list = []
    in_hand = None
    try:
        for address in order:
            ex.check(f"renewing the etcd peer certificate of {address}")
            if done:
                _all_healthy(s, addresses, f"renewing {address}")
            in_hand = address
            _renew_member(s, address, addresses, ca_cert, ca_key)
            done.append(address)
            in_hand = None
    except BaseException as failure:
        raise _stopped(failure, renew_summary(cluster.name, done, order, in_hand)) from None
    return order


def _ca_of(cluster) -> tuple:
    folder = folder_of(cluster)
    try:
        return (folder / f"{CA}.crt").read_bytes(), (folder / f"{CA}.key").read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{e.filename}: missing: the members trust only the CA that issued their certificates; "
                          f"put it back; nothing was changed") from None


def _renew_member(s: Session, address: str, members: list, ca_cert: bytes, ca_key: bytes) -> None:
    cert, key = issuing.new_member(address, ca_cert, ca_key, datetime.datetime.now(datetime.timezone.utc))
    serial, until = issuing.validity(cert)
    say(f"etcd peers: {address}: new certificate (serial {serial}, valid until {until:%Y-%m-%d}); restarting etcd")
    staged = s.ex.stage_files(address, machine_files(ca_cert, cert, key))
    step_aside(s, address, members, "etcd.certificates --renew")
    s.ex.run(address, f"{staged.swap} && {own_command()} && {machine.restart_etcd_command()}",
             what="install the new etcd peer certificate, restart etcd")
    wait_member(s, address)
    _keep(folder_of(s.cluster), address, cert, key)


def _keep(folder: Path, address: str, cert: bytes, key: bytes) -> None:
    """The member's new pair in place of the old one, each file replaced at once (never a file half written)."""
    for name, content in ((f"{address}.key", key), (f"{address}.crt", cert)):
        fresh = folder / f".{name}.new"
        fresh.unlink(missing_ok=True)
        _write_private(fresh, content)
        os.replace(fresh, folder / name)


# ---------------------------------------------------------------- plaintext peers to TLS, in place

def plaintext(members) -> list:
    """The addresses of ``members`` whose peer URL is not TLS yet. Pure."""
    return sorted(state.member_address(m) for m in members if not all(u.startswith("https://") for u in m.peer_urls))


def to_migrate(members, pending) -> list:
    """The members still to move: plaintext ones, and those whose machine still holds the migration
    drop-in (``pending``: their peer URL may be https already, but their restart on TLS was not
    seen healthy). Pure."""
    return sorted(set(plaintext(members)) | set(pending))


def migrate_summary(cluster_name: str, done: list, todo: list, in_hand: Optional[str] = None,
                    step: str = "") -> str:
    """What a migration that stopped leaves, member by member. Pure."""
    left = [a for a in todo if a not in done and a != in_hand]
    return (f"moved to TLS peers: {', '.join(done) or 'none'}" +
            (f"; {in_hand}: stopped while {step}" if in_hand else "") +
            f"; still plaintext: {', '.join(left) or 'none'}; etcd keeps quorum while one member is down: "
            f"fix the cause and run `fab etcd.migrate-peers --cluster {cluster_name}` again (it finishes "
            f"what is left)")


SHOWING, MOVING = "restarting to show its certificate", "moving its peer URL to TLS and restarting on it"


def final_document(ex, address, members, release, user_data) -> dict:
    installed = cloudconfig.install_part(ex.cluster, address, members, "existing", release)
    base = steps.base_of(ex, address, user_data, installed)
    return machine.final_document(ex.cluster, address, members, "existing", release, base)


def migrate(s: Session) -> list:
    """Plaintext peers to TLS, in place, without losing quorum: every machine gets its certificate;
    then, one member at a time, etcd restarts showing it to TLS peers (its own URL unchanged);
    then, one at a time, its peer URL becomes https and it restarts on the final drop-in (TLS
    peers with client certificates, clients on loopback), written with its whole final cloud
    config so a reboot replays it; the migration drop-in goes once it is healthy. Returns the
    members moved (none when all are TLS already). Whatever stops it, the error says which members
    moved and which did not, and a second run finishes the rest."""
    cluster, ex = s.cluster, s.ex
    listed = checked_members(s.etcd.members(), "etcd.migrate-peers")
    addresses = sorted(state.member_address(m) for m in listed)
    pending = [a for a, held in zip(addresses, ex.parallel(_holds_migration_dropin(ex), addresses)) if held]
    todo = to_migrate(listed, pending)
    if not todo:
        return []
    release, facts = _on_the_recorded_release(s, addresses)
    ensure(cluster, addresses)
    etcd_backup.before_change(s, "etcd.migrate-peers")
    say(f"etcd peers: installing the certificates on {', '.join(addresses)}")
    ex.parallel(lambda a: deliver(ex, a), addresses)
    ids = {state.member_address(m): m.id for m in listed}
    done: list = []
    in_hand, step = None, ""
    try:
        for address in plaintext(listed):
            in_hand, step = address, SHOWING
            _show_certificate(s, address, addresses)
        for address in todo:
            in_hand, step = address, MOVING
            _move_to_tls(s, address, ids[address], addresses, release, facts[address]["user_data"])
            done.append(address)
            in_hand = None
    except BaseException as failure:
        raise _stopped(failure, migrate_summary(cluster.name, done, todo, in_hand, step)) from None
    return todo


def _holds_migration_dropin(ex):
    return lambda address: ex.read_file(address, machine.ETCD_MIGRATION_DROPIN_PATH) is not None


def _on_the_recorded_release(s: Session, addresses: list) -> tuple:
    """(the recorded release, address -> release facts), every member running that release and
    none with a cloud config changed by hand since air-deploy wrote it (the rollout's check: writing
    the final cloud config would lose that change)."""
    release, _ = records.read_release(s.etcd, s.cluster)
    if release is None:
        raise PreflightError(f"{s.cluster.name} has no release recorded in etcd; nothing was changed")
    facts = dict(zip(addresses, s.ex.parallel(lambda a: steps.release_facts(s.ex, a), addresses)))
    behind = [a for a in addresses if facts[a]["release"] != release.id]
    if behind:
        raise PreflightError(f"{', '.join(behind)} not on the recorded release {release.id}: run "
                             f"`fab rolling-upgrade --cluster {s.cluster.name}` first; nothing was changed")
    edited = list(filter(None, (machine.changed_by_hand(a, facts[a]) for a in addresses)))
    if edited:
        raise PreflightError("; ".join(edited) + "; nothing was changed")
    return release, facts


def _show_certificate(s: Session, address: str, members: list) -> None:
    """The first phase on one member: etcd restarts showing its certificate to TLS peers."""
    s.ex.check(f"restarting etcd on {address} with its certificate")
    say(f"etcd peers: {address}: restarting etcd with its certificate for TLS peers")
    s.ex.write_file(address, machine.ETCD_MIGRATION_DROPIN_PATH, etcd_peer_files_dropin(), 0o644)
    step_aside(s, address, members, "etcd.migrate-peers")
    s.ex.run(address, machine.restart_etcd_command(), what="restart etcd")
    wait_member(s, address)


def _move_to_tls(s: Session, address: str, member_id, addresses: list, release, user_data: str) -> None:
    """The second phase on one member: its peer URL https, etcd restarted on the final drop-in; the
    migration drop-in (the same three files the final one names) removed once it is healthy, so a
    run that stops before finds it again."""
    ex = s.ex
    ex.check(f"moving {address}'s etcd peer URL to TLS")
    say(f"etcd peers: {address}: peer URL {peer_url(address)}, clients on loopback; restarting etcd")
    document = final_document(ex, address, addresses, release, user_data)
    # Before its peers lose it (from the update on, they dial it where it does not listen yet).
    step_aside(s, address, addresses, "etcd.migrate-peers")
    # Through a fresh tunnel to another member: the restarts broke the connections kept open.
    with etcd_api.tunnel(ex, next(a for a in addresses if a != address)) as other:
        other.update_member(member_id, peer_url(address))
    steps.apply_document(ex, address, document, user_data)
    ex.run(address, machine.restart_etcd_command(), what="restart etcd on TLS peers")
    wait_member(s, address)
    ex.run(address, migration_done_command(), what="remove the migration drop-in")


def migration_done_command() -> str:
    """Removes the migration drop-in of a member that runs healthy on its final one. Pure."""
    return f"rm -f {q(machine.ETCD_MIGRATION_DROPIN_PATH)} && systemctl daemon-reload"


@air_task(name="migrate-peers", help={"cluster": "target cluster", "via": "the member to reach etcd through",
                                      "json": "print the members moved as JSON"})
def migrate_peers(c, cluster=None, via=None, json_=False):
    """Move a cluster installed with plaintext etcd peers to TLS peers and loopback-only clients, one member at a time."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    with session(target, "etcd.migrate-peers", via) as s:
        moved = migrate(s)
    report({"cluster": target.name, "moved": moved}, json_,
           f"etcd peers of {target.name}: moved to TLS: {', '.join(moved)}" if moved else
           f"etcd peers of {target.name}: already TLS, nothing to do")
