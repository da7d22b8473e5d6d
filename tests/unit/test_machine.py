"""tasks/machine.py's pure half: facts parsed from recorded outputs, and the command lines by equality.

The facts outputs below were recorded from sandbox machines (an installed one,
a freshly prepared spare) and from the states in between that preflight must
notice. Nothing here connects anywhere.
"""
import hashlib
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

import cloudconfig
from tasks.commands import machine
from tasks.commands.shell import q
from tasks.model import rollout_plan
from tasks.model.release import Image, Release

from .fakes import release_facts_text

RELEASE = Release((Image("worker", "1.3.0", "sha256:" + "b" * 64),
                   Image("web", "1.2.3", "sha256:" + "a" * 64)))

# `facts_command` output, as recorded on sandbox machines.
INSTALLED = ("docker=active\netcd_unit=yes\netcd_configured=yes\netcd_active=active\n"
             "etcd_data=yes\nair_units=4\nrelease=9bd8e81bdd7e\n")
FRESH = ("docker=active\netcd_unit=yes\netcd_configured=no\netcd_active=inactive\n"
         "etcd_data=no\nair_units=0\nrelease=\n")
# Removed while powered off: nothing was wiped, etcd is not running.
NOT_WIPED = ("docker=active\netcd_unit=yes\netcd_configured=yes\netcd_active=failed\n"
             "etcd_data=yes\nair_units=4\nrelease=9bd8e81bdd7e\n")
# A bare host: no Docker, no etcd-member unit.
BARE = ("docker=inactive\netcd_unit=no\netcd_configured=no\netcd_active=inactive\n"
        "etcd_data=no\nair_units=0\nrelease=\n")


# ---------------------------------------------------------------- facts

def test_facts_command(cluster):
    assert machine.facts_command(cluster) == (
        "echo docker=$(systemctl is-active docker.service 2>/dev/null); "
        "echo etcd_unit=$(systemctl cat etcd-member.service >/dev/null 2>&1 && echo yes || echo no); "
        "echo etcd_configured=$(test -e /etc/systemd/system/etcd-member.service.d/20-air.conf && echo yes || echo no); "
        "echo etcd_active=$(systemctl is-active etcd-member.service 2>/dev/null); "
        "echo etcd_proxy=$(test -e /etc/systemd/system/air-etcd-proxy.service && echo yes || echo no); "
        "echo etcd_data=$(test -n \"$(ls -A /var/lib/etcd/member 2>/dev/null)\" && echo yes || echo no); "
        "echo air_units=$(systemctl list-unit-files --no-legend air-web.service air-worker.service 2>/dev/null | wc -l); "
        "echo release=$(cat /etc/air/state/release 2>/dev/null); "
        f"echo user_data=$({machine.user_data_command(cluster)})")


@pytest.mark.parametrize("present, found", [
    (["flatcar", "coreos"], "flatcar"), (["coreos"], "coreos"), ([], "coreos")])
def test_the_cloud_config_is_found_per_machine_flatcar_first(tmp_path, monkeypatch, present, found):
    paths = {kind: tmp_path / f"{kind}-install" / "user_data" for kind in ("flatcar", "coreos")}
    for kind in present:
        paths[kind].parent.mkdir()
        paths[kind].write_text("#cloud-config\n")
    monkeypatch.setattr(cloudconfig, "USER_DATA_PATHS", (str(paths["flatcar"]), str(paths["coreos"])))
    auto = SimpleNamespace(cloud_config=None)
    assert run_sh(machine.user_data_command(auto), tmp_path).stdout == f"{paths[found]}\n"
    forced = SimpleNamespace(cloud_config="/srv/my user_data")
    assert run_sh(machine.user_data_command(forced), tmp_path).stdout == "/srv/my user_data\n"


def test_parse_facts_of_an_installed_machine():
    assert machine.parse_facts(INSTALLED) == {
        "docker": "active", "etcd_unit": "yes", "etcd_configured": "yes", "etcd_active": "active",
        "etcd_data": "yes", "air_units": "4", "release": "9bd8e81bdd7e"}


def test_parse_facts_of_a_fresh_machine():
    assert machine.parse_facts(FRESH) == {
        "docker": "active", "etcd_unit": "yes", "etcd_configured": "no", "etcd_active": "inactive",
        "etcd_data": "no", "air_units": "0", "release": ""}


def test_parse_facts_ignores_lines_without_a_key_and_keeps_equals_in_values():
    text = "Welcome to the machine\n\n docker = active \nrelease=a=b\r\n"
    assert machine.parse_facts(text) == {"docker": "active", "release": "a=b"}


def test_a_fresh_machine_has_no_problems():
    assert machine.fresh_problems(machine.parse_facts(FRESH)) == []


def test_an_installed_machine_is_not_fresh():
    assert machine.fresh_problems(machine.parse_facts(INSTALLED)) == [
        "etcd is already configured (an installed machine?)",
        "/var/lib/etcd/member is not empty",
        "Air units are already installed",
    ]


def test_a_machine_removed_while_powered_off_is_not_fresh():
    assert machine.fresh_problems(machine.parse_facts(NOT_WIPED)) == [
        "etcd is already configured (an installed machine?)",
        "/var/lib/etcd/member is not empty",
        "Air units are already installed",
    ]


def test_a_bare_host_lacks_docker_and_etcd():
    assert machine.fresh_problems(machine.parse_facts(BARE)) == [
        "docker is not active", "no etcd-member.service"]


def test_only_a_running_etcd_is_enough_to_be_not_fresh():
    facts = {**machine.parse_facts(FRESH), "etcd_active": "active"}
    assert machine.fresh_problems(facts) == ["etcd is already configured (an installed machine?)"]


def test_no_output_at_all_is_not_fresh():
    assert machine.fresh_problems(machine.parse_facts("")) == ["docker is not active", "no etcd-member.service"]


# ---------------------------------------------------------------- commands

def test_units_of(cluster):
    assert rollout_plan.units_of(cluster) == ["air-web.service", "air-worker.service"]


PINNED = Release((Image("worker", "1.3.0", "sha256:" + "b" * 64, "sha256:" + "d" * 64),
                  Image("web", "1.2.3", "sha256:" + "a" * 64)))  # web recorded before manifest digests were kept


@pytest.fixture(autouse=True)
def prefetch_lock_here(tmp_path, monkeypatch):
    """Commands run here take the prefetch's lock in the test's folder, not this machine's /run."""
    monkeypatch.setattr(machine, "PREFETCH_LOCK", str(tmp_path / "prefetch.lock"))


def test_pull_command_pulls_side_by_side_by_digest_and_checks_each_image(cluster):
    command = machine.pull_command(cluster, PINNED)
    assert command.startswith(f"end=$(( $(date +%s) + 295 )); flock {machine.PREFETCH_LOCK} true 2>/dev/null; pull() {{ ")
    assert command.endswith(
        "pids=''; "
        "pull registry.example.org:5000/aircloak/prod_web:1.2.3 sha256:" + "a" * 64 + " 'web 1.2.3' '' "
        f"{PINNED.id} & pids=\"$pids $!\"; "
        "pull registry.example.org:5000/aircloak/prod_worker@sha256:" + "d" * 64 + " sha256:" + "b" * 64 +
        f" 'worker 1.3.0' pinned {PINNED.id} & pids=\"$pids $!\"; "
        "failed=0; for pid in $pids; do wait $pid || failed=1; done; [ $failed = 0 ]")


def test_pull_command_of_some_components(cluster):
    assert "prod_web" not in machine.pull_command(cluster, PINNED, ["worker"])
    assert machine.pull_command(cluster, PINNED, []) == "true"


def test_pull_command_skips_a_component_the_cluster_file_lacks(cluster):
    more = Release(PINNED.images + (Image("gone", "1.0.0", "sha256:" + "c" * 64),))
    command = machine.pull_command(cluster, more)
    assert "prod_gone" not in command and command.count(" & pids=") == 2


FAKE_DOCKER = """#!/bin/sh
# docker as the pull command uses it: `pull` fails while $FAILS (a counter file) is above 0;
# `image inspect` knows an image once pulled (or when $HAVE is set) and prints $ID. Each call is logged.
state=$(dirname "$0")
echo "$1" >> "$state/calls"
case "$1" in
  pull) n=$(cat "$state/fails"); if [ "$n" -gt 0 ]; then echo $((n - 1)) > "$state/fails";
        echo "Error response from daemon: Get https://registry/v2/: connection refused (try $n)" >&2; exit 1; fi;
        echo pulled >> "$state/pulls"; touch "$state/have"; exit 0 ;;
  image) [ -e "$state/have" ] || exit 1; [ "$3" = -f ] && echo "$ID"; exit 0 ;;
esac
exit 2
"""


def run_pull(tmp_path, cluster, release, fails=0, image_id=None, have=False):
    """The pull command run by sh against FAKE_DOCKER: (exit status, stderr, pulls made)."""
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    (tmp_path / "fails").write_text(str(fails))
    if have:
        (tmp_path / "have").touch()
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ID": image_id or release.images[0].digest}
    done = subprocess.run(["sh", "-c", machine.pull_command(cluster, release)], env=env, capture_output=True,
                          text=True, timeout=30)
    pulls = (tmp_path / "pulls").read_text().count("pulled") if (tmp_path / "pulls").exists() else 0
    return done.returncode, done.stderr, pulls


ONE = Release((Image("web", "1.2.3", "sha256:" + "a" * 64, "sha256:" + "e" * 64),))


def test_a_pull_is_retried_after_a_failure(tmp_path, cluster):
    assert run_pull(tmp_path, cluster, ONE, fails=1) == (0, "", 1)


def test_a_pull_that_keeps_failing_names_the_last_failure(tmp_path, cluster):
    short = replace(cluster, timeouts=replace(cluster.timeouts, pull=machine.PULL_MARGIN + 2))
    status, stderr, pulls = run_pull(tmp_path, short, ONE, fails=99)
    assert (status, pulls) == (1, 0)
    # 2 tries, or 1 when the first ends past a whole second (the deadline is counted in seconds).
    tries = 99 - int((tmp_path / "fails").read_text())
    assert tries in (1, 2)
    assert stderr == (f"pull of web 1.2.3 failed after {tries} tries: Error response from daemon: "
                      f"Get https://registry/v2/: connection refused (try {100 - tries})\n")


def test_another_image_than_the_recorded_one_fails_naming_both_digests(tmp_path, cluster):
    status, stderr, _ = run_pull(tmp_path, cluster, ONE, image_id="sha256:" + "f" * 64)
    assert (status, stderr) == (1, f"web 1.2.3: the registry gave sha256:{'f' * 64}, release {ONE.id} records "
                                   f"sha256:{'a' * 64}\n")


def test_an_image_pinned_by_digest_that_the_machine_has_is_not_pulled_again(tmp_path, cluster):
    assert run_pull(tmp_path, cluster, ONE, have=True) == (0, "", 0)
    assert (tmp_path / "calls").read_text() == "image\n"  # its ID read once: found and checked
    (tmp_path / "calls").unlink()
    (tmp_path / "have").unlink()
    assert run_pull(tmp_path, cluster, ONE) == (0, "", 1)
    assert (tmp_path / "calls").read_text() == "image\npull\nimage\n"
    by_tag = Release((Image("web", "1.2.3", "sha256:" + "a" * 64),))
    assert run_pull(tmp_path / "..", cluster, by_tag, have=True)[2] == 1  # a tag can move: pulled again


def test_start_command(cluster):
    units = "air-web.service air-worker.service"
    assert machine.start_command(cluster) == (
        f"needs=$(systemctl show -p NeedDaemonReload -p LoadState -p UnitFileState {units} | "
        f"awk {q(machine._START_NEEDS)}) && case $needs in reload) systemctl daemon-reload && "
        f"systemctl enable -q --no-reload {units};; enable) systemctl enable -q --no-reload {units};; esac && "
        f"systemctl restart {units}")
    assert machine.start_command(cluster, []) == "true"


def test_stop_command(cluster):
    assert machine.stop_command(cluster) == (
        "units=$(systemctl list-unit-files --no-legend air-web.service air-worker.service 2>/dev/null "
        "| awk '{print $1}'); [ -z \"$units\" ] || systemctl stop $units")
    assert machine.stop_command(cluster, []) == "true"


def test_remove_command_disables_the_units_that_exist_and_removes_their_files():
    assert machine.remove_command(["gone"]) == (
        "units=$(systemctl list-unit-files --no-legend air-gone.service 2>/dev/null | awk '{print $1}'); "
        "{ [ -z \"$units\" ] || systemctl disable -q --now $units; } && rm -f /etc/systemd/system/air-gone.service "
        "/etc/air/images/gone.env && "
        "systemctl daemon-reload")
    assert machine.remove_command([]) == "true"


def test_components_to_restart_and_to_remove(cluster):
    web_only = Release((RELEASE.image("web"),))
    running = {"web": "1.2.3", "old": "0.9.0"}  # `old`: gone from the cluster file, still installed
    units = {"air-web.service": "active", "air-worker.service": "inactive"}
    assert rollout_plan.running_components(cluster, RELEASE) == ["web", "worker"]
    assert rollout_plan.to_restart(running, units, RELEASE, cluster) == ["worker"]  # new in the cluster: installed
    assert rollout_plan.to_remove(running, RELEASE, cluster) == ["old"]
    assert rollout_plan.to_restart(running, units, web_only, cluster) == []  # a release without worker: not started
    assert rollout_plan.to_remove({**running, "worker": "1.3.0"}, web_only, cluster) == ["old", "worker"]


def test_health_of_some_components(cluster):
    assert "9090" not in machine.health_command(cluster, 5, ["web"]) and "8080" in machine.health_command(cluster, 5)
    assert machine.health_command(cluster, 5, []) == "true"


WEB_CHECK = ("code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 http://127.0.0.1:8080/health); "
             "[ \"$code\" = 200 ] || failed=\"$failed web(expected HTTP 200, got HTTP $code)\"")
WORKER_CHECK = ("code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 http://127.0.0.1:9090/ready); "
                "[ \"$code\" = 200 ] || failed=\"$failed worker(expected HTTP 200, got HTTP $code)\"")
# Both at once, each in a subshell; their failures gathered in the components' order.
BOTH = (f"failed=$( ( failed=''; {WEB_CHECK}; [ -z \"$failed\" ] || printf '0%s\\n' \"$failed\" ) & "
        f"( failed=''; {WORKER_CHECK}; [ -z \"$failed\" ] || printf '1%s\\n' \"$failed\" ) & wait); "
        "[ -z \"$failed\" ] || failed=$(printf '%s\\n' \"$failed\" | sort -n | sed 's/^[0-9]*//' | tr -d '\\n')")


def test_health_command(cluster):
    assert machine.health_command(cluster, 60) == (
        f"deadline=$(( $(date +%s) + 60 )); n=25; while :; do failed=''; {BOTH}; "
        "[ -z \"$failed\" ] && exit 0; "
        "if [ $(date +%s) -ge $deadline ]; then echo \"not healthy within 60 s:$failed\" >&2; exit 1; fi; "
        "n=$((n + 1)); if [ $n -le 25 ]; then sleep 0.02; else sleep 0.2; fi; done")
    assert machine.health_command(cluster, 60, ["web"]) == machine.health_command(cluster, 60).replace(BOTH, WEB_CHECK)


def fake_tools(folder, **scripts) -> dict:
    """An environment whose PATH finds these shell scripts first, by name."""
    for name, script in scripts.items():
        (folder / name).write_text("#!/bin/sh\n" + script)
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}:{os.environ['PATH']}"}


def test_a_rounds_checks_run_at_once_and_say_what_failed_in_the_components_order(tmp_path, cluster):
    """In a real sh, curl stood in for: web's answer waits until the worker's check has started
    (checks one after the other would never see it, and web would answer 000 after 5 s); both
    fail, the worker's first, and the message still names web first."""
    env = fake_tools(tmp_path, curl=(
        f'for a; do url=$a; done\n'
        f'case $url in *9090*) touch {tmp_path}/worker-asked; printf 503;;\n'
        f'  *) i=0; while [ ! -e {tmp_path}/worker-asked ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done\n'
        f'     [ -e {tmp_path}/worker-asked ] && printf 500 || printf 000;; esac\n'))
    done = subprocess.run(["sh", "-c", machine.health_command(cluster, 0)], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 1
    assert done.stderr == ("not healthy within 0 s: web(expected HTTP 200, got HTTP 500) "
                           "worker(expected HTTP 200, got HTTP 503)\n")


@pytest.mark.parametrize("first, pauses", [(["web"], ["0.02"] * 25 + ["0.2", "0.2"]), (None, ["0.2"] * 27)])
def test_an_upgrades_health_checks_come_every_50th_of_a_second_at_first_then_every_fifth(tmp_path, cluster, first,
                                                                                       pauses):
    """The health command in a real sh, sleep and curl stood in for: the pauses it takes until the
    component answers 200 at its 28th round, after an upgrade restarted it, or in another wait."""
    (tmp_path / "sleep").write_text(f'#!/bin/sh\necho "$1" >> {tmp_path}/pauses\n')
    (tmp_path / "curl").write_text(f'#!/bin/sh\nn=$(cat {tmp_path}/pauses 2>/dev/null | wc -l)\n'
                                   '[ "$n" -ge 27 ] && printf 200 || printf 000\n')
    for tool in ("sleep", "curl"):
        (tmp_path / tool).chmod(0o755)
    done = subprocess.run(["sh", "-c", machine.health_command(cluster, 60, ["web"], first=first)], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, timeout=30)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "pauses").read_text().split() == pauses


def test_health_command_asks_the_started_components_alone_until_they_pass(cluster):
    assert machine.health_command(cluster, 60, first=["worker"]) == (
        "deadline=$(( $(date +%s) + 60 )); n=0; all=; while :; do failed=''; "
        f"if [ -n \"$all\" ]; then {BOTH}; else {WORKER_CHECK}; fi; "
        "if [ -z \"$failed\" ]; then [ -n \"$all\" ] && exit 0; all=1; continue; fi; "
        "if [ $(date +%s) -ge $deadline ]; then echo \"not healthy within 60 s:$failed\" >&2; exit 1; fi; "
        "n=$((n + 1)); if [ $n -le 25 ]; then sleep 0.02; else sleep 0.2; fi; done")
    every_one_started = machine.health_command(cluster, 60, first=["web", "worker"])
    assert every_one_started == machine.health_command(cluster, 60).replace("n=25;", "n=0;")


@pytest.mark.parametrize("web_fails_once, asked", [
    (False, [["9090"], ["9090"], ["9090", "8080", "9090"]]),
    (True, [["9090"], ["9090"], ["9090", "8080", "9090"], ["8080", "9090"]])])
def test_the_others_are_asked_once_the_started_one_passes_and_all_must_pass_together(tmp_path, cluster, web_fails_once,
                                                                                    asked):
    """In a real sh, curl and sleep stood in for: the worker answers at its third round; the web
    component, healthy all along, is asked only then (and, when that one answer fails, in every
    round after, with the worker again). ``asked``: the ports each round asked, a round of both
    at once in either order, between two pauses (sleep): the worker's round that passes goes on
    without one into the round of both."""
    (tmp_path / "sleep").write_text(f"#!/bin/sh\necho - >> {tmp_path}/asked\n")
    (tmp_path / "curl").write_text(
        f'#!/bin/sh\nfor a; do url=$a; done; port=${{url#http://127.0.0.1:}}; port=${{port%%/*}}\n'
        f'echo "$port" >> {tmp_path}/asked\n'
        f'n=$(grep -c "$port" {tmp_path}/asked)\n'
        f'if [ "$port" = 9090 ]; then [ "$n" -ge 3 ] && printf 200 || printf 000; '
        f'else [ "$n" = 1 ] && [ {int(web_fails_once)} = 1 ] && printf 503 || printf 200; fi\n')
    for tool in ("sleep", "curl"):
        (tmp_path / tool).chmod(0o755)
    done = subprocess.run(["sh", "-c", machine.health_command(cluster, 60, first=["worker"])], capture_output=True,
                          text=True, env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}, timeout=30)
    assert done.returncode == 0, done.stderr
    rounds = [sorted(r.split()) for r in (tmp_path / "asked").read_text().split("-")]
    assert rounds == [sorted(r) for r in asked]


def test_health_check_of_an_expected_status_and_body(cluster):
    web = replace(cluster.component("web"), health="/", health_status=403, health_body='say "$hi"')
    assert machine.health_check(web) == (
        "code=$(curl -s -o \"$body\" -w '%{http_code}' -m 2 http://127.0.0.1:8080/); "
        "[ \"$code\" = 403 ] && grep -qF -- 'say \"$hi\"' \"$body\" || "
        "failed=\"$failed web(expected HTTP 403 with 'say \\\"\\$hi\\\"', got HTTP $code)\"")


def test_health_check_over_tcp_only(cluster):
    worker = replace(cluster.component("worker"), check="tcp")
    assert machine.health_check(worker) == (
        "timeout 2 bash -c ': </dev/tcp/127.0.0.1/9090' 2>/dev/null || "
        "failed=\"$failed worker(no TCP connection on 9090)\"")


def test_health_command_keeps_a_scratch_file_only_for_body_rules(cluster):
    plain = machine.health_command(cluster, 5)
    with_body = machine.health_command(replace(cluster, components=(
        replace(cluster.component("web"), health_body="ok"), cluster.component("worker"))), 5)
    assert "mktemp" not in plain
    assert with_body.startswith("deadline=$(( $(date +%s) + 5 )); n=25; body=$(mktemp -d) || exit 1; "
                                "trap 'rm -rf \"$body\"' EXIT; while :; do")
    assert "curl -s -o \"$body/0\" -w" in with_body  # each check with a body rule has a file of its own


def test_health_command_takes_whole_seconds(cluster):
    assert "+ 12 ))" in machine.health_command(cluster, 12.7)


def test_start_etcd_command():
    assert machine.start_etcd_command() == (
        "systemctl daemon-reload && systemctl enable -q etcd-member.service && "
        "systemctl start --no-block etcd-member.service")


USER_DATA = "/var/lib/flatcar-install/user_data"


def test_wipe_command(cluster):
    assert machine.wipe_command(cluster, USER_DATA) == (
        "systemctl disable -q --now air-web.service air-worker.service etcd-member.service air-etcd-proxy.service "
        "2>/dev/null; "
        "rm -f /etc/systemd/system/etcd-member.service.d/20-air.conf "
        "/etc/systemd/system/etcd-member.service.d/21-air-peer-files.conf /etc/systemd/system/air-etcd-proxy.service "
        "/etc/systemd/system/air-web.service /etc/systemd/system/air-worker.service ; "
        "rm -rf /var/lib/etcd/member /var/lib/etcd/member.before-* /etc/air/state /etc/air/images /etc/air/secrets "
        "/etc/air/secrets.previous /etc/air/etcd-peer; "
        f"if [ -e {USER_DATA}.air-base ]; then mv -f {USER_DATA}.air-base {USER_DATA}; fi; rm -f {USER_DATA}.air-written; "
        f"systemctl daemon-reload; {machine.resume_os_updates_command()}")


def run_sh(script: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_the_base_is_kept_once_and_the_wipe_puts_it_back_byte_for_byte(tmp_path):
    user_data = str(tmp_path / "user_data")
    base = b"#cloud-config\n# the administrator's own\nusers: []\n"
    (tmp_path / "user_data").write_bytes(base)
    os.chmod(user_data, 0o600)
    assert run_sh(f"{machine.keep_base_command(user_data)} && echo kept", tmp_path).stdout == "kept\n"
    (tmp_path / "user_data").write_text("#cloud-config\n# final\n")
    assert run_sh(machine.keep_base_command(user_data), tmp_path).returncode == 0  # a reinstall keeps the first
    restore = machine.wipe_command(SimpleNamespace(components=(), additions=None), user_data)
    restore = restore[restore.index("if [ -e"):restore.index("fi;") + 3]
    assert run_sh(restore, tmp_path).returncode == 0
    assert (tmp_path / "user_data").read_bytes() == base and not (tmp_path / "user_data.air-base").exists()
    assert oct(os.stat(user_data).st_mode & 0o777) == oct(0o600)


def stand_in_systemctl(tmp_path, monkeypatch) -> str:
    """A systemctl logging its arguments (update-engine active, locksmithd not); returns the shell
    prefix that puts it first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "systemctl").write_text(
        "#!/bin/sh\necho \"$*\" >> \"$LOG\"\n"
        "[ \"$1 $2 $3\" = 'is-active -q update-engine.service' ] && exit 0\n"
        "[ \"$1\" = is-active ] && exit 3\nexit 0\n")
    (bin_dir / "systemctl").chmod(0o755)
    monkeypatch.setattr(machine, "OS_UPDATES_PAUSED", str(tmp_path / "paused"))
    return f"PATH={bin_dir}:$PATH LOG={tmp_path}/log; export PATH LOG; "


def test_os_updates_are_paused_and_put_back_as_they_were(tmp_path, monkeypatch):
    """Run with a stand-in systemctl: update-engine was active, locksmithd was not."""
    env = stand_in_systemctl(tmp_path, monkeypatch)
    paused = tmp_path / "paused"
    assert run_sh(env + machine.pause_os_updates_command() + " && echo on", tmp_path).stdout == "on\n"
    assert paused.read_text() == "update-engine.service\n"
    assert run_sh(env + machine.pause_os_updates_command(), tmp_path).returncode == 0  # paused twice: first record kept
    assert paused.read_text() == "update-engine.service\n"
    assert run_sh(env + machine.resume_os_updates_command() + " && echo on", tmp_path).stdout == "on\n"
    log = (tmp_path / "log").read_text().splitlines()
    assert "stop update-engine.service locksmithd.service" in log
    assert log[-1] == "start --no-block update-engine.service" and not paused.exists()  # queued, not waited for
    assert run_sh(env + machine.resume_os_updates_command(), tmp_path).returncode == 0  # nothing paused: nothing


def test_os_updates_are_paused_beside_a_command_and_a_failed_staging_resumes_them(tmp_path, monkeypatch):
    from tasks.commands.shell import staging_command
    env = stand_in_systemctl(tmp_path, monkeypatch)
    paused = tmp_path / "paused"
    done = run_sh(env + machine.paused_while("echo pulled") + " && echo on", tmp_path)
    assert (done.returncode, done.stdout, paused.read_text()) == (0, "pulled\non\n", "update-engine.service\n")
    paused.unlink()
    assert run_sh(env + machine.paused_while("false"), tmp_path).returncode != 0
    assert paused.exists()  # the pause was waited for, whatever the command's end: ``undo`` finds it done
    paused.unlink()
    staging = staging_command([], before=machine.paused_while("false"), undo=machine.resume_os_updates_command())
    assert run_sh(env + staging, tmp_path).returncode != 0
    log = (tmp_path / "log").read_text().splitlines()
    assert log[-1] == "start --no-block update-engine.service" and not paused.exists()


def test_diagnostics_command(cluster):
    assert machine.diagnostics_command(cluster) == (
        "echo '--- air-web.service'; journalctl -u air-web.service -n 5 --no-pager -o cat 2>/dev/null; "
        "echo '--- air-worker.service'; journalctl -u air-worker.service -n 5 --no-pager -o cat 2>/dev/null")


def test_wipe_undoes_what_preflight_looks_at(cluster):
    """Every file and folder whose presence makes a machine 'not fresh' is removed by the wipe."""
    wipe = machine.wipe_command(cluster, USER_DATA)
    for path in (machine.ETCD_DROPIN_PATH, "/var/lib/etcd/member", "/etc/air/state",
                 "/etc/systemd/system/air-web.service", "/etc/systemd/system/air-worker.service"):
        assert path in wipe


# ---------------------------------------------------------------- secrets per component

def _secret_cluster(cluster):
    from dataclasses import replace
    cluster.secrets.mkdir(exist_ok=True)
    (cluster.secrets / "db_password").write_text("pw-SECRET\n")
    (cluster.secrets / "tls.key").write_text("key-SECRET\n")
    (cluster.secrets / "unused").write_text("nobody gets it\n")
    web = replace(cluster.component("web"), secrets=("tls.key",))
    worker = replace(cluster.component("worker"), secrets=("db_password", "tls.key"), user=1000)
    return replace(cluster, components=(web, worker))


def test_each_component_gets_its_own_secrets_only_owner_readable(cluster):
    c = _secret_cluster(cluster)
    assert machine.secret_files(c) == [("/etc/air/secrets/web/tls.key", b"key-SECRET\n", 0o400),
                                       ("/etc/air/secrets/worker/db_password", b"pw-SECRET\n", 0o400),
                                       ("/etc/air/secrets/worker/tls.key", b"key-SECRET\n", 0o400)]


def test_the_secrets_folders_belong_to_their_components_users(cluster):
    assert machine.own_secrets_command(_secret_cluster(cluster)) == (
        "mkdir -p /etc/air/secrets && chmod 0700 /etc/air/secrets && "
        "chown -R 0 /etc/air/secrets/web && chmod 0700 /etc/air/secrets/web && "
        "chown -R 1000 /etc/air/secrets/worker && chmod 0700 /etc/air/secrets/worker")


def test_secrets_facts_are_digests_and_the_changes_name_whom_to_restart(cluster, tmp_path):
    import hashlib
    import subprocess
    c = _secret_cluster(cluster)
    folder = tmp_path / "etc/air/secrets"
    (folder / "web").mkdir(parents=True)
    (folder / "web/tls.key").write_text("key-SECRET\n")
    (folder / "old-layout-file").write_text("x")
    text = subprocess.run(["sh", "-c", machine.secrets_facts_command().replace("/etc/air/secrets", str(folder))],
                          capture_output=True, text=True, check=True).stdout
    found = {p.replace(str(folder), "/etc/air/secrets"): d for p, d in machine.parse_secrets_facts(text).items()}
    assert found == {"/etc/air/secrets/web/tls.key": hashlib.sha256(b"key-SECRET\n").hexdigest(),
                     "/etc/air/secrets/old-layout-file": hashlib.sha256(b"x").hexdigest()}
    write, remove = machine.secret_changes(machine.digests(machine.secret_files(c)), found)
    assert write == ["/etc/air/secrets/worker/db_password", "/etc/air/secrets/worker/tls.key"]
    assert remove == ["/etc/air/secrets/old-layout-file"]
    assert machine.components_using(c, write + remove) == ["worker"]
    assert machine.components_using(c, ["/etc/air/secrets/web/tls.key"]) == ["web"]
    assert "SECRET" not in text


def docker_login(doc) -> str:
    import base64
    import json
    config = next(f for f in cloudconfig.files(doc) if f.path == cloudconfig.DOCKER_CONFIG)
    return base64.b64decode(json.loads(config.content)["auths"]["registry.example.org:5000"]["auth"]).decode()


def test_machines_log_in_with_the_pull_only_account_when_there_is_one(cluster, tmp_path):
    (tmp_path / "registry.yaml").write_text("username: pusher\npassword: push-secret\n")
    (tmp_path / "registry.yaml").chmod(0o600)
    assert docker_login(machine.base_document(cluster)) == "pusher:push-secret"
    (tmp_path / "pull.yaml").write_text("username: puller\npassword: pull-secret\n")
    (tmp_path / "pull.yaml").chmod(0o600)
    with_puller = replace(cluster, registry=replace(cluster.registry, pull_credentials=tmp_path / "pull.yaml"))
    doc = machine.base_document(with_puller)
    assert docker_login(doc) == "puller:pull-secret"
    assert "push-secret" not in cloudconfig.render(doc)


CLEANUP_DOCKER = """#!/bin/sh
# docker as the cleanup command uses it: $IMAGES lists the images of the filtered repositories,
# $USED those containers use; rmi appends to the file `removed`.
state=$(dirname "$0")
case "$1" in
  ps) [ -n "$USED" ] && echo container1; exit 0 ;;
  inspect) echo "$USED"; exit 0 ;;
  images) echo "$*" > "$state/images-args"; printf '%s\\n' $IMAGES; exit 0 ;;
  rmi) echo "$3" >> "$state/removed"; exit 0 ;;
esac
exit 2
"""


def test_cleanup_removes_the_images_of_no_kept_release_that_no_container_uses(tmp_path, cluster):
    (tmp_path / "docker").write_text(CLEANUP_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    old, used = "sha256:" + "1" * 64, "sha256:" + "2" * 64
    kept = [RELEASE]  # web a..., worker b...
    images = " ".join(["sha256:" + "a" * 64, old, used, "sha256:" + "b" * 64, old])
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "IMAGES": images, "USED": used}
    done = subprocess.run(["sh", "-c", machine.cleanup_command(cluster, ["worker", "web"], kept)], env=env,
                          capture_output=True, text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, f"removed {old}\n")
    assert (tmp_path / "removed").read_text() == f"{old}\n"
    assert (tmp_path / "images-args").read_text() == (
        "images -q --no-trunc --filter reference=registry.example.org:5000/aircloak/prod_web "
        "--filter reference=registry.example.org:5000/aircloak/prod_worker\n")


# ---------------------------------------------------------------- one machine's upgrade, one command

def run_upgrade(tmp_path, cluster, stop_exit=0, health_code="200", unit_state="NeedDaemonReload=yes"):
    """``upgrade_command`` in a real sh, with systemctl and curl stood in for on its PATH: each call
    is logged; curl answers ``health_code``, `systemctl show` ``unit_state`` (the unit file changed
    on disk, by default). Returns (exit status, log lines)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "log"
    (bin_dir / "systemctl").write_text(f'#!/bin/sh\n[ "$1" = list-unit-files ] && {{ echo "$3 enabled enabled"; '
                                       f'exit 0; }}\n[ "$1" = show ] && {{ printf "%s\\n" {unit_state}; exit 0; }}\n'
                                       f'echo "systemctl $*" >> {log}\n'
                                       f'[ "$1" = stop ] && exit {stop_exit}\n'
                                       f'[ "$1" = is-active ] && exit 1\nexit 0\n')
    (bin_dir / "curl").write_text(f'#!/bin/sh\necho curl >> {log}\nprintf {health_code}\n')
    for tool in ("systemctl", "curl"):
        (bin_dir / tool).chmod(0o755)
    healthy_within_1 = replace(cluster, timeouts=replace(cluster.timeouts, healthy=1))
    command = machine.upgrade_command(healthy_within_1, ["web"], f"echo swap >> {log}")
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    return done.returncode, log.read_text().splitlines() if log.exists() else []


def test_an_upgrade_stops_swaps_starts_checks_and_resumes_os_updates_in_order(tmp_path, cluster):
    status, log = run_upgrade(tmp_path, cluster)
    assert status == 0
    assert log[:5] == ["systemctl stop air-web.service", "swap", "systemctl daemon-reload",
                       "systemctl enable -q --no-reload air-web.service", "systemctl restart air-web.service"]
    assert log[5:7] == ["curl", "curl"]  # both components healthy at the first try


@pytest.mark.parametrize("unit_state, before_restart", [
    # Known, enabled, unchanged on disk: restarted, nothing more.
    ("LoadState=loaded NeedDaemonReload=no UnitFileState=enabled", []),
    ("LoadState=loaded NeedDaemonReload=no UnitFileState=disabled", ["enable"]),
    # Changed on disk, or never read by systemd: read again, then enabled.
    ("LoadState=loaded NeedDaemonReload=yes UnitFileState=enabled", ["daemon-reload", "enable"]),
    ("LoadState=not-found NeedDaemonReload=no UnitFileState=", ["daemon-reload", "enable"])])
def test_systemd_reads_the_units_again_and_enables_them_only_when_it_says_so(tmp_path, cluster, unit_state,
                                                                              before_restart):
    status, log = run_upgrade(tmp_path, cluster, unit_state=unit_state)
    calls = {"daemon-reload": "systemctl daemon-reload", "enable": "systemctl enable -q --no-reload air-web.service"}
    assert status == 0
    assert log[log.index("swap") + 1:][:len(before_restart) + 1] == [
        *(calls[c] for c in before_restart), "systemctl restart air-web.service"]


def test_an_upgrade_that_is_not_healthy_says_so_by_its_exit_status(tmp_path, cluster):
    status, log = run_upgrade(tmp_path, cluster, health_code="503")
    assert status == machine.UNHEALTHY
    assert "swap" in log and log.count("curl") >= 2


def test_an_upgrade_whose_stop_fails_goes_no_further(tmp_path, cluster):
    status, log = run_upgrade(tmp_path, cluster, stop_exit=5)
    assert status == 5 and log == ["systemctl stop air-web.service"]


def test_release_facts_carry_the_base_verbatim_whatever_its_lines():
    base = "#cloud-config\n---\n--units\nwrite_files: []\n"
    text = (f"--release\nabc\n--components\nweb 1.0.0\n--units\nactive\nfailed\n--system\nrunning\n--user_data\n/u\n"
            f"{machine.BASE_MARK}/u{cloudconfig.BASE_SUFFIX}\n{base}")
    cluster = SimpleNamespace(components=[SimpleNamespace(name="web"), SimpleNamespace(name="worker")])
    facts = machine.parse_release_facts(text, cluster)
    assert facts == {"release": "abc", "system": "running", "components": {"web": "1.0.0"},
                     "units": {"air-web.service": "active", "air-worker.service": "failed"},
                     "user_data": "/u", "base": ("/u.air-base", base), "edited": False}
    assert machine.parse_release_facts(text.split(machine.BASE_MARK)[0], cluster)["base"] is None


@pytest.mark.parametrize("digests, edited", [
    ((), False),                  # no cloud config, nor one written by air-deploy
    (("a" * 64,), False),         # written before air-deploy kept its digest (or not written by it)
    (("a" * 64, "a" * 64), False),
    (("a" * 64, "b" * 64), True),  # changed since air-deploy wrote it
])
def test_the_facts_tell_a_cloud_config_changed_by_hand(digests, edited):
    cluster = SimpleNamespace(components=[SimpleNamespace(name="web")])
    text = release_facts_text("abc", {"web": "1.0.0"}, ["active"], "/u", "#cloud-config\n", digests)
    facts = machine.parse_release_facts(text, cluster)
    assert facts["edited"] is edited and facts["base"] == ("/u.air-base", "#cloud-config\n")
    assert (machine.changed_by_hand("10.0.0.1", facts) is None) is not edited


def test_the_facts_command_prints_the_written_digest_then_the_present_one(tmp_path, cluster):
    """The facts command in a real sh, against a cloud config on disk (the user_data path of the cluster)."""
    user_data = tmp_path / "user_data"
    written = replace(cluster, cloud_config=str(user_data))
    doc_text = "#cloud-config\nwrite_files: []\n"
    files = machine.document_files({"write_files": []}, str(user_data))
    assert files[-1] == (f"{user_data}.air-written", hashlib.sha256(files[-2][1].encode()).hexdigest() + "\n", 0o600)
    for path, content, _ in files[-2:]:
        Path(path).write_text(content)

    def facts():
        out = subprocess.run(["sh", "-c", machine.release_facts_command(written)], capture_output=True, text=True,
                             env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}).stdout
        return machine.parse_release_facts(out, written)
    (tmp_path / "systemctl").write_text("#!/bin/sh\nexit 3\n")
    (tmp_path / "systemctl").chmod(0o755)
    assert facts()["edited"] is False
    user_data.write_text(files[-2][1] + "# an administrator's note\n")
    assert facts()["edited"] is True
    user_data.write_text(doc_text)
    Path(f"{user_data}.air-written").unlink()
    assert facts()["edited"] is False


def test_a_machine_without_a_cloud_config_is_refused_with_how_to_prepare_it():
    with pytest.raises(machine.PreflightError, match=r"^10\.0\.0\.1: no cloud config at /u: prepare the machine"):
        machine.parse_base("10.0.0.1", "/u", None)


def test_the_prefetch_starts_the_new_images_pulls_and_returns_without_waiting_for_them(tmp_path, cluster):
    old = Release((Image("web", "1.2.2", "sha256:" + "b" * 64, "sha256:" + "d" * 64),
                   Image("worker", "1.0.0", "sha256:" + "c" * 64, "sha256:" + "f" * 64)))
    new = Release((ONE.images[0], old.images[1]))
    web = cluster.pinned_ref(ONE.images[0])
    assert machine.prefetch_command(cluster, new, old) == (
        f"setsid -f flock {machine.PREFETCH_LOCK} timeout {cluster.timeouts.pull} sh -c 'for ref; do {{ docker image "
        f"inspect \"$ref\" >/dev/null 2>&1 || docker pull -q \"$ref\"; }} & done; wait' prefetch {web} "
        f"</dev/null >/dev/null 2>&1")
    assert machine.prefetch_command(cluster, new, new) == "" and machine.prefetch_command(cluster, new, None) == ""
    # A docker that has no image ($HAVE unset) and pulls only once told to: the command has returned long before.
    (tmp_path / "docker").write_text('#!/bin/sh\nstate=$(dirname "$0")\necho "$*" >> "$state/calls"\n'
                                     '[ "$1" = image ] && { [ -n "$HAVE" ]; exit; }\n'
                                     'while [ ! -e "$state/go" ]; do sleep 0.01; done\necho "$*" > "$state/pulled"\n')
    (tmp_path / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}

    def prefetch(**more):
        return subprocess.run(["sh", "-c", machine.prefetch_command(cluster, new, old) + "; echo read"],
                              env={**env, **more}, capture_output=True, text=True, timeout=30)
    done = prefetch()
    assert (done.returncode, done.stdout, done.stderr) == (0, "read\n", "")
    assert not (tmp_path / "pulled").exists()
    (tmp_path / "go").touch()
    for _ in range(1000):
        if (tmp_path / "pulled").exists() and (tmp_path / "pulled").read_text():
            break
        time.sleep(0.01)
    assert (tmp_path / "pulled").read_text() == f"pull -q {web}\n"
    # An image the machine has: looked at, not pulled (the registry is not asked).
    (tmp_path / "calls").unlink()
    assert prefetch(HAVE="1").returncode == 0
    for _ in range(1000):
        if (tmp_path / "calls").exists():
            break
        time.sleep(0.01)
    time.sleep(0.2)  # a pull, were one started, would be logged by now
    assert (tmp_path / "calls").read_text() == f"image inspect {web}\n"


def test_the_pull_waits_for_a_prefetch_under_way_and_finds_its_image(tmp_path, cluster):
    """A docker whose pulls end only once told to: the preparation's pull, started while the
    prefetch pulls, waits for it and then only reads the image's ID; it never pulls a second time."""
    (tmp_path / "docker").write_text(
        '#!/bin/sh\nstate=$(dirname "$0")\necho "$1" >> "$state/calls"\ncase "$1" in\n'
        '  pull) while [ ! -e "$state/go" ]; do sleep 0.01; done; touch "$state/have"; exit 0 ;;\n'
        '  image) [ -e "$state/have" ] || exit 1; [ "$3" = -f ] && echo "$ID"; exit 0 ;;\nesac\nexit 2\n')
    (tmp_path / "docker").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ID": ONE.images[0].digest}
    old = Release((Image("web", "1.2.2", "sha256:" + "b" * 64, "sha256:" + "d" * 64),))
    subprocess.run(["sh", "-c", machine.prefetch_command(cluster, ONE, old)], env=env, check=True, timeout=30)
    for _ in range(1000):  # the prefetch is pulling
        if (tmp_path / "calls").exists() and "pull" in (tmp_path / "calls").read_text():
            break
        time.sleep(0.01)
    pulling = subprocess.Popen(["sh", "-c", machine.pull_command(cluster, ONE)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # were it not waiting, it would have asked for the image and pulled by now
    (tmp_path / "go").touch()
    out, err = pulling.communicate(timeout=30)
    assert (pulling.returncode, err) == (0, "")
    assert (tmp_path / "calls").read_text().split() == ["image", "pull", "image"]


def test_the_pull_command_lets_the_staging_after_it_run(tmp_path, cluster):
    """Rollout runs it as ``before`` of ``remote.staging_command``: it must end with a status, not exit."""
    from tasks.commands.shell import staging_command
    (tmp_path / "docker").write_text(FAKE_DOCKER)
    (tmp_path / "docker").chmod(0o755)
    (tmp_path / "fails").write_text("0")
    pull = machine.pull_command(cluster, ONE)
    assert f"{{ {pull}; }} && wait $unpacking" in staging_command([], pull)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "ID": ONE.images[0].digest}
    done = subprocess.run(["sh", "-c", f"{{ {pull}; }} && echo staged"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert (done.returncode, done.stdout) == (0, "staged\n")


def test_a_worker_is_not_a_fresh_machine():
    assert machine.fresh_problems(machine.parse_facts(FRESH + "etcd_proxy=yes\n")) == [
        "air-etcd-proxy.service is already installed (a worker?)"]


def test_a_workers_proxy_starts_and_retires():
    assert machine.start_etcd_proxy_command() == (
        "systemctl daemon-reload && systemctl enable -q --now air-etcd-proxy.service")
    assert machine.retire_etcd_proxy_command() == (
        "systemctl disable -q --now air-etcd-proxy.service && rm -f /etc/systemd/system/air-etcd-proxy.service && "
        "systemctl daemon-reload")
