"""The small cluster the unit tests render for: three machines, two components."""
import pytest

from tasks.model.cluster import load

CLUSTER_YAML = """\
namespace: aircloak
ssh: {key: id_ed25519, known_hosts: known_hosts}
build: {host: build.example.org, repository: git@example.org:air.git}
registry: {address: "registry.example.org:5000", credentials: registry.yaml}
balancer: {host: 10.0.0.100}
machines: [10.0.0.1, 10.0.0.2, 10.0.0.3]
components:
  - {name: web, port: 8080}
  - {name: worker, port: 9090, health: /ready}
secrets: secrets
timeouts: {stop: 20}
"""


@pytest.fixture
def cluster(tmp_path):
    """The cluster `prod` of CLUSTER_YAML, loaded as air-deploy loads any cluster file."""
    (tmp_path / "prod.yaml").write_text(CLUSTER_YAML)
    (tmp_path / "secrets").mkdir(mode=0o700)  # a secrets folder others may read is refused
    root = tmp_path / "secrets" / "etcd-root.yaml"  # etcd_auth is on by default: its root login
    root.write_text("username: root\npassword: root-SECRET\n")
    root.chmod(0o600)
    return load("prod", directory=tmp_path)
