"""The Docker Engine API of a remote host, over our own SSH connection.

docker-py (the ``docker`` package) speaks the Engine API; over ``ssh://`` it
would open its own paramiko connection with its own idea of keys and host
keys (~/.ssh/config, system known_hosts). Here its SSH adapter rides on the
Fabric connection the executor (``tasks.net.executor.Executor``) opened, so the cluster's key
and known_hosts checking apply to the Docker API too, and nothing else in
air-deploy needs to know how the API is reached.
"""
from __future__ import annotations

import docker
from docker.transport.sshconn import SSHConnectionPool, SSHHTTPAdapter

# The Engine API level air-deploy speaks: Docker 20.10 and every later engine answer it.
API_VERSION = "1.41"
# HTTP connections (each an SSH channel) kept open; sshd allows 10 channels per connection.
POOL_SIZE = 3


class _FabricSSHAdapter(SSHHTTPAdapter):
    """docker-py's SSH adapter, given an already authenticated connection."""

    def __init__(self, conn, timeout):
        self._conn = conn
        super().__init__(f"ssh://{conn.host}", timeout=timeout, max_pool_size=POOL_SIZE)

    def _create_paramiko_client(self, base_url):
        self.ssh_client = self._conn.client

    def _connect(self):
        self._conn.open()

    def get_connection(self, url, proxies=None):
        # docker-py keeps one pool (so one SSH channel or more) per URL; one pool for all keeps
        # the number of channels bounded, however many different API calls are made.
        with self.pools.lock:
            pool = self.pools.get("engine")
            if pool is None:
                pool = SSHConnectionPool(ssh_client=self.ssh_client, timeout=self.timeout,
                                         maxsize=self.max_pool_size, host=self.ssh_host)
                self.pools["engine"] = pool
        return pool

    def close(self):
        # The connection belongs to the caller: close only the HTTP pools.
        self.pools.clear()


def engine(conn, timeout: int = 600, counted=None) -> docker.APIClient:
    """An APIClient for the engine on ``conn``'s host (``docker system dial-stdio`` there);
    ``counted``: a requests response hook counting its round trips (``tasks.net.trips``)."""
    conn.open()
    api = docker.APIClient(base_url=f"ssh://{conn.host}", version=API_VERSION,
                           use_ssh_client=True, timeout=timeout)
    adapter = _FabricSSHAdapter(conn, timeout)
    api._custom_adapter = adapter
    api.mount("http+docker://ssh", adapter)
    if counted is not None:
        api.hooks["response"].append(counted)
    return api
