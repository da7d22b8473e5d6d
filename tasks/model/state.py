"""What air-deploy keeps in the cluster's own etcd, and where.

The cluster is its own record: the current release (component -> version
and digest, with branch, commit, who and when), the history of releases with
their outcome, the candidate release of a canary deploy (with the machines
it runs on) and the deploy lock all live under
``/air/<cluster>/``. The application's own keys live under
``/air/<cluster>/app/`` (``app_prefix``): its settings
(``settings/<key>``, written from the cluster file) and the maintenance
switch (``maintenance``: present, holding the message, while the cluster is
in maintenance). Containers are told that prefix (``AIR_ETCD_PREFIX``). This
module is the one home of those keys and of the shape of their values;
``tasks.runbooks.records`` carries them.
"""
from __future__ import annotations

import getpass
import json
import socket
from datetime import datetime, timezone
from urllib.parse import urlsplit

from tasks.model.release import Release


# The application's keys, below ``app_prefix``; a component's ``reads`` names them so.
MAINTENANCE, SETTINGS = "maintenance", "settings/"


def prefix(cluster) -> str:
    return f"/air/{cluster.name}/"


def release_key(cluster) -> str:
    return prefix(cluster) + "release/current"


def history_prefix(cluster) -> str:
    return prefix(cluster) + "releases/"


def history_key(cluster, stamp: str) -> str:
    return history_prefix(cluster) + stamp


def candidate_key(cluster) -> str:
    return prefix(cluster) + "release/candidate"


def logins_key(cluster) -> str:
    """The SHA-256 of each etcd login's password as last set (``tasks.model.etcd_access``): the
    passwords are set again only when they change. Readable by etcd's root only."""
    return prefix(cluster) + "etcd-logins"


def lock_key(cluster) -> str:
    return prefix(cluster) + "lock"


def app_prefix(cluster) -> str:
    """The application's own keys: what it reads (settings, maintenance); told to every container."""
    return prefix(cluster) + "app/"


def settings_prefix(cluster) -> str:
    """Where the cluster file's ``settings`` go; settings.apply removes keys below it only."""
    return app_prefix(cluster) + SETTINGS


def setting_key(cluster, key: str) -> str:
    return settings_prefix(cluster) + key


def maintenance_key(cluster) -> str:
    """Present while the cluster is in maintenance; its value is the message the routers show."""
    return app_prefix(cluster) + MAINTENANCE


def now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def operator() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def release_record(release: Release, **meta) -> str:
    """The JSON stored for a release: its components plus who/when/branch/commit/outcome."""
    return json.dumps({**release.to_dict(), **meta}, sort_keys=True)


def member_address(member) -> str:
    """A member's machine address, from its peer URL (an unstarted member has no name yet)."""
    return urlsplit(member.peer_urls[0]).hostname if member.peer_urls else member.name


