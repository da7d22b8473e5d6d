"""The cluster's release command (its migrations): once per deploy of a new release, before any drain.

A deploy calls ``before_rollout`` after the new release's images are pushed and its settings
written, before the first machine leaves the balancer: unless the release is not new
(``tasks.commands.release_command.due``), one member that answers pulls the release command's
component at that release and runs the command in a one-off container of it
(``tasks.commands.release_command.run_command``: the component's identity, secrets and
environment), under ``timeouts.release_command`` and the deploy's lock. Each line of its output
is shown with the machine's name, every secret masked. A non-zero exit (or the deadline) stops
the deploy there: nothing was drained, the release goes into the history as failed with the
command's last lines, and the cluster's release stays recorded and serving. A rollback never runs
it (``not_run_by_rollback`` says so); `fab release-command` runs it alone.
"""
from __future__ import annotations

from typing import Optional

from tasks.commands import machine
from tasks.commands import release_command as commands
from tasks.commands.shell import tail
from tasks.model import etcd_access, state
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, DeadlineError
from tasks.model.release import Release
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import records, settings, upgrade
from tasks.runbooks.cli import air_task, cluster_of
from tasks.runbooks.install import live_member

LAST_LINES = 5  # of its output, in the error and the history when it fails


class ReleaseCommandFailed(AirError):
    """The release command exited non-zero or did not end in time; nothing was drained."""


def secrets(cluster) -> frozenset:
    """What the command's output must never show: the secrets folder's values and the component's
    etcd password (derived from the root's, so in no file of the folder)."""
    values = set(settings.secrets_of(cluster).values)
    component = cluster.component(cluster.release_command.component)
    if etcd_access.has_login(cluster, component):
        try:
            values.add(etcd_access.password_of(etcd_access.root_password(cluster), etcd_access.user_of(component.name)))
        except ConfigError:
            pass  # no root login yet: no component password either
    return frozenset(values)


def run(s: Session, release: Release, chosen: Optional[str] = None) -> str:
    """The release command at ``release`` on ``chosen`` (default: the first member that answers);
    returns that machine. ReleaseCommandFailed with its last lines (masked) when it fails."""
    cluster, ex = s.cluster, s.ex
    spec = cluster.release_command
    address = live_member(s, chosen)
    image = release.image(spec.component)
    hidden = secrets(cluster)
    say(f"release command: {spec.command!r} in a one-off container of {spec.component} {image.version} "
        f"(release {release.id}) on {address}")
    ex.run(address, machine.pull_command(cluster, release, [spec.component]), deadline=cluster.timeouts.pull,
           what=f"pull {spec.component} {image.version}")
    lines: list = []

    def shown(line: str) -> None:
        line = commands.masked(line, hidden)
        lines.append(line)
        say(f"{address}: {line}")
    try:
        result = ex.run(address, commands.run_command(cluster, release, address), check=False, on_line=shown,
                        deadline=cluster.timeouts.release_command, what="run the release command")
    except DeadlineError:
        with ex.finishing():
            ex.run(address, commands.remove_command(cluster), check=False, what="remove the release command's container")
        raise ReleaseCommandFailed(f"{address}: the release command did not end within "
                                   f"{cluster.timeouts.release_command} s (its container removed): "
                                   f"{tail(chr(10).join(lines), LAST_LINES)}") from None
    if result.exited != 0:
        raise ReleaseCommandFailed(f"{address}: the release command failed (exit {result.exited}): "
                                   f"{tail(chr(10).join(lines), LAST_LINES)}")
    say(f"release command: done on {address}")
    return address


def before_rollout(s: Session, release: Release, current: Optional[Release], meta: dict, canary: bool = False) -> None:
    """A deploy's release command, between the push and the first drain, when ``release`` is new
    (``due``; ``canary``: a canary deploy, which a candidate already there answers for). A failure goes
    into the history (with ``meta``) as the release's outcome, and stops the deploy."""
    candidate, _ = records.read_candidate(s.etcd, s.cluster)
    if canary and candidate is not None and candidate.id != release.id:
        return  # the canary deploy refuses it next: nothing to run for it
    why_not = commands.due(s.cluster, release.id, current and current.id, candidate and candidate.id)
    if why_not:
        if s.cluster.release_command is not None:
            say(f"release command: not run: {why_not}")
        return
    try:
        run(s, release)
    except ReleaseCommandFailed as failure:
        outcome = f"failed: release command on {failure}"
        records.add_history(s.etcd, s.cluster, {**release.to_dict(), **meta, "who": meta.get("who") or state.operator(),
                                                "when": state.now(), "outcome": outcome})
        raise ReleaseCommandFailed(f"{failure}; nothing was drained: {s.cluster.name} still runs release "
                                   f"{current and current.id}; release {release.id} is recorded as failed") from None


def plan_line(cluster, release: Release, current: Optional[Release], candidate: Optional[Release]) -> Optional[str]:
    """What ``--plan`` says of the release command (None when the cluster file has none). Pure."""
    if cluster.release_command is None:
        return None
    why_not = commands.due(cluster, release.id, current and current.id, candidate and candidate.id)
    spec = cluster.release_command
    return (f"release command: not run ({why_not})" if why_not else
            f"release command: would run {spec.command!r} in a one-off container of {spec.component} "
            f"{release.image(spec.component).version} on one member, before the first drain")


def print_plan(s: Session, release: Release, current: Optional[Release]) -> None:
    line = plan_line(s.cluster, release, current, records.read_candidate(s.etcd, s.cluster)[0])
    if line:
        print(line)


def not_run_by_rollback(cluster) -> None:
    """Says that a rollback leaves the release command alone (the schema stays as the newer release left it)."""
    if cluster.release_command is not None:
        say(f"rollback: the release command is not run (a rollback keeps what it did); "
            f"`fab release-command --cluster {cluster.name}` runs it at the cluster's release")


@air_task(name="release-command", help={"cluster": "target cluster",
                                        "machine": "member to run it on (default: the first that answers)",
                                        "release": "release id of the history (default: the cluster's release)",
                                        "via": "member to reach etcd through"})
def release_command_task(c, cluster=None, machine_=None, release=None, via=None):
    """Run the cluster's release command (its migrations) alone, in a one-off container, under the lock."""
    target = cluster_of(cluster)
    if target.release_command is None:
        raise ConfigError(f"{target.file}: release_command: missing (the component and command to run)")
    chosen = check_address(machine_, "--machine") if machine_ else None
    via = check_address(via, "--via") if via else None
    with session(target, "release-command", via) as s:
        wanted, _ = upgrade.target_release(s, release)
        address = run(s, wanted, chosen)
    print(f"release command done on {address} (release {wanted.id})")
