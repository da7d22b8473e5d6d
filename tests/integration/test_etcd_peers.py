"""etcd locked down, seen from outside: plaintext clients on each machine's loopback only (on its
address, for the workers' proxies, TLS with a certificate of the cluster's CA), peers over TLS
with certificates of the cluster's CA, and a member without one cannot join.

Uses the installed `local` cluster. One spare is added with add-machine and removed again; the
other is made an intruder (a learner announced by hand, started with a certificate of another
CA), then its membership is removed and it is reset. Both spares are fresh at the end.
"""
import datetime
import json
import subprocess
import time

import pytest

from cloudconfig.units import (ETCD_CLIENT_PORT, ETCD_PEER_CA, ETCD_PEER_CERT, ETCD_PEER_DIR, ETCD_PEER_KEY,
                               ETCD_PEER_PORT, etcd_dropin, peer_url)
from sandbox import testbed as sb
from tasks.model import certificates
from tasks.runbooks import etcd_peers
from tasks.commands import machine
from tasks.model import state
from tasks.net.executor import Executor

from conftest import etcdctl, SPARE_ADDRESSES, etcd_of, fab, healthy_members, make_fresh, on, serving
from tasks.runbooks import steps

SPARE, INTRUDER = SPARE_ADDRESSES


@pytest.fixture(scope="module")
def cluster(installed):
    yield installed
    with Executor(installed) as ex:
        stale = [a for a in (SPARE, INTRUDER) if machine.fresh_problems(steps.facts(ex, a))]
    if stale:
        sb.reset_machines(stale)


def folder(cluster):
    return etcd_peers.folder_of(cluster)


def members(cluster) -> list:
    return json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)["members"]


def s_client(address: str, ca, *extra) -> subprocess.CompletedProcess:
    """openssl s_client to ``address``'s peer port, the server's certificate checked against ``ca``."""
    return subprocess.run(["openssl", "s_client", "-connect", f"{address}:{ETCD_PEER_PORT}", "-CAfile", str(ca),
                           "-verify_return_error", *extra], input="", capture_output=True, text=True, timeout=20)


def peer_request(address: str, ca, cert=None, key=None) -> subprocess.CompletedProcess:
    """GET /members on ``address``'s peer port (a peer-only endpoint), with or without a client certificate.
    Only file names reach argv, never key material."""
    client = ["--cert", str(cert), "--key", str(key)] if cert else []
    return subprocess.run(["curl", "-sS", "--http1.1", "-m", "5", "--cacert", str(ca), *client,
                           f"https://{address}:{ETCD_PEER_PORT}/members"], capture_output=True, text=True, timeout=20)


def client_request(address: str, ca, cert=None, key=None) -> subprocess.CompletedProcess:
    """GET /version on ``address``'s client port over TLS (where workers' etcd proxies connect), with or
    without a client certificate."""
    client = ["--cert", str(cert), "--key", str(key)] if cert else []
    return subprocess.run(["curl", "-sS", "--http1.1", "-m", "5", "--cacert", str(ca), *client,
                           f"https://{address}:{ETCD_CLIENT_PORT}/version"], capture_output=True, text=True, timeout=20)


def test_the_client_port_answers_the_host_only_with_a_certificate_of_the_cluster_ca(cluster):
    peers = folder(cluster)
    for address in cluster.machines:
        refused = client_request(address, peers / "ca.crt")
        assert refused.returncode != 0 and "etcdserver" not in refused.stdout, refused.stdout + refused.stderr
        plain = subprocess.run(["curl", "-sS", "-m", "5", f"http://{address}:{ETCD_CLIENT_PORT}/version"],
                               capture_output=True, text=True, timeout=20)
        assert "etcdserver" not in plain.stdout, plain.stdout  # no plaintext client on the network
    address = cluster.machines[0]
    shown = client_request(address, peers / "ca.crt", peers / f"{address}.crt", peers / f"{address}.key")
    assert shown.returncode == 0 and "etcdserver" in shown.stdout, shown.stdout + shown.stderr
    # ... while the tool still reaches etcd, through SSH to the machine's loopback.
    with etcd_of(cluster) as client:
        assert sorted(state.member_address(m) for m in client.members()) == sorted(cluster.machines)


def test_the_peer_port_shows_a_certificate_of_the_cluster_ca(cluster):
    ca = folder(cluster) / "ca.crt"
    for address in cluster.machines:
        shown = s_client(address, ca, "-verify_ip", address)  # its address is its certificate's name
        assert "subject=\n" in shown.stdout, shown.stdout + shown.stderr  # no common name (grpc-proxy refuses one)
        assert "issuer=CN = air local etcd peer CA\n" in shown.stdout
        assert "Verify return code: 0 (ok)" in shown.stdout
    # Checked against another CA, the same certificate does not verify.
    other = folder(cluster).parent / "other-ca.crt"
    other.write_bytes(certificates.new_ca("other", datetime.datetime.now(datetime.timezone.utc))[0])
    try:
        assert s_client(cluster.machines[0], other).returncode != 0
    finally:
        other.unlink()


def test_a_peer_without_a_certificate_of_the_cluster_ca_is_refused(cluster):
    peers, address, other = folder(cluster), cluster.machines[0], cluster.machines[1]
    refused = peer_request(address, peers / "ca.crt")
    assert refused.returncode != 0 and "bad certificate" in refused.stderr, refused.stderr
    # A member's own certificate is no use from another address (etcd checks it names the caller's) ...
    elsewhere = peer_request(address, peers / "ca.crt", peers / f"{other}.crt", peers / f"{other}.key")
    assert elsewhere.returncode != 0
    # ... and is answered from that member's machine, with the files it holds.
    answered = on(cluster, other, f"curl -sS --http1.1 -m 5 --cacert {ETCD_PEER_CA} --cert {ETCD_PEER_CERT} "
                                  f"--key {ETCD_PEER_KEY} https://{address}:{ETCD_PEER_PORT}/members")
    assert sorted(u for m in json.loads(answered.stdout) for u in m["peerURLs"]) == \
        sorted(peer_url(a) for a in cluster.machines)
    journal = on(cluster, address, "journalctl -u etcd-member.service -n 50 --no-pager -o cat").stdout
    assert f"certificate is valid for {other}, not " in journal


def test_every_machine_holds_its_certificate_for_etcd_only(cluster):
    peers = folder(cluster)
    for address in cluster.machines:
        listed = on(cluster, address, f"stat -c '%n %a %U' {ETCD_PEER_DIR} {ETCD_PEER_DIR}/*").stdout.split("\n")
        assert sorted(filter(None, listed)) == sorted([f"{ETCD_PEER_DIR} 700 etcd"] + [
            f"{ETCD_PEER_DIR}/{name} 600 etcd" for name in ("ca.crt", "peer.crt", "peer.key")])
        key_digest = on(cluster, address, f"sha256sum {ETCD_PEER_DIR}/peer.key").stdout.split()[0]
        local = subprocess.run(["sha256sum", str(peers / f"{address}.key")], capture_output=True, text=True)
        assert key_digest == local.stdout.split()[0]
        # No container sees it: it is not in the secrets folder they mount.
        mounted = on(cluster, address, "docker inspect -f '{{range .Mounts}}{{.Source}} {{end}}' "
                                       "$(docker ps -q)").stdout.split()
        assert mounted and not any(m.startswith(ETCD_PEER_DIR) for m in mounted)
        assert "etcd-peer" not in on(cluster, address, "ls -A /etc/air/secrets").stdout


def test_add_machine_issues_the_new_members_certificate(cluster, clock):
    peers = folder(cluster)
    for name in (f"{SPARE}.crt", f"{SPARE}.key"):
        (peers / name).unlink(missing_ok=True)
    try:
        with clock("add-machine"):
            added = fab("add-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", SPARE)
        assert f"etcd peers: local: making the certificate of {SPARE}" in added.stderr
        assert {(peers / f"{SPARE}.crt").stat().st_mode & 0o777, (peers / f"{SPARE}.key").stat().st_mode & 0o777} == {0o600}
        shown = s_client(SPARE, peers / "ca.crt", "-verify_ip", SPARE)
        assert "subject=\n" in shown.stdout and "Verify return code: 0 (ok)" in shown.stdout
        joined = {m["name"]: m for m in members(cluster)}[SPARE]
        assert joined["peerURLs"] == [peer_url(SPARE)] and not joined.get("isLearner")
        assert healthy_members(cluster, list(cluster.machines) + [SPARE]) == sorted(list(cluster.machines) + [SPARE])
    finally:
        with clock("remove-machine"):
            fab("remove-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", SPARE)
    assert serving(cluster)


def test_a_member_with_a_certificate_of_another_ca_cannot_join(cluster, clock):
    make_fresh(cluster, [INTRUDER])
    now = datetime.datetime.now(datetime.timezone.utc)
    intruder_ca, intruder_ca_key = certificates.new_ca("intruder", now)
    cert, key = certificates.new_member(INTRUDER, intruder_ca, intruder_ca_key, now)
    cluster_ca = (folder(cluster) / "ca.crt").read_bytes()  # it trusts the members: only its own certificate is bad
    with etcd_of(cluster) as client:
        announced = client.add_member(peer_url(INTRUDER), learner=True)
    try:
        addresses = list(cluster.machines) + [INTRUDER]
        since = on(cluster, cluster.machines[0], "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        with Executor(cluster) as ex:
            ex.write_files(INTRUDER, etcd_peers.machine_files(cluster_ca, cert, key) +
                           [(machine.ETCD_DROPIN_PATH, etcd_dropin(cluster, INTRUDER, addresses, "existing"), 0o644)])
            ex.run(INTRUDER, f"{etcd_peers.own_command()} && {machine.start_etcd_command()}")
        rejected = ""
        with clock("intruder refused"):
            deadline = time.monotonic() + 30
            while INTRUDER not in rejected and time.monotonic() < deadline:
                time.sleep(1)
                rejected = on(cluster, cluster.machines[0],
                              f"journalctl -u etcd-member.service --since {since!r} --no-pager -o cat "
                              f"| grep 'rejected connection' | grep -F {INTRUDER!r} | tail -1", check=False).stdout
        assert INTRUDER in rejected and "certificate" in rejected, rejected
        intruder = next(m for m in members(cluster) if m["ID"] == int(announced.id))
        assert not intruder.get("name") and intruder.get("isLearner")  # announced, never joined
        assert healthy_members(cluster, cluster.machines) == sorted(cluster.machines)
    finally:
        with etcd_of(cluster) as client:
            client.remove_member(announced.id)
        sb.reset_machines([INTRUDER])
    assert sorted(m["name"] for m in members(cluster)) == sorted(cluster.machines)
    assert serving(cluster)
