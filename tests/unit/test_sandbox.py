"""The sandbox's layout and the cluster files it writes: two clusters sharing build server, registry and balancer."""
from sandbox import testbed as sb


def test_layout_gives_local2_machines_of_its_own_beside_the_shared_hosts():
    nodes = sb.layout(3, 2)
    shared = [n.role for n in nodes if not n.is_machine]
    assert shared == ["build", "registry", "balancer"]
    local = [n for n in nodes if n.is_machine and n.cluster == "local"]
    local2 = [n for n in nodes if n.cluster == "local2"]
    assert [n.role for n in local] == ["machine"] * 3 + ["spare"] * 2
    assert [n.role for n in local2] == ["machine"] * sb.OTHER_MACHINES
    assert len({n.address for n in nodes}) == len({n.name for n in nodes}) == len(nodes)


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
