"""Half-done work named and repairable (issue 22), on the sandbox's `local` cluster, serving, with the probe.

A Docker Engine stream cut mid-build (its deadline, `timeouts.build`, passed, or its SSH channel
dropped on the build server) ends the deploy with one `error:` line naming the component and the
step: nothing pushed, nothing rolled out, the lock free, the build not left running. A
secrets.apply interrupted after its first machine says which machines run which secrets, and
`--resume` finishes the others, with the probe and a long request in flight. machine.wipe
refuses a member and wipes a machine a removal left half-wiped.
"""
import hashlib
import re
import secrets
import signal
import time

import pytest

from sandbox import testbed as sb

from conftest import (BUILD_ADDRESS, MACHINE_ADDRESSES, SPARE_ADDRESSES, SUBNET, Probe, Running, Slow, error_line,
                      fab, local_copy, on, on_each, stale)
from integration.test_config import Copy
from integration.test_deploy import recorded
from integration.test_images import registry_versions

BUILD = f"{sb.PREFIX}-build"
# s: timeouts.build of the copy of local.yaml whose build is cut off by its deadline (the router's
# build reaches its hour-long step within a second of its start: the steps before it are cached)
SHORT_BUILD = 6
LONG = 25  # s: the long request in flight while secrets.apply is interrupted and resumed (both: 7-12 s, more on a loaded CI)


@pytest.fixture(scope="module")
def hanging(sandbox):
    """A branch of the sample app whose router build has a step that runs for an hour without a word."""
    branch = f"hd_hang_{secrets.token_hex(3)}"
    sb.commit_change(sb.Change("router", "fails", "hang", branch=branch))
    yield branch
    sb.inside(BUILD, f"git -C {sb.REPOSITORY} branch -q -D {branch}", check=False)


def hanging_step_started(run) -> str:
    """The progress line of the router's hour-long step, once the build reached it."""
    while True:
        line = run.wait_for("  router: Step ", within=240)
        if f"sleep {sb.HANG}" in line:
            return line


def build_left_running(cluster) -> str:
    """The hour-long step's process on the build server, if the engine still runs it after 30 s."""
    deadline = time.monotonic() + 30
    while True:
        found = on(cluster, BUILD_ADDRESS, f"pgrep -ax sleep | grep ' {sb.HANG}$' || true").stdout.strip()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


def test_a_docker_stream_cut_mid_build_is_one_error_line_and_nothing_is_pushed(local_serving, registry, hanging,
                                                                                 tmp_path, clock):
    cluster = local_serving
    tags, (release, history, _) = registry_versions(registry, cluster), recorded(cluster)
    # The router's last step, whatever its number.
    step = rf"step (\d+)/\1 \(RUN echo compiling router && sleep {sb.HANG}\)"
    with Probe(cluster.balancer.host, cluster.balancer.http_port, max_requests=20000, max_seconds=600) as probe:
        # Its deadline passes: the stream is cut off there.
        short = local_copy(tmp_path, timeouts={"build": SHORT_BUILD})
        with clock("deploy, its build cut off by its deadline"):
            cut = fab("deploy", "--cluster", "local", "--branch", hanging, env=short, check=False)
        assert re.fullmatch(rf"error: build of router failed at {step}: {re.escape(BUILD_ADDRESS)}: build router: "
                            rf"not done within {SHORT_BUILD} s \(cut off there\)", error_line(cut)), cut.stderr
        assert build_left_running(cluster) == ""
        # Its channel is dropped on the build server (the far end of the Engine API, killed).
        with clock("deploy, its build's channel dropped"):
            run = Running("deploy", "--cluster", "local", "--branch", hanging)
            hanging_step_started(run)
            # `docker system dial-stdio`, the Engine API's end of the channel (dockerd's name differs).
            on(cluster, BUILD_ADDRESS, "pgrep -x docker | xargs -r kill")
            dropped = error_line(run.finish(within=120))
        assert re.match(rf"error: build of router failed at {step}: {re.escape(BUILD_ADDRESS)}: build router: "
                        rf"connection lost \(", dropped), dropped
        assert build_left_running(cluster) == ""
    assert probe.covered and probe.failed == 0, probe.report("builds cut off")
    assert registry_versions(registry, cluster) == tags
    assert recorded(cluster) == (release, history, None)


# ---------------------------------------------------------------- secrets.apply stopped, then --resume

SESSION_KEY = "/etc/air/secrets/air_backend/session_key"


def session_keys(cluster) -> dict:
    """machine -> the sha256 of air_backend's session_key there (read from outside)."""
    return {m: text.split()[0] for m, text in on_each(cluster, f"sha256sum {SESSION_KEY}").items()}


def drained_in_flight(slow, runs) -> bool:
    """Whether the long request was still in flight when the balancer began to drain its machine: the
    progress line before the one saying that machine was drained (or the run's start) came before the
    request ended. ``runs``: (when it was started, Running), in order."""
    for started, run in runs:
        times = [started] + run.arrived
        for i, line in enumerate(run.lines):
            if line.startswith("balancer: routes to ") and line.endswith(f"(drained {slow.machine})"):
                return times[i] < slow.ended
    return False


def test_secrets_apply_interrupted_after_a_machine_says_who_runs_what_and_resume_finishes(local_serving, tmp_path,
                                                                                          clock):
    cluster = local_serving
    copy = Copy(tmp_path / "clusters")
    rotated = "rotated-" + secrets.token_urlsafe(12)
    (copy.secrets / "session_key").write_text(rotated + "\n")
    new, before = hashlib.sha256((rotated + "\n").encode()).hexdigest(), session_keys(cluster)
    try:
        with Probe(cluster.balancer.host, cluster.balancer.http_port, max_requests=20000, max_seconds=600) as probe:
            slow = Slow(cluster, LONG)
            slow.start()
            assert slow.started_on.wait(30) and slow.error is None, slow.error
            with clock("secrets.apply, interrupted after its first machine"):
                started = time.monotonic()
                run = Running("secrets.apply", "--cluster", "local", env=copy.env)
                first = run.wait_for(f"upgrade: {SUBNET}.", within=300).split()[1]
                run.proc.send_signal(signal.SIGINT)  # Ctrl-C once the first machine runs the new secrets
                stopped = run.finish(within=300)
            others = sorted(set(MACHINE_ADDRESSES) - {first})
            last = stopped.stderr.strip().splitlines()[-1]
            assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr
            assert last.startswith("interrupted: ") and "rolling-upgrade" not in last, last
            assert last.endswith(f"the secrets folder's secrets run on: {first}; the previous ones on: "
                                 f"{', '.join(others)}; `fab secrets.apply --cluster local --resume` finishes "
                                 f"the others"), last
            halfway = session_keys(cluster)
            assert halfway == {**before, first: new}
            with clock("secrets.apply --resume"):
                resumed_at = time.monotonic()
                resume = Running("secrets.apply", "--cluster", "local", "--resume", env=copy.env)
                resumed = resume.finish()
            assert resumed.returncode == 0, resumed.stderr
            assert (f"secrets.apply: resuming: the folder's secrets already run on {first}; finishing "
                    f"{', '.join(others)}") in resumed.stderr
            assert rotated not in resumed.stdout + resumed.stderr + stopped.stderr
            slow.join(60)
        assert probe.covered and probe.failed == 0, probe.report("secrets.apply interrupted, then resumed")
        assert slow.complete, (slow.error, slow.lines[-3:])
        assert drained_in_flight(slow, [(started, run), (resumed_at, resume)]), \
            (f"the long request ended before its machine ({slow.machine}) was drained: give it more seconds",
             slow.ended, run.arrived, run.lines, resume.arrived, resume.lines)
        assert set(session_keys(cluster).values()) == {new}
        kept = on_each(cluster, "test -e /etc/air/secrets.previous && echo kept || echo none")
        assert set(kept.values()) == {"none\n"}, kept
    finally:
        with clock("secrets.apply, back to the cluster file's secrets"):
            fab("secrets.apply", "--cluster", "local", "--wait")
    assert session_keys(cluster) == before


# ---------------------------------------------------------------- machine.wipe

def test_machine_wipe_refuses_a_member_and_wipes_a_machine_a_removal_left_half_wiped(local_serving):
    cluster, member, spare = local_serving, MACHINE_ADDRESSES[0], SPARE_ADDRESSES[0]
    refused = fab("machine.wipe", "--cluster", "local", "--machine", member, check=False)
    assert error_line(refused) == (f"error: {member} is an etcd member of local: `fab remove-machine --cluster local "
                                   f"--machine {member}` removes and wipes it; nothing was changed")
    assert on(cluster, member, "systemctl is-active etcd-member.service").stdout.strip() == "active"
    # What a removal whose wipe failed leaves: etcd's data, the release and the cluster's secrets.
    on(cluster, spare, "mkdir -p /var/lib/etcd/member/wal /etc/air/state /etc/air/secrets/air_backend && "
                       "echo x > /var/lib/etcd/member/wal/0.wal && echo r > /etc/air/state/release && "
                       "echo s > /etc/air/secrets/air_backend/session_key")
    assert stale(cluster, [spare]) == [spare]
    wiped = fab("machine.wipe", "--cluster", "local", "--machine", spare)
    assert wiped.stdout.strip() == f"{spare} wiped"
    assert stale(cluster, [spare]) == []
    assert on(cluster, spare, "ls -d /etc/air/secrets /etc/air/state 2>/dev/null | wc -l").stdout.strip() == "0"
