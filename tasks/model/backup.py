"""The cluster's etcd backups as a catalogue: names, what is recorded beside each, which to keep.

A backup is two files in the cluster's backup folder (``backups.folder``): the snapshot
``<cluster>-<UTC time>-rev<revision>.db`` and, beside it, ``<same name>.json`` recording its
revision, live keys, size, SHA-256 trailer, the member it came from, when, how long it took and
the release id recorded in etcd then. Names sort by time, so the newest is the last. This module
says how they are named and read back, which to remove after a new one (all but the newest
``keep``), whether a task needs a fresh one (none younger than ``max_age``), and the line that
shows a backup's cost. Pure: file names, dictionaries and times in, decisions out; the folder is
read and written by ``tasks.runbooks.etcd_backup``.
"""
from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from typing import Optional

SNAPSHOT_SUFFIX = ".db"
META_SUFFIX = ".json"
STAMP = "%Y%m%dT%H%M%S%fZ"
_NAME = re.compile(r"(?P<cluster>[a-z][a-z0-9_]*)-(?P<stamp>\d{8}T\d{12}Z)-rev(?P<revision>\d+)\.db")
FOLDER_MODE, FILE_MODE = 0o700, 0o600
FIELDS = ("cluster", "file", "revision", "keys", "size", "sha256", "member", "taken", "seconds", "release")


def snapshot_name(cluster_name: str, taken: datetime, revision: int) -> str:
    """The file name of a snapshot of ``cluster_name`` taken at ``taken`` (UTC) at ``revision``."""
    return f"{cluster_name}-{taken.astimezone(timezone.utc).strftime(STAMP)}-rev{int(revision)}{SNAPSHOT_SUFFIX}"


def meta_name(snapshot: str) -> str:
    """The name of the JSON file beside ``snapshot``."""
    return snapshot[:-len(SNAPSHOT_SUFFIX)] + META_SUFFIX


def taken_at(name: str) -> Optional[datetime]:
    """When the snapshot named ``name`` was taken; None for a name that is not a snapshot's."""
    found = _NAME.fullmatch(name)
    return datetime.strptime(found["stamp"], STAMP).replace(tzinfo=timezone.utc) if found else None


def snapshots_of(cluster_name: str, names) -> list:
    """The snapshot file names of ``cluster_name`` among ``names``, oldest first."""
    found = [n for n in names if (m := _NAME.fullmatch(n)) and m["cluster"] == cluster_name]
    return sorted(found)


def to_prune(cluster_name: str, names, keep: int) -> list:
    """The snapshots (and their JSON files, when present among ``names``) to remove so that the
    newest ``keep`` of ``cluster_name`` stay."""
    old = snapshots_of(cluster_name, names)[:-keep] if keep > 0 else snapshots_of(cluster_name, names)
    present = set(names)
    return [n for name in old for n in (name, meta_name(name)) if n in present]


def metadata(cluster_name: str, file: str, facts, member: str, taken: datetime, seconds: float,
             release: Optional[str]) -> dict:
    """What the JSON file beside a snapshot records (``facts``: ``etcd_snapshot.Facts``)."""
    return {"cluster": cluster_name, "file": file, "revision": facts.revision, "keys": facts.keys,
            "size": facts.size, "sha256": facts.digest, "member": member,
            "taken": taken.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "seconds": round(seconds, 3), "release": release}


def meta_text(meta: dict) -> str:
    return json.dumps(meta, indent=1, sort_keys=True) + "\n"


def size_text(size: int) -> str:
    """40 kB, 3.2 MB (powers of 1000, as etcd says its sizes)."""
    if size < 1000 * 1000:
        return f"{max(1, round(size / 1000))} kB"
    return f"{size / 1e6:.1f} MB"


def backup_line(meta: dict, path: str) -> str:
    """The one line a task prints for the backup it took."""
    return (f"etcd backup: {meta['keys']} keys, rev {meta['revision']}, {size_text(meta['size'])}, "
            f"{meta['seconds']:.1f} s -> {path}")


def newest(cluster_name: str, names) -> Optional[str]:
    """The newest snapshot of ``cluster_name`` among ``names``, or None."""
    found = snapshots_of(cluster_name, names)
    return found[-1] if found else None


def age(name: Optional[str], now: datetime) -> Optional[float]:
    """Seconds since the snapshot ``name`` was taken (None when there is none)."""
    taken = taken_at(name) if name else None
    return None if taken is None else max(0.0, (now - taken).total_seconds())


def needed(newest_name: Optional[str], now: datetime, max_age: int) -> bool:
    """Whether a task that changes the cluster takes a backup first: none yet, or the newest is
    ``max_age`` seconds old or older."""
    seconds = age(newest_name, now)
    return seconds is None or seconds >= max_age


def parse_meta(text: str, name: str) -> dict:
    """A snapshot's JSON file, read back; ValueError naming it when it lacks a field."""
    meta = json.loads(text)
    missing = [f for f in FIELDS if not isinstance(meta, dict) or f not in meta]
    if missing:
        raise ValueError(f"{name}: missing {', '.join(missing)}")
    return meta
