"""A machine's operating system: its version, update-engine's state, Docker's version, its boot; the reboot.

Flatcar updates itself: update-engine downloads a new OS image to the other partition and says so
(``update_engine_client -status``: ``CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT`` with the
``NEW_VERSION``); the next boot runs it. ``os_facts_command`` reads what `status` and
`os-upgrade` want of a machine in one command and ``parse_os_facts`` reads it back, as an
``OsFacts``; ``reboot_command`` is the reboot. Pure text, tested by equality.
"""
from __future__ import annotations

import re
from typing import NamedTuple, Optional

from tasks.commands.machine import SYSTEM_STATE, in_sections
from tasks.model.os_upgrade_plan import BOOTING

OS_RELEASE = "/etc/os-release"
UPDATE_ENGINE_CLIENT = "update_engine_client"
NEED_REBOOT = "UPDATE_STATUS_UPDATED_NEED_REBOOT"  # update-engine's state with an update staged
IDLE = "UPDATE_STATUS_IDLE"
# What an OS version read from a machine may be; anything else is shown as unknown, never run.
OS_VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z._+~-]{0,63}")
SECTIONS = ("os", "update", "docker", "boot", "system")


class OsFacts(NamedTuple):
    """One machine's OS as read: its ``version``; ``update``, update-engine's state (its
    ``CURRENT_OP``, "" when it did not answer); ``staged``, the version of the update staged
    (None when none waits for a reboot); ``docker``, the engine's version; ``boot``, what tells one
    boot from the next; ``system``, systemd's state (running, degraded, starting, stopping...)."""
    version: Optional[str]
    update: str
    staged: Optional[str]
    docker: Optional[str]
    boot: str
    system: str

    @property
    def rebooting(self) -> bool:
        return self.system in BOOTING

    def as_dict(self) -> dict:
        return {"version": self.version, "update": self.update, "staged": self.staged, "docker": self.docker,
                "system": self.system}


def os_version_command() -> str:
    """Prints the machine's OS version (``VERSION_ID`` of os-release). Pure."""
    return f"sed -n 's/^VERSION_ID=//p' {OS_RELEASE} | tr -d \"\\\"'\""


def os_facts_command() -> str:
    """One read of a machine's OS, in sections for ``parse_os_facts``: the OS version,
    update-engine's status, Docker's version, the boot (the kernel's boot id and when PID 1
    started: a container's restart keeps the first) and systemd's state. Pure."""
    return "; ".join([
        f"echo '--os'; {os_version_command()} 2>/dev/null",
        f"echo '--update'; {UPDATE_ENGINE_CLIENT} -status 2>&1",
        "echo '--docker'; docker version --format '{{.Server.Version}}' 2>/dev/null",
        "echo '--boot'; cat /proc/sys/kernel/random/boot_id; cut -d' ' -f22 /proc/1/stat",
        f"echo '--system'; {SYSTEM_STATE} 2>/dev/null",
        "true",
    ])


def _word(lines: list) -> Optional[str]:
    """The section's one value when it is a plausible version, else None."""
    value = "".join(lines).strip()
    return value if OS_VERSION.fullmatch(value) else None


def _update_engine(lines: list) -> tuple:
    """(CURRENT_OP, NEW_VERSION when an update waits for a reboot) from ``-status``'s KEY=VALUE lines."""
    said = dict(line.strip().partition("=")[::2] for line in lines if "=" in line)
    current = said.get("CURRENT_OP", "")
    current = current if re.fullmatch(r"[A-Z_]{1,64}", current) else ""
    staged = said.get("NEW_VERSION", "").strip()
    return current, staged if current == NEED_REBOOT and OS_VERSION.fullmatch(staged) else None


def parse_os_facts(text: str) -> OsFacts:
    """What ``os_facts_command`` printed (also as part of a longer output), as OsFacts. Pure."""
    s = in_sections(text, SECTIONS)
    update, staged = _update_engine(s["update"])
    return OsFacts(_word(s["os"]), update, staged, _word(s["docker"]),
                   " ".join(line.strip() for line in s["boot"] if line.strip()),
                   "".join(s["system"]).strip())


def state_text(facts: OsFacts) -> str:
    """How a machine's update state is said: "update staged: V, reboot pending", "rebooting",
    "up to date", or update-engine's own state. Pure."""
    if facts.rebooting:
        return f"rebooting (systemd {facts.system})"
    if facts.staged:
        return f"update staged: {facts.staged}, reboot pending"
    if facts.update in ("", IDLE):
        return "no update staged" if facts.update else "update-engine did not answer"
    return facts.update.removeprefix("UPDATE_STATUS_").lower().replace("_", " ")


def reboot_command() -> str:
    """Reboots the machine, the command returning at once (the job queued; the connection then
    drops). Pure."""
    return "systemctl reboot --no-block"
