"""air-deploy's tasks, as `fab` sees them (`fab --list`).

Top-level tasks are the runbook verbs (build, push, setup-cluster, deploy,
...) and the operator's everyday tools (status, logs, exec); namespaces group the tools around them (sandbox, balancer,
cloudconfig, lock, etcd, settings, maintenance, secrets, machine).
"""
from invoke import Collection

from sandbox import testbed
from tasks.runbooks import (
    balancer,
    build,
    cloud_config,
    deploy,
    etcd_auth,
    etcd_backup,
    etcd_peers,
    etcd_recovery,
    install,
    maintenance,
    membership,
    operator,
    os_upgrade,
    push,
    release_command,
    secrets,
    settings,
    upgrade,
)

namespace = Collection(
    build.build, push.push, install.setup_cluster, install.create_admin,
    membership.add_machine, membership.remove_machine,
    upgrade.upgrade_machine_task, upgrade.rolling_upgrade, os_upgrade.os_upgrade,
    deploy.deploy, deploy.releases, deploy.rollback, release_command.release_command_task,
    operator.status, operator.logs, operator.exec_,
)
namespace.add_collection(Collection.from_module(testbed, name="sandbox"))
namespace.add_collection(Collection.from_module(balancer))
namespace.add_collection(Collection.from_module(cloud_config, name="cloudconfig"))
namespace.add_collection(Collection("lock", deploy.lock_status, deploy.lock_release))
namespace.add_collection(Collection("etcd", etcd_peers.certificates, etcd_peers.migrate_peers, etcd_auth.auth_task,
                                     etcd_backup.backup_task, etcd_backup.defrag_task,
                                     etcd_recovery.restore_task, etcd_recovery.recover_task))
namespace.add_collection(settings.namespace)
namespace.add_collection(maintenance.namespace)
namespace.add_collection(secrets.namespace)
namespace.add_collection(Collection("machine", membership.wipe_machine))
