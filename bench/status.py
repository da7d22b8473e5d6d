"""`fab status` timings on the sandbox's installed `local` cluster: the whole command as an operator
runs it (Python start, connections, reads, table) and the read alone (every machine, etcd and the
balancer side by side) over fresh sessions. The issue's target is 2 s for the command.

Run from the project root, with the sandbox up and the cluster installed:
    python bench/status.py [--runs N]
Prints figures; asserts nothing.
"""
import argparse
import time

from common import fab, summary  # first: it puts the project root on sys.path
from tasks.model import cluster as cluster_config
from tasks.runbooks.operator import read_status
from tasks.net.session import session

TARGET = 2.0


def line(what, figures):
    print(summary(what, figures, width=48, digits=2, note=f"target {TARGET:.0f} s"), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cluster = cluster_config.load("local")
    whole, reads, sessions = [], [], []
    for _ in range(args.runs):
        whole.append(fab("status", "--cluster", "local", ok=(0, 1)).seconds)  # 1: something drifted
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
