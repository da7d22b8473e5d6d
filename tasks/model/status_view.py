"""The status view: the drift rules and the table `fab status` shows, from facts already read.

``drift_warnings`` turns a view (every machine's parsed status, etcd's members and leader, the
routers file, the recorded release and candidate) into warnings, each with the command that fixes
it; ``render_status`` is the table. Also the journal lines' merged order and format for
`fab logs`. Pure: facts in, lines out.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Optional

import cloudconfig
from cloudconfig.units import ETCD_UNIT


def duration(seconds) -> str:
    """5s, 3m12s, 2h05m, 4d03h. Pure."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def machine_role(address: str, members: list, leader: Optional[str]) -> str:
    """leader, follower, learner, joining (added, not started) or "not a member". Pure."""
    member = next((m for m in members if m["address"] == address), None)
    if member is None:
        return "not a member"
    if member["learner"]:
        return "learner"
    if not member["started"]:
        return "joining"
    return "leader" if address == leader else "follower"


def drift_warnings(view: dict) -> list:
    """Every way the cluster is not as recorded, each {machine, problem, fix} with the command that
    fixes it; empty when all is as recorded. A machine running the canary's candidate is not
    drift. Pure: from the view ``read_status`` assembles."""
    name = view["cluster"]
    warnings = []

    def warn(machine_, problem, fix):
        warnings.append({"machine": machine_, "problem": problem, "fix": fix})

    etcd, recorded = view["etcd"], view["release"]
    candidate = view["candidate"]
    members = [m["address"] for m in etcd["members"]]
    listed = view["balancer"]["listed"]
    file_machines = view["file_machines"]
    any_member = next((m for m in file_machines if m in members), None) or (members[0] if members else None)
    via = f" --via {any_member}" if any_member else ""
    if etcd.get("error"):
        warn(None, f"etcd does not answer: {etcd['error']}",
             f"start {ETCD_UNIT} on the machines (`systemctl start {ETCD_UNIT}`), then `fab status --cluster {name}`")
    if view["balancer"].get("error"):
        warn(None, f"the balancer's routers file cannot be read: {view['balancer']['error']}",
             f"check the balancer host {view['balancer']['host']}")
    if recorded and recorded.get("outcome") == "upgrading" and not view["lock"]:
        warn(None, f"the rollout to {recorded['id']} did not finish (its task was killed) and no task holds the lock",
             f"`fab rolling-upgrade --cluster {name}`")
    for m in view["machines"]:
        address = m["address"]
        upgrade = f"`fab upgrade-machine --cluster {name} --machine {address}`"
        if not m["reachable"]:
            warn(address, f"{address} cannot be reached ({m['error']})",
                 f"once it answers: {upgrade}; if it is gone for good: "
                 f"`fab remove-machine --cluster {name}{via} --machine {address} --force`")
            continue
        role = m["etcd"]["role"]
        if etcd.get("error") is None:
            if role == "not a member" and address in file_machines:
                warn(address, f"{address} is in the cluster file but not an etcd member",
                     f"`fab add-machine --cluster {name}{via} --machine {address}`")
            elif role == "not a member":
                continue  # neither a member nor in the file: not ours
            elif address not in file_machines:
                warn(address, f"{address} is an etcd member but not in the cluster file",
                     f"add {address} to `machines:` in {name}.yaml")
            if role in ("learner", "joining"):
                warn(address, f"{address} is an etcd {role} left behind by an unfinished add-machine",
                     f"`fab remove-machine --cluster {name}{via} --machine {address}`, then add-machine again")
                continue
        if role != "not a member" and not m["etcd"]["healthy"]:
            warn(address, f"etcd on {address} is not healthy ({ETCD_UNIT} {m['etcd']['active']})",
                 f"`systemctl restart {ETCD_UNIT}` on {address}; `journalctl -u {ETCD_UNIT}` there says why")
        if role == "not a member" and etcd.get("error") is None:
            continue
        allowed = {recorded["id"]} if recorded else set()
        if candidate and address in candidate["machines"]:
            allowed.add(candidate["id"])
        if allowed and m["release"] not in allowed:
            wanted = " or ".join(sorted(allowed))
            warn(address, f"{address} runs release {m['release'] or '(none)'}, not {wanted}", upgrade)
        if m.get("cloud_config", {}).get("edited"):
            path = m["cloud_config"]["user_data"]
            warn(address, f"{path} on {address} was changed by hand since air-deploy wrote it (a deploy stops there)",
                 cloudconfig.keep_hand_change(path))
        stopped = [f"{c} is {u['state']}" for c, u in m["units"].items() if u["state"] != "active"]
        if stopped:
            warn(address, f"on {address}: {', '.join(stopped)}", upgrade)
        if not view["balancer"].get("error") and address not in listed:
            warn(address, f"{address} is out of the balancer", upgrade + " (health check, then back in)")
        elif m.get("balancer_state") not in (None, "UP"):
            state_ = m["balancer_state"]
            warn(address, f"haproxy marks {address} {state_}",
                 f"`fab logs --cluster {name} --component {view['balancer']['component']} --machine {address}` says why "
                 f"its router fails haproxy's check" if state_ == "DOWN" else
                 f"`fab balancer.remove --cluster {name} --machine {address}`, then `fab balancer.add` of it "
                 f"(haproxy readies it)")
    if not view["balancer"].get("error") and etcd.get("error") is None:
        for address in listed:
            if address not in members:
                warn(address, f"the balancer routes to {address}, which is not an etcd member",
                     f"`fab balancer.remove --cluster {name} --machine {address}`")
    return warnings


def _table(rows: list) -> list:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _balancer_cell(m: dict) -> str:
    """in / OUT, with haproxy's own state when it was read (in (UP), in (DOWN), in (DRAIN))."""
    if not m["balancer"]:
        return "OUT"
    return f"in ({m['balancer_state']})" if m.get("balancer_state") else "in"


def render_status(view: dict) -> list:
    """The status as the lines `fab status` prints. Pure."""
    recorded, candidate = view["release"], view["candidate"]
    rows = [("MACHINE", "SSH", "ETCD", "BALANCER", "RELEASE", "IMAGES")]
    for m in view["machines"]:
        if not m["reachable"]:
            rows.append((m["address"], "DOWN", m["etcd"]["role"], _balancer_cell(m), "?", "?"))
            continue
        role = m["etcd"]["role"]
        etcd = role if role == "not a member" else f"{role}, {'healthy' if m['etcd']['healthy'] else 'UNHEALTHY'}"
        release = m["release"] or "(none)"
        if recorded and m["release"] == recorded["id"]:
            release += " (recorded)"
        elif candidate and m["release"] == candidate["id"]:
            release += " (candidate)"
        else:
            release += " (NOT RECORDED)"
        images = m["images"].get("size", "?")
        rows.append((m["address"], "ok", etcd, _balancer_cell(m), release, images))
    lines = [f"cluster {view['cluster']}", ""] + _table(rows) + [""]
    components = view["components"]
    rows = [("MACHINE", *components)]
    for m in view["machines"]:
        if m["reachable"]:
            rows.append((m["address"], *(
                f"{u['state']} {u['version'] or '?'} {duration(u['uptime'])}" if u["state"] == "active"
                else f"{u['state'].upper()} {u['version'] or '?'}" for u in (m["units"][c] for c in components))))
    if len(rows) > 1:
        lines += ["units (state, version, up for):"] + _table(rows) + [""]
    if recorded:
        lines.append(f"release:   {recorded['id']} ({recorded.get('outcome', '?')}, {recorded.get('when', '?')}, "
                     f"{recorded.get('who', '?')}) "
                     + " ".join(f"{c}={v['version']}" for c, v in sorted(recorded["components"].items())))
    else:
        lines.append("release:   none recorded")
    lines.append(f"candidate: {candidate['id']} on {', '.join(candidate['machines'])} (since {candidate.get('when', '?')}; "
                 f"`fab deploy` continues, `fab rollback` puts it back)" if candidate else "candidate: none")
    lock = view["lock"]
    lines.append("lock:      " + ("free" if not lock else " ".join(f"{k}={v}" for k, v in lock.items())))
    lines.append(status_line(view.get("maintenance")))
    etcd = view["etcd"]
    etcd_line = "DOES NOT ANSWER: " + etcd["error"] if etcd.get("error") else "leader " + (etcd["leader"] or "?")
    lines.append(f"etcd:      {etcd_line}")
    for w in view["warnings"]:
        lines.append(f"warning: {w['problem']}; fix: {w['fix']}")
    lines.append(f"{'all as recorded' if not view['warnings'] else str(len(view['warnings'])) + ' warning(s)'} "
                 f"(read in {view['seconds']:.2f} s)")
    return lines


def merged(per_machine: dict) -> list:
    """(time, machine, message) of every machine's entries, in time order. Pure."""
    return sorted((when, address, message) for address, entries in per_machine.items()
                  for when, message, _ in entries)


def log_line(when: int, address: str, message: str) -> str:
    stamp = datetime.fromtimestamp(when / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{address}  {stamp}  {message}"


def log_json(when: int, address: str, message: str) -> str:
    stamp = datetime.fromtimestamp(when / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"machine": address, "time": stamp, "message": message})


def status_line(message: Optional[str]) -> str:
    """How status output shows it. Pure."""
    return "maintenance: off" if message is None else f"maintenance: ON ({message})"
