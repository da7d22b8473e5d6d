"""Sandboxes side by side for one test run: each pytest-xdist worker gets its own.

A worker's sandbox is derived from the run's base sandbox (``AIR_SANDBOX_PREFIX``,
``AIR_SANDBOX_SUBNET``, ``AIR_SANDBOX_STATE``, defaults ``air-sandbox``, ``10.213.7``,
``.sandbox``) and the worker's number k (1 for xdist's ``gw0``, up to ``MAX_WORKERS``):

- prefix ``P-wk`` (containers ``P-wk-m1``, network ``P-wk``, ...);
- subnet ``A.B.(C + 32 k)``: the base's third octet plus k times 32. Base subnets whose third
  octets are below 32 and differ (``10.213.7`` for CI, ``10.213.9`` for another checkout) give
  workers' /24s that differ from each other and from every base's, so two runs never collide;
- state folder ``STATE/wk`` and, in it, a copy of the clusters folder (``AIR_CLUSTERS_DIR``)
  whose includes name that state folder instead of ``../.sandbox``.

Each worker removes its sandbox at the end (unless ``AIR_SANDBOX_KEEP=1``); by hand, worker k's
goes with ``AIR_SANDBOX_PREFIX=P-wk AIR_SANDBOX_STATE=STATE/wk fab sandbox.down``.

``python3 -m sandbox.workers up|down N`` runs ``fab sandbox.up`` (or ``down``) for workers 1..N side by
side, each in its worker's environment: ``tests/run`` brings the sandboxes up this way while lint and
the unit tests run; a worker's own bring-up then finds its sandbox up (or waits for the one under
way: the sandbox's lock).

Pure but for ``write_clusters``, ``prepared`` and ``on_each``; it imports nothing of the sandbox (whose module
reads the environment when it is imported: the worker's environment has to be in place first).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Optional

ROOT = Path(__file__).resolve().parent.parent
DEFAULTS = {"AIR_SANDBOX_PREFIX": "air-sandbox", "AIR_SANDBOX_SUBNET": "10.213.7",
            "AIR_SANDBOX_STATE": str(ROOT / ".sandbox")}
MACHINES, SPARES = 3, 2  # each test sandbox's: the local cluster's machines, and spares to add
UP_AHEAD = "AIR_SANDBOX_UP_AHEAD"  # "1": the workers' sandboxes were brought up just before (tests/run)
STRIDE = 32  # third octets of a worker's subnet: the base's plus k * STRIDE
MAX_WORKERS = 7  # 31 + 7 * 32 = 255: the largest that stays an octet
INCLUDE = re.compile(r"^include: \.\./\.sandbox/(?P<file>[\w.-]+)$", re.MULTILINE)


def number(worker: Optional[str]) -> int:
    """k of xdist's worker id ``gwN`` (N + 1); 0 outside xdist (the base sandbox itself)."""
    if not worker:
        return 0
    found = re.fullmatch(r"gw(\d+)", worker)
    if not found:
        raise ValueError(f"unexpected pytest-xdist worker id {worker!r}")
    return int(found.group(1)) + 1


def prefix(base: str, k: int) -> str:
    return f"{base}-w{k}" if k else base


def subnet(base: str, k: int) -> str:
    """Worker k's /24 (three octets), from the base's."""
    octets = base.split(".")
    if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
        raise ValueError(f"AIR_SANDBOX_SUBNET {base!r} is not the first three octets of a /24")
    if not k:
        return base
    if int(octets[2]) >= STRIDE or not 1 <= k <= MAX_WORKERS:
        raise ValueError(f"a run on several sandboxes needs AIR_SANDBOX_SUBNET's third octet below {STRIDE} "
                         f"and at most {MAX_WORKERS} workers (got {base}, worker {k})")
    return f"{octets[0]}.{octets[1]}.{int(octets[2]) + STRIDE * k}"


def environment(worker: Optional[str], env: Mapping[str, str]) -> dict:
    """The variables that make ``worker``'s sandbox the one a process uses (empty outside xdist)."""
    k = number(worker)
    if not k:
        return {}
    base = {name: env.get(name) or default for name, default in DEFAULTS.items()}
    state = Path(base["AIR_SANDBOX_STATE"]) / f"w{k}"
    return {"AIR_SANDBOX_PREFIX": prefix(base["AIR_SANDBOX_PREFIX"], k),
            "AIR_SANDBOX_SUBNET": subnet(base["AIR_SANDBOX_SUBNET"], k),
            "AIR_SANDBOX_STATE": str(state),
            "AIR_CLUSTERS_DIR": str(state / "clusters")}


def cluster_file(text: str, state: Path) -> str:
    """A cluster file of clusters/ as a worker's copy has it: ``include: ../.sandbox/F`` names ``STATE/F``."""
    return INCLUDE.sub(lambda m: f"include: {state / m.group('file')}", text)


def write_clusters(state: Path, clusters: Path, source: Path = ROOT / "clusters") -> None:
    """Copy the project's cluster files into ``clusters``, their includes pointing to ``state``."""
    clusters.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.yaml")):
        (clusters / path.name).write_text(cluster_file(path.read_text(), state))


def prepared(worker: Optional[str], env: Mapping[str, str]) -> dict:
    """``environment(worker, env)``, the worker's clusters folder written first (``write_clusters``)."""
    found = environment(worker, env)
    if found:
        write_clusters(Path(found["AIR_SANDBOX_STATE"]), Path(found["AIR_CLUSTERS_DIR"]))
    return found


def worker_id(k: int) -> str:
    """xdist's id of worker k (``number``'s inverse)."""
    return f"gw{k - 1}"


def on_each(action: str, count: int) -> int:
    """``fab sandbox.ACTION`` (``up`` to the test sandboxes' shape, or ``down``) for workers 1..count
    side by side, each in its worker's environment; the number of them that failed."""
    runs = []
    for k in range(1, count + 1):
        if action == "up":
            env = {**os.environ, **prepared(worker_id(k), os.environ)}
            # The second cluster's machines are made by the one worker whose tests use it (tests/conftest.py).
            args = ["sandbox.up", "--machines", str(MACHINES), "--spares", str(SPARES), "--no-second"]
        else:
            env, args = {**os.environ, **environment(worker_id(k), os.environ)}, ["sandbox.down"]
        runs.append(subprocess.Popen([sys.executable, "-m", "fabric", *args], cwd=ROOT, env=env))
    return sum(run.wait() != 0 for run in runs)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("up", "down") or not sys.argv[2].isdigit():
        sys.exit("usage: python3 -m sandbox.workers up|down N")
    sys.exit(1 if on_each(sys.argv[1], int(sys.argv[2])) else 0)
