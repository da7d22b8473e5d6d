"""add-machine and remove-machine on the installed `local` cluster, as a user runs them.

Tests run in file order and share the cluster's state, which each one says:
the refusals change nothing; spare .24 is added (4 members), removed under
traffic through the balancer (3), added back (4), powered off and removed
(3, with a warning) and reset to fresh; then, with m3 powered off, removing
a healthy member is refused for quorum, and m3 comes back by itself. Every
check is made from outside: etcdctl on a machine, systemctl, the routers
file, and requests to the balancer. The module leaves the cluster serving on
its three machines and the spares fresh.
"""
import json
import threading
import time

import pytest
import requests

import cloudconfig

from tasks.commands import machine
from sandbox import testbed as sb
from tasks.net.executor import Executor

from conftest import (etcdctl, BALANCER_ADDRESS, MACHINE_ADDRESSES, SPARE_ADDRESSES, SUBNET, USER_DATA, error_line, etcd_of,
                      healthy_members,
                      fab, fab_here, listed, on, serving)
from tasks.model import rollout_plan
from tasks.runbooks import records
from tasks.runbooks import steps

M1, M2, M3 = MACHINE_ADDRESSES
SPARE, SPARE2 = SPARE_ADDRESSES
NAME = {M3: f"{sb.PREFIX}-m3", SPARE: f"{sb.PREFIX}-m4"}
BALANCED = f"http://{BALANCER_ADDRESS}/version"


# ---------------------------------------------------------------- looking from outside

def members(cluster, via=M1) -> list:
    """etcd's member list as etcdctl on ``via`` prints it: [{ID, name, peerURLs, ...}]."""
    return json.loads(etcdctl(cluster, via, "member list -w json").stdout)["members"]


def started_members(cluster, via=M1) -> list:
    """Addresses of the members that have started and vote (not learners)."""
    listed = members(cluster, via)
    assert all(m.get("name") and not m.get("isLearner") for m in listed), listed
    return sorted(m["name"] for m in listed)


def healthy_endpoints(cluster, via=M1) -> list:
    """The members (as ``via`` lists them) whose etcd answers healthy on their machine."""
    return healthy_members(cluster, [m["name"] for m in members(cluster, via) if m.get("name")])


def recorded_release(cluster, via=M1) -> str:
    with etcd_of(cluster, via) as client:
        release, _ = records.read_release(client, cluster)
        return release.id


def release_file(cluster, address) -> str:
    return on(cluster, address, "cat /etc/air/state/release").stdout.strip()


def unit_states(cluster, address) -> list:
    units = " ".join(rollout_plan.units_of(cluster))
    return on(cluster, address, f"systemctl is-active {units}", check=False).stdout.split()


def is_fresh(cluster, address) -> bool:
    with Executor(cluster) as ex:
        return ex.reachable(address) is None and machine.fresh_problems(steps.facts(ex, address)) == []


def answering_machines(count=40) -> set:
    return {requests.get(BALANCED, timeout=5).json()["machine"] for _ in range(count)}


def add(address, via=M1, check=True):
    return fab("add-machine", "--cluster", "local", "--via", via, "--machine", address, check=check)


def remove(address, via=M1, check=True):
    return fab("remove-machine", "--cluster", "local", "--via", via, "--machine", address, check=check)


def wait_until(what, predicate, within=120, every=1.0):
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {within} s")
        time.sleep(every)


class Traffic(threading.Thread):
    """Requests to the balancer, one after another, until stopped (at most ``seconds`` s / ``limit`` requests)."""

    def __init__(self, seconds=60, limit=2000):
        super().__init__(daemon=True)
        self.seconds, self.limit = seconds, limit
        self.answers = []   # (time answered, machine)
        self.failures = []  # (time, error)
        self.stopped = threading.Event()

    def run(self):
        deadline = time.monotonic() + self.seconds
        while not self.stopped.is_set() and time.monotonic() < deadline and \
                len(self.answers) + len(self.failures) < self.limit:
            try:
                answer = requests.get(BALANCED, timeout=5).json()["machine"]
                self.answers.append((time.monotonic(), answer))
            except (requests.RequestException, ValueError, KeyError) as e:
                self.failures.append((time.monotonic(), f"{type(e).__name__}: {e}"))
            time.sleep(0.01)

    def stop(self):
        self.stopped.set()
        self.join()


# ---------------------------------------------------------------- the module's cluster

@pytest.fixture(scope="module")
def cluster(installed, clock):
    """The installed cluster with fresh spares; at the end, spares that are not fresh are reset."""
    with clock("spares fresh at the start"):
        stale = [a for a in (SPARE, SPARE2) if not is_fresh(installed, a)]
        if stale:
            sb.reset_machines(stale)
    yield installed
    with clock("spares fresh at the end"):
        stale = [a for a in (SPARE, SPARE2) if not is_fresh(installed, a)]
        if stale:
            sb.reset_machines(stale)


@pytest.fixture(scope="module")
def ids_before(cluster):
    return sorted(m["ID"] for m in members(cluster))


# ---------------------------------------------------------------- refusals before anything changes

@pytest.mark.parametrize("args, expected, runner", [
    (("add-machine", "--via", SPARE2, "--machine", SPARE),
     f"error: no healthy etcd member reachable: etcd at {SPARE2} (SSH tunnel to its 127.0.0.1:2379): "
     f"cannot connect there", fab),
    (("remove-machine", "--via", SPARE2, "--machine", M3),
     f"error: no healthy etcd member reachable: etcd at {SPARE2} (SSH tunnel to its 127.0.0.1:2379): "
     f"cannot connect there", fab),
    (("remove-machine", "--via", M1, "--machine", SPARE2), f"error: {SPARE2} is not an etcd member of local", fab),
    # Refused before any host is contacted: run in this process.
    (("remove-machine", "--via", M1, "--machine", M1), "error: --via must be another member than --machine", fab_here),
    (("add-machine", "--via", M1, "--machine", f"{SPARE}44"),
     f"error: command line: --machine: expected an IPv4 or IPv6 address, got '{SPARE}44'", fab_here),
    (("add-machine", "--via", "m1.local;reboot", "--machine", SPARE),
     "error: command line: --via: expected an IPv4 or IPv6 address, got 'm1.local;reboot'", fab_here),
    (("remove-machine", "--via", M1, "--machine", SUBNET),
     f"error: command line: --machine: expected an IPv4 or IPv6 address, got '{SUBNET}'", fab_here),
    (("add-machine", "--via", M1), "error: --machine is required (an IPv4 or IPv6 address)", fab_here),
], ids=["add-via-non-member", "remove-via-non-member", "remove-non-member", "remove-via-itself",
        "add-bad-machine", "add-bad-via", "remove-bad-machine", "add-no-machine"])
def test_refused_before_anything_changes(cluster, ids_before, args, expected, runner):
    proc = runner(args[0], "--cluster", "local", *args[1:], check=False)
    assert error_line(proc).startswith(expected)
    assert sorted(m["ID"] for m in members(cluster)) == ids_before
    assert listed(cluster) == list(cluster.machines)


def test_refusals_left_the_spares_fresh(cluster):
    assert is_fresh(cluster, SPARE) and is_fresh(cluster, SPARE2)


# ---------------------------------------------------------------- add, remove under traffic, add back

def check_member(cluster, address, clock):
    everyone = sorted([*cluster.machines, address])
    assert started_members(cluster, via=M1) == everyone
    assert started_members(cluster, via=address) == everyone
    assert healthy_endpoints(cluster, via=address) == everyone
    release = recorded_release(cluster)
    assert {a: release_file(cluster, a) for a in everyone} == {a: release for a in everyone}
    assert unit_states(cluster, address) == ["active"] * len(cluster.components)
    assert address in listed(cluster)
    with clock(f"balancer sends {address} traffic"):
        wait_until(f"{address} answering through the balancer", lambda: address in answering_machines(12), 20, 0.2)


def test_add_a_spare(cluster, clock):
    with clock(f"add-machine {SPARE}"):
        proc = add(SPARE)
    release = recorded_release(cluster)
    assert f"add-machine: {SPARE} is a member and serves release {release}" in proc.stderr
    check_member(cluster, SPARE, clock)


def test_remove_it_while_traffic_flows(cluster, clock):
    traffic = Traffic()
    traffic.start()
    wait_until("traffic through the balancer", lambda: len(traffic.answers) >= 10, 10, 0.1)
    with clock(f"remove-machine {SPARE} under traffic"):
        proc = remove(SPARE, check=False)
        removed = time.monotonic()
    time.sleep(2)
    traffic.stop()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"remove-machine: {SPARE} removed and wiped" in proc.stderr

    assert SPARE in {m for _, m in traffic.answers}, "the spare never answered while it was a member"
    late = [(t - removed, m) for t, m in traffic.answers if t > removed and m == SPARE]
    assert late == [], "answered by the removed machine after remove-machine returned"
    assert {m for t, m in traffic.answers if t > removed} == set(cluster.machines)
    assert traffic.failures == [], f"{len(traffic.failures)} of {len(traffic.answers)} requests failed"
    print(f"{len(traffic.answers)} requests answered during the removal, none failed")

    assert started_members(cluster) == sorted(cluster.machines)
    assert healthy_endpoints(cluster) == sorted(cluster.machines)
    assert unit_states(cluster, SPARE) == ["inactive"] * len(cluster.components)
    assert SPARE not in on(cluster, cluster.balancer.host, f"cat {cluster.balancer.routers_file}").stdout
    assert listed(cluster) == list(cluster.machines)
    assert is_fresh(cluster, SPARE)  # wiped: it can be added again
    # Back to the administrator's base cloud config, byte for byte: a reboot starts none of ours.
    assert on(cluster, SPARE, f"cat {USER_DATA[SPARE]}").stdout == cloudconfig.render(sb.base_document())
    assert on(cluster, SPARE, f"test -e {USER_DATA[SPARE]}.air-base", check=False).exited == 1


def test_a_removed_machine_can_be_added_back(cluster, clock):
    with clock(f"add-machine {SPARE} again"):
        add(SPARE)
    check_member(cluster, SPARE, clock)


# ---------------------------------------------------------------- a member that is powered off

def test_remove_a_powered_off_machine(cluster, clock):
    with clock(f"power off {NAME[SPARE]} (docker stop)"):
        sb.docker("stop", NAME[SPARE])
    with clock(f"remove-machine {SPARE} while it is off"):
        proc = remove(SPARE, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [f"warning: {SPARE} did not answer: it was removed from etcd and the balancer only; "
                        f"`fab machine.wipe --cluster local --machine {SPARE}` wipes it once it answers, before it "
                        f"is used again"]
    assert started_members(cluster) == sorted(cluster.machines)
    assert healthy_endpoints(cluster) == sorted(cluster.machines)
    assert listed(cluster) == list(cluster.machines)
    assert SPARE not in answering_machines(12)


def test_the_removed_machine_powered_on_again_does_not_rejoin(cluster, clock):
    with clock(f"power on {NAME[SPARE]} and wait until booted"):
        sb.docker("start", NAME[SPARE])
        sb.wait_booted(sb.Node(NAME[SPARE], SPARE, "spare"))
    assert not is_fresh(cluster, SPARE)  # it was never wiped
    time.sleep(2)  # its etcd starts with its old data and is turned away by the members
    assert started_members(cluster) == sorted(cluster.machines)
    assert healthy_endpoints(cluster) == sorted(cluster.machines)
    assert listed(cluster) == list(cluster.machines)
    # What the warning of its removal said: machine.wipe finishes it (refused while it was a member).
    with clock(f"machine.wipe {SPARE}"):
        wiped = fab("machine.wipe", "--cluster", "local", "--machine", SPARE)
    assert wiped.stdout.strip() == f"{SPARE} wiped"
    assert is_fresh(cluster, SPARE)
    assert started_members(cluster) == sorted(cluster.machines)


# ---------------------------------------------------------------- quorum

def test_removing_a_healthy_member_while_another_is_off_is_refused(cluster, clock):
    before = members(cluster)
    routers = listed(cluster)
    with clock(f"power off {NAME[M3]} (docker stop)"):
        sb.docker("stop", NAME[M3])
    try:
        with clock(f"remove-machine {M2} refused for quorum"):
            proc = remove(M2, check=False)
        line = error_line(proc)
        assert line == (f"error: refusing to remove {M2}: the 2 members left need 2 running for quorum, "
                        f"but only 1 answer ({M3} down). Nothing was changed (--force removes it anyway)")
        assert members(cluster) == before
        assert listed(cluster) == routers
        assert unit_states(cluster, M2) == ["active"] * len(cluster.components)
    finally:
        with clock(f"power on {NAME[M3]} and wait until the cluster serves again"):
            sb.docker("start", NAME[M3])
            wait_until("the cluster serving again with m3 back", lambda: serving(cluster), 180, 2)
    assert healthy_endpoints(cluster) == sorted(cluster.machines)
    assert unit_states(cluster, M3) == ["active"] * len(cluster.components)
    wait_until(f"{M3} answering through the balancer", lambda: M3 in answering_machines(12), 30, 0.5)


def test_the_cluster_is_left_serving_on_its_three_machines(cluster):
    assert serving(cluster)
    assert started_members(cluster) == sorted(cluster.machines)
    assert answering_machines(30) == set(cluster.machines)
