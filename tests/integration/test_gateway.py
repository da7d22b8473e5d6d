"""Machines on a private network, reached through a jump host (the build server), as the original was run.

For this module every machine's sshd accepts `core` only from the build
server (`AllowUsers core@BUILD`), and the `local` cluster is used through a
copy of its file that names the build server as `ssh.gateway`. Direct SSH to
a machine is refused; install (add-machine), deploy and remove-machine work
through the gateway, with every host key checked. The restriction is lifted
at the end (through `docker exec`, not SSH).
"""
import dataclasses
import time

import pytest

from tasks.model import cluster as cluster_config
from sandbox import testbed as sb
from tasks.net.executor import Executor

from conftest import BALANCER_ADDRESS, BUILD_ADDRESS, MACHINE_ADDRESSES, SPARE_ADDRESSES, Probe, fab, make_fresh, serving

RESTRICTION = "/etc/ssh/sshd_config.d/air-gateway-test.conf"


def machine_names(sandbox) -> list:
    return [m["name"] for m in sandbox["machines"] if m["address"] in MACHINE_ADDRESSES + SPARE_ADDRESSES]


@pytest.fixture(scope="module")
def gated(sandbox, installed, tmp_path_factory):
    """(the cluster through its gateway, the environment that makes `fab` use that cluster file)."""
    folder = tmp_path_factory.mktemp("gated-clusters")
    text = (sb.ROOT / "clusters" / "local.yaml").read_text().replace(
        "include: ../.sandbox/cluster.yaml", f"include: {sb.STATE / 'cluster.yaml'}")
    text = text.replace("  user: core", f"  user: core\n  gateway: {BUILD_ADDRESS}", 1)
    (folder / "local.yaml").write_text(text)
    cluster = cluster_config.load("local", folder)
    assert cluster.ssh.gateway == BUILD_ADDRESS
    names = machine_names(sandbox)
    for name in names:
        sb.inside(name, f"printf 'AllowUsers core@{BUILD_ADDRESS}\\n' > {RESTRICTION} && systemctl reload ssh")
    try:
        yield cluster, {"AIR_CLUSTERS_DIR": str(folder)}
    finally:
        for name in names:
            sb.inside(name, f"rm -f {RESTRICTION} && systemctl reload ssh")


def test_machines_refuse_direct_ssh_and_answer_through_the_gateway(local, gated, tmp_path):
    cluster, _ = gated
    machine = MACHINE_ADDRESSES[0]
    with Executor(local) as direct:
        assert direct.reachable(machine) is not None
        assert direct.reachable(BALANCER_ADDRESS) is None  # only the machines sit behind it here
    with Executor(cluster) as through:
        assert through.reachable(machine) is None
        assert through.run(machine, "hostname").stdout.strip().endswith("-m1")
    # A machine's host key is checked through the gateway as it is directly: another host's key
    # under the machine's address is refused (the gateway's own line stays right).
    lines = cluster.ssh.known_hosts.read_text().splitlines()
    keys = {line.split()[0]: line.split(None, 1)[1] for line in lines}
    (tmp_path / "known_hosts").write_text("\n".join(
        f"{host} {keys[BALANCER_ADDRESS] if host == machine else key}" for host, key in keys.items()) + "\n")
    wrong = dataclasses.replace(cluster, ssh=dataclasses.replace(cluster.ssh, known_hosts=tmp_path / "known_hosts"))
    with Executor(wrong) as refused:
        assert refused.reachable(BUILD_ADDRESS) is None
        assert refused.reachable(machine) == "host key does not match known_hosts: refusing"
    assert serving(cluster)


def test_add_deploy_and_remove_through_the_gateway(gated, figures):
    cluster, env = gated
    spare = SPARE_ADDRESSES[0]
    make_fresh(cluster, [spare])
    sb.inside(next(n.name for n in sb.layout(3, 2) if n.address == spare),
              f"printf 'AllowUsers core@{BUILD_ADDRESS}\\n' > {RESTRICTION} && systemctl reload ssh")
    started = time.monotonic()
    fab("add-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare, env=env)
    added = time.monotonic() - started
    sb.commit_change(sb.Change("router"))
    with Probe(BALANCER_ADDRESS, 80) as probe:
        started = time.monotonic()
        fab("deploy", "--cluster", "local", env=env)
        deployed = time.monotonic() - started
    started = time.monotonic()
    fab("remove-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare, env=env)
    removed = time.monotonic() - started
    figures(f"through the gateway: add-machine {added:.1f} s, deploy {deployed:.1f} s, remove-machine "
            f"{removed:.1f} s; {probe.report('deploy')}")
    assert probe.failed == 0
    assert serving(cluster)
