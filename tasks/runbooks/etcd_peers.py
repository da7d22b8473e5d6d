"""The etcd members' peer TLS: the cluster's CA, one certificate per member, and their delivery.

etcd members talk to each other over TLS (``cloudconfig.units.etcd_dropin``) and each side shows
a certificate issued by the cluster's own CA, so a machine without one cannot join. This module
owns where they are kept (``<secrets folder>/etcd-peer/``: ``ca.crt``, ``ca.key``,
``<address>.crt``, ``<address>.key``, every file 0600, the folder 0700, outside what
``machine.secret_files`` installs into containers), the plan of what is missing (pure), making
it (the ``cryptography`` package: no key ever reaches argv or a log), and the files and the
command that put a member's certificate, key and the CA certificate on its machine, owned by the
user etcd runs as. ``fab etcd.certificates --cluster C`` makes what is missing; setup-cluster
and add-machine do it too before anything on the cluster changes. ``fab etcd.migrate-peers``
moves a cluster installed with plaintext peers to TLS, one member at a time (``migrate``).
"""
from __future__ import annotations

import datetime
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

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
from tasks.model.errors import ConfigError, HealthError, PreflightError, RemoteError
from tasks.net import deferred
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import etcd_backup, records, steps
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
                                     "json": "print what was made as JSON"})
def certificates(c, cluster=None, machines=None, json_=False):
    """Make the cluster's etcd peer CA and the member certificates that are missing (in its secrets folder)."""
    target = cluster_of(cluster)
    chosen = check_addresses(machines, "--machines") if machines else list(target.machines)
    made = ensure(target, chosen)
    report({"cluster": target.name, "folder": str(folder_of(target)), "ca_made": made.new_ca,
            "certificates_made": list(made.members)}, json_, describe(made, target.name).replace("making", "made"))


# ---------------------------------------------------------------- plaintext peers to TLS, in place

def plaintext(members) -> list:
    """The addresses of ``members`` whose peer URL is not TLS yet. Pure."""
    return sorted(state.member_address(m) for m in members if not all(u.startswith("https://") for u in m.peer_urls))


def wait_member(s: Session, address: str) -> None:
    """Until the member on ``address`` answers healthy on its own loopback (after a restart)."""
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


def final_document(ex, address, members, release, user_data) -> dict:
    installed = cloudconfig.install_part(ex.cluster, address, members, "existing", release)
    base = steps.base_of(ex, address, user_data, installed)
    return machine.final_document(ex.cluster, address, members, "existing", release, base)


def migrate(s: Session) -> list:
    """Plaintext peers to TLS, in place, without losing quorum: every machine gets its certificate;
    then, one member at a time, etcd restarts showing it to TLS peers (its own URL unchanged);
    then, one at a time, its peer URL becomes https and it restarts on the final drop-in (TLS
    peers with client certificates, clients on loopback), written with its whole final cloud
    config so a reboot replays it. Returns the members moved (none when all are TLS already)."""
    cluster, ex = s.cluster, s.ex
    listed = s.etcd.members()
    todo = plaintext(_checked_members(listed))
    if not todo:
        return []
    addresses = sorted(state.member_address(m) for m in listed)
    release, facts = _on_the_recorded_release(s, addresses)
    ensure(cluster, addresses)
    etcd_backup.before_change(s, "etcd.migrate-peers")
    say(f"etcd peers: installing the certificates on {', '.join(addresses)}")
    ex.parallel(lambda a: deliver(ex, a), addresses)
    ids = {state.member_address(m): m.id for m in listed}
    done: list = []
    try:
        for address in todo:
            _show_certificate(s, address)
        for address in todo:
            _move_to_tls(s, address, ids[address], addresses, release, facts[address]["user_data"])
            done.append(address)
    except RemoteError as failure:
        left = [a for a in todo if a not in done]
        raise RemoteError(f"{failure}\nmoved to TLS peers: {', '.join(done) or 'none'}; still plaintext: "
                          f"{', '.join(left)}; etcd keeps quorum while one member is down: fix the cause and "
                          f"run `fab etcd.migrate-peers --cluster {cluster.name}` again") from None
    return todo


def _checked_members(listed: list) -> list:
    if any(not m.started or m.learner for m in listed) or len(listed) < 2:
        raise PreflightError("etcd has a member that has not started or is still a learner, or only one "
                             "member; finish or remove it first (fab remove-machine); nothing was changed")
    return listed


def _on_the_recorded_release(s: Session, addresses: list) -> tuple:
    """(the recorded release, address -> release facts), every member running that release."""
    release, _ = records.read_release(s.etcd, s.cluster)
    if release is None:
        raise PreflightError(f"{s.cluster.name} has no release recorded in etcd; nothing was changed")
    facts = dict(zip(addresses, s.ex.parallel(lambda a: steps.release_facts(s.ex, a), addresses)))
    behind = [a for a in addresses if facts[a]["release"] != release.id]
    if behind:
        raise PreflightError(f"{', '.join(behind)} not on the recorded release {release.id}: run "
                             f"`fab rolling-upgrade --cluster {s.cluster.name}` first; nothing was changed")
    return release, facts


def _show_certificate(s: Session, address: str) -> None:
    """The first phase on one member: etcd restarts showing its certificate to TLS peers."""
    say(f"etcd peers: {address}: restarting etcd with its certificate for TLS peers")
    s.ex.write_file(address, machine.ETCD_MIGRATION_DROPIN_PATH, etcd_peer_files_dropin(), 0o644)
    s.ex.run(address, machine.restart_etcd_command(), what="restart etcd")
    wait_member(s, address)


def _move_to_tls(s: Session, address: str, member_id, addresses: list, release, user_data: str) -> None:
    """The second phase on one member: its peer URL https, etcd restarted on the final drop-in."""
    ex = s.ex
    say(f"etcd peers: {address}: peer URL {peer_url(address)}, clients on loopback; restarting etcd")
    document = final_document(ex, address, addresses, release, user_data)
    ex.check(f"moving {address}'s etcd peer URL to TLS")
    # Through a fresh tunnel to another member: the restarts broke the connections kept open.
    with etcd_api.tunnel(ex, next(a for a in addresses if a != address)) as other:
        other.update_member(member_id, peer_url(address))
    steps.apply_document(ex, address, document, user_data)
    ex.run(address, f"rm -f {q(machine.ETCD_MIGRATION_DROPIN_PATH)} && {machine.restart_etcd_command()}",
           what="restart etcd on TLS peers")
    wait_member(s, address)


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
