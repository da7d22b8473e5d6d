"""Target clusters: the YAML files in ``clusters/`` and their validation.

This module owns what a cluster file may say. ``SCHEMA`` is the single
description of every field: it validates the files (``load``) and it writes
``clusters/README.md`` (``python -m tasks.cluster --readme``), so the two
cannot drift apart. Loading is pure file reading: nothing is contacted, and
any problem is one ``ConfigError`` line naming the file, the field and what
was expected.
"""
from __future__ import annotations

import ipaddress
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from .errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLUSTERS_DIR = Path(os.environ.get("AIR_CLUSTERS_DIR", PROJECT_ROOT / "clusters"))
CLUSTER_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
COMPONENT_NAME = CLUSTER_NAME
DOCKER_NAMESPACE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")
REMOTE_PATH = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
URL_PATH = re.compile(r"^/[A-Za-z0-9._~/?=&%+-]*$")


# ---------------------------------------------------------------- the schema

@dataclass(frozen=True)
class Field:
    kind: str
    doc: str
    default: Any = None
    required: bool = True


@dataclass(frozen=True)
class Section:
    doc: str
    fields: dict
    many: bool = False  # a list of such sections
    required: bool = True


KINDS = {
    "text": "a non-empty string",
    "name": "a lower-case name: a letter, then letters, digits or _",
    "namespace": "a Docker repository namespace (lower-case letters, digits, . _ -)",
    "int": "a positive whole number",
    "port": "a TCP port (1 to 65535)",
    "address": "an IPv4 or IPv6 address",
    "addresses": "a non-empty list of distinct IPv4 or IPv6 addresses",
    "host": "an IP address or a DNS name",
    "hostport": "HOST:PORT",
    "local_path": "a path on this machine (relative to the cluster file; ~ allowed)",
    "remote_path": "an absolute path on the remote host (letters, digits, . _ / @ + -)",
    "url_path": "an HTTP path starting with / (letters, digits, . _ ~ / ? = & % + -)",
    "repo_path": "a relative path inside the source checkout (no .., no leading /)",
    "http_status": "an HTTP status code (100 to 599)",
    "check": "`http` (the health path must answer) or `tcp` (the port must accept a connection)",
    "signal": "a signal name such as SIGTERM, SIGQUIT, SIGINT",
}

HEALTH_CHECKS = ("http", "tcp")
SIGNAL = re.compile(r"^SIG[A-Z0-9]{2,8}$")

SCHEMA = Section("A target cluster: one YAML file per cluster, named <cluster>.yaml.", {
    "include": Field("local_path", "Another YAML file whose fields this file's own fields complete "
                     "(the sandbox writes one for the `local` cluster).", required=False),
    "namespace": Field("namespace", "Docker namespace of the images: <namespace>/<cluster>_<component>."),
    "ssh": Section("How air-deploy logs in to every host of the cluster.", {
        "user": Field("text", "Login user; commands are run through `sudo -n` unless it is root.", "core"),
        "port": Field("port", "SSH port.", 22),
        "key": Field("local_path", "Private key file."),
        "known_hosts": Field("local_path", "known_hosts file; a host whose key is not in it is refused."),
    }),
    "build": Section("The build server, where images are built and pushed.", {
        "host": Field("host", "Address of the build server (`fab -H` overrides it)."),
        "repository": Field("text", "Git URL of the Air source, as the build server reaches it."),
        "checkout": Field("remote_path", "This cluster's own source checkout on the build server.",
                          "/aircloak/{cluster}/air"),
        "branch": Field("text", "Branch deployed when none is given.", "master"),
    }),
    "registry": Section("The Docker registry holding the cluster's images.", {
        "address": Field("hostport", "Registry address, as machines and the build server reach it."),
        "ca": Field("local_path", "CA certificate the registry's TLS certificate is signed by "
                    "(omit for a publicly trusted one).", required=False),
        "credentials": Field("local_path", "YAML file with `username` and `password` "
                             "(must not be readable by group or others)."),
    }),
    "balancer": Section("The TCP load balancer (haproxy) in front of the machines.", {
        "host": Field("host", "Address of the balancer host."),
        "port": Field("port", "Port the routers listen on, on every machine.", 80),
        "routers_file": Field("remote_path", "haproxy backend file listing the machines; written by air-deploy only.",
                              "/etc/haproxy/air-routers.cfg"),
        "config": Field("remote_path", "haproxy's main configuration, used to validate the routers file.",
                        "/etc/haproxy/haproxy.cfg"),
        "stats_socket": Field("remote_path", "haproxy's admin socket (`stats socket` in its configuration; "
                              "Debian's default), read by `fab status` for each machine's state there "
                              "(UP, DOWN, DRAIN, MAINT).", "/run/haproxy/admin.sock"),
    }),
    "machines": Field("addresses", "The machines of the cluster (etcd members), by address."),
    "components": Section("The Air components, each a Docker container under systemd on every machine.", {
        "name": Field("name", "Component name; the image is <namespace>/<cluster>_<name>."),
        "port": Field("port", "Port the component listens on (host network)."),
        "health": Field("url_path", "HTTP path the health check asks (with `check: http`).", "/health"),
        "health_status": Field("http_status", "HTTP status the health path answers when the component is healthy.",
                               200),
        "health_body": Field("text", "Text the health path's answer must contain (none: any body).", required=False),
        "check": Field("check", "How the health check asks: over HTTP, or only whether the port accepts a "
                       "TCP connection (a component without HTTP).", "http"),
        "stop_signal": Field("signal", "Signal `docker stop` sends the container to stop it politely "
                             "(nginx: SIGQUIT); after `timeouts.stop` seconds it is killed.", "SIGTERM"),
        "stop_command": Field("text", "Command run in the container (through `sh -c`) to stop it politely, "
                              "before the stop signal is sent.", required=False),
        "source": Field("repo_path", "Folder of the component's Dockerfile (its build context) in the checkout; "
                        "default components/<name>.", required=False),
    }, many=True),
    "secrets": Field("local_path", "Folder of secret files, installed on every machine with mode 0600 "
                     "and mounted read-only into the containers."),
    "cloud_config": Field("remote_path", "Where a machine reads its cloud config "
                          "(Flatcar: /var/lib/flatcar-install/user_data).",
                          "/var/lib/coreos-install/user_data"),
    "admin": Section("How the application creates its first admin user.", {
        "component": Field("name", "Component whose container runs the command."),
        "command": Field("text", "Command run in that container; it reads email, name and password "
                         "as three lines on standard input."),
    }, required=False),
    "timeouts": Section("Timeouts, in seconds.", {
        "connect": Field("int", "SSH connection.", 10),
        "stop": Field("int", "Polite stop of a component before it is killed.", 30),
        "healthy": Field("int", "A started machine must pass its health checks within this.", 60),
        "lock": Field("int", "Lease of the cluster's lock; a killed or hung task's lock expires after it.", 30),
        "command": Field("int", "Deadline of one remote command (one without its own below); "
                         "past it the command is stopped on the host too.", 60),
        "pull": Field("int", "Deadline of pulling a release's images on a machine.", 300),
        "alive": Field("int", "An SSH peer that answers no keepalive for this long is taken for hung or gone.", 10),
    }, required=False),
})


# ---------------------------------------------------------------- the typed result

@dataclass(frozen=True)
class Ssh:
    user: str
    port: int
    key: Path
    known_hosts: Path


@dataclass(frozen=True)
class Build:
    host: str
    repository: str
    checkout: str
    branch: str


@dataclass(frozen=True)
class Registry:
    address: str
    ca: Optional[Path]
    credentials: Path


@dataclass(frozen=True)
class Balancer:
    host: str
    port: int
    routers_file: str
    config: str
    stats_socket: str = "/run/haproxy/admin.sock"


@dataclass(frozen=True)
class Component:
    name: str
    port: int
    health: str
    source: str
    health_status: int = 200
    health_body: Optional[str] = None
    check: str = "http"
    stop_signal: str = "SIGTERM"
    stop_command: Optional[str] = None


@dataclass(frozen=True)
class Admin:
    component: str
    command: str


@dataclass(frozen=True)
class Timeouts:
    connect: int
    stop: int
    healthy: int
    lock: int
    command: int
    pull: int
    alive: int


@dataclass(frozen=True)
class Cluster:
    name: str
    file: Path
    namespace: str
    ssh: Ssh
    build: Build
    registry: Registry
    balancer: Balancer
    machines: tuple
    components: tuple
    secrets: Path
    cloud_config: str
    admin: Optional[Admin]
    timeouts: Timeouts

    def image(self, component: str) -> str:
        """Repository of a component's image, without registry or tag."""
        return f"{self.namespace}/{self.name}_{component}"

    def image_ref(self, component: str, version: str) -> str:
        """Full reference a machine pulls: registry/namespace/cluster_component:version."""
        return f"{self.registry.address}/{self.image(component)}:{version}"

    def component(self, name: str) -> Component:
        for component in self.components:
            if component.name == name:
                return component
        raise ConfigError(f"{self.file}: no component {name!r} (known: {', '.join(self.component_names)})")

    @property
    def component_names(self) -> tuple:
        return tuple(c.name for c in self.components)

    def with_machines(self, machines) -> "Cluster":
        """The same cluster with another machine list (validated)."""
        values = dict(self.__dict__)
        values["machines"] = tuple(check_addresses(machines, "--machines"))
        return Cluster(**values)


# ---------------------------------------------------------------- validation

def _fail(file, where, expected, got):
    raise ConfigError(f"{file}: {where}: expected {expected}, got {got!r}")


def check_address(value, where="address", file="command line") -> str:
    """An IP address in canonical form, or a ConfigError naming ``where``."""
    if value is None and where.startswith("--"):
        raise ConfigError(f"{where} is required ({KINDS['address']})")
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        _fail(file, where, KINDS["address"], value)


def check_addresses(values, where="machines", file="command line") -> list:
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if not isinstance(values, (list, tuple)) or not values:
        _fail(file, where, KINDS["addresses"], values)
    result = [check_address(v, f"{where}[{i}]", file) for i, v in enumerate(values)]
    if len(set(result)) != len(result):
        _fail(file, where, KINDS["addresses"], values)
    return result


def _check(kind, value, where, file, base_dir, cluster):
    if kind == "http_status":
        if isinstance(value, bool) or not isinstance(value, int) or not 100 <= value <= 599:
            _fail(file, where, KINDS[kind], value)
        return value
    if kind in ("int", "port"):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or (kind == "port" and value > 65535):
            _fail(file, where, KINDS[kind], value)
        return value
    if not isinstance(value, str) and kind != "addresses":
        _fail(file, where, KINDS[kind], value)
    if kind == "text":
        if not value.strip():
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "name":
        if not COMPONENT_NAME.match(value):
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "namespace":
        if not DOCKER_NAMESPACE.match(value):
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "address":
        return check_address(value, where, file)
    if kind == "addresses":
        return tuple(check_addresses(value, where, file))
    if kind == "host":
        try:
            return str(ipaddress.ip_address(value))
        except ValueError:
            if not HOSTNAME.match(value):
                _fail(file, where, KINDS[kind], value)
            return value
    if kind == "hostport":
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            _fail(file, where, KINDS[kind], value)
        _check("host", host.strip("[]"), where, file, base_dir, cluster)
        return value
    if kind == "local_path":
        return (base_dir / Path(value).expanduser()).resolve()
    if kind == "remote_path":
        value = value.replace("{cluster}", cluster)
        if not REMOTE_PATH.match(value) or "/../" in value + "/":
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "repo_path":
        parts = value.split("/")
        if value.startswith("/") or ".." in parts or not REMOTE_PATH.match("/" + value):
            _fail(file, where, KINDS[kind], value)
        return value.strip("/")
    if kind == "check":
        if value not in HEALTH_CHECKS:
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "signal":
        value = value if value.startswith("SIG") else f"SIG{value}"
        if not SIGNAL.match(value):
            _fail(file, where, KINDS[kind], value)
        return value
    if kind == "url_path":
        if not URL_PATH.match(value):
            _fail(file, where, KINDS[kind], value)
        return value
    raise AssertionError(kind)


def _validate(section: Section, data, where, file, base_dir, cluster) -> dict:
    if not isinstance(data, dict):
        _fail(file, where or "top level", "a mapping of fields", data)
    unknown = sorted(set(data) - set(section.fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"{file}: {prefix}{unknown[0]}: unknown field "
                          f"(expected one of: {', '.join(section.fields)})")
    result = {}
    for key, spec in section.fields.items():
        path = f"{where}.{key}" if where else key
        present = key in data and data[key] is not None
        if isinstance(spec, Section):
            if not present:
                if spec.required:
                    raise ConfigError(f"{file}: {path}: missing ({spec.doc})")
                result[key] = _validate(spec, {}, path, file, base_dir, cluster) if _all_defaulted(spec) else None
                continue
            if spec.many:
                items = data[key]
                if not isinstance(items, list) or not items:
                    _fail(file, path, "a non-empty list", items)
                result[key] = [_validate(spec, item, f"{path}[{i}]", file, base_dir, cluster)
                               for i, item in enumerate(items)]
            else:
                result[key] = _validate(spec, data[key], path, file, base_dir, cluster)
            continue
        if not present:
            if spec.default is not None:
                result[key] = _check(spec.kind, spec.default, path, file, base_dir, cluster)
            elif spec.required:
                raise ConfigError(f"{file}: {path}: missing ({KINDS[spec.kind]}: {spec.doc})")
            else:
                result[key] = None
            continue
        result[key] = _check(spec.kind, data[key], path, file, base_dir, cluster)
    return result


def _all_defaulted(section: Section) -> bool:
    return all(isinstance(f, Field) and f.default is not None for f in section.fields.values())


def _read_yaml(path: Path, shown: str) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{shown}: cannot read: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{shown}: malformed YAML{at}: {problem}") from None
    if not isinstance(data, dict):
        _fail(shown, "top level", "a mapping of fields", data)
    return data


def known_clusters(directory: Path = None) -> list:
    directory = Path(directory or CLUSTERS_DIR)
    return sorted(p.stem for p in directory.glob("*.yaml"))


def load(name: str, directory: Path = None) -> Cluster:
    """Read and validate ``clusters/<name>.yaml``; raise ConfigError on any problem."""
    directory = Path(directory or CLUSTERS_DIR)
    if not isinstance(name, str) or not CLUSTER_NAME.match(name):
        raise ConfigError(f"cluster name {name!r} is not valid ({KINDS['name']})")
    file = directory / f"{name}.yaml"
    if not file.exists():
        known = ", ".join(known_clusters(directory)) or "none"
        raise ConfigError(f"unknown cluster {name!r}: no {file} (known: {known})")
    shown = _shown(file)
    data = _read_yaml(file, shown)
    if data.get("include"):
        if not isinstance(data["include"], str):
            _fail(shown, "include", KINDS["local_path"], data["include"])
        included = (file.parent / Path(data["include"]).expanduser()).resolve()
        if not included.exists():
            hint = " (run `fab sandbox.up` first)" if ".sandbox" in included.parts else ""
            raise ConfigError(f"{shown}: include: {_shown(included)} does not exist{hint}")
        base = _read_yaml(included, _shown(included))
        base.pop("include", None)
        data = _merge(base, data)
    values = _validate(SCHEMA, data, "", shown, file.parent, name)
    names = [c["name"] for c in values["components"]]
    if len(set(names)) != len(names):
        _fail(shown, "components", "distinct component names", names)
    if values["admin"] and values["admin"]["component"] not in names:
        _fail(shown, "admin.component", f"one of the components ({', '.join(names)})", values["admin"]["component"])
    return Cluster(
        name=name, file=file, namespace=values["namespace"],
        ssh=Ssh(**values["ssh"]), build=Build(**values["build"]),
        registry=Registry(**values["registry"]), balancer=Balancer(**values["balancer"]),
        machines=values["machines"],
        components=tuple(Component(**{**c, "source": c["source"] or f"components/{c['name']}"})
                         for c in values["components"]),
        secrets=values["secrets"], cloud_config=values["cloud_config"],
        admin=Admin(**values["admin"]) if values["admin"] else None,
        timeouts=Timeouts(**values["timeouts"]),
    )


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _shown(path: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------- documentation

def readme() -> str:
    """clusters/README.md, written from SCHEMA."""
    lines = ["# Target clusters", "",
             "<!-- Written by `python -m tasks.cluster --readme`; edit tasks/cluster.py instead. -->", "",
             SCHEMA.doc, "",
             "Every field is checked before anything is contacted; a problem is reported as one line "
             "naming the file, the field and what was expected.", "",
             "| field | kind | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(section: Section, prefix: str):
        for key, spec in section.fields.items():
            path = f"{prefix}{key}"
            if isinstance(spec, Section):
                shape = "list of mappings" if spec.many else "mapping"
                optional = "" if spec.required else " (optional)"
                lines.append(f"| `{path}` | {shape}{optional} | | {spec.doc} |")
                walk(spec, f"{path}[]." if spec.many else f"{path}.")
            else:
                default = f"`{spec.default}`" if spec.default is not None else ("" if spec.required else "(optional)")
                lines.append(f"| `{path}` | {KINDS[spec.kind]} | {default} | {spec.doc} |")

    walk(SCHEMA, "")
    return "\n".join(_markdown(line) for line in lines) + "\n"


def _markdown(line: str) -> str:
    """Angle brackets outside `code` spans, escaped so Markdown does not take them for HTML."""
    if line.startswith("<!--"):
        return line
    parts = line.split("`")
    return "`".join(p.replace("<", "&lt;").replace(">", "&gt;") if i % 2 == 0 else p for i, p in enumerate(parts))


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        sys.stdout.write(readme())
    else:
        sys.exit("usage: python -m tasks.cluster --readme")
