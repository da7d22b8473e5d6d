"""Maintenance mode: one etcd key that puts the whole cluster behind a maintenance page.

``maintenance.on`` writes ``state.maintenance_key`` (its value: the message
shown), ``maintenance.off`` removes it; with ``etcd_v2`` the key is written
to etcd's v2 store as well. The application does the rest: the sample
router's watcher (sandbox/air/components/router/watch-maintenance) reads the
key on its machine twice a second and makes nginx answer 503 with the page
(HTML, or JSON for ``Accept: application/json``) while it is there; its
health path keeps answering, so the balancer keeps the routers in rotation.
"""
from __future__ import annotations

from typing import Optional

from invoke import Collection

from tasks.model import state
from tasks.model.cluster import check_address
from tasks.model.errors import ConfigError
from tasks.model.status_view import status_line
from tasks.net.session import Session, session
from tasks.runbooks.cli import air_task, cluster_of, report

DEFAULT_MESSAGE = "The service is down for maintenance. Please try again later."
MAX_MESSAGE = 500


def check_message(message) -> str:
    """The message to show: one line of printable text (the default when none is given). Pure."""
    if message is None:
        return DEFAULT_MESSAGE
    if not isinstance(message, str) or not message.strip() or len(message) > MAX_MESSAGE \
            or any(ord(ch) < 32 or ord(ch) == 127 for ch in message):
        raise ConfigError(f"--message: expected one line of text (at most {MAX_MESSAGE} characters), got {message!r}")
    return message.strip()


def read(etcd, cluster) -> Optional[str]:
    """The message while the cluster is in maintenance, else None."""
    return etcd.get(state.maintenance_key(cluster))


def switch(s: Session, message: Optional[str]) -> None:
    """Maintenance on with ``message``, or off (None): the key, and its v2 twin when the cluster asks."""
    key = state.maintenance_key(s.cluster)
    s.ex.check("switch maintenance")
    if message is None:
        s.etcd.delete(key)
        if s.cluster.etcd_v2:
            s.etcd.v2_delete(key)
    else:
        s.etcd.put(key, message)
        if s.cluster.etcd_v2:
            s.etcd.v2_put(key, message)


HELP = {"cluster": "target cluster", "via": "member to reach etcd through",
        "wait": "wait for another task's lock instead of failing", "json": "print JSON"}


@air_task(name="on", help={**HELP, "message": "the text the maintenance page shows (one line)"})
def on(c, cluster=None, message=None, via=None, wait=False, json_=False):
    """Put the cluster into maintenance: every router answers 503 with the maintenance page."""
    target = cluster_of(cluster)
    text = check_message(message)
    with session(target, "maintenance.on", via and check_address(via, "--via"), wait) as s:
        switch(s, text)
    report({"maintenance": True, "message": text}, json_, status_line(text))


@air_task(name="off", help=HELP)
def off(c, cluster=None, via=None, wait=False, json_=False):
    """Take the cluster out of maintenance: the routers serve again."""
    target = cluster_of(cluster)
    with session(target, "maintenance.off", via and check_address(via, "--via"), wait) as s:
        switch(s, None)
    report({"maintenance": False, "message": None}, json_, status_line(None))


@air_task(name="status", help={"cluster": "target cluster", "via": "member to reach etcd through",
                               "json": "print JSON"})
def status(c, cluster=None, via=None, json_=False):
    """Show whether the cluster is in maintenance, and its message."""
    target = cluster_of(cluster)
    with session(target, via=via and check_address(via, "--via")) as s:
        message = read(s.etcd, target)
    report({"maintenance": message is not None, "message": message}, json_, status_line(message))


namespace = Collection("maintenance", on, off, status)
