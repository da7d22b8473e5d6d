"""tasks.net.etcd against a real etcd started here (the Debian etcd-server package), no SSH."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import re
import threading
import time
from pathlib import Path

import paramiko
import pytest
import requests
from types import SimpleNamespace

from tasks.model.errors import HealthError, LockedError, LostLock, RemoteError
from tasks.net.etcd import Etcd, Member, fenced_txn, tunnel

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ETCD = shutil.which("etcd")


def free_ports(count: int) -> list:
    sockets = []
    for _ in range(count):  # all held open together, so they differ
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory):
    if ETCD is None:
        pytest.skip("no etcd binary: apt-get install -y etcd-server etcd-client")
    base = tmp_path_factory.mktemp("etcd")
    client_port, peer_port = free_ports(2)
    client, peer = f"http://127.0.0.1:{client_port}", f"http://127.0.0.1:{peer_port}"
    log = open(base / "etcd.log", "wb")
    process = subprocess.Popen(
        [ETCD, "--name", "solo", "--data-dir", str(base / "data"),
         "--listen-client-urls", client, "--advertise-client-urls", client,
         "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
         "--initial-cluster", f"solo={peer}", "--initial-cluster-state", "new",
         "--logger", "zap", "--log-level", "warn", "--enable-v2"],
        stdout=log, stderr=subprocess.STDOUT)
    try:
        probe = Etcd("127.0.0.1", client_port, timeout=1)
        deadline = time.monotonic() + 10
        while not probe.healthy():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"etcd did not start: {(base / 'etcd.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield {"port": client_port, "peer_url": peer}
    finally:
        process.kill()
        process.wait()
        log.close()


@pytest.fixture
def etcd(etcd_server, request):
    client = Etcd("127.0.0.1", etcd_server["port"], timeout=3)
    prefix = f"/test/{request.node.name}/"
    client.delete_prefix(prefix)
    client.prefix = prefix  # each test's keys live under its own prefix
    yield client
    client.delete_prefix(prefix)


def test_keys_and_values(etcd):
    p = etcd.prefix
    assert etcd.get(p + "missing") is None
    etcd.put(p + "a", "1")
    etcd.put(p + "b/c", "ünïcode")
    etcd.put(p + "b/d", "")
    etcd.put(p.rstrip("/") + "x", "outside the prefix")
    assert etcd.get(p + "a") == "1"
    assert etcd.get(p + "b/c") == "ünïcode"
    assert etcd.get(p + "b/d") == ""
    assert etcd.get_prefix(p + "b/") == {p + "b/c": "ünïcode", p + "b/d": ""}
    assert etcd.get_prefix(p) == {p + "a": "1", p + "b/c": "ünïcode", p + "b/d": ""}
    etcd.delete(p + "a")
    assert etcd.get(p + "a") is None
    etcd.delete_prefix(p + "b/")
    assert etcd.get_prefix(p) == {}
    assert etcd.get(p.rstrip("/") + "x") == "outside the prefix"
    etcd.delete(p.rstrip("/") + "x")
    with pytest.raises(ValueError):
        etcd.delete_prefix("")


def test_keys_and_prefixes_read_in_one_request(etcd):
    p = etcd.prefix
    etcd.put(p + "a", "1")
    etcd.put(p + "empty", "")
    etcd.put(p + "h/1", "one")
    etcd.put(p + "h/2", "twö")
    etcd.put(p + "hx", "beside the prefix")
    asked = []
    etcd._client.session.hooks["response"].append(lambda response, *a, **k: asked.append(response.request.path_url))
    values, found = etcd.read_many([p + "a", p + "missing", p + "empty"], [p + "h/", p + "none/"])
    assert values == {p + "a": "1", p + "missing": None, p + "empty": ""}
    assert found == {p + "h/": {p + "h/1": "one", p + "h/2": "twö"}, p + "none/": {}}
    assert asked == ["/v3/kv/txn"]


def test_lock_is_exclusive_and_names_its_holder(etcd):
    key = etcd.prefix + "lock"
    alice = {"who": "alice@laptop", "since": "2024-05-01T10:00:00Z", "why": "deploy web 1.2"}
    lock = etcd.acquire(key, alice, ttl=5)
    try:
        assert lock.held
        assert etcd.holder(key) == alice
        with pytest.raises(LockedError) as refused:
            etcd.acquire(key, {"who": "bob"}, ttl=5)
        message = str(refused.value)
        assert "who=alice@laptop" in message and "since=2024-05-01T10:00:00Z" in message
        assert "why=deploy web 1.2" in message and "\n" not in message
        assert etcd.holder(key) == alice  # the refused attempt changed nothing
    finally:
        lock.release()
    assert not lock.held
    assert etcd.holder(key) is None
    lock.release()  # twice is harmless
    with etcd.acquire(key, {"who": "bob"}, ttl=5):
        assert etcd.holder(key) == {"who": "bob"}
    assert etcd.holder(key) is None


def test_lock_outlives_its_ttl_while_kept_alive(etcd):
    key = etcd.prefix + "lock"
    with etcd.acquire(key, {"who": "alice"}, ttl=2) as lock:
        time.sleep(3)
        assert lock.held and etcd.holder(key) == {"who": "alice"}


def test_lock_of_a_killed_process_expires_after_its_ttl(etcd):
    key = etcd.prefix + "lock"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from tasks.net.etcd import Etcd\n"
         "Etcd('127.0.0.1', int(sys.argv[1])).acquire(sys.argv[2], {'who': 'doomed'}, ttl=2)\n"
         "print('held', flush=True)\n"
         "time.sleep(60)\n",
         str(etcd.port), key],
        cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # SIGKILL: no release, no more keepalives
        holder.wait()
    assert etcd.holder(key) == {"who": "doomed"}
    killed = time.monotonic()
    while etcd.holder(key) is not None:
        assert time.monotonic() - killed < 2 + 2, "the lock outlived its ttl"
        time.sleep(0.1)
    etcd.acquire(key, {"who": "next"}, ttl=2).release()


def test_force_release_takes_the_lock_from_a_live_holder(etcd):
    key = etcd.prefix + "lock"
    lock = etcd.acquire(key, {"who": "alice"}, ttl=2)
    assert etcd.force_release(key) == {"who": "alice"}
    assert etcd.holder(key) is None
    assert etcd.force_release(key) is None
    time.sleep(1)  # one keepalive tick sees the revoked lease
    assert not lock.held
    lock.release()  # the lease is gone already: still fine


# ---------------------------------------------------------------- the fence

def fenced_client(etcd, lock) -> Etcd:
    client = Etcd("127.0.0.1", etcd.port, timeout=3)
    client.fence = (lock.key, lock.revision)
    return client


def test_a_fenced_client_writes_while_its_lock_stands(etcd):
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=5) as lock:
        assert lock.revision > 0
        client = fenced_client(etcd, lock)
        client.put(etcd.prefix + "release", "r1")
        client.delete(etcd.prefix + "release")
        client.put(etcd.prefix + "h/1", "x")
        client.delete_prefix(etcd.prefix + "h/")
        lock.confirm()
    assert etcd.get_prefix(etcd.prefix) == {}


def test_a_fenced_write_after_the_key_was_deleted_is_refused_and_writes_nothing(etcd):
    key = etcd.prefix + "lock"
    with etcd.acquire(key, {"who": "alice"}, ttl=5) as lock:
        client = fenced_client(etcd, lock)
        etcd.delete(key)  # etcdctl del behind the holder's back
        with pytest.raises(LostLock, match="is no longer ours: put .*release was not written"):
            client.put(etcd.prefix + "release", "r2")
        assert etcd.get(etcd.prefix + "release") is None
        with pytest.raises(LostLock, match="the key is gone"):
            lock.confirm()


def test_write_many_puts_and_deletes_in_one_transaction_fenced_or_not(etcd):
    p = etcd.prefix
    etcd.put(p + "old", "x")
    etcd.write_many({p + "a": "1", p + "b": "2"}, [p + "old"])
    assert etcd.get_prefix(p) == {p + "a": "1", p + "b": "2"}
    key = p + "lock"
    with etcd.acquire(key, {"who": "alice"}, ttl=5) as lock:
        client = fenced_client(etcd, lock)
        client.write_many({p + "a": "3"}, [p + "b"])
        assert etcd.get_prefix(p + "a") == {p + "a": "3"} and etcd.get(p + "b") is None
        etcd.delete(key)
        with pytest.raises(LostLock, match="is no longer ours: write 1 and delete 1 key"):
            client.write_many({p + "a": "4"}, [p + "c"])
    assert etcd.get(p + "a") == "3"


def test_the_v2_store_is_a_store_of_its_own(etcd):
    p = etcd.prefix
    assert etcd.v2_get_prefix(p) == {}
    etcd.v2_put(p + "site/name", "Air & more")
    etcd.v2_put(p + "db/port", "5432")
    assert etcd.v2_get_prefix(p) == {p + "site/name": "Air & more", p + "db/port": "5432"}
    assert etcd.get(p + "site/name") is None  # nothing of v2 shows in v3
    etcd.v2_delete(p + "site/name")
    etcd.v2_delete(p + "never/there")  # already gone: fine
    assert etcd.v2_get_prefix(p) == {p + "db/port": "5432"}
    etcd.v2_delete(p + "db/port")


def test_a_lock_taken_over_by_another_holder_fences_the_first(etcd):
    key = etcd.prefix + "lock"
    first = etcd.acquire(key, {"who": "alice"}, ttl=5)
    try:
        etcd.force_release(key)
        with etcd.acquire(key, {"who": "bob", "why": "deploy"}, ttl=5):
            with pytest.raises(LostLock, match="held by who=bob, why=deploy"):
                first.confirm()
            with pytest.raises(LostLock):
                fenced_client(etcd, first).put(etcd.prefix + "release", "alice's")
            assert etcd.get(etcd.prefix + "release") is None
    finally:
        first.release()


def test_a_lease_not_renewed_for_most_of_its_ttl_is_taken_for_lost(etcd, monkeypatch):
    # A process stopped (SIGSTOP, a sleeping laptop) cannot know whether its lease outlived the
    # pause; the clock it reads keeps counting through both.
    from tasks.net import etcd as etcd_module
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=6) as lock:
        later = etcd_module.boottime() + 5
        monkeypatch.setattr(etcd_module, "boottime", lambda: later)
        with pytest.raises(LostLock, match="not renewed for 5 s"):
            lock.confirm()


def test_a_confirmation_younger_than_fresh_stands_for_one_and_an_older_one_is_read_again(etcd, monkeypatch):
    from tasks.net import etcd as etcd_module
    now = [etcd_module.boottime()]
    monkeypatch.setattr(etcd_module, "boottime", lambda: now[0])  # a clock the test moves
    key = etcd.prefix + "lock"
    with etcd.acquire(key, {"who": "alice"}, ttl=6) as lock:
        reads = []
        lock._checker.session.hooks["response"].append(lambda response, *a, **k: reads.append(response))
        lock.confirm(fresh=1)
        assert reads == []  # the lock was taken a moment ago: that stands for a confirmation
        now[0] += 1
        lock.confirm(fresh=1)
        now[0] += 0.04
        lock.confirm(fresh=1)
        assert len(reads) == 1  # the third stood on the second (too young to send one ahead)
        etcd.delete(key)
        lock.confirm(fresh=1)  # within the second: the key's loss is not seen yet
        now[0] += 0.96
        with pytest.raises(LostLock, match="the key is gone"):
            lock.confirm(fresh=1)  # a second old: read again
        assert len(reads) == 2
    with etcd.acquire(key, {"who": "alice"}, ttl=6) as lock:
        lock.confirm(fresh=1)
        etcd.delete(key)
        with pytest.raises(LostLock, match="the key is gone"):
            lock.confirm()  # no freshness asked: always read


def test_a_confirmation_found_fresh_sends_the_next_read_ahead(etcd, monkeypatch):
    from tasks.net import etcd as etcd_module
    now = [etcd_module.boottime()]
    monkeypatch.setattr(etcd_module, "boottime", lambda: now[0])
    key = etcd.prefix + "lock"
    with etcd.acquire(key, {"who": "alice"}, ttl=6) as lock:
        reads = []
        lock._checker.session.hooks["response"].append(lambda response, *a, **k: reads.append(response))
        held = threading.Event()  # cleared: a read sent ahead waits (so what was read is known when asserted)
        held.set()
        real_get = lock._checker.get

        def gated(*args, **kwargs):
            held.wait(5)
            return real_get(*args, **kwargs)
        lock._checker.get = gated
        now[0] += 0.6
        lock.confirm(fresh=1)  # the taking stands for it; the next read goes out now
        lock._ahead.join(5)
        assert len(reads) == 1 and lock._confirmed == now[0]
        now[0] += 0.9  # 1.5 s after the taking, 0.9 s after the read sent ahead
        held.clear()
        lock.confirm(fresh=1)
        assert len(reads) == 1  # it stood without a read of its own; the one it sent ahead is held
        held.set()
        lock._ahead.join(5)
        assert len(reads) == 2  # one more ahead
        etcd.delete(key)
        now[0] += 0.6
        held.clear()  # the read ahead waits until this confirmation has returned (on a busy host it could be first)
        lock.confirm(fresh=1)  # fresh: this one sends a read ahead, which finds the key gone
        held.set()
        lock._ahead.join(5)
        with pytest.raises(LostLock, match="the key is gone"):
            lock.confirm(fresh=1)  # no read of its own: the one ahead found it
        assert len(reads) == 3


def test_a_confirmation_that_stands_does_not_wait_for_the_read_ahead(etcd, monkeypatch):
    from tasks.net import etcd as etcd_module
    now = [etcd_module.boottime()]
    monkeypatch.setattr(etcd_module, "boottime", lambda: now[0])
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=6) as lock:
        real_get = lock._checker.get

        def slow(*args, **kwargs):
            time.sleep(1)
            return real_get(*args, **kwargs)
        lock._checker.get = slow
        now[0] += 0.2
        sent = now[0]
        lock.confirm(fresh=1)  # sends the read ahead
        started = time.monotonic()
        for _ in range(3):  # machines confirming side by side while it is under way
            lock.confirm(fresh=1)
        assert time.monotonic() - started < 0.5 and lock._ahead.is_alive()
        now[0] += 0.8  # the taking's confirmation is a second old: this one waits for the read ahead
        lock.confirm(fresh=1)
        assert not lock._ahead.is_alive() and lock._confirmed == sent  # the read ahead's time


def test_a_fenced_write_that_applied_stands_for_a_confirmation(etcd, monkeypatch):
    from tasks.net import etcd as etcd_module
    now = [etcd_module.boottime()]
    monkeypatch.setattr(etcd_module, "boottime", lambda: now[0])
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=6) as lock:
        etcd.fence, etcd.fence_held = lock.fence, lock.confirmed_by
        try:
            reads = []
            lock._checker.session.hooks["response"].append(lambda response, *a, **k: reads.append(response))
            now[0] += 2
            written = now[0]
            etcd.write_many({etcd.prefix + "release": "r2"})
            now[0] += 0.04
            lock.confirm(fresh=1)
            assert reads == [] and lock._confirmed == written
            etcd.fence = (lock.key, lock.revision + 1)  # a fence that no longer stands: nothing confirmed
            now[0] += 0.01
            with pytest.raises(LostLock):
                etcd.put(etcd.prefix + "release", "r3")
            assert lock._confirmed == written
        finally:
            etcd.fence = etcd.fence_held = None


def test_a_read_ahead_left_unanswered_changes_nothing_and_the_next_confirmation_reads(etcd, monkeypatch):
    from tasks.net import etcd as etcd_module
    now = [etcd_module.boottime()]
    monkeypatch.setattr(etcd_module, "boottime", lambda: now[0])
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=6) as lock:
        taken = lock._confirmed
        real_get, tries = lock._checker.get, []

        def unanswered(*args, **kwargs):
            tries.append(args)
            raise requests.ConnectionError("connection refused")
        lock._checker.get = unanswered
        now[0] += 0.6
        lock.confirm(fresh=1)
        lock._ahead.join(5)
        assert len(tries) == 1 and lock.held and lock._confirmed == taken  # tried once, nothing decided
        lock._checker.get = real_get
        now[0] += 0.4
        lock.confirm(fresh=1)  # a second after the taking: read now
        assert lock._confirmed == now[0]


def test_a_stuck_task_stops_renewing_and_its_lock_expires(etcd):
    key = etcd.prefix + "lock"
    lock = etcd.acquire(key, {"who": "hung"}, ttl=2)
    try:
        lock.stuck = lambda: "10.0.0.1: pull release r1"
        deadline = time.monotonic() + 6
        while etcd.holder(key) is not None:
            assert time.monotonic() < deadline, "a stuck task's lock did not expire"
            time.sleep(0.2)
        with pytest.raises(LostLock, match="stopped renewing it: 10.0.0.1: pull release r1 is past its deadline"):
            lock.confirm()
    finally:
        lock.release()


def test_membership_calls_and_v2_writes_of_a_fenced_client_go_while_its_lock_stands(etcd):
    p = etcd.prefix
    never = f"http://127.0.0.1:{free_ports(1)[0]}"
    with etcd.acquire(p + "lock", {"who": "alice"}, ttl=5) as lock:
        client = fenced_client(etcd, lock)
        learner = client.add_member(never, learner=True)
        try:
            client.update_member(learner.id, never.replace("127.0.0.1", "localhost"))
            client.v2_put(p + "site/name", "Air")
            assert etcd.v2_get_prefix(p) == {p + "site/name": "Air"}
            client.v2_delete(p + "site/name")
        finally:
            client.remove_member(learner.id)
        assert [m.name for m in etcd.members()] == ["solo"] and etcd.v2_get_prefix(p) == {}


def test_membership_calls_and_v2_writes_after_the_lock_was_taken_away_are_refused_and_do_nothing(etcd):
    p = etcd.prefix
    [solo] = etcd.members()
    never = f"http://127.0.0.1:{free_ports(1)[0]}"
    learner = etcd.add_member(never, learner=True)  # unfenced: one there to promote, update, remove
    etcd.v2_put(p + "kept", "v")
    try:
        with etcd.acquire(p + "lock", {"who": "alice"}, ttl=5) as lock:
            client = fenced_client(etcd, lock)
            etcd.force_release(p + "lock")  # etcdctl del behind the holder's back
            calls = {"add voting member": lambda: client.add_member(never.replace("127.0.0.1", "localhost"), False),
                     f"promote {learner.id}": lambda: client.promote(learner.id, timeout=1),
                     f"update member {learner.id}": lambda: client.update_member(learner.id, never + "0"),
                     f"remove member {learner.id}": lambda: client.remove_member(learner.id),
                     f"move leadership to {solo.id}": lambda: client.move_leader(solo.id),
                     f"put {p}new (v2)": lambda: client.v2_put(p + "new", "x"),
                     f"delete {p}kept (v2)": lambda: client.v2_delete(p + "kept")}
            for what, call in calls.items():
                with pytest.raises(LostLock, match=f"lock is no longer ours: {re.escape(what)}.* was not done"):
                    call()
        # Nothing added, promoted, updated or removed.
        assert sorted(etcd.members(), key=lambda m: m.id) == sorted([solo, learner], key=lambda m: m.id)
        assert etcd.v2_get_prefix(p) == {p + "kept": "v"}
    finally:
        etcd.remove_member(learner.id)
        etcd.v2_delete(p + "kept")


def test_a_tunnel_opened_by_a_task_holding_the_lock_is_fenced_by_it(etcd):
    ex = FakeTunnelExecutor(FakeConnection(etcd.port))
    with etcd.acquire(etcd.prefix + "lock", {"who": "alice"}, ttl=5) as lock:
        ex.fence = lock
        with tunnel(ex, "node1") as at_leader:  # as membership.promote asks the leader through its own tunnel
            assert at_leader.fence == (lock.key, lock.revision)
            etcd.delete(lock.key)
            with pytest.raises(LostLock, match="was not done"):
                at_leader.add_member(f"http://127.0.0.1:{free_ports(1)[0]}")
    assert [m.name for m in etcd.members()] == ["solo"]


def test_fenced_txn():
    assert fenced_txn("/air/c/lock", 42, {"request_put": {"key": "a", "value": "b"}}) == {
        "compare": [{"key": "L2Fpci9jL2xvY2s=", "result": "EQUAL", "target": "CREATE", "create_revision": 42}],
        "success": [{"request_put": {"key": "a", "value": "b"}}], "failure": []}
    assert fenced_txn("/air/c/lock", 42)["success"] == []  # the comparison alone: a confirmation


def test_members_of_a_one_member_cluster(etcd, etcd_server):
    [member] = etcd.members()
    assert isinstance(member, Member)
    assert member.name == "solo" and member.started and not member.learner
    assert member.peer_urls == (etcd_server["peer_url"],)
    assert member.client_urls == (f"http://127.0.0.1:{etcd.port}",)
    assert isinstance(member.id, str) and member.id.isdigit()
    assert etcd.healthy()


def test_a_learner_that_never_starts_can_be_removed(etcd):
    never = f"http://127.0.0.1:{free_ports(1)[0]}"
    learner = etcd.add_member(never, learner=True)
    try:
        assert learner.learner and not learner.started and learner.peer_urls == (never,)
        listed = {m.id: m for m in etcd.members()}
        assert len(listed) == 2 and listed[learner.id] == learner
        assert etcd.healthy()  # a learner does not count for quorum
        with pytest.raises(HealthError, match="did not catch up"):
            etcd.promote(learner.id, timeout=1, interval=0.3)
    finally:
        etcd.remove_member(learner.id)
    assert [m.name for m in etcd.members()] == ["solo"]
    assert etcd.healthy()
    etcd.remove_member(learner.id)  # gone already (a retried removal): nothing to do, no error
    assert [m.name for m in etcd.members()] == ["solo"]


def test_promoting_a_voting_member_changes_nothing(etcd):
    [member] = etcd.members()
    etcd.promote(member.id, timeout=1)
    assert etcd.members() == [member]


def test_unreachable_etcd_is_one_line_remote_error():
    [port] = free_ports(1)  # nothing listens there
    etcd = Etcd("127.0.0.1", port, timeout=1)
    with pytest.raises(RemoteError) as failed:
        etcd.get("/x")
    assert str(failed.value) == f"etcd at 127.0.0.1:{port}: get /x: connection refused"
    assert not etcd.healthy()


def test_silent_etcd_times_out_as_remote_error(monkeypatch):
    # Unanswered calls are retried for RETRY_FOR s (15) before they fail: 2 s of retries end the same way.
    monkeypatch.setattr("tasks.net.etcd.RETRY_FOR", 2)
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        with pytest.raises(RemoteError) as failed:
            Etcd("127.0.0.1", port, timeout=0.5).put("/x", "1")
    assert str(failed.value) == f"etcd at 127.0.0.1:{port}: put /x: no answer within 0.5 s"


def test_an_etcd_error_is_reported_with_etcds_message(etcd):
    with pytest.raises(RemoteError) as failed:
        etcd.add_member("not a url", learner=True)
    assert str(failed.value).startswith(f"etcd at 127.0.0.1:{etcd.port}: add learner not a url: ")
    assert "URL" in str(failed.value) or "url" in str(failed.value)


class FakeTunnelExecutor:
    """Stands in for the executor: its one connection is a FakeConnection."""

    def __init__(self, connection):
        from tasks.net.trips import RoundTrips
        self.connection = connection
        self.cluster = SimpleNamespace(etcd_auth=False, secrets="/nonexistent")  # etcd open: no login
        self.trips = RoundTrips()
        self.fence = None  # the task's lock, once it holds one

    def reachable(self, host):
        return None

    def conn(self, host):
        return self.connection


class FakeConnection:
    """Stands in for a Fabric connection: each "SSH channel" is a TCP connection to the fake etcd."""

    def __init__(self, target_port: int):
        self.host, self.target_port, self.channels = "node1", target_port, []
        self.refuse = False  # the member stopped listening

    def open(self):
        pass

    @property
    def transport(self):
        return self

    def open_channel(self, kind, destination, origin, timeout=None):
        if destination != ("127.0.0.1", 2379) or self.refuse:
            raise paramiko.ChannelException(2, "Connect failed")
        self.channels.append((kind, destination))
        return socket.create_connection(("127.0.0.1", self.target_port), timeout=timeout)

    def forward_local(self, *args, **kwargs):
        raise AssertionError("the tunnel must not listen on a local port")


def _listening_ports() -> set:
    """The local TCP ports this process listens on, from /proc (Linux): its sockets in LISTEN state
    (other processes, such as the other test workers' servers, open and close theirs meanwhile)."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if target.startswith("socket:["):
            ours.add(target[len("socket:["):-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and fields[9] in ours:
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


def test_tunnel_reaches_the_members_loopback_client_port_over_channels_only(etcd):
    conn = FakeConnection(etcd.port)
    before = _listening_ports()
    with tunnel(FakeTunnelExecutor(conn), "node1") as remote:
        remote.put(etcd.prefix + "k", "through the tunnel")
        assert remote.get(etcd.prefix + "k") == "through the tunnel"
        assert "node1" in repr(remote)
        assert _listening_ports() == before  # nothing of ours listens, so no local user can use it
    # The first channel checks that etcd listens there and carries the client's first connection
    # (kept alive for the next requests): one channel in all.
    assert conn.channels == [("direct-tcpip", ("127.0.0.1", 2379))]


def test_the_channels_asked_for_are_opened_at_once_and_serve_requests_side_by_side(etcd):
    conn = FakeConnection(etcd.port)
    with tunnel(FakeTunnelExecutor(conn), "node1", channels=3) as remote:
        assert len(conn.channels) == 3  # before anything is sent
        remote.members_ahead()  # its own connection: one of those channels
        assert remote.healthy()
        remote.members()
    assert len(conn.channels) == 3


def test_channels_refused_together_say_that_nothing_listens_there(etcd):
    import threading

    class Refusing(FakeConnection):
        """paramiko keeps one refusal per connection: the channel that misses it only says it did not open."""
        def __init__(self, port):
            super().__init__(port)
            self.calls, self.lock = 0, threading.Lock()

        def open_channel(self, kind, destination, origin, timeout=None):
            with self.lock:
                self.calls += 1
                first = self.calls == 1
            raise paramiko.SSHException("Unable to open channel.") if first else paramiko.ChannelException(2, "Connect failed")

    with pytest.raises(RemoteError) as failed:
        with tunnel(FakeTunnelExecutor(Refusing(etcd.port)), "node1", channels=3):
            pass
    assert str(failed.value) == ("etcd at node1 (SSH tunnel to its 127.0.0.1:2379): cannot connect there "
                                 "(Connect failed): is etcd running?")


@pytest.mark.parametrize("asked_for", ["members", "status"])
def test_what_is_asked_ahead_answers_once_and_not_after_a_change(etcd, asked_for):
    """The member list and the member's status (its leader) asked ahead, on a connection of their own."""
    asked = []
    real = getattr(etcd, f"_{asked_for}_of")
    setattr(etcd, f"_{asked_for}_of", lambda client: asked.append(client) or real(client))
    read, ahead = getattr(etcd, asked_for), getattr(etcd, f"{asked_for}_ahead")
    ahead()
    first = read()
    assert len(asked) == 1 and asked[0] is not etcd._client  # the one asked ahead, on its own connection
    assert first and read() == first and asked[-1] is etcd._client  # used once: asked again
    ahead()
    etcd.confirm_fence("a change")  # unfenced: nothing sent, but the members or leader may change now
    read()
    assert len(asked) == 4 and asked[-1] is etcd._client


def test_a_single_member_leads(etcd):
    status = etcd.status()
    assert status["leader"] and status["member"] == status["leader"]


def test_health_is_the_members_own_word_then_a_quorum_read_when_it_says_no(etcd, monkeypatch):
    asked = []
    get = etcd._client.session.get
    monkeypatch.setattr(etcd._client.session, "get", lambda url, **kw: asked.append(url) or get(url, **kw))
    assert etcd.healthy() and [u.rsplit("/", 1)[-1] for u in asked] == ["health"]  # etcd's /health: one request
    sick = SimpleNamespace(status_code=503, json=lambda: {"health": "false"})
    monkeypatch.setattr(etcd._client.session, "get", lambda url, **kw: sick)
    assert etcd.healthy()  # a member slow to answer its own check: the quorum read decides


def test_a_lock_taken_with_reads_reads_at_its_revision(etcd):
    p = etcd.prefix
    etcd.put(p + "record", "r1")
    etcd.put(p + "settings/a", "1")
    etcd.grant_ahead(5)
    lock = etcd.acquire(p + "lock", {"who": "me"}, 5, reads=([p + "record", p + "absent"], [p + "settings/"]))
    try:
        assert lock.take_read() == ({p + "record": "r1", p + "absent": None}, {p + "settings/": {p + "settings/a": "1"}})
        assert etcd._lease_ahead is None
    finally:
        lock.release()
    with etcd.acquire(p + "lock", {"who": "me"}, 5) as plain:
        assert plain.take_read() is None  # nothing asked, nothing read


def test_every_request_through_the_tunnel_is_a_round_trip_to_its_host(etcd):
    ex = FakeTunnelExecutor(FakeConnection(etcd.port))
    with tunnel(ex, "node1") as remote:
        remote.put(etcd.prefix + "k", "v")
        remote.get(etcd.prefix + "k")
        remote.get(etcd.prefix + "absent")
    assert ex.trips.summary() == {"hosts": {"node1": {"etcd": 3}}, "total": 3}


def test_a_channel_that_cannot_open_later_is_one_error_line(etcd):
    conn = FakeConnection(etcd.port)
    with tunnel(FakeTunnelExecutor(conn), "node1") as remote:
        remote.get(etcd.prefix + "k")  # over the channel opened first
        remote.drop_connections()
        conn.refuse = True
        with pytest.raises(RemoteError) as failed:
            remote.get(etcd.prefix + "k")
    message = str(failed.value)
    assert message.startswith("etcd at node1 (SSH tunnel to its 127.0.0.1:2379): get ") and "\n" not in message
    assert "the SSH channel to node1 (SSH tunnel to its 127.0.0.1:2379) failed (Connect failed)" in message


class TwoHosts(FakeTunnelExecutor):
    """Two members' hosts, each its own connection."""

    def __init__(self, connections: dict):
        super().__init__(None)
        self.connections = connections

    def conn(self, host):
        return self.connections[host]


def test_a_tunnel_moved_to_another_member_goes_on_there_when_the_first_goes_down(etcd):
    first, second = FakeConnection(etcd.port), FakeConnection(etcd.port)
    with tunnel(TwoHosts({"node1": first, "node2": second}), "node1") as remote:
        remote.put(etcd.prefix + "k", "before")
        remote.move_to("node2")
        first.refuse = True  # node1 reboots
        assert remote.get(etcd.prefix + "k") == "before"
        remote.put(etcd.prefix + "k", "after")
        assert "node2" in repr(remote)
    assert len(second.channels) >= 2  # the check that etcd listens there, then the requests


def test_a_tunnel_is_not_moved_to_a_member_it_cannot_reach(etcd):
    first, second = FakeConnection(etcd.port), FakeConnection(etcd.port)
    second.refuse = True
    with tunnel(TwoHosts({"node1": first, "node2": second}), "node1") as remote:
        with pytest.raises(RemoteError) as refused:
            remote.move_to("node2")
        assert remote.get(etcd.prefix + "k") is None  # still through node1
    assert str(refused.value) == ("etcd at node2 (SSH tunnel to its 127.0.0.1:2379): cannot connect there "
                                  "(Connect failed): is etcd running?")


def test_tunnel_to_a_port_where_nothing_listens_fails_at_once(etcd):
    with pytest.raises(RemoteError) as failed:
        with tunnel(FakeTunnelExecutor(FakeConnection(etcd.port)), "node1", remote_port=2380):
            pass
    assert str(failed.value) == ("etcd at node1 (SSH tunnel to its 127.0.0.1:2380): "
                                 "cannot connect there (Connect failed): is etcd running?")


@pytest.mark.skip(reason="needs an SSH server: covered by the integration tests")
def test_tunnel_over_real_ssh():
    pass


def test_a_request_to_etcd_goes_out_in_one_write_head_and_body():
    """Through the tunnel a body written after its head waits 40 ms for a delayed ACK on the machine."""
    from tasks.net.http import OneWriteConnection
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        connection = OneWriteConnection("127.0.0.1", server.getsockname()[1])
        connection.connect()
        writes: list = []
        real = connection.sock

        class Recording:
            def sendall(self, data):
                writes.append(bytes(data))
                return real.sendall(data)

            def __getattr__(self, name):
                return getattr(real, name)
        connection.sock = Recording()
        connection.request("POST", "/v3/kv/range", body=b'{"key": "eA=="}', headers={"Content-Type": "application/json"})
        connection.close()
    assert len(writes) == 1
    assert writes[0].startswith(b"POST /v3/kv/range HTTP/1.1\r\n") and writes[0].endswith(b'\r\n\r\n{"key": "eA=="}')


def test_connections_through_the_tunnel_also_write_each_request_in_one_piece(etcd):
    from tasks.net.http import OneWriteConnection
    with tunnel(FakeTunnelExecutor(FakeConnection(etcd.port)), "node1") as remote:
        url = remote._client.get_url("/kv/range")
        pool = remote._client.session.get_adapter(url).poolmanager.connection_from_url(url)
        assert issubclass(pool.ConnectionCls, OneWriteConnection)
        assert remote.get(etcd.prefix + "absent") is None
