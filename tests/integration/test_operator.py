"""The operator's everyday tools on the sandbox: status, logs, exec, a canary deploy, health rules.

Each test starts from the installed cluster serving and leaves it serving
(the drift test repairs what it broke with the fixes status printed; the
canary test ends with every machine on one release and no candidate).
"""
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from cloudconfig.units import component_unit, container_name, image_environment, image_file, unit_name
from sandbox import testbed as sb
from tasks.commands import haproxy as haproxy_commands
from tasks.model.cluster import Component
from tasks.model.errors import HealthError
from tasks.net.executor import Executor
from tasks.commands.shell import q

from conftest import ROOT, Probe, etcd_of, fab, get_version, machine_releases, on, on_each, serving, wait_serving
from tasks.runbooks import records
from tasks.runbooks import steps

CHANGED = "static_website"  # the component a change touches


def recorded(cluster):
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1], records.read_candidate(client, cluster)[1], \
            records.history(client, cluster)


def status(*args):
    return fab("status", "--cluster", "local", *args, check=False)


# ---------------------------------------------------------------- status

def test_status_of_a_serving_cluster_says_every_field_and_exits_0(local_serving, figures):
    cluster = local_serving
    current, _, _ = recorded(cluster)
    started = time.monotonic()
    proc = status()
    figures(f"fab status (whole command, healthy cluster): {time.monotonic() - started:.2f} s")
    print(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for address in cluster.machines:
        row = next(line for line in lines if line.startswith(address) and "(recorded)" in line)
        assert row.split()[1:2] == ["ok"] and " in " in row and current["id"] in row
        units = next(line for line in lines if line.startswith(address) and "active" in line)
        assert units.count("active") == len(cluster.components)
    assert f"release:   {current['id']}" in proc.stdout
    assert "candidate: none" in proc.stdout and "lock:      free" in proc.stdout
    assert "warning" not in proc.stdout and "all as recorded" in lines[-1]
    assert json.loads(fab("lock.status", "--cluster", "local", "--json").stdout) is None

    proc = status("--json")
    assert proc.returncode == 0
    view = json.loads(proc.stdout)
    figures(f"status read (machines, etcd, balancer side by side): {view['seconds']:.2f} s")
    assert view["ok"] is True and view["warnings"] == []
    assert view["release"]["id"] == current["id"] and view["candidate"] is None and view["lock"] is None
    assert sorted(m["address"] for m in view["machines"]) == sorted(cluster.machines)
    roles = [m["etcd"]["role"] for m in view["machines"]]
    assert sorted(roles) == ["follower", "follower", "leader"]
    assert view["etcd"]["leader"] in cluster.machines
    assert view["etcd"]["auth"] == {"wanted": True, "on": True}  # local is installed with etcd's logins
    versions = {c: v["version"] for c, v in current["components"].items()}
    for m in view["machines"]:
        assert m["reachable"] and m["balancer"] and m["balancer_state"] == "UP" and m["etcd"]["healthy"]
        assert m["release"] == current["id"]
        assert {c: u["version"] for c, u in m["units"].items()} == versions
        assert {u["state"] for u in m["units"].values()} == {"active"}
        assert all(isinstance(u["uptime"], int) and u["uptime"] >= 0 for u in m["units"].values())
        assert m["images"]["size"].endswith("B")


def test_status_names_each_drift_with_its_fix_and_exits_1(local_serving):
    cluster = local_serving
    out_of_balancer, stopped = cluster.machines[0], cluster.machines[1]
    fab("balancer.remove", "--cluster", "local", "--machine", out_of_balancer)
    on(cluster, stopped, f"systemctl stop {unit_name(CHANGED)}")
    try:
        proc = status()
        print(proc.stdout)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        warnings = [line for line in proc.stdout.splitlines() if line.startswith("warning:")]
        fix_a = f"`fab upgrade-machine --cluster local --machine {out_of_balancer}`"
        fix_b = f"`fab upgrade-machine --cluster local --machine {stopped}`"
        assert any(f"{out_of_balancer} is out of the balancer" in w and fix_a in w for w in warnings), warnings
        assert any(f"on {stopped}: {CHANGED} is inactive" in w and fix_b in w for w in warnings), warnings
        assert len(warnings) == 2, warnings

        proc = status("--json")
        assert proc.returncode == 1
        view = json.loads(proc.stdout)
        assert view["ok"] is False
        assert sorted((w["machine"], w["fix"]) for w in view["warnings"]) == sorted(
            [(out_of_balancer, fix_a + " (health check, then back in)"), (stopped, fix_b)])
        by_address = {m["address"]: m for m in view["machines"]}
        assert by_address[out_of_balancer]["balancer"] is False
        assert by_address[stopped]["units"][CHANGED]["state"] == "inactive"
    finally:
        # The fixes status printed, run as an operator would.
        fab("upgrade-machine", "--cluster", "local", "--machine", out_of_balancer)
        fab("upgrade-machine", "--cluster", "local", "--machine", stopped)
    assert status().returncode == 0
    assert serving(cluster)


def haproxy(cluster, command):
    """Send one command to the cluster's haproxy admin socket on the balancer host (as an operator would by hand)."""
    return on(cluster, cluster.balancer.host, haproxy_commands.api_command(cluster, [command])).stdout


def test_status_shows_a_machine_drained_in_haproxy_by_hand(local_serving):
    cluster = local_serving
    drained = cluster.machines[1]
    haproxy(cluster, f"set server {cluster.name}_http/{drained} state drain")
    try:
        proc = status("--json")
        view = json.loads(proc.stdout)
        assert proc.returncode == 1
        assert {m["address"]: m["balancer_state"] for m in view["machines"]} == \
            {m: "DRAIN" if m == drained else "UP" for m in cluster.machines}
        assert len(view["warnings"]) == 1, view["warnings"]
        [warning] = view["warnings"]
        assert warning["problem"] == f"haproxy marks {drained} DRAIN"
        assert f"fab balancer.remove --cluster local --machine {drained}" in warning["fix"]
    finally:
        haproxy(cluster, f"set server {cluster.name}_http/{drained} state ready")
    # Ready again: haproxy marks every machine UP in every backend (read on its admin socket, as status reads it).
    servers = haproxy_commands.parse_stat(on(cluster, cluster.balancer.host, haproxy_commands.stat_command(cluster)).stdout)
    assert servers and {(s.machine, s.status) for s in servers} == {(m, "UP") for m in cluster.machines}, servers


# ---------------------------------------------------------------- logs and exec

def test_logs_merge_every_machine_in_time_order(local_serving):
    cluster = local_serving
    proc = fab("logs", "--cluster", "local", "--component", "router", "--lines", "5")
    lines = proc.stdout.splitlines()
    assert {line.split()[0] for line in lines} == set(cluster.machines), proc.stdout
    stamps = [line.split()[1] for line in lines]
    assert stamps == sorted(stamps)
    assert all(sum(line.startswith(m) for line in lines) <= 5 for m in cluster.machines)

    entries = [json.loads(line) for line in
               fab("logs", "--cluster", "local", "--component", "router", "--json").stdout.splitlines()]
    assert {e["machine"] for e in entries} == set(cluster.machines)
    assert any(f"Started {unit_name('router')}" in e["message"] for e in entries)

    one = cluster.machines[1]
    only = fab("logs", "--cluster", "local", "--component", "router", "--machine", one).stdout.splitlines()
    assert only and {line.split()[0] for line in only} == {one}


def test_logs_follow_streams_new_entries_and_stops_cleanly_on_ctrl_c(local_serving):
    cluster = local_serving
    target = cluster.machines[2]
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "logs", "--cluster", "local", "--component", CHANGED,
                             "--lines", "1", "--follow"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))
    try:
        time.sleep(3)  # the backlog is printed and the streams are open
        on(cluster, target, f"systemctl restart {unit_name(CHANGED)}")
        time.sleep(3)
        following = on_each(cluster, "pgrep -f '[j]ournalctl -u' | wc -l")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    print(out)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    assert all(int(n) >= 1 for n in following.values()), following
    new = [line for line in out.splitlines() if line.startswith(target) and f"Started {unit_name(CHANGED)}" in line]
    assert new, f"the restart on {target} was not streamed:\n{out}"
    time.sleep(1)
    left = on_each(cluster, "pgrep -f '[j]ournalctl -u' | wc -l")
    assert all(int(n) == 0 for n in left.values()), f"journalctl left running: {left}"


def test_exec_gives_the_commands_output_and_exit_status(local_serving):
    cluster = local_serving
    address = cluster.machines[0]
    proc = fab("exec", "--cluster", "local", "--component", "air_backend", "--machine", address,
               "--command", "echo $AIR_COMPONENT $AIR_MACHINE; cat /air/state/release; sleep 1; echo oops >&2; exit 7",
               check=False, input="")  # standard input not a terminal: no console
    current, _, _ = recorded(cluster)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout.split() == ["air_backend", address, current["id"]]
    assert "oops" in proc.stderr
    ok = fab("exec", "--cluster", "local", "--component", "router", "--machine", address, "--command", "true",
             check=False, input="")
    assert ok.returncode == 0 and ok.stdout == ""


# ---------------------------------------------------------------- canary

def answers_from_both(sandbox, releases, tries=60) -> dict:
    seen: dict = {}
    for _ in range(tries):
        answer = get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"])
        seen[answer["release"]] = seen.get(answer["release"], 0) + 1
        if set(seen) >= set(releases):
            break
    return seen


def test_canary_then_continue_then_a_rolled_back_canary(sandbox, local_serving):
    cluster = local_serving
    canary = cluster.machines[2]
    others = [m for m in cluster.machines if m != canary]
    before, _, _ = recorded(cluster)
    sb.commit_change(sb.Change(CHANGED))
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        proc = fab("deploy", "--cluster", "local", "--canary", canary)
        candidate = proc.stdout.split()[-1]
        seen = answers_from_both(sandbox, {before["id"], candidate})
    print("\n" + probe.report("deploy --canary"))
    assert probe.failed == 0, probe.errors
    assert candidate != before["id"]
    assert machine_releases(cluster) == {**{m: before["id"] for m in others}, canary: candidate}
    assert set(seen) == {before["id"], candidate}, seen
    current, recorded_candidate, _ = recorded(cluster)
    assert current["id"] == before["id"]
    assert recorded_candidate["id"] == candidate and recorded_candidate["machines"] == [canary]

    shown = status()
    assert shown.returncode == 0, shown.stdout
    assert f"candidate: {candidate} on {canary}" in shown.stdout
    assert any(line.startswith(canary) and f"{candidate} (candidate)" in line for line in shown.stdout.splitlines())
    listing = fab("releases", "--cluster", "local").stdout.splitlines()
    assert listing[-1].startswith("c ") and candidate in listing[-1] and f"candidate on {canary}" in listing[-1]

    # A plain deploy continues the canary to the other machines.
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        proc = fab("deploy", "--cluster", "local")
    print(probe.report("deploy (continue)"))
    assert probe.failed == 0, probe.errors
    assert "continuing the canary" in proc.stderr and f"{canary} already runs {candidate}" in proc.stderr
    assert machine_releases(cluster) == {m: candidate for m in cluster.machines}
    current, recorded_candidate, history = recorded(cluster)
    assert current["id"] == candidate and recorded_candidate is None
    assert (history[-1]["id"], history[-1]["outcome"], history[-1]["canary"]) == (candidate, "succeeded", [canary])

    # Another canary, rolled back: the machine is back on the cluster's release.
    sb.commit_change(sb.Change(CHANGED))
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        outcome = json.loads(fab("deploy", "--cluster", "local", "--canary", canary, "--json").stdout)
        second, trips = outcome["release"], outcome.pop("round_trips")
        assert outcome == {"release": second, "candidate": True, "machines": [canary]}
        # Commands ran on the canary; the total is the sum of what each host answered.
        assert trips["hosts"][canary]["command"] > 1 and trips["total"] == sum(
            n for kinds in trips["hosts"].values() for n in kinds.values())
        assert machine_releases(cluster)[canary] == second
        undone = json.loads(fab("rollback", "--cluster", "local", "--json").stdout)
        assert undone.pop("round_trips")["hosts"][canary]["command"] > 1
        assert undone == {"release": candidate, "candidate_rolled_back": second, "machines": [canary]}
    print(probe.report("deploy --canary, then rollback"))
    assert probe.failed == 0, probe.errors
    assert machine_releases(cluster) == {m: candidate for m in cluster.machines}
    current, recorded_candidate, history = recorded(cluster)
    assert current["id"] == candidate and recorded_candidate is None
    assert (history[-1]["id"], history[-1]["outcome"]) == (second, f"rolled back: canary on {canary}")
    assert status().returncode == 0


# ---------------------------------------------------------------- health rules

@pytest.fixture
def forbidding(local_serving):
    """(machine, port): a listener answering 403 to everything, inside the router's container on the
    first machine (the real router's answer on `/`), for as long as the test runs."""
    cluster = local_serving
    address, port = cluster.machines[0], 18403
    reply = "printf 'HTTP/1.0 403 Forbidden\\r\\nContent-Length: 9\\r\\n\\r\\nForbidden'"
    inner = f"nc -ll -p {port} -e sh -c {q(reply)} >/dev/null 2>&1 & echo $!"
    pid = on(cluster, address, f"docker exec {container_name('router')} sh -c {q(inner)}").stdout.strip()
    assert pid.isdigit()
    time.sleep(0.5)
    yield address, port
    on(cluster, address, f"docker exec {container_name('router')} kill {pid}", check=False)


def health_of(cluster, address, *components, within=3):
    """None when the machine passes the health rules of ``components`` within ``within`` s, else the
    HealthError's message (a rule that fails is waited out: 1 s is enough to see it fail)."""
    with Executor(replace(cluster, components=components)) as ex:
        try:
            steps.wait_healthy(ex, address, timeout=within)
            return None
        except HealthError as e:
            return str(e)


def test_a_health_rule_expecting_403_passes_on_403_and_fails_on_200(local_serving, forbidding):
    cluster = local_serving
    address, port = forbidding
    guard = Component("guard", port, "/", "components/guard", health_status=403)
    assert health_of(cluster, address, guard) is None
    assert health_of(cluster, address, replace(guard, health_body="Forbidden")) is None
    router = cluster.component("router")
    # The sample router answers 200 on `/`: a rule expecting 403 fails, naming what it got.
    failed = health_of(cluster, address, replace(router, health="/", health_status=403), within=1)
    assert failed and "router(expected HTTP 403, got HTTP 200)" in failed
    failed = health_of(cluster, address, replace(guard, health_status=200), within=1)
    assert failed and "guard(expected HTTP 200, got HTTP 403)" in failed
    failed = health_of(cluster, address, replace(guard, health_body="Welcome"), within=1)
    assert failed and "guard(expected HTTP 403 with 'Welcome', got HTTP 403)" in failed
    # TCP only: the port accepts a connection, whatever it says.
    assert health_of(cluster, address, replace(guard, check="tcp")) is None
    failed = health_of(cluster, address, replace(guard, port=port + 1, check="tcp"), within=1)
    assert failed and f"guard(no TCP connection on {port + 1})" in failed


def test_a_components_stop_command_and_signal_reach_its_container(local_serving):
    """A unit rendered with a stop command and a stop signal, run beside the real ones on one
    machine (the static website's image, another port): stopping it runs the command in the container,
    then `docker stop` sends the signal, and the unit ends cleanly."""
    cluster = local_serving
    address = cluster.machines[0]
    current, _, _ = recorded(cluster)
    probe = Component("stoptest", 18500, "/health", "components/static_website", stop_signal="SIGINT",
                      stop_command="echo stopped-by-command > /air/data/stop.txt")
    image_of = replace(cluster, components=(probe,))
    version = current["components"]["static_website"]["version"]
    unit = component_unit(image_of, probe, address)
    # The static website's image (its server takes the port it is given) under the probe's name: nothing new is pulled.
    images = image_environment(version, cluster.image_ref("static_website", version))
    path = f"/etc/systemd/system/{unit_name('stoptest')}"
    with Executor(cluster) as ex:
        ex.write_file(address, image_file("stoptest"), images)
        ex.write_file(address, path, unit)
    try:
        on(cluster, address, f"systemctl daemon-reload && systemctl start {unit_name('stoptest')} && "
                             f"for i in $(seq 50); do curl -fs -o /dev/null http://127.0.0.1:18500/health && exit 0; "
                             f"sleep 0.2; done; exit 1")
        signal_ = on(cluster, address, f"docker inspect -f '{{{{.Config.StopSignal}}}}' {container_name('stoptest')}")
        assert signal_.stdout.strip() == "SIGINT"
        on(cluster, address, f"systemctl stop {unit_name('stoptest')}")
        after = on(cluster, address, f"cat /var/lib/air/stoptest/stop.txt; "
                                     f"systemctl show -p Result --value {unit_name('stoptest')}").stdout.split()
        assert after == ["stopped-by-command", "success"]
    finally:
        on(cluster, address, f"systemctl stop {unit_name('stoptest')}; rm -f {path} {image_file('stoptest')} && "
                             f"systemctl daemon-reload; "
                             f"rm -rf /var/lib/air/stoptest", check=False)


def test_exec_on_a_terminal_is_a_console(local_serving):
    """With a terminal as standard input, exec gives the container's shell that terminal: what is
    typed runs there, and the shell's exit status becomes ours."""
    import fcntl
    import pty
    import select
    import termios
    cluster = local_serving
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "fabric", "exec", "--cluster", "local", "--component", "router",
                             "--machine", cluster.machines[0], "--command",
                             'echo ready; read line; echo "got $line in $AIR_COMPONENT"; tty; exit 5'],
                            cwd=ROOT, stdin=slave, stdout=slave, stderr=slave, env=dict(os.environ),
                            # The terminal is the controlling one of a session of its own, as a login's is.
                            start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(slave)
    seen = b""

    def read_until(text, within=30):
        nonlocal seen
        deadline = time.monotonic() + within
        while text not in seen:
            ready, _, _ = select.select([master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                raise AssertionError(f"no {text!r} within {within} s; so far: {seen!r}")
            try:
                seen += os.read(master, 4096)
            except OSError:  # the other side closed
                raise AssertionError(f"ended before {text!r}; so far: {seen!r}") from None
    try:
        read_until(b"ready")
        os.write(master, b"typed on our terminal\n")
        read_until(b"got typed on our terminal in router")
        read_until(b"/dev/pts/")
        assert proc.wait(timeout=30) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_a_machine_that_does_not_answer_is_named_by_status_and_logs(sandbox, local_serving):
    """A hung machine (its container paused: TCP is up, nothing answers): status still shows the
    others and names it with its fix, exit 1; logs shows the others' journals, then one error line."""
    cluster = local_serving
    hung = cluster.machines[2]
    container = next(m["name"] for m in sandbox["machines"] if m["address"] == hung)
    sb.docker("pause", container)
    try:
        proc = status("--json")
        assert proc.returncode == 1, proc.stderr
        view = json.loads(proc.stdout)
        by_address = {m["address"]: m for m in view["machines"]}
        assert by_address[hung]["reachable"] is False
        assert all(by_address[m]["reachable"] for m in cluster.machines[:2])
        [warning] = [w for w in view["warnings"] if w["machine"] == hung]
        assert warning["problem"].startswith(f"{hung} cannot be reached")
        assert f"`fab upgrade-machine --cluster local --machine {hung}`" in warning["fix"]
        logs = fab("logs", "--cluster", "local", "--component", "router", check=False)
        assert logs.returncode == 1
        assert {line.split()[0] for line in logs.stdout.splitlines()} == set(cluster.machines[:2])
        errors = [line for line in logs.stderr.splitlines() if line.startswith("error:")]
        assert errors == [line for line in logs.stderr.splitlines()[-1:]] and f"no journal from {hung}" in errors[0]
    finally:
        sb.docker("unpause", container)
    assert wait_serving(cluster, 60)
