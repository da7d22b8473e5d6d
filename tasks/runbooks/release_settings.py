"""The settings a release runs with: recorded with it, put back by a rollback and by a deploy that fails.

``tasks.model.release_settings`` says what a release record keeps of them; this module reads
what that needs (etcd's settings, the secrets folder's files) and writes through
``settings.write`` (one transaction, fenced by the cluster's lock, the v2 store too). A deploy
records ``deployed`` with its release; a deploy or rollback that fails puts the settings it
found back (``put_back_on_failure``), so the release left running keeps the settings it ran
with; a rollback restores those its target release kept (``Restoring``), a secret only when the
folder's file still gives the value kept.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Optional

from tasks.model import release_settings as kept
from tasks.model import state
from tasks.model.errors import AirError, LostLock
from tasks.model.frozen import frozen
from tasks.net.progress import say
from tasks.net.session import Session
from tasks.runbooks import records, settings


def relative(values: dict, prefix: str) -> dict:
    return {key[len(prefix):]: value for key, value in values.items() if key.startswith(prefix)}


def absolute(keys, prefix: str):
    return {prefix + key: keys[key] for key in keys} if isinstance(keys, dict) else {prefix + key for key in keys}


class Masked:
    """Every key but those whose values may be printed (``plain``, etcd keys): what is masked."""

    def __init__(self, plain):
        self.plain = frozenset(plain)

    def hides(self, key: str, value) -> bool:
        return key not in self.plain


def secret_files(cluster, names=()) -> dict:
    """NAME -> content of the secret files the cluster uses (its components' and its settings'),
    and of those of ``names`` that exist."""
    used = {n for c in cluster.components for n in c.secrets} | {s.secret for s in cluster.settings if s.secret}
    return {name: (cluster.secrets / name).read_bytes() for name in sorted(used | set(names))
            if name in used or (cluster.secrets / name).is_file()}


def deployed(cluster) -> dict:
    """The record fields of a release deployed with the cluster file's settings (as ``settings.wanted``
    writes them) and the secrets folder as it is."""
    prefix = state.settings_prefix(cluster)
    return kept.fields(relative(settings.wanted(cluster), prefix),
                       {s.key: s.secret for s in cluster.settings if s.secret}, secret_files(cluster))


def digest_now(s: Session) -> str:
    """The digest of the settings etcd holds now (``kept.settings_digest``)."""
    prefix = state.settings_prefix(s.cluster)
    return kept.settings_digest(relative(settings.found(s), prefix))


@contextmanager
def put_back_on_failure(s: Session, task: str, before: Optional[dict], record: Optional[dict]):
    """Within it, a failure puts the settings ``before`` (etcd key -> value, as ``settings.found`` read
    them) back, then goes on; ``record``: the release record they belong to (which of them may be
    printed). Not after a lost lock: nothing is this task's to write any more."""
    try:
        yield
    except LostLock:
        raise
    except AirError:
        if before is not None:
            with s.ex.finishing():  # putting back, also after an interrupt
                _put_back(s, task, before, record)
        raise


def _put_back(s: Session, task: str, before: dict, record: Optional[dict]) -> None:
    prefix = state.settings_prefix(s.cluster)
    said = kept.printable(deployed(s.cluster)[kept.SETTINGS], (record or {}).get(kept.SETTINGS))
    say(f"{task}: putting the settings back as they were")
    try:
        settings.write(s, task, before, Masked(absolute(said, prefix)))
    except LostLock:
        raise
    except AirError as e:
        say(f"warning: {task}: the settings were not put back ({e}); `fab settings.apply --cluster "
            f"{s.cluster.name}` writes the cluster file's")


# ---------------------------------------------------------------- a rollback's settings

@frozen
class Restoring:
    """What a rollback to the release recorded by ``target`` does to the settings below ``prefix``:
    ``restore`` (None: the record kept none), the ``changes`` it makes to what etcd holds
    (``before``), the secret files changed since that release, which keys' values are ``masked``,
    and what the rollback's own record keeps (``fields``). No ``target``: nothing at all."""
    target: dict
    prefix: str
    before: Optional[dict]
    restore: Optional[kept.Restore]
    changes: settings.Changes
    secrets_changed: tuple
    masked: Masked
    fields: dict

    def lines(self) -> list:
        """What it restores and what it leaves, one line each; secrets masked. Pure."""
        if not self.target:
            return []
        release = self.target["id"]
        if self.restore is None:
            return [f"release {release} kept no settings (recorded before they were kept): left as they are"]
        lines = settings.describe(self.changes, self.before or {}, self.masked, self.prefix) or \
            [f"unchanged: as release {release} had them"]
        return lines + self.left()

    def left(self) -> list:
        release = self.target["id"]
        lines = [f"{key}: secret {name} changed since release {release} (or is gone): left as it is"
                 for key, name in sorted(self.restore.left.items())] if self.restore else []
        return lines + [f"secret file {name} changed since release {release}: left as it is "
                        f"(`fab secrets.apply` pushes the folder's)" for name in self.secrets_changed]

    def apply(self, s: Session, task: str) -> None:
        """Write the settings back (``settings.write`` says each change), then say what is left."""
        if not self.target:
            return
        if self.restore is None:
            say(f"{task}: settings: {self.lines()[0]}")
        else:
            settings.write(s, task, absolute(self.restore.values, self.prefix), self.masked)
        for line in self.left():
            say(f"{task}: settings: {line}")


def restoring(s: Session, target: Optional[dict], current: Optional[dict]) -> Restoring:
    """Read what a rollback to the release recorded by ``target`` does to the settings (etcd's now, the
    secrets folder); ``current``: the record of the release it leaves."""
    cluster = s.cluster
    prefix = state.settings_prefix(cluster)
    if target is None:
        return Restoring({}, prefix, None, None, settings.Changes(), (), Masked(()), {})
    before = settings.found(s)
    target_kept = target.get(kept.SETTINGS)
    names = kept.secret_names(target_kept) if target_kept else {}
    files = secret_files(cluster, set(names.values()) | set(target.get(kept.SECRETS, {})))
    digests = {name: kept.digest(content) for name, content in files.items()}
    changed = tuple(kept.changed_secrets(target[kept.SECRETS], digests)) if kept.SECRETS in target else ()
    if target_kept is None:
        return Restoring(target, prefix, before, None, settings.Changes(), changed, Masked(()), kept.of_record(current))
    folder = {name: kept.secret_value(files[name].decode()) if name in files else None for name in names.values()}
    restore = kept.restore(target_kept, relative(before, prefix), folder)
    plain = kept.printable(target_kept, (current or {}).get(kept.SETTINGS), deployed(cluster)[kept.SETTINGS])
    used = secret_files(cluster)
    return Restoring(target, prefix, before, restore, settings.diff(absolute(restore.values, prefix), before, prefix),
                     changed, Masked(absolute(plain, prefix)),
                     {kept.SETTINGS: restore.kept, kept.SECRETS: {n: digests[n] for n in sorted(used)}})


def record_of(s: Session, release, snapshot: records.Snapshot = None) -> Optional[dict]:
    """The record of ``release`` (a Release, or None): the current one when it is that release, else
    the newest of its history (each checked, ``records.parsed``). ``snapshot``: the records as the
    task read them under its lock (None: read here)."""
    if release is None:
        return None
    _, current = records.read_release(s.etcd, s.cluster) if snapshot is None else snapshot.current
    if current is not None and current["id"] == release.id:
        return current
    history = records.history(s.etcd, s.cluster) if snapshot is None else snapshot.history
    return next((r for r in reversed(history) if r["id"] == release.id), None)
