"""setup-cluster on 3 machines, then add-machine of a spare (and its removal), timed.

Run from the project root: python bench/membership.py
It brings the sandbox up (3 machines, 2 spares), builds and pushes the sample app, resets the
machines to freshly prepared, then times `install.setup`, `membership.add` of the first spare
and `membership.remove` of it, each in its own session as the tasks open them. The cluster is
left serving on its 3 machines. Set AIR_SANDBOX_PREFIX/AIR_SANDBOX_SUBNET to measure beside
another sandbox. Prints figures; asserts nothing.
"""
import argparse

from common import timed  # first: it puts the project root on sys.path
from sandbox import testbed as sandbox
from tasks.model import cluster
from tasks.runbooks import install
from tasks.runbooks import membership
from tasks.runbooks.publish import publish
from tasks.net.session import session


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help; no options
    info = sandbox.bring_up(3, 2)
    local = cluster.load("local")
    with session(local, etcd=False) as s:
        publish(s.ex, local.build.host, local.build.branch)
    machines = [m["address"] for m in info["machines"] if not m["spare"]]
    spare = next(m["address"] for m in info["machines"] if m["spare"])
    sandbox.reset_machines(machines + [spare])

    def setup():
        with session(local, etcd=False, changes=True) as s:
            install.setup(s, machines)

    def add():
        with session(local, f"bench add-machine {spare}", machines[0]) as s:
            membership.add(s, machines[0], spare)

    def remove():
        with session(local, f"bench remove-machine {spare}", machines[0]) as s:
            membership.remove(s, machines[0], spare)

    timed("setup-cluster, 3 machines", setup)
    timed("add-machine (a spare)", add)
    timed("remove-machine (that spare)", remove)


if __name__ == "__main__":
    main()
