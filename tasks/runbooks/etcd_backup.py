"""Snapshots of the cluster's etcd, taken, checked and kept; and defragmentation, member by member.

``take`` asks a healthy member for a snapshot over the task's SSH channel (the gateway's
``/v3/maintenance/snapshot`` through the etcd tunnel every task already has: nothing listens on
the network, nothing is written on the machine, and no etcdctl is needed there), checks it
(etcd's SHA-256 trailer, the revision and live keys read from its database, and that count
against etcd's own at that revision), and keeps it in the cluster's backup folder (``backups``
in the cluster file: 0700, files 0600) with a JSON file beside it (``tasks.model.backup``),
then removes all but the newest ``keep``. ``before_change`` is what every task that changes
etcd membership, the settings or the release history calls first, under its lock: a snapshot
unless the newest is younger than ``max_age``, and its cost on one line either way.
``fab etcd.defrag`` defragments followers first and the leader last, each through its own tunnel.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

from tasks.model import backup, etcd_snapshot, state
from tasks.model.cluster import check_address
from tasks.model.errors import ConfigError, RecordError, RemoteError
from tasks.net import etcd as etcd_api
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import etcd_members, records
from tasks.runbooks.cli import air_task, cluster_of, report


# ---------------------------------------------------------------- the folder

def folder_of(cluster) -> Path:
    return Path(cluster.backups.folder)


def listing(cluster) -> list:
    """The names in the cluster's backup folder (none when it does not exist yet)."""
    folder = folder_of(cluster)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def newest(cluster) -> Optional[Path]:
    name = backup.newest(cluster.name, listing(cluster))
    return folder_of(cluster) / name if name else None


def newest_meta(cluster) -> Optional[dict]:
    """The JSON record of the newest snapshot (None when there is none, or its record is unreadable)."""
    path = newest(cluster)
    if path is None:
        return None
    meta_path = path.with_name(backup.meta_name(path.name))
    try:
        return backup.parse_meta(meta_path.read_text(), str(meta_path))
    except (OSError, ValueError):
        return None


def _private_folder(folder: Path) -> None:
    folder.mkdir(mode=backup.FOLDER_MODE, parents=True, exist_ok=True)
    os.chmod(folder, backup.FOLDER_MODE)


def _write_private(path: Path, content: bytes) -> None:
    """``path`` written whole or not at all, 0600 from its creation on."""
    part = path.with_name(path.name + ".part")
    part.unlink(missing_ok=True)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL, backup.FILE_MODE)
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(part, path)


def prune(cluster) -> list:
    """Remove all but the newest ``keep`` snapshots (and their records); returns the names removed."""
    gone = backup.to_prune(cluster.name, listing(cluster), cluster.backups.keep)
    for name in gone:
        (folder_of(cluster) / name).unlink(missing_ok=True)
    return gone


# ---------------------------------------------------------------- taking one

def _release_id(client, cluster) -> Optional[str]:
    try:
        release, _ = records.read_release(client, cluster)
    except RecordError:
        return None  # a damaged record is worth a backup all the more; the file says none
    return release.id if release else None


def check_count(client, facts) -> None:
    """RemoteError when etcd counts another number of keys at the snapshot's revision than the snapshot holds."""
    counted = client.count_keys(facts.revision)
    if counted != facts.keys:
        raise RemoteError(f"etcd snapshot: it holds {facts.keys} keys at revision {facts.revision}, but etcd counts "
                          f"{counted} there; not kept")


def take(client, cluster, member: str) -> tuple:
    """(record, path) of a new snapshot from ``client`` (the member on ``member``), checked and kept."""
    started = time.monotonic()
    taken = datetime.now(timezone.utc)
    data = client.snapshot()
    facts = etcd_snapshot.read(data, f"the snapshot from {member}")
    check_count(client, facts)
    seconds = time.monotonic() - started
    name = backup.snapshot_name(cluster.name, taken, facts.revision)
    folder = folder_of(cluster)
    meta = backup.metadata(cluster.name, name, facts, member, taken, seconds, _release_id(client, cluster))
    try:
        _private_folder(folder)
        _write_private(folder / name, data)
        _write_private(folder / backup.meta_name(name), backup.meta_text(meta).encode())
    except OSError as e:
        raise ConfigError(f"backups.folder: cannot write {folder / name} ({e.strerror or e})") from None
    prune(cluster)
    return meta, folder / name


def before_change(s: Session, task: str) -> Optional[Path]:
    """A snapshot before ``task`` changes etcd, unless the newest is younger than ``backups.max_age``;
    one line says which. Returns the new snapshot's path, or None."""
    cluster = s.cluster
    names = listing(cluster)
    last = backup.newest(cluster.name, names)
    if last is not None and not backup.needed(last, datetime.now(timezone.utc), cluster.backups.max_age):
        age = backup.age(last, datetime.now(timezone.utc)) or 0
        say(f"etcd backup: none taken, the newest is {int(age)} s old (backups.max_age "
            f"{cluster.backups.max_age} s) -> {folder_of(cluster) / last}")
        return None
    meta, path = take(s.etcd, cluster, s.via or "?")
    say(backup.backup_line(meta, str(path)))
    return path


@air_task(name="backup", help={"cluster": "target cluster", "via": "the member to take it from",
                               "output": "folder to keep it in (default: the cluster file's backups.folder)",
                               "json": "print its record as JSON"})
def backup_task(c, cluster=None, via=None, output=None, json_=False):
    """Take a snapshot of the cluster's etcd from a healthy member, check it and keep it (the newest `keep`)."""
    target = cluster_of(cluster)
    if output and target.backups is not None:
        target = replace(target, backups=replace(target.backups, folder=Path(output).expanduser().resolve()))
    via = check_address(via, "--via") if via else None
    with session(target, via=via) as s:
        meta, path = take(s.etcd, target, s.via or "?")
    report({**meta, "path": str(path)}, json_, backup.backup_line(meta, str(path)))


# ---------------------------------------------------------------- defragmentation

def defrag_order(members: list, leader: Optional[str]) -> list:
    """The members to defragment, followers first, the leader last (it blocks a member while it runs,
    and a leader blocked is an election). Pure."""
    return sorted(m for m in members if m != leader) + ([leader] if leader in members else [])


def defrag(s: Session) -> list:
    """Defragment every voting member, one at a time; returns (address, size before, size after) each."""
    found = etcd_members.quorum_of(etcd_members.ask_all(s.ex, _member_addresses(s)))
    if not found.has_quorum:
        raise RemoteError(f"etcd of {s.cluster.name}: {found.describe()}; nothing was defragmented")
    done = []
    for address in defrag_order(list(found.members), found.leader):
        s.ex.check(f"defragmenting etcd on {address}")
        with etcd_api.tunnel(s.ex, address) as member:
            before = member.member_status()["db_size"]
            member.defragment()
            after = member.member_status()["db_size"]
        say(f"etcd defrag: {address}{' (leader)' if address == found.leader else ''}: "
            f"{backup.size_text(before)} -> {backup.size_text(after)}")
        done.append((address, before, after))
    return done


def _member_addresses(s: Session) -> list:
    return sorted(state.member_address(m) for m in s.etcd.members() if not m.learner)


@air_task(name="defrag", help={"cluster": "target cluster", "json": "print each member's sizes as JSON"})
def defrag_task(c, cluster=None, json_=False):
    """Defragment every etcd member's database, followers first, the leader last."""
    target = cluster_of(cluster)
    with session(target, "etcd.defrag") as s:
        done = defrag(s)
    report([{"member": a, "before": b, "after": f} for a, b, f in done], json_,
           f"etcd of {target.name}: {len(done)} member(s) defragmented")
