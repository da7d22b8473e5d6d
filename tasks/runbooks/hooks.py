"""The cluster file's hooks, run on the operator's machine around a deploy or a rollback.

``gate`` runs ``pre_deploy`` (a deploy calls it after its build, before anything is pushed): a
non-zero exit, or its deadline, stops the deploy there with ``HookFailed``. ``around`` wraps a
whole deploy or rollback: at its end ``post_deploy`` or ``on_failure`` runs with the outcome and
the time it took; their failure is a warning and the outcome stands. What each hook gets is
``tasks.model.hooks.environment``; its output is shown as it comes, prefixed with its name.
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from tasks.commands.build_scripts import subject_command
from tasks.commands.shell import tail
from tasks.model import hooks as hooks_model
from tasks.model.errors import AirError, DeadlineError, failure_kind
from tasks.model.hooks import Facts
from tasks.model.release import Release
from tasks.net.local import run_local
from tasks.net.progress import say


class HookFailed(AirError):
    """The pre_deploy hook refused the deploy (or did not end in time)."""


def run(cluster, name: str, command: str, facts: Facts) -> Optional[str]:
    """Run hook ``name`` (its ``command``) in the cluster file's folder with the facts; None when it
    exited 0, else one line saying how it failed with its last lines."""
    say(f"hook {name}: {command}")
    lines: list = []

    def shown(line: str) -> None:
        lines.append(line)
        say(f"hook {name}: {line}")
    try:
        status = run_local(command, hooks_model.environment(facts, dict(os.environ)), Path(cluster.file).parent,
                           cluster.timeouts.hook, shown, f"hook {name}")
    except DeadlineError as e:
        return str(e)
    except OSError as e:
        return f"hook {name} could not start: {e.strerror or e}"
    return None if status == 0 else f"hook {name} failed (exit {status}): {tail(chr(10).join(lines))}"


def gate(cluster, facts: Facts) -> None:
    """The pre_deploy hook, when the cluster file has one: HookFailed unless it exits 0."""
    if cluster.hooks.pre_deploy:
        why = run(cluster, hooks_model.PRE, cluster.hooks.pre_deploy, facts)
        if why:
            raise HookFailed(f"{why}; the {facts.action} stopped there: nothing was pushed or changed")


@contextmanager
def around(cluster, facts: Facts, enabled: bool = True) -> Iterator[Facts]:
    """A deploy or rollback, then its post_deploy hook (or on_failure, when an AirError ends it: the
    error goes on). ``enabled`` False (a ``--plan``): no hook runs."""
    started = time.monotonic()
    try:
        yield facts
    except AirError as failure:
        if enabled:
            kind = failure_kind(failure)
            facts.outcome = f"{kind}: {(str(failure).splitlines() or [''])[0]}"
            finish(cluster, facts, started, failed=True)
        raise
    if enabled:
        facts.outcome = facts.outcome or "succeeded"
        finish(cluster, facts, started, failed=False)


def finish(cluster, facts: Facts, started: float, failed: bool) -> None:
    """The hook after the deploy or rollback, given its outcome and seconds; its failure is a warning."""
    facts.seconds = time.monotonic() - started
    chosen = hooks_model.after(cluster.hooks, failed)
    if chosen is None:
        return
    why = run(cluster, chosen[0], chosen[1], facts)
    if why:
        say(f"warning: {why} (the {facts.action}'s outcome stands: {facts.outcome})")


def before_push(s, host: str, facts: Facts, current: Optional[Release]):
    """The callback a deploy gives ``publish``: what is known once the build is done goes into
    ``facts`` (the release about to be pushed, the cluster's recorded one ``current``, the versions,
    the branch, and, when no ``--message`` was given, the commit's subject read in the build
    server's checkout); then the pre_deploy hook."""
    def called(release, built) -> None:
        facts.release, facts.versions, facts.branch = release.id, release.versions(), built["branch"]
        facts.previous = current.id if current else ""
        if not facts.message and "subject" in built:  # read with the checkouts
            facts.message = hooks_model.subject(built["subject"])
        elif not facts.message:
            said = s.ex.read(host, subject_command(s.cluster.build.checkout, built["commit"]), check=False,
                             what="read the commit's subject")
            facts.message = hooks_model.subject(said.stdout) if said.exited == 0 else ""
        gate(s.cluster, facts)
    return called


def rolling_back(facts: Facts, target: Optional[dict], undone) -> None:
    """What a rollback tells its hooks: the release record it goes back to (``target``), the Release
    it undoes."""
    if target:
        facts.release, facts.branch = target["id"], target.get("branch", "")
        facts.versions = {name: c["version"] for name, c in target["components"].items()}
    facts.previous = undone.id if undone is not None else ""
