"""Deploy, lock, history and rollback on the sandbox's `local` cluster, as a user runs them.

Every deploy is a real `fab deploy` of a change committed to the sample
application (``sandbox.commit_change``). Traffic is checked from outside,
through the balancer only: a background probe sends steady GET /version
requests while a deploy runs and counts every failed one. "Nothing
restarted" is read on the machines: the start time of every Air container.
The tests run in file order and each leaves the cluster serving (checked
at the start of the next); the last release deployed is whatever the last
test left, recorded in etcd as usual. To spare deploys, a few reuse the one
before (said in their docstrings): the no-op deploy follows the first
deploy, and the rollback test rolls back the killed test's last deploy.
The module ends with master ahead of the cluster's release on the changed
component only, as the first test expects on a rerun.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

from cloudconfig.units import container_name
from tasks.model import release_settings as kept
from tasks.model import state
from sandbox import testbed as sb
from tasks.net.executor import Executor

from conftest import (ROOT, SHORT_HEALTH, SHORT_LEASE, Probe, etcd_of, fab, get_version, listed, local_copy,
                      machine_releases, on_each, routed_in, serving, wait_serving)
from tasks.runbooks import records
from tasks.runbooks import steps

CHANGED = "static_website"   # the component a normal change touches
BROKEN = "air_frontend"      # the component a broken release breaks


# ---------------------------------------------------------------- reading the cluster from outside

def balancer_view(sandbox, machines, tries=60) -> dict:
    """machine -> its /version answer, asked through the balancer until every machine answered."""
    seen = {}
    for _ in range(tries):
        answer = get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"])
        seen[answer["machine"]] = answer
        if set(seen) >= set(machines):
            break
    assert set(seen) == set(machines), f"the balancer answered from {sorted(seen)}, not from all of {machines}"
    return seen


def start_times(cluster, machines=None) -> dict:
    """machine -> {component: start time of its container}."""
    containers = {container_name(c.name): c.name for c in cluster.components}
    command = f"docker inspect -f '{{{{.Name}}}} {{{{.State.StartedAt}}}}' {' '.join(containers)} 2>/dev/null; true"
    found = on_each(cluster, command, machines)
    return {m: {containers[name.lstrip("/")]: started for name, started in (line.split() for line in out.splitlines())}
            for m, out in found.items()}


def recorded(cluster):
    """(current release record, history, lock holder) from the cluster's etcd."""
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1], records.history(client, cluster), \
            client.holder(state.lock_key(cluster))


def released(proc) -> str:
    """The release id a successful deploy, rollback or rolling-upgrade printed."""
    lines = [line for line in proc.stdout.splitlines() if line.startswith("release ")]
    assert lines, proc.stdout
    return lines[-1].split()[1]


def error_line(proc) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors, f"no error line:\n{proc.stderr}"
    return errors[0]


def assert_on_release(sandbox, cluster, release_id, components=None):
    """Every machine on ``release_id``: its release file, etcd's record and the router's answer through
    the balancer, which also names every component's live version (etcd's, none down)."""
    assert machine_releases(cluster) == {m: release_id for m in cluster.machines}
    current, _, _ = recorded(cluster)
    assert current["id"] == release_id
    versions = {name: c["version"] for name, c in current["components"].items()}
    for answer in balancer_view(sandbox, cluster.machines).values():
        assert answer["release"] == release_id, answer
        assert answer["components"] == versions, answer
    if components:
        for name, version in components.items():
            assert versions[name] == version


# ---------------------------------------------------------------- fixtures

@pytest.fixture
def machines(local_serving):
    return list(local_serving.machines)


def deploy(*args, check=True, timeout=600, env=None):
    return fab("deploy", "--cluster", "local", *args, check=check, timeout=timeout, env=env)


# ---------------------------------------------------------------- the tests

def test_deploy_rolls_every_machine_without_a_failed_request(sandbox, local_serving, clock):
    before, _, _ = recorded(local_serving)
    sb.commit_change(sb.Change(CHANGED))
    with clock("deploy of a one-component change, under the probe"):
        with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
            proc = deploy()
    print("\n" + probe.report("deploy"))
    new = released(proc)
    assert new != before["id"]
    assert probe.covered, "the probe stopped at its bound before the deploy ended"
    assert probe.failed == 0, probe.errors
    assert set(probe.releases) == {before["id"], new}, "the probe should see the old release, then the new"
    assert_on_release(sandbox, local_serving, new)
    current, history, holder = recorded(local_serving)
    assert current["outcome"] == "succeeded" and history[-1]["id"] == new and history[-1]["outcome"] == "succeeded"
    assert holder is None
    assert current["components"][CHANGED]["version"] != before["components"][CHANGED]["version"]
    same = lambda record: {k: (v["version"], v["digest"]) for k, v in record["components"].items() if k != CHANGED}
    assert same(current) == same(before)
    assert all(v["manifest"].startswith("sha256:") for v in current["components"].values())  # pinned by digest


def test_deploy_of_nothing_new_restarts_nothing(sandbox, local_serving, clock):
    """One deploy of what the cluster already runs (after the previous test's deploy, whose record
    keeps the checkouts' commits and build inputs), from a machine 20 ms away: the sandbox's relay
    carries every connection to it."""
    current, history, _ = recorded(local_serving)
    started = start_times(local_serving)
    sb.set_rtt(20)
    try:
        with clock("no-op deploy (20 ms away)"):
            began = time.monotonic()
            proc = deploy("--json")
            seconds = time.monotonic() - began
        relayed = sb.relay_stats()
    finally:
        sb.set_rtt(0)
    print(f"\nno-op deploy, 20 ms away: {seconds:.1f} s")
    outcome = json.loads(proc.stdout)
    assert outcome["release"] == current["id"]
    assert "nothing to do" in proc.stderr
    assert "balancer:" not in proc.stderr and "upgrade:" not in proc.stderr
    assert seconds < 20
    assert start_times(local_serving) == started
    assert recorded(local_serving)[1] == history  # no release recorded for it
    # The record keeps the checkouts' commits and build inputs: a deploy of them builds nothing, and
    # pushes nothing.
    assert recorded(local_serving)[0]["inputs"].keys() == current["components"].keys()
    assert f"every source and build input is release {current['id']}'s: nothing to build" in proc.stderr
    assert "built sha256:" not in proc.stderr and "push:" not in proc.stderr
    trips = outcome["round_trips"]
    # Every machine was asked for its facts, etcd through one of them; each host was logged in to
    # once, through the relay.
    assert set(local_serving.machines) <= set(trips["hosts"])
    assert sum(kinds.get("etcd", 0) for kinds in trips["hosts"].values()) > 0
    logins = sum(kinds.get("login", 0) for kinds in trips["hosts"].values())
    assert relayed["rtt_ms"] == 20 and relayed["connections"] >= logins >= len(local_serving.machines)


def test_a_broken_release_stops_at_the_first_machine_which_goes_back(sandbox, local_serving, machines, clock,
                                                                      tmp_path):
    old, history, _ = recorded(local_serving)
    started = start_times(local_serving)
    sb.commit_change(sb.Change(BROKEN, "broken"))
    hasty = local_copy(tmp_path, timeouts={"healthy": SHORT_HEALTH})  # the health timeout is waited out
    with clock("deploy of a broken release (waits for the health timeout)"):
        proc = deploy(check=False, env=hasty)
    assert proc.returncode != 0, proc.stderr
    error = error_line(proc)
    print(f"\nbroken deploy: {error}")
    after = start_times(local_serving)
    touched = [m for m in machines if after[m] != started[m]]
    assert len(touched) == 1, f"restarted: {touched}"
    first = touched[0]
    assert first in error and "failed" in error
    assert f"{first} is back on release {old['id']}" in proc.stderr
    # The first machine runs the old release again; the others were never touched.
    assert_on_release(sandbox, local_serving, old["id"])
    assert sorted(listed(local_serving)) == sorted(machines)
    current, history_after, holder = recorded(local_serving)
    assert holder is None  # the lock is free (`fab lock.status` says so in the lock's own test)
    assert current["outcome"] == "restored after a failed upgrade"
    assert history_after[:-1] == history and history_after[-1]["outcome"].startswith("failed: ")
    assert history_after[-1]["id"] != old["id"]

    # Repair master, and deploy the repair.
    sb.commit_change(sb.Change(BROKEN, "fix"))
    with clock("deploy of the repair"):
        repaired = released(deploy())
    assert repaired not in (old["id"], history_after[-1]["id"])
    assert_on_release(sandbox, local_serving, repaired)
    assert serving(local_serving)


def test_a_second_deploy_is_refused_while_the_lock_is_held(sandbox, local_serving, clock):
    holder = {"who": "test_deploy@pytest", "since": state.now(), "why": "holding the lock for a test"}
    with etcd_of(local_serving) as client:
        with client.acquire(state.lock_key(local_serving), holder, local_serving.timeouts.lock):
            with clock("deploy refused by the lock"):
                began = time.monotonic()
                proc = deploy(check=False)
                seconds = time.monotonic() - began
            status = fab("lock.status", "--cluster", "local").stdout.strip()
    print(f"\nrefused in {seconds:.1f} s: {proc.stderr.strip()}")
    assert proc.returncode == 1
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("error: ") and "held by" in line
    assert all(f"{k}={v}" in line for k, v in holder.items()), line
    assert seconds < 10
    assert status == ", ".join(f"{k}={v}" for k, v in holder.items())  # as the refusal names it
    assert fab("lock.status", "--cluster", "local").stdout.strip() == "free"


def test_a_killed_deploy_leaves_a_lock_that_expires_and_a_cluster_that_serves(sandbox, local_serving, machines,
                                                                              clock, tmp_path):
    """Killed midway, a deploy leaves its lock to expire and the cluster serving; the next deploy
    finishes the job. The rollback test rolls this last deploy back."""
    before, _, _ = recorded(local_serving)
    sb.commit_change(sb.Change(CHANGED))
    short = local_copy(tmp_path, timeouts={"lock": SHORT_LEASE})  # its lease is waited out: 5 s show it as 15 s do
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "deploy", "--cluster", "local"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **short})
    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    try:
        # Killed in the worst place: the first machine is out of the balancer and has the new
        # release installed, but is not yet (checked and) back in the balancer.
        deadline = time.monotonic() + 120
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line.startswith("balancer: routes to"):
                break
        routed_to = routed_in(line)
        upgrading = next(m for m in machines if m not in routed_to)
        with Executor(local_serving) as ex:
            while steps.release_facts(ex, upgrading)["release"] == before["id"]:
                assert time.monotonic() < deadline, f"{upgrading} never got the new release"
                time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
        killed = time.monotonic()
    _, _, holder = recorded(local_serving)
    assert holder is not None and holder["why"].startswith("deploy"), "the killed deploy should still hold the lock"
    print(f"\nkilled the deploy once {upgrading} had the new release, out of the balancer "
          f"(balancer: {', '.join(listed(local_serving))})")

    # The cluster keeps serving from the machines in the balancer while the lock runs out.
    lease = SHORT_LEASE
    answered = 0
    with clock("lock of the killed deploy expiring"):
        while recorded(local_serving)[2] is not None:
            assert time.monotonic() - killed < lease + 5, f"the lock outlived its {lease} s lease"
            get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"])
            answered += 1
            time.sleep(0.5)
    print(f"killed deploy: lock free {time.monotonic() - killed:.1f} s after the kill "
          f"(lease {lease} s); {answered} requests through the balancer meanwhile, all answered")
    # Free: the loop above ended on etcd holding no lock (`fab lock.status` says so in the lock's own test).

    with clock("deploy after the killed one"):
        with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
            release = released(deploy())
    print(probe.report("deploy after the killed one"))
    assert probe.failed == 0, probe.errors
    _, history, holder = recorded(local_serving)
    # A new release, none that failed, the newest in the history (the one the rollback test rolls back).
    assert release != before["id"] and release not in [r["id"] for r in history if r["outcome"].startswith("failed")]
    assert history[-1]["id"] == release and history[-1]["outcome"] == "succeeded" and holder is None
    assert_on_release(sandbox, local_serving, release)
    assert serving(local_serving)


def test_rollback_returns_every_machine_to_the_previous_release(sandbox, local_serving, clock):
    """Rolls back the deploy the killed test made last (it relies on it: the newest release in the
    history is that deploy, succeeded, with an earlier successful one to go back to)."""
    current, history, _ = recorded(local_serving)
    deployed = current["id"]
    assert history[-1]["id"] == deployed and history[-1]["outcome"] == "succeeded", \
        "the previous test should leave a deploy to roll back"
    # The previous successful release (the one the cluster ran before the killed test).
    previous = next(r for r in reversed(history) if r["outcome"] == "succeeded" and r["id"] != deployed)
    with clock("rollback"):
        with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
            rolled = released(fab("rollback", "--cluster", "local"))
    print("\n" + probe.report("rollback"))
    assert rolled == previous["id"]
    assert probe.failed == 0, probe.errors
    assert_on_release(sandbox, local_serving, previous["id"])
    current, history, holder = recorded(local_serving)
    assert current["rollback_from"] == deployed and holder is None
    assert [(r["id"], r["outcome"]) for r in history[-2:]] == [(deployed, "succeeded"), (previous["id"], "succeeded")]

    listing = fab("releases", "--cluster", "local").stdout.splitlines()
    print("\n".join(listing))
    assert len(listing) == len(history)
    for line, record in zip(listing, history):
        assert record["id"] in line and record["outcome"][:10] in line
    assert listing[-1].startswith("*") and previous["id"] in listing[-1]
    assert sum(line.startswith("*") for line in listing) == sum(r["id"] == previous["id"] for r in history)
    as_json = json.loads(fab("releases", "--cluster", "local", "--json").stdout)
    assert as_json == [kept.shown(r) for r in history]  # a secret's digest is never printed


def test_a_machine_powered_off_stops_the_deploy_and_the_rest_keeps_serving(sandbox, local_serving, machines,
                                                                          clock):
    before, _, _ = recorded(local_serving)
    off = machines[2]
    container = next(m["name"] for m in sandbox["machines"] if m["address"] == off)
    started = start_times(local_serving)
    subprocess.run(["docker", "stop", container], check=True, capture_output=True, timeout=120)
    try:
        sb.commit_change(sb.Change(CHANGED))
        with clock("deploy with a machine powered off"):
            proc = deploy(check=False)
        assert proc.returncode != 0
        error = error_line(proc)
        print(f"\npowered off {container}: {error}")
        assert off in error and "unreachable" in error
        # Nothing was changed on the machines that answer, and they serve every request.
        up = [m for m in machines if m != off]
        now = start_times(local_serving, up)
        assert now == {m: started[m] for m in up}
        answers = [get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) for _ in range(30)]
        assert {a["machine"] for a in answers} == set(up)
        assert {a["release"] for a in answers} == {before["id"]}
        current, history, holder = recorded(local_serving)
        assert current["id"] == before["id"] and holder is None
        assert history[-1]["outcome"].startswith("failed: ") and off in history[-1]["outcome"]
    finally:
        subprocess.run(["docker", "start", container], check=True, capture_output=True, timeout=120)

    with clock("powered-off machine back to serving"):
        if not wait_serving(local_serving, 120):
            fab("rolling-upgrade", "--cluster", "local")  # the repair, when it does not come back by itself
            assert wait_serving(local_serving, 60)
    assert_on_release(sandbox, local_serving, before["id"])


def test_upgrade_machine_leaves_a_machine_on_the_release_alone_and_rolling_upgrade_works(
        sandbox, local_serving, machines, clock):
    current, history, _ = recorded(local_serving)
    first = machines[0]
    started = start_times(local_serving)
    with clock("upgrade-machine on a machine already on the release"):
        proc = fab("upgrade-machine", "--cluster", "local", "--machine", first)
    assert f"{first}: already runs release {current['id']}" in proc.stdout
    assert "left alone" in proc.stderr and "balancer:" not in proc.stderr
    assert start_times(local_serving) == started

    # Put one machine on an older release, then let rolling-upgrade bring the cluster back to its own.
    older = next(r["id"] for r in reversed(history) if r["id"] != current["id"]
                 and r["outcome"] in ("succeeded", "installed"))
    last = machines[-1]
    with clock("upgrade-machine to an older release"):
        fab("upgrade-machine", "--cluster", "local", "--machine", last, "--release", older)
    assert machine_releases(local_serving)[last] == older
    started = start_times(local_serving)

    # --plan says what each machine needs, and changes nothing.
    plan = fab("rolling-upgrade", "--cluster", "local", "--plan").stdout.strip().splitlines()
    # The machine on another release is drift, said first with its fix.
    assert plan[0] == (f"warning: local drifted: {last} runs release {older}, not the recorded {current['id']} "
                       f"(`fab rolling-upgrade --cluster local` fixes it)")
    plan = plan[1:]
    assert plan[:-1] == [f"{m}: already runs {current['id']}; nothing to do" for m in machines[:-1]]
    assert plan[-1].startswith(f"{last}: out of the balancer, restart ") and plan[-1].endswith(
        f"on {current['id']}, health check, back in")
    assert start_times(local_serving) == started and machine_releases(local_serving)[last] == older
    assert sorted(listed(local_serving)) == sorted(machines)

    with clock("rolling-upgrade of one machine out of three"):
        with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
            proc = fab("rolling-upgrade", "--cluster", "local")
    print("\n" + probe.report("rolling-upgrade"))
    assert probe.failed == 0, probe.errors
    assert proc.stdout.strip() == f"release {current['id']}: 1 machine(s) upgraded"
    after = start_times(local_serving)
    assert [m for m in machines if after[m] != started[m]] == [last]
    assert_on_release(sandbox, local_serving, current["id"])
    assert serving(local_serving)
