"""The shared balancer, from outside: two clusters on one host, HTTPS and client addresses, drains, health.

The sandbox's `local` and `local2` share the balancer host, each with its own
haproxy instance and frontends. Traffic is checked through the balancer
only, as a client sees it; haproxy's own view is read from the cluster's
admin socket (``balancer.servers``); the clusters' files are read on the
balancer host. Every test leaves both clusters serving.
"""
import http.client
import json
import re
import socket
import ssl
import time
from dataclasses import replace

import pytest

from tasks.runbooks import balancer
from tasks.commands import haproxy
from sandbox import testbed as sb

from conftest import Probe, Slow, fab, on, serving
from tasks.net.executor import Executor


@pytest.fixture(scope="module")
def clusters(installed, local2):
    """Both sandbox clusters installed and serving: `local` (the `installed` fixture) and `local2`."""
    return {"local": installed, "local2": local2}


def balancer_files(cluster) -> dict:
    """path -> bytes of the cluster's own files on the balancer host, and its haproxy processes."""
    paths = [haproxy.unit_path(cluster), cluster.balancer.config, cluster.balancer.routers_file]
    host = cluster.balancer.host
    with Executor(cluster) as ex:
        files = {p: ex.read_file(host, p) for p in paths}
        unit = haproxy.unit_name(cluster)
        main = ex.run(host, f"systemctl show -p MainPID --value {unit}").stdout.strip()
        files["processes"] = main + " " + ex.run(host, f"pgrep -P {main} | sort", check=False).stdout.strip()
    return files


# The balancer's operations, each on an executor of its own (as a task has one).

def set_machines(cluster, machines) -> list:
    with Executor(cluster) as ex:
        return balancer.Routers(ex).set(machines)


def add(cluster, machine) -> list:
    with Executor(cluster) as ex:
        return balancer.Routers(ex).add(machine)


def remove(cluster, machine) -> list:
    with Executor(cluster) as ex:
        return balancer.Routers(ex).remove(machine)


def listed(cluster) -> list:
    with Executor(cluster) as ex:
        return balancer.Routers(ex).listed()


def servers(cluster) -> list:
    with Executor(cluster) as ex:
        return balancer.Routers(ex).servers()


def setup(cluster) -> list:
    with Executor(cluster) as ex:
        return balancer.setup(ex)


def request(cluster, path, https=False, timeout=10):
    """(status, body, the client's own address) of GET ``path`` through the cluster's frontend."""
    host = cluster.balancer.host
    if https:
        context = ssl.create_default_context(cafile=str(sb.STATE / "ca.crt"))
        conn = http.client.HTTPSConnection(host, cluster.balancer.https_port, timeout=timeout, context=context)
    else:
        conn = http.client.HTTPConnection(host, cluster.balancer.http_port, timeout=timeout)
    try:
        conn.request("GET", path)
        own = conn.sock.getsockname()[0]
        response = conn.getresponse()
        return response.status, response.read().decode(), own
    finally:
        conn.close()


def status_of(cluster, machine) -> set:
    """haproxy's status of the machine's servers, without the check counter ("UP 1/2" is UP, going
    down or just readied)."""
    return {s.status.split()[0] for s in servers(cluster) if s.machine == machine}


# ---------------------------------------------------------------- setup

def test_setup_is_idempotent_and_each_cluster_has_its_own_instance(clusters):
    local, local2 = clusters["local"], clusters["local2"]
    before = balancer_files(local2)
    first = fab("balancer.setup", "--cluster", "local")
    second = fab("balancer.setup", "--cluster", "local")
    assert "already up to date" in first.stderr and "already up to date" in second.stderr
    assert balancer_files(local2) == before
    units = [haproxy.unit_name(c) for c in (local, local2)]
    active = on(local, local.balancer.host, f"systemctl is-active {' '.join(units)}").stdout.split()
    assert active == ["active", "active"]
    assert balancer_files(local)["processes"].split()[0] != before["processes"].split()[0]  # two processes


def test_a_changed_configuration_of_one_cluster_reloads_it_alone(clusters):
    local, local2 = clusters["local"], clusters["local2"]
    before, other = balancer_files(local2), balancer_files(local)
    changed = replace(local2, balancer=replace(local2.balancer, tunnel=1800))
    try:
        with Probe(local.balancer.host, local.balancer.http_port) as probe:
            assert setup(changed) == [local2.balancer.config]
            time.sleep(1)
        assert "    timeout tunnel 1800s\n" in balancer_files(local2)[local2.balancer.config]
        main, workers = balancer_files(local2)["processes"].split(" ", 1)
        assert main == before["processes"].split(" ", 1)[0] and workers != before["processes"].split(" ", 1)[1]
    finally:
        setup(local2)
    assert probe.failed == 0 and probe.sent > 5, probe.report("local")
    assert balancer_files(local) == other
    assert balancer_files(local2)[local2.balancer.config] == before[local2.balancer.config]


# ---------------------------------------------------------------- HTTPS and client addresses

@pytest.mark.parametrize("name", ["local", "local2"])
def test_https_through_the_balancer_verified_by_the_sandbox_ca_reports_the_clients_own_address(clusters, name):
    cluster = clusters[name]
    for https in (True, False):
        status, body, own = request(cluster, "/version", https=https)
        assert status == 200, body
        answer = json.loads(body)
        assert answer["machine"] in cluster.machines
        assert answer["client"] == own and own != cluster.balancer.host, (answer, own)
    # The certificate is checked: a client trusting another CA is refused.
    with pytest.raises(ssl.SSLError):
        context = ssl.create_default_context()  # the system's CAs only
        with socket.create_connection((cluster.balancer.host, cluster.balancer.https_port), timeout=5) as raw:
            context.wrap_socket(raw, server_hostname=cluster.balancer.host)


# ---------------------------------------------------------------- one cluster's deploy, the other's traffic

@pytest.mark.parametrize("deployed, probed", [("local", "local2"), ("local2", "local")])
def test_a_deploy_of_one_cluster_leaves_the_other_untouched(clusters, deployed, probed, clock):
    other = clusters[probed]
    before = balancer_files(other)
    sb.commit_change(sb.Change("static_website"))
    with clock(f"deploy {deployed} while {probed} is probed"):
        with Probe(other.balancer.host, other.balancer.http_port) as probe:
            out = fab("deploy", "--cluster", deployed)
    assert probe.covered and probe.sent > 20, probe.report(probed)
    assert probe.failed == 0, probe.report(probed)
    # The deploy did roll its machines, each restarting the changed component (and whatever an
    # earlier module left on another version).
    restarted = re.findall(r"^upgrade: \S+ runs \S+, restarted (.*) \(", out.stderr, re.M)
    assert len(restarted) == len(clusters[deployed].machines), out.stderr
    assert all("static_website" in r.split(", ") for r in restarted), out.stderr
    assert balancer_files(other) == before
    # The other cluster catches up, so both stay on the newest release.
    fab("deploy", "--cluster", probed)


# ---------------------------------------------------------------- drains

def test_a_long_request_to_a_drained_machine_finishes_before_it_leaves(clusters):
    local = clusters["local"]
    slow = Slow(local, 5)
    slow.start()
    assert slow.started_on.wait(10) and slow.machine in local.machines, (slow.lines, slow.error)
    others = [m for m in local.machines if m != slow.machine]
    try:
        with Executor(local) as ex:
            routers = balancer.Routers(ex)
            routers.set(others)  # drain: returns once the slow request ended
            drained = time.monotonic()
            assert status_of(local, slow.machine) == {"MAINT"}
            assert slow.complete, (slow.lines, slow.error)
            assert slow.ended <= drained
            routers.set(list(local.machines))
    finally:
        set_machines(local, list(local.machines))
    assert status_of(local, slow.machine) == {"UP"}
    assert sorted(listed(local)) == sorted(local.machines)


def test_the_drain_timeout_bounds_the_wait_and_cuts_nothing(clusters, capfd):
    local = clusters["local"]
    hasty = replace(local, timeouts=replace(local.timeouts, drain=2))
    slow = Slow(local, 6)
    slow.start()
    assert slow.started_on.wait(10) and slow.machine in local.machines, (slow.lines, slow.error)
    try:
        remove(hasty, slow.machine)
        gone = time.monotonic()
        assert slow.ended is None, "the drain waited for the request beyond its timeout"
        assert status_of(local, slow.machine) == {"MAINT"}
        slow.join(15)
        assert slow.complete, (slow.lines, slow.error)  # maintenance cuts no established connection
        assert slow.ended > gone
    finally:
        add(local, slow.machine)
    assert "still open after 2 s" in capfd.readouterr().err
    assert sorted(listed(local)) == sorted(local.machines)


def test_a_restart_of_haproxy_keeps_a_drained_machine_out(clusters):
    local = clusters["local"]
    machine = local.machines[0]
    try:
        set_machines(local, list(local.machines[1:]))
        on(local, local.balancer.host, f"systemctl restart {haproxy.unit_name(local)}")
        assert status_of(local, machine) == {"MAINT"}
        answered = {json.loads(request(local, "/version")[1])["machine"] for _ in range(12)}
        assert machine not in answered and answered
    finally:
        set_machines(local, list(local.machines))
    assert status_of(local, machine) == {"UP"}


# ---------------------------------------------------------------- health

def test_an_unhealthy_router_is_out_within_two_seconds_and_back_when_healthy(clusters):
    local = clusters["local"]
    machine = local.machines[-1]
    on(local, machine, "systemctl stop air-router.service")  # outside any task
    try:
        time.sleep(2)
        assert status_of(local, machine) == {"DOWN"}
        answered = [json.loads(request(local, "/version")[1])["machine"] for _ in range(15)]
        assert machine not in answered
    finally:
        on(local, machine, "systemctl start air-router.service")
    deadline = time.monotonic() + 60
    while status_of(local, machine) != {"UP"} and time.monotonic() < deadline:
        time.sleep(0.5)
    assert status_of(local, machine) == {"UP"}
    answered = {json.loads(request(local, "/version")[1])["machine"] for _ in range(12)}
    assert machine in answered
    assert serving(local)


# ---------------------------------------------------------------- least privilege

CAP_NET_BIND_SERVICE = 1 << 10


def proc_status(node: str, pid: str) -> dict:
    """The fields of /proc/PID/status of a process on a sandbox host, read from this machine (docker exec)."""
    text = sb.inside(node, f"cat /proc/{int(pid)}/status")
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def test_each_instance_runs_as_haproxys_user_with_the_capability_to_bind_low_ports_alone(clusters, sandbox):
    node = sandbox["balancer"]["name"]
    uid = sb.inside(node, f"id -u {haproxy.HAPROXY_USER}").strip()
    assert uid.isdigit() and uid != "0"
    for name, cluster in clusters.items():
        main, workers = balancer_files(cluster)["processes"].split(" ", 1)
        pids = [main, *workers.split()]
        assert len(pids) >= 2, pids  # the master and its worker
        for pid in pids:
            status = {k: v.strip() for k, v in proc_status(node, pid).items()}
            assert status["Name"] == "haproxy"
            assert status["Uid"].split() == [uid] * 4 and status["Gid"].split()[0] != "0", (name, pid, status)
            for field in ("CapEff", "CapPrm", "CapBnd"):
                assert int(status[field], 16) == CAP_NET_BIND_SERVICE, (name, pid, field, status[field])
            assert status["NoNewPrivs"] == "1"
        # The admin socket is that user's, mode 600, and air-deploy's runtime API calls still get through.
        owner = sb.inside(node, f"stat -c '%U %a' {haproxy.admin_socket(cluster)}").split()
        assert owner == [haproxy.HAPROXY_USER, "600"]
        shown = json.loads(fab("balancer.status", "--cluster", name, "--json").stdout)
        assert {s["machine"] for s in shown if s["status"].startswith("UP")} == set(cluster.machines)
        # HTTP and HTTPS through the ports it bound (local's are 80 and 443) still answer.
        assert request(cluster, "/version")[0] == 200 and request(cluster, "/version", https=True)[0] == 200
    assert min(c.balancer.http_port for c in clusters.values()) < 1024
