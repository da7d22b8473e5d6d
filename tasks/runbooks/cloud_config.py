"""`fab cloudconfig.*`: the cloud configs an operator hands to machines.

``base`` is what a new machine is prepared with before it joins a cluster
(the cluster's SSH key, registry trust and login; etcd is left for install).
Printed, its secret parts are left out; ``--output`` writes the whole
document to a file only its owner can read. ``--format ignition`` gives the
same content as Ignition JSON, for provisioning Flatcar machines.
"""
from __future__ import annotations

import errno
import json
import os

import cloudconfig
from tasks.commands import machine
from tasks.model.errors import ConfigError
from tasks.net.progress import say
from tasks.runbooks.cli import air_task, cluster_of

FORMATS = ("cloud-config", "ignition")


def rendered(doc: dict, form: str) -> str:
    """``doc`` as a file of the given form: cloud-config YAML, or Ignition JSON for Flatcar."""
    if form == "ignition":
        return json.dumps(cloudconfig.ignition(doc), indent=1, sort_keys=True) + "\n"
    return cloudconfig.render(doc)


def write_private(path: str, text: str) -> None:
    """``text`` into file ``path``, mode 0600; a symbolic link there is refused, not followed (it could
    send the document, registry login included, wherever it points)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise ConfigError(f"--output: {path} is a symbolic link: refused (not followed)") from None
        raise ConfigError(f"--output: cannot write {path}: {e.strerror}") from None
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


@air_task(help={"cluster": "target cluster", "output": "write the whole document to this file (mode 0600)",
                "format": "cloud-config (default) or ignition (spec 3 JSON, for provisioning Flatcar)"})
def base(c, cluster=None, output=None, format_="cloud-config"):
    """Print the base cloud config for preparing a new machine of the cluster."""
    if format_ not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {format_!r}")
    doc = machine.base_document(cluster_of(cluster))
    if output:
        write_private(output, rendered(doc, format_))
        say(f"cloudconfig: wrote {output} (mode 0600)")
    else:
        print(rendered(cloudconfig.redacted(doc), format_), end="")
