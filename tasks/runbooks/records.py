"""The cluster's records in its etcd, read and written: current release, history, candidate.

``tasks.model.state`` says where each record lives and what it holds; this module carries them
through an etcd client (``tasks.net.etcd``) under the session's lock.
"""
from __future__ import annotations

import json

from tasks.model import state
from tasks.model.release import Release


def read_release(etcd, cluster):
    """(Release, record dict) of the cluster's current release, or (None, None)."""
    text = etcd.get(state.release_key(cluster))
    if not text:
        return None, None
    record = json.loads(text)
    return Release.from_dict(record), record


def write_release(etcd, cluster, release: Release, **meta) -> dict:
    meta.setdefault("who", state.operator())
    meta.setdefault("when", state.now())
    record = state.release_record(release, **meta)
    etcd.put(state.release_key(cluster), record)
    return json.loads(record)


def add_history(etcd, cluster, record: dict) -> str:
    stamp = record.get("when") or state.now()
    etcd.put(state.history_key(cluster, stamp), json.dumps(record, sort_keys=True))
    return stamp


def history(etcd, cluster) -> list:
    """Release records, oldest first."""
    items = etcd.get_prefix(state.history_prefix(cluster))
    return [json.loads(v) for _, v in sorted(items.items())]


def read_candidate(etcd, cluster):
    """(Release, record dict) of the candidate a canary deploy put on some machines, or (None, None).
    The record's ``machines`` lists where it runs."""
    text = etcd.get(state.candidate_key(cluster))
    if not text:
        return None, None
    record = json.loads(text)
    return Release.from_dict(record), record


def write_candidate(etcd, cluster, release: Release, machines, **meta) -> dict:
    """Record ``release`` as the candidate running on ``machines`` (besides the current release elsewhere)."""
    meta.setdefault("who", state.operator())
    meta.setdefault("when", state.now())
    record = state.release_record(release, machines=sorted(machines), **meta)
    etcd.put(state.candidate_key(cluster), record)
    return json.loads(record)


def clear_candidate(etcd, cluster) -> None:
    etcd.delete(state.candidate_key(cluster))
