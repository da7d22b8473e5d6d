"""tasks/settings.py: the settings wanted, the change from what etcd holds (pure, by equality), and
``apply`` against a fake etcd: changed keys only, unlisted ones removed within the prefix, secrets
never printed."""
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tasks.model import state
from tasks.model.cluster import Setting
from tasks.model.errors import LostLock
from tasks.runbooks import settings

from .fakes import FakeEtcd, FakeExecutor, FakeFence

P = "/air/prod/app/settings/"


@pytest.fixture
def configured(cluster):
    cluster.secrets.mkdir(exist_ok=True)
    (cluster.secrets / "db_password").write_text("hunter2-XYZ\n")
    return replace(cluster, settings=(Setting("site/name", "Air"), Setting("db/port", "5432"),
                                      Setting("db/password", secret="db_password")),
                   etcd_auth=False)  # etcd's logins: tests/unit/test_etcd_auth.py


def test_keys_live_under_the_applications_own_prefix(cluster):
    assert state.app_prefix(cluster) == "/air/prod/app/"
    assert state.settings_prefix(cluster) == P
    assert state.setting_key(cluster, "db/port") == P + "db/port"
    assert state.maintenance_key(cluster) == "/air/prod/app/maintenance"
    assert not state.maintenance_key(cluster).startswith(state.settings_prefix(cluster))
    assert not state.lock_key(cluster).startswith(state.app_prefix(cluster))


def test_wanted_reads_a_secret_from_its_file_without_the_trailing_newline(configured):
    assert settings.wanted(configured) == {P + "site/name": "Air", P + "db/port": "5432",
                                           P + "db/password": "hunter2-XYZ"}
    secrets = settings.secrets_of(configured)
    assert secrets.keys == {P + "db/password"} and "hunter2-XYZ" in secrets.values


def test_diff_writes_changed_keys_only_and_removes_below_the_prefix_only():
    want = {P + "a": "1", P + "b": "2", P + "c": "3"}
    found = {P + "a": "1", P + "b": "old", P + "gone": "x", "/air/prod/app/maintenance": "m"}
    changes = settings.diff(want, found, P)
    assert changes.added == {P + "c": "3"}
    assert changes.changed == {P + "b": "2"}
    assert changes.removed == (P + "gone",)
    assert changes.puts == {P + "b": "2", P + "c": "3"}
    assert not settings.diff(want, dict(want), P)


def test_describe_masks_secrets_old_and_new():
    changes = settings.Changes(added={P + "pw": "new-secret", P + "x": "1"}, changed={P + "pw2": "s2"},
                               removed=(P + "old",))
    secrets = settings.Secrets(frozenset({P + "pw", P + "pw2"}))
    lines = settings.describe(changes, {P + "pw2": "s1"}, secrets, P)
    assert lines == ["+ pw = (secret)", "+ x = '1'", "~ pw2: (secret) -> (secret)", "- old"]
    data = settings.as_data(changes, {P + "pw2": "s1"}, secrets, P)
    assert data == {"added": {"pw": None, "x": "1"}, "changed": {"pw2": None}, "removed": ["old"],
                    "secret": ["pw", "pw2"]}


def test_a_key_that_was_a_secret_and_is_now_plain_text_does_not_show_the_old_secret(configured):
    """db/password is plain text in the file now; etcd still holds the secret file's value there."""
    now_plain = replace(configured, settings=(Setting("site/name", "Air"), Setting("db/password", "changeme")))
    secrets = settings.secrets_of(now_plain)
    found = {P + "db/password": "hunter2-XYZ", P + "site/name": "Air", P + "legacy": "hunter2-XYZ"}
    changes = settings.diff(settings.wanted(now_plain), found, P)
    lines = settings.describe(changes, found, secrets, P)
    assert lines == ["~ db/password: (secret) -> 'changeme'", "- legacy"]
    assert "hunter2" not in repr(settings.as_data(changes, found, secrets, P))


def _session(cluster, etcd):
    return SimpleNamespace(cluster=cluster, etcd=etcd, ex=FakeExecutor(cluster))


def test_apply_writes_once_then_finds_nothing_to_do(configured, capsys):
    etcd = FakeEtcd()
    etcd.data = {P + "site/name": "Old", P + "stale": "x", "/air/prod/release/current": "{}"}
    s = _session(configured, etcd)
    changes = settings.apply(s, "deploy")
    assert etcd.data == {P + "site/name": "Air", P + "db/port": "5432", P + "db/password": "hunter2-XYZ",
                         "/air/prod/release/current": "{}"}
    assert etcd.writes == 1 and changes.removed == (P + "stale",)
    said = capsys.readouterr().err
    assert "deploy: settings: ~ site/name: 'Old' -> 'Air'" in said
    assert "deploy: settings: + db/password = (secret)" in said and "- stale" in said
    assert "hunter2" not in said
    assert not settings.apply(s, "deploy")
    assert "deploy: settings: unchanged (3 key(s))" in capsys.readouterr().err
    assert etcd.v2 == {}


def test_apply_writes_the_v2_store_too_when_the_cluster_asks(configured):
    etcd = FakeEtcd()
    etcd.v2 = {P + "stale": "x", "/elsewhere": "y"}
    settings.apply(_session(replace(configured, etcd_v2=True), etcd), "deploy")
    assert etcd.v2 == {P + "site/name": "Air", P + "db/port": "5432", P + "db/password": "hunter2-XYZ",
                       "/elsewhere": "y"}


def test_apply_writes_nothing_once_the_lock_is_lost(configured):
    etcd = FakeEtcd()
    s = _session(configured, etcd)
    s.ex.fence = FakeFence()
    s.ex.fence.lose()
    with pytest.raises(LostLock):
        settings.apply(s, "deploy")
    assert etcd.data == {}


def test_settings_already_as_wanted_cost_no_confirmation_of_the_lock(configured):
    etcd = FakeEtcd()
    s = _session(configured, etcd)
    settings.apply(s, "deploy")
    confirmed = []
    s.ex.fence = SimpleNamespace(confirm=lambda fresh=0: confirmed.append(fresh))
    assert not settings.apply(s, "deploy")
    assert confirmed == [] and etcd.writes == 1  # nothing to write: no round trip to confirm the lock
    etcd.data[P + "site/name"] = "Old"
    settings.apply(s, "deploy")
    assert len(confirmed) == 1 and etcd.writes == 2


def test_a_key_planted_in_etcd_with_control_characters_is_shown_escaped():
    changes = settings.Changes(removed=(P + "x\x1b[2J",))
    assert settings.describe(changes, {}, settings.Secrets(frozenset()), P) == ["- x\\x1b[2J"]
