"""The steps every runbook composes on one machine: the builders of ``tasks.commands.machine``, run.

Read its facts, pull a release, stage and apply its cloud config and files, start, stop politely,
wait until healthy, upgrade in one command, clean images, pause and resume OS updates, wipe.
Install, upgrade and membership read as a sequence of these steps; each sends one command (or
one staged write) through the executor and turns its answer into facts or one error line.
"""
from __future__ import annotations

import cloudconfig
from cloudconfig.units import (
    SECRETS_DIR,
)
from tasks.commands.machine import (
    UNHEALTHY,
    cleanup_command,
    diagnostics_command,
    document_files,
    facts_command,
    health_command,
    keep_base_command,
    own_secrets_command,
    parse_base,
    parse_facts,
    parse_release_facts,
    pause_os_updates_command,
    pull_command,
    release_facts_command,
    resume_os_updates_command,
    secret_files,
    start_command,
    stop_command,
    upgrade_command,
    wipe_command,
)
from tasks.commands.shell import Staged, q, tail
from tasks.model.errors import HealthError, RemoteError
from tasks.net.connector import Connector

# What two steps a rollout sends every machine at once are called (its round trips are told by them:
# bench/wan.py counts them with the fixed part, not a machine's own).
READ_RELEASE_FACTS = "read the release facts"
RESUME_OS_UPDATES = "resume OS updates"


def facts(ex: Connector, address: str) -> dict:
    return parse_facts(ex.read(address, facts_command(ex.cluster), what="read machine facts").stdout)


def wipe(ex: Connector, address: str, user_data: str) -> None:
    """Back to a freshly prepared machine (``wipe_command``): a reboot does not bring the
    cluster's units back, and the administrator's base cloud config is in place again."""
    cluster = ex.cluster
    ex.run(address, wipe_command(cluster, user_data), what="wipe etcd and the Air units",
           deadline=cluster.timeouts.stop + cluster.timeouts.command)


def base_of(ex: Connector, address: str, user_data: str, installed_part: dict = None) -> dict:
    """The administrator's base cloud config of the machine (``parse_base``), read from it."""
    for path in (user_data + cloudconfig.BASE_SUFFIX, user_data):
        text = ex.read_file(address, path)
        if text is not None:
            return parse_base(address, user_data, (path, text), installed_part)
    return parse_base(address, user_data, None)


def install(ex: Connector, address: str, doc: dict, release, user_data: str) -> None:
    """A machine's secrets, the document's files and the release's images, staged in one command
    and put in place in a second: what setup-cluster and add-machine do on each machine before starting it.
    OS updates are paused until the machine is started."""
    cluster = ex.cluster
    staged = ex.stage_files(address, secret_files(cluster) + document_files(doc, user_data))
    ex.run(address, f"{pause_os_updates_command()} && {keep_base_command(user_data)} && "
                    f"mkdir -p {q(SECRETS_DIR)} && chmod 0700 {q(SECRETS_DIR)} && {staged.swap} && "
                    f"{own_secrets_command(cluster)} && "
                    f"{pull_command(cluster, release)}", what=f"install release {release.id}",
           deadline=cluster.timeouts.pull)


def apply_document(ex: Connector, address: str, doc: dict, user_data: str) -> None:
    ex.write_files(address, document_files(doc, user_data))


def pause_os_updates(ex: Connector, address: str) -> None:
    ex.run(address, pause_os_updates_command(), what="pause OS updates")


def resume_os_updates(ex: Connector, address: str) -> None:
    ex.run(address, resume_os_updates_command(), what=RESUME_OS_UPDATES)


def pull(ex: Connector, address: str, release, components=None) -> None:
    ex.run(address, pull_command(ex.cluster, release, components), what=f"pull release {release.id}",
           deadline=ex.cluster.timeouts.pull)


def clean_images(ex: Connector, address: str, components, keep) -> int:
    """``cleanup_command`` on one machine; how many images it removed."""
    result = ex.run(address, cleanup_command(ex.cluster, components, keep), what="remove old images")
    return result.stdout.count("removed ")


def start(ex: Connector, address: str, components=None) -> None:
    ex.run(address, start_command(ex.cluster, components), what="start the Air units")


def stop(ex: Connector, address: str, components=None) -> None:
    ex.run(address, stop_command(ex.cluster, components), what="stop the Air units",
           deadline=ex.cluster.timeouts.stop + ex.cluster.timeouts.command)


def release_facts(ex: Connector, address: str, prefetch: str = "") -> dict:
    """The machine's release facts; ``prefetch`` (``prefetch_command``) is started by the same command,
    once they are read (the pulls do not slow the read down)."""
    command = f"{release_facts_command(ex.cluster)}; {prefetch}" if prefetch else release_facts_command(ex.cluster)
    return parse_release_facts(ex.read(address, command, what=READ_RELEASE_FACTS).stdout, ex.cluster)


def wait_healthy(ex: Connector, address: str, timeout: int = None, components=None) -> None:
    timeout = timeout or ex.cluster.timeouts.healthy
    result = ex.read(address, health_command(ex.cluster, timeout, components), check=False,
                     deadline=timeout + ex.cluster.timeouts.command, what="health check")
    if result.exited != 0:
        raise unhealthy(ex, address, result)


def unhealthy(ex: Connector, address: str, result) -> HealthError:
    """The error of a failed health check: what it said, and the units' last journal lines."""
    journal = ex.read(address, diagnostics_command(ex.cluster), check=False, what="read the journal").stdout
    return HealthError(f"{address}: {tail(result.stderr, 1)}\n{journal.rstrip()}")


def upgrade(ex: Connector, address: str, components, staged: Staged, what: str, remove=(), running=None) -> None:
    """``upgrade_command`` on ``address``; HealthError when it ran but is not healthy."""
    timeouts = ex.cluster.timeouts
    result = ex.run(address, upgrade_command(ex.cluster, components, staged.swap, remove, running), what=what,
                    check=False,
                    deadline=timeouts.stop + timeouts.healthy + timeouts.command)
    if result.exited == UNHEALTHY:
        raise unhealthy(ex, address, result)
    if result.exited != 0:
        raise RemoteError(f"{address}: {what} failed (exit {result.exited}): {tail(result.stderr or result.stdout)}")
