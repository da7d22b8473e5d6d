"""The OS facts of a machine (tasks.commands.os_update) and the plan of an OS upgrade (tasks.model.os_upgrade_plan)."""
import pytest

from tasks.commands import os_update
from tasks.commands.os_update import OsFacts, parse_os_facts
from tasks.model import os_upgrade_plan
from tasks.model.os_upgrade_plan import Reboot

STAGED = """\
--os
4081.2.0
--update
I1206 19:40:00.000000 update_engine_client.cc:245] Querying Update Engine status...
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


def facts(version="4081.2.0", staged=None, system="running", boot="b1"):
    return OsFacts(version, os_update.NEED_REBOOT if staged else os_update.IDLE, staged, "24.0.9", boot, system)


def test_the_os_facts_command():
    assert os_update.os_facts_command() == (
        "echo '--os'; sed -n 's/^VERSION_ID=//p' /etc/os-release | tr -d \"\\\"'\" 2>/dev/null; "
        "echo '--update'; update_engine_client -status 2>&1; "
        "echo '--docker'; docker version --format '{{.Server.Version}}' 2>/dev/null; "
        "echo '--boot'; cat /proc/sys/kernel/random/boot_id; cut -d' ' -f22 /proc/1/stat; "
        "echo '--system'; systemctl is-system-running 2>/dev/null; true")
    assert os_update.reboot_command() == "systemctl reboot --no-block"


def test_an_update_staged_is_read_with_its_version():
    found = parse_os_facts(STAGED)
    assert found == OsFacts("4081.2.0", os_update.NEED_REBOOT, "4081.2.1", "24.0.9",
                            "0a1b2c3d-0000-4000-8000-000000000001 1976720", "running")
    assert not found.rebooting
    assert os_update.state_text(found) == "update staged: 4081.2.1, reboot pending"


@pytest.mark.parametrize("update, said", [
    ("CURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\n", "no update staged"),
    ("CURRENT_OP=UPDATE_STATUS_DOWNLOADING\nNEW_VERSION=4081.2.1\n", "downloading"),
    ("", "update-engine did not answer"),
    ("CURRENT_OP=$(reboot)\n", "update-engine did not answer"),
])
def test_no_update_staged_unless_update_engine_says_a_reboot_is_needed(update, said):
    found = parse_os_facts(f"--os\n4081.2.0\n--update\n{update}--system\nrunning\n")
    assert found.staged is None and os_update.state_text(found) == said


def test_a_version_that_is_no_version_is_not_taken():
    found = parse_os_facts("--os\n4081.2.0; reboot\n--update\nCURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\n"
                           "NEW_VERSION=$(halt)\n--docker\n\n")
    assert (found.version, found.staged, found.docker) == (None, None, None)


@pytest.mark.parametrize("system", ["starting", "stopping", "initializing"])
def test_a_machine_going_down_or_coming_up_is_rebooting(system):
    found = parse_os_facts(f"--system\n{system}\n")
    assert found.rebooting and os_update.state_text(found) == f"rebooting (systemd {system})"


MEMBERS = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_the_machines_with_an_update_staged_reboot_followers_first_and_the_leader_last():
    found = {"10.0.0.1": facts(staged="4081.2.1"), "10.0.0.2": facts(), "10.0.0.3": facts(staged="4081.2.1")}
    assert os_upgrade_plan.plan(MEMBERS, found, "10.0.0.1") == [
        Reboot("10.0.0.3", "4081.2.0", "4081.2.1"), Reboot("10.0.0.1", "4081.2.0", "4081.2.1")]
    assert [r.machine for r in os_upgrade_plan.plan(MEMBERS, found, "10.0.0.2", reboot_all=True)] == \
        ["10.0.0.1", "10.0.0.3", "10.0.0.2"]
    assert os_upgrade_plan.plan(MEMBERS, {m: facts() for m in MEMBERS}, "10.0.0.1") == []


def test_the_plan_says_each_reboot_in_order_and_who_is_left_alone():
    steps = [Reboot("10.0.0.3", "4081.2.0", "4081.2.1"), Reboot("10.0.0.1", "4081.2.0", None)]
    assert os_upgrade_plan.describe(steps, MEMBERS) == [
        "os-upgrade: 1. 10.0.0.3: reboot into OS 4081.2.1 (runs 4081.2.0)",
        "os-upgrade: 2. 10.0.0.1: reboot (OS 4081.2.0, no update staged)",
        "os-upgrade: 10.0.0.2: no update staged; left alone"]
    assert os_upgrade_plan.describe([], []) == ["os-upgrade: no machine"]


def test_quorum_is_never_risked_a_member_down_rebooting_or_unhealthy_stops_it():
    assert os_upgrade_plan.quorum_problem(MEMBERS, {}, [], []) is None
    assert os_upgrade_plan.quorum_problem(MEMBERS, {"10.0.0.2": "connection refused"}, ["10.0.0.2"], []) == \
        "10.0.0.2 cannot be reached (connection refused)"
    assert os_upgrade_plan.quorum_problem(MEMBERS, {}, ["10.0.0.3"], ["10.0.0.1"]) == \
        "10.0.0.1 is rebooting; etcd on 10.0.0.3 is not healthy"


def test_a_machine_back_on_another_version_than_staged_is_said():
    step = Reboot("10.0.0.1", "4081.2.0", "4081.2.1")
    assert os_upgrade_plan.unexpected_version(step, "4081.2.1") is None
    assert os_upgrade_plan.unexpected_version(step, "4081.2.0").startswith(
        "10.0.0.1 rebooted but runs OS 4081.2.0, not 4081.2.1 (the update did not take")
    assert os_upgrade_plan.unexpected_version(Reboot("10.0.0.1", "4081.2.0", None), "4081.2.0") is None
