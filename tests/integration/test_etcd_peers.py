"""etcd locked down, seen from outside: plaintext clients on each machine's loopback only (on its
address, for the workers' proxies, TLS with a certificate of the cluster's CA), peers over TLS
with certificates of the cluster's CA, a member without one cannot join, and one holding another
member's cannot use it. `etcd.certificates --renew` and `etcd.migrate-peers` (stopped halfway,
then run again) under the probe and a long request.

Uses the installed `local` cluster. One spare is added with add-machine and removed again; the
other is made an intruder (a learner announced by hand, started with a certificate of another
CA), then its membership is removed and it is wiped as remove-machine wipes a machine. Both
spares are fresh at the end.
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

from conftest import (etcdctl, SPARE_ADDRESSES, USER_DATA, Probe, Slow, error_line, etcd_leader, etcd_of, fab,
                      healthy_members, make_fresh, on, serving, stale)
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


def test_a_member_holding_another_members_certificate_is_refused(cluster):
    """What binds a certificate to its member is etcd's check of the peer certificate's addresses
    against the connection's source: from member B's machine, member C's certificate and key (B
    could have stolen them) are refused by A, and B's own are accepted."""
    peers, (a, b, c) = folder(cluster), cluster.machines
    stolen = "/root/stolen-peer"
    with Executor(cluster) as ex:
        ex.write_files(b, [(f"{stolen}.crt", (peers / f"{c}.crt").read_bytes(), 0o600),
                           (f"{stolen}.key", (peers / f"{c}.key").read_bytes(), 0o600)])
    try:
        since = on(cluster, a, "date '+%Y-%m-%d %H:%M:%S'").stdout.strip()
        request = f"curl -sS --http1.1 -m 5 --cacert {ETCD_PEER_CA} https://{a}:{ETCD_PEER_PORT}/members"
        refused = on(cluster, b, f"{request} --cert {stolen}.crt --key {stolen}.key", check=False)
        own = on(cluster, b, f"{request} --cert {ETCD_PEER_CERT} --key {ETCD_PEER_KEY}")
    finally:
        on(cluster, b, f"rm -f {stolen}.crt {stolen}.key")
    assert refused.exited != 0 and not refused.stdout, refused.stdout + refused.stderr
    assert sorted(m["name"] for m in json.loads(own.stdout)) == sorted(cluster.machines)
    rejected = on(cluster, a, f"journalctl -u etcd-member.service --since {since!r} --no-pager -o cat "
                              f"| grep 'rejected connection from \"{b}:'").stdout
    assert f"certificate is valid for {c}, not {b}" in rejected, rejected


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
        with clock("intruder refused"):
            deadline = time.monotonic() + 30
            while True:
                rejected = on(cluster, cluster.machines[0],
                              f"journalctl -u etcd-member.service --since {since!r} --no-pager -o cat "
                              f"| grep 'rejected connection' | grep -F {INTRUDER!r} | tail -1", check=False).stdout
                if INTRUDER in rejected or time.monotonic() > deadline:
                    break
                time.sleep(0.25)
        assert INTRUDER in rejected and "certificate" in rejected, rejected
        intruder = next(m for m in members(cluster) if m["ID"] == int(announced.id))
        assert not intruder.get("name") and intruder.get("isLearner")  # announced, never joined
        assert healthy_members(cluster, cluster.machines) == sorted(cluster.machines)
    finally:
        with etcd_of(cluster) as client:
            client.remove_member(announced.id)
        with clock("intruder wiped"), Executor(cluster) as ex:  # as remove-machine wipes the machine it removes
            steps.wipe(ex, INTRUDER, USER_DATA[INTRUDER])
    assert stale(cluster, [INTRUDER]) == []
    assert sorted(m["name"] for m in members(cluster)) == sorted(cluster.machines)
    assert serving(cluster)


# ---------------------------------------------------------------- renewing, migrating, under traffic

def shown_certificate(cluster, address) -> tuple:
    """(serial, not valid after) of the certificate ``address``'s peer port shows, read from outside."""
    shown = s_client(address, folder(cluster) / "ca.crt").stdout
    pem = shown[shown.index("-----BEGIN CERTIFICATE-----"):shown.index("-----END CERTIFICATE-----") + 25]
    return certificates.validity(pem.encode())


def member_list(cluster) -> dict:
    """address -> peer URLs, as etcdctl on the first machine lists the members."""
    return {m["name"]: m["peerURLs"] for m in members(cluster)}


def under_traffic(cluster, seconds):
    """The probe and a long request of ``seconds`` through the balancer: longer than the action under
    test takes (each test checks the request outlasted it, so that it was in flight throughout)."""
    probe = Probe(cluster.balancer.host, cluster.balancer.http_port, max_requests=20000, max_seconds=600)
    slow = Slow(cluster, seconds)
    return probe, slow


def test_renew_rotates_every_member_certificate_one_at_a_time_under_traffic(cluster, clock):
    before = {a: shown_certificate(cluster, a) for a in cluster.machines}
    # Refused, nothing changed, while a member is down.
    down = cluster.machines[2]
    on(cluster, down, f"systemctl stop {machine.ETCD_UNIT}")
    try:
        refused = fab("etcd.certificates", "--cluster", "local", "--renew", check=False)
    finally:
        on(cluster, down, machine.restart_etcd_command())
    assert error_line(refused).startswith(f"error: etcd not healthy on {down} (") and \
        error_line(refused).endswith(": not renewing; nothing was changed"), refused.stderr
    assert {a: shown_certificate(cluster, a) for a in cluster.machines} == before
    wait_healthy(cluster)
    leader = etcd_leader(cluster)
    probe, slow = under_traffic(cluster, 25)  # --renew: 5-7 s on a busy sandbox, more on a loaded CI
    with probe:
        slow.start()
        assert slow.started_on.wait(30) and slow.error is None, slow.error
        with clock("etcd.certificates --renew"):
            renewed = fab("etcd.certificates", "--cluster", "local", "--renew")
        done = time.monotonic()
        slow.join(60)
    assert probe.covered and probe.failed == 0, probe.report("etcd.certificates --renew")
    assert slow.complete, (slow.error, slow.lines[-3:])
    assert slow.ended > done, "the long request ended before --renew was done: give it more seconds"
    restarted = [line.split()[2].rstrip(":") for line in renewed.stderr.splitlines()
                 if line.startswith("etcd peers: ") and "new certificate" in line]
    assert sorted(restarted) == sorted(cluster.machines) and restarted[-1] == leader  # the leader last
    after = {a: shown_certificate(cluster, a) for a in cluster.machines}
    a_year = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=certificates.MEMBER_DAYS)
    for address in cluster.machines:
        assert after[address][0] != before[address][0], address
        assert abs(after[address][1] - a_year) < datetime.timedelta(minutes=10), (address, after[address])
        kept = (folder(cluster) / f"{address}.crt").read_bytes()
        assert certificates.validity(kept) == after[address]  # the folder keeps what the member shows
    assert healthy_members(cluster, cluster.machines) == sorted(cluster.machines)
    assert member_list(cluster) == {a: [peer_url(a)] for a in cluster.machines}


def wait_healthy(cluster, within=60) -> None:
    deadline = time.monotonic() + within
    while healthy_members(cluster, cluster.machines) != sorted(cluster.machines):
        assert time.monotonic() < deadline, f"etcd not healthy on every machine within {within} s"
        time.sleep(0.5)


FAULT = f"{machine.ETCD_DROPIN_PATH.rsplit('/', 1)[0]}/99-test-fault.conf"


def to_plaintext(cluster) -> None:
    """The cluster's peers back to plaintext, one member at a time (the state of a cluster installed
    before peers had TLS): each member's peer URL http in the membership and in its drop-in, then restarted."""
    for address in cluster.machines:
        member_id = next(str(m["ID"]) for m in members(cluster) if m["name"] == address)
        with etcd_of(cluster, via=next(a for a in cluster.machines if a != address)) as client:
            client.update_member(member_id, f"http://{address}:{ETCD_PEER_PORT}")
        on(cluster, address, f"sed -i 's#https://{address}:#http://{address}:#g' {machine.ETCD_DROPIN_PATH} && "
                             f"{machine.restart_etcd_command()}")
        wait_healthy(cluster)
    assert set(etcd_peers.plaintext(etcd_of_members(cluster))) == set(cluster.machines)


def etcd_of_members(cluster) -> list:
    with etcd_of(cluster) as client:
        return client.members()


def test_migrate_peers_stopped_on_the_second_member_says_who_moved_and_a_rerun_finishes(cluster, clock):
    first, second, third = cluster.machines
    with clock("peers back to plaintext (setup)"):
        to_plaintext(cluster)
    # etcd on the second machine will not start on TLS peers: the migration stops in its second phase there.
    on(cluster, second, f"printf '%s\\n' '[Service]' \"ExecStartPre=/bin/sh -c 'if grep -q LISTEN_PEER_URLS=https "
                        f"{machine.ETCD_DROPIN_PATH}; then echo fault: no start on TLS peers >&2; exit 1; fi'\" "
                        f"> {FAULT} && systemctl daemon-reload")
    probe, slow = under_traffic(cluster, 30)  # both runs: 11-14 s on a busy sandbox, more on a loaded CI
    try:
        with probe:
            slow.start()
            assert slow.started_on.wait(30) and slow.error is None, slow.error
            with clock("etcd.migrate-peers, stopped"):
                stopped = fab("etcd.migrate-peers", "--cluster", "local", check=False)
            line = error_line(stopped)
            assert line.endswith(
                f"moved to TLS peers: {first}; {second}: stopped while moving its peer URL to TLS and restarting "
                f"on it; still plaintext: {third}; etcd keeps quorum while one member is down: fix the cause and "
                f"run `fab etcd.migrate-peers --cluster local` again (it finishes what is left)"), line
            assert f"{second}: restart etcd on TLS peers failed" in line, line
            # Halfway: the second listed https but down, quorum kept by the other two.
            assert member_list(cluster)[second] == [peer_url(second)]
            assert healthy_members(cluster, [first, third]) == [first, third]
            on(cluster, second, f"rm -f {FAULT} && systemctl daemon-reload && "
                                f"systemctl reset-failed {machine.ETCD_UNIT}")
            with clock("etcd.migrate-peers, again"):
                finished = fab("etcd.migrate-peers", "--cluster", "local")
            done = time.monotonic()
            slow.join(60)
    finally:
        on(cluster, second, f"rm -f {FAULT} && systemctl daemon-reload")
    assert probe.covered and probe.failed == 0, probe.report("etcd.migrate-peers stopped, then run again")
    assert slow.complete, (slow.error, slow.lines[-3:])
    assert slow.ended > done, "the long request ended before both runs were done: give it more seconds"
    assert finished.stdout.strip() == f"etcd peers of local: moved to TLS: {second}, {third}"
    assert member_list(cluster) == {a: [peer_url(a)] for a in cluster.machines}
    assert healthy_members(cluster, cluster.machines) == sorted(cluster.machines)
    left = on(cluster, first, "ls /etc/systemd/system/etcd-member.service.d/").stdout.split()
    assert left == [machine.ETCD_DROPIN_PATH.rsplit("/", 1)[1]]
    for address in cluster.machines:
        assert f"LISTEN_PEER_URLS={peer_url(address)}" in on(cluster, address, f"cat {machine.ETCD_DROPIN_PATH}").stdout
        assert "Verify return code: 0 (ok)" in s_client(address, folder(cluster) / "ca.crt").stdout
    assert fab("etcd.migrate-peers", "--cluster", "local").stdout.strip() == \
        "etcd peers of local: already TLS, nothing to do"
    assert serving(cluster)
