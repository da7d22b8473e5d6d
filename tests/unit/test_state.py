"""tasks/state.py: the etcd keys of a cluster and the JSON stored under them, with a dict as etcd."""
import json
from types import SimpleNamespace

import pytest

from tasks.model import state
from tasks.model.errors import RecordError
from tasks.model.release import Image, Release
from tasks.net.etcd import Member
from tasks.runbooks import records

CLUSTER = SimpleNamespace(name="prod")
RELEASE = Release((Image("worker", "1.3.0", "sha256:" + "b" * 64),
                   Image("web", "1.2.3", "sha256:" + "a" * 64)))


class FakeEtcd:
    """The part of tasks.net.etcd.Etcd that the records use, over a dict."""

    def __init__(self):
        self.data = {}

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        assert isinstance(value, str)
        self.data[key] = value

    def get_prefix(self, prefix):
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    def delete(self, key):
        self.data.pop(key, None)


def test_keys():
    assert state.prefix(CLUSTER) == "/air/prod/"
    assert state.release_key(CLUSTER) == "/air/prod/release/current"
    assert state.history_prefix(CLUSTER) == "/air/prod/releases/"
    assert state.history_key(CLUSTER, "2024-01-02T03:04:05.000000Z") == "/air/prod/releases/2024-01-02T03:04:05.000000Z"
    assert state.lock_key(CLUSTER) == "/air/prod/lock"
    assert state.candidate_key(CLUSTER) == "/air/prod/release/candidate"


def test_keys_of_two_clusters_do_not_overlap():
    other = SimpleNamespace(name="prod_eu")
    assert not state.release_key(other).startswith(state.prefix(CLUSTER))


def test_release_record():
    assert state.release_record(RELEASE, who="ada@build", when="2024-01-02T03:04:05.000000Z",
                                outcome="installed", branch="master") == (
        '{"branch": "master", '
        '"components": {"web": {"digest": "sha256:' + "a" * 64 + '", "version": "1.2.3"}, '
        '"worker": {"digest": "sha256:' + "b" * 64 + '", "version": "1.3.0"}}, '
        '"id": "0570bb33ff35", "outcome": "installed", "when": "2024-01-02T03:04:05.000000Z", "who": "ada@build"}')


def test_release_record_of_a_bare_release():
    assert json.loads(state.release_record(RELEASE)) == RELEASE.to_dict()


def test_write_then_read_release():
    etcd = FakeEtcd()
    record = records.write_release(etcd, CLUSTER, RELEASE, outcome="installed", who="ada@build", when="T")
    assert record == {**RELEASE.to_dict(), "outcome": "installed", "who": "ada@build", "when": "T"}
    assert list(etcd.data) == ["/air/prod/release/current"]
    release, stored = records.read_release(etcd, CLUSTER)
    assert release == RELEASE and release.id == "0570bb33ff35"
    assert stored == record


def test_write_release_says_who_and_when(monkeypatch):
    monkeypatch.setattr(state, "operator", lambda: "ada@build")
    monkeypatch.setattr(state, "now", lambda: "2024-01-02T03:04:05.000000Z")
    record = records.write_release(FakeEtcd(), CLUSTER, RELEASE)
    assert (record["who"], record["when"]) == ("ada@build", "2024-01-02T03:04:05.000000Z")


def test_no_release_recorded():
    assert records.read_release(FakeEtcd(), CLUSTER) == (None, None)


def test_history_is_oldest_first():
    etcd = FakeEtcd()
    for when, outcome in [("2024-02-01T00:00:00.000000Z", "succeeded"), ("2024-01-01T00:00:00.000000Z", "installed")]:
        assert records.add_history(etcd, CLUSTER, {**RELEASE.to_dict(), "when": when, "outcome": outcome}) == when
    assert [r["outcome"] for r in records.history(etcd, CLUSTER)] == ["installed", "succeeded"]


def test_now_is_sortable_utc():
    stamp = state.now()
    assert len(stamp) == len("2024-01-02T03:04:05.000000Z") and stamp.endswith("Z")


@pytest.mark.parametrize("member, address", [
    (Member("1", "10.0.0.1", ("http://10.0.0.1:2380",), ("http://10.0.0.1:2379",), False), "10.0.0.1"),
    (Member("2", "", ("http://10.0.0.4:2380",), (), True), "10.0.0.4"),  # added, not started yet
    (Member("3", "fd00::3", ("http://[fd00::3]:2380",), (), False), "fd00::3"),
    (Member("4", "10.0.0.5", (), (), False), "10.0.0.5"),
])
def test_member_address(member, address):
    assert state.member_address(member) == address


def test_a_candidate_is_kept_beside_the_current_release_with_its_machines():
    etcd = FakeEtcd()
    assert records.read_candidate(etcd, CLUSTER) == (None, None)
    record = records.write_candidate(etcd, CLUSTER, RELEASE, ["10.0.0.3", "10.0.0.1"], who="ann@desk",
                                   when="2024-01-02T03:04:05.000000Z", branch="master")
    assert record["machines"] == ["10.0.0.1", "10.0.0.3"]
    assert record["id"] == RELEASE.id and record["who"] == "ann@desk"
    assert records.read_candidate(etcd, CLUSTER) == (RELEASE, record)
    assert records.read_release(etcd, CLUSTER) == (None, None)  # the current release is another key
    records.clear_candidate(etcd, CLUSTER)
    assert records.read_candidate(etcd, CLUSTER) == (None, None)


DIGEST = "sha256:" + "d" * 64


def _planted(**component):
    fields = {"version": "1.0.0", "digest": DIGEST, **component}
    release = Release.from_dict({"components": {"web": {"version": "1.0.0", "digest": DIGEST}}})
    return json.dumps({"id": release.id, "components": {"web": fields}})


def _with(**fields):
    """A good record with ``fields`` besides (the settings and secrets it keeps)."""
    return json.dumps({**json.loads(_planted()), **fields})


@pytest.mark.parametrize("planted, named", [
    (_planted(digest="sha256:x' ; touch /tmp/owned ; echo '"), "digest"),
    (_with(settings={"digest": DIGEST, "values": {"a": {"secret": "x; reboot", "digest": DIGEST}}}),
     "settings: a: neither a value nor a secret's name and digest"),
    (_with(secrets={"db_password": "hunter2"}), "secrets: db_password 'hunter2' is not sha256:"),
    (_planted(version="1.0.0; reboot"), "version"),
    (_planted(manifest="sha256:" + "0" * 63 + "'"), "manifest"),
    (json.dumps({"id": "abc", "components": {"web": {"version": "1.0.0", "digest": DIGEST}}}), "id"),
    (json.dumps({"components": {"web$(id)": {"version": "1.0.0", "digest": DIGEST}}}), "component name"),
    ("{not json", "Expecting"),
])
def test_a_planted_or_damaged_release_record_is_refused_naming_its_key(planted, named):
    etcd = FakeEtcd()
    etcd.put(state.release_key(CLUSTER), planted)
    with pytest.raises(RecordError, match=f"etcd key {state.release_key(CLUSTER)} is not a release record") as refused:
        records.read_release(etcd, CLUSTER)
    assert named in str(refused.value)


def test_a_planted_history_record_stops_the_history_and_a_candidate_names_addresses_only():
    etcd = FakeEtcd()
    good = Release.from_dict({"components": {"web": {"version": "1.0.0", "digest": DIGEST}}})
    records.add_history(etcd, CLUSTER, {**good.to_dict(), "when": "2024-01-01T00:00:00.000000Z"})
    assert [r["id"] for r in records.history(etcd, CLUSTER)] == [good.id]
    etcd.put(state.history_key(CLUSTER, "2024-01-02T00:00:00.000000Z"), _planted(digest="sha256:1"))
    with pytest.raises(RecordError, match="/air/prod/releases/2024-01-02T00:00:00.000000Z is not a release record"):
        records.history(etcd, CLUSTER)
    etcd.put(state.candidate_key(CLUSTER), json.dumps({**good.to_dict(), "machines": ["10.0.0.1; rm -rf /"]}))
    with pytest.raises(RecordError, match="machines"):
        records.read_candidate(etcd, CLUSTER)
