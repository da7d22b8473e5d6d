"""The sandbox is real: checked from outside, the way air-deploy will use it.

Every machine (spares too) is reached over SSH with the sandbox key and the
cluster's known_hosts (a host with another key is refused), runs systemd and
Docker, and pulls from the registry; the registry wants credentials and
speaks TLS from the sandbox CA; the balancer listens; `sandbox.up` is
idempotent and fast when nothing is missing. Nothing here changes a machine
for good: the probe image pulled on each machine is removed again.
"""
import dataclasses
import json
import secrets
import socket
import subprocess
import time

import pytest
import requests
from conftest import MACHINES, SPARES, fab

from sandbox import testbed as sb
from tasks.commands.shell import q
from tasks.model import cluster
from tasks.model.credentials import load_credentials
from tasks.model.errors import RemoteError
from tasks.net import docker_api
from tasks.net.executor import Executor
from tasks.net.registry import RegistryClient

NODES = sb.layout(MACHINES, SPARES)
MACHINE_NODES = [n for n in NODES if n.is_machine]
# Named without the sandbox's prefix: the same on every worker.
by_name = pytest.mark.parametrize("node", MACHINE_NODES, ids=lambda n: n.name.removeprefix(f"{sb.PREFIX}-"))


@pytest.fixture(scope="module", autouse=True)
def whole(second_cluster):
    """Every container of the sandbox, the second cluster's machines too: the status of its bring-up."""
    return second_cluster


@pytest.fixture(scope="module")
def ex(local):
    """One executor for the module: one SSH connection per host, opened on first use."""
    with Executor(local) as executor:
        yield executor


@pytest.fixture(scope="module")
def probe_image(local, ex):
    """The build server's base image, pushed under a test-only name; yields (reference, image ID)."""
    repository = f"{local.registry.address}/t{secrets.token_hex(4)}/sandbox_probe"
    username, password = load_credentials(local.registry.credentials)
    api = docker_api.engine(ex.conn(local.build.host))
    api.tag(sb.BASE_IMAGE, repository, "1")
    for chunk in api.push(repository, tag="1", auth_config={"username": username, "password": password},
                          stream=True, decode=True):
        assert "error" not in chunk, chunk
    image_id = api.inspect_image(f"{repository}:1")["Id"]
    yield f"{repository}:1", image_id
    api.remove_image(f"{repository}:1")


# ---------------------------------------------------------------- what `fab sandbox.status --json` says

def test_status_json_has_the_documented_keys(sandbox, local):
    info = json.loads(fab("sandbox.status", "--json").stdout)
    assert info["cluster"] == "local"
    assert info["up"] is True
    assert info["ssh_key"].endswith("id_ed25519")
    for role in ("build", "registry", "balancer"):
        node = next(n for n in NODES if n.role == role)
        assert info[role]["name"] == node.name
        assert info[role]["address"] == node.address
    assert info["registry"]["port"] == sb.REGISTRY_PORT
    assert (info["balancer"]["port"], info["balancer"]["https_port"]) == \
        (local.balancer.http_port, local.balancer.https_port)
    assert [(m["name"], m["address"], m["spare"]) for m in info["machines"]] == \
        [(n.name, n.address, n.role == "spare") for n in MACHINE_NODES if n.cluster == "local"]
    assert [m["address"] for m in info["clusters"]["local2"]["machines"]] == \
        [n.address for n in MACHINE_NODES if n.cluster == "local2"] == list(cluster.load("local2").machines)
    assert sum(m["spare"] for m in info["machines"]) == SPARES


# ---------------------------------------------------------------- every machine, spares included

@by_name
def test_machine_answers_ssh_with_the_sandbox_key_and_a_checked_host_key(local, ex, node):
    conn = ex.conn(node.address)
    assert ex.run(node.address, "hostname").stdout.strip() == node.name
    offered = conn.client.get_transport().get_remote_server_key()
    known = conn.client.get_host_keys().lookup(node.address)
    assert known is not None and known[offered.get_name()] == offered
    assert conn.connect_kwargs["key_filename"] == [str(local.ssh.key)]


@by_name
def test_machine_runs_systemd(ex, node):
    result = ex.run(node.address, "systemctl is-system-running", check=False)
    assert result.stdout.strip() == "running", \
        ex.run(node.address, "systemctl --failed --no-legend --plain", check=False).stdout
    assert ex.run(node.address, "ps -o comm= -p 1").stdout.strip() == "systemd"


@by_name
def test_machine_has_an_active_docker_service(ex, node):
    result = ex.run(node.address, "systemctl is-active docker", check=False)
    assert result.stdout.strip() == "active"


@by_name
def test_machine_pulls_from_the_registry(ex, probe_image, node):
    reference, image_id = probe_image
    try:
        ex.run(node.address, f"docker pull -q {q(reference)}", what=f"pull {reference}")
        pulled = ex.run(node.address, f"docker image inspect --format '{{{{.Id}}}}' {q(reference)}")
        assert pulled.stdout.strip() == image_id
    finally:
        ex.run(node.address, f"docker image rm -f {q(reference)} >/dev/null 2>&1 || true")


# ---------------------------------------------------------------- a key that is not the machine's is refused

@pytest.fixture
def other_key(tmp_path):
    """A freshly made ed25519 public key that no sandbox host has: (type, base64)."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    return (tmp_path / "other.pub").read_text().split()[:2]


def with_known_hosts(cluster, path):
    return dataclasses.replace(cluster, ssh=dataclasses.replace(cluster.ssh, known_hosts=path))


def test_a_machine_with_another_key_than_known_hosts_says_is_refused(local, tmp_path, other_key):
    machine = MACHINE_NODES[0]
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(f"{machine.address} {other_key[0]} {other_key[1]}\n")
    with Executor(with_known_hosts(local, known_hosts)) as other:
        with pytest.raises(RemoteError) as refused:
            other.run(machine.address, "touch /tmp/air-should-not-exist")
    assert str(refused.value) == f"{machine.address}: cannot reach over SSH (host key does not match known_hosts: refusing)"


def test_a_machine_missing_from_known_hosts_is_refused(local, tmp_path, other_key):
    machine, other = MACHINE_NODES[0], MACHINE_NODES[1]
    known_hosts = tmp_path / "known_hosts"
    # Another host's real key: the file is valid, only this machine is not in it.
    known_hosts.write_text(next(line for line in local.ssh.known_hosts.read_text().splitlines()
                                if line.startswith(other.address + " ")) + "\n")
    with Executor(with_known_hosts(local, known_hosts)) as other:
        with pytest.raises(RemoteError) as refused:
            other.run(machine.address, "true")
    assert str(refused.value) == f"{machine.address}: cannot reach over SSH (host key not in known_hosts: refusing)"


# ---------------------------------------------------------------- registry and balancer

def test_registry_refuses_anonymous_access(sandbox, local):
    base = f"https://{local.registry.address}"
    ca = str(local.registry.ca)
    response = requests.get(f"{base}/v2/", verify=ca, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].lower().startswith("basic")
    upload = requests.post(f"{base}/v2/tanonymous/sandbox_probe/blobs/uploads/", verify=ca, timeout=10)
    assert upload.status_code == 401


def test_registry_refuses_a_wrong_password(sandbox, local):
    username, _ = load_credentials(local.registry.credentials)
    response = requests.get(f"https://{local.registry.address}/v2/", auth=(username, "not-the-password"),
                            verify=str(local.registry.ca), timeout=10)
    assert response.status_code == 401


def test_registry_accepts_the_credentials_over_tls_from_the_sandbox_ca(local, probe_image):
    credentials = load_credentials(local.registry.credentials)
    response = requests.get(f"https://{local.registry.address}/v2/", auth=credentials,
                            verify=str(local.registry.ca), timeout=10)
    assert response.status_code == 200
    reference, image_id = probe_image
    repository = reference.split("/", 1)[1].rsplit(":", 1)[0]
    client = RegistryClient.for_registry(local.registry)
    assert client.tags(repository) == ["1"]
    assert client.config_digest(repository, "1") == image_id


def test_balancer_accepts_tcp_on_its_port(sandbox):
    with socket.create_connection((sandbox["balancer"]["address"], sandbox["balancer"]["port"]), timeout=5):
        pass


# ---------------------------------------------------------------- sandbox.up is idempotent

def test_bring_up_twice_in_a_row_is_fast_the_second_time(whole, capsys):
    times = []
    for second in (True, False):  # without the second cluster's machines: kept, as they are there
        started = time.monotonic()
        info = sb.bring_up(MACHINES, SPARES, second=second)
        times.append(time.monotonic() - started)
        assert info["up"] is True
        assert len(info["machines"]) == MACHINES + SPARES
    with capsys.disabled():
        print(f"\n  sandbox.up, already up: {times[0]:.1f} s, then again: {times[1]:.1f} s")
    assert info == whole
    assert times[1] < 15


# ---------------------------------------------------------------- a machine made afresh leaves nothing behind

@pytest.mark.parametrize("machine", ["running", "killed"])
def test_a_machine_made_afresh_takes_its_containers_control_groups_with_it(local, probe_image, machine):
    """Killed with its engine, a machine's containers leave control groups that nothing else
    removes; reset_machines removes them (they piled up on this machine, thousands a day), also
    for a machine killed before (its engine cannot say what it ran: its volume does)."""
    spare = next(n for n in NODES if n.role == "spare")
    reference, _ = probe_image
    with Executor(local) as ex:  # its own: the spare is made afresh (another host key) by each case
        ex.run(spare.address, f"docker pull -q {q(reference)}", what=f"pull {reference}")
        inner = ex.run(spare.address, f"docker run -d {q(reference)} sleep 600").stdout.strip()
    groups = sb.container_cgroups(inner)
    assert groups, f"no control group of {inner} under {sb.CGROUPS}"
    if machine == "killed":
        sb.docker("kill", spare.name)
        assert [g for g in groups if g.exists()] == groups  # left behind by the kill
    sb.reset_machines([spare.address])
    assert [g for g in groups if g.exists()] == []
