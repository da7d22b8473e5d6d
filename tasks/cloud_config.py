"""`fab cloudconfig.*`: the cloud configs an operator hands to machines.

``base`` is what a new machine is prepared with before it joins a cluster
(the cluster's SSH key, registry trust and login; etcd is left for install).
Printed, its secret parts are left out; ``--output`` writes the whole
document to a file only its owner can read.
"""
from __future__ import annotations

import os

import cloudconfig

from . import machine
from .cli import air_task, cluster_of
from .remote import say


@air_task(help={"cluster": "target cluster", "output": "write the whole document to this file (mode 0600)"})
def base(c, cluster=None, output=None):
    """Print the base cloud config for preparing a new machine of the cluster."""
    doc = machine.base_document(cluster_of(cluster))
    if output:
        fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(cloudconfig.render(doc))
        say(f"cloudconfig: wrote {output} (mode 0600)")
    else:
        print(cloudconfig.render(cloudconfig.redacted(doc)), end="")
