"""The balancer of one cluster: its haproxy instance set up, its machine list changed and read.

``setup`` installs or refreshes the cluster's own haproxy instance on the
balancer host (unit, ``haproxy.cfg``, ``routers.cfg``; see
``tasks.commands.haproxy``), touching no file or process of another cluster.
``Routers`` keeps the machine list: setup, membership and upgrade call it.
A change is one command on the balancer host (through the task's executor,
so under the cluster's lock): the new routers file travels in it, is checked
by haproxy with the cluster's configuration (when it names other servers
than before) and moved into place, then the running instance is told through
its admin socket: a machine leaving is drained (no new connections), waited
for until its connections end or ``timeouts.drain`` passes, and put in
maintenance; a machine coming back is readied. No reload, except when haproxy has never
heard of a machine (a new one), and then only this cluster's instance
reloads, gracefully.
"""
from __future__ import annotations

import threading

from tasks.commands.haproxy import (
    admin_socket,
    change_command,
    check_command,
    drain_left,
    main_config,
    missing_requirements,
    parse_stat,
    requirements_command,
    plan,
    routers_file,
    servers_in,
    stat_command,
    unit_file,
    unit_name,
    unit_path,
)
from tasks.model.cluster import check_address
from tasks.model.errors import RemoteError
from tasks.net.progress import say
from tasks.net.session import optional_lock, session
from tasks.runbooks.cli import NO_LOCK_HELP, air_task, cluster_of, report

CHANGE = "change the balancer"  # what a change's command is called (bench/wan.py tells them by it)


class Routers:
    """The cluster's machine list on the balancer host, through the task's executor.

    It reads the routers file once and then knows what it wrote, so a rolling
    upgrade drains and readies every machine without rereading.
    """

    def __init__(self, ex):
        self.ex, self.cluster, self.host = ex, ex.cluster, ex.cluster.balancer.host
        self._servers = None  # (in rotation, listed but disabled)
        self._lock = threading.RLock()  # machines upgraded side by side (--max-unavailable) share it

    def _read(self) -> tuple:
        if self._servers is None:
            self._servers = servers_in(self.ex.read_file(self.host, self.cluster.balancer.routers_file, missing=""))
        return self._servers

    def listed(self) -> list:
        """The machines the balancer sends traffic to now."""
        return list(self._read()[0])

    def set(self, machines, reload: bool = False) -> list:
        """Make the balancer send traffic to exactly ``machines``: those leaving are drained (their
        connections may finish, within ``timeouts.drain``), those coming back readied, all through
        haproxy's runtime API. ``reload``: haproxy's view starts afresh from the file, every listed
        machine up (those its checks had found down while being installed, say)."""
        with self._lock:
            return self._set(list(dict.fromkeys(machines)), reload)

    def _set(self, machines, reload: bool, forget=()) -> list:
        enabled, disabled = self._read()
        change = plan(enabled, disabled, machines, reload, forget)
        if enabled == machines and not reload and change.drained == disabled:
            return machines
        drain = self.cluster.timeouts.drain
        result = self.ex.run(self.host, change_command(self.cluster, change, drain, self.ex.run_id),
                             deadline=drain + self.cluster.timeouts.command,
                             what=f"{CHANGE} of {self.cluster.name} "
                                  f"(is {unit_name(self.cluster)} running? fab balancer.setup)")
        self._servers = (change.machines, change.drained)
        left = drain_left(result.stdout)
        if left:
            say(f"balancer: {left} connection(s) to {', '.join(change.drain)} still open after {drain} s; "
                f"out of rotation all the same")
        say(f"balancer: routes to {', '.join(machines) or 'no machine'}"
            + (f" (drained {', '.join(change.drain)})" if change.drain else "")
            + (" (reloaded)" if change.reload else ""))
        return machines

    def add(self, machine: str) -> list:
        with self._lock:
            current = self.listed()
            return current if machine in current else self.set(current + [machine])

    def remove(self, machine: str) -> list:
        """Drain ``machine`` and forget it: the routers file no longer names it (it leaves the
        cluster; a later ``add`` is a new server, read by a reload)."""
        with self._lock:
            return self._set([m for m in self.listed() if m != machine], False, forget=[machine])

    def servers(self) -> list:
        """haproxy's own view: every server with its status and current connections."""
        return parse_stat(self.ex.read(self.host, stat_command(self.cluster), what="read haproxy's servers").stdout)


# ---------------------------------------------------------------- setting up the cluster's instance

def wanted_files(cluster, current_routers: str) -> dict:
    """path -> content of the cluster's instance; the routers file keeps the machines it lists."""
    enabled, disabled = servers_in(current_routers)
    return {unit_path(cluster): unit_file(cluster), cluster.balancer.config: main_config(cluster),
            cluster.balancer.routers_file: routers_file(cluster, enabled, disabled)}


def activate_command(cluster, changed) -> str:
    """After the files changed: check them, then start the instance, reload it (a changed
    configuration; established connections finish on the old process) or restart it (a changed unit)."""
    unit = unit_name(cluster)
    config, routers = cluster.balancer.config, cluster.balancer.routers_file
    if unit_path(cluster) in changed:
        action = f"systemctl daemon-reload && systemctl enable -q {unit} && systemctl restart {unit}"
    elif changed:
        action = f"systemctl enable -q {unit} && systemctl reload-or-restart {unit}"
    else:
        action = f"systemctl enable -q {unit} && {{ systemctl is-active -q {unit} || systemctl start {unit}; }}"
    return f"{check_command(cluster, config, routers)} && {action}"


def setup(ex) -> list:
    """Install or refresh the cluster's haproxy instance on the balancer host; returns the files
    it changed (none when all was right: then it only makes sure the instance runs)."""
    cluster = ex.cluster
    host = cluster.balancer.host
    missing = missing_requirements(ex.read(host, requirements_command(), check=False).stdout)
    if missing:
        raise RemoteError(f"{host}: the balancer host needs {', '.join(missing)} (apt-get install haproxy socat: "
                          f"the haproxy package makes its user)")
    current_routers = ex.read_file(host, cluster.balancer.routers_file, missing="")
    wanted = wanted_files(cluster, current_routers)
    changed = [path for path, text in wanted.items()
               if (current_routers if path == cluster.balancer.routers_file
                   else ex.read_file(host, path, missing=None)) != text]
    if changed:
        ex.write_files(host, [(path, wanted[path], 0o644) for path in changed])
    ex.run(host, activate_command(cluster, changed), what=f"start {unit_name(cluster)}")
    say(f"balancer: {unit_name(cluster)} on {host}: "
        + (f"wrote {', '.join(changed)}" if changed else "already up to date") + f"; admin socket {admin_socket(cluster)}")
    return changed


# ---------------------------------------------------------------- the tasks

@air_task(name="setup", help={"cluster": "target cluster", "no-lock": NO_LOCK_HELP})
def setup_task(c, cluster=None, no_lock=False):
    """Install or refresh the cluster's own haproxy instance on the balancer host (idempotent)."""
    target = cluster_of(cluster)
    with session(target, etcd=False, changes=True) as s:
        optional_lock(s, "balancer.setup", no_lock=no_lock)
        setup(s.ex)


@air_task(name="list", help={"cluster": "target cluster", "json": "print JSON"})
def list_(c, cluster=None, json_=False):
    """List the machines the balancer sends traffic to."""
    with session(cluster_of(cluster), etcd=False) as s:
        machines = Routers(s.ex).listed()
    report(machines, json_, "\n".join(machines))


@air_task(name="status", help={"cluster": "target cluster", "json": "print JSON"})
def status_task(c, cluster=None, json_=False):
    """Show haproxy's view of the cluster's servers: status and current connections."""
    with session(cluster_of(cluster), etcd=False) as s:
        found = Routers(s.ex).servers()
    report([server._asdict() for server in found], json_,
           "\n".join(f"{s.backend:20} {s.machine:20} {s.status:10} {s.sessions}" for s in found))


@air_task(name="add", help={"cluster": "target cluster", "machine": "machine address"})
def add_task(c, cluster=None, machine=None):
    """Send balancer traffic to a machine too."""
    target = cluster_of(cluster)
    address = check_address(machine, "--machine")
    with session(target, f"balancer.add {address}") as s:
        Routers(s.ex).add(address)


@air_task(name="remove", help={"cluster": "target cluster", "machine": "machine address"})
def remove_task(c, cluster=None, machine=None):
    """Stop sending balancer traffic to a machine, once its connections end (within timeouts.drain)."""
    target = cluster_of(cluster)
    address = check_address(machine, "--machine")
    with session(target, f"balancer.remove {address}") as s:
        Routers(s.ex).remove(address)
