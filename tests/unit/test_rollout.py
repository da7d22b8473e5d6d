"""The rollout on the recording executor: what it runs, in which order, and where it stops.

Machines answer their release facts as scripted; everything else succeeds
unless a rule says otherwise. These pin the orchestration (prepare all, then
one machine at a time out of the balancer) and its halts: a deadline that
passes, an interrupt mid-step, a lock lost between machines.
"""
import dataclasses
import json
import time

import pytest

from tasks.commands import machine
from tasks.commands.haproxy import routers_file
from tasks.model import state
from tasks.model.cluster import RolloutLimits
from tasks.model.errors import ConfigError, Interrupted, LostLock, PreflightError
from tasks.model.release import Image, Release
from tasks.runbooks import records
from tasks.runbooks.upgrade import PartlyUpgraded, Rollout, UpgradeFailed, limits_of, plan_data

from .fakes import FakeEtcd, FakeExecutor, FakeFence, release_facts_text

OLD = Release((Image("web", "1.0.0", "sha256:" + "a" * 64), Image("worker", "1.0.0", "sha256:" + "b" * 64)))
NEW = Release((Image("web", "1.0.1", "sha256:" + "c" * 64), Image("worker", "1.0.0", "sha256:" + "b" * 64)))
MACHINES = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
BALANCER = "10.0.0.100"
USER_DATA = "/var/lib/coreos-install/user_data"


ADMIN_BASE = "#cloud-config\nssh_authorized_keys:\n- ssh-ed25519 AAAA admin\n"  # an administrator's own base


def facts_text(release_id: str, components: dict, units=("active", "active")) -> str:
    """A machine's release facts, its administrator's base kept beside its cloud config."""
    return release_facts_text(release_id, components, units, USER_DATA, ADMIN_BASE)


class FakeSession:
    def __init__(self, cluster, ex, etcd):
        self.cluster, self.ex, self.etcd = cluster, ex, etcd
        self.via = MACHINES[0]


@pytest.fixture
def s(cluster, monkeypatch):
    ex = FakeExecutor(cluster)
    ex.files[(BALANCER, cluster.balancer.routers_file)] = (routers_file(cluster, MACHINES), 0o644)
    ex.answer("air-candidate", stdout="air-drain: 0\n")
    ex.answer("echo '--release'", stdout=facts_text(OLD.id, {"web": "1.0.0", "worker": "1.0.0"}))
    etcd = FakeEtcd(MACHINES)
    etcd.put(state.release_key(cluster), state.release_record(OLD, outcome="succeeded"))
    return FakeSession(cluster, ex, etcd)


@pytest.fixture(autouse=True)
def record_routes(monkeypatch):
    """Every machine list the balancer is set to, in order, on ``ex.routed``."""
    from tasks.runbooks import balancer
    original = balancer.Routers._set

    def recording(self, machines, reload=False, forget=()):
        self.ex.__dict__.setdefault("routed", []).append(list(machines))
        return original(self, machines, reload, forget)
    monkeypatch.setattr(balancer.Routers, "_set", recording)


def restarts(ex) -> list:
    return [(h, c) for h, c, change in ex.calls if change and "list-unit-files --no-legend air-" in c]


def test_the_plan_restarts_only_what_changes_and_nothing_runs_while_planning(s):
    rollout = Rollout(s, NEW, OLD)
    assert [(st.machine, st.action, st.restart) for st in rollout.steps] == \
        [(m, "upgrade", ("web",)) for m in MACHINES]
    assert rollout.describe()[0] == f"10.0.0.1: out of the balancer, restart web on {NEW.id}, health check, back in"
    assert s.ex.commands(changes_only=True) == [] and rollout.warning is None


def test_a_cloud_config_changed_by_hand_stops_the_rollout_before_anything_changes(s):
    edited = release_facts_text(OLD.id, {"web": "1.0.0", "worker": "1.0.0"}, ("active", "active"), USER_DATA,
                                ADMIN_BASE, ("a" * 64, "b" * 64))
    s.ex.answer("echo '--release'", host="10.0.0.2", stdout=edited, first=True)
    with pytest.raises(PreflightError) as refused:
        Rollout(s, NEW, OLD)
    assert str(refused.value) == (
        f"10.0.0.2: {USER_DATA} was changed since air-deploy wrote it, and writing the new release would lose "
        f"that change: make it in {USER_DATA}.air-base (the administrator's base, which installs extend) and put "
        f"{USER_DATA} back as it was, or remove {USER_DATA}.air-written to let the change go; nothing was changed")
    assert s.ex.commands(changes_only=True) == []
    # The same digests: written by air-deploy and not changed since; the rollout goes on.
    s.ex.answer("echo '--release'", host="10.0.0.2", first=True, stdout=release_facts_text(
        OLD.id, {"web": "1.0.0", "worker": "1.0.0"}, ("active", "active"), USER_DATA, ADMIN_BASE, ("a" * 64,) * 2))
    assert Rollout(s, NEW, OLD).apply() == MACHINES


def test_one_machine_at_a_time_each_leaving_the_balancer_in_the_reload_that_puts_the_last_back(s):
    done = Rollout(s, NEW, OLD).apply()
    assert done == MACHINES
    assert s.ex.routed == [["10.0.0.2", "10.0.0.3"], ["10.0.0.1", "10.0.0.3"], ["10.0.0.1", "10.0.0.2"], MACHINES]
    assert [h for h, _ in restarts(s.ex)] == MACHINES
    # Every machine pulled and staged before the first left the balancer.
    first_restart = next(i for i, (_, c, _) in enumerate(s.ex.calls) if "list-unit-files --no-legend air-" in c)
    pulls = [i for i, (_, c, _) in enumerate(s.ex.calls) if "docker pull" in c]
    assert len(pulls) == 3 and max(pulls) < first_restart
    # OS updates, paused on every machine while pulling, resume on every one at the end.
    resumed = [(i, h) for i, (h, c, _) in enumerate(s.ex.calls) if c == machine.resume_os_updates_command()]
    assert sorted(h for _, h in resumed) == MACHINES
    assert min(i for i, _ in resumed) > max(i for i, (_, c, _) in enumerate(s.ex.calls) if "list-unit-files" in c)


def resumed(ex) -> dict:
    """machine -> the command that resumed its OS updates (with the discard of its staged files, if any)."""
    return {h: c for h, c, _ in ex.calls if c.endswith(machine.resume_os_updates_command())}


def test_a_step_past_its_deadline_restores_that_machine_and_touches_no_other(s):
    s.ex.answer("list-unit-files --no-legend air-web.service 2>", host="10.0.0.2", deadline=True)
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, OLD).apply()
    message = str(failed.value)
    assert "10.0.0.2: restart web on release" in message and "not done within" in message
    assert f"restored: 10.0.0.2 is back on release {OLD.id} and in the balancer." in message
    assert f"already upgraded to {NEW.id}: 10.0.0.1" in message
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1", "10.0.0.2", "10.0.0.2"]  # the last: its restore
    assert s.ex.routed[-1] == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]


def test_an_interrupt_mid_step_puts_the_machine_in_hand_back_and_stops(s):
    def interrupt(host, command):
        if host == "10.0.0.1" and "list-unit-files --no-legend air-" in command:
            s.ex.interrupted.set()   # Ctrl-C while the machine restarts
    s.ex.on_run = interrupt
    with pytest.raises(Interrupted) as stopped:
        Rollout(s, NEW, OLD).apply_recorded(branch="master")
    assert f"restored: 10.0.0.1 is back on release {OLD.id} and in the balancer." in str(stopped.value)
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1", "10.0.0.1"]  # the upgrade, then its restore
    assert s.ex.routed[-1] == MACHINES
    ends = resumed(s.ex)  # the machines never reached lose their staged files; every one updates again
    assert sorted(ends) == MACHINES and ends["10.0.0.1"] == machine.resume_os_updates_command()
    assert ends["10.0.0.2"].startswith("rm -rf ") and ends["10.0.0.3"].startswith("rm -rf ")
    history = records.history(s.etcd, s.cluster)
    assert history[-1]["id"] == NEW.id and history[-1]["outcome"].startswith("interrupted")
    current, record = records.read_release(s.etcd, s.cluster)
    assert current == OLD and record["outcome"] == "restored after an interrupted upgrade"


def test_a_rollout_holding_the_lock_starts_the_new_images_download_with_its_read_of_the_facts(s):
    def reads() -> list:
        return [c for _, c, _ in s.ex.calls if "echo '--release'" in c]
    Rollout(s, NEW, OLD)  # a plan: no lock held, nothing started
    assert reads() and not any("docker pull" in c for c in reads())
    s.ex.calls.clear()
    s.ex.fence = FakeFence()
    Rollout(s, NEW, OLD)
    prefetch = machine.prefetch_command(s.cluster, NEW, OLD)
    assert prefetch and reads() == [f"{machine.release_facts_command(s.cluster)}; {prefetch}"] * 3


def test_a_lost_lock_changes_nothing_more(s):
    s.ex.fence = FakeFence()

    def lose_after_first(host, command):
        if host == "10.0.0.1" and "curl" in command:  # the first machine's upgrade, health check included
            s.ex.fence.lose()
    s.ex.on_run = lose_after_first
    with pytest.raises(LostLock) as lost:
        Rollout(s, NEW, OLD).apply()
    calls = len(s.ex.calls)
    # Lost while 10.0.0.1 was upgraded, found before it was put back: it stays out, and says so.
    assert str(lost.value) == (f"/air/test/lock: the key is gone (deleted or expired); upgraded to {NEW.id}: "
                               "10.0.0.1; nothing else was changed; out of the balancer: 10.0.0.1")
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1"]
    # After the loss: no change ran (the fence refused every one), the balancer was left as it was.
    assert s.ex.routed == [["10.0.0.2", "10.0.0.3"]]
    assert calls == len(s.ex.calls)


def test_a_machine_that_does_not_answer_refuses_the_rollout_before_any_change(cluster, s):
    s.ex.down = {"10.0.0.3": "nothing answers on port 22"}
    with pytest.raises(UpgradeFailed, match=r"unreachable: 10\.0\.0\.3 \(nothing answers on port 22\)\. "
                                            r"No machine was changed"):
        Rollout(s, NEW, OLD).apply()
    assert s.ex.commands(changes_only=True) == []


def test_a_machine_whose_open_connection_dies_at_the_facts_read_refuses_the_rollout_too(s):
    s.ex.answer("echo '--release'", host="10.0.0.3", exited=255, stderr="connection lost (no answer over SSH)", first=True)
    with pytest.raises(UpgradeFailed, match=r"unreachable: 10\.0\.0\.3 \(read the release facts failed .*no answer "
                                            r"over SSH\)\)\. No machine was changed"):
        Rollout(s, NEW, OLD).apply()
    assert s.ex.commands(changes_only=True) == []


@pytest.mark.parametrize("system", ["starting", "stopping"])
def test_a_machine_rebooting_refuses_the_rollout_before_any_change(s, system):
    s.ex.answer("echo '--release'", host="10.0.0.2", first=True,
                stdout=f"--system\n{system}\n" + facts_text(OLD.id, {"web": "1.0.0", "worker": "1.0.0"}))
    with pytest.raises(UpgradeFailed, match=rf"unreachable: 10\.0\.0\.2 \(rebooting: systemd is {system}\)\. "
                                            r"No machine was changed"):
        Rollout(s, NEW, OLD).apply()
    assert s.ex.commands(changes_only=True) == []


def test_a_failed_pull_leaves_every_machine_as_it_was(s):
    s.ex.answer("docker pull", host="10.0.0.2", exited=1, stderr="pull of web 1.0.1 failed after 4 tries: EOF", first=True)
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, OLD).apply()
    assert str(failed.value) == (f"not upgrading {s.cluster.name} to {NEW.id}: 10.0.0.2: pull release {NEW.id}, stage its "
                                        "files, pause OS updates failed (exit 1): pull of web 1.0.1 failed after 4 "
                                        "tries: EOF. No machine was changed.")
    # The two whose pull worked: their staged files discarded, their OS updates resumed; nothing drained.
    assert sorted(resumed(s.ex)) == ["10.0.0.1", "10.0.0.3"]
    assert all(c.startswith("rm -rf ") for c in resumed(s.ex).values())
    assert getattr(s.ex, "routed", []) == [] and restarts(s.ex) == []


def test_a_balancer_failing_between_machines_leaves_nothing_staged_or_paused(s):
    def fail_second_change(host, command):
        if host == BALANCER and "air-candidate" in command and len(s.ex.routed) == 2:
            s.ex.answer("air-candidate", host=BALANCER, exited=1, stderr="haproxy: connection refused", first=True)
    s.ex.on_run = fail_second_change
    with pytest.raises(UpgradeFailed, match="the balancer could not be changed"):
        Rollout(s, NEW, OLD).apply()
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1"]
    ends = resumed(s.ex)
    assert sorted(ends) == MACHINES and ends["10.0.0.1"] == machine.resume_os_updates_command()
    assert ends["10.0.0.2"].startswith("rm -rf ") and ends["10.0.0.3"].startswith("rm -rf ")


def test_drift_is_one_warning_line_with_its_fix(s):
    s.ex.answer("echo '--release'", host="10.0.0.2",
                stdout=facts_text("older", {"web": "0.9.0", "worker": "1.0.0"}), first=True)  # the machine's own answer first
    s.ex.files[(BALANCER, s.cluster.balancer.routers_file)] = (routers_file(s.cluster, ["10.0.0.1", "10.0.0.2"]), 0o644)
    rollout = Rollout(s, OLD, OLD)
    assert rollout.warning == (
        f"warning: prod drifted: 10.0.0.3 is out of the balancer; 10.0.0.2 runs release older, not the recorded "
        f"{OLD.id} (`fab rolling-upgrade --cluster prod` fixes it)")
    assert [(st.machine, st.action) for st in rollout.steps] == [("10.0.0.2", "upgrade"), ("10.0.0.3", "re-add")]


def test_records_of_a_successful_rollout(s):
    Rollout(s, NEW, OLD).apply_recorded(branch="master", commit="abc")
    current, record = records.read_release(s.etcd, s.cluster)
    assert current == NEW and record["outcome"] == "succeeded" and record["commit"] == "abc"
    assert [json.loads(v) for v in s.etcd.get_prefix(state.history_prefix(s.cluster)).values()] == [record]
    assert s.etcd.writes == 1  # the current release and its history entry in one transaction


def test_the_upgrading_record_is_written_before_the_first_machine_leaves_the_balancer(s):
    written = []
    put = s.etcd.put

    def noting(key, value):  # the outcome written, and the balancer changes made by then
        written.append((json.loads(value)["outcome"], list(getattr(s.ex, "routed", []))))
        put(key, value)
    s.etcd.put = noting
    Rollout(s, NEW, OLD).apply_recorded()
    assert written == [("upgrading", [])] and len(s.ex.routed) == len(MACHINES) + 1


def test_an_upgrading_record_that_cannot_be_written_stops_the_rollout_before_any_machine_leaves(s):
    from tasks.model.errors import RemoteError

    def refused(key, value):
        raise RemoteError("etcd: no answer within 5 s (10.0.0.1:2379)")
    s.etcd.put = refused
    with pytest.raises(RemoteError) as failed:
        Rollout(s, NEW, OLD).apply_recorded()
    assert str(failed.value).startswith("etcd: no answer within 5 s (10.0.0.1:2379); recording this in etcd failed too")
    # Prepared, then put back: staged files discarded, OS updates resumed; nothing drained or restarted.
    assert sorted(resumed(s.ex)) == MACHINES and all(c.startswith("rm -rf ") for c in resumed(s.ex).values())
    assert getattr(s.ex, "routed", []) == [] and restarts(s.ex) == []
    assert records.read_release(s.etcd, s.cluster)[0] == OLD


def history_outcomes(s) -> list:
    return [json.loads(v)["outcome"] for _, v in sorted(s.etcd.get_prefix(state.history_prefix(s.cluster)).items())]


def test_a_failure_record_that_cannot_be_written_comes_after_the_rollouts_own_error(s):
    from tasks.model.errors import RemoteError
    s.ex.answer("curl", host="10.0.0.2", exited=1, stderr="not healthy within 20 s: web(...)")
    put = s.etcd.put

    def refused_after_the_first(key, value):
        if "upgrading" not in value:
            raise RemoteError("etcd: no answer within 5 s (10.0.0.1:2379)")
        put(key, value)
    s.etcd.put = refused_after_the_first
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, OLD).apply_recorded()
    message = str(failed.value)
    assert message.startswith(f"upgrade of 10.0.0.2 to {NEW.id} failed: 10.0.0.2: ")
    assert message.endswith("\nrecording this in etcd failed too (etcd: no answer within 5 s (10.0.0.1:2379)): the "
                            "release record may still say `upgrading`, and the next deploy or rollback starts from "
                            "the last release that succeeded")


def test_an_interrupt_stays_an_interrupt_of_one_line_when_its_record_cannot_be_written():
    from tasks.model.errors import RemoteError

    def refused():
        raise RemoteError("etcd: connection lost")
    joined = records.after_failure(Interrupted("upgraded to r1: 10.0.0.1; every machine is in the balancer"),
                                   refused)
    assert type(joined) is Interrupted and "\n" not in str(joined)
    assert str(joined).startswith("upgraded to r1: 10.0.0.1; every machine is in the balancer; recording this in "
                                  "etcd failed too (etcd: connection lost)")
    written = Interrupted("stopped")
    assert records.after_failure(written, lambda: None) is written


def test_rolling_upgrade_to_a_release_of_the_history_records_it_with_the_settings_etcd_holds(s):
    from tasks.runbooks.upgrade import apply_recorded_release
    s.etcd.put(state.release_key(s.cluster), state.release_record(OLD, outcome="succeeded",
                                                                  settings={"digest": "sha256:" + "d" * 64, "values": {}}))
    assert apply_recorded_release(Rollout(s, NEW, OLD)) == MACHINES
    current, record = records.read_release(s.etcd, s.cluster)
    assert current == NEW and record["outcome"] == "succeeded" and record["task"] == "rolling-upgrade"
    assert record["settings"] == {"digest": "sha256:" + "d" * 64, "values": {}}
    assert history_outcomes(s) == ["succeeded"]


def test_upgrade_machine_to_a_release_keeps_what_it_did_in_the_history_and_the_clusters_release(s):
    from tasks.runbooks.upgrade import apply_kept
    assert apply_kept(Rollout(s, NEW, OLD, only=["10.0.0.2"]), "10.0.0.2") == ["10.0.0.2"]
    assert records.read_release(s.etcd, s.cluster)[0] == OLD
    assert history_outcomes(s) == ["on 10.0.0.2 only"]
    s.ex.answer("curl", host="10.0.0.3", exited=1, stderr="not healthy within 20 s: web(...)")
    with pytest.raises(UpgradeFailed):
        apply_kept(Rollout(s, NEW, OLD, only=["10.0.0.3"]), "10.0.0.3")
    assert records.read_release(s.etcd, s.cluster)[0] == OLD
    outcomes = history_outcomes(s)
    assert len(outcomes) == 2 and outcomes[1].startswith(f"failed: on 10.0.0.3 only: upgrade of 10.0.0.3 to {NEW.id}")
    # Neither is a rollback's target: the cluster never ran NEW everywhere.
    from tasks.runbooks.deploy import last_good
    assert last_good(records.history(s.etcd, s.cluster)) is None


# ---------------------------------------------------------------- extras (secrets.apply)

def _extra():
    from tasks.model.rollout_plan import Extra
    return Extra(restart=("worker",), files=(("/etc/air/secrets/worker/pw", b"new-SECRET", 0o400),),
                 before="keep-old-secrets", after="own-secrets", undo="put-old-secrets-back")


def test_extras_restart_their_components_on_the_current_release_and_nothing_else(s):
    rollout = Rollout(s, OLD, OLD, extras={m: _extra() for m in MACHINES[:2]})
    assert [(st.machine, st.action, st.restart) for st in rollout.steps] == \
        [(m, "upgrade", ("worker",)) for m in MACHINES[:2]]
    assert rollout.apply() == MACHINES[:2]
    steps = restarts(s.ex)
    assert [h for h, _ in steps] == MACHINES[:2]
    command = steps[0][1]
    assert "systemctl stop $units && keep-old-secrets && if mkdir -p /etc/air/images /etc/air/secrets/worker " in command
    assert "; fi && own-secrets && " in command
    assert "esac && systemctl restart air-worker.service || exit $?" in command
    assert "list-unit-files --no-legend air-worker.service " in command
    assert "restart air-web" not in command
    staged = [content for (host, path), (content, mode) in s.ex.files.items() if content == b"new-SECRET"]
    assert len(staged) == 2  # staged on the two machines only, never in a command line
    assert not any("new-SECRET" in c for _, c, _ in s.ex.calls)
    assert s.ex.routed == [["10.0.0.2", "10.0.0.3"], ["10.0.0.1", "10.0.0.3"], MACHINES]


def test_a_failed_health_check_after_extras_runs_their_undo_and_puts_the_machine_back(s):
    s.ex.answer("curl", host="10.0.0.1", exited=1, stderr="not healthy within 20 s: worker(...)")

    def healthy_once_undone(host, command):
        if "put-old-secrets-back" in command:
            s.ex.rules.clear()  # the previous secrets back: the machine is healthy again
    s.ex.on_run = healthy_once_undone
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, OLD, OLD, extras={"10.0.0.1": _extra()}).apply()
    assert f"restored: 10.0.0.1 is back on release {OLD.id} and in the balancer." in str(failed.value)
    undo = [i for i, (h, c, _) in enumerate(s.ex.calls) if h == "10.0.0.1" and "put-old-secrets-back" in c]
    stops = [i for i, (h, c, _) in enumerate(s.ex.calls) if h == "10.0.0.1" and "systemctl stop $units" in c]
    # The step's stop, then the restore's, which runs the undo after its stop and before the swap.
    assert len(undo) == 1 and len(stops) == 2 and stops[0] < stops[1] == undo[0]
    restore = s.ex.calls[undo[0]][1]
    assert restore.index("systemctl stop $units") < restore.index("put-old-secrets-back") < restore.index("install -m")
    assert s.ex.routed[-1] == MACHINES


WEB_ONLY = Release((Image("web", "1.0.0", "sha256:" + "a" * 64),))  # older than the component worker


def test_a_component_new_to_the_release_is_installed_and_one_it_lacks_is_removed(s):
    s.ex.answer("echo '--release'", stdout=facts_text(WEB_ONLY.id, {"web": "1.0.0"}, ("active", "inactive")), first=True)
    rollout = Rollout(s, NEW, WEB_ONLY)
    assert [(st.action, st.restart, st.remove) for st in rollout.steps] == [("upgrade", ("web", "worker"), ())] * 3
    rollout.apply()
    # worker is pulled with web before anything stops; only web's unit existed to be stopped, but the
    # command stops only the units that exist whatever it is given.
    first = s.ex.commands("10.0.0.1", changes_only=True)
    assert any("prod_worker" in c and "docker pull" in c for c in first)

    back = Rollout(s, WEB_ONLY, NEW)  # the rollback: worker goes
    s.ex.answer("echo '--release'", stdout=facts_text(NEW.id, {"web": "1.0.1", "worker": "1.0.0"}), first=True)
    back = Rollout(s, WEB_ONLY, NEW)
    assert [(st.action, st.restart, st.remove) for st in back.steps] == [("upgrade", ("web",), ("worker",))] * 3
    assert back.describe()[0] == (f"10.0.0.1: out of the balancer, restart web, remove worker on {WEB_ONLY.id}, "
                                  f"health check, back in")
    back.apply()
    upgrade = next(c for c in s.ex.commands("10.0.0.1", changes_only=True) if "disable -q --now" in c)
    assert "air-worker.service" in upgrade.split("disable -q --now")[0]  # stopped if it exists, then removed
    assert "rm -f /etc/systemd/system/air-worker.service" in upgrade
    assert "127.0.0.1:9090" not in upgrade  # nor health-checked


def test_a_failed_machine_is_restored_to_a_release_without_the_new_component(s):
    s.ex.answer("echo '--release'", stdout=facts_text(WEB_ONLY.id, {"web": "1.0.0"}, ("active", "inactive")), first=True)
    s.ex.answer("systemctl restart air-web.service air-worker.service", host="10.0.0.1", exited=machine.UNHEALTHY, first=True)
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, WEB_ONLY).apply()
    assert f"restored: 10.0.0.1 is back on release {WEB_ONLY.id} and in the balancer." in str(failed.value)
    restore = [c for c in s.ex.commands("10.0.0.1", changes_only=True) if f"units of release {WEB_ONLY.id}" in c
               or "rm -f /etc/systemd/system/air-worker.service" in c]
    assert restore and "esac && systemctl restart air-web.service" in restore[-1]
    assert "rm -f /etc/systemd/system/air-worker.service" in restore[-1]  # the unit the upgrade brought goes
    assert "air-worker.service" not in restore[-1].split("rm -f /etc/systemd/system/air-worker.service")[1]  # and is not started


# ---------------------------------------------------------------- capacity and the failure budget

def out_of_balancer(ex) -> list:
    """How many machines each balancer change left out."""
    return [len(MACHINES) - len(routed) for routed in ex.routed]


def test_every_machine_a_member_goes_one_at_a_time_whatever_max_unavailable_and_the_leader_last(s):
    s.etcd.leader = "1"  # 10.0.0.1 leads etcd
    done = Rollout(s, NEW, OLD, limits=RolloutLimits(max_unavailable="100%")).apply()
    assert done == ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    assert s.ex.routed == [["10.0.0.1", "10.0.0.3"], ["10.0.0.1", "10.0.0.2"], ["10.0.0.2", "10.0.0.3"], MACHINES]
    assert max(out_of_balancer(s.ex)) == 1


def test_the_plan_says_the_order(s):
    s.etcd.leader = "2"
    rollout = Rollout(s, NEW, OLD, limits=RolloutLimits(max_unavailable="2"))
    assert rollout.describe()[-1] == "order: 10.0.0.1; then 10.0.0.3; then 10.0.0.2"
    assert plan_data(rollout)["groups"] == [["10.0.0.1"], ["10.0.0.3"], ["10.0.0.2"]]


@pytest.mark.parametrize("only, asked", [(None, ["status"]), (["10.0.0.2"], [])])
def test_the_leader_is_asked_while_the_facts_are_read_only_for_several_machines(s, only, asked):
    Rollout(s, NEW, OLD, only=only)
    assert getattr(s.etcd, "asked_ahead", []) == asked


def fail_health_on(s, address):
    s.ex.answer("list-unit-files --no-legend air-web.service 2>", host=address, deadline=True, first=True)


def test_a_failure_within_the_budget_is_restored_and_the_rollout_goes_on_to_the_others(s):
    fail_health_on(s, "10.0.0.2")
    with pytest.raises(PartlyUpgraded) as partly:
        Rollout(s, NEW, OLD, limits=RolloutLimits(max_failures=1)).apply_recorded(branch="master")
    message = str(partly.value)
    assert message.splitlines()[0].startswith(f"upgrade of 10.0.0.2 to {NEW.id} failed: 10.0.0.2: restart web")
    assert f"restored: 10.0.0.2 is back on release {OLD.id} and in the balancer." in message
    assert "1 machine(s) failed, 1 allowed: every other machine was upgraded" in message
    assert f"upgraded to {NEW.id}: 10.0.0.1, 10.0.0.3 (`fab rolling-upgrade --cluster" in message
    # 10.0.0.2 restarted twice (the upgrade, its restore); the rollout went on to 10.0.0.3.
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.3"]
    assert s.ex.routed[-1] == MACHINES and max(out_of_balancer(s.ex)) == 1
    result = partly.value.result
    assert result["failed"].keys() == {"10.0.0.2"} and result["upgraded"] == ["10.0.0.1", "10.0.0.3"]
    assert result["runs"] == {"10.0.0.1": NEW.id, "10.0.0.2": OLD.id, "10.0.0.3": NEW.id}
    # Most machines run the new release: it stays the cluster's, its record names the failed machine.
    current, record = records.read_release(s.etcd, s.cluster)
    assert current == NEW and record["outcome"] == "partly upgraded: failed on 10.0.0.2"
    assert record["runs"] == result["runs"] and record["failed"] == result["failed"]
    assert history_outcomes(s) == ["partly upgraded: failed on 10.0.0.2"]


def test_failures_beyond_the_budget_stop_the_rollout_and_the_record_says_who_runs_what(s):
    fail_health_on(s, "10.0.0.1")
    fail_health_on(s, "10.0.0.2")
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, OLD, limits=RolloutLimits(max_failures=1)).apply_recorded(branch="master")
    assert not isinstance(failed.value, PartlyUpgraded)
    assert "2 machine(s) failed, 1 allowed: the rollout stopped there" in str(failed.value)
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2"]  # 10.0.0.3 untouched
    assert s.ex.routed[-1] == MACHINES
    current, record = records.read_release(s.etcd, s.cluster)
    assert current == OLD and record["outcome"] == "restored after a failed upgrade"
    last = json.loads(sorted(s.etcd.get_prefix(state.history_prefix(s.cluster)).items())[-1][1])
    assert last["failed"].keys() == {"10.0.0.1", "10.0.0.2"}
    assert last["runs"] == {"10.0.0.1": OLD.id, "10.0.0.2": OLD.id, "10.0.0.3": OLD.id}


def test_every_machine_failing_within_the_budget_is_a_plain_failure(s):
    for address in MACHINES:
        fail_health_on(s, address)
    with pytest.raises(UpgradeFailed) as failed:
        Rollout(s, NEW, OLD, limits=RolloutLimits(max_failures=3)).apply_recorded()
    assert not isinstance(failed.value, PartlyUpgraded)
    assert records.read_release(s.etcd, s.cluster)[0] == OLD


def test_parallel_bounds_the_hosts_worked_on_at_once(s):
    busy, most = set(), []

    def watch(host, command):
        if "docker pull" in command:
            busy.add(host)
            most.append(len(busy))
            time.sleep(0.05)
            busy.discard(host)
    s.ex.on_run = watch
    Rollout(s, NEW, OLD, limits=RolloutLimits(parallel=1)).apply()
    assert s.ex.fan_out == 1 and most == [1, 1, 1]


@pytest.mark.parametrize("given, error", [
    ({"max_unavailable": "0"}, "command line: --max-unavailable: expected a number of machines (1 to 1000) or a "
                               "percent of the machines (`25%`: 1% to 100%), got '0'"),
    ({"max_unavailable": "150%"}, "--max-unavailable: expected a number of machines"),
    ({"max_unavailable": "two"}, "--max-unavailable: expected a number of machines"),
    ({"max_failures": "-1"}, "command line: --max-failures: expected a whole number from 0 to 1000, got '-1'"),
    ({"parallel": "0"}, "command line: --parallel: expected a whole number from 1 to 1000, got 0"),
])
def test_bad_limits_are_one_line_before_anything(cluster, given, error):
    with pytest.raises(ConfigError) as refused:
        limits_of(cluster, **given)
    assert error in str(refused.value) and "\n" not in str(refused.value)


def test_limits_given_override_the_cluster_files(cluster):
    assert limits_of(cluster, max_unavailable=" 25% ", max_failures=None, parallel="4") == \
        RolloutLimits(max_unavailable="25%", max_failures=0, parallel=4)


def test_a_rollout_given_no_limits_takes_the_cluster_files_capacity_but_no_failure_budget(s):
    """Rollbacks and secrets.apply: the file's max_failures is for deploy and rolling-upgrade only."""
    s.cluster = dataclasses.replace(s.cluster, rollout=RolloutLimits(max_unavailable="3", max_failures=2, parallel=4))
    fail_health_on(s, "10.0.0.1")
    rollout = Rollout(s, NEW, OLD)
    assert rollout.limits == RolloutLimits(max_unavailable="3", max_failures=0, parallel=4) and s.ex.fan_out == 4
    with pytest.raises(UpgradeFailed) as failed:
        rollout.apply()
    assert not isinstance(failed.value, PartlyUpgraded)
    assert [h for h, _ in restarts(s.ex)] == ["10.0.0.1", "10.0.0.1"]  # the upgrade, its restore; nothing more
