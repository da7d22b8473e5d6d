"""etcd's logins kept and authentication turned on, against a real etcd started here (no SSH):
the runbook (tasks.runbooks.etcd_auth) and the client's login (tasks.net.etcd)."""
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tasks.model import etcd_access, state
from tasks.model.cluster import Setting
from tasks.model.errors import LostLock, RemoteError
from tasks.net import etcd as etcd_module
from tasks.net.etcd import Etcd
from tasks.runbooks import etcd_auth

from .fakes import FakeEtcd, FakeExecutor, FakeFence
from .test_etcd import etcd_server  # noqa: F401 (the fixture: an etcd of this module's own)


@pytest.fixture
def reading(cluster):
    web = replace(cluster.component("web"), reads=("settings/site/name",))
    worker = replace(cluster.component("worker"), reads=("maintenance",))
    return replace(cluster, components=(web, worker),
                   settings=(Setting("site/name", "Air"), Setting("db/host", "h")))


def session_of(cluster, etcd):
    return SimpleNamespace(cluster=cluster, etcd=etcd, ex=FakeExecutor(cluster))


def test_keeping_the_logins_twice_changes_nothing_the_second_time(reading, capsys):
    etcd = FakeEtcd()
    s = session_of(reading, etcd)
    done = etcd_auth.keep(s, "deploy")
    assert done[:2] == ["add user root", "grant root the role root"] and len(done) == 10
    assert set(etcd.users) == {"root", "air-web", "air-worker"}
    assert etcd_auth.keep(s, "deploy") == []
    said = capsys.readouterr().err
    assert "deploy: etcd logins: let air-web read /air/prod/app/settings/site/name" in said
    assert "root-SECRET" not in said and etcd_access.password_of("root-SECRET", "air-web") not in said
    # The digests recorded are what the next run compares with.
    assert etcd_access.parse_digests("k", etcd.data[state.logins_key(reading)]) == \
        etcd_access.digests_after("root-SECRET", etcd_access.logins(reading, "root-SECRET"))


def test_no_login_is_kept_once_the_lock_is_lost(reading):
    s = session_of(reading, FakeEtcd())
    s.ex.fence = FakeFence()
    s.ex.fence.lose()
    with pytest.raises(LostLock):
        etcd_auth.keep(s, "deploy")
    assert s.etcd.calls == ["user/list", "role/list"]  # read, then refused before the first change


def test_the_root_credentials_file_is_made_once_and_private(reading, tmp_path):
    fresh = replace(reading, secrets=tmp_path / "secrets")
    etcd_auth.ensure_root(fresh)
    path = etcd_access.credentials_file(fresh)
    first = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600 and etcd_access.root_login(fresh)[0] == "root"
    etcd_auth.ensure_root(fresh)
    assert path.read_text() == first
    etcd_auth.ensure_root(replace(reading, secrets=tmp_path / "open", etcd_auth=False))
    assert not (tmp_path / "open").exists()


def test_turned_on_only_logins_are_answered_each_with_its_own_keys(reading, etcd_server):  # noqa: F811
    port = etcd_server["port"]
    root = Etcd("127.0.0.1", port, timeout=2, login=("root", "root-SECRET"))
    assert root.auth_enabled is False  # authentication off: the client goes on without a token
    root.put(state.setting_key(reading, "site/name"), "Air")
    root.put(state.setting_key(reading, "db/host"), "h")
    s = session_of(reading, root)
    etcd_auth.keep(s, "setup-cluster")
    assert etcd_auth.turn_on(s, "setup-cluster") is True
    try:
        assert root.auth_enabled and root.get(state.setting_key(reading, "db/host")) == "h"
        assert etcd_auth.turn_on(s, "setup-cluster") is False
        web = Etcd("127.0.0.1", port, timeout=2, login=("air-web", etcd_access.password_of("root-SECRET", "air-web")))
        assert web.get(state.setting_key(reading, "site/name")) == "Air"
        with pytest.raises(RemoteError, match="permission denied"):
            web.get(state.setting_key(reading, "db/host"))
        with pytest.raises(RemoteError, match="permission denied"):
            web.put(state.setting_key(reading, "site/name"), "planted")
        anyone = Etcd("127.0.0.1", port, timeout=2)
        with pytest.raises(RemoteError, match="user name is empty .its authentication is on: set etcd_auth: true"):
            anyone.get(state.setting_key(reading, "site/name"))
        wrong = Etcd("127.0.0.1", port, timeout=2, login=("root", "wrong"))
        with pytest.raises(RemoteError, match="log in as root: .*authentication failed"):
            wrong.get("x")
        # A task's start with authentication on: the health check needs no login; the login and the
        # lock's lease go side by side with it; the lock's transaction reads keys as it takes it.
        assert anyone.healthy()
        fresh = Etcd("127.0.0.1", port, timeout=2, login=("root", "root-SECRET"))
        fresh.log_in_ahead()
        fresh.grant_ahead(5)
        ahead = fresh._lease_ahead[1]
        assert fresh.healthy()
        key, db = f"/test/{id(fresh)}/lock", state.setting_key(reading, "db/host")
        lock = fresh.acquire(key, {"who": "me"}, 5, reads=([db], [state.settings_prefix(reading)]))
        try:
            assert lock.lease_id == ahead.result() and fresh._token  # the lease asked ahead, the login made ahead
            read = lock.take_read()
            assert read == fresh.read_many([db], [state.settings_prefix(reading)]) and read[0] == {db: "h"}
            assert lock.take_read() is None  # once: later it would be as old as the lock
        finally:
            lock.release()
        # A token etcd no longer knows (expired) is renewed once, transparently.
        root._token = "expired.1"
        assert root.get(state.setting_key(reading, "db/host")) == "h"
        assert root._token != "expired.1"
    finally:
        root.auth("disable", {}, "turn authentication off")
    assert Etcd("127.0.0.1", port, timeout=2).get(state.setting_key(reading, "db/host")) == "h"


def test_while_etcd_cannot_log_anyone_in_requests_go_without_a_token_for_a_while(monkeypatch):
    """Without quorum a login (a write) cannot be answered: the member's status and member list,
    which need none, are still asked; a login is tried again once LOGIN_PAUSE has passed."""
    client = Etcd("127.0.0.1", 1, timeout=1, login=("root", "pw"))
    tries = []
    monkeypatch.setattr(client, "_log_in", lambda: tries.append(1) or None)
    assert client.token() == "" and client.token() == "" and len(tries) == 1
    monkeypatch.setattr(etcd_module, "boottime", lambda: time.monotonic() + etcd_module.LOGIN_PAUSE + 1)
    monkeypatch.setattr(client, "_log_in", lambda: tries.append(1) or "tok.1")
    assert client.token() == "tok.1" and len(tries) == 2


def test_a_lock_record_planted_with_control_characters_is_described_on_one_line():
    said = etcd_module.describe_holder({"who": "x\n\x1b[2Jerror: all fine", "why": "y" * 300})
    assert "\n" not in said and "\x1b" not in said and said.startswith("who=x??[2Jerror: all fine, why=")
    assert len(said) < 150
