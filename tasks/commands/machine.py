"""One Air machine: what to run on it.

Command lines, pure and tested by equality: preflight facts, pulling a
release, starting and politely stopping the Air units, the health check
loop, the upgrade in one command, wiping etcd; and the parsers of what they
print. ``tasks.runbooks.steps`` runs them. The machine's files come from its final cloud config
(``cloudconfig.final``), so what is installed and what a reboot replays are
the same document.
"""
from __future__ import annotations

import hashlib
from typing import Optional

import cloudconfig
from cloudconfig.units import (
    ETCD_DATA_DIR,
    ETCD_DATA_SET_ASIDE,
    ETCD_DROPIN,
    ETCD_MIGRATION_DROPIN,
    ETCD_PEER_DIR,
    ETCD_PROXY_UNIT,
    ETCD_UNIT,
    IMAGE_DIR,
    SECRETS_DIR,
    SECRETS_PREVIOUS,
    STATE_DIR,
    UNIT_DIR,
    image_file,
    secrets_dir,
    unit_name,
)
from tasks.commands.shell import q
from tasks.model import etcd_access
from tasks.model.credentials import load_credentials
from tasks.model.errors import PreflightError
from tasks.model.rollout_plan import units_of

ETCD_DROPIN_PATH = f"{UNIT_DIR}/{ETCD_UNIT}.d/{ETCD_DROPIN}"
ETCD_PROXY_PATH = f"{UNIT_DIR}/{ETCD_PROXY_UNIT}"
ETCD_MIGRATION_DROPIN_PATH = f"{UNIT_DIR}/{ETCD_UNIT}.d/{ETCD_MIGRATION_DROPIN}"
BASE_MARK = "--base-from:"  # heads the base cloud config in the release facts
# OS updates that could reboot a machine mid-install; paused meanwhile, then put back as they were.
OS_UPDATE_UNITS = ("update-engine.service", "locksmithd.service")
OS_UPDATES_PAUSED = "/run/air-os-updates-paused"  # the units that were active when paused
UNHEALTHY = 97  # exit status of an upgrade command whose health check failed
SYSTEM_STATE = "systemctl is-system-running"  # prints systemd's state of the machine (os_upgrade_plan.BOOTING)


def user_data_command(cluster) -> str:
    """Prints the path of the machine's cloud config: the cluster's, else the first of
    ``USER_DATA_PATHS`` that exists, else CoreOS's."""
    if cluster.cloud_config:
        return f"echo {q(cluster.cloud_config)}"
    found = " ".join(q(p) for p in cloudconfig.USER_DATA_PATHS)
    return f"for p in {found}; do if [ -e \"$p\" ]; then echo \"$p\"; exit 0; fi; done; echo {q(cloudconfig.USER_DATA_PATHS[-1])}"


# ---------------------------------------------------------------- what to run

def facts_command(cluster) -> str:
    """Prints key=value lines describing the machine, for ``parse_facts``."""
    units = unit_words(cluster)
    return "; ".join([
        "echo docker=$(systemctl is-active docker.service 2>/dev/null)",
        f"echo etcd_unit=$(systemctl cat {ETCD_UNIT} >/dev/null 2>&1 && echo yes || echo no)",
        f"echo etcd_configured=$(test -e {q(ETCD_DROPIN_PATH)} && echo yes || echo no)",
        f"echo etcd_active=$(systemctl is-active {ETCD_UNIT} 2>/dev/null)",
        f"echo etcd_proxy=$(test -e {q(ETCD_PROXY_PATH)} && echo yes || echo no)",
        f"echo etcd_data=$(test -n \"$(ls -A {q(ETCD_DATA_DIR)} 2>/dev/null)\" && echo yes || echo no)",
        f"echo air_units=$(systemctl list-unit-files --no-legend {units} 2>/dev/null | wc -l)",
        f"echo release=$(cat {q(STATE_DIR)}/release 2>/dev/null)",
        f"echo user_data=$({user_data_command(cluster)})",
    ])


def parse_facts(text: str) -> dict:
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def installed_release_command() -> str:
    """Prints the release the machine was installed with (nothing on a machine never installed)."""
    return f"cat {q(cloudconfig.RELEASE_FILE)} 2>/dev/null || true"


def fresh_problems(facts: dict) -> list:
    """Why a machine is not a freshly prepared one (empty when it is)."""
    problems = []
    if facts.get("docker") != "active":
        problems.append("docker is not active")
    if facts.get("etcd_unit") != "yes":
        problems.append(f"no {ETCD_UNIT}")
    if facts.get("etcd_configured") == "yes" or facts.get("etcd_active") == "active":
        problems.append("etcd is already configured (an installed machine?)")
    if facts.get("etcd_proxy") == "yes":
        problems.append(f"{ETCD_PROXY_UNIT} is already installed (a worker?)")
    if facts.get("etcd_data") == "yes":
        problems.append(f"{ETCD_DATA_DIR} is not empty")
    if facts.get("air_units", "0") not in ("", "0"):
        problems.append("Air units are already installed")
    return problems


PULL_PAUSE_MAX = 8   # seconds between two tries of a pull, at most (the pauses double from 1 s)
PULL_MARGIN = 5      # seconds of the pull deadline kept for the check after the last try
PREFETCH_LOCK = "/run/air-prefetch.lock"  # held by a prefetch while its pulls run


def pull_command(cluster, release, components=None) -> str:
    """Pulls the release's images (of ``components`` only, when given; never of one the cluster file
    lacks) side by side and checks each is the recorded one (its ID is the recorded config digest);
    fails if any fails. An image pinned by digest that the machine has is not pulled again. Each pull
    is retried with doubling pauses until ``timeouts.pull`` is near; its error names the last failure."""
    wanted = [c.name for c in cluster.components if components is None or c.name in components]
    images = [i for i in release.images if i.component in wanted]
    if not images:
        return "true"
    budget = max(1, cluster.timeouts.pull - PULL_MARGIN)
    inspect = "docker image inspect -f '{{.Id}}' \"$1\""
    pull = ("pull() { tries=0; pause=1; "
            f"while :; do [ -n \"$4\" ] && got=$({inspect} 2>/dev/null) && break; "
            f"tries=$((tries + 1)); out=$(docker pull -q \"$1\" 2>&1) && {{ got=$({inspect}) || return 1; break; }}; "
            "if [ $(( $(date +%s) + pause )) -ge $end ]; then "
            "echo \"pull of $3 failed after $tries tries: $(printf '%s\\n' \"$out\" | tail -n 1)\" >&2; return 1; fi; "
            f"sleep $pause; pause=$((pause * 2)); [ $pause -le {PULL_PAUSE_MAX} ] || pause={PULL_PAUSE_MAX}; done; "
            "[ \"$got\" = \"$2\" ] || { echo \"$3: the registry gave $got, release $5 records $2\" >&2; return 1; }; }")
    calls = " ".join(f"pull {q(cluster.pinned_ref(i))} {q(i.digest)} {q(f'{i.component} {i.version}')} "
                     f"{'pinned' if i.manifest else q('')} {q(release.id)} & pids=\"$pids $!\";" for i in images)
    # A prefetch under way is waited for: its images are then found, not pulled a second time.
    return (f"end=$(( $(date +%s) + {budget} )); flock {PREFETCH_LOCK} true 2>/dev/null; {pull}; pids=''; {calls} "
            f"failed=0; for pid in $pids; do wait $pid || failed=1; done; [ $failed = 0 ]")


def prefetch_command(cluster, release, previous) -> str:
    """Starts the pulls of the images ``release`` has and ``previous`` has not (of components in the
    cluster file) and returns at once, printing nothing: sent with a rollout's read of the facts,
    the download goes on while it plans, and the preparation's own pull (``pull_command``, which
    checks what it gets) waits for it (``PREFETCH_LOCK``) and finds the images there; an image the
    machine has is not pulled (a rollback to kept images asks the registry nothing). In a session of
    its own (``setsid``): the end of the command that started it does not end it; ``timeouts.pull``
    does. Empty when nothing is new. Pure."""
    if previous is None:  # no release recorded before: nothing tells what is new
        return ""
    had, names = {i.digest for i in previous.images}, set(cluster.component_names)
    new = [i for i in release.images if i.component in names and i.digest not in had]
    if not new:
        return ""
    refs = " ".join(q(cluster.pinned_ref(i)) for i in new)
    fetch = 'docker image inspect "$ref" >/dev/null 2>&1 || docker pull -q "$ref"'  # one it has is not asked for
    return (f"setsid -f flock {PREFETCH_LOCK} timeout {int(cluster.timeouts.pull)} "
            f"sh -c 'for ref; do {{ {fetch}; }} & done; wait' "
            f"prefetch {refs} </dev/null >/dev/null 2>&1")


def cleanup_command(cluster, components, keep) -> str:
    """Removes the machine's images of ``components``' repositories but those of the ``keep``
    releases and any a container (running or not) uses; prints ``removed <image ID>`` for each."""
    repositories = " ".join(f"--filter reference={q(f'{cluster.registry.address}/{cluster.image(c)}')}"
                            for c in sorted(components))
    kept = " ".join(sorted({i.digest for release in keep for i in release.images}))
    return (f"keep={q(f' {kept} ')}; "
            "used=\" $(docker ps -aq --no-trunc | xargs -r docker inspect -f '{{.Image}}' | tr '\\n' ' ') \"; "
            f"for id in $(docker images -q --no-trunc {repositories} | sort -u); do "
            "case \"$keep$used\" in *\" $id \"*) continue ;; esac; "
            "docker rmi -f \"$id\" >/dev/null && echo \"removed $id\"; done; true")


def unit_words(cluster, components=None) -> str:
    """``units_of``, quoted for the shell."""
    return " ".join(q(u) for u in units_of(cluster, components))


# What a start needs first, from `systemctl show` of its units: "reload" when one is new to systemd
# or changed on disk since it read it (a unit file systemd never read loads when asked for), then
# enabling them; "enable" when one is not enabled; nothing otherwise.
_START_NEEDS = ("/^(NeedDaemonReload=yes|LoadState=not-found)$/ { reload = 1 } "
                "/^UnitFileState=/ && $0 != \"UnitFileState=enabled\" { enable = 1 } "
                "END { print reload ? \"reload\" : enable ? \"enable\" : \"\" }")


def start_command(cluster, components=None) -> str:
    """Starts the Air units (of ``components``, when given), restarting those running. systemd reads
    unit files again only at a daemon-reload, which costs about 0.1 s on a machine, and enabling
    an enabled unit costs a systemctl run (6 ms): each is done only when ``_START_NEEDS`` says so."""
    units = unit_words(cluster, components)
    if not units:
        return "true"
    enable = f"systemctl enable -q --no-reload {units}"
    return (f"needs=$(systemctl show -p NeedDaemonReload -p LoadState -p UnitFileState {units} | "
            f"awk {q(_START_NEEDS)}) && case $needs in reload) systemctl daemon-reload && {enable};; "
            f"enable) {enable};; esac && systemctl restart {units}")


def existing_units(components) -> str:
    """Shell: sets ``$units`` to the units of ``components`` (names, in or out of the cluster file)
    whose unit file exists on the machine: what may be stopped or disabled."""
    words = " ".join(q(unit_name(c)) for c in components)
    return f"units=$(systemctl list-unit-files --no-legend {words} 2>/dev/null | awk '{{print $1}}')"


def stop_command(cluster, components=None) -> str:
    """Stops the Air units (of ``components``, when given) that exist, at once; each unit's ExecStop
    gives its container the cluster's stop timeout. A unit not installed (a component new to the
    cluster file, or one its release lacks) is not there to stop."""
    names = cluster.component_names if components is None else list(components)
    if not names:
        return "true"
    return f"{existing_units(names)}; [ -z \"$units\" ] || systemctl stop $units"


def remove_command(components) -> str:
    """Stops, disables and forgets the units of ``components`` (gone from the cluster file or from
    the release): their unit files are removed, and systemd forgets them."""
    if not components:
        return "true"
    files = " ".join(q(path) for c in components for path in (f"{UNIT_DIR}/{unit_name(c)}", image_file(c)))
    return (f"{existing_units(components)}; {{ [ -z \"$units\" ] || systemctl disable -q --now $units; }} && "
            f"rm -f {files} && systemctl daemon-reload")


def parse_components(text: str) -> dict:
    """component -> version, from the machine's components state file."""
    return {parts[0]: parts[1] for parts in (line.split() for line in (text or "").splitlines()) if len(parts) >= 2}


def health_check(component, body_file: str = '"$body"') -> str:
    """One component's health rule as a shell statement adding ``name(what was wrong)`` to
    ``$failed`` when it fails. Pure. ``check: tcp``: the port accepts a connection (bash's
    /dev/tcp: Flatcar has no nc); ``http``: the health path answers the expected status and,
    when the rule has one, a body containing the expected text (read from ``body_file``)."""
    name, port = component.name, component.port
    if component.check == "tcp":
        probe = f": </dev/tcp/127.0.0.1/{port}"
        return f"timeout 2 bash -c {q(probe)} 2>/dev/null || failed=\"$failed {name}(no TCP connection on {port})\""
    output = body_file if component.health_body else "/dev/null"
    expected = f"HTTP {component.health_status}" + (f" with {component.health_body!r}" if component.health_body else "")
    status = (f"code=$(curl -s -o {output} -w '%{{http_code}}' -m 2 {q(f'http://127.0.0.1:{port}{component.health}')}); "
              f"[ \"$code\" = {component.health_status} ]")
    if component.health_body:
        status += f" && grep -qF -- {q(component.health_body)} {body_file}"
    return f"{status} || failed=\"$failed {name}(expected {_dq(expected)}, got HTTP $code)\""


def _dq(text: str) -> str:
    """``text`` made safe inside a double-quoted shell string."""
    return "".join("\\" + ch if ch in '"$`\\' else ch for ch in text)


# Seconds between two rounds of health checks: a component often answers 0.1-0.3 s after its start,
# so an upgrade's first HEALTH_FAST_ROUNDS rounds come every HEALTH_FAST_PAUSE s (its restart is seen
# healthy at most that much after it is); the later ones, and those of longer waits (an install, a
# reboot: seconds), every HEALTH_PAUSE s.
HEALTH_FAST_PAUSE, HEALTH_FAST_ROUNDS, HEALTH_PAUSE = "0.02", 25, "0.2"


def health_command(cluster, timeout: int, components=None, first=None) -> str:
    """Waits until every component (of ``components``, when given) passes its health rule on the
    machine (``health_check``), or fails naming those that don't and what each answered. The
    checks are repeated every ``HEALTH_PAUSE`` s. ``first``: the components an upgrade just
    restarted; the rounds come every ``HEALTH_FAST_PAUSE`` s at first, and check these alone until
    they pass, then every component, in one round that must pass whole (rounds of every component
    follow, should it not)."""
    checked = [c for c in cluster.components if components is None or c.name in components]
    if not checked:
        return "true"
    start, rounds, passed = _health_rounds(checked, [c for c in checked if c.name in (first or ())])
    body = any(c.check == "http" and c.health_body for c in checked)
    scratch = "body=$(mktemp -d) || exit 1; trap 'rm -rf \"$body\"' EXIT; " if body else ""
    pause = f"n=$((n + 1)); if [ $n -le {HEALTH_FAST_ROUNDS} ]; then sleep {HEALTH_FAST_PAUSE}; else sleep {HEALTH_PAUSE}; fi"
    fast_rounds_done = 0 if first is not None else HEALTH_FAST_ROUNDS
    return (f"deadline=$(( $(date +%s) + {int(timeout)} )); n={fast_rounds_done}; {start}{scratch}"
            f"while :; do failed=''; {rounds}; {passed}; "
            f"if [ $(date +%s) -ge $deadline ]; then echo \"not healthy within {int(timeout)} s:$failed\" >&2; exit 1; fi; "
            f"{pause}; done")


def _health_rounds(checked, starting) -> tuple:
    """(what the health command starts with, what a round checks, what ends the wait once a round
    found nothing failing): every component each round, or ``starting`` ones until they pass."""
    every = side_by_side(checked)
    if not 0 < len(starting) < len(checked):
        return "", every, "[ -z \"$failed\" ] && exit 0"
    return ("all=; ", f"if [ -n \"$all\" ]; then {every}; else {side_by_side(starting)}; fi",
            "if [ -z \"$failed\" ]; then [ -n \"$all\" ] && exit 0; all=1; continue; fi")


def side_by_side(components) -> str:
    """One round of the ``components``' health checks, all at once, each in a subshell of its own (a
    round takes as long as its slowest check, not their sum: about 22 ms instead of 39 for the
    sandbox's four); what failed is gathered in ``$failed`` in the components' order. A check with
    a body rule reads its answer from a file of its own in the scratch folder ``$body``. Pure."""
    checks = [health_check(c, f'"$body/{i}"') for i, c in enumerate(components)]
    if len(checks) == 1:
        return checks[0]
    jobs = "".join(f"( failed=''; {check}; [ -z \"$failed\" ] || printf '{i}%s\\n' \"$failed\" ) & "
                   for i, check in enumerate(checks))
    return (f"failed=$( {jobs}wait); [ -z \"$failed\" ] || "
            f"failed=$(printf '%s\\n' \"$failed\" | sort -n | sed 's/^[0-9]*//' | tr -d '\\n')")


def start_etcd_command() -> str:
    return f"systemctl daemon-reload && systemctl enable -q {ETCD_UNIT} && systemctl start --no-block {ETCD_UNIT}"


def start_etcd_proxy_command() -> str:
    """A worker's etcd proxy enabled and started (on the unit install wrote)."""
    return f"systemctl daemon-reload && systemctl enable -q --now {ETCD_PROXY_UNIT}"


def retire_etcd_proxy_command() -> str:
    """A worker about to become a member: its etcd proxy stopped and forgotten (127.0.0.1:2379 is
    etcd's own next)."""
    return f"systemctl disable -q --now {ETCD_PROXY_UNIT} && rm -f {q(ETCD_PROXY_PATH)} && systemctl daemon-reload"


def restart_etcd_command() -> str:
    """etcd restarted on its (re)written drop-ins."""
    return f"systemctl daemon-reload && systemctl restart {ETCD_UNIT}"


def installed_units(cluster) -> list:
    """The units install adds beside etcd: the Air units and the cluster's additions."""
    return units_of(cluster) + [u.name for u in (cluster.additions.units if cluster.additions else ())]


def wipe_command(cluster, user_data: str) -> str:
    """Stops etcd and the installed units and forgets them and the cluster's secrets, and puts the
    administrator's base cloud config back byte for byte, so the machine is a fresh one again. The
    components' data (``DATA_DIR``) stays: removing a machine loses nothing."""
    units = " ".join(q(u) for u in installed_units(cluster))
    unit_files = " ".join(q(f"{UNIT_DIR}/{u}") for u in installed_units(cluster))
    added_files = " ".join(q(f.path) for f in (cluster.additions.files if cluster.additions else ()))
    base = q(user_data + cloudconfig.BASE_SUFFIX)
    return (f"systemctl disable -q --now {units} {ETCD_UNIT} {ETCD_PROXY_UNIT} 2>/dev/null; "
            f"rm -f {q(ETCD_DROPIN_PATH)} {q(ETCD_MIGRATION_DROPIN_PATH)} {q(ETCD_PROXY_PATH)} {unit_files} {added_files}; "
            f"rm -rf {q(ETCD_DATA_DIR)} {q(ETCD_DATA_SET_ASIDE)}* {q(STATE_DIR)} {q(IMAGE_DIR)} {q(SECRETS_DIR)} "
            f"{q(SECRETS_PREVIOUS)} {q(ETCD_PEER_DIR)}; "
            f"if [ -e {base} ]; then mv -f {base} {q(user_data)}; fi; rm -f {q(user_data + cloudconfig.WRITTEN_SUFFIX)}; "
            f"systemctl daemon-reload; {resume_os_updates_command()}")


def keep_base_command(user_data: str) -> str:
    """Keeps the administrator's base beside the cloud config, once (a reinstall keeps the first)."""
    base = q(user_data + cloudconfig.BASE_SUFFIX)
    return f"{{ [ -e {base} ] || cp -p {q(user_data)} {base}; }}"


def pause_os_updates_command() -> str:
    """Stops the OS update units, remembering which were active (a second pause keeps the first's record)."""
    units = " ".join(OS_UPDATE_UNITS)
    return (f"{{ [ -e {OS_UPDATES_PAUSED} ] || {{ for u in {units}; do systemctl is-active -q $u && echo $u; done "
            f"> {OS_UPDATES_PAUSED}.new; mv -f {OS_UPDATES_PAUSED}.new {OS_UPDATES_PAUSED}; }}; "
            f"systemctl stop {units} 2>/dev/null; true; }}")


def resume_os_updates_command() -> str:
    """Starts again the OS update units that were active when paused (queued: the machine serves
    meanwhile, nothing waits for them); nothing when none was paused."""
    return (f"{{ if [ -e {OS_UPDATES_PAUSED} ]; then units=$(cat {OS_UPDATES_PAUSED}); "
            f"[ -z \"$units\" ] || systemctl start --no-block $units; rm -f {OS_UPDATES_PAUSED}; fi; }}")


def paused_while(command: str) -> str:
    """``command`` with the machine's OS updates paused beside it, not after it (a pull hides the
    pause's time); its status is the command's. Whoever runs it resumes them when the whole fails
    (``staging_command``'s ``undo``). Pure."""
    return (f"{{ {pause_os_updates_command()} }} & pausing=$!; "
            f"if {{ {command}; }}; then wait $pausing; else wait $pausing; false; fi")


def diagnostics_command(cluster) -> str:
    """The last lines of each unit's journal, for an error message."""
    return "; ".join(f"echo '--- {u}'; journalctl -u {q(u)} -n 5 --no-pager -o cat 2>/dev/null" for u in units_of(cluster))


# ---------------------------------------------------------------- inputs of the cloud config

def base_document(cluster) -> dict:
    """The base cloud config of this cluster, from its key, CA and credentials files: the machines'
    Docker login is the pull-only account when the cluster file gives one (the push account stays here)."""
    public_key = cluster.ssh.key.with_name(cluster.ssh.key.name + ".pub")
    keys = [public_key.read_text().strip()] if public_key.exists() else []
    ca = cluster.registry.ca.read_text() if cluster.registry.ca else None
    return cloudconfig.base(cluster, keys, ca, load_credentials(cluster.registry.machine_credentials))


def final_document(cluster, machine, members, state, release, base_doc: dict) -> dict:
    """The machine's final cloud config: its administrator's ``base_doc`` extended by the install;
    PreflightError when the install would replace an entry of the base."""
    try:
        return cloudconfig.final(cluster, machine, members, state, release, base_doc)
    except cloudconfig.Conflict as conflict:
        raise PreflightError(f"{machine}: {conflict}; nothing was changed") from None


# ---------------------------------------------------------------- steps on one machine


SECRET_MODE = 0o400  # read by its owner only: the component's user


def component_secret_files(cluster) -> list:
    """``(path, content, 0400)`` for each secret file each component gets, in its own folder."""
    return [(f"{secrets_dir(c.name)}/{name}", (cluster.secrets / name).read_bytes(), SECRET_MODE)
            for c in cluster.components for name in c.secrets]


def secret_files(cluster) -> list:
    """Every secret file a machine gets, set after set: the components' own and, with etcd's
    authentication, each etcd login's password in its component's folder (another set joins here
    and is then installed, compared and pushed with them)."""
    logins = etcd_access.password_files(cluster, etcd_access.root_password(cluster), secrets_dir) \
        if cluster.etcd_auth else []
    return component_secret_files(cluster) + [(path, text, SECRET_MODE) for path, text, _ in logins]


def has_secrets(cluster, component) -> bool:
    """Whether ``component`` gets a secrets folder: secrets of its own, or an etcd login."""
    return bool(component.secrets) or etcd_access.has_login(cluster, component)


def own_secrets_command(cluster) -> str:
    """Each component's secrets folder and files belong to its user (0700, files 0400), so no other
    uid reads them, even in a container that mounted them by mistake."""
    owned = [f"chown -R {int(c.user)} {q(secrets_dir(c.name))} && chmod 0700 {q(secrets_dir(c.name))}"
             for c in cluster.components if has_secrets(cluster, c)]
    return " && ".join([f"mkdir -p {q(SECRETS_DIR)}", f"chmod 0700 {q(SECRETS_DIR)}"] + owned)


def secrets_facts_command() -> str:
    """Prints ``<sha256>  <path>`` for every file under the secrets folder (digests, never contents)."""
    return f"if [ -d {q(SECRETS_DIR)} ]; then find {q(SECRETS_DIR)} -type f -exec sha256sum {{}} +; fi"


def parse_secrets_facts(text: str) -> dict:
    """path -> sha256 digest, from ``secrets_facts_command``'s output. Pure."""
    found = {}
    for line in text.splitlines():
        digest, _, path = line.strip().partition("  ")
        if digest and path:
            found[path] = digest
    return found


def digests(files) -> dict:
    """path -> sha256 digest of ``(path, content, mode)`` files. Pure."""
    return {path: hashlib.sha256(content if isinstance(content, bytes) else content.encode()).hexdigest()
            for path, content, _ in files}


def secret_changes(wanted: dict, found: dict) -> tuple:
    """(paths to write, paths to remove) making a machine's secrets folder hold ``wanted`` (path ->
    digest) given ``found`` there. Pure."""
    return (sorted(p for p, d in wanted.items() if found.get(p) != d),
            sorted(p for p in found if p not in wanted))


def components_using(cluster, paths) -> list:
    """The components whose secrets folder holds one of ``paths``, in the cluster's order. Pure."""
    return [c.name for c in cluster.components if any(p.startswith(secrets_dir(c.name) + "/") for p in paths)]


def parse_base(address, user_data: str, read, installed_part: dict = None) -> dict:
    """The base from ``read`` ((path, text) of the copy kept at install, else of the cloud config
    the machine was prepared with; None: neither exists). PreflightError when there is none or it
    is not a cloud config. Pure.

    ``installed_part``: the machine is installed; when it has no kept copy (installed before
    copies were kept), its cloud config less what install added is taken for its base."""
    if read is None:
        raise PreflightError(f"{address}: no cloud config at {user_data}: prepare the machine with the cluster's "
                             f"base cloud config first (fab cloudconfig.base); nothing was changed")
    path, text = read
    try:
        doc = cloudconfig.parse(text, f"{address}:{path}")
    except ValueError as e:
        raise PreflightError(f"{e}; nothing was changed") from None
    return cloudconfig.without(doc, installed_part) if installed_part and path == user_data else doc


def document_files(doc: dict, user_data: str) -> list:
    """Every file the cloud config stands for, then the cloud config itself at ``user_data`` (0600:
    it holds the login) and its digest beside it (``WRITTEN_SUFFIX``). The components' data folders
    need no step: `docker run -v` makes them."""
    itself = (user_data, cloudconfig.render(doc), 0o600)
    return [(f.path, f.content, f.mode) for f in cloudconfig.files(doc)] + \
        [itself, (user_data + cloudconfig.WRITTEN_SUFFIX, digests([itself])[user_data] + "\n", 0o600)]


def changed_by_hand(address, facts) -> Optional[str]:
    """Why the machine's cloud config may not be written over (changed since air-deploy wrote it),
    or None. Pure."""
    if not facts.get("edited"):
        return None
    user_data = facts["user_data"]
    return f"{address}: {user_data} was changed since air-deploy wrote it, and writing the new release " \
        f"would lose that change: {cloudconfig.keep_hand_change(user_data)}"


def release_facts_command(cluster) -> str:
    """Prints the machine's release file, its components file, its units' states, where its
    cloud config is and its digests (``cloud_config_facts_command``) and, last, the
    administrator's base (``BASE_SUFFIX``'s copy, else the cloud config itself, after a line
    naming which), in sections."""
    units = unit_words(cluster)
    return (f"echo '--release'; cat {q(STATE_DIR)}/release 2>/dev/null; "
            f"echo '--components'; cat {q(cloudconfig.COMPONENTS_FILE)} 2>/dev/null; "
            f"echo '--units'; systemctl is-active {units} 2>/dev/null; "
            f"echo '--system'; {SYSTEM_STATE} 2>/dev/null; "
            f"{cloud_config_facts_command(cluster)}; "
            f"for p in \"$u{cloudconfig.BASE_SUFFIX}\" \"$u\"; do "
            f"if [ -e \"$p\" ]; then echo \"{BASE_MARK}$p\"; cat \"$p\"; break; fi; "
            f"done; true")


def cloud_config_facts_command(cluster) -> str:
    """Sets ``$u`` to where the machine keeps its cloud config and prints it (section ``user_data``),
    then the SHA-256 of the cloud config air-deploy wrote last, when kept, and of the one there now,
    when there is one (section ``written``)."""
    return (f"u=$({user_data_command(cluster)}); echo '--user_data'; echo \"$u\"; "
            f"echo '--written'; cat \"$u{cloudconfig.WRITTEN_SUFFIX}\" 2>/dev/null; "
            f"[ ! -e \"$u\" ] || sha256sum < \"$u\" | cut -d' ' -f1")


def parse_cloud_config_facts(sections: dict) -> dict:
    """{"user_data": its path, "edited": whether it changed since air-deploy wrote it} from the
    sections ``cloud_config_facts_command`` printed. Pure."""
    digests = [line.strip() for line in sections["written"] if line.strip()]
    return {"user_data": "".join(sections["user_data"]).strip(),
            "edited": len(digests) == 2 and digests[0] != digests[1]}


def in_sections(text: str, names) -> dict:
    """name -> its lines, from output where `--name` lines head sections (what the facts commands print). Pure."""
    sections: dict = {name: [] for name in names}
    current = None
    for line in text.splitlines():
        if line.startswith("--") and line[2:] in sections:
            current = line[2:]
        elif current:
            sections[current].append(line)
    return sections


def parse_release_facts(text: str, cluster) -> dict:
    """{"release": id or "", "system": systemd's state of the machine, "components": component ->
    version, "units": unit -> state, "user_data": path of its cloud config, "edited": whether it
    changed since air-deploy wrote it, "base": (path read, its text) or None}."""
    text, marked, base = text.partition("\n" + BASE_MARK)
    sections = in_sections(text, ("release", "components", "units", "system", "user_data", "written"))
    path, _, content = base.partition("\n")
    return {"release": "".join(sections["release"]).strip(), "system": "".join(sections["system"]).strip(),
            "components": parse_components("\n".join(sections["components"])),
            "units": dict(zip(units_of(cluster), (s.strip() for s in sections["units"]))),
            "base": (path, content) if marked else None, **parse_cloud_config_facts(sections)}


def upgrade_command(cluster, components, swap: str, remove=(), running=None) -> str:
    """One machine's upgrade in one command: stop the units of ``components`` and ``remove`` that
    exist, ``swap`` the staged files in, remove the units of ``remove``, start those of
    ``components``, wait until every component it runs (``running``, default all) is healthy
    (those started first: ``health_command``). Exits ``UNHEALTHY`` when the health check fails.
    (Its OS updates resume when the whole rollout ends.) Pure."""
    return (f"{stop_command(cluster, [*components, *remove])} && {swap} && {remove_command(remove)} && "
            f"{start_command(cluster, components)} || exit $?; "
            f"( {health_command(cluster, cluster.timeouts.healthy, running, first=components)} ) || exit {UNHEALTHY}")


