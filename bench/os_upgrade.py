"""Wall time of `fab os-upgrade` on the sandbox: per machine rebooted, and requests failed meanwhile.

Against the sandbox's `local` cluster (brought up, or reused; installed when it is not). Each
run stages an OS update on every machine (`fab sandbox.os-update`: the update-engine stand-in)
and runs `fab os-upgrade --cluster local --json` as an operator does, with a probe sending GET
/version through the balancer every 0.05 s. Printed per run: the whole command's wall time,
each machine's time from its gate to back in the balancer (leadership handed away when it
leads, drained, rebooted, SSH back on a new boot, etcd member healthy, every Air unit healthy,
back in), and the probe's failed requests; then the medians. A sandbox machine's reboot is its
container's restart (no firmware, no kernel): a real machine adds its own boot time to each.
Figures only; nothing is asserted.

    python bench/os_upgrade.py [--runs N]
"""
from __future__ import annotations

import argparse
import json
import statistics

from common import Probe, fab, summary  # first: it puts the project root on sys.path
from rolling import ensure_installed
from sandbox import testbed as sb
from tasks.model import cluster as cluster_config


def one_run(cluster) -> dict:
    """Stage an update on every machine, then `fab os-upgrade`: its figures."""
    staged = sb.stage_os_update(list(cluster.machines))
    with Probe(cluster) as probe:
        ran = fab("os-upgrade", "--cluster", cluster.name, "--json")
    rebooted = json.loads(ran.stdout)["rebooted"]
    assert {r["machine"]: r["to"] for r in rebooted} == staged, (rebooted, staged)  # the bench measured what it meant
    return {"seconds": ran.seconds, "machines": rebooted, "sent": probe.sent, "failed": probe.failed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="OS upgrades of every machine (default 3)")
    args = parser.parse_args()
    sb.bring_up()
    cluster = cluster_config.load("local")
    how = ensure_installed(cluster)
    print(f"sandbox `local`, {len(cluster.machines)} machines ({how}); {args.runs} run(s), each an OS update "
          f"staged on every machine, then `fab os-upgrade`", flush=True)
    runs = []
    for i in range(1, args.runs + 1):
        run = one_run(cluster)
        runs.append(run)
        print(f"run {i}: fab os-upgrade {run['seconds']:5.1f} s; probe: {run['failed']} of {run['sent']} requests "
              f"failed", flush=True)
        for m in run["machines"]:
            print(f"  {m['machine']:15} OS {m['from']} -> {m['to']}: {m['seconds']:5.1f} s", flush=True)
    per_machine = [m["seconds"] for run in runs for m in run["machines"]]
    print(summary("per machine (gate to back in the balancer)", per_machine, width=44,
                  note=f"{len(per_machine)} reboots"))
    print(summary("whole fab os-upgrade", [r["seconds"] for r in runs], width=44, note=f"{len(runs)} runs"))
    print(f"requests failed: {sum(r['failed'] for r in runs)} of {sum(r['sent'] for r in runs)} "
          f"(median per run {statistics.median(r['failed'] for r in runs)})")


if __name__ == "__main__":
    main()
