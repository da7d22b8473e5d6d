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
