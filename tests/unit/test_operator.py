"""tasks/operator.py's pure half: the commands sent, the parsers of recorded outputs, the drift
rules with their fixes and the table, all without a connection."""
import copy
import json
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tasks.commands import machine, os_update, status
from tasks.commands.haproxy import Server
from tasks.model import status_view
from tasks.model.errors import AirError, ConfigError
from tasks.runbooks import etcd_members, operator

# Recorded from a sandbox machine (units renamed to the unit-test cluster's web and worker).
STATUS_OUTPUT = """\
--release
529b776f1627
--components
web 1.0.0 8080
worker 1.0.1 9090
--units
Id=air-web.service
ActiveState=active
SubState=running
ActiveEnterTimestampMonotonic=1461438353

Id=air-worker.service
ActiveState=inactive
SubState=dead
ActiveEnterTimestampMonotonic=0
--uptime
1909.65
--etcd
active
{"health":"true"}
--images
Images\t1.988MB\t1.987MB (99%)
Containers\t0B\t0B
Local Volumes\t0B\t0B
Build Cache\t0B\t0B
--user_data
/var/lib/coreos-install/user_data
--written
aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa
bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb
--os
4081.2.0
--update
LAST_CHECKED_TIME=1796586046
PROGRESS=0.000000
CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT
NEW_VERSION=4081.2.1
NEW_SIZE=1
--docker
24.0.9
--boot
0a1b2c3d-0000-4000-8000-000000000001
1976720
--system
running
"""


def test_status_command(cluster):
    assert status.status_command(cluster) == (
        "echo '--release'; cat /etc/air/state/release 2>/dev/null; "
        "echo '--components'; cat /etc/air/state/components 2>/dev/null; "
        "echo '--units'; systemctl show -p Id,ActiveState,SubState,ActiveEnterTimestampMonotonic "
        "air-web.service air-worker.service 2>/dev/null; "
        "echo '--uptime'; cut -d' ' -f1 /proc/uptime; "
        "echo '--etcd'; systemctl is-active etcd-member.service 2>/dev/null; "
        "echo proxy=$(systemctl is-active air-etcd-proxy.service 2>/dev/null); "
        "curl -s -m 2 http://127.0.0.1:2379/health 2>/dev/null; echo; "
        "echo '--images'; docker system df --format '{{.Type}}\t{{.Size}}\t{{.Reclaimable}}' 2>/dev/null; "
        f"{machine.cloud_config_facts_command(cluster)}; {os_update.os_facts_command()}")


def test_parse_status(cluster):
    assert status.parse_status(STATUS_OUTPUT, cluster) == {
        "release": "529b776f1627",
        "components": {"web": "1.0.0", "worker": "1.0.1"},
        "units": {"web": {"unit": "air-web.service", "state": "active", "sub": "running", "version": "1.0.0",
                          "uptime": 448},
                  "worker": {"unit": "air-worker.service", "state": "inactive", "sub": "dead", "version": "1.0.1",
                             "uptime": None}},
        "etcd": {"active": "active", "proxy": "unknown", "healthy": True},
        "images": {"size": "1.988MB", "reclaimable": "1.987MB (99%)"},
        "cloud_config": {"user_data": "/var/lib/coreos-install/user_data", "edited": True},
        "os": {"version": "4081.2.0", "update": "UPDATE_STATUS_UPDATED_NEED_REBOOT", "staged": "4081.2.1",
               "docker": "24.0.9", "system": "running", "state": "update staged: 4081.2.1, reboot pending"},
    }


def test_parse_status_of_a_machine_without_units_or_etcd(cluster):
    parsed = status.parse_status("--release\n--components\n--units\n--uptime\n12.5\n--etcd\ninactive\n\n"
                                   "--images\n", cluster)
    assert parsed["release"] == "" and parsed["etcd"] == {"active": "inactive", "proxy": "unknown", "healthy": False}
    assert {u["state"] for u in parsed["units"].values()} == {"unknown"}


@pytest.mark.parametrize("seconds, shown", [(None, "-"), (5, "5s"), (192, "3m12s"), (7500, "2h05m"),
                                            (356400, "4d03h")])
def test_duration(seconds, shown):
    assert status_view.duration(seconds) == shown


def member(address, learner=False, started=True):
    return {"id": address[-1], "address": address, "learner": learner, "started": started}


def machine_view(address, release="r1", listed=True, role="follower", units=None):
    return {"address": address, "reachable": True, "error": None, "release": release,
            "etcd": {"role": role, "active": "active", "healthy": True}, "balancer": listed,
            "units": units or {"web": {"state": "active", "version": "1.0.0", "uptime": 60},
                               "worker": {"state": "active", "version": "1.0.0", "uptime": 60}},
            "images": {"size": "2MB"},
            "os": {"version": "4081.2.0", "update": "UPDATE_STATUS_IDLE", "staged": None, "docker": "24.0.9",
                   "system": "running", "state": "no update staged"}}


MACHINES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
HEALTHY = {
    "cluster": "prod", "file_machines": MACHINES, "components": ["web", "worker"],
    "release": {"id": "r1", "outcome": "succeeded", "when": "2024-01-02T03:04:05Z", "who": "ann@desk",
                "components": {"web": {"version": "1.0.0"}, "worker": {"version": "1.0.0"}}},
    "candidate": None, "lock": None,
    "etcd": {"members": [member(m) for m in MACHINES], "leader": "10.0.0.1", "via": "10.0.0.1", "error": None,
             "quorum": True, "answering": 3, "voters": 3, "said": "quorum: 3 of 3 members answer",
             "db_size": {"10.0.0.1": 24576, "10.0.0.2": 2_500_000, "10.0.0.3": None}},
    "balancer": {"host": "10.0.0.100", "listed": MACHINES, "error": None, "component": "web"},
    "machines": [machine_view(m, role="leader" if m == "10.0.0.1" else "follower") for m in MACHINES],
    "backup": {"folder": "/b", "newest": "/b/prod-20240102T030405000000Z-rev7.db", "age": 312, "revision": 7,
               "keys": 12},
    "seconds": 0.25,
}


def view(**changes):
    v = copy.deepcopy(HEALTHY)
    v.update(changes)
    return v


def test_a_cluster_as_recorded_has_no_warning():
    assert status_view.drift_warnings(HEALTHY) == []


def test_an_os_update_staged_is_said_with_os_upgrade_as_its_fix_and_a_reboot_under_way_too():
    v = view()
    v["machines"][0]["os"].update(staged="4081.2.1", state="update staged: 4081.2.1, reboot pending")
    v["machines"][2]["os"].update(system="starting", state="rebooting (systemd starting)")
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.1", "problem": "10.0.0.1: update staged: 4081.2.1, reboot pending",
         "fix": "`fab os-upgrade --cluster prod`"},
        {"machine": "10.0.0.3", "problem": "10.0.0.3 is rebooting (systemd starting)",
         "fix": "wait for it, then `fab status --cluster prod` (deploys refuse meanwhile)"}]


def test_a_machine_whose_os_was_not_read_has_no_os_warning():
    v = view()
    del v["machines"][0]["os"]
    assert status_view.drift_warnings(v) == []


def test_a_cloud_config_changed_by_hand_is_drift_with_where_the_change_belongs():
    v = view()
    v["machines"][2]["cloud_config"] = {"user_data": "/u", "edited": True}
    v["machines"][1]["cloud_config"] = {"user_data": "/u", "edited": False}
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.3", "problem": "/u on 10.0.0.3 was changed by hand since air-deploy wrote it "
                                           "(a deploy stops there)",
         "fix": "make it in /u.air-base (the administrator's base, which installs extend) and put /u back as it was, "
                "or remove /u.air-written to let the change go"}]


def test_out_of_the_balancer_and_a_stopped_unit_are_two_warnings_with_their_fixes():
    v = view()
    v["balancer"]["listed"] = MACHINES[1:]
    v["machines"][0]["balancer"] = False
    v["machines"][1]["units"]["worker"]["state"] = "inactive"
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.1", "problem": "10.0.0.1 is out of the balancer",
         "fix": "`fab upgrade-machine --cluster prod --machine 10.0.0.1` (health check, then back in)"},
        {"machine": "10.0.0.2", "problem": "on 10.0.0.2: worker is inactive",
         "fix": "`fab upgrade-machine --cluster prod --machine 10.0.0.2`"},
    ]


def test_the_candidate_on_its_machine_is_not_drift_but_elsewhere_it_is():
    v = view(candidate={"id": "r2", "machines": ["10.0.0.3"], "when": "t"})
    v["machines"][2]["release"] = "r2"
    assert status_view.drift_warnings(v) == []
    v["machines"][1]["release"] = "r2"
    assert status_view.drift_warnings(v) == [{"machine": "10.0.0.2", "problem": "10.0.0.2 runs release r2, not r1",
                                           "fix": "`fab upgrade-machine --cluster prod --machine 10.0.0.2`"}]


def test_unreachable_machine_learner_and_stray_balancer_entry():
    v = view()
    v["machines"][0] = {"address": "10.0.0.1", "reachable": False, "error": "no answer (timed out)",
                        "etcd": {"role": "leader"}, "balancer": True, "release": None, "units": {}, "images": {}}
    v["etcd"]["members"][2]["learner"] = True
    v["machines"][2]["etcd"]["role"] = "learner"
    v["balancer"]["listed"] = MACHINES + ["10.0.0.9"]
    fixes = {w["problem"]: w["fix"] for w in status_view.drift_warnings(v)}
    assert fixes == {
        "10.0.0.1 cannot be reached (no answer (timed out))":
            "once it answers: `fab upgrade-machine --cluster prod --machine 10.0.0.1`; if it is gone for good: "
            "`fab remove-machine --cluster prod --via 10.0.0.1 --machine 10.0.0.1 --force`",
        "10.0.0.3 is an etcd learner left behind by an unfinished add-machine":
            "`fab remove-machine --cluster prod --via 10.0.0.1 --machine 10.0.0.3`, then add-machine again",
        "the balancer routes to 10.0.0.9, which is neither an etcd member nor a worker":
            "`fab balancer.remove --cluster prod --machine 10.0.0.9`",
    }


def test_an_unfinished_rollout_with_no_lock_holder_is_drift():
    v = view()
    v["release"]["outcome"] = "upgrading"
    assert [w["fix"] for w in status_view.drift_warnings(v)] == ["`fab rolling-upgrade --cluster prod`"]
    v["lock"] = {"who": "ann@desk", "why": "deploy master"}
    assert status_view.drift_warnings(v) == []


def test_etcd_that_does_not_answer_is_drift():
    v = view()
    v["etcd"] = {"members": [], "leader": None, "via": None, "error": "no healthy etcd member reachable"}
    problems = [w["problem"] for w in status_view.drift_warnings(v)]
    assert problems == ["etcd does not answer: no healthy etcd member reachable"]


def no_quorum_view():
    """m1 answers without quorum, m2 and m3 are gone."""
    v = view()
    said = "no quorum: 1 of 3 members answer"
    v["etcd"] = {"members": [member(m) for m in MACHINES], "leader": None, "via": None, "quorum": False,
                 "answering": 1, "voters": 3, "said": said, "db_size": {"10.0.0.1": 24576},
                 "error": said + " (10.0.0.2: no answer within 1.5 s)"}
    v["machines"][0]["etcd"] = {"role": said, "active": "active", "healthy": False}
    for m in v["machines"][1:]:
        m.update(reachable=False, error="no answer within 2.5 s")
    return v


def test_etcd_without_quorum_is_drift_whose_fix_is_recover_from_the_member_that_answers():
    warnings = status_view.drift_warnings(no_quorum_view())
    assert warnings[0] == {
        "machine": None,
        "problem": "etcd has lost its quorum: no quorum: 1 of 3 members answer (10.0.0.2: no answer within 1.5 s)",
        "fix": "start etcd-member.service on the members that are down if they can come back; if not: "
               "`fab etcd.recover --cluster prod --machine 10.0.0.1` (then add-machine the replacements), or "
               "`fab etcd.restore --cluster prod --snapshot FILE`"}
    assert [w["machine"] for w in warnings[1:]] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_a_live_member_without_quorum_says_so_in_the_table_and_no_backup_is_said():
    v = no_quorum_view()
    v["backup"] = {"folder": "/b", "newest": None, "age": None, "revision": None, "keys": None}
    v["warnings"] = []
    lines = status_view.render_status(v)
    assert lines[3] == ("10.0.0.1  ok    no quorum: 1 of 3 members answer, UNHEALTHY  in        r1 (recorded)  2MB"
                        "     4081.2.0  24.0.9")
    assert "etcd:      DOES NOT ANSWER: no quorum: 1 of 3 members answer (10.0.0.2: no answer within 1.5 s)" in lines
    assert "backup:    none in /b" in lines


def test_a_machine_entry_takes_the_quorum_line_for_its_role_when_etcd_has_none():
    etcd = {"members": [member(m) for m in MACHINES], "leader": None, "quorum": False,
            "said": "no quorum: 1 of 3 members answer", "answering_members": ["10.0.0.1"]}
    fact = {"reachable": True, "error": None, "etcd": {"active": "active", "healthy": False}}
    assert operator._machine_entry("10.0.0.1", fact, etcd, ["10.0.0.1"], {"10.0.0.1": "UP"})["etcd"] == \
        {"role": "no quorum: 1 of 3 members answer", "active": "active", "healthy": False}
    assert operator._machine_entry("10.0.0.2", fact, etcd, [], {})["etcd"]["role"] == "member, no answer"
    assert operator._machine_entry("10.0.0.9", fact, etcd, [], {})["etcd"]["role"] == "not a member"
    worker = {**fact, "etcd": {"active": "inactive", "proxy": "active", "healthy": False}}
    assert operator._machine_entry("10.0.0.9", worker, etcd, [], {})["etcd"]["role"] == "worker"
    with_quorum = {**etcd, "quorum": True, "leader": "10.0.0.1"}
    assert operator._machine_entry("10.0.0.1", fact, with_quorum, [], {})["etcd"]["role"] == "leader"


def test_machine_role():
    members = [member("10.0.0.1"), member("10.0.0.2", learner=True), member("10.0.0.3", started=False)]
    assert [status_view.machine_role(m, members, "10.0.0.1") for m in MACHINES + ["10.0.0.4"]] == \
        ["leader", "learner", "joining", "not a member"]


def test_the_table():
    v = view(warnings=[], candidate={"id": "r2", "machines": ["10.0.0.3"], "when": "t"})
    v["machines"][2]["release"] = "r2"
    v["machines"][1]["units"]["worker"] = {"state": "failed", "version": "1.0.0", "uptime": None}
    v["machines"][1]["os"]["staged"] = "4081.2.1"
    assert status_view.render_status(v) == [
        "cluster prod",
        "",
        "MACHINE   SSH  ETCD               BALANCER  RELEASE         IMAGES  OS                          DOCKER",
        "10.0.0.1  ok   leader, healthy    in        r1 (recorded)   2MB     4081.2.0                    24.0.9",
        "10.0.0.2  ok   follower, healthy  in        r1 (recorded)   2MB     4081.2.0 (4081.2.1 staged)  24.0.9",
        "10.0.0.3  ok   follower, healthy  in        r2 (candidate)  2MB     4081.2.0                    24.0.9",
        "",
        "units (state, version, up for):",
        "MACHINE   web                 worker",
        "10.0.0.1  active 1.0.0 1m00s  active 1.0.0 1m00s",
        "10.0.0.2  active 1.0.0 1m00s  FAILED 1.0.0",
        "10.0.0.3  active 1.0.0 1m00s  active 1.0.0 1m00s",
        "",
        "release:   r1 (succeeded, 2024-01-02T03:04:05Z, ann@desk) web=1.0.0 worker=1.0.0",
        "candidate: r2 on 10.0.0.3 (since t; `fab deploy` continues, `fab rollback` puts it back)",
        "lock:      free",
        "maintenance: off",
        "etcd:      leader 10.0.0.1, quorum: 3 of 3 members answer, db 2.5 MB",
        "backup:    newest 5m12s old, rev 7, 12 keys (/b/prod-20240102T030405000000Z-rev7.db)",
        "all as recorded (read in 0.25 s)",
    ]


def test_journal_commands():
    assert status.journal_command("web", 50) == "journalctl -u air-web.service -o json --no-pager -n 50"
    assert status.journal_command("web", 5, since="2024-01-02 03:04") == \
        "journalctl -u air-web.service -o json --no-pager -n 5 --since '2024-01-02 03:04'"
    assert status.journal_command("web", 5, follow=True) == \
        "journalctl -u air-web.service -o json --no-pager -f -n 0"
    assert status.journal_command("web", 5, follow=True, after="s=1;i=2") == \
        "journalctl -u air-web.service -o json --no-pager -f --after-cursor 's=1;i=2' -n all"


def test_journals_merge_in_time_order():
    a = "\n".join(json.dumps(e) for e in [
        {"__REALTIME_TIMESTAMP": "1000", "MESSAGE": "a1", "__CURSOR": "c1"},
        {"__REALTIME_TIMESTAMP": "3000", "MESSAGE": [104, 105, 255], "__CURSOR": "c2"}]) + "\nnot json\n"
    b = json.dumps({"__REALTIME_TIMESTAMP": "2000", "MESSAGE": "b1", "__CURSOR": "d1"})
    parsed = {"10.0.0.1": status.parse_journal(a), "10.0.0.2": status.parse_journal(b)}
    assert parsed["10.0.0.1"][1] == (3000, "hi\ufffd", "c2")
    assert status_view.merged(parsed) == [(1000, "10.0.0.1", "a1"), (2000, "10.0.0.2", "b1"),
                                       (3000, "10.0.0.1", "hi\ufffd")]
    assert status_view.log_line(1_700_000_000_123_456, "10.0.0.1", "hello") == \
        "10.0.0.1  2023-11-14T22:13:20.123456Z  hello"
    assert json.loads(status_view.log_json(1_700_000_000_123_456, "10.0.0.1", "hello")) == \
        {"machine": "10.0.0.1", "time": "2023-11-14T22:13:20.123456Z", "message": "hello"}


def test_exec_command():
    assert status.exec_command("web", "bin/console; echo $HOME", tty=False) == \
        "docker exec air-web sh -c 'bin/console; echo $HOME'"
    assert status.exec_command("web", "sh", tty=True) == "docker exec -it air-web sh -c sh"


@pytest.mark.parametrize("lines", [0, -3, "many", None])
def test_lines_must_be_positive(lines):
    with pytest.raises(ConfigError, match=r"^--lines: expected a positive whole number"):
        operator.check_lines(lines)


def test_a_machine_must_be_the_clusters(cluster):
    assert operator.machines_of(cluster) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert operator.machines_of(cluster, "10.0.0.2") == ["10.0.0.2"]
    with pytest.raises(ConfigError, match=r"^--machine: 10\.0\.0\.9 is not a machine of prod"):
        operator.machines_of(cluster, "10.0.0.9")


@pytest.fixture
def tasks_on(cluster, monkeypatch):
    """The tasks see the unit-test cluster `prod`; opening a session fails the test (bad input must
    be refused before anything is contacted)."""
    from invoke import Context

    from tasks.model import cluster as cluster_config
    monkeypatch.setenv(cluster_config.CLUSTERS_VARIABLE, str(cluster.file.parent))

    def no_session(*args, **kwargs):
        raise AssertionError("a session was opened")
    monkeypatch.setattr(operator, "session", no_session)
    return Context()


@pytest.mark.parametrize("task, kwargs, message", [
    ("logs", {}, "error: --component is required (one of: web, worker)"),
    ("logs", {"component": "db"}, "no component 'db' (known: web, worker)"),
    ("logs", {"component": "web", "lines": 0}, "error: --lines: expected a positive whole number, got 0"),
    ("logs", {"component": "web", "machine_": "10.0.0.7"}, "error: --machine: 10.0.0.7 is not a machine of prod"),
    ("logs", {"component": "web", "since": " "}, "error: --since: expected a time journalctl understands"),
    ("exec_", {"machine_": "10.0.0.1", "command": "ls"}, "error: --component is required (one of: web, worker)"),
    ("exec_", {"component": "web", "command": "ls"}, "error: --machine is required"),
    ("exec_", {"component": "web", "machine_": "10.0.0.1"}, "error: --command is required"),
    ("exec_", {"component": "web", "machine_": "10.0.0.1; reboot", "command": "ls"}, "error: command line: --machine"),
    ("status", {"via": "nowhere"}, "error: command line: --via: expected an IPv4 or IPv6 address"),
])
def test_bad_input_is_one_error_line_before_anything_is_contacted(tasks_on, task, kwargs, message):
    from invoke.exceptions import Exit
    with pytest.raises(Exit) as stopped:
        getattr(operator, task)(tasks_on, cluster="prod", **kwargs)
    assert stopped.value.code == 1
    text = str(stopped.value.message)
    assert "\n" not in text and (text.startswith(message) or message in text), text


def test_haproxy_states_of_the_machines_from_its_servers():
    servers = [Server("prod_http", "10.0.0.1", "UP", 0), Server("prod_http", "10.0.0.2", "DRAIN", 2),
               Server("prod_http", "10.0.0.3", "DOWN 1/2", 0), Server("prod_https", "10.0.0.1", "UP", 1)]
    assert status.haproxy_states(servers) == {"10.0.0.1": "UP", "10.0.0.2": "DRAIN", "10.0.0.3": "DOWN"}
    assert status.haproxy_states([]) == {}


def test_haproxy_marking_a_listed_machine_down_or_drained_is_drift():
    v = view()
    for m, state_ in zip(v["machines"], ("UP", "DRAIN", "DOWN")):
        m["balancer_state"] = state_
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.2", "problem": "haproxy marks 10.0.0.2 DRAIN",
         "fix": "`fab balancer.remove --cluster prod --machine 10.0.0.2`, then `fab balancer.add` of it "
                "(haproxy readies it)"},
        {"machine": "10.0.0.3", "problem": "haproxy marks 10.0.0.3 DOWN",
         "fix": "`fab logs --cluster prod --component web --machine 10.0.0.3` says why its router fails "
                "haproxy's check"},
    ]
    rows = status_view.render_status({**v, "warnings": []})[3:6]
    assert [f"  in ({state_})  " in row for row, state_ in zip(rows, ("UP", "DRAIN", "DOWN"))] == [True] * 3


def test_etcd_open_while_the_cluster_file_asks_for_logins_is_drift_with_its_fix():
    v = view(warnings=[])
    v["etcd"]["auth"] = {"wanted": True, "on": False}
    assert status_view.drift_warnings(v) == [{
        "machine": None, "problem": "etcd's authentication is off: any process on a machine may read and write it",
        "fix": "`fab etcd.auth --cluster prod`"}]
    assert ", OPEN to any client on a machine" in "\n".join(status_view.render_status({**v, "warnings": []}))
    v["etcd"]["auth"] = {"wanted": True, "on": True}
    assert status_view.drift_warnings(v) == []
    assert ", logins required" in "\n".join(status_view.render_status({**v, "warnings": []}))
    v["etcd"]["auth"] = {"wanted": False, "on": False}  # an open cluster, as its file says: no drift
    assert status_view.drift_warnings(v) == []


def test_a_journal_line_or_etcd_value_cannot_drive_the_terminal():
    assert status_view.printable("a\x1b[2Jb\rc\td é") == "a\\x1b[2Jb\\x0dc\td é"
    assert status_view.log_line(1_700_000_000_000_000, "10.0.0.1", "x\x1b]0;title\x07y") == \
        "10.0.0.1  2023-11-14T22:13:20.000000Z  x\\x1b]0;title\\x07y"


def test_a_machine_with_an_etcd_proxy_and_no_membership_is_a_worker():
    members = [member("10.0.0.1")]
    assert status_view.machine_role("10.0.0.4", members, "10.0.0.1", "active") == "worker"
    assert status_view.machine_role("10.0.0.4", members, "10.0.0.1", "failed") == "worker"
    assert status_view.machine_role("10.0.0.4", members, "10.0.0.1", "inactive") == "not a member"
    assert status_view.machine_role("10.0.0.1", members, "10.0.0.1", "inactive") == "leader"


def test_a_healthy_worker_is_no_drift_and_one_whose_proxy_reaches_no_member_is_said():
    v = view(file_machines=MACHINES + ["10.0.0.4"])
    v["balancer"]["listed"] = MACHINES + ["10.0.0.4"]
    v["machines"].append(machine_view("10.0.0.4", role="worker"))
    assert status_view.drift_warnings(v) == []
    assert "10.0.0.4" in "\n".join(status_view.render_status({**v, "warnings": [], "ok": True}))
    v["machines"][3]["etcd"].update(healthy=False, proxy="active")
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.4", "problem": "the etcd proxy on worker 10.0.0.4 cannot reach the etcd members "
                                           "(air-etcd-proxy.service active)",
         "fix": "`journalctl -u air-etcd-proxy.service` on 10.0.0.4 says why; it needs the members' port 2379"}]


def test_a_worker_outside_the_cluster_file_is_said_so():
    v = view()
    v["balancer"]["listed"] = MACHINES + ["10.0.0.4"]
    v["machines"].append(machine_view("10.0.0.4", role="worker"))
    assert status_view.drift_warnings(v) == [
        {"machine": "10.0.0.4", "problem": "10.0.0.4 is a worker but not in the cluster file (deploys do not reach it)",
         "fix": "add 10.0.0.4 to `machines:` in prod.yaml"}]


def test_the_etcd_section_says_the_proxy():
    assert status._etcd(["inactive", "proxy=active", '{"health":"false"}']) == {
        "active": "inactive", "proxy": "active", "healthy": False}


def listing(*members, learners=()):
    """The member list a member's Answer carries: (address, id, learner, started)."""
    return tuple((a, a[-1], a in learners, True) for a in [*members, *learners])


def test_the_members_not_asked_are_the_voters_the_answers_list_beyond_them():
    said = listing("10.0.0.1", "10.0.0.2", "10.0.0.5", learners=("10.0.0.6",))
    answers = {"10.0.0.1": etcd_members.Answer("10.0.0.1", None, True, {}, said),
               "10.0.0.2": etcd_members.Answer("10.0.0.2", "no answer within 1.5 s"),
               "10.0.0.3": etcd_members.Answer("10.0.0.3", "etcd at 10.0.0.3: HTTP 404")}
    assert etcd_members.not_asked(answers) == ["10.0.0.5"]
    assert etcd_members.not_asked({"10.0.0.2": answers["10.0.0.2"]}) == []


@pytest.fixture
def wide(cluster, monkeypatch):
    """(session on 8 machines with 3 etcd members: 10.0.0.1, .2 and .5, the worker .3 among the first
    three of the file after a promotion; the addresses asked, in order)."""
    machines = tuple(f"10.0.0.{i}" for i in range(1, 9))
    members = ("10.0.0.1", "10.0.0.2", "10.0.0.5")
    asked: list = []

    def ask(ex, address, timeout, partial, reads):
        asked.append(address)
        if address not in members:  # a worker's grpc-proxy has no JSON gateway
            raise AirError(f"etcd at {address}: HTTP 404 page not found")
        return etcd_members.Answer(address, None, True, {"leader": "1"}, listing(*members),
                                   {key: None for key in reads}, True)
    monkeypatch.setattr(etcd_members, "ask", ask)
    return SimpleNamespace(cluster=replace(cluster, machines=machines, etcd_members=3), ex=None), asked


def test_status_asks_etcd_of_the_members_only_those_setup_made_first_then_those_they_list(wide):
    s, asked = wide
    found, error = operator.read_etcd(s)
    assert error is None and found["said"] == "quorum: 3 of 3 members answer" and found["leader"] == "10.0.0.1"
    assert sorted(asked[:3]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"] and asked[3:] == ["10.0.0.5"]
    assert [m["address"] for m in found["members"]] == ["10.0.0.1", "10.0.0.2", "10.0.0.5"]
    workers = [operator._machine_entry(a, {"etcd": {"active": "inactive", "proxy": "active", "healthy": True}},
                                       found, [], {})["etcd"]["role"] for a in s.cluster.machines]
    assert workers == ["leader", "follower", "worker", "worker", "follower", "worker", "worker", "worker"]


def test_status_via_a_member_asks_that_one_only_and_without_quorum_says_the_members_errors_only(wide, monkeypatch):
    s, asked = wide
    assert operator.read_etcd(s, via="10.0.0.2")[1] is None and asked == ["10.0.0.2"]
    asked.clear()

    def ask(ex, address, timeout, partial, reads):
        asked.append(address)
        if address == "10.0.0.1":
            partial[address] = etcd_members.Answer(address, None, False, {}, listing("10.0.0.1", "10.0.0.2", "10.0.0.5"))
            raise AirError("no quorum")
        raise AirError(f"etcd at {address}: " + ("HTTP 404" if address == "10.0.0.3" else "cannot reach"))
    monkeypatch.setattr(etcd_members, "ask", ask)
    found, error = operator.read_etcd(s)
    assert sorted(asked) == ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5"]
    assert error == "no quorum: 1 of 3 members answer (etcd at 10.0.0.2: cannot reach; etcd at 10.0.0.5: cannot reach)"
