"""HTTP over our own connections: the requests and urllib3 plumbing of the etcd and registry
clients.

``ConnectingAdapter`` makes requests (etcd's JSON gateway, the registry) connect through a function
of ours (``tasks.net.tunnel.bridged`` over an SSH channel, or a socket through a jump host) instead
of the network, so every HTTP client rides on a connection whose host key was checked.
``OneWriteAdapter`` writes each request in one piece. Imported when a client is first made
(``tasks.net.deferred``), so `fab` starts without requests.
"""
from __future__ import annotations

from typing import Optional

import requests.adapters
import urllib3


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



class OneWriteConnection(urllib3.connection.HTTPConnection):
    """An HTTP connection that writes each request, head and body, in one piece.

    urllib3 writes the head, then the body. Through the SSH tunnel each write becomes a
    write of sshd to etcd's socket on the machine, and there the body waits for the ACK
    of the head, which Linux delays by 40 ms: half of all etcd calls took 45 ms instead
    of 3 (seen on the sandbox). The tunnel's socket pair passes writes on as they come, so
    this holds there too."""

    _held: Optional[bytearray] = None

    def request(self, method, url, body=None, headers=None, **options):
        self._held = bytearray()
        try:
            super().request(method, url, body=body, headers=headers, **options)
            held = bytes(self._held)
        finally:
            self._held = None
        if held:
            super().send(held)

    def send(self, data):
        if self._held is None:
            return super().send(data)
        if isinstance(data, (bytes, bytearray)):
            self._held += data
            return None
        held, self._held = bytes(self._held), bytearray()  # a streamed body: what is held goes first
        super().send(held)
        return super().send(data)


class OneWritePool(urllib3.HTTPConnectionPool):
    ConnectionCls = OneWriteConnection


class OneWriteAdapter(requests.adapters.HTTPAdapter):
    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {**self.poolmanager.pool_classes_by_scheme, "http": OneWritePool}
