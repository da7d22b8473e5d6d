"""Wall time of build+push, cold against the registry, beside a no-op one.

Runs `fab build` and `fab push` as a user would, against the sandbox (brought
up, or reused, with 3 machines and 2 spares). The cold run uses a fresh
namespace and cluster name, so the registry holds none of its images and all
four components are pushed; the build server's Docker build cache may still
be warm from earlier builds of the same source, which the output says. The
no-op runs build and push the same source again: nothing is pushed. Figures
only; nothing is asserted about time.

    python bench/images.py [--noop-runs N]
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from tasks import sandbox as sb  # noqa: E402

BUILD = f"{sb.PREFIX}-build"


def fab(env: dict, *args) -> tuple:
    """`fab ARGS` from the project root; (seconds, stdout)."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **env})
    seconds = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"fab {' '.join(args)} failed:\n{proc.stderr.strip()}")
    return seconds, proc.stdout


def build_push(env: dict, name: str) -> dict:
    build, _ = fab(env, "build", "--cluster", name)
    push, out = fab(env, "push", "--cluster", name, "--json")
    report = json.loads(out)
    return {"build": build, "push": push, "total": build + push,
            "pushed": sorted(c for c, v in report["components"].items() if v["changed"]),
            "images": {c: v["digest"] for c, v in report["components"].items()}}


def image_ids() -> set:
    """Every image ID on the build server; a build whose result is among them came from its cache."""
    return set(sb.inside(BUILD, "docker image ls -a -q --no-trunc").split())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--noop-runs", type=int, default=3, help="no-op build+push runs (default 3)")
    args = parser.parse_args()

    started = time.monotonic()
    sb.bring_up(3, 2)
    up = time.monotonic() - started

    prefix = "b" + secrets.token_hex(4)
    name = f"{prefix}_bench"
    local = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    known_images = image_ids()
    overhead, _ = fab({}, "--list")
    with tempfile.TemporaryDirectory(prefix="air-bench-") as clusters:
        (Path(clusters) / f"{name}.yaml").write_text(yaml.safe_dump({
            "include": str((sb.STATE / "cluster.yaml").resolve()),
            "namespace": prefix, "components": local["components"]}, sort_keys=False))
        env = {"AIR_CLUSTERS_DIR": clusters}
        try:
            cold = build_push(env, name)
            noops = [build_push(env, name) for _ in range(args.noop_runs)]
        finally:
            sb.inside(BUILD, f"rm -rf /aircloak/{name}; docker image ls --format "
                      f"'{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '/{prefix}/' | xargs -r docker image rm >/dev/null",
                      check=False)

    cached = sorted(c for c, image in cold["images"].items() if image in known_images)
    cache = ("warm for all of them: each image was already on the build server" if len(cached) == len(cold["images"])
             else f"warm for {', '.join(cached)}" if cached else "cold: every image was new to the build server")
    print(f"sandbox.up (reuses what already runs): {up:5.1f} s")
    print(f"cold build+push of {len(cold['images'])} components (fresh namespace {prefix}, cluster {name}: "
          f"new checkout, nothing in the registry; build cache {cache}):")
    print(f"  build {cold['build']:5.1f} s   push {cold['push']:5.1f} s   total {cold['total']:5.1f} s"
          f"   pushed: {', '.join(cold['pushed']) or 'nothing'}")
    totals = [n["total"] for n in noops]
    print(f"no-op build+push (nothing changed), {len(noops)} runs:")
    for n in noops:
        print(f"  build {n['build']:5.1f} s   push {n['push']:5.1f} s   total {n['total']:5.1f} s"
              f"   pushed: {', '.join(n['pushed']) or 'nothing'}")
    if totals:
        print(f"  median total {statistics.median(totals):5.1f} s")
    print(f"(each build and push figure includes starting `fab`: `fab --list` takes {overhead:.1f} s)")


if __name__ == "__main__":
    main()
