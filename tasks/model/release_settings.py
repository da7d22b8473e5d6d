"""What a release keeps of the settings and secrets it was deployed with, pure.

A release record (current, history, candidate: ``tasks.model.state``) carries two fields beside
its components. ``settings``: the application's settings as they were written to etcd (keys
relative to the settings prefix), with the digest of them all, secret values included; each
key's value is kept in clear, except a ``{secret: NAME}`` key's, which is kept as that reference
and the digest of the value it had: a secret's value is never stored a second time. ``secrets``:
the digest of each file of the secrets folder the cluster used then, per file name.

A rollback puts the settings kept back (``restore``): a secret's value comes from the secrets
folder again only when the folder still gives the digest kept; otherwise that key is left as
it is and named. Records written before these fields existed have neither, and nothing is
restored from them. ``check`` is what a record read from etcd must satisfy before any of it is
used.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import field
from typing import Optional

from tasks.model.cluster import SECRET_NAME, SETTING_KEY
from tasks.model.errors import RecordError
from tasks.model.frozen import frozen
from tasks.model.release import DIGEST

SETTINGS, SECRETS = "settings", "secrets"  # the record's fields


def secret_value(content: str) -> str:
    """A secret file's content as a setting's value: one trailing newline dropped."""
    return content[:-1] if content.endswith("\n") else content


def digest(data) -> str:
    """``sha256:`` and the hex digest of ``data`` (text as UTF-8, or bytes)."""
    return "sha256:" + hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def settings_digest(values: dict) -> str:
    """The digest of settings ``values`` (key -> value), secret values included: the same settings
    give the same digest, in whatever order."""
    return digest(json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=False))


def kept(values: dict, secret_names: dict) -> dict:
    """What a record keeps of settings ``values`` (key -> value); ``secret_names``: key -> NAME of
    the keys whose value is the secret file NAME's (kept as the reference and its value's digest)."""
    return {"digest": settings_digest(values),
            "values": {key: {"secret": secret_names[key], "digest": digest(value)} if key in secret_names
                       else {"value": value} for key, value in sorted(values.items())}}


def fields(values: dict, secret_names: dict, files: dict) -> dict:
    """The record's fields for a release deployed with settings ``values`` (``kept``) while the secret
    files held ``files`` (NAME -> content)."""
    return {SETTINGS: kept(values, secret_names), SECRETS: {name: digest(files[name]) for name in sorted(files)}}


def of_record(record: Optional[dict]) -> dict:
    """The fields a record has of those (none for a record written before they existed)."""
    return {k: record[k] for k in (SETTINGS, SECRETS) if record and k in record}


def shown(record: dict) -> dict:
    """``record`` as it may be printed: a secret's digest (a weak secret could be guessed from it
    offline) left out, the secret files by name only."""
    if SETTINGS not in record and SECRETS not in record:
        return record
    out = dict(record)
    if SETTINGS in record:
        values = {key: {"secret": entry["secret"]} if "secret" in entry else entry
                  for key, entry in record[SETTINGS]["values"].items()}
        out[SETTINGS] = {**record[SETTINGS], "values": values}
    if SECRETS in record:
        out[SECRETS] = sorted(record[SECRETS])
    return out


def secret_names(kept_settings: dict) -> dict:
    """key -> NAME of the kept settings' secret keys."""
    return {key: entry["secret"] for key, entry in kept_settings["values"].items() if "secret" in entry}


def printable(*kept_settings) -> frozenset:
    """The keys whose values may be printed: kept as a value by one of ``kept_settings`` and as a
    secret by none; none at all when one of them is None (a record that kept nothing: which of
    its values were secrets is not known)."""
    if any(k is None for k in kept_settings):
        return frozenset()
    plain = {key for k in kept_settings for key, entry in k["values"].items() if "value" in entry}
    return frozenset(plain.difference(*(secret_names(k) for k in kept_settings)))


def short(record: dict) -> str:
    """The first hex digits of a record's settings digest ("-" when it kept none)."""
    return record[SETTINGS]["digest"][len("sha256:"):][:8] if SETTINGS in record else "-"


# ---------------------------------------------------------------- putting them back

@frozen
class Restore:
    """The settings a rollback puts back: ``values`` (key -> value) etcd is to hold; ``left``: key ->
    NAME of the secret keys whose file changed since (or is gone), left as they are; ``kept``: what
    the rollback's own record keeps of ``values``."""
    values: dict = field(repr=False)
    left: dict
    kept: dict = field(repr=False)


def restore(kept_settings: dict, now: dict, folder: dict) -> Restore:
    """The settings to put back from ``kept_settings`` (a record's ``settings``), etcd holding ``now``
    (key -> value) and the secrets folder giving ``folder`` (NAME -> value; None: no such file).
    Keys not kept are removed; a secret key whose value the folder no longer gives is left as it is."""
    values, left = {}, {}
    names = secret_names(kept_settings)
    for key, entry in kept_settings["values"].items():
        if key not in names:
            values[key] = entry["value"]
            continue
        found = folder.get(names[key])
        if found is not None and digest(found) == entry["digest"]:
            values[key] = found
        else:
            left[key] = names[key]
            if key in now:
                values[key] = now[key]
    return Restore(values, left, kept(values, names))


def changed_secrets(recorded: dict, now: dict) -> list:
    """The secret files (names) whose digest differs between ``recorded`` and ``now`` (NAME ->
    digest each): changed, added or gone."""
    return sorted(name for name in set(recorded) | set(now) if recorded.get(name) != now.get(name))


# ---------------------------------------------------------------- checking a record read back

def check(record: dict) -> None:
    """RecordError unless the record's ``settings`` and ``secrets`` are absent or of the shape
    ``fields`` gives them."""
    if SETTINGS in record:
        _check_settings(record[SETTINGS])
    if SECRETS in record:
        _check_digests(record[SECRETS])


def _check_settings(kept_settings) -> None:
    if not isinstance(kept_settings, dict) or set(kept_settings) != {"digest", "values"}:
        raise RecordError("settings: not a mapping of digest and values")
    _check_digest("settings digest", kept_settings["digest"])
    values = kept_settings["values"]
    if not isinstance(values, dict):
        raise RecordError("settings values: not a mapping")
    for key, entry in values.items():
        if not isinstance(key, str) or not SETTING_KEY.fullmatch(key):
            raise RecordError(f"settings: {key!r} is not a setting's key")
        _check_entry(key, entry)


def _check_entry(key: str, entry) -> None:
    """A kept setting: ``{value: TEXT}``, or ``{secret: NAME, digest: DIGEST}``."""
    if isinstance(entry, dict) and set(entry) == {"value"} and isinstance(entry["value"], str):
        return
    if not isinstance(entry, dict) or set(entry) != {"secret", "digest"} or not _name(entry["secret"]):
        raise RecordError(f"settings: {key}: neither a value nor a secret's name and digest")
    _check_digest(f"settings: {key}", entry["digest"])


def _check_digests(digests) -> None:
    if not isinstance(digests, dict):
        raise RecordError("secrets: not a mapping")
    for name, value in digests.items():
        if not _name(name):
            raise RecordError(f"secrets: {name!r} is not a file name")
        _check_digest(f"secrets: {name}", value)


def _name(value) -> bool:
    return isinstance(value, str) and bool(SECRET_NAME.fullmatch(value))


def _check_digest(what: str, value) -> None:
    if not isinstance(value, str) or not DIGEST.fullmatch(value):
        raise RecordError(f"{what} {value!r} is not sha256: and 64 hex digits")
