"""A rolling upgrade, a no-op deploy and `fab status` with the sandbox on the LAN and behind a WAN.

Against the sandbox's `local` cluster (installed when it is not). Each figure is taken first with
the sandbox reached directly, then with it ``--rtt-ms`` away: the sandbox's latency relay
(``sandbox/relay.py``, ``AIR_SANDBOX_RTT_MS``) carries every connection from this machine,
SSH and the registry's alike. The rolling upgrade is ``bench/rolling.py``'s (a change to one
component, built and pushed untimed, then the rollout timed); the no-op deploy and `fab status`
are run as an operator runs them. Round trips are the executor's counts
(``tasks.net.trips``) from the lock on, the build and push apart (``round_trips``): per machine,
the most commands any machine answered for itself; fixed, the waits of everything else. Figures
only; nothing is asserted about time. ``--list`` prints instead every round trip of one no-op
deploy and of one rollout (its lock and logins first) at the given RTT, in order, each with when it
was counted and what it was (``RoundTrips.timeline``): what to shorten next.

    python bench/wan.py [--rtt-ms 50] [--runs N] [--json] [--list]
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import fab  # first: it puts the project root on sys.path
from rolling import ensure_installed, rolling_run
from sandbox import testbed as sb
from tasks.model import cluster as cluster_config
from tasks.net.session import session
from tasks.net.trips import waits
from tasks.runbooks import balancer, deploy, records, steps

COMPONENT = "static_website"


def figures(cluster, runs: int) -> dict:
    """Medians of the rollout, the no-op deploy and `fab status`, and the rollout's round trips."""
    rollouts = [rolling_run(cluster, COMPONENT) for _ in range(runs)]
    fab("deploy", "--cluster", "local")  # the release record then keeps its build inputs
    noops = [fab("deploy", "--cluster", "local").seconds for _ in range(runs)]
    statuses = [fab("status", "--cluster", "local", ok=(0, 1)).seconds for _ in range(runs)]
    trips = rollouts[-1]["trips"]
    return {"rolling_s": statistics.median(r["rolling"] for r in rollouts),
            "noop_deploy_s": statistics.median(noops), "status_s": statistics.median(statuses),
            "round_trips": {**round_trips(cluster, rollouts[-1]), "total": trips.total(),
                            "hosts": trips.summary()["hosts"]}}


def round_trips(cluster, run: dict) -> dict:
    """A rollout's round trips in the terms of its targets. ``per_machine``: the most commands any
    machine answered for itself (its preparation and its upgrade: not the facts read and the OS
    updates resumed, sent to every machine at once); ``balancer_changes``: the balancer's commands.
    ``fixed``: the waits, one after the other, of everything else from the lock on (round trips
    that overlap cost one wait; one that overlaps a machine's own command or a balancer change costs
    none; the lease's renewals, a thread's of their own, are not waited on)."""
    machines = list(cluster.machines)
    shared = (steps.READ_RELEASE_FACTS, steps.RESUME_OS_UPDATES)

    def changes(trip) -> bool:
        return trip.kind == "command" and trip.host == cluster.balancer.host and trip.what.startswith(balancer.CHANGE)

    def owned(trip) -> bool:  # a machine's own command, or a balancer change
        return changes(trip) or trip.kind == "command" and trip.host in machines and not trip.what.startswith(shared)

    def waited(trips) -> list:
        return [t for t in trips if not t.what.endswith("/lease/keepalive")]
    taking, rollout = waited(run["taking"]), waited(run["trips"].timeline())
    return {"per_machine": max(sum(t.host == m and owned(t) for t in rollout) for m in machines),
            "balancer_changes": sum(map(changes, rollout)),
            "fixed": sum(not any(owned(t) for t in group) for group in waits(taking) + waits(rollout))}


def noop_deploy_trips(cluster) -> list:
    """The round trips of one no-op deploy, run in this process as `fab deploy` runs it (its hooks
    apart: the sandbox's cluster has none)."""
    host = cluster.build.host
    with session(cluster, f"deploy {cluster.build.branch}", ahead=[host], reads=records.snapshot_reads(cluster),
                 registry=True) as s:
        deploy.deploy_release(s, host, None)
    return s.ex.trips.timeline()  # the lock's release included


def print_timeline(title: str, trips: list) -> None:
    print(f"{title}: {len(trips)} round trips")
    for trip in trips:
        print(f"  {trip.at - trip.took:6.3f} -> {trip.at:6.3f} s  {trip.host:17} {trip.kind:8} {trip.what}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rtt-ms", type=float, default=50, help="the WAN's round-trip time (default 50)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each figure, at each RTT (default 3)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--list", action="store_true", help="print the round trips of one no-op deploy and one "
                                                            "rollout at --rtt-ms, in order")
    args = parser.parse_args()

    sb.bring_up(3, 2)
    cluster = cluster_config.load("local")
    ensure_installed(cluster)
    if args.list:
        try:
            sb.set_rtt(args.rtt_ms)
            fab("deploy", "--cluster", "local")  # the release record then keeps its build inputs
            print_timeline(f"no-op deploy at {args.rtt_ms:g} ms", noop_deploy_trips(cluster))
            run = rolling_run(cluster, COMPONENT)
            print_timeline(f"its lock and logins at {args.rtt_ms:g} ms", run["taking"])
            print_timeline(f"rollout at {args.rtt_ms:g} ms", run["trips"].timeline())
            print(f"in the targets' terms: {json.dumps(round_trips(cluster, run))}")
        finally:
            sb.set_rtt(0)
        return
    try:
        sb.set_rtt(0)
        lan = figures(cluster, args.runs)
        sb.set_rtt(args.rtt_ms)
        wan = figures(cluster, args.runs)
    finally:
        sb.set_rtt(0)
    result = {"rtt_ms": args.rtt_ms, "rolling_s": wan["rolling_s"], "rolling_lan_s": lan["rolling_s"],
              "noop_deploy_s": wan["noop_deploy_s"], "noop_deploy_lan_s": lan["noop_deploy_s"],
              "status_s": wan["status_s"], "status_lan_s": lan["status_s"],
              "round_trips": {k: wan["round_trips"][k] for k in ("per_machine", "balancer_changes", "fixed")}}
    if args.json:
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))
        return
    print(f"sandbox `local`, 3 machines; medians of {args.runs} runs; WAN = {args.rtt_ms:g} ms RTT "
          f"through the sandbox's relay")
    print(f"{'':28} {'LAN':>8} {'WAN':>8} {'WAN - LAN':>10}")
    for name, key in (("rolling upgrade (rollout)", "rolling_s"), ("no-op fab deploy", "noop_deploy_s"),
                      ("fab status", "status_s")):
        print(f"{name:28} {lan[key]:7.2f}s {wan[key]:7.2f}s {wan[key] - lan[key]:+9.2f}s")
    for label, data in (("LAN", lan), ("WAN", wan)):
        rt = data["round_trips"]
        print(f"round trips of a rollout ({label}): {rt['per_machine']} per machine at most and "
              f"{rt['balancer_changes']} balancer changes; {rt['fixed']} fixed waits; {rt['total']} requests in all: "
              + "; ".join(f"{h} {k}" for h, k in rt["hosts"].items()))


if __name__ == "__main__":
    main()
