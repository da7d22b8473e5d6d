"""What the balancer runs: the haproxy routers file, rendered from a machine list.

Pure text in, text out. The routers file is a haproxy backend listing every
machine's router; haproxy's main configuration (owned by whoever runs the
balancer host; the sandbox writes its own) sends port 80 to this backend.
"""
from __future__ import annotations

import re

BACKEND = "air_routers"
HEADER = "# Written by air-deploy; do not edit by hand.\n"
_SERVER = re.compile(r"^\s*server\s+(\S+)\s", re.M)


def routers_file(port: int, machines) -> str:
    """The routers file sending traffic to ``machines`` (addresses) on ``port``, in the given order."""
    lines = [HEADER.rstrip("\n"), f"backend {BACKEND}", "    mode tcp", "    balance roundrobin",
             "    option redispatch", "    retries 3",
             "    default-server check inter 1s fall 2 rise 2"]
    for machine in machines:
        host = f"[{machine}]" if ":" in machine else machine
        lines.append(f"    server {machine} {host}:{port}")
    return "\n".join(lines) + "\n"


def machines_in(text: str) -> list:
    """The machines a routers file lists (the inverse of ``routers_file``)."""
    return _SERVER.findall(text or "")


def main_config(port: int, routers_file_path: str) -> str:
    """A haproxy main configuration for a balancer dedicated to one cluster (the sandbox's)."""
    return (
        "global\n"
        "    maxconn 4096\n"
        "    stats socket /run/haproxy/admin.sock mode 660 level admin\n"
        "defaults\n"
        "    mode tcp\n"
        "    timeout connect 2s\n"
        "    timeout client 60s\n"
        "    timeout server 60s\n"
        f"frontend air\n"
        f"    bind :{port}\n"
        f"    default_backend {BACKEND}\n"
        f"# {routers_file_path} holds backend {BACKEND}; haproxy is started with -f on both files.\n"
    )
