"""The systemd units of an Air machine, as text.

This module owns the names, ports and paths the units agree on (the etcd
unit, its drop-in and data directory, the Air units and containers, the
state and secrets folders mounted into them) and renders the unit files
themselves. Everything here is a pure function of validated values: what
the machine runs is decided here, and applying it is someone else's job.
"""
from __future__ import annotations

import re

from tasks.model import etcd_access
from tasks.model.cluster import ETCD_BCRYPT_COST
from tasks.model.errors import ConfigError, RecordError
from tasks.model.state import app_prefix

UNIT_DIR = "/etc/systemd/system"
DOCKER = "/usr/bin/docker"
TIMEOUT = "/usr/bin/timeout"
DEFAULT_STOP_SIGNAL = "SIGTERM"  # docker's own default: the run line then says nothing

ETCD_UNIT = "etcd-member.service"
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
ETCD_DROPIN = "20-air.conf"
ETCD_DATA_DIR = "/var/lib/etcd/member"
ETCD_DATA_SET_ASIDE = ETCD_DATA_DIR + ".before-"  # + a time: a member's data a restore replaced
ETCD_STATES = ("new", "existing")
ETCD_USER = "etcd"  # whom etcd-member.service runs etcd as, on Flatcar as on Debian
# The member's peer certificate and key and the cluster's CA certificate: the folder 0700, the files
# 0600, owned by ETCD_USER (etcd reads them after dropping root). Not under SECRETS_DIR: no
# container mounts them.
ETCD_PEER_DIR = "/etc/air/etcd-peer"
ETCD_PEER_CA = f"{ETCD_PEER_DIR}/ca.crt"
ETCD_PEER_CERT = f"{ETCD_PEER_DIR}/peer.crt"
ETCD_PEER_KEY = f"{ETCD_PEER_DIR}/peer.key"

STATE_DIR = "/etc/air/state"      # the machine's release, read-only in containers at /air/state
SECRETS_DIR = "/etc/air/secrets"  # one folder per component, read-only in its container at /air/secrets
SECRETS_PREVIOUS = SECRETS_DIR + ".previous"  # a machine's secrets as they were, while secrets.apply has it in hand
STATE_MOUNT = "/air/state"
SECRETS_MOUNT = "/air/secrets"
DATA_DIR = "/var/lib/air"         # per component, kept across releases; read-write at /air/data
DATA_MOUNT = "/air/data"

VERSION_LABEL = "air.version"     # a container's label naming the version its image was pushed as
# Per component, the release's part of its unit: the version and image reference its unit runs,
# read by systemd at each start (EnvironmentFile=). A new release changes this file only, not the
# unit, so an upgrade needs no daemon-reload.
IMAGE_DIR = "/etc/air/images"

# Grace given to `docker stop` beyond its own timeout before systemd kills it.
STOP_MARGIN = 15

_PLAIN = re.compile(r"[A-Za-z0-9_@+=:,./\[\]-]+")


class Expanded(str):
    """A word of an Exec*= line that systemd fills in from the unit's environment (``${NAME}``
    inside it): written as it is, never quoted."""


def unit_name(component_name: str) -> str:
    return f"air-{component_name}.service"


def container_name(component_name: str) -> str:
    return f"air-{component_name}"


def secrets_dir(component_name: str) -> str:
    """A component's own secrets on the machine: its container mounts this folder alone."""
    return f"{SECRETS_DIR}/{component_name}"


def url(address: str, port: int, scheme: str = "http") -> str:
    """http://address:port (or another ``scheme``), with an IPv6 address in brackets."""
    host = f"[{address}]" if ":" in address else address
    return f"{scheme}://{host}:{port}"


def peer_url(address: str) -> str:
    """The etcd member's peer URL: TLS on its address."""
    return url(address, ETCD_PEER_PORT, "https")


# Where etcd's clients reach it: on the machine itself (the tool comes over SSH; on a worker, its
# etcd proxy listens there instead).
ETCD_LOCAL_CLIENT_URL = url("127.0.0.1", ETCD_CLIENT_PORT)


def member_client_url(address: str) -> str:
    """Where the workers' etcd proxies reach a member: TLS on its address, each side proving itself
    with a certificate of the cluster's etcd CA (the peers' own)."""
    return url(address, ETCD_CLIENT_PORT, "https")


# The worker's local etcd proxy: etcd's grpc-proxy, listening where a member's etcd would
# (127.0.0.1:2379, plaintext on loopback) and speaking TLS to the members with the machine's
# etcd certificate. etcd's `gateway` forwards bytes (L4), so a client would have to speak TLS itself.
ETCD_PROXY_UNIT = "air-etcd-proxy.service"
ETCD_BINARY = "/usr/bin/etcd"
ETCD_PROXY_DIR = "/var/lib/etcd/proxy"


def quote(word) -> str:
    """One word of an Exec*= line, read back by systemd as exactly ``word``.

    systemd splits on whitespace, honours quotes and backslashes, and expands
    % specifiers and $variables even inside quotes; that is not shell quoting.
    """
    if isinstance(word, Expanded):
        return str(word)
    word = str(word)
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in word):  # the cluster file refuses them; a hand-made value may not
        raise ConfigError(f"control character in unit command word {word!r}")
    if _PLAIN.fullmatch(word):
        return word
    escaped = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def command(*words) -> str:
    return " ".join(quote(w) for w in words)


def stop_lines(component, stop: int) -> tuple:
    """The unit's ExecStop= lines and its TimeoutStopSec for ``component``'s stop rule. Pure.

    With a ``stop_command``, it runs first in the container (given ``stop`` seconds; its
    failure, or the container already gone, does not fail the stop), then ``docker stop``
    sends the stop signal to whatever still runs: systemd then waits for both."""
    container = container_name(component.name)
    lines = []
    if component.stop_command:
        lines.append("ExecStop=-" + command(TIMEOUT, stop, DOCKER, "exec", container, "sh", "-c",
                                            component.stop_command))
    lines.append(f"ExecStop={'-' if component.stop_command else ''}{command(DOCKER, 'stop', '--time', stop, container)}")
    return tuple(lines), stop * len(lines) + STOP_MARGIN


def image_file(component_name: str) -> str:
    return f"{IMAGE_DIR}/{component_name}.env"


def image_environment(version: str, reference: str) -> str:
    """The text of a component's ``image_file``: the ``version`` it runs and its image ``reference``
    (a release pins it by digest). Pure; RecordError on a value systemd would not read back as is
    (both come from the release's record)."""
    for value in (version, reference):
        if not _PLAIN.fullmatch(value):
            raise RecordError(f"not a plain version or image reference: {value!r}")
    return f"AIR_VERSION={version}\nAIR_IMAGE={reference}\n"


def identity_words(cluster, component, machine: str, version) -> tuple:
    """The words of ``docker run`` giving a container of ``component`` on ``machine`` what its unit's
    container has: its environment (``version`` as AIR_VERSION; its etcd login's user and password
    file when it has one) and its mounts (the machine's state, its own secrets, its data folder).
    The unit and the release command's one-off container (``tasks.commands.release_command``) share
    them. Pure."""
    login = etcd_access.has_login(cluster, component)
    return (
        "-e", f"AIR_COMPONENT={component.name}",
        "-e", Expanded(f"AIR_VERSION={version}") if isinstance(version, Expanded) else f"AIR_VERSION={version}",
        "-e", f"AIR_MACHINE={machine}",
        "-e", f"AIR_PORT={component.port}",
        "-e", f"AIR_ETCD={ETCD_LOCAL_CLIENT_URL}",
        "-e", f"AIR_ETCD_PREFIX={app_prefix(cluster)}",
        *(("-e", f"AIR_ETCD_USER={etcd_access.user_of(component.name)}",
           "-e", f"AIR_ETCD_PASSWORD_FILE={SECRETS_MOUNT}/{etcd_access.PASSWORD_FILE}") if login else ()),
        "-v", f"{STATE_DIR}:{STATE_MOUNT}:ro",
        *(("-v", f"{secrets_dir(component.name)}:{SECRETS_MOUNT}:ro") if component.secrets or login else ()),
        "-v", f"{data_dir(component.name)}:{DATA_MOUNT}",
    )


def data_dir(component_name: str) -> str:
    """A component's data folder on the machine, kept across releases."""
    return f"{DATA_DIR}/{component_name}"


def component_unit(cluster, component, machine: str) -> str:
    """The unit running ``component`` in its container on ``machine``, at whatever version and
    image its ``image_file`` names (the version kept as the container's label and environment).
    The same for every release."""
    container = container_name(component.name)
    stop = cluster.timeouts.stop
    signal = component.stop_signal
    data = data_dir(component.name)
    run = command(
        DOCKER, "run", "--rm", "--name", container, "--network", "host",
        *(("--stop-signal", signal) if signal != DEFAULT_STOP_SIGNAL else ()),
        *(("--user", component.user) if component.user else ()),
        "--label", Expanded(f"{VERSION_LABEL}=${{AIR_VERSION}}"),
        *identity_words(cluster, component, machine, Expanded("${AIR_VERSION}")),
        Expanded("${AIR_IMAGE}"),
    )
    # A component running as another user owns its data folder (docker would make it root's).
    owner = f"ExecStartPre={command('/usr/bin/install', '-d', '-o', component.user, '-m', '0700', data)}\n" \
        if component.user else ""
    stops, stop_timeout = stop_lines(component, stop)
    stop_block = "\n".join(stops)
    return f"""\
[Unit]
Description=Air {component.name}
After=docker.service {ETCD_UNIT}
Requires=docker.service

[Service]
EnvironmentFile={image_file(component.name)}
ExecStartPre=-{command(DOCKER, "rm", "-f", container)}
{owner}ExecStart={run}
{stop_block}
TimeoutStopSec={stop_timeout}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


# A second drop-in, only while a cluster installed with plaintext peers moves to TLS
# (``tasks.runbooks.etcd_peers.migrate``): the member shows its certificate when it dials an https peer.
ETCD_MIGRATION_DROPIN = "21-air-peer-files.conf"


def etcd_peer_files_dropin() -> str:
    """The drop-in giving a plaintext member its peer certificate, key and CA, nothing else."""
    return ("[Service]\n" + f"Environment=ETCD_PEER_CERT_FILE={ETCD_PEER_CERT}\n"
            f"Environment=ETCD_PEER_KEY_FILE={ETCD_PEER_KEY}\n" + f"Environment=ETCD_PEER_TRUSTED_CA_FILE={ETCD_PEER_CA}\n")


def etcd_dropin(cluster, machine: str, members, state: str) -> str:
    """The drop-in making ``machine`` the etcd member named after its address.

    ``members`` are the addresses of the whole etcd cluster including
    ``machine``; ``state`` is "new" when they bootstrap together and
    "existing" when ``machine`` joins running members.
    """
    if state not in ETCD_STATES:
        raise ValueError(f"etcd cluster state must be one of {ETCD_STATES}, got {state!r}")
    if machine not in members:
        raise ValueError(f"machine {machine} is not one of the etcd members {list(members)}")
    # Every value is a validated address or cluster name: nothing to quote. Plaintext clients only
    # on loopback (on its address: TLS, for the workers' proxies); peers over TLS; on both, each side
    # proves itself with a certificate of the cluster's CA.
    environment = {
        "ETCD_NAME": machine,
        "ETCD_INITIAL_CLUSTER": ",".join(f"{m}={peer_url(m)}" for m in members),
        "ETCD_INITIAL_CLUSTER_STATE": state,
        "ETCD_INITIAL_CLUSTER_TOKEN": f"air-{cluster.name}",
        "ETCD_INITIAL_ADVERTISE_PEER_URLS": peer_url(machine),
        "ETCD_LISTEN_PEER_URLS": peer_url(machine),
        "ETCD_LISTEN_CLIENT_URLS": f"{ETCD_LOCAL_CLIENT_URL},{member_client_url(machine)}",
        "ETCD_ADVERTISE_CLIENT_URLS": ETCD_LOCAL_CLIENT_URL,
        # The TLS client listener, for the workers' proxies: only a certificate of the cluster's CA gets in.
        "ETCD_CERT_FILE": ETCD_PEER_CERT,
        "ETCD_KEY_FILE": ETCD_PEER_KEY,
        "ETCD_TRUSTED_CA_FILE": ETCD_PEER_CA,
        "ETCD_CLIENT_CERT_AUTH": "true",
        "ETCD_PEER_CERT_FILE": ETCD_PEER_CERT,
        "ETCD_PEER_KEY_FILE": ETCD_PEER_KEY,
        "ETCD_PEER_TRUSTED_CA_FILE": ETCD_PEER_CA,
        "ETCD_PEER_CLIENT_CERT_AUTH": "true",
        "ETCD_DATA_DIR": ETCD_DATA_DIR,
        **({"ETCD_ENABLE_V2": "true"} if getattr(cluster, "etcd_v2", False) else {}),
        **({"ETCD_BCRYPT_COST": str(cluster.etcd_bcrypt_cost)}
           if getattr(cluster, "etcd_bcrypt_cost", ETCD_BCRYPT_COST) != ETCD_BCRYPT_COST else {}),
    }
    return "[Service]\n" + "".join(f"Environment={k}={v}\n" for k, v in environment.items())


def etcd_proxy_unit(members) -> str:
    """The unit of a worker's etcd proxy, forwarding 127.0.0.1:2379 to the ``members`` (addresses)
    over TLS with the machine's etcd certificate. It runs as etcd's user, who owns the certificate."""
    if not members:
        raise ValueError("an etcd proxy needs at least one member to forward to")
    endpoints = ",".join(member_client_url(m).removeprefix("https://") for m in members)
    run = command(ETCD_BINARY, "grpc-proxy", "start", f"--endpoints={endpoints}",
                  f"--listen-addr=127.0.0.1:{ETCD_CLIENT_PORT}", f"--cert={ETCD_PEER_CERT}",
                  f"--key={ETCD_PEER_KEY}", f"--cacert={ETCD_PEER_CA}", f"--data-dir={ETCD_PROXY_DIR}")
    return f"""\
[Unit]
Description=Air etcd proxy (to the cluster's etcd members)
After=network-online.target
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
User={ETCD_USER}
StateDirectory=etcd/proxy
ExecStart={run}
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
"""
