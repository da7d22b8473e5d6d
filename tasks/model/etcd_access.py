"""Who may do what in the cluster's etcd: air-deploy as etcd's root, each component read-only on what it reads.

With ``etcd_auth`` the cluster's etcd answers logged-in clients only. air-deploy logs in as
``root`` with the credentials file of the secrets folder (``credentials_file``); each component
whose ``reads`` names keys gets a login of its own (user and role ``air-<component>``) granted
READ on exactly those keys (a prefix covers every setting below it) and nothing else; a
component that reads nothing gets no login. A component's password is derived from the root's
(an HMAC over its user name), so the secrets folder holds one secret for them all and a new root
password changes every one. This module is pure: the logins wanted, what etcd has (``Found``),
and the plan of the gateway calls between them (``plan``), each a ``Call``.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from tasks.model import state
from tasks.model.cluster import ETCD_PASSWORD_FILE, ETCD_ROOT_FILE
from tasks.model.credentials import load_credentials
from tasks.model.errors import ConfigError, RecordError
from tasks.model.frozen import frozen

ROOT = "root"        # etcd turns authentication on only with a user root holding the role root
USER_PREFIX = "air-"  # the logins air-deploy keeps; any other user or role in etcd is left alone
READ = "READ"
PASSWORD_FILE = ETCD_PASSWORD_FILE
_DIGEST = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True, order=True)
class Grant:
    """READ on ``key``, or on every key from it up to ``range_end`` (a prefix's range)."""
    key: str
    range_end: str = ""


@frozen
class Login:
    user: str                          # also its role's name
    grants: tuple = ()                 # Grant, sorted
    password: str = field(default="", repr=False)


@frozen
class Found:
    """etcd's side: users (name -> roles), the roles air-deploy keeps (name -> Grants), and the
    digests of the passwords last set (``state.logins_key``)."""
    users: dict
    roles: dict
    digests: dict


@frozen
class Call:
    """One call of etcd's auth API: ``/v3/auth/<path>`` with ``payload`` (which may hold a
    password: only ``said`` is ever shown)."""
    path: str
    payload: dict = field(repr=False, compare=True)
    said: str


def credentials_file(cluster) -> Path:
    return Path(cluster.secrets) / ETCD_ROOT_FILE


def root_password(cluster) -> str:
    """The root password of the cluster's etcd, from its credentials file (private to its owner)."""
    path = credentials_file(cluster)
    if not path.exists():
        raise ConfigError(f"{path}: missing: the etcd root login of {cluster.name} "
                          f"(`fab etcd.auth --cluster {cluster.name}` makes one)")
    user, password = load_credentials(path, "etcd root credentials")
    if user != ROOT:
        raise ConfigError(f"{path}: username: expected {ROOT!r} (etcd's administrator is always root), got {user!r}")
    return password


def root_login(cluster) -> Optional[tuple]:
    """(user, password) air-deploy logs in with: required with ``etcd_auth``, used without it when
    the file is there (so the cluster can be turned back to open); None when there is none."""
    if cluster.etcd_auth or credentials_file(cluster).exists():
        return ROOT, root_password(cluster)
    return None


def user_of(component_name: str) -> str:
    return USER_PREFIX + component_name


def password_of(root_password: str, user: str) -> str:
    """A component's password: derived from the root's, so no second secret is kept."""
    return hmac.new(root_password.encode(), f"etcd login {user}".encode(), hashlib.sha256).hexdigest()


def digest(password: str) -> str:
    return hashlib.sha256(password.encode()).hexdigest()


def has_login(cluster, component) -> bool:
    return bool(cluster.etcd_auth and component.reads)


def grants(cluster, component) -> tuple:
    """The READ grants of ``component``'s ``reads``: a key, or a prefix's whole range. Pure."""
    found = []
    for entry in component.reads:
        key = state.app_prefix(cluster) + entry
        found.append(Grant(key, range_end(key)) if entry.endswith("/") else Grant(key))
    return tuple(sorted(set(found)))


def logins(cluster, root: str) -> dict:
    """user -> Login of every component with ``reads`` (none unless ``etcd_auth``). Pure."""
    return {user_of(c.name): Login(user_of(c.name), grants(cluster, c), password_of(root, user_of(c.name)))
            for c in cluster.components if has_login(cluster, c)}


def password_files(cluster, root: str, secrets_dir) -> list:
    """``(path, password, mode 0400)`` of each component login, in the component's own secrets
    folder (``secrets_dir(name)``) on every machine. Pure."""
    return [(f"{secrets_dir(c.name)}/{PASSWORD_FILE}", password_of(root, user_of(c.name)), 0o400)
            for c in cluster.components if has_login(cluster, c)]


def range_end(prefix: str) -> str:
    """etcd's range end covering every key that starts with ``prefix`` (ASCII keys). Pure."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def parse_digests(key: str, text: Optional[str]) -> dict:
    """user -> password digest, from the record at ``key``; RecordError naming it when malformed."""
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) and _DIGEST.fullmatch(v)
                                             for k, v in data.items()):
        raise RecordError(f"etcd key {key} is not the record of etcd logins air-deploy wrote; nothing was run: "
                          f"delete it (the passwords are then set again)")
    return data


def plan(root: str, wanted: dict, found: Found) -> list:
    """The calls that bring etcd's users and roles to ``wanted`` (user -> Login) and root's password
    to ``root``: logins added, grants added and revoked, passwords set where their digest changed,
    logins no component has any more removed. Only root and ``air-`` users are touched. Pure."""
    calls = []
    if ROOT not in found.users:
        calls += [Call("user/add", {"name": ROOT, "password": root}, "add user root"),
                  Call("user/grant", {"user": ROOT, "role": ROOT}, "grant root the role root")]
    elif found.digests.get(ROOT) != digest(root):
        calls.append(Call("user/changepw", {"name": ROOT, "password": root}, "set root's password"))
    for _, login in sorted(wanted.items()):
        calls += _login_calls(login, found)
    for user in sorted(set(found.users) | set(found.roles)):
        if user.startswith(USER_PREFIX) and user not in wanted:
            if user in found.users:
                calls.append(Call("user/delete", {"name": user}, f"remove user {user} (no component reads as it)"))
            if user in found.roles:
                calls.append(Call("role/delete", {"role": user}, f"remove role {user}"))
    return calls


def _login_calls(login: Login, found: Found) -> list:
    user, calls = login.user, []
    if user not in found.roles:
        calls.append(Call("role/add", {"name": user}, f"add role {user}"))
    have = set(found.roles.get(user, ()))
    for grant in sorted(set(login.grants) - have):
        calls.append(Call("role/grant", {"name": user, "perm": {"permType": READ, **_range(grant)}},
                          f"let {user} read {_shown(grant)}"))
    for grant in sorted(have - set(login.grants)):
        calls.append(Call("role/revoke", {"role": user, **_range(grant)}, f"no longer let {user} read {_shown(grant)}"))
    if user not in found.users:
        calls.append(Call("user/add", {"name": user, "password": login.password}, f"add user {user}"))
    elif found.digests.get(user) != digest(login.password):
        calls.append(Call("user/changepw", {"name": user, "password": login.password}, f"set {user}'s password"))
    if user not in found.users.get(user, ()):
        calls.append(Call("user/grant", {"user": user, "role": user}, f"give {user} the role {user}"))
    return calls


GRANTS = "(grants)"  # the record's entry for every login's grants: no user has that name


def digests_after(root: str, wanted: dict) -> dict:
    """user -> password digest once ``plan`` is carried out, and under ``GRANTS`` a digest of every
    login's grants: what ``state.logins_key`` records. A record equal to it says etcd was left as
    ``wanted`` by the task that wrote it. Pure."""
    granted = json.dumps([[user, [[g.key, g.range_end] for g in login.grants]] for user, login in sorted(wanted.items())])
    return {ROOT: digest(root), **{user: digest(login.password) for user, login in wanted.items()},
            GRANTS: digest(granted)}


def parse_grants(perms) -> tuple:
    """Grants of a role, from the gateway's ``perm`` list (keys base64); only READ ones are air-deploy's. Pure."""
    found = []
    for perm in perms or ():
        kind = perm.get("permType", READ)  # the gateway leaves out a default (READ, 0)
        if kind not in (READ, 0):
            continue
        found.append(Grant(_text(perm.get("key", "")), _text(perm.get("range_end", ""))))
    return tuple(sorted(found))


def _range(grant: Grant) -> dict:
    return {"key": _b64(grant.key), **({"range_end": _b64(grant.range_end)} if grant.range_end else {})}


def _shown(grant: Grant) -> str:
    return f"{grant.key}*" if grant.range_end else grant.key


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _text(encoded: str) -> str:
    return base64.b64decode(encoded).decode(errors="replace") if encoded else ""
