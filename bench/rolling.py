"""Wall time of a rolling upgrade of 3 machines, beside its physical minimum and a no-op deploy.

Against the sandbox's `local` cluster (brought up, or reused, with 3
machines and 2 spares; installed when it is not). Each run commits a change
to one component of the sample application, builds and pushes it (timed
apart), then times the rollout (``tasks.upgrade.Rollout``) to that release
under the cluster's deploy lock, as ``fab deploy`` does: pull, drain, polite
stop, install, start, health check and re-add, one machine after another.

The physical minimum is what the machines themselves need: on each machine
in turn, timed there (so SSH round trips are not counted), `systemctl stop`
of Air units, their start (``machine.start_command``: with the unit files
unchanged, no daemon-reload), and the health loop of
``machine.health_command``; the sum over the machines. It is printed twice:
for the changed component's unit only (the only one an upgrade restarts;
the stricter figure) and for every Air unit of the machine. Each machine is taken
out of the balancer around its own measurement, untimed, so nothing is
served by a stopped machine. The no-op deploy is `fab deploy` with nothing
new, as a user runs it. Last, the balancer alone: over one open connection,
how long a machine takes to leave (drain through haproxy's runtime API, no
connection open) and to rejoin (ready, until haproxy reports it UP and a
request through the balancer lands on it). Figures only; nothing is asserted
about time.

    python bench/rolling.py [--runs N] [--component NAME]
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import re
import statistics
import time

from common import fab  # first: it puts the project root on sys.path
from tasks.runbooks import balancer
from tasks.model import cluster as cluster_config
from tasks.runbooks import install
from tasks.commands import machine
from tasks.runbooks.publish import publish
from sandbox import testbed as sb
from tasks.runbooks import upgrade
from tasks.net.executor import Executor
from tasks.net.session import session
from tasks.runbooks import records

UPGRADED = re.compile(r"^upgrade: (\S+) runs \S+, restarted .* \(([\d.]+) s\)$", re.M)


def ensure_installed(cluster) -> str:
    """The cluster serving from its machines; installs it (as the tests' fixture does) when it has no release."""
    try:
        with session(cluster) as s:
            if records.read_release(s.etcd, cluster)[0] is not None:
                return "reused"
    except Exception:  # no etcd answering: not installed
        pass
    sb.reset_machines(list(cluster.machines))
    with session(cluster, etcd=False) as s:
        publish(s.ex, cluster.build.host, cluster.build.branch)
    with session(cluster, etcd=False) as s:
        install.setup(s, list(cluster.machines))
    return "installed"


def physical(cluster, address, components) -> dict:
    """Seconds of stop and start of the units of ``components`` (those an upgrade restarts) and of
    the whole machine's health check, timed on the machine itself."""
    script = " && ".join([
        "t0=$(date +%s.%N)", machine.stop_command(cluster, components),
        "t1=$(date +%s.%N)", machine.start_command(cluster, components),
        "t2=$(date +%s.%N)", f"( {machine.health_command(cluster, cluster.timeouts.healthy)} )",
        "t3=$(date +%s.%N)", 'echo "$t0 $t1 $t2 $t3"'])
    everyone = list(cluster.machines)
    with Executor(cluster) as ex:
        routers = balancer.Routers(ex)
        routers.set([m for m in everyone if m != address])  # drained, as an upgrade does
        try:
            out = ex.run(address, script, what="stop, start and health check",
                         deadline=cluster.timeouts.stop + cluster.timeouts.healthy + 120).stdout
        finally:
            routers.set(everyone)
    t0, t1, t2, t3 = (float(x) for x in out.split()[-4:])
    return {"stop": t1 - t0, "start": t2 - t1, "health": t3 - t2, "total": t3 - t0}


def leave_and_rejoin(cluster, address) -> dict:
    """Seconds for ``address`` to leave the balancer (drained: the call returns) and to rejoin it
    (readied: until haproxy says UP and a request through the balancer is answered by it)."""
    everyone = list(cluster.machines)
    with Executor(cluster) as ex:
        routers = balancer.Routers(ex)
        started = time.monotonic()
        routers.set([m for m in everyone if m != address])
        leave = time.monotonic() - started
        started = time.monotonic()
        routers.set(everyone)
        while not all(s.status.startswith("UP") for s in routers.servers() if s.machine == address):
            time.sleep(0.05)
        up = time.monotonic() - started
        tries = 0
        while answered_by(cluster) != address and tries < 100:  # round robin: a few requests at most
            tries += 1
        served = time.monotonic() - started if tries < 100 else float("nan")
    return {"leave": leave, "up": up, "served": served}


def answered_by(cluster) -> str:
    connection = http.client.HTTPConnection(cluster.balancer.host, cluster.balancer.http_port, timeout=5)
    try:
        connection.request("GET", "/version")
        return json.loads(connection.getresponse().read())["machine"]
    finally:
        connection.close()


def rolling_run(cluster, component: str) -> dict:
    """Commit, build and push a change to ``component``, then time the rolling upgrade to it."""
    sb.commit_change(sb.Change(component))
    started = time.monotonic()
    with session(cluster, "bench/rolling.py") as s:
        published = publish(s.ex, cluster.build.host, cluster.build.branch)
        release, built = published.release, published.built
        build_push = time.monotonic() - started
        pushed = [step.component for step in published.steps if step.decision.changed]
        current, _ = records.read_release(s.etcd, cluster)
        said = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stderr(said):
            rollout = upgrade.Rollout(s, release, current)
            planned = time.monotonic() - started
            changed = rollout.apply_recorded(branch=cluster.build.branch, commit=built["commit"])
        rolling = time.monotonic() - started
    per_machine = {m: float(s) for m, s in UPGRADED.findall(said.getvalue())}
    return {"build_push": build_push, "pushed": pushed, "rolling": rolling, "changed": changed,
            "per_machine": per_machine, "release": release.id, "planned": planned}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="rolling upgrades and physical measurements (default 3)")
    parser.add_argument("--component", default="static_website", help="component changed (default static_website)")
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op deploys (default 3)")
    args = parser.parse_args()

    sb.bring_up(3, 2)
    cluster = cluster_config.load("local")
    how = ensure_installed(cluster)
    machines = list(cluster.machines)
    overhead = fab("--list").seconds

    runs, minimums, wholes = [], [], []
    for _ in range(args.runs):
        runs.append(rolling_run(cluster, args.component))
        # One machine after another: the changed component's unit only (what the upgrade restarts),
        # then every Air unit of the machine (the machine's own stop, start and health check).
        minimums.append({m: physical(cluster, m, [args.component]) for m in machines})
        wholes.append({m: physical(cluster, m, None) for m in machines})
    noops = [fab("deploy", "--cluster", "local").seconds for _ in range(args.noop_runs)]
    moves = [leave_and_rejoin(cluster, m) for _ in range(args.runs) for m in machines]

    print(f"sandbox `local`, {len(machines)} machines ({how}); {args.runs} run(s), each a change to "
          f"{args.component}, stop timeout {cluster.timeouts.stop} s")
    for i, (run, minimum) in enumerate(zip(runs, minimums), 1):
        floor = sum(m["total"] for m in minimum.values())
        print(f"run {i}: build+push {run['build_push']:5.1f} s (pushed {', '.join(run['pushed']) or 'nothing'}); "
              f"rolling upgrade {run['rolling']:5.1f} s; physical minimum {floor:5.1f} s; "
              f"ratio {run['rolling'] / floor:4.2f}")
        upgrading = sum(run["per_machine"].values())
        print(f"  of which: facts read and plan {run['planned']:4.1f} s; machines' upgrades {upgrading:4.1f} s; "
              f"the rest (pull and stage, drains, records) {run['rolling'] - run['planned'] - upgrading:4.1f} s")
        for m in machines:
            p = minimum[m]
            upgraded = run["per_machine"].get(m)
            print(f"  {m:15} upgrade {upgraded if upgraded is not None else float('nan'):5.1f} s   "
                  f"on the machine: stop {p['stop']:4.1f} + start {p['start']:4.1f} + health {p['health']:4.1f}"
                  f" = {p['total']:4.1f} s")
    rolling = statistics.median(r["rolling"] for r in runs)
    floor = statistics.median(sum(m["total"] for m in minimum.values()) for minimum in minimums)
    whole = statistics.median(sum(m["total"] for m in minimum.values()) for minimum in wholes)
    print(f"median: rolling upgrade {rolling:5.1f} s")
    print(f"  physical minimum, the changed unit only (what the upgrade restarts): {floor:5.1f} s, "
          f"ratio {rolling / floor:4.2f}")
    print(f"  physical minimum, every Air unit of each machine stopped, started and checked: {whole:5.1f} s, "
          f"ratio {rolling / whole:4.2f}")
    print(f"no-op `fab deploy` (nothing new), {len(noops)} runs: "
          + ", ".join(f"{s:4.1f} s" for s in noops) + f"; median {statistics.median(noops):4.1f} s "
          f"(includes starting `fab`: `fab --list` takes {overhead:.1f} s)")
    print(f"balancer, {len(moves)} times a machine out and back in over one connection (runtime API, no reload): "
          f"leave median {statistics.median(m['leave'] for m in moves):5.2f} s "
          f"(max {max(m['leave'] for m in moves):4.2f}); rejoin until haproxy says UP median "
          f"{statistics.median(m['up'] for m in moves):5.2f} s (max {max(m['up'] for m in moves):4.2f}), "
          f"until it answers a request through the balancer median "
          f"{statistics.median(m['served'] for m in moves):5.2f} s (max {max(m['served'] for m in moves):4.2f})")


if __name__ == "__main__":
    main()
