"""etcd's authentication, kept as the cluster file says: ``fab etcd.auth``, and the step setup-cluster and deploy take.

``keep`` reads what etcd has (users, the ``air-`` roles and their grants, the digests of the
passwords last set), plans the calls that bring it to the logins the cluster file asks for
(``tasks.model.etcd_access``), makes them and records the digests; run twice it changes
nothing. setup-cluster keeps the logins and turns authentication on before anything else is
written; every deploy keeps them (a component's ``reads`` may have changed).

``fab etcd.auth`` turns an installed cluster over in place, with the application serving: with
``etcd_auth: true`` it makes the root login when the secrets folder has none, keeps the logins,
gives each component its password file and the unit that names it (``secrets.apply``: those
components restart one machine at a time, drained and health-checked), then turns etcd's
authentication on. With ``etcd_auth: false`` it turns authentication off first (the root login
still works then), then takes the components' logins away the same way; etcd keeps the users.
"""
from __future__ import annotations

import json
import os
import secrets as random
import time

import yaml
from tasks.model import etcd_access, state
from tasks.model.cluster import check_address
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import secrets
from tasks.runbooks.cli import air_task, cluster_of


def ensure_root(cluster) -> None:
    """Make the root login's credentials file (mode 0600) when the cluster wants one and has none."""
    path = etcd_access.credentials_file(cluster)
    if not cluster.etcd_auth or path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump({"username": etcd_access.ROOT, "password": random.token_urlsafe(32)})
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as file:
        file.write(text)
    say(f"etcd: made the root login of {cluster.name} in {path} (keep it with the cluster's secrets)")


def found(etcd, cluster) -> etcd_access.Found:
    """What etcd has: root and the ``air-`` users with their roles, the ``air-`` roles with their
    grants, the password digests recorded (checked: a malformed record stops here)."""
    users = etcd.auth("user/list", {}, "list users").get("users", [])
    roles = etcd.auth("role/list", {}, "list roles").get("roles", [])
    key = state.logins_key(cluster)
    return etcd_access.Found(
        users={name: tuple(etcd.auth("user/get", {"name": name}, f"read user {name}").get("roles", []))
               for name in users if name == etcd_access.ROOT or name.startswith(etcd_access.USER_PREFIX)},
        roles={name: etcd_access.parse_grants(etcd.auth("role/get", {"role": name}, f"read role {name}").get("perm"))
               for name in roles if name.startswith(etcd_access.USER_PREFIX)},
        digests=etcd_access.parse_digests(key, etcd.get(key)))


def keep(s: Session, task: str, plan_only: bool = False) -> list:
    """The logins as the cluster file says (see the module); returns what was (or would be) done."""
    cluster, etcd = s.cluster, s.etcd
    root = etcd_access.root_password(cluster)
    wanted = etcd_access.logins(cluster, root)
    have = found(etcd, cluster)
    calls = etcd_access.plan(root, wanted, have)
    digests = etcd_access.digests_after(root, wanted)
    if not plan_only and (calls or digests != have.digests):
        s.ex.check("keep etcd's logins")
    for call in calls:
        if not plan_only:
            etcd.auth(call.path, call.payload, call.said)
        say(f"{task}: etcd logins: {'would ' if plan_only else ''}{call.said}")
    if not plan_only and digests != have.digests:
        etcd.put(state.logins_key(cluster), json.dumps(digests, sort_keys=True))
    return [call.said for call in calls]


def turn_on(s: Session, task: str) -> bool:
    """etcd's authentication on (the logins kept first); False when it was on already."""
    if s.etcd.auth_enabled:
        return False
    s.etcd.auth("enable", {}, "turn authentication on")
    s.etcd.log_in_again()
    say(f"{task}: etcd: authentication is on; only logged-in clients are answered")
    return True


def setup(s: Session, task: str) -> None:
    """setup-cluster's step: the logins, then authentication on (a cluster file with ``etcd_auth``)."""
    if s.cluster.etcd_auth:
        keep(s, task)
        turn_on(s, task)


def follow(s: Session, task: str, snapshot=None) -> None:
    """The settings' step (setup-cluster, add-machine, deploy, settings.apply): the logins follow
    what components read; a cluster whose etcd is still open is named. When the record of the
    logins last kept is what the cluster file asks for now, etcd is left as that task left it and
    is not read again (one request instead of one per user and role); ``fab etcd.auth`` reads etcd
    itself. ``snapshot``: etcd as the task read it under its lock (``records.check_all``), holding
    that record; None: it is read here."""
    if not s.cluster.etcd_auth:
        return
    root = etcd_access.root_password(s.cluster)
    key = state.logins_key(s.cluster)
    recorded = etcd_access.parse_digests(key, s.etcd.get(key) if snapshot is None else snapshot.logins)
    if recorded != etcd_access.digests_after(root, etcd_access.logins(s.cluster, root)):
        keep(s, task)
    if not s.etcd.auth_enabled:
        say(f"{task}: etcd's authentication is off on {s.cluster.name}: "
            f"`fab etcd.auth --cluster {s.cluster.name}` turns it on")


def migrate(target, via=None, wait=False, plan_only=False) -> str:
    """``fab etcd.auth``: the cluster's etcd turned to what its file says, in place (see the module)."""
    started = time.monotonic()
    wanted = target.etcd_auth
    ensure_root(target)
    with session(target, None if plan_only else "etcd.auth", via, wait) as s:
        enabled = s.etcd.auth_enabled
        if wanted:
            keep(s, "etcd.auth", plan_only)
        elif enabled and not plan_only:
            _turn_off(s)
        secrets.apply(s, plan_only)
        if wanted and not enabled and not plan_only:
            turn_on(s, "etcd.auth")
    now, was = ("on" if wanted else "off"), ("on" if enabled else "off")
    if plan_only:
        return f"etcd.auth --plan: the authentication of {target.name}'s etcd is {was}; it would be {now}"
    return f"etcd authentication of {target.name}: {now}" + (" (it was already)" if now == was else "") + \
        f", in {time.monotonic() - started:.1f} s"


def _turn_off(s: Session) -> None:
    s.etcd.auth("disable", {}, "turn authentication off")
    say("etcd.auth: etcd: authentication is off; any client on a machine may read and write")


@air_task(name="auth", help={"cluster": "target cluster", "via": "member to reach etcd through",
                             "wait": "wait for another task's lock instead of failing",
                             "plan": "print what would change and change nothing"})
def auth_task(c, cluster=None, via=None, wait=False, plan_=False):
    """Turn etcd's authentication on (or, with etcd_auth: false, off) as the cluster file says, in place."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    print(migrate(target, via, wait, plan_))

