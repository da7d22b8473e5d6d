"""The Docker registry, read through its HTTP API v2 from this machine.

This module owns talking to the registry: which tags an image has, which image
(config digest) a tag holds, and whether the registry answers at all. It owns
TLS (the cluster's CA, or the system's), authentication (Basic, or a Bearer
token from the token service the registry's 401 challenge names) and the
credentials file. It only reads; pushing is the build server's Docker engine's
job. Every failure is one RemoteError line (ConfigError for the credentials
file), and no message ever shows the password.

Credentials go only to the registry: a pagination link to another origin is
refused, and a token service gets them only over https and only on the
registry's host or one the cluster file lists (``registry.token_hosts``).
python-dxf 12.1 and oras 0.2.43 were tried for this job and send the login to
a cross-origin link or an http:// realm, so this client stays.
"""
from __future__ import annotations

import base64
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Optional
from urllib.parse import urljoin, urlsplit

from tasks.model.credentials import load_credentials
from tasks.model.errors import ConfigError, RemoteError
from tasks.net import deferred

if TYPE_CHECKING:
    import requests

    from tasks.net import http
else:
    requests, http = deferred("requests"), deferred("tasks.net.http")

# Without this Accept header a registry answers with a schema1 manifest, whose digests are not the image's.
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json",
                  "application/vnd.oci.image.manifest.v1+json")
PAGE_SIZE = 100
CHALLENGE_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


class RegistryClient:
    """A read-only client of one registry (``host:port``)."""

    def __init__(self, address: str, credentials: Optional[tuple] = None, ca=None, timeout: float = 10,
                 *, scheme: str = "https", credentials_file=None, connect=None, token_hosts=(), counted=None):
        if ca is not None and not Path(ca).is_file():
            raise ConfigError(f"registry {address}: CA certificate {ca} does not exist")
        self.address = address
        self.timeout = timeout
        self._base = f"{scheme}://{address}/"
        self._token_hosts = {address.rpartition(":")[0].strip("[]"), *token_hosts}
        self._verify = str(ca) if ca is not None else True
        self._credentials = credentials
        self._credentials_file = credentials_file  # named in messages
        self._basic: Optional[str] = None          # Authorization header, once the registry asked for Basic
        self._tokens: dict = {}                    # scope -> Authorization header with a Bearer token
        self.warming: Optional[Future] = None      # ``warm`` run ahead (``warm_ahead``), until it ends
        self._session = requests.Session()
        if counted is not None:  # a response hook counting round trips (``tasks.net.trips``)
            self._session.hooks["response"].append(counted)
        if connect is not None:
            # Every connection made by ``connect(host, port)`` (through a jump host); TLS and its
            # checks are as they would be directly.
            adapter = http.ConnectingAdapter(connect)
            self._session.mount("https://", adapter)
            self._session.mount("http://", adapter)

    @classmethod
    def for_cluster(cls, ex) -> "RegistryClient":
        """A client for the executor's cluster, through the cluster's jump host when it has one."""
        gateway = ex.cluster.ssh.gateway
        return cls.for_registry(ex.cluster.registry, connect=ex.socket_to if gateway else None,
                                counted=ex.trips.hook(ex.cluster.registry.address, "registry"))

    @classmethod
    def for_registry(cls, registry, **options) -> "RegistryClient":
        """A client for a cluster's ``registry`` section; the credentials file is checked and read."""
        return cls(registry.address, load_credentials(registry.credentials), registry.ca,
                   credentials_file=registry.credentials, token_hosts=registry.token_hosts, **options)

    def check(self) -> None:
        """Raise RemoteError unless the registry answers and accepts the credentials."""
        self._get("/v2/", scope="")

    @property
    def knows_login(self) -> bool:
        """Whether the registry told this client how it wants its login (Basic, or a token)."""
        return self._basic is not None or bool(self._tokens)

    def warm(self, connections: int) -> None:
        """Open ``connections`` connections (TCP and TLS) to the registry at once and keep them for
        the next requests, and learn how it wants its login (one unauthenticated ``GET /v2/``; the
        Basic header is then made here): that many requests then go side by side, logged in, one
        round trip each. What fails here is left for the request that needs it to say."""
        with ThreadPoolExecutor(max_workers=max(1, connections)) as pool:
            learned = pool.submit(self._learn_login)
            for opened in [pool.submit(self._open_connection) for _ in range(connections - 1)]:
                opened.exception()
            learned.exception()

    def _learn_login(self) -> None:
        response = self._send(urljoin(self._base, "/v2/"), None, None)
        if response.status_code == 401:
            self._authenticate(response, "")

    def _open_connection(self) -> None:
        """One more connection in the session's pool, opened now (urllib3 opens them as requests need them)."""
        request = requests.Request("GET", self._base).prepare()
        adapter = self._session.get_adapter(self._base)
        assert isinstance(adapter, requests.adapters.HTTPAdapter)
        pool = adapter.get_connection_with_tls_context(request, self._verify)
        connection = pool._get_conn()
        try:
            connection.connect()
        except Exception:  # noqa: BLE001 - a request that needs it says what failed
            connection.close()
        pool._put_conn(connection)

    def ready(self) -> "RegistryClient":
        """This client, once its ``warm`` run ahead (if any) ended."""
        warming = self.warming
        if warming is not None:
            warming.exception()
            self.warming = None
        return self

    def tags(self, repository: str) -> list:
        """All tags of ``repository`` (e.g. ``aircloak/prod_air``); [] if the registry does not know it."""
        tags: list = []
        url, seen = f"/v2/{repository}/tags/list?n={PAGE_SIZE}", set()
        while url and url not in seen:
            seen.add(url)
            response = self._get(url, scope=_pull(repository), missing_ok=True)
            if response is None:
                return []
            tags += self._json(response).get("tags") or []
            url = response.links.get("next", {}).get("url")
            if url and _origin(urljoin(self._base, url)) != _origin(self._base):
                raise RemoteError(f"registry {self.address}: the tags of {repository} continue at another origin "
                                  f"({_origin(urljoin(self._base, url))}); not followed, credentials stay here")
        return tags

    def config_digest(self, repository: str, tag: str) -> Optional[str]:
        """The config digest (= image ID) ``repository:tag`` holds; None if there is no such tag."""
        found = self.digests(repository, tag)
        return found[0] if found else None

    def digests(self, repository: str, tag: str) -> Optional[tuple]:
        """(config digest, manifest digest) of ``repository:tag``; None if there is no such tag."""
        response = self._get(f"/v2/{repository}/manifests/{tag}", scope=_pull(repository), missing_ok=True,
                             headers={"Accept": ", ".join(MANIFEST_TYPES)})
        if response is None:
            return None
        manifest = self._json(response)
        config = manifest.get("config")
        digest = config.get("digest") if isinstance(config, dict) else None
        if not digest:
            kind = manifest.get("mediaType") or response.headers.get("Content-Type")
            raise RemoteError(f"registry {self.address}: {repository}:{tag} is not a single-image manifest "
                              f"(got {kind}); push single-platform images")
        return digest, response.headers.get("Docker-Content-Digest") or ""

    # ------------------------------------------------------------ HTTP and authentication

    def _get(self, url: str, scope: str, headers: Optional[dict] = None, missing_ok=False):
        url = urljoin(self._base, url)
        response = self._send(url, headers, self._tokens.get(scope, self._basic))
        if response.status_code == 401:
            response = self._send(url, headers, self._authenticate(response, scope))
            if response.status_code == 401:
                raise self._refused()
        if response.status_code == 404 and missing_ok:
            return None
        if not response.ok:
            raise self._failed(response)
        return response

    def _authenticate(self, response, scope: str) -> str:
        """The Authorization header the 401 ``response`` asks for."""
        challenge = response.headers.get("WWW-Authenticate", "")
        kind, _, rest = challenge.partition(" ")
        params = {m[1].lower(): m[2] or m[3] for m in CHALLENGE_PARAM.finditer(rest)}
        if kind.lower() == "basic":
            if not self._credentials:
                raise self._refused()
            self._basic = "Basic " + base64.b64encode(":".join(self._credentials).encode()).decode()
            return self._basic
        if kind.lower() == "bearer" and params.get("realm"):
            self._tokens[scope] = f"Bearer {self._token(params)}"
            return self._tokens[scope]
        raise RemoteError(f"registry {self.address} asks for unsupported authentication: {challenge or 'none'}")

    def _token(self, challenge: dict) -> str:
        realm = urlsplit(challenge["realm"])
        if realm.scheme != "https" or realm.hostname not in self._token_hosts:
            raise RemoteError(f"registry {self.address} names the token service {_origin(challenge['realm'])}: "
                              f"credentials go only over https to {', '.join(sorted(self._token_hosts))} "
                              f"(list other hosts in registry.token_hosts)")
        query = {key: challenge[key] for key in ("service", "scope") if challenge.get(key)}
        response = self._send(challenge["realm"], None, None, auth=self._credentials, params=query)
        if response.status_code == 401:
            raise self._refused()
        if not response.ok:
            raise self._failed(response)
        body = self._json(response)
        token = body.get("token") or body.get("access_token")
        if not token:
            raise RemoteError(f"registry {self.address}: token service {challenge['realm']} answered without a token")
        return token

    def _send(self, url: str, headers: Optional[dict], authorization: Optional[str], **options):
        headers = dict(headers or {})
        if authorization:
            headers["Authorization"] = authorization
        try:
            # verify is passed per request: a session-wide one loses to REQUESTS_CA_BUNDLE.
            return self._session.get(url, headers=headers, timeout=self.timeout, verify=self._verify, **options)
        except requests.RequestException as e:
            raise RemoteError(f"registry {self.address} unreachable: {self._reason(e)}") from e

    def _json(self, response) -> dict:
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise RemoteError(f"registry {self.address}: GET {_path(response)} did not answer with a JSON object")
        return body

    def _refused(self) -> RemoteError:
        if not self._credentials:
            return RemoteError(f"registry {self.address} asks for credentials (HTTP 401) but none were given")
        source = f" from {self._credentials_file}" if self._credentials_file else ""
        return RemoteError(f"registry {self.address} refused the credentials{source} (HTTP 401)")

    def _failed(self, response) -> RemoteError:
        detail = ""
        try:
            first = response.json()["errors"][0]
            detail = f": {first.get('code', '')} {first.get('message', '')}".rstrip()
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            pass
        return RemoteError(f"registry {self.address}: GET {_path(response)} failed: "
                           f"HTTP {response.status_code} {response.reason}{detail}")

    def _reason(self, error: requests.RequestException) -> str:
        """A short, one-line reason for a failed connection."""
        if isinstance(error, requests.Timeout):
            return f"no answer within {self.timeout}s"
        text = str(error)
        for pattern in (r"certificate verify failed: (.+?)\.? \(_ssl", r"\[SSL[^\]]*\] (.+?)\.? \(_ssl",
                        r"\[Errno -?\d+\] ([^'\")]+)"):
            found = re.search(pattern, text)
            if found:
                reason = found[1].strip()
                break
        else:
            reason = text[:200] or type(error).__name__
        if isinstance(error, requests.exceptions.SSLError):
            reason = f"TLS failed: {reason}"
            if "certificate verify failed" in text:
                reason += (" (give the CA that signed the registry's certificate as registry.ca)"
                           if self._verify is True else " (is registry.ca the CA that signed its certificate?)")
        return " ".join(reason.split())


_made = threading.Lock()


def of_task(ex) -> RegistryClient:
    """The task's registry client (``ex.registry_client``), made at its first use: the connections and
    login one look opened serve the next (``warm_ahead``)."""
    with _made:
        if ex.registry_client is None:
            ex.registry_client = RegistryClient.for_cluster(ex)
        return ex.registry_client


def warm_ahead(ex) -> None:
    """The task's registry client is made, opens one connection per component of the cluster and
    learns how to log in, all in the background (while SSH logs in and the lock is taken): a look at
    every component's tag then takes one round trip (``RegistryClient.ready`` waits for it)."""
    def warm() -> None:
        client, done = of_task(ex), Future()  # type: ignore[var-annotated]
        client.warming = done
        try:
            client.warm(len(ex.cluster.component_names))
        finally:
            done.set_result(None)
    ex.meanwhile(warm)


def _pull(repository: str) -> str:
    return f"repository:{repository}:pull"


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _path(response) -> str:
    return response.url.split("?")[0]
