"""tasks.model.etcd_access: the logins wanted, and the plan of calls that keeps etcd's users and roles so."""
import base64
from dataclasses import replace

import pytest

from tasks.model import etcd_access
from tasks.model.cluster import Setting
from tasks.model.errors import ConfigError, RecordError
from tasks.model.etcd_access import Call, Found, Grant, Login

ROOT = "root-SECRET"


@pytest.fixture
def reading(cluster):
    """The unit cluster with web reading the maintenance key and a settings prefix, worker one setting."""
    web = replace(cluster.component("web"), reads=("maintenance", "settings/site/"))
    worker = replace(cluster.component("worker"), reads=("settings/db/host",))
    return replace(cluster, components=(web, worker), settings=(Setting("site/name", "Air"), Setting("db/host", "h")))


def b64(text):
    return base64.b64encode(text.encode()).decode()


def test_the_root_login_comes_from_the_private_credentials_file(cluster):
    assert etcd_access.root_login(cluster) == ("root", "root-SECRET")
    path = etcd_access.credentials_file(cluster)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="etcd root credentials must be private"):
        etcd_access.root_login(cluster)
    path.chmod(0o600)
    path.write_text("username: admin\npassword: x\n")
    with pytest.raises(ConfigError, match="username: expected 'root'"):
        etcd_access.root_login(cluster)
    path.unlink()
    with pytest.raises(ConfigError, match=r"etcd-root.yaml: missing: the etcd root login of prod \(`fab etcd.auth"):
        etcd_access.root_login(cluster)
    assert etcd_access.root_login(replace(cluster, etcd_auth=False)) is None  # open, and no file: no login


def test_each_component_that_reads_gets_a_login_on_exactly_its_keys(reading):
    logins = etcd_access.logins(reading, ROOT)
    assert logins == {
        "air-web": Login("air-web", (Grant("/air/prod/app/maintenance"),
                                     Grant("/air/prod/app/settings/site/", "/air/prod/app/settings/site0")),
                         etcd_access.password_of(ROOT, "air-web")),
        "air-worker": Login("air-worker", (Grant("/air/prod/app/settings/db/host"),),
                            etcd_access.password_of(ROOT, "air-worker")),
    }
    assert etcd_access.logins(replace(reading, etcd_auth=False), ROOT) == {}
    assert etcd_access.password_of(ROOT, "air-web") != etcd_access.password_of(ROOT, "air-worker")
    assert etcd_access.password_of("another root", "air-web") != etcd_access.password_of(ROOT, "air-web")
    assert "SECRET" not in repr(logins)


def test_the_password_files_go_to_each_components_own_folder(reading):
    assert etcd_access.password_files(reading, ROOT, lambda name: f"/s/{name}") == [
        ("/s/web/etcd-password", etcd_access.password_of(ROOT, "air-web"), 0o400),
        ("/s/worker/etcd-password", etcd_access.password_of(ROOT, "air-worker"), 0o400)]


def test_a_new_cluster_gets_root_and_every_login():
    wanted = {"air-web": Login("air-web", (Grant("/k"),), "pw")}
    assert etcd_access.plan(ROOT, wanted, Found({}, {}, {})) == [
        Call("user/add", {"name": "root", "password": ROOT}, "add user root"),
        Call("user/grant", {"user": "root", "role": "root"}, "grant root the role root"),
        Call("role/add", {"name": "air-web"}, "add role air-web"),
        Call("role/grant", {"name": "air-web", "perm": {"permType": "READ", "key": b64("/k")}}, "let air-web read /k"),
        Call("user/add", {"name": "air-web", "password": "pw"}, "add user air-web"),
        Call("user/grant", {"user": "air-web", "role": "air-web"}, "give air-web the role air-web"),
    ]


def test_a_kept_cluster_needs_nothing_and_changes_need_only_their_calls():
    wanted = {"air-web": Login("air-web", (Grant("/k"), Grant("/p/", "/p0")), "pw")}
    kept = Found(users={"root": ("root",), "air-web": ("air-web",), "operator": ()},
                 roles={"air-web": (Grant("/k"), Grant("/p/", "/p0"))},
                 digests=etcd_access.digests_after(ROOT, wanted))
    assert etcd_access.plan(ROOT, wanted, kept) == []
    changed = {"air-web": Login("air-web", (Grant("/k"), Grant("/n")), "new pw")}
    assert [c.said for c in etcd_access.plan("new root", changed, kept)] == [
        "set root's password", "let air-web read /n", "no longer let air-web read /p/*", "set air-web's password"]
    revoke = etcd_access.plan(ROOT, changed, kept)[1]
    assert revoke.payload == {"role": "air-web", "key": b64("/p/"), "range_end": b64("/p0")}
    # A component that no longer reads loses its login; users air-deploy does not keep stay.
    assert [c.said for c in etcd_access.plan(ROOT, {}, kept)] == [
        "remove user air-web (no component reads as it)", "remove role air-web"]


def test_the_record_of_the_logins_changes_with_any_password_or_grant():
    wanted = {"air-web": Login("air-web", (Grant("/k"), Grant("/p/", "/p0")), "pw")}
    record = etcd_access.digests_after(ROOT, wanted)
    assert set(record) == {"root", "air-web", etcd_access.GRANTS}
    assert etcd_access.parse_digests("/k", __import__("json").dumps(record)) == record  # it reads back as written
    assert etcd_access.digests_after(ROOT, dict(wanted)) == record
    for other in ({"air-web": Login("air-web", (Grant("/k"),), "pw")},            # a grant fewer
                  {"air-web": Login("air-web", (Grant("/k"), Grant("/p/", "/p0")), "pw2")},  # another password
                  {**wanted, "air-api": Login("air-api", (), "pw")}):               # another login
        assert etcd_access.digests_after(ROOT, other) != record
    assert etcd_access.digests_after("other root", wanted) != record


def test_no_call_is_shown_with_its_password():
    calls = etcd_access.plan(ROOT, {"air-web": Login("air-web", (), "pw-SECRET")}, Found({}, {}, {}))
    assert not any("SECRET" in c.said or "SECRET" in repr(c) for c in calls)


def test_grants_read_back_from_the_gateway_are_the_ones_planned():
    perms = [{"key": b64("/k")}, {"permType": "READ", "key": b64("/p/"), "range_end": b64("/p0")},
             {"permType": "WRITE", "key": b64("/w")}]
    assert etcd_access.parse_grants(perms) == (Grant("/k"), Grant("/p/", "/p0"))


def test_the_digests_record_is_checked():
    good = '{"root": "' + "a" * 64 + '"}'
    assert etcd_access.parse_digests("/air/prod/etcd-logins", good) == {"root": "a" * 64}
    assert etcd_access.parse_digests("/air/prod/etcd-logins", None) == {}
    for bad in ("[]", "{", '{"root": "x"}', '{"root": 1}', '{"root": "' + "a" * 64 + '\\n"}'):
        with pytest.raises(RecordError, match="^etcd key /air/prod/etcd-logins is not the record of etcd logins"):
            etcd_access.parse_digests("/air/prod/etcd-logins", bad)


def test_range_end_covers_the_prefix():
    assert etcd_access.range_end("/air/x/") == "/air/x0"
