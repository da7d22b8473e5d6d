"""Rollouts by capacity on the sandbox's `local` cluster (3 machines, every one an etcd member).

`--max-unavailable 2` still takes one member at a time (etcd's leader last); `--max-failures 1`
with one machine made to fail (its unit refuses to start on any release but the cluster's current
one) restores that machine, goes on to the others, and exits non-zero naming it. Each deploy runs
with the probe (steady requests through the balancer), a long request in flight and a watch on
the balancer's routers file; the outcome is read from outside (release files, etcd's records, the
routers file).
"""
import json

import pytest

import cloudconfig
from cloudconfig.units import unit_name
from sandbox import testbed as sb
from tasks.commands.shell import q
from tasks.runbooks import records

from conftest import (BALANCER_ADDRESS, Probe, Rotation, Running, Slow, error_line, etcd_leader, etcd_of, fab, fab_here,
                      listed, machine_releases, on, serving)

CHANGED = "static_website"  # the component a change touches
PORT = 80
FAILING = f"/etc/systemd/system/{unit_name(CHANGED)}.d/zz-test-capacity.conf"


def current_record(cluster) -> dict:
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1]


def under_traffic(cluster, *args) -> tuple:
    """`fab deploy ARGS` with the probe, a long request in flight from the first drain and the routers
    file watched: (the finished process, the probe, the fewest machines routed to, the long request)."""
    slow = Slow(cluster, 8)
    with Probe(BALANCER_ADDRESS, PORT, max_seconds=600) as probe, Rotation(cluster) as watch:
        deploy = Running("deploy", "--cluster", "local", *args)
        deploy.wait_for("deploy: release ", within=300)
        slow.start()
        done = deploy.finish()
    slow.join(30)
    return done, probe, watch.fewest, slow


def upgraded_in_order(stderr: str) -> list:
    return [line.split()[1] for line in stderr.splitlines() if line.startswith("upgrade: ") and " runs " in line]


@pytest.fixture
def local_serving(installed):
    assert serving(installed), "the cluster is not serving at the start of the test"
    return installed


def test_bad_limits_are_refused_in_one_line_before_anything(local):
    """The cluster file is read (the sandbox's include must exist), the option refused, nothing else run."""
    for option, value in (("--max-unavailable", "0"), ("--max-unavailable", "120%"), ("--max-failures", "-1"),
                          ("--parallel", "none")):
        proc = fab_here("deploy", "--cluster", "local", option, value, check=False)
        assert proc.returncode == 1 and error_line(proc).startswith(f"error: command line: {option}: expected ")
        assert proc.stderr.count("\n") == 1, proc.stderr  # nothing ran before it


def test_max_unavailable_2_still_takes_one_member_at_a_time_the_leader_last(local_serving, figures):
    cluster, machines = local_serving, sorted(local_serving.machines)
    leader = etcd_leader(cluster)
    sb.commit_change(sb.Change(CHANGED))
    done, probe, fewest, slow = under_traffic(cluster, "--max-unavailable", "2", "--parallel", "2")
    figures(f"{probe.report('deploy at --max-unavailable 2')}; fewest machines in the balancer: "
            f"{fewest} of {len(machines)}")
    assert done.returncode == 0, done.stderr
    release = done.stdout.split()[-1]
    assert upgraded_in_order(done.stderr) == [m for m in machines if m != leader] + [leader]
    assert probe.failed == 0 and fewest == len(machines) - 1
    assert slow.complete, (slow.lines, slow.error)
    assert machine_releases(cluster) == dict.fromkeys(cluster.machines, release)
    assert sorted(listed(cluster)) == machines


def test_a_failure_within_the_budget_is_restored_and_the_rollout_goes_on(local_serving, figures):
    cluster, machines = local_serving, sorted(local_serving.machines)
    before = current_record(cluster)["id"]
    victim = next(m for m in machines if m != etcd_leader(cluster))  # the first one the rollout takes
    # Its changed unit starts on the cluster's current release only: the new one fails there, the restore works.
    on(cluster, victim, f"mkdir -p {q(FAILING.rsplit('/', 1)[0])} && printf %s {q(refuse_but(before))} > {q(FAILING)} "
                        f"&& systemctl daemon-reload")
    try:
        sb.commit_change(sb.Change(CHANGED))
        done, probe, fewest, slow = under_traffic(cluster, "--max-failures", "1", "--json")
    finally:
        on(cluster, victim, f"rm -f {q(FAILING)} && systemctl daemon-reload")
    figures(f"{probe.report('deploy with one machine failing, --max-failures 1')}; fewest machines in the "
            f"balancer: {fewest} of {len(machines)}")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: upgrade of {victim} to "), done.stderr
    assert "putting the settings back" not in done.stderr  # the release stays the cluster's, with its settings
    assert f"restored: {victim} is back on release {before} and in the balancer." in done.stderr
    result = json.loads(done.stdout)
    new = result["release"]
    others = [m for m in machines if m != victim]
    assert list(result["failed"]) == [victim] and sorted(result["upgraded"]) == others
    assert result["runs"] == {victim: before, **dict.fromkeys(others, new)}
    assert machine_releases(cluster) == result["runs"]
    record = current_record(cluster)
    assert record["id"] == new and record["outcome"] == f"partly upgraded: failed on {victim}"
    assert record["runs"] == result["runs"]
    assert probe.failed == 0 and fewest == len(machines) - 1
    assert slow.complete, (slow.lines, slow.error)
    assert sorted(listed(cluster)) == machines

    # The failure gone, a rolling upgrade brings that machine alone to the cluster's release.
    again = json.loads(fab("rolling-upgrade", "--cluster", "local", "--json").stdout)
    assert again["upgraded"] == [victim] and again["failed"] == {}
    assert machine_releases(cluster) == dict.fromkeys(cluster.machines, new) and serving(cluster)


def refuse_but(release_id: str) -> str:
    """A unit drop-in: the unit starts only while the machine's release file names ``release_id``."""
    check = f"grep -qx {release_id} {cloudconfig.RELEASE_FILE}"
    return f"[Service]\nExecStartPre=/bin/sh -c {q(check)}\n"
