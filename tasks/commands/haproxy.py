"""What the balancer runs for one cluster, and the commands that change it: pure text.

Each cluster has its own haproxy instance on the balancer host: its own
systemd unit (``unit_name``), its own folder with ``haproxy.cfg`` (global
settings, defaults, the cluster's http and https frontends; written by
``fab balancer.setup``) and ``routers.cfg`` (the backends listing the
machines; kept by ``tasks.runbooks.balancer.Routers``), and its own admin socket.
Several clusters share one host without sharing a file or a process, so a
change for one never rewrites, reloads or drops connections of another.
Every instance runs as haproxy's own user (``HAPROXY_USER``, made by Debian's
haproxy package), never root, with one capability: binding the frontends' low
ports. Its admin socket is that user's (mode 600, in a runtime folder only it
enters); air-deploy reaches it as root, through sudo, like every command.

The frontends pass HTTP and HTTPS through as TCP. A backend server is a
machine's front component (the router): its ``proxy`` ports when it has
them, with ``send-proxy`` or ``send-proxy-v2`` so it sees client addresses,
else its plain ports; health checks ask its plain HTTP port for its health
path. A machine taken out of rotation stays in ``routers.cfg`` as a
``disabled`` server, so haproxy's runtime API can drain it and ready it
again without a reload, and a restart of haproxy keeps it out.
"""
from __future__ import annotations

import re
from typing import NamedTuple

from tasks.commands.shell import q
from tasks.model.canary import BalancerCounters

HEADER = "# Written by air-deploy; do not edit by hand.\n"
HAPROXY = "/usr/sbin/haproxy"
HAPROXY_USER = "haproxy"  # what every cluster's instance runs as; Debian's haproxy package makes it
TOOLS = ("haproxy", "socat", "systemctl")  # what a balancer host needs, beside that user
SOCAT = "socat"
DRAIN_POLL = 0.1  # seconds between two counts of a drained server's connections
DRAINED = "air-drain:"  # the line the drain wait prints: connections still open when it stopped waiting
_SERVER = re.compile(r"^\s*server\s+(\S+)\s.*$", re.M)


# ---------------------------------------------------------------- names

def unit_name(cluster) -> str:
    return f"air-balancer-{cluster.name}.service"


def runtime_dir(cluster) -> str:
    return f"/run/air-balancer-{cluster.name}"


def admin_socket(cluster) -> str:
    return f"{runtime_dir(cluster)}/admin.sock"


def unit_path(cluster) -> str:
    return f"/etc/systemd/system/{unit_name(cluster)}"


def backends(cluster) -> list:
    """(backend name, port on the machines, PROXY keyword or None) per frontend the cluster has."""
    front = cluster.front
    proxy = front.proxy
    keyword = {"v1": "send-proxy", "v2": "send-proxy-v2"}[proxy.protocol] if proxy else None
    found = [(f"{cluster.name}_http", proxy.http if proxy else front.port, keyword)]
    if proxy and proxy.https:
        found.append((f"{cluster.name}_https", proxy.https, keyword))
    elif front.https_port:
        found.append((f"{cluster.name}_https", front.https_port, None))
    return found


def _host(machine: str) -> str:
    return f"[{machine}]" if ":" in machine else machine


# ---------------------------------------------------------------- the files

def main_config(cluster) -> str:
    """``haproxy.cfg`` of the cluster's instance: its admin socket, timeouts and frontends."""
    bind = _host(cluster.balancer.bind) if cluster.balancer.bind else ""
    ports = {"http": cluster.balancer.http_port, "https": cluster.balancer.https_port}
    lines = [HEADER.rstrip("\n"),
             "global",
             "    maxconn 4096",
             f"    stats socket {admin_socket(cluster)} mode 600 level admin",
             "defaults",
             "    mode tcp",
             "    timeout connect 2s",
             "    timeout client 60s",
             "    timeout server 60s",
             f"    timeout tunnel {cluster.balancer.tunnel}s",
             "    timeout check 2s"]
    for backend, _, _ in backends(cluster):
        kind = backend.rsplit("_", 1)[1]
        lines += [f"frontend {backend}", f"    bind {bind}:{ports[kind]}", f"    default_backend {backend}"]
    return "\n".join(lines) + "\n"


def routers_file(cluster, machines, drained=()) -> str:
    """``routers.cfg``: every backend of the cluster with ``machines`` in rotation, in the given
    order, and ``drained`` listed but ``disabled`` (out of rotation, also after a restart)."""
    front = cluster.front
    lines = [HEADER.rstrip("\n")]
    for backend, port, keyword in backends(cluster):
        lines += [f"backend {backend}", "    balance roundrobin", "    option redispatch", "    retries 3",
                  f"    option httpchk GET {front.health}", "    http-check expect status 200",
                  f"    default-server check port {front.port} inter 500ms fall 2 rise 2"]
        for machine in list(machines) + [m for m in drained if m not in machines]:
            words = [f"    server {machine} {_host(machine)}:{port}"]
            if keyword:
                words.append(keyword)
            if machine in drained and machine not in machines:
                words.append("disabled")
            lines.append(" ".join(words))
    return "\n".join(lines) + "\n"


def servers_in(text: str) -> tuple:
    """(machines in rotation, machines listed but disabled) of a routers file, in its order."""
    enabled: dict = {}
    disabled: dict = {}
    for match in _SERVER.finditer(text or ""):
        (disabled if " disabled" in match.group(0).split("#")[0] else enabled)[match.group(1)] = True
    return list(enabled), [m for m in disabled if m not in enabled]


def machines_in(text: str) -> list:
    """The machines a routers file sends traffic to."""
    return servers_in(text)[0]


def requirements_command() -> str:
    """Prints the path of each of ``TOOLS`` the host has and ``user:NAME`` when ``HAPROXY_USER`` exists.
    One name per `command -v`: dash, a plain sh, answers only for the first of several."""
    return (f"for t in {' '.join(TOOLS)}; do command -v $t; done; "
            f"id -u {q(HAPROXY_USER)} >/dev/null 2>&1 && echo user:{q(HAPROXY_USER)}")


def missing_requirements(output: str) -> list:
    """What the host lacks, from ``requirements_command``'s output. Pure."""
    found = output.split()
    missing = [t for t in TOOLS if not any(p.endswith("/" + t) for p in found)]
    return missing + ([] if f"user:{HAPROXY_USER}" in found else [f"the user {HAPROXY_USER}"])


def unit_file(cluster) -> str:
    """The systemd unit of the cluster's haproxy instance (master-worker; a reload is graceful), run as
    ``HAPROXY_USER`` with the capability to bind low ports alone."""
    files = f"-f {cluster.balancer.config} -f {cluster.balancer.routers_file}"
    return f"""\
[Unit]
Description=haproxy in front of the Air cluster {cluster.name} (written by air-deploy)
After=network-online.target
Wants=network-online.target

[Service]
User={HAPROXY_USER}
Group={HAPROXY_USER}
# The one privilege it needs: binding ports below 1024. No other capability, none gained later.
AmbientCapabilities=CAP_NET_BIND_SERVICE
CapabilityBoundingSet=CAP_NET_BIND_SERVICE
NoNewPrivileges=yes
ExecStartPre={HAPROXY} -c -q {files}
ExecStart={HAPROXY} -Ws {files} -p {runtime_dir(cluster)}/haproxy.pid
ExecReload={HAPROXY} -c -q {files}
ExecReload=/bin/kill -USR2 $MAINPID
RuntimeDirectory=air-balancer-{cluster.name}
RuntimeDirectoryMode=0700
KillMode=mixed
Restart=always
RestartSec=1
Type=notify

[Install]
WantedBy=multi-user.target
"""


# ---------------------------------------------------------------- a change of the machine list

class Change(NamedTuple):
    machines: list   # in rotation afterwards (the routers file's enabled servers)
    drained: list    # listed but disabled afterwards
    ready: list      # disabled now, back into rotation through the runtime API
    drain: list      # in rotation now, drained (then maint) through the runtime API
    reload: bool     # haproxy must read the file again (a server it does not know yet)
    check: bool      # the file names other servers than before: haproxy checks it before it is used


def plan(enabled, disabled, wanted, reload: bool = False, forget=()) -> Change:
    """How to go from a routers file's (``enabled``, ``disabled``) servers to ``wanted`` in rotation.
    A machine leaving stays listed, disabled, unless in ``forget`` (a machine leaving the cluster):
    then it is drained all the same, and the file no longer names it."""
    known = list(enabled) + [m for m in disabled if m not in enabled]
    drain = [m for m in enabled if m not in wanted]
    if reload:  # haproxy's view starts afresh: only the wanted machines are listed at all
        return Change(list(wanted), [], [], drain, True, True)
    new = any(m not in known for m in wanted)
    # Only servers put in or out of rotation: the file differs from a checked one by `disabled` words.
    return Change(list(wanted), [m for m in known if m not in wanted and m not in forget],
                  [m for m in disabled if m in wanted], drain, new, new or any(m in known for m in forget))


def api_command(cluster, commands) -> str:
    """Send ``commands`` to the cluster's admin socket at once; fail on any answer (haproxy answers
    a successful `set server` with nothing, a wrong one with a message, and exits 0 either way)."""
    line = ";".join(commands)
    return (f"out=$(printf '%s\\n' {q(line)} | {SOCAT} -t 5 stdio UNIX-CONNECT:{q(admin_socket(cluster))}) && "
            f"case $out in *[![:space:]]*) echo \"haproxy: $out\" >&2; exit 1;; esac")  # the shell's own test: no process


def set_state(cluster, machines, state: str) -> list:
    """Runtime API commands setting every server of ``machines`` to ``state`` (ready, drain, maint)."""
    return [f"set server {backend}/{machine} state {state}"
            for machine in machines for backend, _, _ in backends(cluster)]


SHOW_STAT = "show stat -1 4 -1"  # every server's row (type 4), of every backend
# Reads `show stat` after the answers to the messages sent with it: a line before the CSV header is
# haproxy refusing one of them (it answers a right `set server` with nothing); then the connections
# of the servers named in m (" a b "). Prints their count, or fails with haproxy's words.
_COUNT = ("/^#/ { table = 1; next } "
          "!table && /[^[:space:]]/ { print \"haproxy: \" $0 > \"/dev/stderr\"; refused = 1 } "
          "table && index(m, \" \" $2 \" \") { s += $5 } "
          "END { if (refused) exit 1; print s + 0 }")


def drain_command(cluster, messages, machines, seconds: int) -> str:
    """Send ``messages`` (the drains, with any readies) and count the connections ``machines`` still
    have, in one exchange with haproxy; while some remain, count again every ``DRAIN_POLL`` s, at most
    ``seconds``. Prints ``air-drain: N``, the connections still open when it stopped waiting (0: all
    ended). An idle machine leaves in that one exchange, with no pause."""
    names = " " + " ".join(machines) + " "
    count = f"{SOCAT} -t 5 stdio UNIX-CONNECT:{q(admin_socket(cluster))} | awk -F, -v m={q(names)} {q(_COUNT)}"
    first = f"n=$(printf '%s\\n' {q(';'.join([*messages, SHOW_STAT]))} | {count})"
    return (f"{first} && {{ if [ \"$n\" != 0 ]; then end=$(( $(date +%s) + {int(seconds)} )); "
            f"while [ \"$n\" != 0 ] && [ \"$(date +%s)\" -lt \"$end\" ]; do "
            f"sleep {DRAIN_POLL}; n=$(printf '%s\\n' {q(SHOW_STAT)} | {count}); done; fi; echo \"{DRAINED} $n\"; }}")


def check_command(cluster, config: str, routers: str) -> str:
    return f"{HAPROXY} -c -q -f {q(config)} -f {q(routers)}"


def change_command(cluster, change: Change, drain_seconds: int, run_id: str = "") -> str:
    """One command: the new routers file written, checked with haproxy's configuration when it names
    other servers than before (else it differs from a checked one only in ``disabled`` words), moved
    into place, then the running haproxy told in one message: ready the returning, drain the leaving;
    then wait for their connections to end, maint; or, when it must learn a new server, drain and
    wait, then one graceful reload. (The file travels inside the command: Fabric feeds standard
    input a byte per 10 ms, seconds for a routers file.)"""
    path = cluster.balancer.routers_file
    candidate = f"{path}.air-candidate{'-' + run_id if run_id else ''}"  # a run's own: runs never share one
    text = routers_file(cluster, change.machines, change.drained)
    steps = [f"umask 022 && printf %s {q(text)} > {q(candidate)}",
             check_command(cluster, cluster.balancer.config, candidate) if change.check else None,
             f"mv -f {q(candidate)} {q(path)}"]
    ready = set_state(cluster, change.ready if not change.reload else [], "ready")
    if change.drain:  # one message to haproxy: the returning readied, the leaving drained and counted
        steps.append(drain_command(cluster, ready + set_state(cluster, change.drain, "drain"), change.drain,
                                   drain_seconds))
        if not change.reload:
            steps.append(api_command(cluster, set_state(cluster, change.drain, "maint")))
    elif ready:
        steps.append(api_command(cluster, ready))
    if change.reload:
        steps.append(f"systemctl reload-or-restart {unit_name(cluster)}")  # started, if it was not running
    return " && ".join(step for step in steps if step)


def drain_left(output: str) -> int:
    """Connections still open when the drain wait stopped (0 when none was waited for)."""
    found = re.findall(rf"^{DRAINED} (\d+)$", output or "", re.M)
    return int(found[-1]) if found else 0


# ---------------------------------------------------------------- haproxy's view, read back

def stat_command(cluster) -> str:
    return f"printf '%s\\n' {q(SHOW_STAT)} | {SOCAT} -t 5 stdio UNIX-CONNECT:{q(admin_socket(cluster))}"


class Server(NamedTuple):
    backend: str
    machine: str
    status: str    # UP, DOWN, MAINT, DRAIN, ... as haproxy says it
    sessions: int  # current connections


def parse_stat(text: str) -> list:
    """The servers of `show stat` CSV output."""
    rows = [line.split(",") for line in (text or "").splitlines() if line and not line.startswith("#")]
    header = next((line.lstrip("# ").split(",") for line in (text or "").splitlines() if line.startswith("#")), None)
    at = {name: i for i, name in enumerate(header or [])}
    status, scur = at.get("status", 17), at.get("scur", 4)
    return [Server(r[0], r[1], r[status], int(r[scur] or 0)) for r in rows
            if len(r) > status and r[1] not in ("FRONTEND", "BACKEND")]


def set_weights(cluster, weights: dict) -> list:
    """Runtime API commands giving each machine of ``weights`` that weight (0..256, or ``100%``: its
    weight from the routers file) in every backend: how a judged canary gets its share of new
    connections (``balance roundrobin`` honours weights set at run time; a reload forgets them)."""
    return [f"set weight {backend}/{machine} {weight}"
            for machine, weight in weights.items() for backend, _, _ in backends(cluster)]


# haproxy's per-server counters a judged canary reads (``show stat`` field -> BalancerCounters field):
# sessions, connection and response errors, server aborts, failed checks, and the mean session time.
COUNTED = {"stot": "sessions", "econ": "connection_errors", "eresp": "response_errors", "srv_abrt": "aborts",
           "chkfail": "check_failures"}


def parse_counters(text: str) -> dict:
    """machine -> BalancerCounters of ``show stat`` CSV output, its servers' counters summed over the
    backends (http, https); the session time (``ttime``, a mean in ms) weighted by their sessions."""
    lines = (text or "").splitlines()
    header = next((line.lstrip("# ").split(",") for line in lines if line.startswith("#")), [])
    missing = [name for name in [*COUNTED, "ttime", "svname"] if name not in header]
    if missing:
        raise ValueError(f"haproxy's show stat has no {', '.join(missing)}")
    servers: dict = {}
    for line in lines:
        row = dict(zip(header, line.split(",")))
        if line and not line.startswith("#") and row.get("svname") not in ("FRONTEND", "BACKEND"):
            servers.setdefault(row["svname"], []).append(row)
    return {machine: _counted(rows) for machine, rows in servers.items()}


def _counted(rows: list) -> BalancerCounters:
    """One machine's counters from its rows (one per backend)."""
    def number(row: dict, name: str) -> int:
        return int(row.get(name) or 0)
    weights = [max(number(row, "stot"), 1) for row in rows]
    mean = sum(number(row, "ttime") * w for row, w in zip(rows, weights)) / sum(weights)
    return BalancerCounters(**{field: sum(number(row, name) for row in rows) for name, field in COUNTED.items()},
                            session_time=round(mean))
