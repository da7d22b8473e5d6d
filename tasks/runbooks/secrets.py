"""Secrets per component, rotated in place: ``fab secrets.apply``.

Each component gets the files of the secrets folder its ``secrets`` names, in
a folder of its own on every machine (``cloudconfig.units.secrets_dir``),
owned by its ``user`` and mounted read-only at /air/secrets in its container
alone (``machine.secret_files``). ``secrets.apply`` reads each machine's
digests of them (sha256, never the content), compares them with the folder's
files and, through the one gated rollout (``upgrade.Rollout``: drain, stop,
swap, start, health check, back into the balancer, one machine at a time),
writes the changed files and restarts only the components using them. Files
no component gets any more are removed; when none of their components runs
on, nothing restarts for them. While a machine is in hand its previous secrets
are kept beside (``PREVIOUS``, root only): a failed health check puts them
back with the machine, and they are removed once the rollout is done.

A run that stops at a machine (a failed health check, an interrupt, a lost
lock) reads every member's digests again and says which machines run the
folder's secrets and which the previous ones; ``--resume`` finishes the
others (the machines already done are left alone, as in any run) and also
removes every previous copy a run killed mid-machine left behind.
"""
from __future__ import annotations

import time
from typing import Optional

from invoke import Collection

from cloudconfig.units import SECRETS_DIR, SECRETS_PREVIOUS
from tasks.commands import machine
from tasks.commands.shell import q
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, Interrupted, LostLock
from tasks.model.frozen import frozen
from tasks.model.rollout_plan import Extra
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import upgrade
from tasks.runbooks.cli import air_task, cluster_of, report

PREVIOUS = SECRETS_PREVIOUS  # a machine's secrets as they were, while it is in hand


# ---------------------------------------------------------------- what to run (pure)

def backup_command() -> str:
    """Keeps the machine's secrets folder as it is, beside it (root only, like the folder)."""
    return f"rm -rf {q(PREVIOUS)} && {{ [ ! -d {q(SECRETS_DIR)} ] || cp -a {q(SECRETS_DIR)} {q(PREVIOUS)}; }}"


def restore_command() -> str:
    """Puts the kept secrets folder back (a failed machine goes back to what it ran with)."""
    return f"if [ -d {q(PREVIOUS)} ]; then rm -rf {q(SECRETS_DIR)} && mv {q(PREVIOUS)} {q(SECRETS_DIR)}; fi"


def forget_command() -> str:
    return f"rm -rf {q(PREVIOUS)}"


def remove_command(paths) -> str:
    return ("rm -f " + " ".join(q(p) for p in paths)) if paths else "true"


@frozen
class Change:
    """One machine's secrets change: ``extra`` for the rollout (None: nothing restarts), the files
    of restarted components it removes, and files no component uses (removed at once)."""
    extra: Optional[Extra]
    removed: tuple = ()
    unused: tuple = ()

    @property
    def written(self) -> list:
        return [path for path, _, _ in self.extra.files] if self.extra else []


def machine_change(cluster, wanted_files, found: dict) -> Change:
    """What one machine whose secrets folder holds ``found`` (path -> digest) needs. Pure."""
    write, remove = machine.secret_changes(machine.digests(wanted_files), found)
    restart = tuple(machine.components_using(cluster, write + remove))
    owned = tuple(p for p in remove if machine.components_using(cluster, [p]))
    unused = tuple(p for p in remove if p not in owned)
    if not restart:
        return Change(None, (), unused)
    return Change(Extra(restart=restart, files=tuple(f for f in wanted_files if f[0] in write),
                        before=backup_command(), undo=restore_command(),
                        after=f"{remove_command(owned)} && {machine.own_secrets_command(cluster)}"), owned, unused)


def describe(changes: dict) -> list:
    """One line per machine (address -> Change): the secret files written and removed, the components
    restarted; names and paths only. Pure."""
    lines = []
    for address, change in sorted(changes.items()):
        parts = []
        if change.written:
            parts.append(f"write {', '.join(map(_short, change.written))}")
        if change.removed or change.unused:
            parts.append(f"remove {', '.join(map(_short, change.removed + change.unused))}")
        if change.extra is not None:
            parts.append(f"restart {', '.join(change.extra.restart)} (drained, health-checked, back in)")
        lines.append(f"{address}: " + ("; ".join(parts) or "secrets as wanted; nothing to do"))
    return lines


def stopped_summary(cluster_name: str, found: dict) -> str:
    """Which members run which secrets after a run stopped: ``found`` is address -> Change (what it
    still needs) or the error that kept it from being read. Pure."""
    new = [a for a, c in sorted(found.items()) if isinstance(c, Change) and c.extra is None]
    previous = [a for a, c in sorted(found.items()) if isinstance(c, Change) and c.extra is not None]
    unknown = [f"{a} ({c})" for a, c in sorted(found.items()) if not isinstance(c, Change)]
    return (f"the secrets folder's secrets run on: {', '.join(new) or 'none'}; the previous ones on: "
            f"{', '.join(previous) or 'none'}" + (f"; not read: {', '.join(unknown)}" if unknown else "") +
            f"; `fab secrets.apply --cluster {cluster_name} --resume` finishes the others")


def _short(path: str) -> str:
    return path[len(SECRETS_DIR) + 1:] if path.startswith(SECRETS_DIR + "/") else path


# ---------------------------------------------------------------- running it

def read_changes(s: Session, machines) -> dict:
    """address -> Change, from each machine's digests, read side by side."""
    wanted = machine.secret_files(s.cluster)

    def one(address):
        text = s.ex.read(address, machine.secrets_facts_command(), what="read the secrets' digests").stdout
        return machine_change(s.cluster, wanted, machine.parse_secrets_facts(text))
    return dict(zip(machines, s.ex.parallel(one, machines)))


def found_after_stop(s: Session, machines) -> dict:
    """address -> Change, or the error that kept it from being read: ``read_changes`` for a run that
    stopped, which must say what it can of every machine."""
    wanted = machine.secret_files(s.cluster)

    def one(address):
        try:
            text = s.ex.read(address, machine.secrets_facts_command(), what="read the secrets' digests").stdout
        except AirError as e:
            return str(e).removeprefix(f"{address}: ")
        return machine_change(s.cluster, wanted, machine.parse_secrets_facts(text))
    return dict(zip(machines, s.ex.parallel(one, machines)))


def roll(s: Session, rollout, members) -> list:
    """The rollout of the restarts; the machines done. One that stops says, read again from every
    member, which machines run which secrets (after its own error, in its own kind)."""
    try:
        return rollout.apply()
    except AirError as stopped:
        summary = stopped_summary(s.cluster.name, found_after_stop(s, members))
        kind = type(stopped) if isinstance(stopped, (Interrupted, LostLock)) else upgrade.UpgradeFailed
        between = "\n" if "\n" in str(stopped) else "; "  # a one-line error stays one line
        raise kind(f"{stopped}{between}{summary}") from None


def apply(s: Session, plan_only: bool = False, resume: bool = False) -> Optional[dict]:
    """The runbook: read, plan, remove unused files, roll the restarts through the gated rollout,
    forget the kept copies (``resume``: on every member). Returns the changes (address -> Change).
    A rollout that stops says which machines run which secrets."""
    started = time.monotonic()
    current, _ = upgrade.target_release(s)
    members = sorted(upgrade.serving_machines(s.cluster, upgrade.member_machines(s.etcd)))
    changes = read_changes(s, members)
    extras = {a: change.extra for a, change in changes.items() if change.extra is not None}
    rollout = upgrade.Rollout(s, current, current, extras=extras, done_hint="(they run the new secrets)")
    if plan_only:
        for line in describe(changes):
            print(line)
        upgrade.print_plan(rollout)
        return changes
    if resume:
        say(f"secrets.apply: resuming: the folder's secrets already run on "
            f"{', '.join(a for a in members if a not in extras) or 'no machine'}; "
            f"finishing {', '.join(sorted(extras)) or 'nothing'}")
    for address, change in changes.items():
        if change.unused:
            s.ex.run(address, remove_command(change.unused), what="remove secrets no component uses")
    done = roll(s, rollout, members) if rollout.steps else []
    s.ex.parallel(lambda a: s.ex.run(a, forget_command(), what="forget the previous secrets"),
                  members if resume else done)
    for line in describe(changes):
        say(f"secrets.apply: {line}")
    say(f"secrets.apply: {s.cluster.name}: done in {time.monotonic() - started:.1f} s")
    return changes


@air_task(name="apply", help={"cluster": "target cluster", "via": "member to reach etcd through",
                              "wait": "wait for another task's lock instead of failing",
                              "plan": "print what each machine needs and change nothing",
                              "resume": "finish a run that stopped at a machine (and forget every kept copy)",
                              "json": "print the outcome as JSON"})
def apply_task(c, cluster=None, via=None, wait=False, plan_=False, resume=False, json_=False):
    """Push changed secrets to every machine and restart the components using them, one machine at a time."""
    target = cluster_of(cluster)
    machine.secret_files(target)  # a secret file that cannot be read fails here, before anything is contacted
    via = check_address(via, "--via") if via else None
    with session(target, None if plan_ else "secrets.apply" + (" --resume" if resume else ""), via, wait) as s:
        changes = apply(s, plan_only=plan_, resume=resume)
    if plan_ or changes is None:
        return
    data = {a: {"written": [_short(p) for p in change.written], "removed": [_short(p) for p in change.removed + change.unused],
                "restarted": list(change.extra.restart) if change.extra else []}
            for a, change in changes.items()}
    restarted = sum(1 for change in changes.values() if change.extra is not None)
    report(data, json_, f"secrets of {target.name}: {restarted} machine(s) had components restarted")


namespace = Collection("secrets")
namespace.add_task(apply_task, name="apply")
