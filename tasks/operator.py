"""The operator's everyday tools: `fab status`, `fab logs`, `fab exec`.

``status`` reads everything at once (every machine over SSH, etcd, the
balancer's routers file), side by side, and shows one table: per machine
whether it answers, its etcd membership and health, the release it runs
against the recorded one (or the canary's candidate), each Air unit's state,
version and uptime, whether the balancer routes to it (and haproxy's own
state of it: UP, DOWN, DRAIN, MAINT), and its images' disk use; then the cluster: recorded release,
candidate, lock holder, and every
drift with the command that fixes it. It exits 1 when anything drifted, so
scripts and monitoring can use it. ``logs`` merges a unit's journal from
every machine in time order (``--follow`` streams until Ctrl-C); ``exec``
runs a command in a component's container, its exit status ours.

The top half is pure (the commands sent, the parsers of what comes back, the
drift rules, the table); the bottom half is the runbooks and the tasks.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Optional

import cloudconfig
from cloudconfig.units import ETCD_LOCAL_CLIENT_URL, ETCD_UNIT, STATE_DIR, container_name, unit_name
from invoke.exceptions import Exit

from . import balancer, machine, maintenance, state
from .cli import air_task, cluster_of
from .cluster import check_address
from .errors import AirError, ConfigError, RemoteError
from .remote import q, say
from .session import session

UNIT_PROPERTIES = "Id,ActiveState,SubState,ActiveEnterTimestampMonotonic"


# ---------------------------------------------------------------- what to run, and reading it back

def status_command(cluster) -> str:
    """One read of everything `status` wants from a machine, in sections for ``parse_status``. Pure."""
    return "; ".join([
        f"echo '--release'; cat {q(STATE_DIR)}/release 2>/dev/null",
        f"echo '--components'; cat {q(cloudconfig.COMPONENTS_FILE)} 2>/dev/null",
        f"echo '--units'; systemctl show -p {UNIT_PROPERTIES} {machine.unit_words(cluster)} 2>/dev/null",
        "echo '--uptime'; cut -d' ' -f1 /proc/uptime",
        f"echo '--etcd'; systemctl is-active {ETCD_UNIT} 2>/dev/null; "
        f"curl -s -m 2 {ETCD_LOCAL_CLIENT_URL}/health 2>/dev/null; echo",
        "echo '--images'; docker system df --format '{{.Type}}\t{{.Size}}\t{{.Reclaimable}}' 2>/dev/null",
        machine.cloud_config_facts_command(cluster),
        "true",
    ])


def haproxy_states(servers) -> dict:
    """machine -> haproxy's status of it (UP, DOWN, DRAIN, MAINT), from its servers (the first backend
    naming it: every backend of the cluster sends to the same routers). Pure."""
    states: dict = {}
    for server in servers:
        states.setdefault(server.machine, server.status.split(" ")[0])
    return states


def parse_status(text: str, cluster) -> dict:
    """What ``status_command`` printed, as {release, components, units, etcd, images}. Pure.

    ``units``: component -> {unit, state, sub, uptime (seconds, None when not active)};
    ``etcd``: {active, healthy}; ``images``: {size, reclaimable} as Docker says them."""
    s = machine.in_sections(text, ("release", "components", "units", "uptime", "etcd", "images", "user_data",
                                   "written"))
    try:
        uptime = float("".join(s["uptime"]).strip())
    except ValueError:
        uptime = None
    shown: dict = {}
    block: dict = {}
    for line in s["units"] + [""]:
        if not line.strip():
            if block.get("Id"):
                shown[block["Id"]] = block
            block = {}
            continue
        key, _, value = line.partition("=")
        block[key] = value
    versions = machine.parse_components("\n".join(s["components"]))
    units = {}
    for c in cluster.components:
        props = shown.get(unit_name(c.name), {})
        active = props.get("ActiveState", "unknown")
        since = props.get("ActiveEnterTimestampMonotonic", "0")
        up = None
        if active == "active" and since.isdigit() and int(since) and uptime is not None:
            up = max(0, int(uptime - int(since) / 1e6))
        units[c.name] = {"unit": unit_name(c.name), "state": active, "sub": props.get("SubState", ""),
                         "version": versions.get(c.name), "uptime": up}
    etcd_lines = [line.strip() for line in s["etcd"] if line.strip()]
    health = next((line for line in etcd_lines if line.startswith("{")), "")
    try:
        healthy = str(json.loads(health).get("health")) == "true"
    except ValueError:
        healthy = False
    images = {}
    for line in s["images"]:
        parts = line.split("\t")
        if parts[0] == "Images" and len(parts) >= 3:
            images = {"size": parts[1], "reclaimable": parts[2]}
    return {"release": "".join(s["release"]).strip(), "components": versions, "units": units,
            "etcd": {"active": etcd_lines[0] if etcd_lines else "unknown", "healthy": healthy},
            "images": images, "cloud_config": machine.parse_cloud_config_facts(s)}


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


# ---------------------------------------------------------------- the drift rules

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
                 machine.keep_hand_change(path))
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


# ---------------------------------------------------------------- the table

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
    lines.append(maintenance.status_line(view.get("maintenance")))
    etcd = view["etcd"]
    etcd_line = "DOES NOT ANSWER: " + etcd["error"] if etcd.get("error") else "leader " + (etcd["leader"] or "?")
    lines.append(f"etcd:      {etcd_line}")
    for w in view["warnings"]:
        lines.append(f"warning: {w['problem']}; fix: {w['fix']}")
    lines.append(f"{'all as recorded' if not view['warnings'] else str(len(view['warnings'])) + ' warning(s)'} "
                 f"(read in {view['seconds']:.2f} s)")
    return lines


# ---------------------------------------------------------------- reading the cluster

def read_status(s, via: str = None) -> dict:
    """Everything `status` shows, read side by side: every machine over SSH, etcd through one
    member, the balancer's routers file. A part that does not answer is said in the view."""
    cluster, ex = s.cluster, s.ex
    started = time.monotonic()

    def read_etcd():
        client = s.connect_etcd(via)
        members = [{"id": m.id, "address": state.member_address(m), "learner": m.learner, "started": m.started}
                   for m in client.members()]
        leader_id = client.status()["leader"]
        _, record = state.read_release(client, cluster)
        _, candidate = state.read_candidate(client, cluster)
        return {"members": members, "via": s.via,
                "leader": next((m["address"] for m in members if m["id"] == leader_id), None),
                "record": record, "candidate": candidate, "lock": client.holder(state.lock_key(cluster)),
                "maintenance": maintenance.read(client, cluster)}

    def read_machine(address):
        why = ex.reachable(address)
        if why:
            return {"reachable": False, "error": why}
        try:
            text = ex.read(address, status_command(cluster), what="read the status").stdout
        except AirError as e:
            return {"reachable": False, "error": str(e)}
        return {"reachable": True, "error": None, **parse_status(text, cluster)}

    def guarded(work, *args):
        try:
            return work(*args), None
        except AirError as e:
            return None, str(e)

    with ThreadPoolExecutor(max_workers=2 + len(cluster.machines)) as pool:
        etcd_f = pool.submit(guarded, read_etcd)
        routers_f = pool.submit(guarded, lambda: balancer.Routers(ex).listed())
        haproxy_f = pool.submit(guarded, lambda: haproxy_states(balancer.Routers(ex).servers()))
        machine_fs = {a: pool.submit(read_machine, a) for a in cluster.machines}
        (etcd, etcd_error), (listed, balancer_error) = etcd_f.result(), routers_f.result()
        found = {a: f.result() for a, f in machine_fs.items()}
        haproxy, haproxy_error = haproxy_f.result()
    etcd = etcd or {"members": [], "via": None, "leader": None, "record": None, "candidate": None, "lock": None,
                    "maintenance": None}
    extra = [m["address"] for m in etcd["members"] if m["address"] not in found]
    found.update(zip(extra, ex.parallel(read_machine, extra)) if extra else ())
    machines = []
    for address in sorted(found, key=_address_key):
        fact = found[address]
        entry = {"address": address, **fact,
                 "etcd": {"role": machine_role(address, etcd["members"], etcd["leader"]),
                          **fact.get("etcd", {"active": "unknown", "healthy": False})},
                 "balancer": address in (listed or []), "balancer_state": (haproxy or {}).get(address)}
        entry.setdefault("release", None)
        entry.setdefault("units", {})
        entry.setdefault("images", {})
        machines.append(entry)
    view = {"cluster": cluster.name, "file_machines": list(cluster.machines),
            "components": list(cluster.component_names),
            "release": etcd["record"], "candidate": etcd["candidate"], "lock": etcd["lock"],
            "maintenance": etcd["maintenance"],
            "etcd": {"members": etcd["members"], "leader": etcd["leader"], "via": etcd["via"], "error": etcd_error},
            "balancer": {"host": cluster.balancer.host, "listed": listed or [], "error": balancer_error,
                         "component": cluster.front.name, "states_error": haproxy_error},
            "machines": machines}
    view["warnings"] = drift_warnings(view)
    view["ok"] = not view["warnings"]
    view["seconds"] = round(time.monotonic() - started, 3)
    return view


def _address_key(address: str):
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


@air_task(help={"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"})
def status(c, cluster=None, via=None, json_=False):
    """Show every machine and the cluster at a glance; exit 1 when anything is not as recorded."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    with session(target, via=via, etcd=False) as s:
        view = read_status(s, via)
    if json_:
        print(json.dumps(view, indent=1, sort_keys=True))
    else:
        print("\n".join(render_status(view)))
    if not view["ok"]:
        raise Exit(code=1)


# ---------------------------------------------------------------- logs

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


def check_lines(lines) -> int:
    try:
        value = int(lines)
    except (TypeError, ValueError):
        value = 0
    if value <= 0:
        raise ConfigError(f"--lines: expected a positive whole number, got {lines!r}")
    return value


def machines_of(cluster, machine_=None) -> list:
    if machine_ is None:
        return list(cluster.machines)
    address = check_address(machine_, "--machine")
    if address not in cluster.machines:
        raise ConfigError(f"--machine: {address} is not a machine of {cluster.name} "
                          f"({', '.join(cluster.machines)})")
    return [address]


def follow_journals(ex, machines, component, cursors: dict, emit) -> None:
    """Stream the unit's new entries from every machine until Ctrl-C (or SIGTERM); each entry is
    ``emit``-ted as it arrives. Closing our channels stops journalctl on the hosts."""
    stop = threading.Event()

    def one(address):
        def line(text):
            entry = journal_entry(text)
            if entry is not None:
                emit(entry[0], address, entry[1])
        try:
            ex.stream(address, journal_command(component, 0, follow=True, after=cursors.get(address)),
                      on_line=line, stop=stop, what=f"follow the journal of {unit_name(component)}")
        except AirError as e:
            say(f"logs: stopped following {address}: {e}")

    def handle(signum, frame):
        stop.set()
    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGINT, signal.SIGTERM)} \
        if threading.current_thread() is threading.main_thread() else {}
    threads = [threading.Thread(target=one, args=(a,), name=f"follow {a}", daemon=True) for a in machines]
    try:
        for t in threads:
            t.start()
        while not stop.is_set() and any(t.is_alive() for t in threads):
            stop.wait(0.2)
        stop.set()
        for t in threads:
            t.join(10)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@air_task(help={"cluster": "target cluster", "component": "component whose unit's journal is shown",
                "machine": "only this machine (default: every machine)", "lines": "entries per machine (default 50)",
                "follow": "keep showing new entries until Ctrl-C", "since": "from this time on (journalctl --since)",
                "json": "print one JSON object per entry"})
def logs(c, cluster=None, component=None, machine_=None, lines=50, follow=False, since=None, json_=False):
    """Show a component's journal from every machine (or one), merged in time order."""
    target = cluster_of(cluster)
    if not component:
        raise ConfigError(f"--component is required (one of: {', '.join(target.component_names)})")
    target.component(component)
    count = check_lines(lines)
    machines = machines_of(target, machine_)
    if since is not None and not str(since).strip():
        raise ConfigError("--since: expected a time journalctl understands, got ''")
    form = log_json if json_ else log_line
    printing = threading.Lock()

    def emit(when, address, message):
        with printing:
            print(form(when, address, message), flush=True)

    with session(target, etcd=False) as s:
        def read(address):
            try:
                return parse_journal(s.ex.read(address, journal_command(component, count, since),
                                               what=f"read the journal of {unit_name(component)}").stdout), None
            except AirError as e:
                return None, str(e) if str(e).startswith(address) else f"{address}: {e}"
        results = dict(zip(machines, s.ex.parallel(read, machines)))
        found = {a: entries for a, (entries, _) in results.items() if entries is not None}
        missing = [why for _, why in results.values() if why]
        for entry in merged(found):
            emit(*entry)
        if follow and found:
            for why in missing:
                say(f"logs: not following {why}")
            cursors = {a: entries[-1][2] for a, entries in found.items() if entries}
            follow_journals(s.ex, list(found), component, cursors, emit)
    if missing:
        # The machines that answered were shown; the error names the others.
        raise RemoteError("no journal from " + "; ".join(missing))


# ---------------------------------------------------------------- a command in a container

def exec_command(component: str, command: str, tty: bool) -> str:
    """``command`` run by ``sh -c`` in the component's container; with a terminal when ``tty``. Pure."""
    flags = "-it " if tty else ""
    return f"docker exec {flags}{q(container_name(component))} sh -c {q(command)}"


@air_task(name="exec", help={"cluster": "target cluster", "component": "component whose container runs it",
                             "machine": "machine address", "command": "the command (run by sh -c in the container)"})
def exec_(c, cluster=None, component=None, machine_=None, command=None):
    """Run a command in a component's container on one machine (a console when stdin is a terminal)."""
    target = cluster_of(cluster)
    if not component:
        raise ConfigError(f"--component is required (one of: {', '.join(target.component_names)})")
    target.component(component)
    if machine_ is None:
        raise ConfigError("--machine is required (an IPv4 or IPv6 address)")
    address = machines_of(target, machine_)[0]
    if not command or not str(command).strip():
        raise ConfigError("--command is required (what to run in the container)")
    tty = sys.stdin.isatty()
    with session(target, etcd=False) as s:
        exited = s.ex.stream(address, exec_command(component, command, tty), tty=tty,
                             what=f"exec in {container_name(component)}")
    if exited:
        raise Exit(code=exited)
