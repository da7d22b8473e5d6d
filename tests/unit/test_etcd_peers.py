"""The etcd peer certificates: the plan, what is made, what a machine gets."""
import datetime
import ipaddress
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from cloudconfig.units import etcd_dropin
from tasks.model import certificates
from tasks.model.errors import ConfigError
from tasks.runbooks import etcd_peers
from tasks.runbooks.etcd_peers import Plan, plan

MEMBERS = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("present, wanted", [
    ([], Plan(True, MEMBERS)),
    (["ca.crt", "ca.key"], Plan(False, MEMBERS)),
    (["ca.crt", "ca.key", "10.0.0.1.crt", "10.0.0.1.key", "10.0.0.3.crt"], Plan(False, ("10.0.0.2", "10.0.0.3"))),
    (["ca.crt", "ca.key"] + [f"{m}.{x}" for m in MEMBERS for x in ("crt", "key")], Plan(False, ())),
    (["ca.key"], Plan(True, MEMBERS)),  # half a CA issued nothing: made again
])
def test_plan(present, wanted):
    assert plan(present, MEMBERS) == wanted


def test_plan_refuses_member_certificates_without_their_ca():
    with pytest.raises(ConfigError, match="the etcd peer CA .* is missing but member certificates remain"):
        plan(["10.0.0.1.crt", "10.0.0.1.key"], MEMBERS)


def test_describe():
    assert etcd_peers.describe(Plan(True, ("10.0.0.1",)), "prod") == \
        "etcd peers: prod: making the cluster CA, the certificate of 10.0.0.1"
    assert etcd_peers.describe(Plan(False, ()), "prod") == \
        "etcd peers: prod: the CA and every member certificate are present"


def test_machine_files_and_their_owner():
    assert etcd_peers.machine_files(b"CA", b"CERT", b"KEY") == [
        ("/etc/air/etcd-peer/ca.crt", b"CA", 0o600),
        ("/etc/air/etcd-peer/peer.crt", b"CERT", 0o600),
        ("/etc/air/etcd-peer/peer.key", b"KEY", 0o600)]
    assert etcd_peers.own_command() == "chown -R etcd: /etc/air/etcd-peer && chmod 0700 /etc/air/etcd-peer"


def test_the_drop_in_reads_the_files_a_machine_gets(cluster):
    dropin = etcd_dropin(cluster, "10.0.0.1", cluster.machines, "new")
    ca, cert, key = (path for path, _, _ in etcd_peers.machine_files(b"", b"", b""))
    for line in (f"ETCD_PEER_TRUSTED_CA_FILE={ca}", f"ETCD_PEER_CERT_FILE={cert}", f"ETCD_PEER_KEY_FILE={key}",
                 "ETCD_PEER_CLIENT_CERT_AUTH=true"):
        assert f"Environment={line}\n" in dropin


def test_ensure_makes_the_ca_and_the_certificates_once(cluster):
    made = etcd_peers.ensure(cluster, list(cluster.machines))
    assert made == Plan(True, MEMBERS)
    folder = etcd_peers.folder_of(cluster)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(["ca.crt", "ca.key"] + [f"{m}.{x}" for m in MEMBERS for x in ("crt", "key")])
    assert {stat.S_IMODE((folder / n).stat().st_mode) for n in names} == {0o600}
    before = {n: (folder / n).read_bytes() for n in names}
    assert etcd_peers.ensure(cluster, list(cluster.machines)) == Plan(False, ())
    assert {n: (folder / n).read_bytes() for n in names} == before
    # A new member later: only its certificate is made, by the same CA.
    assert etcd_peers.ensure(cluster, ["10.0.0.4"]) == Plan(False, ("10.0.0.4",))
    assert (folder / "ca.crt").read_bytes() == before["ca.crt"]


def test_a_member_certificate_names_its_address_serves_both_ways_and_openssl_verifies_it(cluster, tmp_path):
    etcd_peers.ensure(cluster, ["10.0.0.2"])
    folder = etcd_peers.folder_of(cluster)
    cert = x509.load_pem_x509_certificate((folder / "10.0.0.2.crt").read_bytes())
    ca = x509.load_pem_x509_certificate((folder / "ca.crt").read_bytes())
    assert cert.issuer == ca.subject and ca.subject.rfc4514_string() == "CN=air prod etcd peer CA"
    assert cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value \
        .get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.2")]
    assert set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == \
        {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # No common name: etcd's grpc-proxy (a worker's) refuses a client certificate with one.
    assert cert.subject == x509.Name([]) and cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    checked = subprocess.run(["openssl", "verify", "-CAfile", str(folder / "ca.crt"), "-purpose", "sslserver",
                              str(folder / "10.0.0.2.crt")], capture_output=True, text=True)
    assert checked.returncode == 0 and checked.stdout.strip().endswith(": OK"), checked.stdout + checked.stderr


def test_files_for_a_machine_come_from_the_folder(cluster):
    etcd_peers.ensure(cluster, ["10.0.0.1"])
    folder = etcd_peers.folder_of(cluster)
    assert etcd_peers.files_for(cluster, "10.0.0.1") == etcd_peers.machine_files(
        (folder / "ca.crt").read_bytes(), (folder / "10.0.0.1.crt").read_bytes(), (folder / "10.0.0.1.key").read_bytes())


def test_files_for_a_machine_without_a_certificate_is_refused(cluster):
    etcd_peers.ensure(cluster, ["10.0.0.1"])
    with pytest.raises(ConfigError, match=r"10\.0\.0\.2\.crt: missing; `fab etcd.certificates --cluster prod` makes it"):
        etcd_peers.files_for(cluster, "10.0.0.2")


def test_a_certificate_of_another_ca_is_refused_before_delivery(cluster):
    folder = etcd_peers.folder_of(cluster)
    etcd_peers.ensure(cluster, ["10.0.0.1"])
    other_cert, other_key = certificates.new_ca("intruder", NOW)
    cert, key = certificates.new_member("10.0.0.2", other_cert, other_key, NOW)
    (folder / "10.0.0.2.crt").write_bytes(cert)
    (folder / "10.0.0.2.key").write_bytes(key)
    with pytest.raises(ConfigError, match="10.0.0.2.crt: not issued by the cluster's etcd peer CA"):
        etcd_peers.files_for(cluster, "10.0.0.2")


def test_keys_are_not_in_the_plan_or_its_report(cluster, capsys):
    etcd_peers.ensure(cluster, ["10.0.0.1"])
    key = (etcd_peers.folder_of(cluster) / "10.0.0.1.key").read_text()
    body = key.splitlines()[1]
    shown = capsys.readouterr()
    assert body not in shown.out + shown.err


def test_plaintext_members_are_those_without_a_tls_peer_url():
    from tasks.net.etcd import Member
    members = [Member("1", "10.0.0.1", ("http://10.0.0.1:2380",), (), False),
               Member("2", "10.0.0.2", ("https://10.0.0.2:2380",), (), False),
               Member("3", "10.0.0.3", ("http://10.0.0.3:2380",), (), False)]
    assert etcd_peers.plaintext(members) == ["10.0.0.1", "10.0.0.3"]
    assert etcd_peers.plaintext(members[1:2]) == []


def test_the_migration_drop_in_names_the_files_a_machine_gets_and_nothing_else():
    from cloudconfig.units import etcd_peer_files_dropin
    ca, cert, key = (path for path, _, _ in etcd_peers.machine_files(b"", b"", b""))
    assert etcd_peer_files_dropin() == ("[Service]\n"
                                        f"Environment=ETCD_PEER_CERT_FILE={cert}\n"
                                        f"Environment=ETCD_PEER_KEY_FILE={key}\n"
                                        f"Environment=ETCD_PEER_TRUSTED_CA_FILE={ca}\n")
