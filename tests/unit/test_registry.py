import base64
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from tasks.errors import ConfigError, RemoteError
from tasks.registry import MANIFEST_TYPES, RegistryClient, load_credentials

USER, PASSWORD = "deploy", "s3cret-Pa55"
DIGEST = "sha256:" + "c" * 64
REPOS = {"air/prod_air": {t: DIGEST for t in ("1.0.0", "1.0.1", "1.0.2", "1.1.0", "latest")},
         "air/prod_empty": {}}
PATH = re.compile(r"^/v2/(?P<repo>.+)/(?:tags/list|manifests/(?P<tag>[^/]+))$")


class FakeRegistry:
    """A tiny registry: ``auth`` is None, "basic" or "bearer"; pages hold at most ``page`` tags."""

    def __init__(self, auth=None, page=2):
        self.auth, self.page, self.tokens_issued = auth, page, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                fake.handle(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_port}"
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
            realm = f"http://{self.address}/token"
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
                                             "config": {"digest": tags[match["tag"]]}})
        return self.reply(request, 200, {"schemaVersion": 1, "name": match["repo"], "fsLayers": []})

    def tags_page(self, request, repo, tags, query):
        after = [t for t in tags if t > query["last"]] if "last" in query else tags
        size = min(int(query.get("n", 100)), self.page)
        headers = {}
        if len(after) > size:
            headers["Link"] = f'</v2/{repo}/tags/list?last={after[size - 1]}&n={query.get("n", 100)}>; rel="next"'
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


@pytest.fixture
def fake(request):
    registry = FakeRegistry(auth=getattr(request, "param", None))
    yield registry
    registry.server.shutdown()
    registry.server.server_close()


def client(fake, credentials=(USER, PASSWORD), **options):
    return RegistryClient(fake.address, credentials, scheme="http", credentials_file="clusters/creds.yaml", **options)


# ---------------------------------------------------------------- tags and digests

def test_tags_follow_link_pages(fake):
    assert client(fake).tags("air/prod_air") == ["1.0.0", "1.0.1", "1.0.2", "1.1.0", "latest"]


def test_unknown_repository_has_no_tags(fake):
    assert client(fake).tags("air/prod_nothing") == []
    assert client(fake).tags("air/prod_empty") == []


def test_config_digest_needs_the_manifest_accept_header(fake):
    assert client(fake).config_digest("air/prod_air", "1.0.2") == DIGEST


def test_config_digest_of_unknown_tag_or_repository_is_none(fake):
    assert client(fake).config_digest("air/prod_air", "9.9.9") is None
    assert client(fake).config_digest("air/prod_nothing", "1.0.0") is None


def test_schema1_answer_is_an_error_not_a_digest(fake, mocker):
    mocker.patch("tasks.registry.MANIFEST_TYPES", ("application/x-nothing",))
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
