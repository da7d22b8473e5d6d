"""The cluster's records in its etcd, read and written: current release, history, candidate.

``tasks.model.state`` says where each record lives and what it holds; this module carries them
through an etcd client (``tasks.net.etcd``) under the session's lock.
"""
from __future__ import annotations

import copy
import json
from typing import Callable, NamedTuple, Optional

from tasks.model import release_settings, state
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, RecordError
from tasks.model.release import Release


def parsed(key: str, text: str) -> tuple:
    """(Release, record dict) of a release record read at ``key``, checked: what air-deploy writes
    (its id the hash of its digests, every value of the shape push gives it, the settings and
    secrets' digests it keeps of the shape ``release_settings.fields`` gives them), else RecordError
    naming the key. Nothing read from etcd reaches a command unchecked."""
    try:
        record = json.loads(text)
        release = Release.from_dict(record)
        if record.get("id") != release.id:
            raise RecordError(f"its id {record.get('id')!r} is not its content's ({release.id})")
        for address in record.get("machines", []):
            check_address(address, "machines")
        release_settings.check(record)
    except (ValueError, RecordError, ConfigError) as e:
        raise RecordError(f"etcd key {key} is not a release record air-deploy wrote ({e}); nothing was run: "
                          f"delete or repair that key (etcdctl on a member) and run the task again") from None
    return release, record


def read_release(etcd, cluster):
    """(Release, record dict) of the cluster's current release, or (None, None)."""
    key = state.release_key(cluster)
    text = etcd.get(key)
    return parsed(key, text) if text else (None, None)


def write_release(etcd, cluster, release: Release, **meta) -> dict:
    record = release_entry(release, **meta)
    put_release(etcd, cluster, record)
    return record


def release_entry(release: Release, **meta) -> dict:
    """The record ``write_release`` writes: ``release`` with ``meta``, who and when added unless given."""
    meta.setdefault("who", state.operator())
    meta.setdefault("when", state.now())
    return json.loads(state.release_record(release, **meta))


def put_release(etcd, cluster, record: dict) -> None:
    """``record`` (a ``release_entry``) written as the cluster's current release."""
    etcd.put(state.release_key(cluster), json.dumps(record, sort_keys=True))


def add_history(etcd, cluster, record: dict) -> str:
    stamp, key, value = _history_entry(cluster, record)
    etcd.put(key, value)
    return stamp


def _history_entry(cluster, record: dict) -> tuple:
    """(stamp, key, value) of ``record`` in the cluster's history: under its time, now when it has none."""
    stamp = record.get("when") or state.now()
    return stamp, state.history_key(cluster, stamp), json.dumps(record, sort_keys=True)


def write_outcome(etcd, cluster, release: Release, record: dict) -> None:
    """``record``, ``release``'s record with its outcome, as the cluster's current release and in its
    history at once: ``write_release`` and ``add_history`` in one transaction (one round trip)."""
    meta = {k: v for k, v in record.items() if k not in ("id", "components")}
    _, key, value = _history_entry(cluster, record)
    etcd.write_many({state.release_key(cluster): state.release_record(release, **meta), key: value})


def history(etcd, cluster) -> list:
    """Release records, oldest first, each checked (``parsed``)."""
    items = etcd.get_prefix(state.history_prefix(cluster))
    return [parsed(key, value)[1] for key, value in sorted(items.items())]


class Snapshot(NamedTuple):
    """What a deploy reads of etcd before its first write, at one moment: (Release, record) of the
    current release and of the candidate (each (None, None) when absent), the history, oldest
    first; what etcd holds below the settings prefix; the logins' record (its text, or None)."""
    current: tuple
    candidate: tuple
    history: list
    settings: dict
    logins: Optional[str]


def snapshot_reads(cluster) -> tuple:
    """(keys, prefixes) that ``check_all`` reads: what a deploy reads with the taking of its lock."""
    return ([state.release_key(cluster), state.candidate_key(cluster), state.logins_key(cluster)],
            [state.history_prefix(cluster), state.settings_prefix(cluster)])


def check_all(etcd, cluster, read: Optional[tuple] = None) -> Snapshot:
    """Every release record (current, candidate, history) read in one request and checked
    (``parsed``), the settings and the logins' record with them: a task that acts on them stops
    before it changes anything when one is malformed, naming its key. Returns them, for what the
    task reads of them before its first write (under its lock: nothing else writes them).
    ``read``: ``snapshot_reads`` as read with the taking of the lock (``Lock.take_read``), when it
    was; None: read now."""
    (current, candidate, logins), (past, settings) = keys, prefixes = snapshot_reads(cluster)
    values, found = read or etcd.read_many(keys, prefixes)
    record = lambda key: parsed(key, values[key]) if values[key] else (None, None)
    return Snapshot(record(current), record(candidate),
                    [parsed(key, value)[1] for key, value in sorted(found[past].items())], found[settings],
                    values[logins])


def read_candidate(etcd, cluster):
    """(Release, record dict) of the candidate a canary deploy put on some machines, or (None, None).
    The record's ``machines`` lists where it runs."""
    key = state.candidate_key(cluster)
    text = etcd.get(key)
    return parsed(key, text) if text else (None, None)


def write_candidate(etcd, cluster, release: Release, machines, **meta) -> dict:
    """Record ``release`` as the candidate running on ``machines`` (besides the current release elsewhere)."""
    meta.setdefault("who", state.operator())
    meta.setdefault("when", state.now())
    record = state.release_record(release, machines=sorted(machines), **meta)
    etcd.put(state.candidate_key(cluster), record)
    return json.loads(record)


def clear_candidate(etcd, cluster) -> None:
    etcd.delete(state.candidate_key(cluster))


def after_failure(failure: AirError, write: Callable[[], object]) -> AirError:
    """``failure``, once ``write`` recorded it in etcd. When that write fails too, ``failure`` with that
    said after it: the first error wins, the second is not lost (a one-line error stays one line)."""
    try:
        write()
    except Exception as e:  # whatever stops the write must not hide the failure it records
        said = (f"recording this in etcd failed too ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                f"the release record may still say `upgrading`, and the next deploy or rollback starts from the "
                f"last release that succeeded")
        joined = copy.copy(failure)
        joined.args = (f"{failure}{chr(10) if chr(10) in str(failure) else '; '}{said}",)
        return joined
    return failure
