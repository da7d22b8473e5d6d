"""`fab status` timings on the sandbox's installed `local` cluster: the whole command as an operator
runs it (Python start, connections, reads, table) and the read alone (every machine, etcd and the
balancer side by side) over fresh sessions. The issue's target is 2 s for the command.

Run from the project root, with the sandbox up and the cluster installed:
    python bench/status.py [--runs N]
Prints figures; asserts nothing.
"""
import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tasks import cluster as cluster_config  # noqa: E402
from tasks.operator import read_status  # noqa: E402
from tasks.session import session  # noqa: E402

TARGET = 2.0


def line(what, figures):
    print(f"{what:48} min {min(figures):5.2f} s  median {statistics.median(figures):5.2f} s  "
          f"max {max(figures):5.2f} s  (target {TARGET:.0f} s)", flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cluster = cluster_config.load("local")
    whole, reads, sessions = [], [], []
    for _ in range(args.runs):
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "fabric", "status", "--cluster", "local"], cwd=ROOT,
                              capture_output=True, text=True)
        whole.append(time.monotonic() - started)
        if proc.returncode not in (0, 1):
            sys.exit(f"fab status failed:\n{proc.stderr}")
        started = time.monotonic()
        with session(cluster, etcd=False) as s:
            view = read_status(s)
        sessions.append(time.monotonic() - started)
        reads.append(view["seconds"])
    line("fab status (whole command)", whole)
    line("read_status in a fresh session (with closing)", sessions)
    line("read_status itself (connections included)", reads)
    print(f"machines {len(view['machines'])}, warnings {len(view['warnings'])}")


if __name__ == "__main__":
    main()
