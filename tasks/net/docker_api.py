"""The Docker Engine API of a remote host, over our own SSH connection.

docker-py (the ``docker`` package) speaks the Engine API; over ``ssh://`` it
would open its own paramiko connection with its own idea of keys and host
keys (~/.ssh/config, system known_hosts). Here its SSH adapter rides on the
Fabric connection the executor (``tasks.net.executor.Executor``) opened, so the cluster's key
and known_hosts checking apply to the Docker API too, and nothing else in
air-deploy needs to know how the API is reached.

Runbooks use ``Engine``: every call is a step of the task's executor with a
deadline (``timeouts.build``, ``timeouts.push``, else ``timeouts.command``),
shown and watched like a command, its channels cut when the deadline passes;
what the transport raises (requests, urllib3, socket, paramiko, docker-py) is
our one-line error naming the host and the call.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import docker
import paramiko
import requests
import urllib3
from docker.transport.sshconn import SSHConnection, SSHConnectionPool, SSHHTTPAdapter

from tasks.model.errors import DeadlineError

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
                pool = _CuttablePool(ssh_client=self.ssh_client, timeout=self.timeout,
                                     maxsize=self.max_pool_size, host=self.ssh_host)
                self.pools["engine"] = pool
        return pool

    def cut(self):
        """Close every channel of the pools, in use or not: a call reading from one ends at once."""
        # urllib3's container of pools refuses iteration (not thread-safe); its keys are a copy.
        for key in self.pools.keys():
            pool = self.pools.get(key)
            if pool is not None:
                pool.cut()

    def close(self):
        # The connection belongs to the caller: close only the HTTP pools, their channels first (a
        # pool dropped with them open closes them when collected, maybe after the connection, and
        # paramiko then raises in a finalizer).
        self.cut()
        self.pools.clear()


class _ChannelConnection(SSHConnection):
    """docker-py's HTTP connection over one SSH channel, whose closing once the SSH connection is
    gone (the pool collected after the task closed it) is nothing to say, not an error raised in
    a finalizer."""

    def close(self):
        try:
            super().close()
        except (OSError, EOFError, paramiko.SSHException):
            pass


class _CuttablePool(SSHConnectionPool):
    """docker-py's pool of SSH channels, keeping each channel it opened so that ``cut`` can close it,
    and never handing out one whose far end has closed."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._made: list = []

    def _new_conn(self):
        self._made = [made for made in self._made if not _ended(made.sock)]
        conn = _ChannelConnection(self.ssh_transport, self.timeout, self.ssh_host)
        self._made.append(conn)
        return conn

    def _get_conn(self, timeout=None):
        # docker-py's pool skips urllib3's check for a dropped connection (it would call fileno() on
        # the channel): a channel whose `docker system dial-stdio` ended would be reused, and the
        # request sent on it fail with "Socket is closed" before anything reached the engine.
        conn = super()._get_conn(timeout)
        if _ended(conn.sock):
            conn.close()
        return conn

    def cut(self):
        for conn in list(self._made):
            try:
                if conn.sock is not None:
                    conn.sock.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # gone already: nothing is left to cut


def _ended(channel) -> bool:
    """True for a pooled connection's channel that can carry no request: closed, or ended by the far
    end (paramiko's flags, read without making the channel a file descriptor). ``None``: not yet open."""
    return channel is not None and bool(channel.closed or channel.eof_received)


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


# What a dropped channel, a refused connection, a cut or garbled stream or a read past its timeout
# raise on the way (docker-py's own APIError, the engine's answer, is left to the caller).
TRANSPORT_ERRORS = (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, docker.errors.DockerException,
                    docker.errors.StreamParseError,
                    paramiko.SSHException, OSError, EOFError)
TIMED_OUT_ERRORS = (requests.exceptions.Timeout, urllib3.exceptions.TimeoutError, TimeoutError)


class Engine:
    """The Docker engine of ``host`` as the task's executor ``ex`` runs things: each call a step of
    ``ex`` under its deadline (the lock's watchdog sees it), the call's channels cut when the deadline
    passes, and what the transport raises turned into RemoteError (DeadlineError past the deadline)
    naming the host and the call. The engine's own answers (``docker.errors.APIError`` and its
    ``ImageNotFound``) reach the caller as they are. Streams are consumed within their step."""

    def __init__(self, ex, host: str, api=None):
        """``api``: the APIClient to use (default: one over ``ex``'s connection to ``host``)."""
        self.ex, self.host = ex, host
        timeouts = ex.cluster.timeouts
        # A read on a channel waits at most as long as the longest deadline; the deadline itself is ours.
        self.api = api or engine(ex.conn(host), timeout=max(timeouts.build, timeouts.push, timeouts.command),
                                 counted=ex.trips.hook(host, "docker"))

    def build(self, what: str, **options) -> Iterator[dict]:
        """The decoded chunks of an image build (``APIClient.build``), within ``timeouts.build``."""
        return self._stream(what, self.ex.cluster.timeouts.build, self.api.build, **options)

    def push(self, repository: str, tag: str, auth_config: dict, what: str) -> Iterator[dict]:
        """The decoded chunks of pushing ``repository:tag``, within ``timeouts.push``."""
        return self._stream(what, self.ex.cluster.timeouts.push, self.api.push, repository, tag=tag,
                            auth_config=auth_config, stream=True, decode=True)

    def inspect_image(self, image: str) -> dict:
        return self._call(f"docker inspect {image}", self.api.inspect_image, image)

    def images(self, name: str) -> list:
        return self._call(f"docker images {name}", self.api.images, name=name)

    def tag(self, image: str, repository: str, tag: str) -> bool:
        return self._call(f"docker tag {image} {repository}:{tag}", self.api.tag, image, repository, tag)

    def remove_image(self, image: str, noprune: bool = False) -> None:
        self._call(f"docker rmi {image}", self.api.remove_image, image, noprune=noprune)

    def prune_images(self, filters: dict) -> dict:
        return self._call("docker image prune", self.api.prune_images, filters=filters)

    def _call(self, what: str, call: Callable, *args, **kwargs):
        with self.within(what, self.ex.cluster.timeouts.command):
            return call(*args, **kwargs)

    def _stream(self, what: str, deadline: int, call: Callable, *args, **kwargs) -> Iterator[dict]:
        with self.within(what, deadline):
            yield from call(*args, **kwargs)

    @contextmanager
    def within(self, what: str, deadline: int):
        """``what`` as a step of the executor, cut off after ``deadline`` s, with our errors."""
        expired = threading.Event()

        def expire():
            expired.set()
            self.api._custom_adapter.cut()

        timer = threading.Timer(deadline, expire)
        timer.daemon = True
        with self.ex.step(self.host, what, deadline):
            timer.start()
            try:
                yield
            except docker.errors.APIError:
                if not expired.is_set():
                    raise
            except TRANSPORT_ERRORS as e:
                if not expired.is_set():
                    if isinstance(e, TIMED_OUT_ERRORS):
                        raise DeadlineError(f"{self.host}: {what}: no answer within {deadline} s") from None
                    raise self.ex.connection_lost(self.host, what, _reason(e)) from None
            finally:
                timer.cancel()
        if expired.is_set():
            raise DeadlineError(f"{self.host}: {what}: not done within {deadline} s (cut off there)")


def _reason(error: Exception) -> str:
    """A few words on why a call's connection failed (the innermost cause urllib3 and requests wrap)."""
    while True:
        inner = getattr(error, "reason", None) or next(
            (a for a in reversed(error.args) if isinstance(a, Exception)), None)
        if not isinstance(inner, Exception) or inner is error:
            break
        error = inner
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]
