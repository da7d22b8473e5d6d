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
from tasks.model.errors import ConfigError, HealthError, Interrupted, PreflightError, RemoteError
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


# ---------------------------------------------------------------- member certificates' validity

def test_a_member_certificate_lives_a_year_and_never_outlives_its_ca():
    ca, ca_key = certificates.new_ca("prod", NOW)
    cert, _ = certificates.new_member("10.0.0.1", ca, ca_key, NOW)
    serial, until = certificates.validity(cert)
    assert until == NOW + datetime.timedelta(days=365) and certificates.MEMBER_DAYS < certificates.CA_DAYS
    assert serial == format(x509.load_pem_x509_certificate(cert).serial_number, "x")
    # Issued by a CA with half a year left, it ends with the CA.
    late = NOW + datetime.timedelta(days=certificates.CA_DAYS - 180)
    assert certificates.validity(certificates.new_member("10.0.0.1", ca, ca_key, late)[0])[1] == \
        certificates.validity(ca)[1]
    # Two issued for one member are two certificates (what a renewal changes).
    assert certificates.validity(certificates.new_member("10.0.0.1", ca, ca_key, NOW)[0])[0] != serial


# ---------------------------------------------------------------- restarts one member at a time

@pytest.mark.parametrize("voters, refused", [(1, True), (2, True), (3, False), (4, False), (5, False)])
def test_restarting_members_one_at_a_time_must_keep_quorum(voters, refused):
    problem = etcd_peers.restart_problem(voters, "etcd.migrate-peers")
    assert (problem is not None) == refused
    if voters == 2:
        assert problem == ("etcd.migrate-peers restarts etcd on one member at a time, and with 2 voting member(s) "
                           "a member restarting leaves 1, below the quorum of 2 (one that does not come back "
                           "leaves the cluster without quorum); it needs three members or more")


def member(address, scheme="https", started=True, learner=False):
    from tasks.net.etcd import Member
    return Member(address[-1], address if started else "", (f"{scheme}://{address}:2380",), (), learner)


def test_checked_members_refuses_learners_unstarted_members_and_two_members():
    three = [member(m) for m in MEMBERS]
    assert etcd_peers.checked_members(three, "t") == three
    for odd in ([member("10.0.0.1", learner=True)] + three[1:], [member("10.0.0.1", started=False)] + three[1:]):
        with pytest.raises(PreflightError, match="not started or is still a learner; .*nothing was changed"):
            etcd_peers.checked_members(odd, "t")
    with pytest.raises(PreflightError, match=r"with 2 voting member\(s\).*; nothing was changed$"):
        etcd_peers.checked_members(three[:2], "t")


def test_unhealthy_members_are_named():
    from tasks.runbooks.etcd_members import Answer
    answers = {"10.0.0.1": Answer("10.0.0.1", None, True), "10.0.0.2": Answer("10.0.0.2", None, False),
               "10.0.0.3": Answer("10.0.0.3", "no answer within 8 s")}
    assert etcd_peers.unhealthy_problem(answers) == \
        "etcd not healthy on 10.0.0.2 (no quorum read), 10.0.0.3 (no answer within 8 s)"
    assert etcd_peers.unhealthy_problem({"10.0.0.1": answers["10.0.0.1"]}) is None


def test_to_migrate_adds_members_whose_machine_still_holds_the_migration_drop_in():
    listed = [member("10.0.0.1"), member("10.0.0.2"), member("10.0.0.3", "http")]
    assert etcd_peers.to_migrate(listed, []) == ["10.0.0.3"]
    assert etcd_peers.to_migrate(listed, ["10.0.0.2"]) == ["10.0.0.2", "10.0.0.3"]
    assert etcd_peers.to_migrate(listed[:2], []) == []


def test_migration_done_command():
    assert etcd_peers.migration_done_command() == \
        "rm -f /etc/systemd/system/etcd-member.service.d/21-air-peer-files.conf && systemctl daemon-reload"


def test_summaries_name_every_member():
    assert etcd_peers.migrate_summary("prod", ["10.0.0.1"], list(MEMBERS), "10.0.0.2", etcd_peers.MOVING) == (
        "moved to TLS peers: 10.0.0.1; 10.0.0.2: stopped while moving its peer URL to TLS and restarting on it; "
        "still plaintext: 10.0.0.3; etcd keeps quorum while one member is down: fix the cause and run "
        "`fab etcd.migrate-peers --cluster prod` again (it finishes what is left)")
    assert etcd_peers.migrate_summary("prod", [], list(MEMBERS)).startswith(
        "moved to TLS peers: none; still plaintext: 10.0.0.1, 10.0.0.2, 10.0.0.3; ")
    assert etcd_peers.renew_summary("prod", ["10.0.0.2"], ["10.0.0.2", "10.0.0.3", "10.0.0.1"], "10.0.0.3") == (
        "renewed: 10.0.0.2; 10.0.0.3: stopped during its restart on a new certificate; not renewed: 10.0.0.1; "
        "the old and the new certificates are both of the cluster's CA, so the members still trust each other; "
        "`fab etcd.certificates --cluster prod --renew` renews them all again")


# ---------------------------------------------------------------- migrate and renew, orchestrated on fakes

class Tunnels:
    """``etcd_api.tunnel`` faked: each member answers healthy unless ``failing`` says otherwise."""

    def __init__(self):
        self.failing: dict = {}   # address -> exception raised by its next health read
        self.updated: list = []   # (member id, peer URL)

    def __call__(self, ex, address, *a, **kw):
        import contextlib
        tunnels = self

        class Member:
            def healthy(self):
                if address in tunnels.failing:
                    raise tunnels.failing[address]
                return True

            def update_member(self, member_id, url):
                tunnels.updated.append((member_id, url))

        return contextlib.nullcontext(Member())


@pytest.fixture
def peers(cluster, monkeypatch):
    from types import SimpleNamespace
    from tasks.runbooks import etcd_members
    from tests.unit.fakes import FakeEtcd, FakeExecutor
    ex, etcd, tunnels = FakeExecutor(cluster), FakeEtcd(MEMBERS), Tunnels()
    s = SimpleNamespace(cluster=cluster, ex=ex, etcd=etcd, aside=[])
    s.move_etcd = lambda away_from, to: s.aside.append((away_from, to))
    release = SimpleNamespace(id="r1")
    facts = {m: {"release": "r1", "user_data": "/var/lib/flatcar-install/user_data", "edited": False}
             for m in MEMBERS}
    monkeypatch.setattr(etcd_peers.etcd_api, "tunnel", tunnels)
    monkeypatch.setattr(etcd_peers.records, "read_release", lambda etcd, cluster: (release, None))
    monkeypatch.setattr(etcd_peers.steps, "release_facts", lambda ex, a: facts[a])
    monkeypatch.setattr(etcd_peers.etcd_backup, "before_change", lambda s, task: None)
    monkeypatch.setattr(etcd_peers, "final_document", lambda *a: {"write_files": []})
    monkeypatch.setattr(etcd_peers.steps, "apply_document", lambda ex, a, doc, user_data: None)
    monkeypatch.setattr(etcd_peers.time, "sleep", lambda s: None)
    from tasks.runbooks import membership
    monkeypatch.setattr(membership, "hand_over_leadership", lambda s, leaving, via, task: s.aside.append(leaving))
    healthy = set(MEMBERS)
    monkeypatch.setattr(etcd_members, "ask_all", lambda ex, addresses, *a: {
        m: etcd_members.Answer(m, None, m in healthy, {"leader": "1"}, tuple((x, x[-1], False, True) for x in MEMBERS))
        for m in addresses})
    return SimpleNamespace(s=s, ex=ex, etcd=etcd, tunnels=tunnels, facts=facts, healthy=healthy)


def restarts(ex) -> list:
    return [h for h, c, _ in ex.calls if "systemctl restart etcd-member.service" in c]


def test_migrate_moves_each_member_in_two_phases_and_removes_the_migration_drop_in_once_healthy(peers):
    assert etcd_peers.migrate(peers.s) == list(MEMBERS)
    assert restarts(peers.ex) == list(MEMBERS) * 2
    assert peers.tunnels.updated == [(m[-1], f"https://{m}:2380") for m in MEMBERS]
    done = [h for h, c, _ in peers.ex.calls if c == etcd_peers.migration_done_command()]
    assert done == list(MEMBERS)


def test_migrate_refuses_a_cloud_config_changed_by_hand_before_any_change(peers):
    peers.facts["10.0.0.2"]["edited"] = True
    with pytest.raises(PreflightError, match=r"10\.0\.0\.2: /var/lib/flatcar-install/user_data was changed since "
                                             r"air-deploy wrote it.*; nothing was changed$"):
        etcd_peers.migrate(peers.s)
    assert not peers.ex.commands(changes_only=True) and not peers.ex.files


def test_migrate_refuses_two_members_before_any_change(peers):
    peers.etcd._members = peers.etcd._members[:2]
    with pytest.raises(PreflightError, match="needs three members or more; nothing was changed"):
        etcd_peers.migrate(peers.s)
    assert not peers.ex.calls


def lost_connection():
    return RemoteError("10.0.0.2: connection lost while restart etcd on TLS peers")


@pytest.mark.parametrize("failure, kind", [
    (RemoteError("etcd at 10.0.0.2: read: etcdserver: request timed out"), RemoteError),  # an etcd error
    (HealthError("10.0.0.2: etcd not healthy within 20 s after its restart (no quorum)"), RemoteError),
    (Interrupted("interrupted during the restart of 10.0.0.2"), Interrupted),
    (ConnectionResetError("Connection reset by peer"), ConnectionResetError),  # not ours: kept, summary said
])
def test_migrate_stopped_in_its_second_phase_says_who_moved_and_a_rerun_finishes(peers, failure, kind, capsys):
    moved = []

    def fail_on_second_tls_restart(host, command):
        if "systemctl restart" in command and host == "10.0.0.2" and any(h == "10.0.0.1" for h in moved):
            raise failure
    peers.ex.on_run = lambda host, command: (moved.append(host) if command == etcd_peers.migration_done_command()
                                             else fail_on_second_tls_restart(host, command))
    with pytest.raises(kind) as stopped:
        etcd_peers.migrate(peers.s)
    summary = ("moved to TLS peers: 10.0.0.1; 10.0.0.2: stopped while moving its peer URL to TLS and restarting "
               "on it; still plaintext: 10.0.0.3; ")
    if kind is ConnectionResetError:
        assert stopped.value is failure and summary in capsys.readouterr().err
    else:
        assert str(stopped.value).startswith(f"{failure}; {summary}")
    # The second run: 10.0.0.1 is TLS and done; 10.0.0.2's peer URL is https already, but its machine
    # still holds the migration drop-in; 10.0.0.3 is plaintext.
    peers.etcd._members[0].peer_urls = ("https://10.0.0.1:2380",)
    peers.etcd._members[1].peer_urls = ("https://10.0.0.2:2380",)
    peers.ex.files[("10.0.0.2", etcd_peers.machine.ETCD_MIGRATION_DROPIN_PATH)] = ("x", 0o644)
    peers.ex.files.pop(("10.0.0.1", etcd_peers.machine.ETCD_MIGRATION_DROPIN_PATH), None)
    peers.ex.calls.clear()
    peers.ex.on_run = None
    assert etcd_peers.migrate(peers.s) == ["10.0.0.2", "10.0.0.3"]
    assert restarts(peers.ex) == ["10.0.0.3", "10.0.0.2", "10.0.0.3"]


def test_renew_restarts_followers_first_the_leader_last_each_healthy_before_the_next(peers):
    for m in peers.etcd._members:
        m.peer_urls = (m.peer_urls[0].replace("http://", "https://"),)
    etcd_peers.ensure(peers.s.cluster, list(MEMBERS))
    folder = etcd_peers.folder_of(peers.s.cluster)
    before = {m: (folder / f"{m}.crt").read_bytes() for m in MEMBERS}
    # The fake's leader is member id "1", 10.0.0.1: last.
    assert etcd_peers.renew_all(peers.s) == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    assert restarts(peers.ex) == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    # Before each restart, leadership and the session's way into etcd are moved off that member.
    assert peers.s.aside == ["10.0.0.2", ("10.0.0.2", "10.0.0.1"), "10.0.0.3", ("10.0.0.3", "10.0.0.1"),
                             "10.0.0.1", ("10.0.0.1", "10.0.0.2")]
    for m in MEMBERS:
        new = (folder / f"{m}.crt").read_bytes()
        assert new != before[m] and certificates.issued_by(new, (folder / "ca.crt").read_bytes())
        assert peers.ex.files[(m, "/etc/air/etcd-peer/peer.crt.staged")][0] == new
        assert stat.S_IMODE((folder / f"{m}.key").stat().st_mode) == 0o600
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) == []


def test_renew_refuses_an_unhealthy_member_plaintext_peers_and_a_missing_ca(peers):
    etcd_peers.ensure(peers.s.cluster, list(MEMBERS))
    with pytest.raises(PreflightError, match=r"etcd peers of 10\.0\.0\.1, 10\.0\.0\.2, 10\.0\.0\.3 are plaintext"):
        etcd_peers.renew_all(peers.s)
    for m in peers.etcd._members:
        m.peer_urls = (m.peer_urls[0].replace("http://", "https://"),)
    peers.healthy.discard("10.0.0.3")
    with pytest.raises(HealthError, match=r"etcd not healthy on 10\.0\.0\.3 \(no quorum read\): not renewing; "
                                          r"nothing was changed"):
        etcd_peers.renew_all(peers.s)
    (etcd_peers.folder_of(peers.s.cluster) / "ca.key").unlink()
    with pytest.raises(ConfigError, match=r"ca\.key: missing: the members trust only the CA"):
        etcd_peers.renew_all(peers.s)
    assert not peers.ex.calls


def test_renew_stopped_at_the_second_member_says_which_run_a_new_certificate(peers):
    for m in peers.etcd._members:
        m.peer_urls = (m.peer_urls[0].replace("http://", "https://"),)
    etcd_peers.ensure(peers.s.cluster, list(MEMBERS))
    peers.tunnels.failing["10.0.0.3"] = HealthError("10.0.0.3: etcd not healthy within 20 s after its restart")
    with pytest.raises(RemoteError) as stopped:
        etcd_peers.renew_all(peers.s)
    assert str(stopped.value).endswith(
        "renewed: 10.0.0.2; 10.0.0.3: stopped during its restart on a new certificate; not renewed: 10.0.0.1; "
        "the old and the new certificates are both of the cluster's CA, so the members still trust each other; "
        "`fab etcd.certificates --cluster prod --renew` renews them all again")
    assert restarts(peers.ex) == ["10.0.0.2", "10.0.0.3"]


def test_renew_refuses_two_members(peers):
    peers.etcd._members = peers.etcd._members[:2]
    with pytest.raises(PreflightError, match="needs three members or more"):
        etcd_peers.renew_all(peers.s)


def test_renew_with_machines_is_refused_in_one_line(cluster):
    from conftest import fab_here  # tests/conftest.py, as pytest imported it (not a second copy)
    refused = fab_here("etcd.certificates", "--cluster", "prod", "--renew", "--machines", "10.0.0.1",
                       env={"AIR_CLUSTERS_DIR": str(cluster.file.parent)}, check=False)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.strip() == "error: --renew renews every member's certificate: leave out --machines"
