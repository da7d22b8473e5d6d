"""air-deploy's tasks, as `fab` sees them (`fab --list`).

Top-level tasks are the runbook verbs (build, push, setup-cluster, ...);
namespaces group the tools around them (sandbox, balancer, cloudconfig, lock).
"""
from invoke import Collection

from tasks import build, push, sandbox

namespace = Collection(build.build, push.push)
namespace.add_collection(Collection.from_module(sandbox))
