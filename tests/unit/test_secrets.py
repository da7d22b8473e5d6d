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
