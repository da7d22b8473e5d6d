"""tasks/machine.py's pure half: facts parsed from recorded outputs, and the command lines by equality.

The facts outputs below were recorded from sandbox machines (an installed one,
a freshly prepared spare) and from the states in between that preflight must
notice. Nothing here connects anywhere.
"""
from dataclasses import replace

from tasks import machine
from tasks.release import Image, Release

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
        "echo etcd_data=$(test -n \"$(ls -A /var/lib/etcd/member 2>/dev/null)\" && echo yes || echo no); "
        "echo air_units=$(systemctl list-unit-files --no-legend air-web.service air-worker.service 2>/dev/null | wc -l); "
        "echo release=$(cat /etc/air/state/release 2>/dev/null)")


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
    assert machine.units_of(cluster) == ["air-web.service", "air-worker.service"]


def test_pull_command_pulls_side_by_side_and_fails_when_one_fails(cluster):
    assert machine.pull_command(cluster, RELEASE) == (
        "pids=''; "
        "docker pull -q registry.example.org:5000/aircloak/prod_web:1.2.3 >/dev/null & pids=\"$pids $!\"; "
        "docker pull -q registry.example.org:5000/aircloak/prod_worker:1.3.0 >/dev/null & pids=\"$pids $!\"; "
        "for pid in $pids; do wait $pid || exit 1; done")


def test_pull_command_of_some_components(cluster):
    assert machine.pull_command(cluster, RELEASE, ["worker"]) == (
        "pids=''; "
        "docker pull -q registry.example.org:5000/aircloak/prod_worker:1.3.0 >/dev/null & pids=\"$pids $!\"; "
        "for pid in $pids; do wait $pid || exit 1; done")
    assert machine.pull_command(cluster, RELEASE, []) == "true"


def test_start_command(cluster):
    assert machine.start_command(cluster) == (
        "systemctl daemon-reload && systemctl enable -q air-web.service air-worker.service && "
        "systemctl restart air-web.service air-worker.service")


def test_stop_command(cluster):
    assert machine.stop_command(cluster) == "systemctl stop air-web.service air-worker.service"


def test_health_command(cluster):
    assert machine.health_command(cluster, 60) == (
        "deadline=$(( $(date +%s) + 60 )); while :; do failed=''; "
        "code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 http://127.0.0.1:8080/health); "
        "[ \"$code\" = 200 ] || failed=\"$failed web(expected HTTP 200, got HTTP $code)\"; "
        "code=$(curl -s -o /dev/null -w '%{http_code}' -m 2 http://127.0.0.1:9090/ready); "
        "[ \"$code\" = 200 ] || failed=\"$failed worker(expected HTTP 200, got HTTP $code)\"; "
        "[ -z \"$failed\" ] && exit 0; "
        "if [ $(date +%s) -ge $deadline ]; then echo \"not healthy within 60 s:$failed\" >&2; exit 1; fi; "
        "sleep 0.2; done")


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
    assert with_body.startswith("deadline=$(( $(date +%s) + 5 )); body=$(mktemp) || exit 1; "
                                "trap 'rm -f \"$body\"' EXIT; while :; do")


def test_health_command_takes_whole_seconds(cluster):
    assert "+ 12 ))" in machine.health_command(cluster, 12.7)


def test_start_etcd_command():
    assert machine.start_etcd_command() == (
        "systemctl daemon-reload && systemctl enable -q etcd-member.service && "
        "systemctl start --no-block etcd-member.service")


def test_wipe_command(cluster):
    assert machine.wipe_command(cluster) == (
        "systemctl disable -q --now air-web.service air-worker.service etcd-member.service 2>/dev/null; "
        "rm -f /etc/systemd/system/etcd-member.service.d/20-air.conf "
        "/etc/systemd/system/air-web.service /etc/systemd/system/air-worker.service; "
        "rm -rf /var/lib/etcd/member /etc/air/state /etc/air/secrets; systemctl daemon-reload")


def test_diagnostics_command(cluster):
    assert machine.diagnostics_command(cluster) == (
        "echo '--- air-web.service'; journalctl -u air-web.service -n 5 --no-pager -o cat 2>/dev/null; "
        "echo '--- air-worker.service'; journalctl -u air-worker.service -n 5 --no-pager -o cat 2>/dev/null")


def test_wipe_undoes_what_preflight_looks_at(cluster):
    """Every file and folder whose presence makes a machine 'not fresh' is removed by the wipe."""
    wipe = machine.wipe_command(cluster)
    for path in (machine.ETCD_DROPIN_PATH, "/var/lib/etcd/member", "/etc/air/state",
                 "/etc/systemd/system/air-web.service", "/etc/systemd/system/air-worker.service"):
        assert path in wipe
