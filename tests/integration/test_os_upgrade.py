"""OS updates on the sandbox: an update staged by the update-engine stand-in, `fab os-upgrade` rebooting into it.

A sandbox machine's reboot is its container's restart (Docker's restart policy; systemd then
starts the enabled units, as Flatcar boots): the container's restart count says how many times
each machine rebooted. Each test stages updates with `fab sandbox.os-update`, runs the real
`fab`, and checks from outside: the machines' OS facts over SSH, the containers, the balancer's
routers file, etcd's members with etcdctl on the machines, a probe and a long request through
the balancer. The reboot of the 3 machines is the expensive part: one test does it once and
checks everything on it.
"""
import json
import re
import time

import pytest

from sandbox import testbed as sb
from tasks.commands import os_update
from tasks.commands.machine import SYSTEM_STATE

from tasks.model.errors import AirError
from tasks.model.os_upgrade_plan import BOOTING

from conftest import (BALANCER_ADDRESS, Poller, Probe, Rotation, Slow, _etcdctl, error_line, etcd_leader, fab,
                      healthy_members, listed,
                      local_copy, on, on_each, serving, wait_serving)

PORT = 80
BACK = re.compile(r"^os-upgrade: (\S+) runs OS (\S+), healthy, back in the balancer \(([\d.]+) s\)$")


def os_facts(cluster) -> dict:
    """machine -> its OsFacts, read over SSH."""
    return {m: os_update.parse_os_facts(text) for m, text in on_each(cluster, os_update.os_facts_command()).items()}


def restarts(sandbox) -> dict:
    """machine -> how many times its container restarted (rebooted)."""
    return {m["address"]: int(sb.docker("inspect", "-f", "{{.RestartCount}}", m["name"]).stdout)
            for m in sandbox["machines"] if not m["spare"]}


def member_healthy(cluster, address) -> bool:
    try:
        return healthy_members(cluster, [address]) == [address]
    except AirError:  # still booting: no SSH yet
        return False


def booted(cluster, address) -> bool:
    """Its etcd member healthy and its boot over, as the tasks judge a machine (``BOOTING``): on
    a loaded host etcd is up well before systemd has started everything else."""
    try:
        return member_healthy(cluster, address) and \
            on(cluster, address, SYSTEM_STATE, check=False).stdout.strip() not in BOOTING
    except AirError:  # its SSH went down again: not yet
        return False


def container(sandbox, address) -> str:
    return next(m["name"] for m in sandbox["machines"] if m["address"] == address)


class Quorum(Poller):
    """Asks every machine's etcd member (etcdctl there, over SSH) every 0.5 s in a thread: ``fewest``
    is the fewest members ever found healthy at once, ``rounds`` how many times it asked."""
    EVERY = 0.5

    def __init__(self, cluster):
        super().__init__(cluster)
        self.fewest, self.rounds = len(cluster.machines), 0

    def _healthy(self, ex, address) -> bool:
        command, stdin = _etcdctl(self.cluster, "endpoint health")
        try:
            return ex.run(address, command, stdin=stdin, check=False, change=False, deadline=5).exited == 0
        except AirError:  # rebooting: no SSH
            ex.forget(address)
            return False

    def poll(self, ex):
        healthy = ex.parallel(lambda a: self._healthy(ex, a), list(self.cluster.machines))
        self.fewest, self.rounds = min(self.fewest, sum(healthy)), self.rounds + 1


@pytest.fixture
def lock_free(local_serving):
    yield local_serving
    assert json.loads(fab("lock.status", "--cluster", "local", "--json").stdout) is None, "the lock outlived the task"


def test_plan_lists_the_machines_and_changes_nothing_and_status_shows_the_staged_update(sandbox, lock_free):
    cluster = lock_free
    staged = sb.stage_os_update(cluster.machines)
    before, rebooted = os_facts(cluster), restarts(sandbox)
    leader = etcd_leader(cluster)

    planned = fab("os-upgrade", "--cluster", "local", "--plan")
    lines = planned.stdout.splitlines()
    assert [line.split()[2].rstrip(":") for line in lines] == sorted(m for m in cluster.machines if m != leader) + [leader]
    for address in cluster.machines:
        assert f"{address}: reboot into OS {staged[address]} (runs {before[address].version})" in planned.stdout
    data = json.loads(fab("os-upgrade", "--cluster", "local", "--plan", "--json").stdout)
    assert [r["machine"] for r in data["reboots"]][-1] == leader and data["problem"] is None
    assert os_facts(cluster) == before and restarts(sandbox) == rebooted  # nothing rebooted, nothing unstaged

    status = fab("status", "--cluster", "local", check=False)
    assert status.returncode == 1
    for address in cluster.machines:
        assert (f"warning: {address}: update staged: {staged[address]}, reboot pending; "
                f"fix: `fab os-upgrade --cluster local`") in status.stdout
        row = next(line for line in status.stdout.splitlines() if line.startswith(address) and "(recorded)" in line)
        assert f"{before[address].version} ({staged[address]} staged)" in row and before[address].docker in row
    view = json.loads(fab("status", "--cluster", "local", "--json", check=False).stdout)
    assert {m["address"]: m["os"]["staged"] for m in view["machines"]} == staged


def test_os_upgrade_reboots_each_machine_once_one_at_a_time_without_a_failed_request(sandbox, lock_free, figures):
    cluster = lock_free
    staged = sb.stage_os_update(cluster.machines)
    rebooted = restarts(sandbox)
    slow = Slow(cluster, 8)  # a long request in flight: short ones alone hide a reboot without a drain
    with Probe(BALANCER_ADDRESS, PORT, max_seconds=300) as probe, Rotation(cluster) as rotation, \
            Quorum(cluster) as quorum:
        slow.start()
        assert slow.started_on.wait(10), slow.error
        finished = fab("os-upgrade", "--cluster", "local", check=False)
    assert finished.returncode == 0, finished.stderr
    done = [BACK.match(line).groups() for line in finished.stderr.splitlines() if BACK.match(line)]
    figures(f"os-upgrade of {len(done)} machines: " + ", ".join(f"{m} {s} s" for m, _, s in done)
            + f"; {probe.report('meanwhile')}; fewest in the balancer: {rotation.fewest}; fewest healthy etcd "
            f"members: {quorum.fewest} ({quorum.rounds} rounds)")
    assert sorted(m for m, _, _ in done) == sorted(cluster.machines)
    assert all(version == staged[m] for m, version, _ in done)
    # One at a time: never more than one out of the balancer, each rebooted exactly once.
    assert rotation.fewest == len(cluster.machines) - 1
    assert restarts(sandbox) == {m: n + 1 for m, n in rebooted.items()}
    # etcd kept its quorum throughout: one member down at a time, never two (and one was down: it saw the reboots).
    assert quorum.rounds > 10 and quorum.fewest == len(cluster.machines) - 1, (quorum.rounds, quorum.fewest)
    assert healthy_members(cluster, cluster.machines) == sorted(cluster.machines)
    slow.join(20)
    assert probe.failed == 0 and probe.covered, probe.report("meanwhile")
    assert slow.complete, (slow.lines, slow.error)
    after = os_facts(cluster)
    assert {m: (f.version, f.staged) for m, f in after.items()} == {m: (staged[m], None) for m in cluster.machines}
    assert sorted(listed(cluster)) == sorted(cluster.machines) and serving(cluster)
    assert fab("status", "--cluster", "local", check=False).returncode == 0


def test_a_machine_that_does_not_come_back_stops_the_task_within_the_reboot_timeout(sandbox, lock_free, tmp_path,
                                                                                    figures):
    cluster = lock_free
    gone = cluster.machines[1]
    others = [m for m in cluster.machines if m != gone]
    sb.stage_os_update([gone])
    rebooted = restarts(sandbox)
    reboot = 20
    hasty = local_copy(tmp_path, timeouts={"reboot": reboot})
    sb.docker("update", "--restart", "no", container(sandbox, gone))  # its reboot powers it off
    try:
        with Probe(BALANCER_ADDRESS, PORT) as probe:
            started = time.monotonic()
            failed = fab("os-upgrade", "--cluster", "local", env=hasty, check=False)
            took = time.monotonic() - started
        line = error_line(failed)
        figures(f"machine not back: the task failed {took:.1f} s after its start: {line}; {probe.report('meanwhile')}")
        assert line.startswith(f"error: {gone} did not come back within {reboot} s of its reboot (no SSH: ")
        assert line.endswith("); it is out of the balancer; the other machines were not touched")
        assert took < reboot + cluster.timeouts.connect + 15
        assert probe.failed == 0
        assert sorted(listed(cluster)) == sorted(others)  # the others serve, untouched
        assert {m: n for m, n in restarts(sandbox).items() if m != gone} == {m: rebooted[m] for m in others}
        assert healthy_members(cluster, others) == sorted(others)
    finally:
        sb.docker("update", "--restart", sb.REBOOTS, container(sandbox, gone))
        sb.docker("start", container(sandbox, gone))
    # Powered on again, it boots the staged OS; the fix status names puts it back in the balancer.
    deadline = time.monotonic() + 120
    while not booted(cluster, gone):
        assert time.monotonic() < deadline, f"{gone} did not come back after `docker start`"
        time.sleep(1)
    fab("upgrade-machine", "--cluster", "local", "--machine", gone)
    assert wait_serving(cluster) and os_facts(cluster)[gone].version is not None
