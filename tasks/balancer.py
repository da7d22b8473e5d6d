"""The balancer's routers file: read, change, validate, swap, reload.

The routers file on the balancer host is kept by these functions only;
setup, membership and upgrade call them, and ``fab balancer.*`` exposes them.
A new file is written beside the old one, checked by haproxy together with
its main configuration, moved into place atomically and loaded by a graceful
reload (established connections finish on the old process).
"""
from __future__ import annotations

import threading

from . import remote
from .balancer_config import machines_in, routers_file
from .cli import air_task, cluster_of
from .cluster import check_address
from .remote import q, say

RELOAD = "systemctl reload haproxy"


def check_command(config: str, candidate: str) -> str:
    return f"haproxy -c -q -f {q(config)} -f {q(candidate)}"


class Routers:
    """The routers file over one open connection to the balancer host.

    It reads the file once and then knows what it wrote, so a rolling upgrade
    drains and re-adds every machine without reconnecting or rereading.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self._connection = remote.connect(cluster, cluster.balancer.host)
        self._machines = None
        self._lock = threading.RLock()  # machines upgraded side by side (--batch) share it

    def __enter__(self) -> "Routers":
        self.conn = self._connection.__enter__()
        self.listed()  # read now: the connection is open anyway
        return self

    def __exit__(self, *exc):
        return self._connection.__exit__(*exc)

    def listed(self) -> list:
        """The machines the routers file sends traffic to now."""
        if self._machines is None:
            self._machines = machines_in(remote.read_file(self.conn, self.cluster.balancer.routers_file, missing=""))
        return list(self._machines)

    def set(self, machines, reload: bool = False) -> list:
        """Make the routers file list exactly ``machines``; no change, no reload, unless ``reload``:
        a reload starts haproxy's view afresh, with every listed machine up (those its checks had
        found down while they were being installed, say), which the caller has just checked."""
        with self._lock:
            return self._set(list(dict.fromkeys(machines)), reload)

    def _set(self, machines, reload: bool = False) -> list:
        if self.listed() == machines and not reload:
            return machines
        path = self.cluster.balancer.routers_file
        candidate = f"{path}.air-candidate"
        # Beside haproxy's own configuration, so its folder exists; the swap below is atomic.
        remote.upload_file(self.conn, candidate, routers_file(self.cluster.balancer.port, machines), 0o644)
        remote.run(self.conn, f"{check_command(self.cluster.balancer.config, candidate)} && "
                              f"mv -f {q(candidate)} {q(path)} && {RELOAD}",
                   what="validate and install the routers file, reload")
        self._machines = machines
        say(f"balancer: routes to {', '.join(machines) or 'no machine'}")
        return machines

    def add(self, machine: str) -> list:
        with self._lock:
            current = self.listed()
            return current if machine in current else self.set(current + [machine])

    def remove(self, machine: str) -> list:
        with self._lock:
            return self.set([m for m in self.listed() if m != machine])


def listed(cluster) -> list:
    with Routers(cluster) as routers:
        return routers.listed()


def set_machines(cluster, machines, reload: bool = False) -> list:
    with Routers(cluster) as routers:
        return routers.set(machines, reload)


def add(cluster, machine: str) -> list:
    with Routers(cluster) as routers:
        return routers.add(machine)


def remove(cluster, machine: str) -> list:
    with Routers(cluster) as routers:
        return routers.remove(machine)


@air_task(name="list", help={"cluster": "target cluster"})
def list_(c, cluster=None):
    """List the machines the balancer sends traffic to."""
    for machine in listed(cluster_of(cluster)):
        print(machine)


@air_task(name="add", help={"cluster": "target cluster", "machine": "machine address"})
def add_task(c, cluster=None, machine=None):
    """Send balancer traffic to a machine too."""
    target = cluster_of(cluster)
    add(target, check_address(machine, "--machine"))


@air_task(name="remove", help={"cluster": "target cluster", "machine": "machine address"})
def remove_task(c, cluster=None, machine=None):
    """Stop sending balancer traffic to a machine (established connections finish)."""
    target = cluster_of(cluster)
    remove(target, check_address(machine, "--machine"))
