"""etcd's backup, restore and recovery on the sandbox's installed `local` cluster, timed, with
requests through the balancer meanwhile.

Run from the project root, with the sandbox up and the cluster installed:
    python bench/etcd_backup.py
It times `fab etcd.backup`; then stops etcd on two machines and wipes their data (quorum lost),
times `fab etcd.recover` from the first and the two `fab add-machine` that bring them back; then
wipes every member's data and times `fab etcd.restore` from the newest backup. A probe sends
GET /version to the balancer every 0.05 s during each, and its failed requests are printed. The
cluster is left serving on its three machines (its backups in the cluster file's folder). Prints
figures; asserts nothing.
"""
import argparse

from common import COLUMN, Probe, fab  # first: it puts the project root on sys.path
from tasks.model import cluster as cluster_config
from tasks.net.executor import Executor
from tasks.runbooks import etcd_backup

WIPE = "systemctl stop etcd-member.service && rm -rf /var/lib/etcd/member"


def measured(what, cluster, *args):
    with Probe(cluster) as probe:
        took = fab(*args).seconds
    print(COLUMN.format(what=what, seconds=took) + f"   probe: {probe.failed} of {probe.sent} requests failed",
          flush=True)


def main():
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help; no options
    cluster = cluster_config.load("local")
    m1, m2, m3 = cluster.machines[:3]
    measured("etcd.backup", cluster, "etcd.backup", "--cluster", "local")
    with Executor(cluster) as ex:
        ex.parallel(lambda a: ex.run(a, WIPE), [m2, m3])
    measured("etcd.recover (2 of 3 members lost)", cluster, "etcd.recover", "--cluster", "local", "--machine", m1)
    for address in (m2, m3):
        measured(f"add-machine {address} back", cluster, "add-machine", "--cluster", "local", "--via", m1,
                 "--machine", address)
    newest = etcd_backup.newest(cluster)
    with Executor(cluster) as ex:
        ex.parallel(lambda a: ex.run(a, WIPE), [m1, m2, m3])
    measured("etcd.restore (every member's data lost)", cluster, "etcd.restore", "--cluster", "local",
             "--snapshot", str(newest))


if __name__ == "__main__":
    main()
