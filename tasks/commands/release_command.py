"""What a machine runs for the cluster's release command (its migrations), and how its output is shown.

``run_command`` starts a one-off container of the release command's component at a release's
image: ``docker run --rm`` with the same identity as the component's unit gives its own container
(``cloudconfig.units.identity_words``: environment, etcd login, secrets, data folder, user, host
network), the command's words after the image, its error output merged into its standard output
so that both arrive in order. ``remove_command`` takes the one-off container away when its
deadline passed (stopping ``docker run`` does not stop the container). ``masked`` hides every
secret in a line before it is shown or kept. Pure text, tested by equality.
"""
from __future__ import annotations

import shlex
from typing import Optional

from cloudconfig.units import DOCKER, VERSION_LABEL, container_name, identity_words
from tasks.commands.shell import q

MASK = "(secret)"
ONE_OFF = "-release-command"  # the one-off container's name: the component's container's, and this


def one_off_name(component_name: str) -> str:
    return container_name(component_name) + ONE_OFF


def run_command(cluster, release, machine: str) -> str:
    """The release command of ``cluster`` run once in a one-off container of its component at
    ``release``'s image (pinned by digest) on ``machine``; a container left by an earlier run that
    was cut off is removed first. Its exit status is the command's. Pure."""
    spec = cluster.release_command
    component = cluster.component(spec.component)
    image = release.image(spec.component)
    name = one_off_name(component.name)
    words = [DOCKER, "run", "--rm", "--name", name, "--network", "host",
             *(("--user", component.user) if component.user else ()),
             "--label", f"{VERSION_LABEL}={image.version}",
             *identity_words(cluster, component, machine, image.version),
             cluster.pinned_ref(image), *shlex.split(spec.command)]
    return f"{DOCKER} rm -f {q(name)} >/dev/null 2>&1; " + " ".join(q(w) for w in words) + " 2>&1"


def remove_command(cluster) -> str:
    """Removes the release command's one-off container, running or not. Pure."""
    return f"{DOCKER} rm -f {q(one_off_name(cluster.release_command.component))} >/dev/null 2>&1; true"


def masked(line: str, secrets) -> str:
    """``line`` with every one of ``secrets`` (texts) replaced by the mask, the longest first (one
    secret may hold another). Pure."""
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            line = line.replace(secret, MASK)
    return line


def due(cluster, release, current, candidate) -> Optional[str]:
    """Why a deploy of ``release`` does not run the release command (None: it runs it): the cluster
    file has none, ``release`` is already the cluster's release (``current``), or it is the canary's
    ``candidate``, whose deploy ran it. Releases as ids or None. Pure."""
    if cluster.release_command is None:
        return "the cluster file has no release_command"
    if release == current:
        return f"release {release} is already the cluster's release"
    if release == candidate:
        return f"release {release} is the candidate: its canary deploy ran it"
    return None
