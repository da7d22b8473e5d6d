"""Scale: what setup, rollouts, a no-op deploy and `fab status` cost for 3, 6 and 12 machines.

On the sandbox (brought up with the largest size, no spares), for each size: its machines made
fresh, then `fab setup-cluster`; a change built (untimed), then `fab deploy --max-unavailable 1`
(its images found in the build cache, pushed, every machine rolled); another change, then `fab
deploy --max-unavailable 25%`; a no-op `fab deploy`; `fab status`. Each is run as an
operator runs it, in its own process: its wall time, the SSH connections it opened (its
``--json`` round trips, where it reports them) and the process's peak memory (its maximum RSS)
are printed. The cluster's etcd members are capped by the cluster file's default (5).

With ``--model``: a straight line fitted on those figures for each task, projected to 50, 200 and
1000 machines; and the planner and the status view alone on fakes (``tests/unit/fakes.py``'s
executor and etcd, no network) at 100 and 1000 machines: a whole rollout planned and carried out
(facts parsed, every machine's documents built, groups planned, every command composed) and the
status view's warnings and table, each with the tool's own CPU time and peak Python memory, so
that one can see nothing grows faster than the number of machines. Figures only; nothing is
asserted.

    python bench/scale.py [--sizes 3,6,12] [--model] [--model-only] [--json]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from tempfile import TemporaryDirectory

from common import ROOT  # first: it puts the project root on sys.path
from sandbox import testbed as sb

TASKS = ("setup", "rolling_one", "rolling_25", "noop_deploy", "status")
PROJECTED = (50, 200, 1000)
MODEL_SIZES = (100, 1000)


# ---------------------------------------------------------------- one operator process

def operator(args, env: dict, ok=(0,)) -> dict:
    """`fab ARGS` in its own process: wall seconds, peak RSS (MiB, its own: waited for with
    ``os.wait4``), its --json answer (if any)."""
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "fabric", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **env})
    said: dict = {}
    readers = [threading.Thread(target=lambda name=name: said.__setitem__(name, getattr(proc, name).read()))
               for name in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.monotonic() - started
    for reader in readers:
        reader.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in ok:
        sys.exit(f"fab {' '.join(args)} failed ({proc.returncode}):\n{said['stderr'].decode().strip()}")
    try:
        answer = json.loads(said["stdout"]) if "--json" in args else None
    except ValueError:
        answer = None
    return {"seconds": seconds, "peak_mib": round(usage.ru_maxrss / 1024, 1), "answer": answer}


def logins(answer) -> int | None:
    """SSH connections a task opened, from its --json round trips (None when it reports none)."""
    trips = (answer or {}).get("round_trips")
    if not trips:
        return None
    return sum(kinds.get("login", 0) for kinds in trips["hosts"].values())


def clusters_for(folder: Path, machines: list) -> dict:
    """A clusters folder whose `local` has ``machines`` (the sandbox's state included as is): the
    environment that points `fab` at it."""
    text = (ROOT / "clusters" / "local.yaml").read_text()
    state = Path(os.environ.get("AIR_SANDBOX_STATE", ROOT / ".sandbox")).resolve()
    text = text.replace("include: ../.sandbox/cluster.yaml", f"include: {state / 'cluster.yaml'}")
    (folder / "local.yaml").write_text(text + "machines: [" + ", ".join(machines) + "]\n")
    return {"AIR_CLUSTERS_DIR": str(folder)}


def built_change(env: dict, component: str) -> None:
    """A change to ``component`` committed and built (untimed): the deploy then timed finds its
    images in the build server's cache and pushes them."""
    sb.commit_change(sb.Change(component))
    operator(["build", "--cluster", "local"], env)


def measure_size(machines: list, env: dict) -> dict:
    sb.reset_machines(machines)
    figures = {"setup": operator(["setup-cluster", "--cluster", "local", "--json"], env)}
    for task, limit in (("rolling_one", "1"), ("rolling_25", "25%")):
        built_change(env, "static_website")
        figures[task] = operator(["deploy", "--cluster", "local", "--max-unavailable", limit, "--json"], env)
    figures["noop_deploy"] = operator(["deploy", "--cluster", "local", "--json"], env)
    figures["status"] = operator(["status", "--cluster", "local", "--json"], env, ok=(0, 1))
    status = figures["status"]["answer"]
    return {"tasks": {task: {"seconds": round(f["seconds"], 2), "peak_mib": f["peak_mib"],
                             "logins": logins(f["answer"])} for task, f in figures.items()},
            "status_view": status}


def measure(sizes) -> dict:
    largest = max(sizes)
    info = sb.bring_up(largest, 0)
    addresses = [m["address"] for m in info["machines"] if not m["spare"]]
    results = {}
    with TemporaryDirectory() as tmp:
        for size in sizes:
            env = clusters_for(Path(tmp), addresses[:size])
            measured = measure_size(addresses[:size], env)
            results[size] = measured["tasks"]
            print_size(size, results[size])
    return results, measured["status_view"]


def print_size(size: int, figures: dict) -> None:
    print(f"{size} machines:", flush=True)
    for task in TASKS:
        f = figures[task]
        said = f"{f['logins']} connections" if f["logins"] is not None else "connections not reported"
        print(f"  {task:12} {f['seconds']:7.2f} s   peak {f['peak_mib']:6.1f} MiB   {said}", flush=True)


# ---------------------------------------------------------------- the model

def fitted(points: dict) -> tuple:
    """(a, b) of the least-squares line seconds = a + b * machines through ``points``."""
    xs, ys = list(points), list(points.values())
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    b = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / spread if spread else 0.0
    return mean_y - b * mean_x, b


def projection(results: dict) -> dict:
    """task -> {machines: projected seconds} for ``PROJECTED``, from the measured sizes."""
    out = {}
    for task in TASKS:
        a, b = fitted({size: figures[task]["seconds"] for size, figures in results.items()})
        out[task] = {n: round(a + b * n, 1) for n in PROJECTED}
    return out


def addresses(size: int) -> list:
    """``size`` machine addresses for the runs on fakes (10.1.0.1, ...: none is the balancer's)."""
    return [f"10.{1 + i // 62500}.{i // 250 % 250}.{i % 250 + 1}" for i in range(size)]


def fake_rollout(size: int) -> dict:
    """A whole rollout of ``size`` machines planned and carried out on the unit tests' fakes:
    the tool's own CPU seconds and peak Python memory (MiB), for planning and for carrying out."""
    sys.path.insert(0, str(ROOT / "tests"))
    from unit.conftest import CLUSTER_YAML
    from unit.fakes import FakeEtcd, FakeExecutor, release_facts_text
    from tasks.commands.haproxy import routers_file
    from tasks.model import cluster as cluster_config, state
    from tasks.model.release import Image, Release
    from tasks.runbooks import upgrade

    old = Release((Image("web", "1.0.0", "sha256:" + "a" * 64), Image("worker", "1.0.0", "sha256:" + "b" * 64)))
    new = Release((Image("web", "1.0.1", "sha256:" + "c" * 64), Image("worker", "1.0.0", "sha256:" + "b" * 64)))
    machines = addresses(size)
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "secrets").mkdir(mode=0o700)
        (folder / "secrets" / "etcd-root.yaml").write_text("username: root\npassword: root-SECRET\n")
        (folder / "prod.yaml").write_text(CLUSTER_YAML)
        (folder / "secrets" / "etcd-root.yaml").chmod(0o600)
        cluster = cluster_config.load("prod", directory=folder).with_machines(machines)
        ex = FakeExecutor(cluster)
        ex.files[(cluster.balancer.host, cluster.balancer.routers_file)] = (routers_file(cluster, machines), 0o644)
        ex.answer("air-candidate", stdout="air-drain: 0\n")
        ex.answer("echo '--release'", stdout=release_facts_text(
            old.id, {"web": "1.0.0", "worker": "1.0.0"}, ("active", "active"), "/var/lib/coreos-install/user_data",
            "#cloud-config\nssh_authorized_keys:\n- ssh-ed25519 AAAA admin\n"))
        etcd = FakeEtcd(machines[:5])
        etcd.put(state.release_key(cluster), state.release_record(old, outcome="succeeded"))

        class Session:
            def __init__(self):
                self.cluster, self.ex, self.etcd, self.via = cluster, ex, etcd, machines[0]

        s = Session()
        figures = {}
        said = io.StringIO()  # the rollout's progress lines, not shown
        tracemalloc.start()
        cpu = time.process_time()
        with contextlib.redirect_stderr(said):
            rollout = upgrade.Rollout(s, new, old, limits=cluster_config.RolloutLimits(max_unavailable="25%"))
        figures["plan_cpu_s"] = round(time.process_time() - cpu, 3)
        figures["plan_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1)
        tracemalloc.reset_peak()
        cpu = time.process_time()
        with contextlib.redirect_stderr(said):
            done = rollout.apply()
        figures["apply_cpu_s"] = round(time.process_time() - cpu, 3)
        figures["apply_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2 ** 20, 1)
        tracemalloc.stop()
        figures["machines_done"] = len(done)
        figures["commands"] = len(ex.calls)
        return figures


def fake_status(size: int, template: dict) -> dict:
    """The status view's warnings and table for ``size`` machines, each like ``template``'s first
    (a `fab status --json` of the sandbox): CPU seconds and peak Python memory (MiB)."""
    from tasks.model.status_view import drift_warnings, render_status
    one = template["machines"][0]
    machines = addresses(size)
    view = {**template, "file_machines": machines, "machines": [{**one, "address": a} for a in machines]}
    view["etcd"] = {**view["etcd"], "members": [{**view["etcd"]["members"][0], "address": a, "id": str(i)}
                                                 for i, a in enumerate(machines[:5])]}
    view["balancer"] = {**view["balancer"], "listed": machines}
    tracemalloc.start()
    cpu = time.process_time()
    view["warnings"] = drift_warnings(view)
    lines = render_status(view)
    seconds = time.process_time() - cpu
    peak = tracemalloc.get_traced_memory()[1] / 2 ** 20
    tracemalloc.stop()
    return {"cpu_s": round(seconds, 3), "peak_mib": round(peak, 1), "lines": len(lines), "warnings": len(view["warnings"])}


def model(template: dict) -> dict:
    out = {"rollout": {}, "status": {}}
    for size in MODEL_SIZES:
        out["rollout"][size] = fake_rollout(size)
        out["status"][size] = fake_status(size, template)
    return out


def print_model(results: dict, modelled: dict) -> None:
    if results:
        print("projection (a straight line through the measured sizes):")
        for task, points in projection(results).items():
            print(f"  {task:12} " + "   ".join(f"{n} machines {s:8.1f} s" for n, s in points.items()))
    print("on fakes (the tool's own CPU and memory, no network):")
    for size in MODEL_SIZES:
        r, st = modelled["rollout"][size], modelled["status"][size]
        print(f"  {size:5} machines: rollout planned in {r['plan_cpu_s']:.2f} s CPU ({r['plan_peak_mib']} MiB), "
              f"carried out in {r['apply_cpu_s']:.2f} s CPU ({r['apply_peak_mib']} MiB, {r['commands']} commands); "
              f"status view {st['cpu_s']:.3f} s CPU ({st['peak_mib']} MiB, {st['lines']} lines)")
    small, large = MODEL_SIZES[0], MODEL_SIZES[-1]
    grow = large / small
    for what, key in (("rollout planned", ("rollout", "plan_cpu_s")), ("rollout carried out", ("rollout", "apply_cpu_s")),
                      ("status view", ("status", "cpu_s"))):
        a, b = modelled[key[0]][small][key[1]], modelled[key[0]][large][key[1]]
        print(f"  {what}: {grow:.0f}x the machines, {b / a if a else float('inf'):.1f}x the CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="3,6,12", help="machine counts measured on the sandbox (default 3,6,12)")
    parser.add_argument("--model", action="store_true", help="also the projection and the runs on fakes")
    parser.add_argument("--model-only", action="store_true", help="only the runs on fakes (no sandbox)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    sizes = sorted(int(n) for n in args.sizes.split(","))
    results, template = ({}, None) if args.model_only else measure(sizes)
    out: dict = {"sizes": results}
    if args.model or args.model_only:
        # The status view on fakes is made of the sandbox's own `fab status --json`.
        template = template or operator(["status", "--cluster", "local", "--json"], {}, ok=(0, 1))["answer"]
        out["model"] = model(template)
        if results:
            out["projection"] = projection(results)
        if not args.json:
            print_model(results, out["model"])
    if args.json:
        print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
