"""Installing a cluster on freshly prepared machines, and its first admin.

``setup-cluster`` is the old half-manual install as one runbook: the etcd
peer certificates made where missing (local files), preflight every machine
(nothing changes unless all pass), then on all machines at once: etcd's
peer certificate, secrets, images of the current release, the final cloud
config and the files it stands for (etcd drop-in, Air units, release
state); then etcd forms, the release is recorded in it, the Air units
start, every machine passes its health check and the balancer routes to all
of them. It refuses a cluster that is already installed: etcd is never
bootstrapped twice.
"""
from __future__ import annotations

import getpass
import shlex
import sys
import time
from typing import NamedTuple

from tasks.commands import machine
from tasks.commands.shell import q, tail
from tasks.model import roles, state
from tasks.model.cluster import CONTROL, check_address, check_addresses
from tasks.model.errors import AirError, ConfigError, Halt, PreflightError, RemoteError
from tasks.model.release import Release
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, etcd_auth, etcd_peers, push, records, steps, upgrade
from tasks.runbooks.cli import air_task, cluster_of, report
from tasks.runbooks.settings import apply as apply_settings


def preflight(ex, machines, release, members=None) -> dict:
    """Every machine reachable, fresh, with Docker and etcd, and a base cloud config the install
    can extend (as one of the etcd ``members``, default all, or as a worker); else one error naming
    each problem. Returns address -> its ``Plan``."""
    def check(address):
        why = ex.reachable(address)
        if why:
            return f"{address}: unreachable ({why})", None
        facts = steps.facts(ex, address)
        problems = machine.fresh_problems(facts)
        if problems:
            return f"{address}: {', '.join(problems)}", None
        try:
            return None, plan_machine(ex, address, facts["user_data"], members or machines, release, "new")
        except PreflightError as e:
            return str(e).replace("; nothing was changed", ""), None

    found = dict(zip(machines, ex.parallel(check, machines)))
    problems = [p for p, _ in found.values() if p]
    if problems:
        installed = any("already" in p for p in problems)
        hint = (" setup-cluster never bootstraps etcd over a running cluster; use add-machine or upgrade."
                if installed else " Nothing was changed.")
        raise PreflightError("preflight failed: " + "; ".join(problems) + "." + hint)
    return {address: plan for address, (_, plan) in found.items()}


class Plan(NamedTuple):
    """What install writes on one machine: its final cloud config and where it goes."""
    user_data: str
    doc: dict


def plan_machine(ex, address, user_data, machines, release, state) -> Plan:
    """The machine's final cloud config: its own base extended (PreflightError on a conflict)."""
    base_doc = steps.base_of(ex, address, user_data)
    return Plan(user_data, machine.final_document(ex.cluster, address, machines, state, release, base_doc))


def install_machine(ex, address, plan: Plan, release) -> None:
    """Everything but starting: etcd's peer certificate, secrets, the final cloud config and its
    files, the images."""
    etcd_peers.deliver(ex, address)
    steps.install(ex, address, plan.doc, release, plan.user_data)


def start_etcd(s: Session, machines, workers=()) -> None:
    """Start etcd on the members (``machines``) and the etcd proxy on the ``workers``, and wait for
    etcd's quorum; the session then reaches it."""
    cluster = s.cluster
    s.ex.parallel(lambda a: s.ex.run(a, machine.start_etcd_command(), what="start etcd"), machines)
    if workers:
        s.ex.parallel(lambda a: s.ex.run(a, machine.start_etcd_proxy_command(), what="start the etcd proxy"),
                      list(workers))
    deadline = time.monotonic() + cluster.timeouts.healthy
    while True:
        try:
            s.connect_etcd(machines[0])
            return
        except RemoteError as e:
            if time.monotonic() > deadline:
                raise AirError(f"etcd did not form a healthy cluster within {cluster.timeouts.healthy} s ({e})") from None
            time.sleep(0.5)


def start_machine(ex, address) -> None:
    steps.start(ex, address)
    steps.wait_healthy(ex, address)
    steps.resume_os_updates(ex, address)


def wipe_all(ex, plans: dict) -> str:
    """Every machine back to freshly prepared; '' or what could not be wiped (one line)."""
    try:
        ex.parallel(lambda a: steps.wipe(ex, a, plans[a].user_data), list(plans))
        return ""
    except Exception as e:  # reported after the failure it cleans up after, never instead of it
        return f"; wiping failed too: {e}"


def setup(s: Session, machines) -> Release:
    """The install runbook: preflight, install everywhere, etcd, lock, record, start, balancer."""
    started = time.monotonic()
    cluster, ex = s.cluster, s.ex
    release = push.published_release(ex)
    say(f"setup-cluster: {cluster.name} on {', '.join(machines)}, release {release.id} "
        f"({', '.join(f'{i.component} {i.version}' for i in release.images)})")
    etcd_peers.ensure(cluster, machines)
    etcd_auth.ensure_root(cluster)
    members = roles.first_members(machines, cluster.etcd_members)
    workers = roles.workers(machines, members)
    if workers:
        say(f"setup-cluster: etcd members {', '.join(members)}; workers {', '.join(workers)}")
    plans = preflight(ex, machines, release, members)
    say("setup-cluster: installing secrets, images, units and cloud config on every machine")
    try:
        ex.parallel(lambda a: install_machine(ex, a, plans[a], release), machines)
        say("setup-cluster: starting etcd")
        start_etcd(s, members, workers)
        # From here on, the cluster's lock exists: nothing else may change it meanwhile.
        s.take_lock("setup-cluster")
        etcd_auth.setup(s, "setup-cluster")
    except Exception as failure:  # any failure, ours or not: nothing may stay half-installed
        if isinstance(failure, Halt):
            raise
        # Nothing serves yet: put every machine back to freshly prepared, so setup can simply run again.
        with ex.finishing():
            undone = wipe_all(ex, plans)
        said = ("every machine was wiped back to freshly prepared; fix the cause and run it again"
                if not undone else f"not every machine could be wiped back{undone}")
        if not isinstance(failure, AirError):  # a bug: its traceback stays, after what was done about it
            say(f"setup-cluster failed before anything started; {said}")
            raise
        raise AirError(f"setup-cluster failed before anything started: {failure}\n{said}") from None
    record = records.write_release(s.etcd, cluster, release, outcome="installed")
    records.add_history(s.etcd, cluster, record)
    apply_settings(s, "setup-cluster")
    finish(s, machines, release)
    say(f"setup-cluster: {cluster.name} is up on {len(machines)} machines in {time.monotonic() - started:.1f} s")
    return release


def finish(s: Session, machines, release) -> None:
    """The Air units started on every machine, healthy, and the balancer routing to them all."""
    say("setup-cluster: starting the Air units")
    try:
        s.ex.parallel(lambda a: start_machine(s.ex, a), machines)
    except AirError as failure:
        if isinstance(failure, Halt):
            raise
        raise AirError(f"setup-cluster: {failure}\netcd is up with every machine and release {release.id} is "
                       f"recorded, but not every machine is healthy, and the balancer was not changed; fix the "
                       f"cause and run `fab setup-cluster --cluster {s.cluster.name} --resume` to finish") from None
    balancer.Routers(s.ex).set(machines, reload=True)


def resume(s: Session, via) -> Release:
    """Finish a setup that stopped after etcd formed: record the release if none is, start, balancer."""
    s.connect_etcd(via)
    s.take_lock("setup-cluster --resume")
    etcd_auth.setup(s, "setup-cluster")
    members = s.etcd.members()
    if any(m.learner or not m.started for m in members):
        raise PreflightError("etcd has a member that has not started or is still a learner; "
                             "remove it first (fab remove-machine)")
    machines = list(roles.roles(s.cluster.machines, sorted(state.member_address(m) for m in members)))
    release, _ = records.read_release(s.etcd, s.cluster)
    if release is None:
        release = push.published_release(s.ex)
        record = records.write_release(s.etcd, s.cluster, release, outcome="installed")
        records.add_history(s.etcd, s.cluster, record)
        say(f"setup-cluster: recorded release {release.id}")
    apply_settings(s, "setup-cluster")
    finish(s, machines, release)
    say(f"setup-cluster: {s.cluster.name} is up on {', '.join(machines)} with release {release.id}")
    return release


@air_task(name="setup-cluster", help={"cluster": "target cluster",
                                      "machines": "comma-separated addresses (default: the cluster file's)",
                                      "resume": "finish a setup that stopped after etcd formed",
                                      "via": "with --resume: the member to reach etcd through",
                                      "json": "print the outcome as JSON"})
def setup_cluster(c, cluster=None, machines=None, resume_=False, via=None, json_=False):
    """Install the cluster on freshly prepared machines and start it."""
    target = cluster_of(cluster)
    chosen = check_addresses(machines, "--machines") if machines else list(target.machines)
    via = check_address(via, "--via") if via else None
    with session(target, etcd=False, changes=True) as s:
        release = resume(s, via) if resume_ else setup(s, chosen)
        serving = list(roles.roles(chosen, (state.member_address(m) for m in s.etcd.members()))) if s.etcd else chosen
    report({"cluster": target.name, "release": release.id, "machines": serving}, json_,
           f"release {release.id} on {', '.join(serving)}")


def check_admin(email, name) -> None:
    """create-admin's --email and --name: given, an address, and each one line of the three the
    admin command reads (a CR or a tab would reach the application inside the value)."""
    if not email or "@" not in email or not name or CONTROL.search(email) or CONTROL.search(name):
        raise ConfigError("--email (an address) and --name are required, each on one line without control "
                          "characters")


@air_task(name="create-admin", help={"cluster": "target cluster", "email": "admin's email",
                                     "name": "admin's name",
                                     "machine": "machine to run on (default: the first member that answers)"})
def create_admin(c, cluster=None, email=None, name=None, machine_=None):
    """Create the application's first admin; the password is read from a prompt or stdin."""
    target = cluster_of(cluster)
    if target.admin is None:
        raise ConfigError(f"{target.file}: admin: missing (how the application creates an admin)")
    check_admin(email, name)
    chosen = check_addresses(machine_, "--machine")[0] if machine_ else None
    password = getpass.getpass("Admin password: ") if sys.stdin.isatty() else sys.stdin.readline().rstrip("\n")
    if not password:
        raise ConfigError("an empty password is not accepted")
    with session(target, "create-admin") as s:
        address = live_member(s, chosen)
        result = s.ex.run(address, admin_command(target), stdin=f"{email}\n{name}\n{password}\n",
                          what="create the admin", check=False)
    out, err = (masked(text, password) for text in (result.stdout, result.stderr))
    if result.exited != 0:
        raise RemoteError(f"{address}: create the admin failed (exit {result.exited}): {tail(err or out)}")
    print(out.strip())


def admin_command(cluster) -> str:
    """The admin command, run in its component's container (reading email, name, password on stdin). Pure."""
    command = " ".join(q(word) for word in shlex.split(cluster.admin.command))
    return f"docker exec -i {q('air-' + cluster.admin.component)} {command}"


def masked(text: str, password: str) -> str:
    """``text`` with the password replaced, wherever the application echoed it. Pure."""
    return text.replace(password, "(password)")


def live_member(s: Session, chosen: str = None) -> str:
    """``chosen``, else the first machine of the cluster file, that is an etcd member and answers over SSH."""
    members = set(upgrade.member_machines(s.etcd))
    for address in [chosen] if chosen else s.cluster.machines:
        if address in members and not s.ex.reachable(address):
            return address
    which = chosen or f"no machine of {s.cluster.name}"
    raise PreflightError(f"{which} is not an etcd member that answers over SSH: nothing was run")
