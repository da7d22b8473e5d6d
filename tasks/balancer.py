"""The balancer's routers file: read, change, validate, swap, reload.

The routers file on the balancer host is kept by these functions only;
setup, membership and upgrade call them, and ``fab balancer.*`` exposes them.
A new file is written beside the old one, checked by haproxy together with
its main configuration, moved into place atomically and loaded by a graceful
reload (established connections finish on the old process).
"""
from __future__ import annotations

import threading

from .balancer_config import machines_in, routers_file
from .cli import air_task, cluster_of
from .cluster import check_address
from .remote import q, say
from .session import session

RELOAD = "systemctl reload haproxy"


def check_command(config: str, candidate: str) -> str:
    return f"haproxy -c -q -f {q(config)} -f {q(candidate)}"


class Routers:
    """The routers file on the balancer host, through the task's executor.

    It reads the file once and then knows what it wrote, so a rolling upgrade
    drains and re-adds every machine without rereading.
    """

    def __init__(self, ex):
        self.ex, self.cluster, self.host = ex, ex.cluster, ex.cluster.balancer.host
        self._machines = None
        self._lock = threading.RLock()  # machines upgraded side by side (--batch) share it

    def listed(self) -> list:
        """The machines the routers file sends traffic to now."""
        if self._machines is None:
            self._machines = machines_in(self.ex.read_file(self.host, self.cluster.balancer.routers_file, missing=""))
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
        candidate = f"{path}.air-candidate-{self.ex.run_id}"
        # Beside haproxy's own configuration, so its folder exists; the swap below is atomic.
        staged = self.ex.stage_files(self.host, [(candidate, routers_file(self.cluster.balancer.port, machines), 0o644)])
        self.ex.run(self.host, f"{staged.swap} && {check_command(self.cluster.balancer.config, candidate)} && "
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


@air_task(name="list", help={"cluster": "target cluster"})
def list_(c, cluster=None):
    """List the machines the balancer sends traffic to."""
    with session(cluster_of(cluster), etcd=False) as s:
        machines = Routers(s.ex).listed()
    for machine in machines:
        print(machine)


@air_task(name="add", help={"cluster": "target cluster", "machine": "machine address"})
def add_task(c, cluster=None, machine=None):
    """Send balancer traffic to a machine too."""
    target = cluster_of(cluster)
    address = check_address(machine, "--machine")
    with session(target, f"balancer.add {address}") as s:
        Routers(s.ex).add(address)


@air_task(name="remove", help={"cluster": "target cluster", "machine": "machine address"})
def remove_task(c, cluster=None, machine=None):
    """Stop sending balancer traffic to a machine (established connections finish)."""
    target = cluster_of(cluster)
    address = check_address(machine, "--machine")
    with session(target, f"balancer.remove {address}") as s:
        Routers(s.ex).remove(address)
