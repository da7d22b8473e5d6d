"""The status view: the drift rules and the table `fab status` shows, from facts already read.

``drift_warnings`` turns a view (every machine's parsed status, etcd's members and leader, the
routers file, the recorded release and candidate) into warnings, each with the command that fixes
it; ``render_status`` is the table. Also the journal lines' merged order and format for
`fab logs`. Pure: facts in, lines out.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Callable, Optional

import cloudconfig
from cloudconfig.units import ETCD_CLIENT_PORT, ETCD_PROXY_UNIT, ETCD_UNIT
from tasks.model import roles
from tasks.model.backup import size_text
from tasks.model.os_upgrade_plan import BOOTING
from tasks.model.frozen import frozen


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


def machine_role(address: str, members: list, leader: Optional[str], proxy: str = "") -> str:
    """leader, follower, learner, joining (added, not started), worker (not a member, an etcd proxy
    installed: ``proxy`` is what systemd says of it) or "not a member". Pure."""
    member = next((m for m in members if m["address"] == address), None)
    if member is None:
        return WORKER if proxy not in PROXY_ABSENT else NOT_MEMBER
    if member["learner"]:
        return "learner"
    if not member["started"]:
        return "joining"
    return "leader" if address == leader else "follower"


NOT_MEMBER = "not a member"
WORKER = roles.WORKER
PROXY_ABSENT = ("", "unknown", "inactive")  # systemctl is-active of a unit that is not there (or stopped)
LEFT_BEHIND = ("learner", "joining")  # added to etcd by an add-machine that did not finish


@frozen
class MachineView:
    """One machine's entry of the view, typed: what the drift rules read of it."""
    raw: dict

    @property
    def address(self) -> str:
        return self.raw["address"]

    @property
    def reachable(self) -> bool:
        return bool(self.raw["reachable"])

    @property
    def error(self) -> Optional[str]:
        return self.raw["error"]

    @property
    def role(self) -> str:
        return self.raw["etcd"]["role"]

    @property
    def etcd_healthy(self) -> bool:
        return bool(self.raw["etcd"]["healthy"])

    @property
    def etcd_active(self) -> str:
        return self.raw["etcd"]["active"]

    @property
    def release(self) -> Optional[str]:
        return self.raw["release"]

    @property
    def edited_user_data(self) -> Optional[str]:
        """The cloud config's path when it was changed by hand since air-deploy wrote it."""
        facts = self.raw.get("cloud_config", {})
        return facts["user_data"] if facts.get("edited") else None

    @property
    def stopped(self) -> list[str]:
        """"<component> is <state>" of every unit that is not active."""
        return [f"{c} is {u['state']}" for c, u in self.raw["units"].items() if u["state"] != "active"]

    @property
    def balancer_state(self) -> Optional[str]:
        return self.raw.get("balancer_state")

    @property
    def os(self) -> dict:
        """{version, update, staged, docker, system, state}; empty when not read."""
        return self.raw.get("os") or {}


@frozen
class DriftView:
    """The view ``read_status`` assembles, typed: what the drift rules read of the cluster."""
    raw: dict

    @property
    def name(self) -> str:
        return self.raw["cluster"]

    @property
    def etcd_error(self) -> Optional[str]:
        return self.raw["etcd"].get("error")

    @property
    def etcd_answers(self) -> bool:
        return self.etcd_error is None

    @property
    def balancer_error(self) -> Optional[str]:
        return self.raw["balancer"].get("error")

    @property
    def listed(self) -> list[str]:
        """The machines the balancer's routers file routes to."""
        return self.raw["balancer"]["listed"]

    @property
    def members(self) -> list[str]:
        return [m["address"] for m in self.raw["etcd"]["members"]]

    @property
    def file_machines(self) -> list[str]:
        return self.raw["file_machines"]

    @property
    def recorded(self) -> Optional[dict]:
        return self.raw["release"]

    @property
    def candidate(self) -> Optional[dict]:
        return self.raw["candidate"]

    @property
    def machines(self) -> list[MachineView]:
        return [MachineView(m) for m in self.raw["machines"]]

    @property
    def via(self) -> str:
        """`` --via <member>`` for the fixes that reach etcd: a member from the cluster file first."""
        members = self.members
        any_member = next((m for m in self.file_machines if m in members), None) or (members[0] if members else None)
        return f" --via {any_member}" if any_member else ""

    def upgrade(self, address: str) -> str:
        return f"`fab upgrade-machine --cluster {self.name} --machine {address}`"

    def in_service(self, m: MachineView) -> bool:
        """Whether the machine's release, units and routing are judged: when etcd answers, only a
        started member's are (a non-member is not ours, or says so; a learner is left behind)."""
        return not self.etcd_answers or m.role not in (NOT_MEMBER, *LEFT_BEHIND)

    def out_of_balancer(self, m: MachineView) -> bool:
        return not self.balancer_error and m.address not in self.listed


def _warning(machine: Optional[str], problem: str, fix: str) -> dict:
    return {"machine": machine, "problem": problem, "fix": fix}


# ---------------------------------------------------------------- the cluster's rules

def etcd_silent(d: DriftView) -> list[dict]:
    if not d.etcd_error:
        return []
    answering = [m["address"] for m in d.raw["machines"] if m["etcd"]["role"].startswith("no quorum")
                 and m["etcd"].get("active") == "active"]
    if answering:
        return [_warning(None, f"etcd has lost its quorum: {d.etcd_error}",
                         f"start {ETCD_UNIT} on the members that are down if they can come back; if not: "
                         f"`fab etcd.recover --cluster {d.name} --machine {answering[0]}` (then add-machine the "
                         f"replacements), or `fab etcd.restore --cluster {d.name} --snapshot FILE`")]
    return [_warning(None, f"etcd does not answer: {d.etcd_error}",
                     f"start {ETCD_UNIT} on the machines (`systemctl start {ETCD_UNIT}`), "
                     f"then `fab status --cluster {d.name}`")]


def etcd_open(d: DriftView) -> list[dict]:
    """The cluster file asks for etcd's authentication and etcd answers anyone."""
    auth = d.raw["etcd"].get("auth")
    if not auth or not auth["wanted"] or auth["on"]:
        return []
    return [_warning(None, "etcd's authentication is off: any process on a machine may read and write it",
                     f"`fab etcd.auth --cluster {d.name}`")]


def balancer_unreadable(d: DriftView) -> list[dict]:
    if not d.balancer_error:
        return []
    return [_warning(None, f"the balancer's routers file cannot be read: {d.balancer_error}",
                     f"check the balancer host {d.raw['balancer']['host']}")]


def rollout_unfinished(d: DriftView) -> list[dict]:
    recorded = d.recorded
    if not (recorded and recorded.get("outcome") == "upgrading" and not d.raw["lock"]):
        return []
    return [_warning(None, f"the rollout to {recorded['id']} did not finish (its task was killed) and no task holds the lock",
                     f"`fab rolling-upgrade --cluster {d.name}`")]


def balancer_routes_to_strangers(d: DriftView) -> list[dict]:
    if d.balancer_error or not d.etcd_answers:
        return []
    ours = set(d.members) | {m.address for m in d.machines if m.role == WORKER}
    return [_warning(address, f"the balancer routes to {address}, which is neither an etcd member nor a worker",
                     f"`fab balancer.remove --cluster {d.name} --machine {address}`")
            for address in d.listed if address not in ours]


# ---------------------------------------------------------------- a machine's rules

def unreachable(d: DriftView, m: MachineView) -> list[dict]:
    return [_warning(m.address, f"{m.address} cannot be reached ({m.error})",
                     f"once it answers: {d.upgrade(m.address)}; if it is gone for good: "
                     f"`fab remove-machine --cluster {d.name}{d.via} --machine {m.address} --force`")]


def not_a_member(d: DriftView, m: MachineView) -> list[dict]:
    if m.role != NOT_MEMBER or m.address not in d.file_machines:
        return []  # a non-member that is not in the file either is not ours
    return [_warning(m.address, f"{m.address} is in the cluster file but not an etcd member",
                     f"`fab add-machine --cluster {d.name}{d.via} --machine {m.address}`")]


def not_in_file(d: DriftView, m: MachineView) -> list[dict]:
    if m.role == NOT_MEMBER or m.address in d.file_machines:
        return []
    if m.role == WORKER:
        return [_warning(m.address, f"{m.address} is a worker but not in the cluster file (deploys do not reach it)",
                         f"add {m.address} to `machines:` in {d.name}.yaml")]
    return [_warning(m.address, f"{m.address} is an etcd member but not in the cluster file",
                     f"add {m.address} to `machines:` in {d.name}.yaml")]


def left_behind(d: DriftView, m: MachineView) -> list[dict]:
    if m.role not in LEFT_BEHIND:
        return []
    return [_warning(m.address, f"{m.address} is an etcd {m.role} left behind by an unfinished add-machine",
                     f"`fab remove-machine --cluster {d.name}{d.via} --machine {m.address}`, then add-machine again")]


def etcd_unhealthy(d: DriftView, m: MachineView) -> list[dict]:
    if m.role == NOT_MEMBER or m.etcd_healthy:
        return []
    if m.role == WORKER:
        return [_warning(m.address, f"the etcd proxy on worker {m.address} cannot reach the etcd members "
                                    f"({ETCD_PROXY_UNIT} {m.raw['etcd'].get('proxy', 'unknown')})",
                         f"`journalctl -u {ETCD_PROXY_UNIT}` on {m.address} says why; it needs the members' "
                         f"port {ETCD_CLIENT_PORT}")]
    return [_warning(m.address, f"etcd on {m.address} is not healthy ({ETCD_UNIT} {m.etcd_active})",
                     f"`systemctl restart {ETCD_UNIT}` on {m.address}; `journalctl -u {ETCD_UNIT}` there says why")]


def wrong_release(d: DriftView, m: MachineView) -> list[dict]:
    """Not the recorded release, nor the canary's candidate on a machine it runs on."""
    recorded, candidate = d.recorded, d.candidate
    allowed = {recorded["id"]} if recorded else set()
    if candidate and m.address in candidate["machines"]:
        allowed.add(candidate["id"])
    if not allowed or m.release in allowed:
        return []
    wanted = " or ".join(sorted(allowed))
    return [_warning(m.address, f"{m.address} runs release {m.release or '(none)'}, not {wanted}", d.upgrade(m.address))]


def hand_edited(d: DriftView, m: MachineView) -> list[dict]:
    path = m.edited_user_data
    if not path:
        return []
    return [_warning(m.address, f"{path} on {m.address} was changed by hand since air-deploy wrote it (a deploy stops there)",
                     cloudconfig.keep_hand_change(path))]


def units_stopped(d: DriftView, m: MachineView) -> list[dict]:
    stopped = m.stopped
    if not stopped:
        return []
    return [_warning(m.address, f"on {m.address}: {', '.join(stopped)}", d.upgrade(m.address))]


def out_of_balancer(d: DriftView, m: MachineView) -> list[dict]:
    if not d.out_of_balancer(m):
        return []
    return [_warning(m.address, f"{m.address} is out of the balancer", d.upgrade(m.address) + " (health check, then back in)")]


def marked_by_haproxy(d: DriftView, m: MachineView) -> list[dict]:
    """Listed, but haproxy does not send to it (DOWN: its router fails the check; DRAIN, MAINT: set so)."""
    state_ = m.balancer_state
    if d.out_of_balancer(m) or state_ in (None, "UP"):
        return []
    if state_ == "DOWN":
        fix = (f"`fab logs --cluster {d.name} --component {d.raw['balancer']['component']} --machine {m.address}` "
               f"says why its router fails haproxy's check")
    else:
        fix = (f"`fab balancer.remove --cluster {d.name} --machine {m.address}`, then `fab balancer.add` of it "
               f"(haproxy readies it)")
    return [_warning(m.address, f"haproxy marks {m.address} {state_}", fix)]


def reboot_pending(d: DriftView, m: MachineView) -> list[dict]:
    """update-engine staged an OS update: it runs once the machine reboots, which only os-upgrade does."""
    if not m.os.get("staged"):
        return []
    return [_warning(m.address, f"{m.address}: {m.os['state']}", f"`fab os-upgrade --cluster {d.name}`")]


def rebooting(d: DriftView, m: MachineView) -> list[dict]:
    if m.os.get("system") not in BOOTING:
        return []
    return [_warning(m.address, f"{m.address} is {m.os['state']}",
                     f"wait for it, then `fab status --cluster {d.name}` (deploys refuse meanwhile)")]


MachineRule = Callable[[DriftView, MachineView], list]
# Judged only when etcd answers.
MEMBERSHIP_RULES: tuple[MachineRule, ...] = (not_a_member, not_in_file, left_behind)
# Judged only when the machine is in service (``DriftView.in_service``).
SERVICE_RULES: tuple[MachineRule, ...] = (etcd_unhealthy, wrong_release, hand_edited, units_stopped, out_of_balancer,
                                          marked_by_haproxy, rebooting, reboot_pending)


def machine_rules(d: DriftView, m: MachineView) -> tuple[MachineRule, ...]:
    """The rules that judge a machine: an unreachable one is only said to be."""
    if not m.reachable:
        return (unreachable,)
    return (MEMBERSHIP_RULES if d.etcd_answers else ()) + (SERVICE_RULES if d.in_service(m) else ())


def machines_drift(d: DriftView) -> list[dict]:
    return [w for m in d.machines for rule in machine_rules(d, m) for w in rule(d, m)]


# In the order the warnings are shown: the cluster's parts, each machine, then the balancer's strays.
RULES: tuple[Callable[[DriftView], list], ...] = (etcd_silent, etcd_open, balancer_unreadable, rollout_unfinished,
                                                  machines_drift, balancer_routes_to_strangers)


def drift_warnings(view: dict) -> list:
    """Every way the cluster is not as recorded, each {machine, problem, fix} with the command that
    fixes it; empty when all is as recorded. A machine running the canary's candidate is not
    drift. Pure: from the view ``read_status`` assembles."""
    d = DriftView(view)
    return [w for rule in RULES for w in rule(d)]


def _table(rows: list) -> list:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _balancer_cell(m: dict) -> str:
    """in / OUT, with haproxy's own state when it was read (in (UP), in (DOWN), in (DRAIN))."""
    if not m["balancer"]:
        return "OUT"
    return f"in ({m['balancer_state']})" if m.get("balancer_state") else "in"


def _etcd_cell(m: dict) -> str:
    role = m["etcd"]["role"]
    return role if role == NOT_MEMBER else f"{role}, {'healthy' if m['etcd']['healthy'] else 'UNHEALTHY'}"


def _release_cell(m: dict, recorded: Optional[dict], candidate: Optional[dict]) -> str:
    """The machine's release and what it is to the cluster: (recorded), (candidate) or (NOT RECORDED)."""
    release = m["release"] or "(none)"
    if recorded and m["release"] == recorded["id"]:
        return release + " (recorded)"
    if candidate and m["release"] == candidate["id"]:
        return release + " (candidate)"
    return release + " (NOT RECORDED)"


def _os_cell(m: dict) -> str:
    """The OS version, and the one staged for the next boot: 4081.2.0 (4081.2.1 staged)."""
    found = m.get("os") or {}
    return (found.get("version") or "?") + (f" ({found['staged']} staged)" if found.get("staged") else "")


def _machine_row(m: dict, recorded: Optional[dict], candidate: Optional[dict]) -> tuple:
    if not m["reachable"]:
        return (m["address"], "DOWN", m["etcd"]["role"], _balancer_cell(m), "?", "?", "?", "?")
    return (m["address"], "ok", _etcd_cell(m), _balancer_cell(m), _release_cell(m, recorded, candidate),
            m["images"].get("size", "?"), _os_cell(m), (m.get("os") or {}).get("docker") or "?")


def _machines_table(view: dict) -> list:
    rows = [("MACHINE", "SSH", "ETCD", "BALANCER", "RELEASE", "IMAGES", "OS", "DOCKER")]
    rows += [_machine_row(m, view["release"], view["candidate"]) for m in view["machines"]]
    return _table(rows) + [""]


def _unit_cell(u: dict) -> str:
    if u["state"] == "active":
        return f"{u['state']} {u['version'] or '?'} {duration(u['uptime'])}"
    return f"{u['state'].upper()} {u['version'] or '?'}"


def _units_table(view: dict) -> list:
    """Each reachable machine's units (state, version, up for); nothing when none answered."""
    components = view["components"]
    rows = [("MACHINE", *components)]
    rows += [(m["address"], *(_unit_cell(m["units"][c]) for c in components)) for m in view["machines"] if m["reachable"]]
    return ["units (state, version, up for):"] + _table(rows) + [""] if len(rows) > 1 else []


def _release_line(recorded: Optional[dict]) -> str:
    if not recorded:
        return "release:   none recorded"
    return (f"release:   {recorded['id']} ({recorded.get('outcome', '?')}, {recorded.get('when', '?')}, "
            f"{recorded.get('who', '?')}) "
            + " ".join(f"{c}={v['version']}" for c, v in sorted(recorded["components"].items()))
            + (f"  {json.dumps(recorded['message'], ensure_ascii=False)}" if recorded.get("message") else ""))


def _candidate_line(candidate: Optional[dict]) -> str:
    if not candidate:
        return "candidate: none"
    return (f"candidate: {candidate['id']} on {', '.join(candidate['machines'])} (since {candidate.get('when', '?')}; "
            f"`fab deploy` continues, `fab rollback` puts it back)")


def _lock_line(lock: Optional[dict]) -> str:
    return "lock:      " + ("free" if not lock else " ".join(f"{k}={v}" for k, v in lock.items()))


def _etcd_line(etcd: dict) -> str:
    """Leader, quorum and the largest member database; or why etcd does not answer."""
    if etcd.get("error"):
        return "etcd:      DOES NOT ANSWER: " + etcd["error"]
    sizes = [s for s in (etcd.get("db_size") or {}).values() if s]
    extra = (f", {etcd['said']}" if etcd.get("said") else "") + (f", db {size_text(max(sizes))}" if sizes else "")
    auth = etcd.get("auth")
    if auth is not None:
        extra += ", logins required" if auth["on"] else ", OPEN to any client on a machine"
    return f"etcd:      leader {etcd['leader'] or '?'}{extra}"


def _backup_line(found: Optional[dict]) -> str:
    """The newest backup's age, revision and keys, or that there is none."""
    if not found:
        return "backup:    (not read)"
    if not found.get("newest"):
        return f"backup:    none in {found['folder']}"
    what = f", rev {found['revision']}, {found['keys']} keys" if found.get("revision") is not None else ""
    return f"backup:    newest {duration(found['age'])} old{what} ({found['newest']})"


def _cluster_lines(view: dict) -> list:
    """The recorded release, the candidate, the lock holder, maintenance, etcd and the newest backup."""
    return [_release_line(view["release"]), _candidate_line(view["candidate"]), _lock_line(view["lock"]),
            status_line(view.get("maintenance")), _etcd_line(view["etcd"]), _backup_line(view.get("backup"))]


def _warning_lines(view: dict) -> list:
    warnings = view["warnings"]
    summary = "all as recorded" if not warnings else f"{len(warnings)} warning(s)"
    return ([f"warning: {w['problem']}; fix: {w['fix']}" for w in warnings]
            + [f"{summary} (read in {view['seconds']:.2f} s)"])


def render_status(view: dict) -> list:
    """The status as the lines `fab status` prints: the machines, their units, the cluster, the
    warnings. Pure."""
    return ([f"cluster {view['cluster']}", ""] + _machines_table(view) + _units_table(view)
            + _cluster_lines(view) + _warning_lines(view))


def merged(per_machine: dict) -> list:
    """(time, machine, message) of every machine's entries, in time order. Pure."""
    return sorted((when, address, message) for address, entries in per_machine.items()
                  for when, message, _ in entries)


def log_line(when: int, address: str, message: str) -> str:
    stamp = datetime.fromtimestamp(when / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return f"{address}  {stamp}  {printable(message)}"


def printable(text: str) -> str:
    """``text`` safe for a terminal: a control character (an escape sequence's ESC, a carriage
    return that would hide what came before it) shown as ``\\xNN``; tabs kept. A journal line or a
    value read from etcd is printed through it."""
    return "".join(ch if ch.isprintable() or ch == "\t" else f"\\x{ord(ch):02x}" for ch in text)


def log_json(when: int, address: str, message: str) -> str:
    stamp = datetime.fromtimestamp(when / 1e6, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps({"machine": address, "time": stamp, "message": message})


def status_line(message: Optional[str]) -> str:
    """How status output shows it. Pure."""
    return "maintenance: off" if message is None else f"maintenance: ON ({message})"
