"""How air-deploy's functions become `fab` tasks.

``air_task`` is Fabric's ``@task`` plus one rule: an AirError ends the run
with ``error: <message>`` on one line and exit status 1, never a traceback;
an interrupt that stopped the task in order ends it with ``interrupted:
<state left>`` and exit status 130.
``cluster_of`` turns the ``--cluster`` flag into a validated Cluster before
any host is contacted.
"""
from __future__ import annotations

import functools
import json

from fabric import task
from invoke.exceptions import Exit

from tasks.model import cluster as cluster_config
from tasks.model.errors import INTERRUPTED, AirError, ConfigError, Interrupted


def air_task(*args, **kwargs):
    def decorate(function):
        @functools.wraps(function)
        def body(c, *a, **kw):
            try:
                return function(c, *a, **kw)
            except Interrupted as stopped:
                raise Exit(f"interrupted: {stopped}", code=INTERRUPTED) from None
            except AirError as error:  # an error may have an exit status of its own (``exit_status``)
                raise Exit(f"error: {error}", code=getattr(error, "exit_status", 1)) from None
        return task(**kwargs)(body)
    if args and callable(args[0]):
        return decorate(args[0])
    return decorate


def report(data, as_json: bool, text: str) -> None:
    """A task's result on standard output: ``data`` as JSON for scripts (``--json``), else ``text``."""
    print(json.dumps(data, indent=1, sort_keys=True) if as_json else text)


def cluster_of(name) -> cluster_config.Cluster:
    if not name:
        raise ConfigError("--cluster is required (known: "
                          f"{', '.join(cluster_config.known_clusters())})")
    return cluster_config.load(name)


def build_host(c, cluster) -> str:
    """The build server: `fab -H` when given, else the cluster's own."""
    host = getattr(c, "host", None)
    return host or cluster.build.host


# The help of --no-lock, for the tasks that may run before the cluster has an etcd (build, push, balancer.setup).
NO_LOCK_HELP = "go on without the cluster's lock when its etcd does not answer (a cluster in trouble)"
