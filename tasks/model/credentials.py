"""Credentials files (the registry's, etcd's root login): a YAML file of ``username`` and ``password``, private to its owner.

Read by the registry client (``tasks.net.registry``) and by the machines' base cloud config
(``tasks.commands.machine.base_document``); no message ever shows the password.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from tasks.model.errors import ConfigError


def load_credentials(path, what: str = "registry credentials") -> tuple:
    """(username, password) from a YAML file that only its owner may read or write."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        text = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}") from None
    if mode & 0o077:
        raise ConfigError(f"{path}: {what} must be private (mode is {mode & 0o777:o}); "
                          f"run: chmod 600 {path}")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:  # its message could quote the password: say where, not what
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{at} (expected `username:` and `password:`)") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `username:` and `password:`")
    for key in ("username", "password"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise ConfigError(f"{path}: {key}: expected a non-empty string (quote it if it looks like a number)")
    return data["username"], data["password"]
