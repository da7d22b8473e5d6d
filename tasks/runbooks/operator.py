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

The commands sent and their parsers are ``tasks.commands.status``; the drift
rules and the table are ``tasks.model.status_view``; here they are run.
"""
from __future__ import annotations

import ipaddress
import json
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from invoke.exceptions import Exit

from cloudconfig.units import container_name, unit_name
from tasks.commands.status import (
    exec_command,
    haproxy_states,
    journal_command,
    journal_entry,
    parse_journal,
    parse_status,
    status_command,
)
from tasks.model import backup, roles, state
from tasks.model.cluster import check_address
from tasks.model.errors import AirError, ConfigError, RemoteError
from tasks.model.status_view import WORKER, drift_warnings, log_json, log_line, machine_role, merged, printable, render_status
from tasks.net import etcd as etcd_api, warm
from tasks.net.progress import say
from tasks.net.session import Session, session
from tasks.runbooks import balancer, etcd_backup, etcd_members, records
from tasks.runbooks.cli import air_task, cluster_of

# ---------------------------------------------------------------- what to run, and reading it back


# ---------------------------------------------------------------- the drift rules


# ---------------------------------------------------------------- the table


# ---------------------------------------------------------------- reading the cluster

# s: everything `status` reads has this long; what has not answered by then is shown as not answering.
STATUS_WITHIN = 2.0
ETCD_ASK_WITHIN = 1.5  # s: of it, for asking every etcd member (``etcd_members``)
NO_ETCD: dict = {"members": [], "via": None, "leader": None, "record": None, "candidate": None, "lock": None,
           "maintenance": None}


def read_etcd(s: Session, via: str = None) -> tuple:
    """(etcd's part of the view, error or None): every member asked at once (quorum, database
    sizes), the records read by each one's quorum read; those of the first with quorum are shown."""
    cluster = s.cluster
    keys = [state.release_key(cluster), state.candidate_key(cluster), state.lock_key(cluster),
            state.maintenance_key(cluster)]
    if via:
        answers = etcd_members.ask_all(s.ex, [via], ETCD_ASK_WITHIN, reads=keys)
    else:  # taken for members: those setup-cluster makes; the other members their answers list are asked next
        first = roles.first_members(list(cluster.machines), cluster.etcd_members)
        answers = etcd_members.ask_members(s.ex, first, ETCD_ASK_WITHIN, reads=keys)
    quorum = etcd_members.quorum_of(answers)
    health = {"quorum": quorum.has_quorum, "answering": len(quorum.answering), "voters": len(quorum.members),
              "said": quorum.describe(), "answering_members": list(quorum.answering),
              "db_size": {a: answers[a].figures.get("db_size") for a in quorum.answering}}
    listed = next((x.members for x in answers.values() if x.members), ())
    members = [{"id": i, "address": a, "learner": learner, "started": started} for a, i, learner, started in listed]
    if not quorum.has_quorum:
        # The members' errors (every one asked while no member list is known): a worker asked is none.
        errors = "; ".join(x.error for a, x in answers.items()
                           if x.error and (a in quorum.members or not quorum.members))
        return {**NO_ETCD, "members": members, **health}, quorum.describe() + (f" ({errors})" if errors else "")
    through = answers[quorum.healthy[0]]
    release, candidate, lock, message = (through.values.get(key) for key in keys)
    return {"members": members, "via": through.address, "leader": quorum.leader,
            "record": records.parsed(keys[0], release)[1] if release else None,
            "candidate": records.parsed(keys[1], candidate)[1] if candidate else None,
            "lock": etcd_api.holder_of(lock), "maintenance": message,
            "auth": {"wanted": cluster.etcd_auth, "on": through.auth}, **health}, None


def read_machine(ex, address: str) -> dict:
    why = ex.reachable(address)
    if why:
        return {"reachable": False, "error": why}
    try:
        text = ex.read(address, status_command(ex.cluster), what="read the status").stdout
    except AirError as e:
        return {"reachable": False, "error": str(e)}
    return {"reachable": True, "error": None, **parse_status(text, ex.cluster)}


def read_parts(s: Session, via: str = None) -> dict:
    """part -> (what was read, error or None) of every part of the status, read side by side; a
    part not read within ``STATUS_WITHIN`` s (etcd's: its own time) says so."""
    ex = s.ex
    parts: dict = {"etcd": lambda: read_etcd(s, via), "routers": lambda: (balancer.Routers(ex).listed(), None),
                   "haproxy": lambda: (haproxy_states(balancer.Routers(ex).servers()), None)}
    parts.update({address: (lambda a=address: (read_machine(ex, a), None)) for address in s.cluster.machines})
    # etcd's part keeps its own time: longer only when a busy etcd is asked again (``ask_members``).
    found = etcd_members.within(lambda part: parts[part](), list(parts), STATUS_WITHIN,
                                longer={"etcd": STATUS_WITHIN + etcd_members.SURE_WITHIN})
    return {part: result if result is not None else (None, error) for part, (result, error) in found.items()}


def read_status(s: Session, via: str = None) -> dict:
    """Everything `status` shows, read side by side within ``STATUS_WITHIN`` s: every machine over
    SSH, every etcd member, the balancer's routers file, the newest backup. A part that does not
    answer is said in the view."""
    cluster, ex = s.cluster, s.ex
    started = time.monotonic()
    parts = read_parts(s, via)
    etcd, etcd_error = parts["etcd"]
    listed, balancer_error = parts["routers"]
    haproxy, haproxy_error = parts["haproxy"]
    found = {a: parts[a][0] or {"reachable": False, "error": parts[a][1]} for a in cluster.machines}
    etcd = etcd or dict(NO_ETCD)
    extra = [m["address"] for m in etcd["members"] if m["address"] not in found]
    if extra:
        late = etcd_members.within(lambda a: read_machine(ex, a), extra, STATUS_WITHIN / 2)
        found.update({a: r or {"reachable": False, "error": e} for a, (r, e) in late.items()})
    machines = [_machine_entry(address, found[address], etcd, listed, haproxy)
                for address in sorted(found, key=_address_key)]
    view = {"cluster": cluster.name, "file_machines": list(cluster.machines),
            "components": list(cluster.component_names),
            "release": etcd["record"], "candidate": etcd["candidate"], "lock": etcd["lock"],
            "maintenance": etcd["maintenance"],
            "etcd": {"members": etcd["members"], "leader": etcd["leader"], "via": etcd["via"], "error": etcd_error,
                     **{k: etcd[k] for k in ("quorum", "answering", "voters", "said", "answering_members", "db_size",
                                             "auth") if k in etcd}},
            "balancer": {"host": cluster.balancer.host, "listed": listed or [], "error": balancer_error,
                         "component": cluster.front.name, "states_error": haproxy_error},
            "backup": backup_view(cluster), "machines": machines}
    view["warnings"] = drift_warnings(view)
    view["ok"] = not view["warnings"]
    view["seconds"] = round(time.monotonic() - started, 3)
    return view


def _machine_entry(address: str, fact: dict, etcd: dict, listed, haproxy) -> dict:
    role = machine_role(address, etcd["members"], etcd["leader"], fact.get("etcd", {}).get("proxy", ""))
    if role not in ("not a member", WORKER) and etcd.get("quorum") is False:
        # "no quorum: N of M members answer" for a member that answers, instead of "not a member"
        role = etcd["said"] if address in etcd.get("answering_members", ()) else "member, no answer"
    entry = {"address": address, **fact,
             "etcd": {"role": role, **fact.get("etcd", {"active": "unknown", "healthy": False})},
             "balancer": address in (listed or []), "balancer_state": (haproxy or {}).get(address)}
    entry.setdefault("release", None)
    entry.setdefault("units", {})
    entry.setdefault("images", {})
    return entry


def backup_view(cluster) -> dict:
    """The newest backup of the cluster (read from its folder on this machine)."""
    newest = etcd_backup.newest(cluster)
    meta = etcd_backup.newest_meta(cluster) or {}
    seconds = backup.age(newest.name, datetime.now(timezone.utc)) if newest else None
    return {"folder": str(etcd_backup.folder_of(cluster)), "newest": str(newest) if newest else None,
            "age": seconds, "revision": meta.get("revision"), "keys": meta.get("keys")}


def _address_key(address: str):
    ip = ipaddress.ip_address(address)
    return (ip.version, int(ip))


@air_task(help={"cluster": "target cluster", "via": "member to reach etcd through", "json": "print JSON"})
def status(c, cluster=None, via=None, json_=False):
    """Show every machine and the cluster at a glance; exit 1 when anything is not as recorded."""
    target = cluster_of(cluster)
    via = check_address(via, "--via") if via else None
    warm(etcd_api.HTTP_STACK)  # every member is asked through its own client: loaded while the connections open
    with session(target, via=via, etcd=False) as s:
        view = read_status(s, via)
    if json_:
        print(json.dumps({**view, "round_trips": s.ex.trips.summary()}, indent=1, sort_keys=True))
    else:
        print("\n".join(printable(line) for line in render_status(view)))
    if not view["ok"]:
        raise Exit(code=1)


# ---------------------------------------------------------------- logs


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


def check_logs_request(cluster, component, lines, machine_, since) -> tuple[int, list]:
    """(entries per machine, machines) of a valid `fab logs` request; a ConfigError names the first
    flag that is not."""
    if not component:
        raise ConfigError(f"--component is required (one of: {', '.join(cluster.component_names)})")
    cluster.component(component)
    count = check_lines(lines)
    machines = machines_of(cluster, machine_)
    if since is not None and not str(since).strip():
        raise ConfigError("--since: expected a time journalctl understands, got ''")
    return count, machines


def printer(form: Callable[[int, str, str], str]) -> Callable[[int, str, str], None]:
    """Print an entry as ``form`` says, one whole line at a time (the followers print from threads)."""
    printing = threading.Lock()

    def emit(when, address, message):
        with printing:
            print(form(when, address, message), flush=True)
    return emit


def read_journals(ex, machines: list, component: str, count: int, since) -> tuple[dict, list]:
    """({machine: its entries} of the machines that answered, why each other one did not)."""
    def read(address):
        try:
            return parse_journal(ex.read(address, journal_command(component, count, since),
                                         what=f"read the journal of {unit_name(component)}").stdout), None
        except AirError as e:
            return None, str(e) if str(e).startswith(address) else f"{address}: {e}"
    results = dict(zip(machines, ex.parallel(read, machines)))
    found = {a: entries for a, (entries, _) in results.items() if entries is not None}
    missing = [why for _, why in results.values() if why]
    return found, missing


def follow_found(ex, found: dict, missing: list, component: str, emit) -> None:
    """Follow the journals that were read, each from after its last entry shown."""
    for why in missing:
        say(f"logs: not following {why}")
    cursors = {a: entries[-1][2] for a, entries in found.items() if entries}
    follow_journals(ex, list(found), component, cursors, emit)


@air_task(help={"cluster": "target cluster", "component": "component whose unit's journal is shown",
                "machine": "only this machine (default: every machine)", "lines": "entries per machine (default 50)",
                "follow": "keep showing new entries until Ctrl-C", "since": "from this time on (journalctl --since)",
                "json": "print one JSON object per entry"})
def logs(c, cluster=None, component=None, machine_=None, lines=50, follow=False, since=None, json_=False):
    """Show a component's journal from every machine (or one), merged in time order."""
    target = cluster_of(cluster)
    count, machines = check_logs_request(target, component, lines, machine_, since)
    emit = printer(log_json if json_ else log_line)
    with session(target, etcd=False) as s:
        found, missing = read_journals(s.ex, machines, component, count, since)
        for entry in merged(found):
            emit(*entry)
        if follow and found:
            follow_found(s.ex, found, missing, component, emit)
    if missing:
        # The machines that answered were shown; the error names the others.
        raise RemoteError("no journal from " + "; ".join(missing))


# ---------------------------------------------------------------- a command in a container


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
