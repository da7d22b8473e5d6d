import base64
import json
import os
import re
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.model.credentials import load_credentials
from tasks.model.errors import ConfigError, RemoteError
from tasks.net.registry import MANIFEST_TYPES, RegistryClient

USER, PASSWORD = "deploy", "s3cret-Pa55"
DIGEST = "sha256:" + "c" * 64
REPOS = {"air/prod_air": {t: DIGEST for t in ("1.0.0", "1.0.1", "1.0.2", "1.1.0", "latest")},
         "air/prod_empty": {}}
PATH = re.compile(r"^/v2/(?P<repo>.+)/(?:tags/list|manifests/(?P<tag>[^/]+))$")


MANIFEST_DIGEST = "sha256:" + "d" * 64


@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate (and its key) for 127.0.0.1 and localhost: it is its own CA."""
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=fake",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem"),
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


class FakeRegistry:
    """A tiny registry: ``auth`` is None, "basic" or "bearer"; pages hold at most ``page`` tags.
    With ``tls`` (a certificate and its key) it serves https; ``realm`` replaces its token service's
    URL in challenges, ``next_origin`` the origin of its pagination links."""

    def __init__(self, auth=None, page=2, tls=None, realm=None, next_origin=""):
        self.auth, self.page, self.tokens_issued = auth, page, []
        self.realm, self.next_origin, self.ca = realm, next_origin, tls[0] if tls else None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.address = f"127.0.0.1:{self.server.server_port}"
        self.scheme = "https" if tls else "http"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def handle(self, request):
        url = urlsplit(request.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        authorization = request.headers.get("Authorization", "")
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if url.path == "/token":
            if authorization != basic:
                return self.reply(request, 401, {"details": "bad credentials"})
            self.tokens_issued.append(query.get("scope", ""))
            return self.reply(request, 200, {"access_token": f"token-for-{query.get('scope', '')}"})
        match = PATH.match(url.path)
        scope = f"repository:{match['repo']}:pull" if match else ""
        if self.auth == "basic" and authorization != basic:
            return self.reply(request, 401, {}, {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer" and authorization != f"Bearer token-for-{scope}":
            realm = self.realm or f"{self.scheme}://{self.address}/token"
            scope_param = f',scope="{scope}"' if scope else ""
            challenge = f'Bearer realm="{realm}",service="fake"{scope_param}'
            return self.reply(request, 401, {}, {"WWW-Authenticate": challenge})
        if url.path == "/v2/":
            return self.reply(request, 200, {})
        if match and match["repo"] == "air/prod_broken":
            return self.reply(request, 500, {"errors": [{"code": "UNKNOWN", "message": "storage failed"}]})
        if not match or match["repo"] not in REPOS:
            return self.reply(request, 404, {"errors": [{"code": "NAME_UNKNOWN", "message": "name unknown"}]})
        tags = REPOS[match["repo"]]
        if match["tag"] is None:
            return self.tags_page(request, match["repo"], sorted(tags), query)
        if match["tag"] not in tags:
            return self.reply(request, 404, {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]})
        accepted = [t.strip() for t in request.headers.get("Accept", "").split(",")]
        if MANIFEST_TYPES[0] in accepted:
            return self.reply(request, 200, {"schemaVersion": 2, "mediaType": MANIFEST_TYPES[0],
                                             "config": {"digest": tags[match["tag"]]}},
                              {"Docker-Content-Digest": MANIFEST_DIGEST})
        return self.reply(request, 200, {"schemaVersion": 1, "name": match["repo"], "fsLayers": []})

    def tags_page(self, request, repo, tags, query):
        after = [t for t in tags if t > query["last"]] if "last" in query else tags
        size = min(int(query.get("n", 100)), self.page)
        headers = {}
        if len(after) > size:
            link = f'{self.next_origin}/v2/{repo}/tags/list?last={after[size - 1]}&n={query.get("n", 100)}'
            headers["Link"] = f'<{link}>; rel="next"'
        self.reply(request, 200, {"name": repo, "tags": after[:size]}, headers)

    @staticmethod
    def reply(request, status, body, headers=()):
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(data)))
        for name, value in dict(headers).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)


def stop(registry):
    registry.server.shutdown()
    registry.server.server_close()


@pytest.fixture
def fake(request, certificate):
    auth = getattr(request, "param", None)
    registry = FakeRegistry(auth=auth, tls=certificate if auth == "bearer" else None)  # tokens only over https
    yield registry
    stop(registry)


def client(fake, credentials=(USER, PASSWORD), **options):
    return RegistryClient(fake.address, credentials, scheme=fake.scheme, ca=fake.ca,
                          credentials_file="clusters/creds.yaml", **options)


# ---------------------------------------------------------------- tags and digests

def test_tags_follow_link_pages(fake):
    assert client(fake).tags("air/prod_air") == ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "latest"]


def test_unknown_repository_has_no_tags(fake):
    assert client(fake).tags("air/prod_nothing") == []
    assert client(fake).tags("air/prod_empty") == []


def test_config_digest_needs_the_manifest_accept_header(fake):
    assert client(fake).config_digest("air/prod_air", "1.0.2") == DIGEST


def test_digests_are_the_config_and_the_manifest_digest(fake):
    assert client(fake).digests("air/prod_air", "1.0.2") == (DIGEST, MANIFEST_DIGEST)
    assert client(fake).digests("air/prod_air", "9.9.9") is None


def test_config_digest_of_unknown_tag_or_repository_is_none(fake):
    assert client(fake).config_digest("air/prod_air", "9.9.9") is None
    assert client(fake).config_digest("air/prod_nothing", "1.0.0") is None


def test_schema1_answer_is_an_error_not_a_digest(fake, mocker):
    mocker.patch("tasks.net.registry.MANIFEST_TYPES", ("application/x-nothing",))
    with pytest.raises(RemoteError, match="is not a single-image manifest"):
        client(fake).config_digest("air/prod_air", "1.0.2")


# ---------------------------------------------------------------- authentication

@pytest.mark.parametrize("fake", ["basic", "bearer"], indirect=True)
def test_authenticated_registry(fake):
    registry = client(fake)
    registry.check()
    assert registry.tags("air/prod_air")[-1] == "latest"
    assert registry.config_digest("air/prod_air", "1.1.0") == DIGEST


@pytest.mark.parametrize("fake", ["bearer"], indirect=True)
def test_bearer_token_is_fetched_once_per_scope(fake):
    registry = client(fake)
    registry.check()
    registry.tags("air/prod_air")
    registry.config_digest("air/prod_air", "1.1.0")
    registry.tags("air/prod_empty")
    assert fake.tokens_issued == ["", "repository:air/prod_air:pull", "repository:air/prod_empty:pull"]


# ---------------------------------------------------------------- credentials go only to the registry

@pytest.fixture
def elsewhere():
    """Another origin, which records every request it gets (and the Authorization it came with)."""
    other = FakeRegistry()
    seen = []
    other.handle = lambda request: (seen.append((request.path, request.headers.get("Authorization"))),
                                    FakeRegistry.reply(request, 200, {"tags": ["9.9.9"], "token": "stolen"}))
    other.seen = seen
    yield other
    stop(other)


def test_a_pagination_link_to_another_origin_is_not_followed(elsewhere):
    registry = FakeRegistry(auth="basic", next_origin=f"http://{elsewhere.address}")
    try:
        with pytest.raises(RemoteError) as error:
            client(registry).tags("air/prod_air")
    finally:
        stop(registry)
    assert str(error.value) == (f"registry {registry.address}: the tags of air/prod_air continue at another origin "
                                f"(http://{elsewhere.address}); not followed, credentials stay here")
    assert elsewhere.seen == []


def test_a_pagination_link_to_the_same_origin_is_followed():
    registry = FakeRegistry(auth="basic")
    registry.next_origin = f"http://{registry.address}"  # absolute, but ours
    try:
        assert client(registry).tags("air/prod_air")[-1] == "latest"
    finally:
        stop(registry)


def test_no_credentials_to_a_plain_http_token_service(elsewhere, certificate):
    registry = FakeRegistry(auth="bearer", tls=certificate, realm=f"http://{elsewhere.address}/token")
    try:
        with pytest.raises(RemoteError) as error:
            client(registry, token_hosts=("127.0.0.1",)).check()
    finally:
        stop(registry)
    assert str(error.value) == (f"registry {registry.address} names the token service http://{elsewhere.address}: "
                                f"credentials go only over https to 127.0.0.1 (list other hosts in registry.token_hosts)")
    assert elsewhere.seen == []


def test_a_token_service_on_another_host_only_when_listed(certificate):
    token_service = FakeRegistry(tls=certificate)  # its /token route hands out tokens
    realm = f"https://localhost:{token_service.server.server_port}/token"
    registry = FakeRegistry(auth="bearer", tls=certificate, realm=realm)
    try:
        with pytest.raises(RemoteError, match="names the token service https://localhost:"):
            client(registry).check()
        assert token_service.tokens_issued == []
        client(registry, token_hosts=("localhost",)).check()
        assert token_service.tokens_issued == [""]
    finally:
        stop(registry)
        stop(token_service)


@pytest.mark.parametrize("fake", ["basic", "bearer"], indirect=True)
def test_wrong_credentials_are_refused_without_showing_the_password(fake):
    with pytest.raises(RemoteError) as error:
        client(fake, credentials=(USER, "wrong-" + PASSWORD)).check()
    message = str(error.value)
    assert message == f"registry {fake.address} refused the credentials from clusters/creds.yaml (HTTP 401)"
    assert PASSWORD not in message


@pytest.mark.parametrize("fake", ["basic"], indirect=True)
def test_missing_credentials_are_reported(fake):
    with pytest.raises(RemoteError, match="asks for credentials"):
        client(fake, credentials=None).tags("air/prod_air")


def test_unreachable_registry_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(RemoteError) as error:
        RegistryClient(f"127.0.0.1:{port}", scheme="http", timeout=2).check()
    assert str(error.value) == f"registry 127.0.0.1:{port} unreachable: Connection refused"


def test_tls_failure_is_one_line(fake):
    with pytest.raises(RemoteError) as error:
        RegistryClient(fake.address, timeout=2).check()  # https against plain HTTP
    message = str(error.value)
    assert message.startswith(f"registry {fake.address} unreachable: TLS failed") and "\n" not in message


def test_other_http_errors_name_the_status(fake):
    with pytest.raises(RemoteError) as error:
        client(fake).tags("air/prod_broken")
    assert str(error.value) == (f"registry {fake.address}: GET http://{fake.address}/v2/air/prod_broken/tags/list "
                                "failed: HTTP 500 Internal Server Error: UNKNOWN storage failed")


def test_missing_ca_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ca.pem does not exist"):
        RegistryClient("registry:5000", ca=tmp_path / "ca.pem")


# ---------------------------------------------------------------- credentials file

def write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_load_credentials(tmp_path):
    path = write(tmp_path / "creds.yaml", f"username: {USER}\npassword: '{PASSWORD}'\n")
    assert load_credentials(path) == (USER, PASSWORD)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o644, 0o666])
def test_credentials_readable_by_others_are_refused(tmp_path, mode):
    path = write(tmp_path / "creds.yaml", f"username: {USER}\npassword: {PASSWORD}\n", mode)
    with pytest.raises(ConfigError, match="creds.yaml: registry credentials must be private .*chmod 600"):
        load_credentials(path)


@pytest.mark.parametrize("text, expected", [
    (f"username: {USER}\n", "password: expected a non-empty string"),
    (f"username: {USER}\npassword: 0123\n", "password: expected a non-empty string"),
    (f"- {USER}\n- {PASSWORD}\n", "expected a mapping"),
    (f"username: {USER}\npassword: [{PASSWORD}\n", "malformed YAML at line 3"),
    (f"username: {USER}\npassword: \"{PASSWORD}\n", "malformed YAML"),
])
def test_malformed_credentials_are_refused_without_showing_the_password(tmp_path, text, expected):
    path = write(tmp_path / "creds.yaml", text)
    with pytest.raises(ConfigError) as error:
        load_credentials(path)
    assert "creds.yaml" in str(error.value) and expected in str(error.value)
    assert PASSWORD not in str(error.value)


def test_missing_credentials_file(tmp_path):
    with pytest.raises(ConfigError, match="creds.yaml: cannot read registry credentials"):
        load_credentials(tmp_path / "creds.yaml")


def test_every_connection_goes_through_the_given_connect(fake):
    """A registry behind a jump host: the client's connections are made by ``connect`` (an SSH
    channel in use), to the registry's own address, which resolves nowhere here."""
    opened = []

    def connect(host, port):
        opened.append((host, port))
        return socket.create_connection(("127.0.0.1", fake.server.server_port))
    through = RegistryClient("registry.invalid:5000", (USER, PASSWORD), scheme="http", connect=connect)
    through.check()
    assert through.tags("air/prod_air") == ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "latest"]
    assert opened and set(opened) == {("registry.invalid", 5000)}
