"""`fab os-upgrade` on the recording executor: what it refuses, the order of a machine's steps, where it stops.

Machines answer their OS facts as scripted (a reboot changes the boot and the version to the
staged one, unless a test keeps the machine down); etcd's members answer as each test says.
"""
import dataclasses

import pytest

from sandbox.testbed import next_os_version
from tasks.commands.haproxy import routers_file
from tasks.model.errors import ConfigError, Interrupted, PreflightError
from tasks.runbooks import etcd_members, os_upgrade
from tasks.runbooks.os_upgrade import OsUpgrade, OsUpgradeFailed

from .fakes import FakeEtcd, FakeExecutor

MACHINES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
BALANCER = "10.0.0.100"
LEADER = "10.0.0.1"


def os_text(version, staged=None, boot="boot-1", system="running"):
    update = (f"CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION={staged}\n" if staged
              else "CURRENT_OP=UPDATE_STATUS_IDLE\nNEW_VERSION=0.0.0\n")
    return f"--os\n{version}\n--update\n{update}--docker\n24.0.9\n--boot\n{boot}\n--system\n{system}\n"


class Machines:
    """Each machine's OS as it answers, changed by its reboot (the staged version booted)."""

    def __init__(self, ex, staged, stay_down=()):
        self.ex, self.stay_down = ex, set(stay_down)
        self.state = {m: {"version": "4081.2.0", "staged": staged.get(m), "boot": 1} for m in MACHINES}
        self.reboots: list = []
        ex.on_run = self.on_run

    def on_run(self, host, command):
        if command == "systemctl reboot --no-block":
            self.reboots.append(host)
            m = self.state[host]
            m.update(version=m["staged"] or m["version"], staged=None, boot=m["boot"] + 1)
            if host in self.stay_down:
                self.ex.down[host] = "nothing answers on port 22"
        if "update_engine_client -status" in command:
            m = self.state[host]
            self.ex.rules = [r for r in self.ex.rules if r[0] != host or "update_engine_client" not in r[1]]
            self.ex.answer("update_engine_client -status", host=host, first=True,
                           stdout=os_text(m["version"], m["staged"], f"boot-{m['boot']}"))


class FakeSession:
    def __init__(self, cluster, ex, etcd):
        self.cluster, self.ex, self.etcd, self.via = cluster, ex, etcd, MACHINES[0]
        self.moved: list = []

    def move_etcd(self, away_from, to):
        if self.via == away_from:
            self.moved.append((away_from, to))
            self.via = to


@pytest.fixture
def s(cluster, monkeypatch):
    ex = FakeExecutor(cluster)
    ex.files[(BALANCER, cluster.balancer.routers_file)] = (routers_file(cluster, MACHINES), 0o644)
    ex.answer("air-candidate", stdout="air-drain: 0\n")
    monkeypatch.setattr(os_upgrade, "POLL", 0.01)
    return FakeSession(cluster, ex, FakeEtcd(MACHINES))


@pytest.fixture
def etcd_answers(monkeypatch):
    """Every member healthy, LEADER leading, unless a test takes one out of ``healthy``."""
    healthy = set(MACHINES)
    handed: list = []

    def ask_all(ex, addresses, seconds=0, timeout=0):
        return {a: etcd_members.Answer(a, None, a in healthy, {"leader": "1"},
                                       tuple((m, str(i + 1), False, True) for i, m in enumerate(MACHINES)))
                for a in addresses}
    monkeypatch.setattr(etcd_members, "ask_all", ask_all)
    monkeypatch.setattr(os_upgrade.membership, "hand_over_leadership",
                        lambda s, leaving, via, task: handed.append((leaving, via, task)))
    return healthy, handed


@pytest.fixture(autouse=True)
def record_routes(monkeypatch):
    from tasks.runbooks import balancer
    original = balancer.Routers._set

    def recording(self, machines, reload=False, forget=()):
        self.ex.__dict__.setdefault("routed", []).append(list(machines))
        return original(self, machines, reload, forget)
    monkeypatch.setattr(balancer.Routers, "_set", recording)


def test_the_plan_reboots_the_staged_machines_leader_last_and_nothing_runs_while_planning(s, etcd_answers):
    Machines(s.ex, {"10.0.0.1": "4081.2.1", "10.0.0.3": "4081.2.1"})
    upgrade = OsUpgrade(s)
    assert [st.machine for st in upgrade.steps] == ["10.0.0.3", LEADER] and upgrade.problem is None
    assert upgrade.describe()[-1] == "os-upgrade: 10.0.0.2: no update staged; left alone"
    assert s.ex.commands(changes_only=True) == []


def test_a_member_unhealthy_refuses_before_any_change(s, etcd_answers):
    healthy, _ = etcd_answers
    healthy.discard("10.0.0.2")
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES})
    with pytest.raises(PreflightError) as refused:
        OsUpgrade(s).apply()
    assert str(refused.value) == ("refusing to reboot any machine of prod: etcd on 10.0.0.2 is not healthy; "
                                  "nothing was changed")
    assert s.ex.commands(changes_only=True) == [] and machines.reboots == []


def test_each_machine_is_drained_rebooted_waited_for_and_put_back_before_the_next(s, etcd_answers):
    _, handed = etcd_answers
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES})
    done = OsUpgrade(s).apply()
    assert [d["machine"] for d in done] == ["10.0.0.2", "10.0.0.3", LEADER] == machines.reboots
    assert all(d["from"] == "4081.2.0" and d["to"] == "4081.2.1" for d in done)
    assert s.ex.routed == [["10.0.0.1", "10.0.0.3"], MACHINES, ["10.0.0.1", "10.0.0.2"], MACHINES,
                           ["10.0.0.2", "10.0.0.3"], MACHINES]
    assert [h[0] for h in handed] == machines.reboots and s.moved == [(LEADER, "10.0.0.2")]
    assert s.ex.forgotten == machines.reboots  # each logged in to afresh after its reboot


def test_a_machine_not_back_in_time_stops_the_task_out_of_the_balancer_the_others_untouched(cluster, s, etcd_answers):
    s.cluster = s.ex.cluster = dataclasses.replace(cluster, timeouts=dataclasses.replace(cluster.timeouts, reboot=1))
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES}, stay_down=["10.0.0.2"])
    with pytest.raises(OsUpgradeFailed) as failed:
        OsUpgrade(s).apply()
    assert str(failed.value) == ("10.0.0.2 did not come back within 1 s of its reboot (no SSH: nothing answers on "
                                 "port 22); it is out of the balancer; the other machines were not touched")
    assert machines.reboots == ["10.0.0.2"] and s.ex.routed == [["10.0.0.1", "10.0.0.3"]]


def test_a_member_found_unhealthy_between_two_machines_stops_the_task_there(s, etcd_answers):
    healthy, _ = etcd_answers
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES})

    def unhealthy_meanwhile(host, command):
        machines.on_run(host, command)
        if command.startswith("systemctl reboot"):
            healthy.discard("10.0.0.3")  # while 10.0.0.2 reboots, another member fails
    s.ex.on_run = unhealthy_meanwhile
    with pytest.raises(OsUpgradeFailed) as failed:
        OsUpgrade(s).apply()
    assert str(failed.value) == ("stopped before rebooting 10.0.0.3: etcd on 10.0.0.3 is not healthy; "
                                 "rebooted before it: 10.0.0.2; the other machines were not touched")
    assert machines.reboots == ["10.0.0.2"] and s.ex.routed[-1] == MACHINES


def test_an_interrupt_stops_between_machines_after_the_one_in_hand_is_back(s, etcd_answers):
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES})

    def interrupt_at_first_reboot(host, command):
        machines.on_run(host, command)
        if command.startswith("systemctl reboot"):
            s.ex.interrupted.set()
    s.ex.on_run = interrupt_at_first_reboot
    with pytest.raises(Interrupted) as stopped:
        OsUpgrade(s).apply()
    assert machines.reboots == ["10.0.0.2"] and s.ex.routed[-1] == MACHINES  # back in before it stopped
    assert str(stopped.value) == ("interrupted before the reboot of 10.0.0.3; rebooted before it: 10.0.0.2; "
                                  "the other machines were not touched")


@pytest.mark.parametrize("version, after", [("4081.2.0", "4081.2.1"), ("3", "4"), ("12.9", "12.10")])
def test_the_sandbox_stages_the_next_os_version(version, after):
    assert next_os_version(version) == after


def test_a_version_that_does_not_end_in_a_number_needs_one_given():
    with pytest.raises(ConfigError):
        next_os_version("4081.2.0-beta")


def test_a_version_to_stage_that_is_no_version_is_refused_before_anything():
    from sandbox.testbed import stage_os_update
    with pytest.raises(ConfigError) as refused:
        stage_os_update(["10.0.0.1"], "4081.2.1; reboot")
    assert str(refused.value) == ("sandbox.os-update: --version: expected a version such as 4081.2.1, "
                                  "got '4081.2.1; reboot'")


@pytest.mark.parametrize("kwargs, message", [
    ({"cluster": None}, "error: --cluster is required"),
    ({"cluster": "prod", "machine_": "10.0.0.1; reboot"}, "error: command line: --machine"),
    ({"cluster": "prod", "via": "nowhere"}, "error: command line: --via: expected an IPv4 or IPv6 address"),
])
def test_bad_input_is_one_error_line_before_anything_is_contacted(cluster, monkeypatch, kwargs, message):
    from invoke import Context
    from invoke.exceptions import Exit

    from tasks.model import cluster as cluster_config
    monkeypatch.setenv(cluster_config.CLUSTERS_VARIABLE, str(cluster.file.parent))
    monkeypatch.setattr(os_upgrade, "session", lambda *a, **k: pytest.fail("a session was opened"))
    with pytest.raises(Exit) as stopped:
        os_upgrade.os_upgrade(Context(), **kwargs)
    text = str(stopped.value.message)
    assert stopped.value.code == 1 and "\n" not in text and text.startswith(message), text


def test_a_reboot_command_that_fails_puts_the_machine_back_and_stops(s, etcd_answers):
    machines = Machines(s.ex, {m: "4081.2.1" for m in MACHINES})
    s.ex.answer("systemctl reboot", host="10.0.0.2", exited=1, stderr="Failed to reboot: Access denied")
    with pytest.raises(OsUpgradeFailed) as failed:
        OsUpgrade(s).apply()
    assert str(failed.value) == ("10.0.0.2: reboot failed (exit 1): Failed to reboot: Access denied; it is back in "
                                 "the balancer; the other machines were not touched")
    assert s.ex.routed == [["10.0.0.1", "10.0.0.3"], MACHINES]
    assert machines.state["10.0.0.3"]["boot"] == 1


def test_the_version_booted_is_the_one_staged_when_the_machine_reboots(s, etcd_answers):
    machines = Machines(s.ex, {"10.0.0.2": "4081.2.1"})
    upgrade = OsUpgrade(s)
    machines.state["10.0.0.2"]["staged"] = "4081.2.2"  # update-engine staged a newer one since the plan
    assert [(d["machine"], d["from"], d["to"]) for d in upgrade.apply()] == [("10.0.0.2", "4081.2.0", "4081.2.2")]
