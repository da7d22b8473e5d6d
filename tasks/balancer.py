"""The balancer's routers file: read, change, validate, swap, reload.

The routers file on the balancer host is kept by these functions only;
setup, membership and upgrade call them, and ``fab balancer.*`` exposes them.
A new file is written beside the old one, checked by haproxy together with
its main configuration, moved into place atomically and loaded by a graceful
reload (established connections finish on the old process).
"""
from __future__ import annotations

from . import remote
from .balancer_config import machines_in, routers_file
from .cli import air_task, cluster_of
from .cluster import check_address
from .remote import q, say

RELOAD = "systemctl reload haproxy"


def check_command(config: str, candidate: str) -> str:
    return f"haproxy -c -q -f {q(config)} -f {q(candidate)}"


def listed(cluster, conn=None) -> list:
    """The machines the routers file sends traffic to now."""
    if conn is None:
        with remote.connect(cluster, cluster.balancer.host) as conn:
            return listed(cluster, conn)
    return machines_in(remote.read_file(conn, cluster.balancer.routers_file, missing=""))


def set_machines(cluster, machines) -> list:
    """Make the routers file list exactly ``machines``; no change, no reload."""
    machines = list(dict.fromkeys(machines))
    with remote.connect(cluster, cluster.balancer.host) as conn:
        current = listed(cluster, conn)
        if current == machines:
            return current
        path = cluster.balancer.routers_file
        candidate = f"{path}.air-candidate"
        remote.write_file(conn, candidate, routers_file(cluster.balancer.port, machines), 0o644)
        remote.run(conn, check_command(cluster.balancer.config, candidate), what="validate the routers file")
        remote.run(conn, f"mv -f {q(candidate)} {q(path)} && {RELOAD}", what="install the routers file and reload")
        say(f"balancer: routes to {', '.join(machines) or 'no machine'}")
        return machines


def add(cluster, machine: str) -> list:
    current = listed(cluster)
    return set_machines(cluster, current + [machine]) if machine not in current else current


def remove(cluster, machine: str) -> list:
    return set_machines(cluster, [m for m in listed(cluster) if m != machine])


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
