"""What an OS upgrade does: which machines reboot, in which order, and what stops it first. Pure.

A machine reboots when update-engine has an update staged on it (``--reboot-all``: every
machine), one at a time, the followers of etcd first and its leader last (leadership then moves
once). Before any reboot, and again between two, every member must answer and be healthy: a
reboot takes one member down, and with another already down quorum would be lost. The facts come
in as read (``tasks.commands.os_update.OsFacts``: ``version``, ``staged``, ``rebooting``).
"""
from __future__ import annotations

from typing import Optional

from tasks.model.frozen import frozen

# systemd's states of a machine going down or coming up (``systemctl is-system-running``): a reboot
# under way. A deploy refuses to start meanwhile; os-upgrade waits for the state to end.
BOOTING = ("initializing", "starting", "stopping")


@frozen
class Reboot:
    """One machine's reboot: the OS ``version`` it runs and the one it should boot (``to``; None
    for a reboot without an update)."""
    machine: str
    version: Optional[str]
    to: Optional[str]

    def describe(self) -> str:
        if self.to:
            return f"{self.machine}: reboot into OS {self.to} (runs {self.version or '?'})"
        return f"{self.machine}: reboot (OS {self.version or '?'}, no update staged)"


def plan(machines, facts: dict, leader: Optional[str], reboot_all: bool = False) -> list:
    """The Reboots of ``machines`` (those with an update staged, or all with ``reboot_all``), etcd's
    ``leader`` last, the others in address order. ``facts``: machine -> its OsFacts."""
    wanted = [m for m in sorted(machines) if reboot_all or facts[m].staged]
    ordered = [m for m in wanted if m != leader] + [m for m in wanted if m == leader]
    return [Reboot(m, facts[m].version, facts[m].staged) for m in ordered]


def quorum_problem(members, unreachable: dict, unhealthy, rebooting) -> Optional[str]:
    """Why no member may reboot now (None when every member answers, is healthy and up): a
    reboot takes one member down, and with another down too quorum could be lost.
    ``unreachable``: machine -> why; ``unhealthy``: members whose etcd is not healthy;
    ``rebooting``: machines going down or coming up."""
    problems = [f"{m} cannot be reached ({unreachable[m]})" for m in sorted(members) if m in unreachable]
    problems += [f"{m} is rebooting" for m in sorted(members) if m in rebooting and m not in unreachable]
    problems += [f"etcd on {m} is not healthy" for m in sorted(members)
                 if m in unhealthy and m not in unreachable and m not in rebooting]
    return "; ".join(problems) or None


def unexpected_version(step: Reboot, version: Optional[str]) -> Optional[str]:
    """What is wrong with the OS ``version`` a machine runs after its reboot (None: as expected)."""
    if step.to and version != step.to:
        return (f"{step.machine} rebooted but runs OS {version or '?'}, not {step.to} (the update did not "
                f"take: Flatcar booted the previous partition again)")
    return None


def describe(steps: list, machines) -> list:
    """The plan's lines (``--plan``): each machine that reboots, in order, then those left alone."""
    lines = [f"os-upgrade: {i}. {step.describe()}" for i, step in enumerate(steps, 1)]
    planned = {s.machine for s in steps}
    lines += [f"os-upgrade: {m}: no update staged; left alone" for m in sorted(machines) if m not in planned]
    return lines or ["os-upgrade: no machine"]
