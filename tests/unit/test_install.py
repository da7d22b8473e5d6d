"""tasks/runbooks/install.py: what create-admin refuses before anything is contacted."""
import pytest

from tasks.model.errors import ConfigError
from tasks.runbooks import install
from tasks.runbooks.install import check_admin


@pytest.mark.parametrize("email, name", [
    ("a@example.org\r", "Ada"), ("a@example.org", "Ada\r"), ("a@example.org", "Ada\tLovelace"),
    ("a\t@example.org", "Ada"), ("a@example.org", "Ada\n"), ("a@example.org", "\x1b[2JAda"),
    ("example.org", "Ada"), (None, "Ada"), ("a@example.org", ""),
])
def test_create_admin_refuses_an_email_or_name_not_on_one_line(email, name):
    with pytest.raises(ConfigError) as refused:
        check_admin(email, name)
    assert str(refused.value) == "--email (an address) and --name are required, each on one line " \
                                 "without control characters"


def test_create_admin_takes_a_plain_email_and_name():
    assert check_admin("ada@example.org", "Ada Lovelace ✓") is None


def test_the_admin_command_runs_in_its_component_and_an_echoed_password_is_masked(cluster):
    from dataclasses import replace

    from tasks.model.cluster import Admin
    admin = replace(cluster, admin=Admin(component="web", command="/app/bin/create-admin --quiet 'a b'"))
    assert install.admin_command(admin) == "docker exec -i air-web /app/bin/create-admin --quiet 'a b'"
    assert install.masked("bad password Pw-1 for a@b", "Pw-1") == "bad password (password) for a@b"


@pytest.mark.parametrize("failure, raised", [
    (ValueError("a bug of ours"), ValueError),
    (install.RemoteError("10.0.0.2: install failed (exit 1): no space left"), install.AirError),
])
def test_setup_wipes_every_machine_after_any_failure_before_anything_started(cluster, monkeypatch, failure, raised):
    from types import SimpleNamespace

    from tasks.model.release import Image, Release

    from .fakes import FakeExecutor
    machines = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    ex = FakeExecutor(cluster)
    monkeypatch.setattr(install.push, "published_release", lambda ex: Release((Image("web", "1.0.0", "sha256:" + "a" * 64),)))
    monkeypatch.setattr(install.etcd_peers, "ensure", lambda cluster, machines: None)
    monkeypatch.setattr(install.etcd_auth, "ensure_root", lambda cluster: None)
    monkeypatch.setattr(install, "preflight", lambda ex, machines, release, members=None: {
        a: SimpleNamespace(user_data="/var/lib/flatcar-install/user_data") for a in machines})

    def install_machine(ex, address, plan, release):
        if address == "10.0.0.2":
            raise failure
    monkeypatch.setattr(install, "install_machine", install_machine)
    with pytest.raises(raised) as stopped:
        install.setup(SimpleNamespace(cluster=cluster, ex=ex), machines)
    wipe = install.machine.wipe_command(cluster, "/var/lib/flatcar-install/user_data")
    assert sorted(h for h, c, _ in ex.calls if c == wipe) == machines
    if raised is install.AirError:
        assert str(stopped.value) == ("setup-cluster failed before anything started: 10.0.0.2: install failed "
                                      "(exit 1): no space left\nevery machine was wiped back to freshly prepared; "
                                      "fix the cause and run it again")
    else:
        assert stopped.value is failure  # a bug keeps its own error and traceback
