"""Wall time of a rolling upgrade of 3 machines, beside its physical minimum, a no-op deploy and `fab`'s start.

Against the sandbox's `local` cluster (brought up, or reused, with 3
machines and 2 spares; installed when it is not). Each run commits a change
to one component of the sample application, builds and pushes it (timed
apart), then times the rollout (``tasks.upgrade.Rollout``) to that release
under the cluster's deploy lock, as ``fab deploy`` does: pull, drain, polite
stop, install, start, health check and re-add, one machine after another.

The floor is what the rollout cannot do without, each part timed where it
happens (so no SSH round trip is counted): before each run's rollout, the
new release's changed image pulled on every machine at once (the slowest
machine's pull; the image is removed again, so the rollout pulls it too);
then, machine by machine, the runtime-API message that drains it (on the
balancer), `systemctl stop` and start of the changed unit and its health
loop (``machine.health_command``; on the machine) and the message that
readies it until haproxy says UP (on the balancer). The older figure, stop,
start and health of every Air unit of each machine, is printed beside it. The no-op deploy is `fab deploy` with nothing
new, as a user runs it. Last, the balancer alone: over one open connection,
how long a machine takes to leave (drain through haproxy's runtime API, no
connection open) and to rejoin (ready, until haproxy reports it UP and a
request through the balancer lands on it). Figures only; nothing is asserted
about time.

    python bench/rolling.py [--runs N] [--component NAME] [--json]

``--json`` prints one JSON object instead: rolling_s, floor_s, ratio, noop_deploy_s, fab_list_s,
import_fabric_s, drain_idle_s, rejoin_s (medians).
"""
from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import re
import statistics
import subprocess
import sys
import time

from common import ROOT, fab  # first: it puts the project root on sys.path
from tasks.commands import haproxy
from tasks.commands.shell import q
from tasks.runbooks import balancer
from tasks.model import cluster as cluster_config
from tasks.runbooks import install
from tasks.commands import machine
from tasks.runbooks.publish import publish
from sandbox import testbed as sb
from tasks.runbooks import upgrade
from tasks.net.executor import Executor
from tasks.net.trips import RoundTrips
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
    the health check an upgrade makes (those first, then every component), timed on the machine itself."""
    script = " && ".join([
        "t0=$(date +%s.%N)", machine.stop_command(cluster, components),
        "t1=$(date +%s.%N)", machine.start_command(cluster, components),
        "t2=$(date +%s.%N)", f"( {machine.health_command(cluster, cluster.timeouts.healthy, first=components)} )",
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


def remote_seconds(ex, host: str, script: str, deadline: int = 300) -> float:
    """Seconds ``script`` took on ``host``, timed there."""
    out = ex.run(host, f"t0=$(date +%s.%N) && {script} && t1=$(date +%s.%N) && echo \"$t0 $t1\"",
                 what="timed on the host", deadline=deadline).stdout.split()
    return float(out[-1]) - float(out[-2])


def pulled(cluster, release, component: str) -> float:
    """Seconds of the pull of ``release``'s image of ``component`` on every machine at once (the
    slowest machine's, timed there); the image is removed again, so a rollout pulls it as well."""
    image = next(i for i in release.images if i.component == component)
    with Executor(cluster) as ex:
        took = ex.parallel(lambda m: remote_seconds(ex, m, machine.pull_command(cluster, release, [component]),
                                                    cluster.timeouts.pull), list(cluster.machines))
        ex.parallel(lambda m: ex.run(m, f"docker rmi {q(cluster.pinned_ref(image))} >/dev/null", check=False),
                    list(cluster.machines))
    return max(took)


def balancer_moves(cluster, address) -> dict:
    """Seconds, on the balancer, of the message draining ``address`` (no connection open), and of
    the message readying it until haproxy says UP."""
    up = (f"until {haproxy.stat_command(cluster)} | awk -F, -v m={q(address)} "
          f"'$2 == m && $18 !~ /^UP/ {{ down = 1 }} END {{ exit down }}'; do sleep 0.01; done")
    with Executor(cluster) as ex:
        host = cluster.balancer.host
        drain = remote_seconds(ex, host, haproxy.api_command(cluster, haproxy.set_state(cluster, [address], "drain")))
        ready = remote_seconds(ex, host, haproxy.api_command(cluster, haproxy.set_state(cluster, [address], "ready"))
                               + " && " + up)
    return {"drain": drain, "ready": ready}


def floor_of(cluster, pull: float, component: str) -> dict:
    """The floor of one rollout whose pull took ``pull`` s: per machine, drain message + stop, start
    and health of the changed unit + ready message until UP."""
    per_machine = {}
    for m in cluster.machines:
        moves = balancer_moves(cluster, m)
        unit = physical(cluster, m, [component])
        per_machine[m] = {**moves, "unit": unit["total"], "total": moves["drain"] + unit["total"] + moves["ready"]}
    return {"pull": pull, "machines": per_machine, "total": pull + sum(m["total"] for m in per_machine.values())}


START_UP_RUNS = 15  # each start is 0.2-0.3 s, and on a shared host single starts vary by a third


def start_up(runs: int = START_UP_RUNS) -> dict:
    """Medians of `fab --list` and of `python -c "import fabric"`, measured side by side."""
    lists, imports = [], []
    for _ in range(runs):
        lists.append(fab("--list").seconds)
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", "import fabric"], cwd=ROOT, check=True)
        imports.append(time.monotonic() - started)
    return {"fab_list_s": statistics.median(lists), "import_fabric_s": statistics.median(imports)}


def leave_and_rejoin(cluster, address) -> dict:
    """Seconds for ``address`` to leave the balancer (drained: the call returns) and to rejoin it
    (readied: until haproxy says UP and a request through the balancer is answered by it)."""
    everyone = list(cluster.machines)
    with Executor(cluster) as ex:
        routers = balancer.Routers(ex)
        routers.listed()  # the connection open and the routers file read: what a rollout has when it drains
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


def rolling_run(cluster, component: str, before_rollout=None) -> dict:
    """Commit, build and push a change to ``component``, then time the rolling upgrade to it;
    ``before_rollout(release)``, when given, runs between the two (untimed) and its answer is kept."""
    sb.commit_change(sb.Change(component))
    started = time.monotonic()
    with session(cluster, "bench/rolling.py") as s:
        taking = [t for t in s.ex.trips.timeline() if t.host in cluster.machines]  # the lock's and logins'
        published = publish(s.ex, cluster.build.host, cluster.build.branch)
        release, built = published.release, published.built
        build_push = time.monotonic() - started
        first = before_rollout(release) if before_rollout else None
        s.ex.trips = RoundTrips()  # from here on, the rollout's own round trips
        pushed = [step.component for step in published.steps if step.decision.changed]
        s.etcd.members_ahead()  # as `fab deploy` does: the member list asked while other work goes on
        current, _ = records.read_release(s.etcd, cluster)
        said = io.StringIO()
        started = time.monotonic()
        with contextlib.redirect_stderr(said):
            rollout = upgrade.Rollout(s, release, current)
            planned = time.monotonic() - started
            changed = rollout.apply_recorded(branch=cluster.build.branch, commit=built["commit"])
        rolling = time.monotonic() - started
        trips = s.ex.trips
    per_machine = {m: float(s) for m, s in UPGRADED.findall(said.getvalue())}
    return {"build_push": build_push, "pushed": pushed, "rolling": rolling, "changed": changed,
            "per_machine": per_machine, "release": release.id, "planned": planned, "before": first,
            "trips": trips, "taking": taking}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="rolling upgrades and floors (default 5)")
    parser.add_argument("--component", default="static_website", help="component changed (default static_website)")
    parser.add_argument("--noop-runs", type=int, default=5, help="no-op deploys (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON object of the medians")
    args = parser.parse_args()

    sb.bring_up(3, 2)
    cluster = cluster_config.load("local")
    how = ensure_installed(cluster)
    machines = list(cluster.machines)
    starts = start_up()

    runs, floors, wholes = [], [], []
    for _ in range(args.runs):
        run = rolling_run(cluster, args.component, lambda release: pulled(cluster, release, args.component))
        runs.append(run)
        floors.append(floor_of(cluster, run["before"], args.component))
        wholes.append({m: physical(cluster, m, None) for m in machines})
    fab("deploy", "--cluster", "local")  # the release record then keeps its build inputs
    noops = [fab("deploy", "--cluster", "local").seconds for _ in range(args.noop_runs)]
    moves = [leave_and_rejoin(cluster, m) for _ in range(args.runs) for m in machines]

    rolling = statistics.median(r["rolling"] for r in runs)
    floor = statistics.median(f["total"] for f in floors)
    figures = {"rolling_s": rolling, "floor_s": floor, "ratio": rolling / floor,
               "noop_deploy_s": statistics.median(noops), **starts,
               "drain_idle_s": statistics.median(m["leave"] for m in moves),
               "rejoin_s": statistics.median(m["up"] for m in moves)}
    if args.json:
        print(json.dumps({k: round(v, 3) for k, v in figures.items()}))
        return
    print(f"sandbox `local`, {len(machines)} machines ({how}); {args.runs} run(s), each a change to "
          f"{args.component}, stop timeout {cluster.timeouts.stop} s")
    for i, (run, fl) in enumerate(zip(runs, floors), 1):
        print(f"run {i}: build+push {run['build_push']:5.1f} s (pushed {', '.join(run['pushed']) or 'nothing'}); "
              f"rolling upgrade {run['rolling']:5.2f} s; floor {fl['total']:5.2f} s; ratio {run['rolling'] / fl['total']:4.2f}; "
              f"{run['trips'].total()} round trips")
        upgrading = sum(run["per_machine"].values())
        print(f"  rollout: facts read and plan {run['planned']:4.2f} s; machines' upgrades {upgrading:4.2f} s; "
              f"the rest (pull and stage, drains, records) {run['rolling'] - run['planned'] - upgrading:4.2f} s")
        print(f"  floor: pull on every machine at once {fl['pull']:4.2f} s, then:")
        for m in machines:
            p, upgraded = fl["machines"][m], run["per_machine"].get(m)
            print(f"  {m:15} upgrade {upgraded if upgraded is not None else float('nan'):5.2f} s   floor: drain "
                  f"{p['drain']:5.3f} + stop, start, healthy {p['unit']:5.2f} + ready until UP {p['ready']:5.3f} "
                  f"= {p['total']:5.2f} s   (round trips to it: {run['trips'].of(m)})")
    whole = statistics.median(sum(m["total"] for m in w.values()) for w in wholes)
    print(f"median: rolling upgrade {rolling:5.2f} s; floor {floor:5.2f} s, ratio {rolling / floor:4.2f}")
    print(f"  (every Air unit of each machine stopped, started and checked: {whole:5.2f} s)")
    print(f"no-op `fab deploy` (nothing new), {len(noops)} runs: " + ", ".join(f"{s:4.2f} s" for s in noops)
          + f"; median {figures['noop_deploy_s']:4.2f} s")
    print(f"`fab --list` {starts['fab_list_s']:4.2f} s, `python -c 'import fabric'` {starts['import_fabric_s']:4.2f} s "
          f"(ratio {starts['fab_list_s'] / starts['import_fabric_s']:4.2f}), medians of {START_UP_RUNS}")
    print(f"balancer, {len(moves)} times a machine out and back in over one connection (runtime API, no reload): "
          f"leave median {figures['drain_idle_s']:5.3f} s (max {max(m['leave'] for m in moves):5.3f}); "
          f"rejoin until haproxy says UP median {figures['rejoin_s']:5.3f} s "
          f"(max {max(m['up'] for m in moves):5.3f}), until it answers a request through the balancer median "
          f"{statistics.median(m['served'] for m in moves):5.3f} s")


if __name__ == "__main__":
    main()
