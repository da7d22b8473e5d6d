"""A real day's faults on the sandbox: a stopped deploy, a hung host, Ctrl-C, a deleted lock, the etcd leader removed.

Every test runs a real `fab` in the background and causes the fault from
outside (signals to the process, `docker pause` of a container, `etcdctl
del`), while a probe sends requests through the balancer. Each checks the
outcome from outside (exit status and error line, the routers file, the
release files, etcd's records and members) and leaves the cluster serving,
which the next test checks first (the lock deleted behind a deploy leaves a
machine out of the balancer: the deploy of the test after it puts it back).
What a test committed and did not ship (a change, a slow start) stays committed
rather than deployed again by the test (a deploy costs the suite's CPU):
test_rolling_upgrade_while_a_deploy_runs... commits a fix and ships it all.
The figures of each (requests sent and failed, how long the failure took to
surface) are printed.
"""
import dataclasses
import json
import signal
import time

import pytest

from cloudconfig.units import ETCD_LOCAL_CLIENT_URL, peer_url
from tasks.commands import machine
from tasks.runbooks.publish import publish
from tasks.model import state
from tasks.runbooks import upgrade
from sandbox import testbed as sb
from tasks.net.executor import LOCK_CONFIRMED_FOR
from tasks.net.session import session

from conftest import (BALANCER_ADDRESS, SHORT_LEASE, SPARE_ADDRESSES, Probe, Rotation, Running, Slow, error_line, etcd_leader,
                      etcd_of, etcdctl, fab, listed, local_copy, machine_releases, make_fresh, on, on_each, routed_in, serving,
                      wait_serving)
from tasks.model import rollout_plan
from tasks.runbooks import balancer, membership, records

PORT = 80


def recorded(cluster):
    """(current release record, history, lock holder)."""
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1], records.history(client, cluster), \
            client.holder(state.lock_key(cluster))


def lock_holder(cluster):
    with etcd_of(cluster) as client:
        return client.holder(state.lock_key(cluster))


def wait_lock_free(cluster, within: float) -> bool:
    """True once nobody holds the cluster's lock, False when it is still held after ``within`` s."""
    deadline = time.monotonic() + within
    while lock_holder(cluster) is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


@pytest.fixture
def local_serving(installed):
    assert wait_serving(installed, 60), "the cluster is not serving at the start of the test"
    assert lock_holder(installed) is None, "the lock is held at the start of the test"
    return installed


def test_a_deploy_stopped_past_its_lease_loses_the_lock_and_another_completes(local_serving, clock, figures,
                                                                            tmp_path):
    cluster = local_serving
    sb.commit_change(sb.Change("static_website"))
    short = local_copy(tmp_path, timeouts={"lock": SHORT_LEASE})  # its lease is waited out: 5 s show it as 15 s do
    slow = Slow(cluster, 8)
    with Probe(BALANCER_ADDRESS, PORT) as probe, Rotation(cluster) as watch:
        slow.start()
        with clock("first deploy, to its first drain"):
            first = Running("deploy", "--cluster", "local", env=short)
            first.wait_for("balancer: routes to")
        first.proc.send_signal(signal.SIGSTOP)   # a laptop lid closed mid-upgrade
        with clock("the stopped deploy's lease running out"):  # polled: the time a fixed sleep would wait beyond it
            assert wait_lock_free(cluster, SHORT_LEASE + 5), "the stopped deploy's lock outlived its lease"
        with clock("second deploy while the first is stopped"):
            second = Running("deploy", "--cluster", "local")
            second.wait_for("build:")
            first.proc.send_signal(signal.SIGCONT)
            stopped = first.finish()
            done = second.finish()
    figures(f"{probe.report('two deploys, the first stopped past its lease')}; fewest machines in the balancer: "
          f"{watch.fewest} of {len(cluster.machines)}")
    assert error_line(stopped).startswith("error: lost the deploy lock of local (")
    assert done.returncode == 0, done.stderr
    slow.join(20)
    assert probe.failed == 0 and watch.fewest >= len(cluster.machines) - 1
    assert slow.complete, (slow.lines, slow.error)
    assert serving(cluster)


def test_a_paused_balancer_fails_the_deploy_within_its_deadline_and_frees_the_lock(sandbox, local_serving, clock, figures):
    cluster = local_serving
    sb.commit_change(sb.Change("static_website"))
    running = Running("deploy", "--cluster", "local")
    running.wait_for("balancer: routes to")
    sb.docker("pause", sandbox["balancer"]["name"])
    paused = time.monotonic()
    try:
        finished = running.finish(within=cluster.timeouts.alive + cluster.timeouts.command + 30)
        took = time.monotonic() - paused
    finally:
        sb.docker("unpause", sandbox["balancer"]["name"])
    figures(f"balancer paused mid-deploy: the deploy failed {took:.1f} s later: {error_line(finished)}")
    assert "no answer over SSH" in error_line(finished)
    assert took < cluster.timeouts.alive + 10
    assert recorded(cluster)[2] is None, "the lock outlived the failed deploy"
    # The drained machine is drift now; rolling-upgrade says so and fixes it.
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        fixed = fab("rolling-upgrade", "--cluster", "local")
    figures(probe.report("rolling-upgrade after the paused balancer"))
    assert "drifted" in fixed.stderr and probe.failed == 0
    assert serving(cluster)


def test_a_machine_paused_during_a_deploy_fails_it_at_once_and_frees_the_lock(sandbox, local_serving, figures):
    """Its change stays committed, not deployed: the next deploy ships it with its own."""
    cluster = local_serving
    sb.commit_change(sb.Change("static_website"))
    name = next(m["name"] for m in sandbox["machines"] if m["address"] == cluster.machines[-1])
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        running = Running("deploy", "--cluster", "local")
        running.wait_for("build:")
        sb.docker("pause", name)
        paused = time.monotonic()
        try:
            finished = running.finish(within=120)
            took = time.monotonic() - paused
        finally:
            sb.docker("unpause", name)
    figures(f"machine paused during a deploy: failed {took:.1f} s later: {error_line(finished)}; "
          f"{probe.report('meanwhile')}")
    assert f"unreachable: {cluster.machines[-1]}" in error_line(finished)
    assert "No machine was changed" in error_line(finished)
    assert recorded(cluster)[2] is None
    assert wait_serving(cluster)


def test_a_pull_failing_on_one_machine_changes_none_and_leaves_none_paused_or_staged(sandbox, local_serving, figures):
    """The registry unreachable from one machine (its packets rejected there): the rollout stops before
    any machine leaves the balancer, and the machines whose pull worked lose their staged files and
    update their OS again. (The pull's tries are cut to a few seconds for the test.) The release it
    rolls out is the one the test before built and left unshipped, or, run alone, one of a change
    of its own."""
    cluster = local_serving
    blocked = cluster.machines[-1]
    name = next(m["name"] for m in sandbox["machines"] if m["address"] == blocked)
    rule = ["OUTPUT", "-d", cluster.registry.address.rsplit(":", 1)[0], "-j", "REJECT"]
    hurried = dataclasses.replace(cluster, timeouts=dataclasses.replace(cluster.timeouts, pull=8))
    # Per machine: its OS update unit, a pause left behind, the staging folders in its /tmp.
    check = (f"systemctl is-active update-engine.service; [ ! -e {machine.OS_UPDATES_PAUSED} ] || echo paused; "
             "ls -d /tmp/tmp.* 2>/dev/null | wc -l")
    before, releases = on_each(cluster, check), machine_releases(cluster)
    with session(hurried, "test: a pull failing on one machine") as s:
        current, _ = records.read_release(s.etcd, hurried)
        release = publish(s.ex, hurried.build.host, hurried.build.branch).release
        if release.id == current.id:  # nothing committed since the cluster's release
            sb.commit_change(sb.Change("static_website"))
            release = publish(s.ex, hurried.build.host, hurried.build.branch).release
        sb.docker("exec", name, "iptables", "-I", *rule)
        try:
            with Probe(BALANCER_ADDRESS, PORT) as probe, pytest.raises(upgrade.UpgradeFailed) as failed:
                upgrade.Rollout(s, release, current).apply()
        finally:
            sb.docker("exec", name, "iptables", "-D", *rule)
    figures(f"registry unreachable from one machine: {str(failed.value).splitlines()[0][:160]}; {probe.report('meanwhile')}")
    assert f"{blocked}: pull release {release.id}" in str(failed.value)
    assert "No machine was changed." in str(failed.value)
    assert probe.failed == 0, probe.errors
    assert sorted(listed(cluster)) == sorted(cluster.machines) and machine_releases(cluster) == releases
    assert on_each(cluster, check) == before  # OS updates run, nothing paused, no staging folder left


def test_ctrl_c_mid_upgrade_puts_the_machine_back_records_interrupted_and_exits_130(local_serving, clock, figures):
    """The cluster serves on the release it had; the slow start stays committed (the next test
    replaces it, test_rolling_upgrade_while_a_deploy_runs... fixes it)."""
    cluster = local_serving
    before, _, _ = recorded(cluster)
    # Healthy 6 s after its start: the Ctrl-C lands while the machine in hand waits for it, however fast the
    # rest (with 3 s, a full run on busy CPUs once sent it after the machine was healthy again).
    sb.commit_change(sb.Change("static_website", "slow-start", "6"))
    slow = Slow(cluster, 6)  # a long request in flight too: short ones alone hide a restart without a drain
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        slow.start()
        assert slow.started_on.wait(10), slow.error
        running = Running("deploy", "--cluster", "local")
        line = running.wait_for("balancer: routes to")
        in_hand = next(m for m in cluster.machines if m not in routed_in(line))
        running.proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        finished = running.finish()
        took = time.monotonic() - interrupted
    figures(f"Ctrl-C mid-upgrade of {in_hand}: exit {finished.returncode} {took:.1f} s later; "
          f"{probe.report('meanwhile')}")
    last = finished.stderr.strip().splitlines()[-1]
    assert finished.returncode == 130 and last.startswith("interrupted: ") and "Traceback" not in finished.stderr
    assert f"{in_hand} is back on release {before['id']}" in last
    slow.join(20)
    assert probe.failed == 0 and slow.complete, (slow.lines, slow.error)
    current, history, holder = recorded(cluster)
    assert holder is None and current["id"] == before["id"]
    assert history[-1]["outcome"].startswith("interrupted")
    assert machine_releases(cluster)[in_hand] == before["id"] and in_hand in listed(cluster)
    assert wait_serving(cluster)


def test_the_lock_deleted_behind_a_deploy_stops_it_within_a_confirmation_of_its_loss(local_serving, figures):
    """The lock is read again before a change once its last confirmation is LOCK_CONFIRMED_FOR s old:
    changes may still begin within that time of the deletion, none after it. Each machine takes 2 s
    to become healthy (a slow start): a rollout that did not look would go on well past it.
    What the stopped deploy left out (a machine out of the balancer, on its release) stays so: the
    deploy of test_rolling_upgrade_while_a_deploy_runs... puts it back (a rolling-upgrade here
    restarted the two others on the slow start, only for that deploy to restart all three again);
    the slow start stays committed (that deploy fixes it too)."""
    cluster = local_serving
    sb.commit_change(sb.Change("static_website", "slow-start", "2"))
    with Probe(BALANCER_ADDRESS, PORT) as probe:
        running = Running("deploy", "--cluster", "local")
        running.wait_for("balancer: routes to")
        etcdctl(cluster, cluster.machines[0], f"del {state.lock_key(cluster)}")
        deleted, seen = time.monotonic(), len(running.lines)
        finished = running.finish()
    changes = [(line, at - deleted) for line, at in zip(running.lines[seen:], running.arrived[seen:])
               if line.startswith("balancer: routes to")]
    figures(f"lock deleted mid-deploy: {error_line(finished)}; balancer changes after it: "
            f"{[f'{s:.2f} s' for _, s in changes]}; {probe.report('meanwhile')}")
    assert error_line(finished).startswith("error: lost the deploy lock of local (/air/local/lock: the key is gone")
    # Only changes begun within the confirmation's age (each printed when done: a reload's time later).
    assert all(s < LOCK_CONFIRMED_FOR + 1.0 for _, s in changes), changes
    assert probe.failed == 0


def test_rolling_upgrade_while_a_deploy_runs_is_refused_naming_the_holder(installed, clock):
    """Its change is a fix: the deploy that completes also ships the changes the tests before left
    committed and takes their slow start away (the modules after this one deploy without it). It
    starts from what the test before left (a machine out of the balancer, on the release of the
    stopped deploy, or, when that test failed, whatever it left) and ends with the cluster serving:
    the deploy puts every machine on the fix and in the balancer."""
    cluster = installed
    assert lock_holder(cluster) is None, "the lock is held at the start of the test"
    sb.commit_change(sb.Change("static_website", "fix"))
    with clock("deploy of the fix, with a rolling-upgrade refused meanwhile"):
        running = Running("deploy", "--cluster", "local")
        try:
            running.wait_for("build:")
            refused = fab("rolling-upgrade", "--cluster", "local", check=False)
        finally:
            finished = running.finish()
    assert finished.returncode == 0, finished.stderr
    line = error_line(refused)
    assert line.startswith("error: /air/local/lock is held by who=") and "why=deploy master" in line
    assert serving(cluster)


def add_machine(cluster, new):
    """What `fab add-machine --via <first machine>` does, run in this process: a test's setup, not
    what it checks (a `fab` start is CPU the suite spends for nothing then)."""
    via = cluster.machines[0]
    with session(cluster, f"add-machine {new}", via) as s:
        membership.add(s, via, new)


def leader(cluster) -> str:
    """The address of the member leading etcd."""
    return etcd_leader(cluster)


def make_leader(cluster, address):
    """Move etcd's leadership to ``address`` (etcdctl move-leader, asked of the current leader)."""
    members = json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)
    target = next(m["ID"] for m in members["members"] if m.get("name") == address)
    current = leader(cluster)
    if current != address:
        etcdctl(cluster, current, f"--endpoints={ETCD_LOCAL_CLIENT_URL} move-leader {target:x}")
    assert leader(cluster) == address


@pytest.mark.parametrize("role", ["leader", "follower"])
def test_remove_machine_of_the_etcd_leader_or_a_follower_completes_under_traffic(sandbox, local_serving, role, clock, figures):
    cluster = local_serving
    spare = SPARE_ADDRESSES[0]
    make_fresh(cluster, [spare])
    add_machine(cluster, spare)
    if role == "leader":
        make_leader(cluster, spare)
    else:
        assert leader(cluster) != spare
    with Probe(BALANCER_ADDRESS, PORT) as probe, clock(f"remove-machine of the {role}"):
        removed = fab("remove-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare,
                      check=False)
    figures(f"remove-machine of the etcd {role}: exit {removed.returncode}; {probe.report('meanwhile')}")
    assert removed.returncode == 0, removed.stderr
    assert probe.failed == 0
    members = json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)
    assert sorted(m["name"] for m in members["members"]) == sorted(cluster.machines)
    assert leader(cluster) in cluster.machines
    assert serving(cluster)


def test_a_learner_left_behind_by_a_failed_add_is_removed_by_remove_machine(local_serving):
    cluster = local_serving
    spare = SPARE_ADDRESSES[1]
    make_fresh(cluster, [spare])
    # What an add-machine stopped right after `member add` leaves: a learner that never started.
    etcdctl(cluster, cluster.machines[0], f"member add {spare} --learner "
                                     f"--peer-urls={peer_url(spare)} >/dev/null")
    before = json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)
    assert any(m.get("isLearner") for m in before["members"])
    refused = fab("add-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine",
                  SPARE_ADDRESSES[0], check=False)
    assert "still a learner" in error_line(refused) and "fab remove-machine" in error_line(refused)
    fab("remove-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare)
    after = json.loads(etcdctl(cluster, cluster.machines[0], "member list -w json").stdout)
    assert sorted(m["name"] for m in after["members"]) == sorted(cluster.machines)
    assert serving(cluster)


def test_setup_cluster_resume_finishes_a_setup_that_stopped_after_etcd_formed(local_serving):
    cluster = local_serving
    # What a setup stopped after etcd formed leaves: no release recorded, units not started, no balancer.
    last = cluster.machines[-1]
    with etcd_of(cluster) as client:
        client.delete(state.release_key(cluster))
    units = " ".join(rollout_plan.units_of(cluster))
    on(cluster, last, f"systemctl stop {units}")
    with session(cluster, f"balancer.remove {last}") as s:  # what `fab balancer.remove` does
        balancer.Routers(s.ex).remove(last)
    broken = fab("rolling-upgrade", "--cluster", "local", check=False)
    assert "has no release recorded" in error_line(broken)
    resumed = fab("setup-cluster", "--cluster", "local", "--resume")
    assert "setup-cluster: recorded release" in resumed.stderr
    current, _, _ = recorded(cluster)
    assert current["outcome"] == "installed"
    assert on(cluster, last, f"systemctl is-active {units}").stdout.split() == ["active"] * len(cluster.components)
    assert sorted(listed(cluster)) == sorted(cluster.machines)
    assert serving(cluster)
