"""etcd backups: the snapshot file read without etcd, the catalogue (names, pruning, age), the
restore and recovery commands, the quorum read from members' answers, and taking backups with the
recording fakes."""
import json
import stat
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from tasks.commands import etcd_recovery as cmd
from tasks.model import backup, etcd_snapshot, state
from tasks.model.errors import ConfigError, PreflightError, RemoteError
from tasks.runbooks import etcd_backup, etcd_members, etcd_recovery
from tasks.runbooks.etcd_members import Answer

from .fakes import SNAPSHOT, FakeEtcd, FakeExecutor

DIGEST = "007760c6ab00ba50442e66eb631e5ab866f05ad3e9770a062b7c9e0f80798e25"
WHEN = datetime(2026, 3, 4, 5, 6, 7, 890123, tzinfo=timezone.utc)


# ---------------------------------------------------------------- the snapshot file

def test_a_recorded_snapshot_reads_as_etcd_says():
    # Recorded from etcd 3.4: 5 puts, k1 put again, k2 deleted and put back, k3 deleted
    # (`etcdctl snapshot status` says revision 10).
    assert etcd_snapshot.read(SNAPSHOT.read_bytes()) == etcd_snapshot.Facts(10, 4, DIGEST, 20512)


def test_values_at_the_snapshots_revision():
    data = SNAPSHOT.read_bytes()
    assert [etcd_snapshot.value_of(data, k) for k in ("/air/k1", "/air/k2", "/air/k3", "/air/k9")] == \
        ["again", "back", None, None]


def test_a_changed_byte_fails_the_trailer():
    data = bytearray(SNAPSHOT.read_bytes())
    data[5000] ^= 1
    with pytest.raises(etcd_snapshot.SnapshotError) as refused:
        etcd_snapshot.read(bytes(data), "s.db")
    assert str(refused.value) == "s.db: its SHA-256 trailer does not match its content (damaged or cut short)"


@pytest.mark.parametrize("cut, said", [(1, "not an etcd snapshot with its SHA-256 trailer"),
                                       (32, "not an etcd snapshot with its SHA-256 trailer"),
                                       (4096, "its SHA-256 trailer does not match its content")])
def test_a_file_cut_short_is_not_a_snapshot(cut, said):
    with pytest.raises(etcd_snapshot.SnapshotError, match=said):
        etcd_snapshot.read(SNAPSHOT.read_bytes()[:-cut], "s.db")


def test_a_database_that_is_not_bbolt_is_refused_even_with_a_right_trailer():
    import hashlib
    body = b"\x00" * 4096
    with pytest.raises(etcd_snapshot.SnapshotError, match="its database cannot be read"):
        etcd_snapshot.read(body + hashlib.sha256(body).digest(), "s.db")


def test_key_name_of_a_key_value_message():
    # key "/a" (field 1), create_revision 2 (field 2, a varint), value "x" (field 5)
    assert etcd_snapshot.key_name(b"\x0a\x02/a\x10\x02\x2a\x01x") == b"/a"


# ---------------------------------------------------------------- the catalogue

def test_names_sort_by_time_and_say_the_revision():
    name = backup.snapshot_name("prod", WHEN, 456)
    assert name == "prod-20260304T050607890123Z-rev456.db"
    assert backup.meta_name(name) == "prod-20260304T050607890123Z-rev456.json"
    assert backup.taken_at(name) == WHEN
    assert backup.taken_at("prod-notes.db") is None
    assert backup.taken_at(name + "\n") is None
    assert backup.snapshots_of("prod", [name + "\n", name]) == [name]


def test_pruning_keeps_the_newest_of_this_cluster_only():
    names = [backup.snapshot_name(c, WHEN + timedelta(minutes=i), i) for c in ("prod", "stage") for i in range(4)]
    names += [backup.meta_name(n) for n in names] + ["README"]
    assert backup.to_prune("prod", names, 2) == [
        "prod-20260304T050607890123Z-rev0.db", "prod-20260304T050607890123Z-rev0.json",
        "prod-20260304T050707890123Z-rev1.db", "prod-20260304T050707890123Z-rev1.json"]
    assert backup.to_prune("prod", names, 4) == []
    assert backup.newest("prod", names) == "prod-20260304T050907890123Z-rev3.db"


def test_a_backup_is_needed_without_one_or_when_the_newest_is_old_enough():
    name = backup.snapshot_name("prod", WHEN, 1)
    assert backup.needed(None, WHEN, 600)
    assert not backup.needed(name, WHEN + timedelta(seconds=599), 600)
    assert backup.needed(name, WHEN + timedelta(seconds=600), 600)
    assert backup.age(name, WHEN + timedelta(seconds=90)) == 90


def test_metadata_and_the_line_a_task_prints():
    facts = etcd_snapshot.Facts(456, 123, DIGEST, 40_960)
    meta = backup.metadata("prod", "f.db", facts, "10.0.0.1", WHEN, 0.3141, "abc123")
    assert meta == {"cluster": "prod", "file": "f.db", "revision": 456, "keys": 123, "size": 40_960,
                    "sha256": DIGEST, "member": "10.0.0.1", "taken": "2026-03-04T05:06:07.890123Z",
                    "seconds": 0.314, "release": "abc123"}
    assert backup.parse_meta(backup.meta_text(meta), "f.json") == meta
    assert backup.backup_line(meta, "/b/f.db") == "etcd backup: 123 keys, rev 456, 41 kB, 0.3 s -> /b/f.db"
    with pytest.raises(ValueError, match="f.json: missing release"):
        backup.parse_meta(json.dumps({k: v for k, v in meta.items() if k != "release"}), "f.json")


@pytest.mark.parametrize("size, text", [(10, "1 kB"), (24_608, "25 kB"), (999_499, "999 kB"), (3_210_000, "3.2 MB")])
def test_size_text(size, text):
    assert backup.size_text(size) == text


def test_the_backups_section_defaults_beside_the_secrets_folder(cluster):
    assert cluster.backups == replace(cluster.backups, keep=10, max_age=3600)
    assert cluster.backups.folder == cluster.secrets.parent / "etcd-backups" / "prod"


# ---------------------------------------------------------------- restore and recovery commands

def test_restore_command():
    assert cmd.restore_command("10.0.0.2", ["10.0.0.1", "10.0.0.2"], "air-prod-restored-X", "X") == (
        "systemctl stop etcd-member.service && rm -rf /var/lib/etcd/member.restoring && "
        "ETCDCTL_API=3 etcdctl snapshot restore /var/lib/etcd/air-restore.db --name 10.0.0.2 "
        "--initial-cluster 10.0.0.1=https://10.0.0.1:2380,10.0.0.2=https://10.0.0.2:2380 "
        "--initial-cluster-token air-prod-restored-X --initial-advertise-peer-urls https://10.0.0.2:2380 "
        "--data-dir /var/lib/etcd/member.restoring >/dev/null && "
        "{ [ ! -e /var/lib/etcd/member ] || mv /var/lib/etcd/member /var/lib/etcd/member.before-X; } && "
        "mv /var/lib/etcd/member.restoring /var/lib/etcd/member && chown -R etcd: /var/lib/etcd/member && "
        "chmod 0700 /var/lib/etcd/member && rm -f /var/lib/etcd/air-restore.db")


def test_force_new_cluster_is_for_one_start_only():
    assert cmd.force_new_cluster_dropin() == "[Service]\nEnvironment=ETCD_FORCE_NEW_CLUSTER=true\n"
    assert cmd.FORCE_DROPIN_PATH == "/etc/systemd/system/etcd-member.service.d/22-air-force-new-cluster.conf"
    assert cmd.without_force_command() == (
        "rm -f /etc/systemd/system/etcd-member.service.d/22-air-force-new-cluster.conf && "
        "systemctl daemon-reload && systemctl restart etcd-member.service")


# ---------------------------------------------------------------- quorum from the members' answers

def answer(address, healthy, leader="0", members=("10.0.0.1", "10.0.0.2", "10.0.0.3")):
    listed = tuple((m, str(i + 1), False, True) for i, m in enumerate(members))
    return Answer(address, None, healthy, {"leader": leader, "db_size": 24576}, listed)


def test_quorum_of_answers():
    answers = {"10.0.0.1": answer("10.0.0.1", True, "2"), "10.0.0.2": answer("10.0.0.2", True, "2"),
               "10.0.0.3": Answer("10.0.0.3", "no answer within 1.2 s")}
    found = etcd_members.quorum_of(answers)
    assert found == etcd_members.Quorum(("10.0.0.1", "10.0.0.2", "10.0.0.3"), ("10.0.0.1", "10.0.0.2"),
                                        ("10.0.0.1", "10.0.0.2"), "10.0.0.2")
    assert found.describe() == "quorum: 2 of 3 members answer"


def test_no_quorum_of_answers():
    answers = {"10.0.0.1": answer("10.0.0.1", False), "10.0.0.2": Answer("10.0.0.2", "cannot connect there"),
               "10.0.0.9": answer("10.0.0.9", False, members=("10.0.0.9",))}  # another cluster's: not counted
    found = etcd_members.quorum_of({k: v for k, v in answers.items() if k != "10.0.0.9"})
    assert not found.has_quorum and found.leader is None
    assert found.describe() == "no quorum: 1 of 3 members answer"


def test_within_reports_what_did_not_finish_in_time():
    started = time.monotonic()
    found = etcd_members.within(lambda s: time.sleep(s) or s, [0.0, 5.0], 0.3)
    assert time.monotonic() - started < 1.5
    assert found == {0.0: (0.0, None), 5.0: (None, "no answer within 0.3 s")}


def test_restore_and_recover_refuse_while_etcd_has_quorum(cluster, monkeypatch):
    monkeypatch.setattr(etcd_members, "ask_all", lambda ex, addresses, seconds=0, timeout=0: {
        a: answer(a, a != "10.0.0.3", "1") for a in addresses})
    with pytest.raises(PreflightError) as refused:
        etcd_members.refuse_with_quorum(FakeExecutor(cluster), cluster, "etcd.restore")
    assert str(refused.value) == ("etcd of prod still has quorum (2 of 3 members answer healthy): etcd.restore is "
                                  "for a cluster that lost it; nothing was changed")


def test_defrag_order_is_followers_then_the_leader():
    assert etcd_backup.defrag_order(["10.0.0.3", "10.0.0.1", "10.0.0.2"], "10.0.0.1") == \
        ["10.0.0.2", "10.0.0.3", "10.0.0.1"]
    assert etcd_backup.defrag_order(["10.0.0.2", "10.0.0.1"], None) == ["10.0.0.1", "10.0.0.2"]


# ---------------------------------------------------------------- taking backups (recording fakes)

@pytest.fixture
def s(cluster, tmp_path):
    folder = tmp_path / "backups" / "prod"
    short = replace(cluster, backups=replace(cluster.backups, folder=folder, keep=2, max_age=600))
    etcd = FakeEtcd(["10.0.0.1", "10.0.0.2", "10.0.0.3"])
    return SimpleNamespace(cluster=short, ex=FakeExecutor(short), etcd=etcd, via="10.0.0.1")


def test_a_backup_is_kept_private_with_its_record(s):
    meta, path = etcd_backup.take(s.etcd, s.cluster, "10.0.0.1")
    assert path.read_bytes() == SNAPSHOT.read_bytes()
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()} == \
        {path.name: 0o600, backup.meta_name(path.name): 0o600}
    record = json.loads(path.with_name(backup.meta_name(path.name)).read_text())
    assert record == meta
    assert (record["revision"], record["keys"], record["size"], record["member"], record["release"]) == \
        (10, 4, 20512, "10.0.0.1", None)


def test_a_snapshot_whose_count_etcd_does_not_confirm_is_not_kept(s):
    s.etcd.count_keys = lambda revision=0: 5
    with pytest.raises(RemoteError, match="it holds 4 keys at revision 10, but etcd counts 5 there; not kept"):
        etcd_backup.take(s.etcd, s.cluster, "10.0.0.1")
    assert not s.cluster.backups.folder.exists()


def test_before_a_change_one_backup_then_none_while_it_is_young(s, capsys):
    first = etcd_backup.before_change(s, "deploy")
    second = etcd_backup.before_change(s, "deploy")
    assert first is not None and second is None and s.etcd.snapshots == 1
    said = capsys.readouterr().err.splitlines()
    seconds = json.loads(first.with_suffix(".json").read_text())["seconds"]
    assert said[0] == f"etcd backup: 4 keys, rev 10, 21 kB, {seconds:.1f} s -> {first}"
    assert said[1].startswith("etcd backup: none taken, the newest is 0 s old (backups.max_age 600 s) -> ")


def test_only_the_newest_keep_remain(s):
    paths = [etcd_backup.take(s.etcd, s.cluster, "10.0.0.1")[1] for _ in range(3)]
    assert sorted(p.name for p in s.cluster.backups.folder.iterdir()) == sorted(
        n for p in paths[1:] for n in (p.name, backup.meta_name(p.name)))


def test_the_release_recorded_then_is_in_the_record(s):
    from tasks.model.release import Image, Release
    release = Release((Image("web", "1.0.0", "sha256:" + "a" * 64), Image("worker", "1.0.0", "sha256:" + "b" * 64)))
    s.etcd.put(state.release_key(s.cluster), state.release_record(release, outcome="succeeded"))
    meta, _ = etcd_backup.take(s.etcd, s.cluster, "10.0.0.1")
    assert meta["release"] == release.id


# ---------------------------------------------------------------- restore and recover, before anything changes

def test_a_missing_snapshot_file_is_one_error(tmp_path):
    with pytest.raises(ConfigError, match=f"--snapshot {tmp_path}/none.db: cannot read"):
        etcd_recovery.read_snapshot(tmp_path / "none.db")


def test_a_survivor_without_etcd_or_without_data_is_refused(cluster):
    with pytest.raises(PreflightError, match="has no etcd installed"):
        etcd_recovery.check_survivor(cluster, "10.0.0.1", {"etcd_configured": "no"}, None)
    with pytest.raises(PreflightError, match="has no etcd data left: give --snapshot FILE"):
        etcd_recovery.check_survivor(cluster, "10.0.0.1", {"etcd_configured": "yes", "etcd_data": "no"}, None)
    snap = etcd_recovery.read_snapshot(SNAPSHOT)
    etcd_recovery.check_survivor(cluster, "10.0.0.1", {"etcd_configured": "yes", "etcd_data": "no"}, snap)


def test_the_plans(cluster):
    snap = etcd_recovery.read_snapshot(SNAPSHOT)
    assert etcd_recovery.recover_plan(cluster, "10.0.0.1", ["10.0.0.2"], None) == [
        "etcd.recover: prod: 10.0.0.1 becomes a one-member etcd cluster from its own data (etcd's "
        "--force-new-cluster, for one start)",
        "  10.0.0.1: stop etcd, start it as a new one-member cluster, its drop-in and cloud config naming it "
        "alone; its containers keep serving",
        "  10.0.0.2: out of the balancer, wiped when it answers; `fab add-machine --cluster prod --via 10.0.0.1 "
        "--machine 10.0.0.2` brings it (or a replacement) back"]
    fresh = {"docker": "active", "etcd_unit": "yes", "etcd_configured": "no", "etcd_data": "no", "air_units": "0"}
    installed = {**fresh, "etcd_configured": "yes", "air_units": "2"}
    facts = {"10.0.0.1": installed, "10.0.0.2": installed, "10.0.0.3": fresh}
    lines = etcd_recovery.restore_plan(cluster, snap, facts, None)
    assert lines[0].endswith("(rev 10, 4 keys, release none recorded): a new etcd cluster of "
                             "10.0.0.1, 10.0.0.2, 10.0.0.3")
    assert lines[3].startswith("  10.0.0.3: freshly prepared: install release ?")
    with pytest.raises(PreflightError, match="10.0.0.3 freshly prepared but the snapshot records no release"):
        etcd_recovery.check_restorable(cluster, facts, None)


class ProbedMember:
    """A member as ``etcd_members.ask`` sees it through its tunnel: its own view (``leader``'s id)
    and the member list of ``machines``; a test's subclass answers its quorum read."""
    leader = "0"

    def __init__(self, address, machines):
        self.address, self.machines, self.auth_enabled = address, machines, True

    def member_status(self):
        return {"leader": self.leader, "db_size": 24576}

    def members(self):
        return [SimpleNamespace(id=str(i), name=a, peer_urls=(f"https://{a}:2380",), learner=False, started=True)
                for i, a in enumerate(self.machines)]


def probed_through(monkeypatch, member, unreachable=()):
    """``etcd_members``' tunnels give a ``member`` (a ProbedMember class) of each address, but none
    to those ``unreachable``."""
    from contextlib import contextmanager

    @contextmanager
    def tunnel(ex, address, timeout=5):
        if address in unreachable:
            raise RemoteError(f"etcd at {address}: cannot connect there")
        yield member(address, ex.cluster.machines)
    monkeypatch.setattr(etcd_members.etcd_api, "tunnel", tunnel)


def test_a_member_waiting_for_a_quorum_it_lacks_counts_as_answering_at_the_deadline(cluster, monkeypatch):
    class Member(ProbedMember):
        def healthy(self):
            time.sleep(3)  # a quorum read without quorum: no answer until its timeout
            return False

    probed_through(monkeypatch, Member, unreachable=["10.0.0.3"])
    answers = etcd_members.ask_all(FakeExecutor(cluster), cluster.machines, 0.5)
    assert [(a.address, a.answers, a.healthy) for a in answers.values()] == \
        [("10.0.0.1", True, False), ("10.0.0.2", True, False), ("10.0.0.3", False, False)]
    assert etcd_members.quorum_of(answers).describe() == "no quorum: 2 of 3 members answer"


@pytest.mark.parametrize("leader, healthy", [("1", True), ("0", False)])
def test_members_naming_a_leader_whose_quorum_reads_are_slow_are_asked_again_with_time(
        cluster, monkeypatch, leader, healthy):
    asked = []

    class Member(ProbedMember):
        def read_many(self, keys=(), prefixes=()):
            asked.append(self.address)
            if asked.count(self.address) == 1:  # a busy machine: the first read is late
                time.sleep(1)
            if self.leader == "0":
                raise RemoteError(f"etcd at {self.address}: get: context deadline exceeded")
            return {k: "r1" for k in keys}, {}
    Member.leader = leader
    probed_through(monkeypatch, Member, unreachable=["10.0.0.3"])
    started = time.monotonic()
    answers = etcd_members.ask_members(FakeExecutor(cluster), cluster.machines, 0.5, reads=["/air/prod/release"])
    assert [(a.address, a.answers, a.healthy) for a in answers.values()] == \
        [("10.0.0.1", True, healthy), ("10.0.0.2", True, healthy), ("10.0.0.3", False, False)]
    assert sorted(asked) == sorted(["10.0.0.1", "10.0.0.2"] * (2 if healthy else 1))  # asked again only when led
    assert etcd_members.led(answers, etcd_members.quorum_of(answers)) is healthy
    if not healthy:  # no leader named: no quorum, said at the first deadline without a second wait
        assert time.monotonic() - started < 0.9


def test_keys_asked_for_are_read_by_each_members_quorum_read_and_a_member_without_quorum_is_not_healthy(
        cluster, monkeypatch):
    class Member(ProbedMember):
        leader = "1"

        def healthy(self):
            raise AssertionError("the read of the keys is the quorum read")

        def read_many(self, keys=(), prefixes=()):
            if self.address == "10.0.0.3":  # cut off from the others: no quorum, no login
                raise RemoteError("etcd at 10.0.0.3: get: etcdserver: user name is empty")
            return {k: f"{k} at {self.address}" if k.endswith("release") else None for k in keys}, {}

    probed_through(monkeypatch, Member)
    answers = etcd_members.ask_all(FakeExecutor(cluster), cluster.machines, 2, reads=["/air/prod/release", "/air/prod/lock"])
    assert [(a.address, a.healthy, a.values, a.auth) for a in answers.values()] == [
        ("10.0.0.1", True, {"/air/prod/release": "/air/prod/release at 10.0.0.1", "/air/prod/lock": None}, True),
        ("10.0.0.2", True, {"/air/prod/release": "/air/prod/release at 10.0.0.2", "/air/prod/lock": None}, True),
        ("10.0.0.3", False, {}, None)]
    assert etcd_members.quorum_of(answers).describe() == "quorum: 3 of 3 members answer"
