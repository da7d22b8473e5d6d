"""Wall time of build+push, cold and warm per component, beside no-op runs.

Runs `fab build` and `fab push` as a user would, against the sandbox (brought
up, or reused, with 3 machines and 2 spares). The cold run uses a fresh
namespace and cluster name, so the registry holds none of its images and all
four components are pushed, and builds with `--no-cache`, so every step of
every component runs (prepare commands, both stages). The warm run builds
the same source again from the build cache. The no-op runs build and push
the same source again: nothing is pushed; the target for them is 5 s. Each
component's build time is the one `fab build` reports for it. Figures only;
nothing is asserted about time.

    python bench/images.py [--noop-runs N]
"""
from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import tempfile
from pathlib import Path

import yaml

from common import ROOT, fab, seconds  # first: it puts the project root on sys.path
from sandbox import testbed as sb

BUILD = f"{sb.PREFIX}-build"
NOOP_TARGET = 5.0  # seconds, for a no-op build+push of every component (issue 14)
BUILT = re.compile(r"^  (\w+): built sha256:\w+ in ([0-9.]+) s$", re.M)


def build_push(env: dict, name: str, *build_flags) -> dict:
    build, _, log = fab("build", "--cluster", name, *build_flags, env=env)
    push, out, _ = fab("push", "--cluster", name, "--json", env=env)
    report = json.loads(out)
    return {"build": build, "push": push, "total": build + push,
            "pushed": sorted(c for c, v in report["components"].items() if v["changed"]),
            "images": {c: v["digest"] for c, v in report["components"].items()},
            "components": {c: float(s) for c, s in BUILT.findall(log)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op build+push runs (default 3)")
    args = parser.parse_args()

    up = seconds(sb.bring_up, 3, 2)

    prefix = "b" + secrets.token_hex(4)
    name = f"{prefix}_bench"
    local = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    overhead = fab("--list").seconds
    with tempfile.TemporaryDirectory(prefix="air-bench-") as clusters:
        (Path(clusters) / f"{name}.yaml").write_text(yaml.safe_dump({
            "include": str((sb.STATE / "cluster.yaml").resolve()),
            "namespace": prefix, "components": local["components"]}, sort_keys=False))
        env = {"AIR_CLUSTERS_DIR": clusters}
        try:
            cold = build_push(env, name, "--no-cache")
            warm = build_push(env, name)
            noops = [build_push(env, name) for _ in range(args.noop_runs)]
        finally:
            sb.inside(BUILD, f"rm -rf /aircloak/{name}; docker image ls --format "
                      f"'{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '/{prefix}/' | xargs -r docker image rm >/dev/null",
                      check=False)

    print(f"sandbox.up (reuses what already runs): {up:5.1f} s")
    print(f"cold build+push of {len(cold['images'])} components (fresh namespace {prefix}, cluster {name}: "
          f"new checkouts, nothing in the registry, --no-cache):")
    print(f"  build {cold['build']:5.1f} s   push {cold['push']:5.1f} s   total {cold['total']:5.1f} s"
          f"   pushed: {', '.join(cold['pushed']) or 'nothing'}")
    same = cold["images"] == warm["images"]
    print(f"warm build+push (same source, from the build cache; {'same' if same else 'DIFFERENT'} image IDs):")
    print(f"  build {warm['build']:5.1f} s   push {warm['push']:5.1f} s   total {warm['total']:5.1f} s"
          f"   pushed: {', '.join(warm['pushed']) or 'nothing'}")
    print("build time per component (as `fab build` reports it; air_backend's includes its prepare command):")
    print(f"  {'component':16} {'cold':>7} {'warm':>7}")
    for component in cold["images"]:
        cold_s, warm_s = cold["components"].get(component, 0), warm["components"].get(component, 0)
        print(f"  {component:16} {cold_s:5.1f} s {warm_s:5.1f} s")
    totals = [n["total"] for n in noops]
    print(f"no-op build+push (nothing changed), {len(noops)} runs:")
    for n in noops:
        print(f"  build {n['build']:5.1f} s   push {n['push']:5.1f} s   total {n['total']:5.1f} s"
              f"   pushed: {', '.join(n['pushed']) or 'nothing'}")
    if totals:
        median = statistics.median(totals)
        met = "met" if median <= NOOP_TARGET else "NOT met"
        print(f"  median total {median:5.1f} s (target <= {NOOP_TARGET:.0f} s: {met})")
    print(f"(each build and push figure includes starting `fab`: `fab --list` takes {overhead:.1f} s)")


if __name__ == "__main__":
    main()
