"""One Air machine: what to run on it, and the steps every task composes.

The top half builds command lines (pure, tested by equality): preflight
facts, pulling a release, starting and politely stopping the Air units,
the health check loop, wiping etcd. The bottom half runs them on one
connection: install, upgrade and membership read as a sequence of these
steps. The machine's files come from its final cloud config
(``cloudconfig.final``), so what is installed and what a reboot replays are
the same document.
"""
from __future__ import annotations

import cloudconfig
from cloudconfig.units import (ETCD_DATA_DIR, ETCD_DROPIN, ETCD_UNIT, SECRETS_DIR, STATE_DIR,
                               UNIT_DIR, unit_name)

from . import remote
from .errors import HealthError
from .registry import load_credentials
from .remote import q

ETCD_DROPIN_PATH = f"{UNIT_DIR}/{ETCD_UNIT}.d/{ETCD_DROPIN}"


# ---------------------------------------------------------------- what to run

def facts_command(cluster) -> str:
    """Prints key=value lines describing the machine, for ``parse_facts``."""
    units = unit_words(cluster)
    return "; ".join([
        "echo docker=$(systemctl is-active docker.service 2>/dev/null)",
        f"echo etcd_unit=$(systemctl cat {ETCD_UNIT} >/dev/null 2>&1 && echo yes || echo no)",
        f"echo etcd_configured=$(test -e {q(ETCD_DROPIN_PATH)} && echo yes || echo no)",
        f"echo etcd_active=$(systemctl is-active {ETCD_UNIT} 2>/dev/null)",
        f"echo etcd_data=$(test -n \"$(ls -A {q(ETCD_DATA_DIR)} 2>/dev/null)\" && echo yes || echo no)",
        f"echo air_units=$(systemctl list-unit-files --no-legend {units} 2>/dev/null | wc -l)",
        f"echo release=$(cat {q(STATE_DIR)}/release 2>/dev/null)",
    ])


def parse_facts(text: str) -> dict:
    facts = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def fresh_problems(facts: dict) -> list:
    """Why a machine is not a freshly prepared one (empty when it is)."""
    problems = []
    if facts.get("docker") != "active":
        problems.append("docker is not active")
    if facts.get("etcd_unit") != "yes":
        problems.append(f"no {ETCD_UNIT}")
    if facts.get("etcd_configured") == "yes" or facts.get("etcd_active") == "active":
        problems.append("etcd is already configured (an installed machine?)")
    if facts.get("etcd_data") == "yes":
        problems.append(f"{ETCD_DATA_DIR} is not empty")
    if facts.get("air_units", "0") not in ("", "0"):
        problems.append("Air units are already installed")
    return problems


def pull_command(cluster, release, components=None) -> str:
    """Pulls the release's images (of ``components`` only, when given) side by side; fails if any fails."""
    refs = [cluster.image_ref(i.component, i.version) for i in release.images
            if components is None or i.component in components]
    if not refs:
        return "true"
    pulls = " ".join(f"docker pull -q {q(ref)} >/dev/null & pids=\"$pids $!\";" for ref in refs)
    return f"pids=''; {pulls} for pid in $pids; do wait $pid || exit 1; done"


def units_of(cluster, components=None) -> list:
    """The Air units of ``components`` (names; default: all), in the cluster's order."""
    return [unit_name(c.name) for c in cluster.components if components is None or c.name in components]


def unit_words(cluster, components=None) -> str:
    """``units_of``, quoted for the shell."""
    return " ".join(q(u) for u in units_of(cluster, components))


def start_command(cluster, components=None) -> str:
    units = unit_words(cluster, components)
    reload = "systemctl daemon-reload"
    return f"{reload} && systemctl enable -q {units} && systemctl restart {units}" if units else reload


def stop_command(cluster, components=None) -> str:
    """Stops the Air units at once; each unit's ExecStop gives its container the cluster's stop timeout."""
    units = unit_words(cluster, components)
    return f"systemctl stop {units}" if units else "true"


def parse_components(text: str) -> dict:
    """component -> version, from the machine's components state file."""
    return {parts[0]: parts[1] for parts in (line.split() for line in (text or "").splitlines()) if len(parts) >= 2}


def to_restart(running: dict, units: dict, release, cluster) -> list:
    """Components whose unit must be restarted to run ``release``: another version, or not active."""
    wanted = release.versions()
    return [c.name for c in cluster.components
            if running.get(c.name) != wanted.get(c.name) or units.get(unit_name(c.name)) != "active"]


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


def health_command(cluster, timeout: int) -> str:
    """Waits until every component passes its health rule on the machine (``health_check``), or
    fails naming those that don't and what each answered."""
    checks = "; ".join(health_check(c) for c in cluster.components)
    body = any(c.check == "http" and c.health_body for c in cluster.components)
    scratch = "body=$(mktemp) || exit 1; trap 'rm -f \"$body\"' EXIT; " if body else ""
    return (f"deadline=$(( $(date +%s) + {int(timeout)} )); {scratch}"
            f"while :; do failed=''; {checks}; [ -z \"$failed\" ] && exit 0; "
            f"if [ $(date +%s) -ge $deadline ]; then echo \"not healthy within {int(timeout)} s:$failed\" >&2; exit 1; fi; "
            f"sleep 0.2; done")


def start_etcd_command() -> str:
    return f"systemctl daemon-reload && systemctl enable -q {ETCD_UNIT} && systemctl start --no-block {ETCD_UNIT}"


def wipe_command(cluster) -> str:
    """Stops etcd and the Air units and forgets them and the cluster's secrets, so the machine is a
    fresh one again. The components' data (``DATA_DIR``) stays: removing a machine loses nothing."""
    units = unit_words(cluster)
    unit_files = " ".join(q(f"{UNIT_DIR}/{u}") for u in units_of(cluster))
    return (f"systemctl disable -q --now {units} {ETCD_UNIT} 2>/dev/null; "
            f"rm -f {q(ETCD_DROPIN_PATH)} {unit_files}; rm -rf {q(ETCD_DATA_DIR)} {q(STATE_DIR)} {q(SECRETS_DIR)}; "
            f"systemctl daemon-reload")


def diagnostics_command(cluster) -> str:
    """The last lines of each unit's journal, for an error message."""
    return "; ".join(f"echo '--- {u}'; journalctl -u {q(u)} -n 5 --no-pager -o cat 2>/dev/null" for u in units_of(cluster))


# ---------------------------------------------------------------- inputs of the cloud config

def base_document(cluster) -> dict:
    """The base cloud config of this cluster, from its key, CA and credentials files."""
    public_key = cluster.ssh.key.with_name(cluster.ssh.key.name + ".pub")
    keys = [public_key.read_text().strip()] if public_key.exists() else []
    ca = cluster.registry.ca.read_text() if cluster.registry.ca else None
    return cloudconfig.base(cluster, keys, ca, load_credentials(cluster.registry.credentials))


def render_base(cluster) -> str:
    """The base cloud config as a file: what a freshly prepared machine boots from."""
    return cloudconfig.render(base_document(cluster))


def final_document(cluster, machine, members, state, release, base_doc=None) -> dict:
    return cloudconfig.final(cluster, machine, members, state, release, base_doc or base_document(cluster))


# ---------------------------------------------------------------- steps on one machine

def facts(ex, address) -> dict:
    return parse_facts(ex.read(address, facts_command(ex.cluster), what="read machine facts").stdout)


def secret_files(cluster) -> list:
    """``(path, content, 0600)`` for every file of the cluster's secrets folder."""
    folder = cluster.secrets
    return [(f"{SECRETS_DIR}/{path.name}", path.read_bytes(), 0o600)
            for path in (sorted(folder.iterdir()) if folder.is_dir() else []) if path.is_file()]


def wipe(ex, address) -> None:
    """Back to a freshly prepared machine: ``wipe_command``, and the base cloud config in place of
    the final one, so a reboot does not bring the cluster's units back."""
    cluster = ex.cluster
    ex.run(address, wipe_command(cluster), what="wipe etcd and the Air units",
           deadline=cluster.timeouts.stop + cluster.timeouts.command)
    ex.write_file(address, cluster.cloud_config, render_base(cluster), 0o600)


def install(ex, address, doc: dict, release) -> None:
    """A machine's secrets, the document's files and the release's images, in one command after
    one SFTP session: what setup-cluster and add-machine do on each machine before starting it."""
    cluster = ex.cluster
    staged = ex.stage_files(address, secret_files(cluster) + document_files(cluster, doc))
    ex.run(address, f"mkdir -p {q(SECRETS_DIR)} && chmod 0700 {q(SECRETS_DIR)} && {staged.swap} && "
                    f"{pull_command(cluster, release)}", what=f"install release {release.id}",
           deadline=cluster.timeouts.pull)


def document_files(cluster, doc: dict) -> list:
    """Every file the cloud config stands for, then the cloud config itself (0600: it holds the login).
    The components' data folders need no step: `docker run -v` makes them."""
    return [(f.path, f.content, f.mode) for f in cloudconfig.files(doc)] + \
        [(cluster.cloud_config, cloudconfig.render(doc), 0o600)]


def apply_document(ex, address, doc: dict) -> None:
    ex.write_files(address, document_files(ex.cluster, doc))


def stage_document(ex, address, doc: dict) -> remote.Staged:
    """Upload the document's files without putting them in place (see ``Executor.stage_files``)."""
    return ex.stage_files(address, document_files(ex.cluster, doc))


def pull(ex, address, release, components=None) -> None:
    ex.run(address, pull_command(ex.cluster, release, components), what=f"pull release {release.id}",
           deadline=ex.cluster.timeouts.pull)


def start(ex, address, components=None) -> None:
    ex.run(address, start_command(ex.cluster, components), what="start the Air units")


def stop(ex, address, components=None) -> None:
    ex.run(address, stop_command(ex.cluster, components), what="stop the Air units",
           deadline=ex.cluster.timeouts.stop + ex.cluster.timeouts.command)


def release_facts_command(cluster) -> str:
    """Prints the machine's release file, its components file and its units' states, in sections."""
    units = unit_words(cluster)
    return (f"echo '--release'; cat {q(STATE_DIR)}/release 2>/dev/null; "
            f"echo '--components'; cat {q(cloudconfig.COMPONENTS_FILE)} 2>/dev/null; "
            f"echo '--units'; systemctl is-active {units} 2>/dev/null; true")


def parse_release_facts(text: str, cluster) -> dict:
    """{"release": id or "", "components": component -> version, "units": unit -> state}."""
    sections: dict = {"release": [], "components": [], "units": []}
    current = None
    for line in text.splitlines():
        if line.startswith("--") and line[2:] in sections:
            current = line[2:]
        elif current:
            sections[current].append(line)
    return {"release": "".join(sections["release"]).strip(),
            "components": parse_components("\n".join(sections["components"])),
            "units": dict(zip(units_of(cluster), (s.strip() for s in sections["units"])))}


def release_facts(ex, address) -> dict:
    return parse_release_facts(ex.read(address, release_facts_command(ex.cluster),
                                       what="read the release facts").stdout, ex.cluster)


def wait_healthy(ex, address, timeout: int = None) -> None:
    timeout = timeout or ex.cluster.timeouts.healthy
    result = ex.read(address, health_command(ex.cluster, timeout), check=False,
                     deadline=timeout + ex.cluster.timeouts.command, what="health check")
    if result.exited != 0:
        journal = ex.read(address, diagnostics_command(ex.cluster), check=False, what="read the journal").stdout
        raise HealthError(f"{address}: {remote.tail(result.stderr, 1)}\n{journal.rstrip()}")
