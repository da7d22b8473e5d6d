"""The application's settings in the cluster's etcd: wanted, found, the change between, applied.

The cluster file's ``settings`` (key -> text, or a file of the secrets folder)
are written under the application's prefix (``state.settings_prefix``), and
with ``etcd_v2`` into etcd's v2 store as well, for applications that read
``/v2/keys/...``. The top half is pure: the values wanted, the change from
what etcd holds (only changed keys are written; keys the file no longer has
are removed, below the settings prefix only), and that change in words with
every secret's value masked. The bottom half reads and applies it;
setup-cluster, add-machine and every deploy call ``apply``, and the
``settings.*`` tasks show and apply it alone.
"""
from __future__ import annotations

from dataclasses import field
from pathlib import Path

from invoke import Collection

from tasks.model import state
from tasks.model.cluster import check_address
from tasks.model.errors import ConfigError
from tasks.model.frozen import frozen
from tasks.model.release_settings import secret_value
from tasks.model.status_view import printable
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import etcd_auth, etcd_backup
from tasks.runbooks.records import Snapshot
from tasks.runbooks.cli import air_task, cluster_of, report

MASK = "(secret)"


# ---------------------------------------------------------------- pure

def wanted(cluster) -> dict:
    """etcd key -> value, as the cluster file says (a secret's value read from its file, one
    trailing newline dropped)."""
    values = {}
    for setting in cluster.settings:
        text = setting.value
        if setting.secret:
            text = secret_value((cluster.secrets / setting.secret).read_text())
        values[state.setting_key(cluster, setting.key)] = text
    return values


@frozen
class Secrets:
    """What is never printed: the values of the keys that are secrets, and any value that is the
    content of a file of the secrets folder (a key that was a secret and is now plain text, or one
    the cluster file no longer lists, may still hold one)."""
    keys: frozenset
    values: frozenset = field(default=frozenset(), repr=False)

    def hides(self, key: str, value) -> bool:
        return key in self.keys or value in self.values


def secrets_of(cluster) -> Secrets:
    """The etcd keys whose values are secrets, and the secrets folder's values: never printed."""
    folder = Path(cluster.secrets)
    files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
    values = frozenset(secret_value(p.read_text(errors="replace")) for p in files) - {""}
    return Secrets(frozenset(state.setting_key(cluster, s.key) for s in cluster.settings if s.secret), values)


@frozen
class Changes:
    """What makes etcd hold the wanted settings: keys to add, to change (key -> new value), to remove."""
    added: dict = field(default_factory=dict, repr=False)
    changed: dict = field(default_factory=dict, repr=False)
    removed: tuple = ()

    @property
    def puts(self) -> dict:
        return {**self.added, **self.changed}

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def diff(want: dict, found: dict, prefix: str) -> Changes:
    """The change from ``found`` to ``want`` (key -> value each); only keys below ``prefix`` are
    ever removed. Pure."""
    return Changes(added={k: v for k, v in sorted(want.items()) if k not in found},
                   changed={k: v for k, v in sorted(want.items()) if k in found and found[k] != v},
                   removed=tuple(sorted(k for k in found if k not in want and k.startswith(prefix))))


def shown(key: str, value, secrets) -> str:
    """A value as printed: quoted text, or the mask for a secret's (``secrets.hides`` it)."""
    return MASK if secrets.hides(key, value) else repr(value)


def describe(changes: Changes, found: dict, secrets, prefix: str) -> list:
    """The change in words, one line per key, relative to ``prefix``; secrets masked. Pure."""
    # A key read from etcd may hold anything: its control characters are shown as \xNN.
    short = lambda key: printable(key[len(prefix):] if key.startswith(prefix) else key)
    lines = [f"+ {short(k)} = {shown(k, v, secrets)}" for k, v in changes.added.items()]
    lines += [f"~ {short(k)}: {shown(k, found[k], secrets)} -> {shown(k, v, secrets)}"
              for k, v in changes.changed.items()]
    lines += [f"- {short(k)}" for k in changes.removed]
    return lines


def as_data(changes: Changes, found: dict, secrets, prefix: str) -> dict:
    """The change for ``--json``; secrets masked. Pure."""
    short = lambda key: key[len(prefix):]
    return {"added": {short(k): None if secrets.hides(k, v) else v for k, v in changes.added.items()},
            "changed": {short(k): None if secrets.hides(k, v) else v for k, v in changes.changed.items()},
            "removed": [short(k) for k in changes.removed],
            "secret": sorted(short(k) for k in secrets.keys)}


# ---------------------------------------------------------------- reading and applying

def found(s: Session) -> dict:
    """What etcd holds below the settings prefix (v3)."""
    return s.etcd.get_prefix(state.settings_prefix(s.cluster))


def plan(s: Session) -> tuple:
    """(Changes, what etcd holds): the change the cluster's etcd needs."""
    have = found(s)
    return diff(wanted(s.cluster), have, state.settings_prefix(s.cluster)), have


def apply(s: Session, task: str, snapshot: Snapshot = None) -> Changes:
    """Write the changed settings and remove those no longer listed (v3 in one transaction, then the
    v2 store when the cluster asks for it); says each change on a ``task:`` line. ``snapshot``: etcd
    as the task has just read it (under its lock; None: read here)."""
    return write(s, task, wanted(s.cluster), secrets_of(s.cluster), snapshot)


def write(s: Session, task: str, want: dict, secrets, snapshot: Snapshot = None) -> Changes:
    """Make the settings prefix hold ``want`` (etcd key -> value): the cluster file's settings, or
    those a rollback or a failed deploy puts back. ``secrets``: the keys never printed."""
    cluster = s.cluster
    etcd_auth.follow(s, task, snapshot)
    prefix = state.settings_prefix(cluster)
    have = found(s) if snapshot is None else snapshot.settings
    changes = diff(want, have, prefix)
    if changes:  # the lock is confirmed before a change, not before nothing
        s.ex.check("write the settings")
        s.etcd.write_many(changes.puts, changes.removed)
    for line in describe(changes, have, secrets, prefix):
        say(f"{task}: settings: {line}")
    if cluster.etcd_v2:
        v2_changes = diff(want, s.etcd.v2_get_prefix(prefix), prefix)
        s.ex.check("write the settings (v2)")
        for key, value in v2_changes.puts.items():
            s.etcd.v2_put(key, value)
        for key in v2_changes.removed:
            s.etcd.v2_delete(key)
    if not changes:
        say(f"{task}: settings: unchanged ({len(want)} key(s))")
    return changes


# ---------------------------------------------------------------- tasks

HELP = {"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"}


@air_task(help=HELP)
def diff_(c, cluster=None, via=None, json_=False):
    """Show what settings.apply would change in the cluster's etcd (secrets masked)."""
    target = cluster_of(cluster)
    want = wanted(target)  # a missing secret file fails here, before anything is contacted
    prefix = state.settings_prefix(target)
    with session(target, via=via and check_address(via, "--via")) as s:
        have = found(s)
    changes = diff(want, have, prefix)
    secrets = secrets_of(target)
    report(as_data(changes, have, secrets, prefix), json_,
           "\n".join(describe(changes, have, secrets, prefix)) or f"settings of {target.name}: unchanged")


@air_task(name="apply", help={**HELP, "wait": "wait for another task's lock instead of failing"})
def apply_task(c, cluster=None, via=None, wait=False, json_=False):
    """Write the cluster file's settings to the cluster's etcd: changed keys only, unlisted ones removed."""
    target = cluster_of(cluster)
    wanted(target)
    prefix = state.settings_prefix(target)
    with session(target, "settings.apply", via and check_address(via, "--via"), wait) as s:
        etcd_backup.before_change(s, "settings.apply")
        have = found(s)
        changes = apply(s, "settings.apply")
    report(as_data(changes, have, secrets_of(target), prefix), json_,
           f"settings of {target.name}: {len(changes.added)} added, {len(changes.changed)} changed, "
           f"{len(changes.removed)} removed")


@air_task(help={**HELP, "key": "one key (relative to the settings prefix); default: all"})
def get(c, cluster=None, key=None, via=None, json_=False):
    """Read the settings back from the cluster's etcd (secrets masked)."""
    target = cluster_of(cluster)
    prefix = state.settings_prefix(target)
    with session(target, via=via and check_address(via, "--via")) as s:
        have = found(s)
    if key is not None:
        have = {k: v for k, v in have.items() if k == prefix + key}
        if not have:
            raise ConfigError(f"no setting {key!r} in the etcd of {target.name}")
    secrets = secrets_of(target)
    values = {k[len(prefix):]: (None if secrets.hides(k, v) else v) for k, v in sorted(have.items())}
    report(values, json_, "\n".join(f"{printable(k)} = {shown(prefix + k, v, secrets)}" for k, v in values.items())
           or f"no settings in the etcd of {target.name}")


namespace = Collection("settings")
namespace.add_task(diff_, name="diff")
namespace.add_task(apply_task, name="apply")
namespace.add_task(get, name="get")
