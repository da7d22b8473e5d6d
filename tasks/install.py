"""Installing a cluster on freshly prepared machines, and its first admin.

``setup-cluster`` is the old half-manual install as one runbook: preflight
every machine (nothing changes unless all pass), then on all machines at
once: secrets, images of the current release, the final cloud config and
the files it stands for (etcd drop-in, Air units, release state); then etcd
forms, the release is recorded in it, the Air units start, every machine
passes its health check and the balancer routes to all of them. It refuses
a cluster that is already installed: etcd is never bootstrapped twice.
"""
from __future__ import annotations

import getpass
import shlex
import sys
import time

from . import balancer, etcd, machine, push, remote, state
from .cli import air_task, cluster_of
from .cluster import check_addresses
from .errors import AirError, ConfigError, PreflightError
from .remote import q, say


def preflight(cluster, machines) -> None:
    """Every machine reachable, fresh, with Docker and etcd; else one error naming each problem."""
    def check(address):
        conn = remote.connect(cluster, address)
        why = remote.reachable(conn)
        if why:
            return f"{address}: unreachable ({why})"
        try:
            problems = machine.fresh_problems(machine.facts(conn, cluster))
        finally:
            conn.close()
        return f"{address}: {', '.join(problems)}" if problems else None

    problems = [p for p in remote.parallel(check, machines) if p]
    if problems:
        installed = any("already" in p for p in problems)
        hint = (" setup-cluster never bootstraps etcd over a running cluster; use add-machine or upgrade."
                if installed else " Nothing was changed.")
        raise PreflightError("preflight failed: " + "; ".join(problems) + "." + hint)


def install_machine(cluster, address, machines, release, base_doc, state="new") -> None:
    """Everything but starting: secrets, the final cloud config and its files, the images."""
    with remote.connect(cluster, address) as conn:
        doc = machine.final_document(cluster, address, machines, state, release, base_doc)
        machine.install(conn, cluster, doc, release)


def start_etcd(cluster, machines) -> None:
    remote.parallel(lambda a: _run_on(cluster, a, machine.start_etcd_command(), "start etcd"), machines)
    deadline = time.monotonic() + cluster.timeouts.healthy
    with remote.connect(cluster, machines[0]) as conn, etcd.tunnel(conn) as client:
        while not client.healthy():
            if time.monotonic() > deadline:
                raise AirError(f"etcd did not form a healthy cluster within {cluster.timeouts.healthy} s")
            time.sleep(0.5)


def start_machine(cluster, address) -> None:
    with remote.connect(cluster, address) as conn:
        machine.start(conn, cluster)
        machine.wait_healthy(conn, cluster)


def _run_on(cluster, address, command, what):
    with remote.connect(cluster, address) as conn:
        return remote.run(conn, command, what=what)


def setup(cluster, machines) -> object:
    started = time.monotonic()
    release = push.published_release(cluster)
    say(f"setup-cluster: {cluster.name} on {', '.join(machines)}, release {release.id} "
        f"({', '.join(f'{i.component} {i.version}' for i in release.images)})")
    preflight(cluster, machines)
    base_doc = machine.base_document(cluster)
    say("setup-cluster: installing secrets, images, units and cloud config on every machine")
    try:
        remote.parallel(lambda a: install_machine(cluster, a, machines, release, base_doc), machines)
        say("setup-cluster: starting etcd")
        start_etcd(cluster, machines)
    except AirError as failure:
        # Nothing serves yet: put every machine back to freshly prepared, so setup can simply run again.
        def wipe(address):
            with remote.connect(cluster, address) as conn:
                machine.wipe(conn, cluster)
        remote.parallel(wipe, machines)
        raise AirError(f"setup-cluster failed before anything started: {failure}\n"
                       f"every machine was wiped back to freshly prepared; fix the cause and run it again") from None
    with remote.connect(cluster, machines[0]) as conn, etcd.tunnel(conn) as client:
        record = state.write_release(client, cluster, release, outcome="installed")
        state.add_history(client, cluster, record)
        state.write_machines(client, cluster, machines)
    say("setup-cluster: starting the Air units")
    try:
        remote.parallel(lambda a: start_machine(cluster, a), machines)
    except AirError as failure:
        raise AirError(f"setup-cluster: {failure}\netcd is up with every machine and release {release.id} is "
                       f"recorded, but not every machine is healthy, and the balancer was not changed; fix the "
                       f"cause and run `fab rolling-upgrade --cluster {cluster.name}` to finish") from None
    balancer.set_machines(cluster, machines, reload=True)
    say(f"setup-cluster: {cluster.name} is up on {len(machines)} machines in {time.monotonic() - started:.1f} s")
    return release


@air_task(name="setup-cluster", help={"cluster": "target cluster",
                                      "machines": "comma-separated addresses (default: the cluster file's)"})
def setup_cluster(c, cluster=None, machines=None):
    """Install the cluster on freshly prepared machines and start it."""
    target = cluster_of(cluster)
    chosen = check_addresses(machines, "--machines") if machines else list(target.machines)
    setup(target, chosen)


@air_task(name="create-admin", help={"cluster": "target cluster", "email": "admin's email",
                                     "name": "admin's name", "machine": "machine to run on (default: the first)"})
def create_admin(c, cluster=None, email=None, name=None, machine_=None):
    """Create the application's first admin; the password is read from a prompt or stdin."""
    target = cluster_of(cluster)
    if target.admin is None:
        raise ConfigError(f"{target.file}: admin: missing (how the application creates an admin)")
    if not email or "@" not in email or any(ch in email for ch in "\n\r") or not name or "\n" in name:
        raise ConfigError("--email (an address) and --name are required, each on one line")
    address = check_addresses(machine_, "--machine")[0] if machine_ else target.machines[0]
    password = getpass.getpass("Admin password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConfigError("an empty password is not accepted")
    container = f"air-{target.admin.component}"
    with remote.connect(target, address) as conn:
        command = " ".join(q(word) for word in shlex.split(target.admin.command))
        result = remote.run(conn, f"docker exec -i {q(container)} {command}",
                            stdin=f"{email}\n{name}\n{password}\n", what="create the admin")
    print(result.stdout.strip())
