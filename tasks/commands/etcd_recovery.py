"""What a machine runs to bring its etcd member back from a snapshot or from its own data alone.

``restore_command`` turns an uploaded snapshot into the member's data directory (etcd's own
``etcdctl snapshot restore``, with the member's name, the whole new cluster, its peer URL and a
new cluster token), keeping any data that was there aside; ``force_new_cluster_dropin`` is the
drop-in that starts a member once as a one-member cluster from its own data (etcd's
``--force-new-cluster``), removed again by ``without_force_command``. Where etcd keeps its data,
its unit and its user are ``cloudconfig.units``'s; the name of a restored cluster's token is made
here. Pure: every value reaching the shell is quoted.
"""
from __future__ import annotations

from cloudconfig.units import ETCD_DATA_DIR, ETCD_DATA_SET_ASIDE, ETCD_UNIT, ETCD_USER, UNIT_DIR, peer_url
from tasks.commands.shell import q

# The snapshot while it is restored on the machine (0600, removed by the restore).
SNAPSHOT_PATH = ETCD_DATA_DIR.rsplit("/", 1)[0] + "/air-restore.db"
RESTORING_DIR = ETCD_DATA_DIR + ".restoring"
FORCE_DROPIN = "22-air-force-new-cluster.conf"
FORCE_DROPIN_PATH = f"{UNIT_DIR}/{ETCD_UNIT}.d/{FORCE_DROPIN}"


def cluster_token(cluster_name: str, stamp: str) -> str:
    """The token of a cluster restored at ``stamp`` (letters and digits): a new one, so no member of
    the lost cluster can ever be taken for one of the restored cluster."""
    return f"air-{cluster_name}-restored-{stamp}"


def aside_dir(stamp: str) -> str:
    """Where a member's earlier data is kept when a restore replaces it."""
    return f"{ETCD_DATA_SET_ASIDE}{stamp}"


def initial_cluster(members) -> str:
    return ",".join(f"{m}={peer_url(m)}" for m in members)


def stop_etcd_command() -> str:
    return f"systemctl stop {q(ETCD_UNIT)}"


def restore_command(address: str, members, token: str, stamp: str) -> str:
    """Stops etcd, restores the uploaded snapshot as member ``address`` of a new cluster of
    ``members`` (token ``token``) into a scratch folder, keeps what the data folder held aside
    (``aside_dir``), puts the restored data in its place, owned by etcd's user, and removes the
    snapshot. Does not start etcd."""
    data, restoring, aside = q(ETCD_DATA_DIR), q(RESTORING_DIR), q(aside_dir(stamp))
    restore = " ".join([
        "ETCDCTL_API=3 etcdctl snapshot restore", q(SNAPSHOT_PATH), "--name", q(address),
        "--initial-cluster", q(initial_cluster(members)), "--initial-cluster-token", q(token),
        "--initial-advertise-peer-urls", q(peer_url(address)), "--data-dir", restoring])
    return (f"{stop_etcd_command()} && rm -rf {restoring} && {restore} >/dev/null && "
            f"{{ [ ! -e {data} ] || mv {data} {aside}; }} && mv {restoring} {data} && "
            f"chown -R {q(ETCD_USER)}: {data} && chmod 0700 {data} && rm -f {q(SNAPSHOT_PATH)}")


def force_new_cluster_dropin() -> str:
    """The drop-in that makes the next start of etcd a one-member cluster from the member's own data."""
    return "[Service]\nEnvironment=ETCD_FORCE_NEW_CLUSTER=true\n"


def force_start_command() -> str:
    """etcd restarted with every drop-in read again (the force drop-in among them)."""
    return f"systemctl daemon-reload && systemctl restart {q(ETCD_UNIT)}"


def without_force_command() -> str:
    """The force drop-in removed and etcd restarted on its normal unit: a later restart must not
    force a new cluster again (it would drop every member added since)."""
    return f"rm -f {q(FORCE_DROPIN_PATH)} && systemctl daemon-reload && systemctl restart {q(ETCD_UNIT)}"
