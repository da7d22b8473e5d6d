"""tasks/net/docker_api.py ``Engine``: every Docker Engine call a step with a deadline, and whatever the
transport raises one line naming the host and the call; build and push end so when their stream is cut."""
import threading
from dataclasses import replace
from types import SimpleNamespace

import docker
import paramiko
import pytest
import requests
import urllib3

from tasks.commands.build_scripts import Job
from tasks.model.errors import DeadlineError, RemoteError
from tasks.net import docker_api
from tasks.runbooks import build, push

from .fakes import FakeExecutor

HOST = "10.0.0.50"
BUILT = "sha256:" + "b" * 64


class Api:
    """An APIClient whose build and push streams give ``chunks`` and then raise ``then`` (or, with
    ``hang``, wait until the engine's channels are cut, as a silent build step does)."""

    def __init__(self, chunks=(), then=None, hang=False):
        self.chunks, self.then, self.hang = list(chunks), then, hang
        self.was_cut = threading.Event()
        self._custom_adapter = SimpleNamespace(cut=self.was_cut.set)
        self.calls: list = []

    def _stream(self):
        yield from self.chunks
        if self.hang:
            assert self.was_cut.wait(10), "never cut"
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead(0 bytes read)")
        if self.then is not None:
            raise self.then

    def build(self, **options):
        self.calls.append(("build", options["tag"]))
        return self._stream()

    def push(self, repository, tag, **options):
        self.calls.append(("push", f"{repository}:{tag}"))
        return self._stream()

    def tag(self, image, repository, tag):
        self.calls.append(("tag", f"{repository}:{tag}"))
        return True

    def inspect_image(self, image):
        if isinstance(self.then, Exception):
            raise self.then
        return {"Id": BUILT}


def engine_of(cluster, api, **timeouts):
    ex = FakeExecutor(replace(cluster, timeouts=replace(cluster.timeouts, **timeouts)))
    return ex, docker_api.Engine(ex, HOST, api)


DROPPED = [
    urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError(104, "Connection reset by peer")),
    requests.exceptions.ConnectionError("Connection aborted."),
    paramiko.SSHException("SSH session not active"),
    OSError("Socket is closed"),
    EOFError(),
    docker.errors.StreamParseError(ValueError("Expecting value")),
]


@pytest.mark.parametrize("error", DROPPED, ids=lambda e: type(e).__name__)
def test_a_dropped_stream_is_one_line_naming_the_host_and_the_call(cluster, error):
    ex, engine = engine_of(cluster, Api([{"stream": "Step 1/2 : FROM scratch\n"}], then=error))
    with pytest.raises(RemoteError) as raised:
        list(engine.build("build web", tag="web:candidate-abc"))
    assert not isinstance(raised.value, DeadlineError)
    message = str(raised.value)
    assert message.startswith(f"{HOST}: build web: connection lost (") and "\n" not in message
    assert ex.steps == [(HOST, "build web", cluster.timeouts.build)]


def test_a_read_that_times_out_is_a_deadline_error(cluster):
    ex, engine = engine_of(cluster, Api(then=requests.exceptions.ReadTimeout("Read timed out.")))
    with pytest.raises(DeadlineError, match=rf"^{HOST}: docker inspect web:1: no answer within 60 s$"):
        engine.inspect_image("web:1")
    assert ex.steps == [(HOST, "docker inspect web:1", 60)]


def test_the_engines_own_answer_reaches_the_caller_as_it_is(cluster):
    _, engine = engine_of(cluster, Api(then=docker.errors.ImageNotFound("No such image: web:1")))
    with pytest.raises(docker.errors.ImageNotFound):
        engine.inspect_image("web:1")


def test_a_stream_past_its_deadline_is_cut_off_and_says_so(cluster):
    api = Api([{"stream": "Step 1/2 : RUN sleep 600\n"}], hang=True)
    _, engine = engine_of(cluster, api, build=1)
    with pytest.raises(DeadlineError, match=rf"^{HOST}: build web: not done within 1 s \(cut off there\)$"):
        list(engine.build("build web", tag="web:candidate-abc"))
    assert api.was_cut.is_set()


def test_a_stream_within_its_deadline_is_not_cut(cluster):
    api = Api([{"stream": "Step 1/1 : FROM scratch\n"}, {"aux": {"ID": BUILT}}])
    ex, engine = engine_of(cluster, api, build=1)
    assert list(engine.build("build web", tag="web:candidate-abc"))[-1] == {"aux": {"ID": BUILT}}
    threading.Event().wait(1.2)
    assert not api.was_cut.is_set()


def job_of(cluster):
    return Job(cluster.components[0], "/srv/air", {"commit": "abc"})


@pytest.mark.parametrize("api, kind, says", [
    (Api([{"stream": "Step 1/2 : FROM scratch\n"}, {"stream": "Step 2/2 : RUN make\n"}],
         then=urllib3.exceptions.ProtocolError("Connection broken", ConnectionResetError(104, "reset by peer"))),
     RemoteError, "connection lost ([Errno 104] reset by peer)"),
    (Api([{"stream": "Step 1/2 : FROM scratch\n"}, {"stream": "Step 2/2 : RUN make\n"}], hang=True),
     DeadlineError, "not done within 1 s (cut off there)"),
], ids=["dropped", "deadline"])
def test_a_build_cut_mid_stream_names_the_component_and_step_and_tags_nothing_more(cluster, monkeypatch, api,
                                                                                  kind, says):
    monkeypatch.setattr(build, "build_context", lambda data, component: b"")
    monkeypatch.setattr(build, "build_options", lambda cluster, job: {"tag": "web:candidate-abc"})
    ex, engine = engine_of(cluster, api, build=1)
    ex.read_bytes = lambda host, command, what: b""
    name = cluster.components[0].name
    with pytest.raises(kind) as raised:
        build.build_component(engine, ex, HOST, job_of(ex.cluster))
    message = str(raised.value)
    assert message.startswith(f"build of {name} failed at step 2/2 (RUN make): {HOST}: build {name}: ")
    assert message.endswith(says) and "\n" not in message
    assert api.calls == [("build", "web:candidate-abc")]


@pytest.mark.parametrize("candidate, cache, built", [
    (BUILT, True, False),                    # the candidate is the release's image: kept
    ("sha256:" + "c" * 64, True, True),     # built again since (other settings): built
    (None, True, True),                      # no candidate any more: built
    (BUILT, False, True),                    # --no-cache: every step built again
], ids=["kept", "other", "gone", "no-cache"])
def test_a_component_whose_inputs_are_the_releases_is_kept_when_its_candidate_is_that_image(
        cluster, monkeypatch, candidate, cache, built):
    import docker
    monkeypatch.setattr(build, "build_context", lambda data, component: b"")
    api = Api([{"stream": "Step 1/1 : FROM scratch\n"}, {"aux": {"ID": "sha256:" + "d" * 64}}])

    def inspect_image(image):
        api.calls.append(("inspect", image))
        if candidate is None:
            raise docker.errors.ImageNotFound("no such image")
        return {"Id": candidate}
    api.inspect_image, api.images = inspect_image, lambda name: []
    ex, engine = engine_of(cluster, api)
    ex.read_bytes = lambda host, command, what: b""
    job = replace(job_of(ex.cluster), cache=cache)
    image = build.build_component(engine, ex, HOST, job, reuse=BUILT)
    assert image == ("sha256:" + "d" * 64 if built else BUILT)
    tag = build.candidate(ex.cluster, "web", "abc")
    assert [c for c in api.calls if c[0] == "build"] == ([("build", tag)] if built else [])
    assert [c for c in api.calls if c[0] == "inspect"] == ([("inspect", tag)] if cache else [])  # --no-cache: not asked


def test_a_step_the_engine_refuses_is_said_once(cluster, monkeypatch):
    monkeypatch.setattr(build, "build_context", lambda data, component: b"")
    monkeypatch.setattr(build, "build_options", lambda cluster, job: {"tag": "web:candidate-abc"})
    refused = "The command '/bin/sh -c make' returned a non-zero code: 2"
    ex, engine = engine_of(cluster, Api([{"stream": "Step 1/1 : RUN make\n"}, {"error": refused}]))
    ex.read_bytes = lambda host, command, what: b""
    with pytest.raises(RemoteError) as raised:
        build.build_component(engine, ex, HOST, job_of(ex.cluster))
    assert str(raised.value) == f"build of web failed at step 1/1 (RUN make): {refused}"
    assert not isinstance(raised.value, DeadlineError) and ex.steps == [(HOST, "build web", cluster.timeouts.build)]


def test_a_push_cut_mid_stream_names_the_component_and_the_host(cluster):
    api = Api([{"status": "Preparing"}], then=OSError("Socket is closed"))
    ex, engine = engine_of(cluster, api)
    step = push.Step("web", BUILT, push.version.Decision("1.0.1", True, "1.0.0"))
    with pytest.raises(RemoteError, match=rf"^{HOST}: push of web 1.0.1: connection lost \(Socket is closed\)$"):
        push.push_image(engine, ex.cluster, step, "abc", {}, ["1.0.1", "latest"])
    assert [call for call, _ in api.calls] == ["tag", "push"]
    assert (HOST, "push of web 1.0.1", ex.cluster.timeouts.push) in ex.steps


def test_a_stream_cut_because_the_host_was_given_up_says_so(cluster):
    api = Api([{"status": "Preparing"}], then=OSError("Socket is closed"))
    ex, engine = engine_of(cluster, api)
    ex.given_up[HOST] = "no answer over SSH for 5 s (hung or gone)"
    step = push.Step("web", BUILT, push.version.Decision("1.0.1", True, "1.0.0"))
    with pytest.raises(RemoteError, match=rf"^{HOST}: push of web 1.0.1: connection lost "
                                          rf"\(no answer over SSH for 5 s \(hung or gone\)\)$"):
        push.push_image(engine, ex.cluster, step, "abc", {}, ["1.0.1", "latest"])


def test_the_adapter_cuts_every_channel_its_pool_opened():
    """The deadline's cut, on docker-py's own adapter and urllib3's container of pools (which refuses
    to be iterated): every channel opened is closed, one already gone is skipped."""
    conn = SimpleNamespace(host=HOST, client=SimpleNamespace(get_transport=lambda: None), open=lambda: None)
    adapter = docker_api._FabricSSHAdapter(conn, timeout=60)
    pool = adapter.get_connection("http+docker://ssh/v1.41/images/json")
    closed = []

    class Channel:
        def __init__(self, name, gone=False):
            self.name, self.gone = name, gone

        def close(self):
            if self.gone:
                raise EOFError()
            closed.append(self.name)
    pool._made += [SimpleNamespace(sock=Channel("build")), SimpleNamespace(sock=Channel("old", gone=True)),
                   SimpleNamespace(sock=None), SimpleNamespace(sock=Channel("inspect"))]
    adapter.cut()
    assert closed == ["build", "inspect"]
    closed.clear()
    adapter.close()  # its channels closed now, not when the pool is collected (maybe after the connection)
    assert closed == ["build", "inspect"] and adapter.pools.get("engine") is None


def test_a_pooled_channel_closed_after_its_ssh_connection_is_gone_raises_nothing():
    from tasks.net.docker_api import _ChannelConnection

    class Channel:
        closed = False

        def close(self):
            Channel.closed = True
            raise EOFError()  # paramiko, writing the close on a connection gone
    conn = _ChannelConnection(None, 5, "build")
    conn.sock = Channel()
    conn.close()
    assert Channel.closed and conn.sock is None


@pytest.mark.parametrize("far_end, reused", [("open", True), ("ended", False), ("closed", False)])
def test_a_pooled_channel_whose_far_end_ended_is_not_reused(far_end, reused):
    """docker-py's pool skips urllib3's dropped-connection check: ours hands out a channel whose
    `docker system dial-stdio` ended as a connection to open afresh, not one whose request would fail
    with "Socket is closed"."""
    conn = SimpleNamespace(host=HOST, client=SimpleNamespace(get_transport=lambda: None), open=lambda: None)
    pool = docker_api._FabricSSHAdapter(conn, timeout=60).get_connection("http+docker://ssh/v1.41/build")
    closed = []

    class Channel:
        eof_received, closed = far_end == "ended", far_end == "closed"

        def close(self):
            closed.append(self)
    pooled = pool._get_conn()  # the first: a connection not yet open
    channel = pooled.sock = Channel()
    pool._put_conn(pooled)
    handed = pool._get_conn()
    assert handed is pooled
    assert (handed.sock is channel, closed) == ((True, []) if reused else (False, [channel]))
