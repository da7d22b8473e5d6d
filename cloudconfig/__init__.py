"""Cloud configs of Air machines: the documents, their YAML, and the files they mean.

This package owns what a machine's cloud config says: ``base`` is what a
freshly prepared machine gets (SSH keys, registry trust and login; the
administrator may add anything), ``final`` is the administrator's base
extended, never replaced, by ``install_part`` (etcd membership, the Air
units, the release state, the cluster's additions, and no OS reboot but
`fab os-upgrade`'s). A document is a plain dict; ``render`` writes it as the
``#cloud-config`` YAML the machine boots from, and ``files`` lists the files
it stands for, which the installer writes as they are, so the cloud config
and the installed machine cannot differ. Unit contents come from ``.units``.
"""
from __future__ import annotations

import base64
import copy
import json
from dataclasses import field
from urllib.parse import quote

import yaml

from tasks.model.frozen import frozen

from .units import (
    ETCD_DROPIN,
    ETCD_PROXY_UNIT,
    ETCD_UNIT,
    STATE_DIR,
    UNIT_DIR,
    component_unit,
    etcd_dropin,
    etcd_proxy_unit,
    image_environment,
    image_file,
    unit_name,
)

HEADER = "#cloud-config\n"
# No machine reboots by itself: update-engine still downloads and stages OS updates, and
# `fab os-upgrade` reboots into them one machine at a time, drained and waited for.
REBOOT_STRATEGY = "off"
IGNITION_VERSION = "3.3.0"
DOCKER_CERTS_DIR = "/etc/docker/certs.d"
DOCKER_CONFIG = "/root/.docker/config.json"
RELEASE_FILE = f"{STATE_DIR}/release"
COMPONENTS_FILE = f"{STATE_DIR}/components"


@frozen
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


class Conflict(ValueError):
    """The install part would replace an entry of the administrator's base cloud config."""


def installed_components(cluster, release) -> list:
    """The cluster's components that ``release`` has an image of, in the cluster's order."""
    return [c for c in cluster.components if c.name in release.components()]


def etcd_part(cluster, machine: str, members, state: str) -> dict:
    """How ``machine`` reaches etcd: a member's drop-in when it is one of ``members``, else (a worker)
    the unit of its local etcd proxy to them."""
    if machine in members:
        return _unit(ETCD_UNIT, drop_ins=[{"name": ETCD_DROPIN, "content": etcd_dropin(cluster, machine, members, state)}])
    return _unit(ETCD_PROXY_UNIT, content=etcd_proxy_unit(members))


def install_part(cluster, machine: str, members, state: str, release) -> dict:
    """What install adds to a machine's base cloud config: etcd membership (or, on a worker not among
    ``members``, its etcd proxy), the Air units at
    ``release``, the release state, the cluster's own additions, and the reboot strategy ``off`` (OS
    updates are staged, and `fab os-upgrade` reboots into them). A machine runs the components both the cluster
    file and the release have: one the release lacks is not installed."""
    installed = installed_components(cluster, release)
    images = {c.name: release.image(c.name) for c in installed}
    units = [etcd_part(cluster, machine, members, state)]
    units += [_unit(unit_name(c.name), content=component_unit(cluster, c, machine)) for c in installed]
    components = "".join(f"{c.name} {images[c.name].version} {c.port}\n" for c in installed)
    write_files = [_write_file(RELEASE_FILE, release.id + "\n", 0o644),
                   _write_file(COMPONENTS_FILE, components, 0o644)]
    write_files += [_write_file(image_file(c.name), image_environment(images[c.name].version,
                                                                      cluster.pinned_ref(images[c.name])), 0o644)
                    for c in installed]
    additions = getattr(cluster, "additions", None)
    if additions is not None:
        units += [_unit(u.name, content=u.content) for u in additions.units]
        write_files += [_write_file(f.path, f.content, int(f.permissions, 8)) for f in additions.files]
    return {"write_files": write_files,
            "coreos": {"update": {"reboot_strategy": REBOOT_STRATEGY}, "units": units}}


def merge(base_doc: dict, part: dict) -> dict:
    """One document: the administrator's ``base_doc`` with ``part`` added. Units are told apart by
    name, files by path; an entry of ``part`` that the base already has (or a setting the base
    gives another value) raises Conflict naming both: nothing of the base is ever replaced. Pure."""
    doc = copy.deepcopy(base_doc)
    files_by_path = {f.get("path"): f for f in doc.get("write_files", [])}
    for entry in part.get("write_files", []):
        if entry["path"] in files_by_path:
            raise Conflict(f"write_files {entry['path']}: the base cloud config writes it, and so would the install")
        doc.setdefault("write_files", []).append(copy.deepcopy(entry))
    coreos = doc.setdefault("coreos", {})
    names = {u.get("name") for u in coreos.get("units", []) or []}
    for unit in part.get("coreos", {}).get("units", []):
        if unit["name"] in names:
            raise Conflict(f"unit {unit['name']}: the base cloud config has it, and so would the install")
        coreos.setdefault("units", []).append(copy.deepcopy(unit))
    for section, settings in part.get("coreos", {}).items():
        if section == "units":
            continue
        have = coreos.setdefault(section, {})
        for key, value in settings.items():
            if key in have and have[key] != value:
                raise Conflict(f"coreos.{section}.{key}: the base cloud config says {have[key]!r}, "
                               f"the install needs {value!r}")
            have[key] = value
    return doc


def without(doc: dict, part: dict) -> dict:
    """``doc`` less the entries ``part`` adds (units by name, files by path, its coreos settings):
    the base of a machine whose final cloud config was written before bases were kept. Pure."""
    doc = copy.deepcopy(doc)
    paths = {f["path"] for f in part.get("write_files", [])}
    doc["write_files"] = [f for f in doc.get("write_files", []) if f.get("path") not in paths]
    coreos = doc.setdefault("coreos", {})
    names = {u["name"] for u in part.get("coreos", {}).get("units", [])}
    coreos["units"] = [u for u in coreos.get("units", []) or [] if u.get("name") not in names]
    for section, settings in part.get("coreos", {}).items():
        if section != "units" and coreos.get(section) == settings:
            del coreos[section]
    return doc


def final(cluster, machine: str, members, state: str, release, base_doc: dict) -> dict:
    """``base_doc`` (the administrator's) extended by ``install_part``; see ``merge``."""
    return merge(base_doc, install_part(cluster, machine, members, state, release))


def parse(text: str, where: str) -> dict:
    """A cloud config document from its file; Conflict-free ValueError naming ``where`` when it is not one."""
    if not text.startswith(HEADER.strip()):
        raise ValueError(f"{where}: not a cloud config (it does not start with {HEADER.strip()})")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{where}: malformed YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{where}: expected a mapping of cloud-config sections")
    return doc


def ignition(doc: dict) -> dict:
    """The same machine configuration as Ignition (spec 3) JSON, for provisioning Flatcar: the
    SSH keys of user core, every file with its mode, every unit with its drop-ins. Pure."""
    return {
        "ignition": {"version": IGNITION_VERSION},
        "passwd": {"users": [{"name": "core", "sshAuthorizedKeys": list(doc.get("ssh_authorized_keys", []))}]},
        "storage": {"files": [{"path": f["path"], "mode": int(f["permissions"], 8), "overwrite": True,
                               "contents": {"source": "data:," + quote(f["content"], safe="")}}
                              for f in doc.get("write_files", [])]},
        "systemd": {"units": [_ignition_unit(u) for u in doc.get("coreos", {}).get("units", []) or []]},
    }


def _ignition_unit(unit: dict) -> dict:
    out = {"name": unit["name"]}
    if unit.get("enable") or unit.get("command") == "start":
        out["enabled"] = True
    if "content" in unit:
        out["contents"] = unit["content"]
    if unit.get("drop_ins"):
        out["dropins"] = [{"name": d["name"], "contents": d["content"]} for d in unit["drop_ins"]]
    return out


class _Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """SafeDumper writing multi-line strings as literal blocks, so units read as files. libyaml's
    emitter when PyYAML has it (the same text, several times faster: a rollout renders every
    machine's cloud config before it changes anything), else PyYAML's own."""


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


# Where a machine reads its cloud config, looked for in this order: Flatcar's, then CoreOS's.
USER_DATA_PATHS = ("/var/lib/flatcar-install/user_data", "/var/lib/coreos-install/user_data")


BASE_SUFFIX = ".air-base"  # the administrator's base, kept beside the final cloud config


# Beside the final cloud config: the SHA-256 of the one air-deploy wrote last. A cloud config that
# no longer has it was changed by hand since, and the next write would lose that change.
WRITTEN_SUFFIX = ".air-written"


def keep_hand_change(user_data: str) -> str:
    """What to do with a change made by hand to the cloud config at ``user_data``."""
    return (f"make it in {user_data}{BASE_SUFFIX} (the administrator's base, which installs extend) and put "
            f"{user_data} back as it was, or remove {user_data}{WRITTEN_SUFFIX} to let the change go")
