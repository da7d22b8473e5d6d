"""Tunnels through the executor's SSH connections to a host's loopback services.

``bridged`` turns an SSH channel into a local socket (``tasks.net.http`` makes HTTP clients
connect through such sockets).
"""
from __future__ import annotations

import socket
import threading

import paramiko


def bridged(channel, timeout: float = None) -> socket.socket:
    """A local socket whose other end is ``channel`` (an SSH channel): one end of an unnamed socket
    pair, so nothing listens on this machine and no other process can connect to it."""
    near, far = socket.socketpair()
    for source, sink in ((channel, far), (far, channel)):
        threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()
    near.settimeout(timeout)
    return near


def _pipe(source, sink) -> None:
    """Copy ``source`` to ``sink`` until either ends, then close both."""
    try:
        while True:
            data = source.recv(1 << 16)
            if not data:
                break
            sink.sendall(data)
    except (OSError, EOFError, paramiko.SSHException):
        pass
    finally:
        for end in (source, sink):
            try:
                end.close()
            except (OSError, EOFError):
                pass
