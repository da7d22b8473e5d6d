"""setup-cluster wall time for 3 machines and for 6 (target: 6 take at most 1.3 times as long as 3).

Run from the project root: python bench/setup.py
It brings the sandbox up with 6 machines (and no spares), builds and pushes the sample app,
then for each size resets the machines to freshly prepared and times `install.setup` alone.
Set AIR_SANDBOX_PREFIX/AIR_SANDBOX_SUBNET (and run from a copy of the project) to measure
beside another sandbox. Prints figures; asserts nothing.
"""
import argparse

from common import timed  # first: it puts the project root on sys.path
from sandbox import testbed as sandbox
from tasks.model import cluster
from tasks.runbooks import install
from tasks.runbooks.publish import publish
from tasks.net.session import session


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help; no options
    info = sandbox.bring_up(6, 0)
    local = cluster.load("local")
    with session(local, etcd=False) as s:
        publish(s.ex, local.build.host, local.build.branch)
    machines = [m["address"] for m in info["machines"]]

    def setup(chosen):
        with session(local.with_machines(chosen), etcd=False) as s:
            install.setup(s, chosen)

    times = {}
    for size in (3, 6):
        sandbox.reset_machines(machines)
        times[size] = timed(f"setup-cluster, {size} machines", setup, machines[:size])
    print(f"ratio 6/3: {times[6] / times[3]:.2f} (target <= 1.3)")
    sandbox.reset_machines(machines)


if __name__ == "__main__":
    main()
