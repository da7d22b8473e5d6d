"""The sandbox's layout and the cluster files it writes: two clusters sharing build server, registry and balancer."""
import pytest

from sandbox import testbed as sb
from tasks.model.errors import ConfigError


def test_layout_gives_local2_machines_of_its_own_beside_the_shared_hosts():
    nodes = sb.layout(3, 2)
    shared = [n.role for n in nodes if not n.is_machine]
    assert shared == ["build", "registry", "balancer"]
    local = [n for n in nodes if n.is_machine and n.cluster == "local"]
    local2 = [n for n in nodes if n.cluster == "local2"]
    assert [n.role for n in local] == ["machine"] * 3 + ["spare"] * 2
    assert [n.role for n in local2] == ["machine"] * sb.OTHER_MACHINES
    assert len({n.address for n in nodes}) == len({n.name for n in nodes}) == len(nodes)


def test_without_the_second_cluster_the_layout_is_the_same_but_for_its_machines():
    whole, first = sb.layout(3, 2), sb.layout(3, 2, second=False)
    assert first == [n for n in whole if n.cluster != "local2"] and len(whole) - len(first) == sb.OTHER_MACHINES
    assert sb.second_cluster_nodes() == [n for n in whole if n.cluster == "local2"] == \
        [n for n in sb.layout(38, 2) if n.cluster == "local2"]  # the same, whatever the size


def test_the_largest_sandbox_keeps_local2_addresses_apart():
    nodes = sb.layout(38, 2)
    assert len({n.address for n in nodes}) == len(nodes)


def test_each_clusters_fragment_lists_its_own_machines_and_the_shared_hosts():
    nodes = sb.layout(3, 2)
    local, local2 = (sb.cluster_fragment(nodes, name) for name in sb.CLUSTERS)
    assert local["machines"] == [n.address for n in nodes if n.role == "machine" and n.cluster == "local"]
    assert local2["machines"] == [n.address for n in nodes if n.cluster == "local2"]
    assert not set(local["machines"]) & set(local2["machines"])
    for key in ("build", "registry", "balancer", "ssh", "secrets"):
        assert local[key] == local2[key]
    assert sb.fragment_file("local").name == "cluster.yaml" and sb.fragment_file("local2").name == "local2.yaml"
    assert local["registry"]["pull_credentials"].endswith("/registry-pull-credentials.yaml")  # the machines' login
    assert local["registry"]["credentials"].endswith("/registry-credentials.yaml")


def test_a_signed_certificate_verifies_against_the_sandbox_ca(tmp_path):
    from sandbox import testbed as sb
    sb.sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test CA",
          "-keyout", str(tmp_path / "ca.key"), "-out", str(tmp_path / "ca.crt"))
    sb.sign_certificate(tmp_path, "registry", "IP:10.0.0.11,DNS:registry", tmp_path / "registry.key",
                        tmp_path / "registry.crt")
    verified = sb.sh("openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "registry.crt"))
    assert verified.stdout.strip().endswith(": OK")
    text = sb.sh("openssl", "x509", "-noout", "-text", "-in", str(tmp_path / "registry.crt")).stdout
    assert "IP Address:10.0.0.11" in text and "DNS:registry" in text
    assert "id-ecPublicKey" in text and f"ASN1 OID: {sb.CURVE}" in text  # cheap to sign with, at every handshake
    assert oct((tmp_path / "registry.key").stat().st_mode & 0o777) == oct(0o600)


def _inspected(node, image="air-sandbox/machine:1", config="c1", address=None) -> dict:
    """What `docker container inspect` says of a sandbox container made for ``node``."""
    return {"Config": {"Image": image, "Labels": {sb.LABEL: node.role, sb.OWNER: sb.PREFIX, sb.CONFIG: config}},
            "NetworkSettings": {"Networks": {sb.NETWORK: {"IPAddress": address or node.address}}}}


def test_a_machine_prepared_with_another_configuration_is_made_afresh_a_shared_host_is_set_right_in_place():
    nodes = sb.layout(3, 2)
    machine, spare = nodes[3], nodes[6]
    registry = next(n for n in nodes if n.role == "registry")
    assert (machine.role, spare.role) == ("machine", "spare")
    for node in (machine, spare, registry):
        assert sb.reusable(_inspected(node), node, "air-sandbox/machine:1", "c1")
        assert not sb.reusable(_inspected(node, image="air-sandbox/machine:0"), node, "air-sandbox/machine:1", "c1")
        assert not sb.reusable(_inspected(node, address="10.9.9.9"), node, "air-sandbox/machine:1", "c1")
    # Another sandbox state (its own CA and key) left these containers in the engine:
    assert not sb.reusable(_inspected(machine, config="c0"), machine, "air-sandbox/machine:1", "c1")
    assert not sb.reusable(_inspected(spare, config="c0"), spare, "air-sandbox/machine:1", "c1")
    assert sb.reusable(_inspected(registry, config="c0"), registry, "air-sandbox/machine:1", "c1")
    unlabelled = _inspected(machine)
    del unlabelled["Config"]["Labels"][sb.CONFIG]  # made before machines carried their configuration
    assert not sb.reusable(unlabelled, machine, "air-sandbox/machine:1", "c1")


# ---------------------------------------------------------------- changes to the sample application

def _script(edit: str, what: str, repository: str = sb.REPOSITORY, branch: str = "master") -> str:
    return f"""
        rm -rf /tmp/air-change && git clone -q {repository} /tmp/air-change && cd /tmp/air-change
        git checkout -q {branch} 2>/dev/null || git checkout -q -b {branch}
        {edit}
        git add -A && git -c user.name=sandbox -c user.email=sandbox@air.invalid commit -q -m {what}
        git push -q origin {branch} && git rev-parse HEAD && rm -rf /tmp/air-change
    """


@pytest.mark.parametrize("change, edit, what", [
    (sb.Change("router"), "date +%s%N >> components/router/index.html", "'change router'"),
    (sb.Change("air_frontend", "broken"), "date +%s%N >> components/air_frontend/broken", "'break air_frontend'"),
    (sb.Change("air_frontend", "fix"), "rm -f components/air_frontend/broken components/air_frontend/slow-start "
                                       "components/air_frontend/errors components/air_frontend/latency-ms; "
                                       "date +%s%N >> components/air_frontend/index.html", "'fix air_frontend'"),
    (sb.Change("router", "errors", "30"), "printf '%s\\n' 30 > components/router/errors; "
                                          "date +%s%N >> components/router/index.html",
     "'router answers 30% of requests 500'"),
    (sb.Change("router", "latency-ms", "300"), "printf '%s\\n' 300 > components/router/latency-ms; "
                                               "date +%s%N >> components/router/index.html",
     "'router answers 300 ms slower'"),
    (sb.Change("router", "slow-start", "3"), "printf '%s\\n' 3 > components/router/slow-start",
     "'router starts in 3 s'"),
    (sb.Change("air_backend", "version", "1.1"), "printf '%s\\n' 1.1 > VERSION", "'VERSION 1.1'"),
    (sb.Change("air_backend", "fails", "prepare"), "printf 'if then\\n' > components/air_backend/bin/unfinished",
     "'prepare fails for air_backend'"),
    (sb.Change("air_frontend", "fails", "build"),
     "printf 'RUN echo compiling air_frontend && exit 3\\n' >> components/air_frontend/Dockerfile",
     "'build fails for air_frontend'"),
    (sb.Change("air_frontend", "file", "NOTES.md"), "date +%s%N >> components/air_frontend/NOTES.md",
     "'change air_frontend'"),
], ids=lambda v: v.kind if isinstance(v, sb.Change) else None)
def test_the_script_of_each_kind_of_change_on_master(change, edit, what):
    assert sb.change_script(change) == _script(edit, what)


def test_a_change_to_the_website_goes_to_its_own_repository_on_develop_or_the_branch_given():
    assert sb.change_script(sb.Change(sb.WEBSITE)) == \
        _script("date +%s%N >> ./index.html", "'change static_website'", sb.WEBSITE_REPOSITORY, "develop")
    assert sb.change_script(sb.Change(sb.WEBSITE, "slow-start", "2", branch="t1_site")) == \
        _script("printf '%s\\n' 2 > ./slow-start", "'static_website starts in 2 s'", sb.WEBSITE_REPOSITORY, "t1_site")


@pytest.mark.parametrize("fields, message", [
    (("nosuch",), "no component 'nosuch' in the sample application"),
    (("router", "change", None, "x;reboot"), "branch 'x;reboot' is not a simple branch name"),
    (("router", "explode"), "no kind of change 'explode' (one of change, broken, fix, slow-start, version, fails, file, "
                              "errors, latency-ms, schema, migration)"),
    (("router", "errors", "0"), "--errors takes a percentage, more than 0 and at most 100"),
    (("router", "errors", "30%"), "--errors takes a percentage, more than 0 and at most 100"),
    (("air_backend", "errors", "30"), "only the router answers badly on purpose (--errors)"),
    (("router", "latency-ms", "0.3"), "--latency-ms takes whole milliseconds, 1 to 60000"),
    (("router", "broken", "1"), "--broken takes no value"),
    (("router", "slow-start"), "--slow-start takes whole seconds"),
    (("router", "slow-start", "3.5"), "--slow-start takes whole seconds"),
    (("router", "fails", "push"), "--fails must be one of prepare, build, hang"),
    (("router", "fails", "prepare"), "only air_backend has a prepare command"),
    ((sb.WEBSITE, "version", "1.2"), "VERSION is in the main repository, not in static_website's"),
    (("router", "file", "../VERSION"), "--file '../VERSION' is not a path inside the component's folder"),
    (("router", "file", "a b"), "--file 'a b' is not a path inside the component's folder"),
])
def test_a_change_is_checked_when_made(fields, message):
    with pytest.raises(ConfigError) as refused:
        sb.Change(*fields)
    assert str(refused.value) == f"sandbox.change: {message}"


def test_the_flags_of_sandbox_change_make_one_kind_of_change():
    flags = dict(broken=False, fix=False, slow_start=None, version=None, fails=None, file=None, errors=None,
                 latency_ms=None)
    assert sb.change_of("router", None, **flags) == sb.Change("router", "change", None, "master")
    assert sb.change_of("router", "b", **{**flags, "broken": True}) == sb.Change("router", "broken", branch="b")
    assert sb.change_of("router", None, **{**flags, "slow_start": "0"}) == sb.Change("router", "slow-start", "0")
    assert sb.change_of("air_backend", None, **{**flags, "version": "2.0"}) == sb.Change("air_backend", "version", "2.0")
    assert sb.change_of("router", None, **{**flags, "latency_ms": "300"}) == sb.Change("router", "latency-ms", "300")
    with pytest.raises(ConfigError) as refused:
        sb.change_of("router", None, **{**flags, "broken": True, "fix": True})
    assert str(refused.value) == "sandbox.change: --broken and --fix exclude each other"


def test_the_relay_rule_sends_this_machines_connections_to_the_subnet_through_the_relay_but_its_own():
    from sandbox.relay import MARK
    rule = sb.relay_rule(47007)
    assert rule[:3] == ["OUTPUT", "-t", "nat"]
    assert rule[rule.index("-d") + 1] == f"{sb.SUBNET}.0/24" and rule[rule.index("-p") + 1] == "tcp"
    assert rule[rule.index("!") + 1:rule.index("!") + 3] == ["--mark", hex(MARK)]
    assert rule[-4:] == ["-j", "REDIRECT", "--to-ports", "47007"]


@pytest.mark.parametrize("value, rtt", [("", 0.0), ("0", 0.0), ("50", 50.0), ("12.5", 12.5)])
def test_the_rtt_asked_for(monkeypatch, value, rtt):
    monkeypatch.setenv(sb.RTT_VARIABLE, value)
    assert sb.wanted_rtt() == rtt


@pytest.mark.parametrize("value", ["fast", "-1", "5000"])
def test_an_rtt_that_is_not_a_number_of_milliseconds_is_refused(monkeypatch, value):
    monkeypatch.setenv(sb.RTT_VARIABLE, value)
    with pytest.raises(ConfigError, match=f"^{sb.RTT_VARIABLE}="):
        sb.wanted_rtt()


def test_the_relay_holds_each_exchange_back_by_the_rtt_and_passes_everything_in_order(tmp_path):
    import json
    import socket
    import subprocess
    import sys
    import threading
    import time

    echo = socket.create_server(("127.0.0.1", 0))

    def serve():
        peer, _ = echo.accept()
        while data := peer.recv(1 << 16):
            peer.sendall(data)
        peer.close()
    threading.Thread(target=serve, daemon=True).start()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stats = tmp_path / "relay.json"
    relay = subprocess.Popen([sys.executable, "-m", "sandbox.relay", "--port", str(port), "--rtt-ms", "80",
                              "--stats", str(stats), "--to", f"127.0.0.1:{echo.getsockname()[1]}"], cwd=sb.ROOT)
    try:
        while not stats.exists():
            time.sleep(0.02)
        client = socket.create_connection(("127.0.0.1", port))
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        client.sendall(b"x")
        assert client.recv(1) == b"x"
        assert time.monotonic() - started >= 0.08 + 0.04  # the connect's RTT is paid by the first exchange
        started = time.monotonic()
        client.sendall(b"y")
        assert client.recv(1) == b"y"
        assert time.monotonic() - started >= 0.08
        sent = bytes(range(256)) * 4000
        threading.Thread(target=lambda: (client.sendall(sent), client.shutdown(socket.SHUT_WR)), daemon=True).start()
        got = b""
        while data := client.recv(1 << 16):
            got += data
        assert got == sent  # in order, whole, and its end passed on
        client.close()
        assert json.loads(stats.read_text()) == {"connections": 1, "rtt_ms": 80.0}
    finally:
        relay.terminate()
        relay.wait(5)


def test_the_release_commands_changes_make_a_release_need_a_schema_or_its_migration_fail():
    index = "date +%s%N >> components/air_backend/index.html"
    assert sb.change_script(sb.Change("air_backend", "schema", "2")) == _script(
        f"printf '%s\\n' 2 > components/air_backend/schema; {index}", "'air_backend needs schema 2'")
    assert sb.change_script(sb.Change("air_backend", "schema", "0")) == _script(
        f"rm -f components/air_backend/schema; {index}", "'air_backend needs schema 0'")
    assert sb.change_script(sb.Change("air_backend", "migration", "fails")) == _script(
        "date +%s%N >> components/air_backend/migration-fails", "'the migration of air_backend fails'")
    assert sb.change_script(sb.Change("air_backend", "migration", "passes")) == _script(
        f"rm -f components/air_backend/migration-fails; {index}", "'the migration of air_backend passes'")
    for fields, message in ((("air_backend", "schema", "x"), "--schema takes a whole number"),
                            (("router", "migration", "fails"), "only air_backend has a migration"),
                            (("air_backend", "migration", "maybe"), "--migration must be one of fails, passes")):
        with pytest.raises(ConfigError, match=message):
            sb.Change(*fields)


def test_the_sample_database_volumes_are_the_sandboxs_own():
    assert sb.owned_volume(f"{sb.PREFIX}-local-database") and sb.owned_volume(f"{sb.PREFIX}-local2-database")
    assert not sb.owned_volume(f"{sb.PREFIX}-w1-local-database")


def test_files_tar_carries_each_files_path_content_mode_and_owner():
    import io
    import tarfile
    files = [sb.Put("/home/core/.ssh/authorized_keys", "ssh-ed25519 AAAA a\n", 0o600, "core:core"),
             sb.Put("/etc/docker/registry/htpasswd", b"air:$2y$04$x\n", 0o640, "root:docker-registry"),
             sb.Put("/etc/air-sandbox", "config\n")]
    with tarfile.open(fileobj=io.BytesIO(sb.files_tar(files))) as tar:
        members = tar.getmembers()
        read = [(m.name, m.mode, m.uname, m.gname, m.isfile(), tar.extractfile(m).read()) for m in members]
    assert read == [("home/core/.ssh/authorized_keys", 0o600, "core", "core", True, b"ssh-ed25519 AAAA a\n"),
                    ("etc/docker/registry/htpasswd", 0o640, "root", "docker-registry", True, b"air:$2y$04$x\n"),
                    ("etc/air-sandbox", 0o644, "root", "root", True, b"config\n")]
