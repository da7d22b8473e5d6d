"""What the operator's tools send to a machine, and the parsers of what comes back.

``status_command`` gathers a machine's whole status fact in one command (units with their state,
version and uptime, etcd's health, its release and cloud config facts, images' disk use, its OS:
version, staged update, Docker's version) and
``parse_status`` reads it; ``journal_command``/``parse_journal`` do the same for `fab logs`, and
``exec_command`` is what `fab exec` runs in a component's container. Pure text, tested by
equality.
"""
from __future__ import annotations

import json
from typing import Optional

import cloudconfig
from cloudconfig.units import ETCD_LOCAL_CLIENT_URL, ETCD_PROXY_UNIT, ETCD_UNIT, STATE_DIR, container_name, unit_name
from tasks.commands import machine, os_update
from tasks.commands.shell import q

UNIT_PROPERTIES = "Id,ActiveState,SubState,ActiveEnterTimestampMonotonic"


def status_command(cluster) -> str:
    """One read of everything `status` wants from a machine, in sections for ``parse_status``. Pure."""
    return "; ".join([
        f"echo '--release'; cat {q(STATE_DIR)}/release 2>/dev/null",
        f"echo '--components'; cat {q(cloudconfig.COMPONENTS_FILE)} 2>/dev/null",
        f"echo '--units'; systemctl show -p {UNIT_PROPERTIES} {machine.unit_words(cluster)} 2>/dev/null",
        "echo '--uptime'; cut -d' ' -f1 /proc/uptime",
        f"echo '--etcd'; systemctl is-active {ETCD_UNIT} 2>/dev/null; "
        f"echo proxy=$(systemctl is-active {ETCD_PROXY_UNIT} 2>/dev/null); "
        f"curl -s -m 2 {ETCD_LOCAL_CLIENT_URL}/health 2>/dev/null; echo",
        "echo '--images'; docker system df --format '{{.Type}}\t{{.Size}}\t{{.Reclaimable}}' 2>/dev/null",
        machine.cloud_config_facts_command(cluster),
        os_update.os_facts_command(),
    ])


def haproxy_states(servers) -> dict:
    """machine -> haproxy's status of it (UP, DOWN, DRAIN, MAINT), from its servers (the first backend
    naming it: every backend of the cluster sends to the same routers). Pure."""
    states: dict = {}
    for server in servers:
        states.setdefault(server.machine, server.status.split(" ")[0])
    return states


def _uptime(lines: list) -> Optional[float]:
    """The machine's uptime in seconds, None when it could not be read."""
    try:
        return float("".join(lines).strip())
    except ValueError:
        return None


def _unit_blocks(lines: list) -> dict:
    """unit -> its properties, from ``systemctl show``'s blocks (separated by blank lines)."""
    shown: dict = {}
    block: dict = {}
    for line in lines + [""]:
        if not line.strip():
            if block.get("Id"):
                shown[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    return shown


def _unit_uptime(props: dict, uptime: Optional[float]) -> Optional[int]:
    """Seconds the unit has been active, None when it is not (or when it is not known)."""
    since = props.get("ActiveEnterTimestampMonotonic", "0")
    if props.get("ActiveState", "unknown") != "active" or not (since.isdigit() and int(since)) or uptime is None:
        return None
    return max(0, int(uptime - int(since) / 1e6))


def _units(shown: dict, versions: dict, uptime: Optional[float], cluster) -> dict:
    units = {}
    for c in cluster.components:
        props = shown.get(unit_name(c.name), {})
        units[c.name] = {"unit": unit_name(c.name), "state": props.get("ActiveState", "unknown"),
                         "sub": props.get("SubState", ""), "version": versions.get(c.name),
                         "uptime": _unit_uptime(props, uptime)}
    return units


def _etcd(lines: list) -> dict:
    """{active: what systemd says of the etcd unit, proxy: of a worker's etcd proxy, healthy: what
    /health on 127.0.0.1:2379 says (etcd's, or on a worker its proxy's: whether it reaches a member)}."""
    proxy = next((line.strip()[len("proxy="):] for line in lines if line.strip().startswith("proxy=")), "")
    etcd_lines = [line.strip() for line in lines if line.strip() and not line.strip().startswith("proxy=")]
    health = next((line for line in etcd_lines if line.startswith("{")), "")
    try:
        healthy = str(json.loads(health).get("health")) == "true"
    except ValueError:
        healthy = False
    return {"active": etcd_lines[0] if etcd_lines else "unknown", "proxy": proxy or "unknown", "healthy": healthy}


def _images(lines: list) -> dict:
    """{size, reclaimable} of the images, from ``docker system df`` (the last Images line)."""
    images = {}
    for line in lines:
        parts = line.split("\t")
        if parts[0] == "Images" and len(parts) >= 3:
            images = {"size": parts[1], "reclaimable": parts[2]}
    return images


def parse_status(text: str, cluster) -> dict:
    """What ``status_command`` printed, as {release, components, units, etcd, images}. Pure.

    ``units``: component -> {unit, state, sub, uptime (seconds, None when not active)};
    ``etcd``: {active, healthy}; ``images``: {size, reclaimable} as Docker says them; ``os``:
    {version, update, staged, docker, system, state} (``os_update.OsFacts``, and its state said)."""
    s = machine.in_sections(text, ("release", "components", "units", "uptime", "etcd", "images", "user_data",
                                   "written", *os_update.SECTIONS))
    found = os_update.parse_os_facts(text)
    versions = machine.parse_components("\n".join(s["components"]))
    return {"release": "".join(s["release"]).strip(), "components": versions,
            "units": _units(_unit_blocks(s["units"]), versions, _uptime(s["uptime"]), cluster),
            "etcd": _etcd(s["etcd"]), "images": _images(s["images"]),
            "cloud_config": machine.parse_cloud_config_facts(s),
            "os": {**found.as_dict(), "state": os_update.state_text(found)}}


def journal_command(component: str, lines: int, since: str = None, follow: bool = False,
                    after: str = None) -> str:
    """The unit's journal as JSON lines: its last ``lines`` entries (``since`` a time journalctl
    understands); ``follow``: from after the cursor ``after`` on (or from now), until stopped. Pure."""
    words = ["journalctl", "-u", unit_name(component), "-o", "json", "--no-pager"]
    if follow:
        words += ["-f"] + (["--after-cursor", after, "-n", "all"] if after else ["-n", "0"])
    else:
        words += ["-n", str(int(lines))] + (["--since", since] if since else [])
    return " ".join(q(w) for w in words)


def parse_journal(text: str) -> list:
    """(microseconds since the epoch, message, cursor) of every entry journalctl printed as JSON. Pure."""
    entries = []
    for line in text.splitlines():
        entry = journal_entry(line)
        if entry is not None:
            entries.append(entry)
    return entries


def journal_entry(line: str):
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    message = data.get("MESSAGE", "")
    if isinstance(message, list):  # journald gives bytes that are not UTF-8 as a list of numbers
        message = bytes(message).decode(errors="replace")
    return int(data.get("__REALTIME_TIMESTAMP", 0) or 0), str(message or ""), data.get("__CURSOR")


def exec_command(component: str, command: str, tty: bool) -> str:
    """``command`` run by ``sh -c`` in the component's container; with a terminal when ``tty``. Pure."""
    flags = "-it " if tty else ""
    return f"docker exec {flags}{q(container_name(component))} sh -c {q(command)}"
