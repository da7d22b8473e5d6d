"""air-deploy's tasks, as `fab` sees them (`fab --list`).

Top-level tasks are the runbook verbs (build, push, setup-cluster, ...);
namespaces group the tools around them (sandbox, balancer, cloudconfig, lock).
"""
from invoke import Collection

from tasks import sandbox

namespace = Collection()
namespace.add_collection(Collection.from_module(sandbox))
