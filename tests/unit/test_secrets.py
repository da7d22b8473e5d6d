"""tasks/secrets.py's pure half: what one machine needs from its digests, the commands that keep,
put back and forget its previous secrets (run in a real ``sh``), and the plan in words (no value)."""
import hashlib
import subprocess
from dataclasses import replace

import pytest

from tasks.commands.machine import secret_files
from tasks.runbooks import secrets

D = "/etc/air/secrets"


@pytest.fixture
def configured(cluster):
    cluster.secrets.mkdir(exist_ok=True)
    (cluster.secrets / "pw").write_text("pw-SECRET\n")
    (cluster.secrets / "tls").write_text("tls-SECRET\n")
    return replace(cluster, components=(replace(cluster.component("web"), secrets=("tls",)),
                                        replace(cluster.component("worker"), secrets=("pw",), user=10001)))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_a_machine_as_wanted_needs_nothing(configured):
    found = {f"{D}/web/tls": _digest("tls-SECRET\n"), f"{D}/worker/pw": _digest("pw-SECRET\n")}
    change = secrets.machine_change(configured, secret_files(configured), found)
    assert change == secrets.Change(None, (), ())
    assert secrets.describe({"10.0.0.1": change}) == ["10.0.0.1: secrets as wanted; nothing to do"]


def test_a_rotated_secret_restarts_its_component_only(configured):
    found = {f"{D}/web/tls": _digest("tls-SECRET\n"), f"{D}/worker/pw": _digest("old\n"),
             f"{D}/worker/retired": _digest("x"), f"{D}/stray": _digest("y")}
    change = secrets.machine_change(configured, secret_files(configured), found)
    assert change.extra.restart == ("worker",)
    assert change.written == [f"{D}/worker/pw"] and change.extra.files[0][1] == b"pw-SECRET\n"
    assert change.removed == (f"{D}/worker/retired",) and change.unused == (f"{D}/stray",)
    assert change.extra.after == (f"rm -f {D}/worker/retired && mkdir -p {D} && chmod 0700 {D} && "
                                  f"chown -R 0 {D}/web && chmod 0700 {D}/web && "
                                  f"chown -R 10001 {D}/worker && chmod 0700 {D}/worker")
    assert (change.extra.before, change.extra.undo) == (secrets.backup_command(), secrets.restore_command())
    lines = secrets.describe({"10.0.0.1": change})
    assert lines == ["10.0.0.1: write worker/pw; remove worker/retired, stray; "
                     "restart worker (drained, health-checked, back in)"]
    assert "SECRET" not in repr(change) and "SECRET" not in "".join(lines)


def test_keep_put_back_and_forget_the_previous_secrets(tmp_path):
    folder, previous = tmp_path / "secrets", tmp_path / "secrets.previous"
    (folder / "web").mkdir(parents=True)
    (folder / "web/tls").write_text("old")

    def sh(command):
        command = command.replace(secrets.PREVIOUS, str(previous)).replace(D, str(folder))
        subprocess.run(["sh", "-c", command], check=True)
    sh(secrets.backup_command())
    (folder / "web/tls").write_text("new")
    sh(secrets.restore_command())
    assert (folder / "web/tls").read_text() == "old" and not previous.exists()
    sh(secrets.backup_command())
    sh(secrets.forget_command())
    assert not previous.exists() and (folder / "web/tls").read_text() == "old"
    sh(secrets.restore_command())  # nothing kept: nothing happens
    assert (folder / "web/tls").read_text() == "old"


# ---------------------------------------------------------------- a run stopped at a machine, resumed

def test_the_summary_of_a_stopped_run_names_new_previous_and_unread_machines(configured):
    new, previous = secrets.Change(None), secrets.machine_change(configured, secret_files(configured), {})
    found = {"10.0.0.3": previous, "10.0.0.1": new, "10.0.0.2": previous, "10.0.0.4": "connection lost (EOF)"}
    assert secrets.stopped_summary("prod", found) == (
        "the secrets folder's secrets run on: 10.0.0.1; the previous ones on: 10.0.0.2, 10.0.0.3; "
        "not read: 10.0.0.4 (connection lost (EOF)); `fab secrets.apply --cluster prod --resume` finishes the others")


@pytest.fixture
def rotating(configured):
    """A session on 3 machines whose worker/pw differs from the folder's: each needs a worker restart."""
    from tasks.commands.haproxy import routers_file
    from tasks.commands.machine import secrets_facts_command
    from tasks.model import state

    from .fakes import FakeEtcd, FakeExecutor
    from .test_rollout import BALANCER, MACHINES, OLD, FakeSession, facts_text
    ex = FakeExecutor(configured)
    ex.files[(BALANCER, configured.balancer.routers_file)] = (routers_file(configured, MACHINES), 0o644)
    ex.answer("air-candidate", stdout="air-drain: 0\n")
    ex.answer("echo '--release'", stdout=facts_text(OLD.id, {"web": "1.0.0", "worker": "1.0.0"}))
    tls = f"{_digest('tls-SECRET' + chr(10))}  {D}/web/tls\n"
    previous = f"{_digest('old')}  {D}/worker/pw\n{tls}"
    ex.answer(secrets_facts_command(), stdout=previous)
    rotated = f"{_digest('pw-SECRET' + chr(10))}  {D}/worker/pw\n{tls}"

    def rotated_once_restarted(host, command):
        # A machine whose worker restarted on the staged files reads the folder's digests from then
        # on; one whose previous secrets were put back, those again.
        if secrets.restore_command() in command:
            ex.answer(secrets_facts_command(), host=host, stdout=previous, first=True)
        elif "list-unit-files --no-legend air-worker.service" in command and "restart air-worker" in command:
            ex.answer(secrets_facts_command(), host=host, stdout=rotated, first=True)
    ex.on_run = rotated_once_restarted
    etcd = FakeEtcd(MACHINES)
    etcd.put(state.release_key(configured), state.release_record(OLD, outcome="succeeded"))
    return FakeSession(configured, ex, etcd)


def test_a_run_stopped_at_a_machine_says_who_runs_which_secrets_and_resume_finishes_the_others(rotating):
    from tasks.runbooks.upgrade import UpgradeFailed
    from .test_rollout import MACHINES, OLD, restarts
    ex = rotating.ex
    ex.answer("curl", host=MACHINES[1], exited=1, stderr="not healthy within 20 s: worker(...)", first=True)
    on_run = ex.on_run

    def healthy_once_put_back(host, command):
        on_run(host, command)
        if secrets.restore_command() in command:
            ex.rules = [r for r in ex.rules if r[1] != "curl"]  # the previous secrets back: healthy again
    ex.on_run = healthy_once_put_back
    with pytest.raises(UpgradeFailed) as stopped:
        secrets.apply(rotating)
    message = str(stopped.value)
    assert f"upgrade of {MACHINES[1]} to {OLD.id} failed: " in message
    assert f"already upgraded to {OLD.id}: {MACHINES[0]} (they run the new secrets)" in message
    assert message.endswith(f"the secrets folder's secrets run on: {MACHINES[0]}; the previous ones on: "
                            f"{MACHINES[1]}, {MACHINES[2]}; `fab secrets.apply --cluster prod --resume` "
                            f"finishes the others")
    assert "rolling-upgrade" not in message and "SECRET" not in message
    # The first done, the second restarted and put back (its restore restarts it again), the third untouched.
    assert [h for h, _ in restarts(ex)] == [MACHINES[0], MACHINES[1], MACHINES[1]]

    ex.calls.clear()
    changes = secrets.apply(rotating, resume=True)
    assert sorted(a for a, c in changes.items() if c.extra is not None) == MACHINES[1:]
    assert [h for h, _ in restarts(ex)] == MACHINES[1:]
    forgotten = sorted(h for h, c, _ in ex.calls if c == secrets.forget_command())
    assert forgotten == MACHINES  # every kept copy, also one a killed run left on a machine done
    assert not any("SECRET" in c for _, c, _ in ex.calls)


def test_an_interrupted_run_stays_one_line_and_names_the_secrets_of_each_machine(rotating):
    from tasks.model.errors import Interrupted
    from .test_rollout import MACHINES
    ex = rotating.ex
    check = ex.check

    def interrupted_between_machines(what="the next change"):
        if what == f"the upgrade of {MACHINES[1]}":
            ex.interrupted.set()  # Ctrl-C once the first machine is done, before the second leaves the balancer
        check(what)
    ex.check = interrupted_between_machines
    with pytest.raises(Interrupted) as stopped:
        secrets.apply(rotating)
    message = str(stopped.value)
    assert "\n" not in message
    assert message.endswith(f"the secrets folder's secrets run on: {MACHINES[0]}; the previous ones on: "
                            f"{MACHINES[1]}, {MACHINES[2]}; `fab secrets.apply --cluster prod --resume` "
                            f"finishes the others")
