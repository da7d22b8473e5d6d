"""Cloud configs of Air machines: the documents, their YAML, and the files they mean.

This package owns what a machine's cloud config says: ``base`` is what a
freshly prepared machine gets (SSH keys, registry trust and login), ``final``
adds what install makes it run (etcd membership, the Air units, the release
state). A document is a plain dict; ``render`` writes it as the
``#cloud-config`` YAML the machine boots from, and ``files`` lists the files
it stands for, which the installer writes as they are, so the cloud config
and the installed machine cannot differ. Unit contents come from ``.units``.
"""
from __future__ import annotations

import base64
import copy
import json
from dataclasses import dataclass, field

import yaml

from .units import (ETCD_DROPIN, ETCD_UNIT, STATE_DIR, UNIT_DIR, component_unit,
                    etcd_dropin, unit_name)

HEADER = "#cloud-config\n"
DOCKER_CERTS_DIR = "/etc/docker/certs.d"
DOCKER_CONFIG = "/root/.docker/config.json"
RELEASE_FILE = f"{STATE_DIR}/release"
COMPONENTS_FILE = f"{STATE_DIR}/components"


@dataclass(frozen=True)
class File:
    path: str
    content: str = field(repr=False)  # may be a secret: never in a repr or a log
    mode: int


def _write_file(path: str, content: str, mode: int) -> dict:
    return {"path": path, "permissions": f"{mode:04o}", "content": content}


def _unit(name: str, **rest) -> dict:
    return {"name": name, "enable": True, "command": "start", **rest}


def base(cluster, public_keys, registry_ca, registry_auth) -> dict:
    """The cloud config of a freshly prepared machine; etcd is left for install.

    ``registry_ca`` is the CA certificate's text (None for a publicly trusted
    registry), ``registry_auth`` is ``(username, password)``.
    """
    registry = cluster.registry.address
    username, password = registry_auth
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    write_files = []
    if registry_ca is not None:
        write_files.append(_write_file(f"{DOCKER_CERTS_DIR}/{registry}/ca.crt", registry_ca, 0o644))
    write_files.append(_write_file(DOCKER_CONFIG, json.dumps({"auths": {registry: {"auth": token}}}) + "\n", 0o600))
    return {
        "ssh_authorized_keys": list(public_keys),
        "write_files": write_files,
        "coreos": {"units": []},
    }


def final(cluster, machine: str, members, state: str, release, base_doc: dict) -> dict:
    """``base_doc`` plus etcd membership, the Air units at ``release`` and the release state."""
    doc = copy.deepcopy(base_doc)
    versions = {c.name: release.image(c.name).version for c in cluster.components}
    units = doc.setdefault("coreos", {}).setdefault("units", [])
    units.append(_unit(ETCD_UNIT, drop_ins=[
        {"name": ETCD_DROPIN, "content": etcd_dropin(cluster, machine, members, state)}]))
    for c in cluster.components:
        units.append(_unit(unit_name(c.name), content=component_unit(cluster, c, versions[c.name], machine)))
    components = "".join(f"{c.name} {versions[c.name]} {c.port}\n" for c in cluster.components)
    doc.setdefault("write_files", []).extend([
        _write_file(RELEASE_FILE, release.id + "\n", 0o644),
        _write_file(COMPONENTS_FILE, components, 0o644),
    ])
    return doc


class _Dumper(yaml.SafeDumper):
    """SafeDumper writing multi-line strings as literal blocks, so units read as files."""


def _represent_str(dumper, value):
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def render(doc: dict) -> str:
    """The cloud config file for ``doc``."""
    return HEADER + yaml.dump(doc, Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def files(doc: dict) -> list:
    """Every file ``doc`` puts on disk, in order: write_files, then each unit and its drop-ins."""
    result = [File(f["path"], f["content"], int(f["permissions"], 8)) for f in doc.get("write_files", [])]
    for unit in doc.get("coreos", {}).get("units", []):
        if "content" in unit:
            result.append(File(f"{UNIT_DIR}/{unit['name']}", unit["content"], 0o644))
        for dropin in unit.get("drop_ins", []):
            result.append(File(f"{UNIT_DIR}/{unit['name']}.d/{dropin['name']}", dropin["content"], 0o644))
    return result


def started_units(doc: dict) -> list:
    """Names of the units ``doc`` starts, in order."""
    return [u["name"] for u in doc.get("coreos", {}).get("units", []) if u.get("command") == "start"]


def secret_paths(doc: dict) -> list:
    """Paths of the files only their owner may read (0600): never print their content."""
    return [f.path for f in files(doc) if f.mode & 0o077 == 0]


REDACTED = "<secret: left out; use --output FILE to write the whole document>"


def redacted(doc: dict) -> dict:
    """``doc`` with the content of every owner-only (0600) file replaced, for printing."""
    doc = copy.deepcopy(doc)
    for entry in doc.get("write_files", []):
        if int(entry["permissions"], 8) & 0o077 == 0:
            entry["content"] = REDACTED
    return doc
