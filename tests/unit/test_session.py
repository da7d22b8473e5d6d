"""tasks.net.session: the interrupts a task that changes things answers in order."""
import os
import signal
import threading
from types import SimpleNamespace

import pytest

from cloudconfig import RELEASE_FILE
from tasks.net import session


@pytest.mark.parametrize("sig", session.STOPPING)
def test_the_first_interrupt_asks_for_an_orderly_stop_and_the_handlers_go_back_after(sig, capsys):
    s = SimpleNamespace(ex=SimpleNamespace(interrupted=threading.Event()))
    before = signal.getsignal(sig)
    with session._interrupts(s):
        os.kill(os.getpid(), sig)  # delivered to the main thread before kill returns to Python code
        assert s.ex.interrupted.is_set()
    assert signal.getsignal(sig) == before
    assert "interrupt: finishing the step in hand and putting its machine back" in capsys.readouterr().err



class _NoEtcd:
    """A session whose etcd does not answer; its machines answer ``releases`` (address -> the release
    file's content, or a RemoteError for one that does not answer)."""

    def __init__(self, releases):
        from tasks.model.errors import RemoteError
        from tasks.net.executor import parallel
        self.cluster = SimpleNamespace(name="prod", machines=list(releases))
        self.locked = None
        self.commands = []

        def read(address, command, what=None):
            self.commands.append((address, command))
            if isinstance(releases[address], Exception):
                raise releases[address]
            return SimpleNamespace(stdout=releases[address])
        self.ex = SimpleNamespace(read=read, parallel=lambda work, items: parallel(work, items))
        self.RemoteError = RemoteError

    def connect_etcd(self, via=None, locking=False):
        raise self.RemoteError("no healthy etcd member reachable: 10.0.0.1: etcd there has no quorum")

    def take_lock(self, why, wait=False):
        self.locked = why


def test_without_etcd_a_cluster_never_installed_goes_on_without_the_lock():
    from tasks.model.errors import RemoteError
    s = _NoEtcd({"10.0.0.1": "", "10.0.0.2": RemoteError("10.0.0.2: cannot reach over SSH (refused)")})
    session.optional_lock(s, "push")
    assert s.locked is None and sorted(a for a, _ in s.commands) == ["10.0.0.1", "10.0.0.2"]
    assert {command for _, command in s.commands} == {f"cat {RELEASE_FILE} 2>/dev/null || true"}


def test_without_etcd_an_installed_cluster_refuses_unless_no_lock():
    from tasks.model.errors import PreflightError
    s = _NoEtcd({"10.0.0.1": "", "10.0.0.2": "abc123def456\n"})
    with pytest.raises(PreflightError) as refused:
        session.optional_lock(s, "build master")
    assert str(refused.value).startswith("build master: prod is installed (10.0.0.2 runs release abc123def456) but "
                                         "its etcd does not answer, so the cluster's lock cannot be taken: nothing "
                                         "was done (no healthy etcd member reachable")
    forced = _NoEtcd({"10.0.0.1": "abc123def456\n"})
    session.optional_lock(forced, "push", no_lock=True)
    assert forced.locked is None and forced.commands == []  # not even asked: the operator said so


@pytest.mark.parametrize("given", [True, False])
def test_a_session_closes_the_executor_it_made_and_leaves_one_it_was_given_open(given, monkeypatch):
    closed = []

    class Executor:
        def __init__(self, cluster):
            self.cluster = cluster

        def close(self):
            closed.append(self)
    monkeypatch.setattr(session, "Executor", Executor)
    cluster = SimpleNamespace(name="prod", machines=["10.0.0.1"])
    kept = Executor(cluster) if given else None
    s = session.Session(cluster, kept)
    s.close()
    assert (s.ex is kept, closed) == ((True, []) if given else (False, [s.ex]))
