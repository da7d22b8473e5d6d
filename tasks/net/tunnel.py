"""Tunnels through the executor's SSH connections to a host's loopback services.

``bridged`` turns an SSH channel into a local socket; ``ConnectingAdapter`` makes requests (etcd's
JSON gateway, the registry) connect through a function of ours instead of the network, so every
HTTP client rides on a connection whose host key was checked.
"""
from __future__ import annotations

import socket
import threading

import paramiko
import requests.adapters
import urllib3


def bridged(channel, timeout: float = None) -> socket.socket:
    """A local socket whose other end is ``channel`` (an SSH channel): one end of an unnamed socket
    pair, so nothing listens on this machine and no other process can connect to it."""
    near, far = socket.socketpair()
    for source, sink in ((channel, far), (far, channel)):
        threading.Thread(target=_pipe, args=(source, sink), daemon=True).start()
    near.settimeout(timeout)
    return near


class ConnectingAdapter(requests.adapters.HTTPAdapter):
    """requests' adapter whose connections are opened by ``connect(host, port)`` (a socket through a
    jump host, or over an SSH channel); TLS and its checks are as they would be directly."""

    def __init__(self, connect, plain=urllib3.connection.HTTPConnection):
        self._connect, self._plain = connect, plain  # plain: the class of plain HTTP connections
        super().__init__()

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        connect = self._connect

        class Secure(urllib3.connection.HTTPSConnection):
            def _new_conn(self):
                return connect(self.host, self.port)

        class Plain(self._plain):  # type: ignore[name-defined,misc]
            def _new_conn(self):
                return connect(self.host, self.port)

        class SecurePool(urllib3.HTTPSConnectionPool):
            ConnectionCls = Secure

        class PlainPool(urllib3.HTTPConnectionPool):
            ConnectionCls = Plain

        self.poolmanager.pool_classes_by_scheme = {"https": SecurePool, "http": PlainPool}


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
