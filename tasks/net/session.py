"""A task's hold on one cluster: its executor, its etcd client, its lock, its interrupts.

Every task opens one ``session``. A task that only reads gets the executor
and, when it needs one, an etcd client through the first member that has
quorum. A task that changes machines, the balancer, etcd membership, the
release records, the build checkout or the registry takes the cluster's lock
(``why`` says what for): an etcd key held by a lease. From then on the
executor confirms the lock before every change (a confirmation less than a
second old stands for one: a change starts at most about a second after the
lock was lost, and a rollout does not pay a round trip per command), every
etcd write is fenced by it, and a membership change or a v2 write confirms it
right before (the etcd client does, whoever calls it). So a task that lost
its lock (stopped for longer than the lease, cut off, its key deleted)
changes nothing more. A hung step stops the lease's renewal, so the lock then
expires by itself.

The first Ctrl-C, SIGTERM or SIGHUP lets the step in hand finish (the rollout then
puts its machine back) and ends the task with exit status 130 once the lock
is released; a second one aborts at once, naming what may be half-done.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional

from tasks.model import state
from tasks.commands import machine
from tasks.model.errors import INTERRUPTED, LockedError, LostLock, PreflightError, RemoteError
from tasks.net import etcd as etcd_api, registry as registry_api, warm
from tasks.net.executor import Executor
from tasks.net.progress import say


class Session:
    """The executor, etcd client and lock of one task on ``cluster``."""

    def __init__(self, cluster, ex: Optional[Executor] = None):
        """``ex``: an executor of ``cluster`` already open, to use and leave open (default: one of its own)."""
        self.cluster = cluster
        self.ex = ex or Executor(cluster)
        self._owns_ex = ex is None
        self._etcd: Optional[etcd_api.Etcd] = None
        self.lock: Optional[etcd_api.Lock] = None
        self.via: Optional[str] = None
        self._stack = ExitStack()

    @property
    def etcd(self) -> etcd_api.Etcd:
        """The session's etcd client; a session opened without one (``etcd=False``) connects on demand."""
        return self.connect_etcd()

    @property
    def has_etcd(self) -> bool:
        """True when the session holds an etcd client already (without trying to reach one)."""
        return self._etcd is not None

    def connect_etcd(self, via: str = None, locking: bool = False) -> etcd_api.Etcd:
        """An etcd client through ``via``, else the first machine of the cluster file whose member has
        quorum. Its login and, when ``locking`` (the lock is taken next), the lock's lease are asked
        for while its health is: three requests side by side, each on a channel of its own, all
        opened at once."""
        if self._etcd is not None:
            return self._etcd
        reasons = []
        for address in [via] if via else list(self.cluster.machines):
            stack = ExitStack()
            try:
                client = stack.enter_context(etcd_api.tunnel(self.ex, address, channels=3 if locking else 2))
                client.log_in_ahead()
                if locking:
                    client.grant_ahead(self.cluster.timeouts.lock)
                if client.healthy():
                    self._stack.enter_context(stack)
                    self._etcd, self.via = client, address
                    return client
                reasons.append(f"{address}: etcd there has no quorum")
            except RemoteError as e:
                reasons.append(str(e))
            stack.close()
        raise RemoteError("no healthy etcd member reachable: " + "; ".join(reasons))

    def move_etcd(self, away_from: str, to: str) -> None:
        """When the session reaches etcd through ``away_from``, go through ``to`` from now on (the
        lock's renewals too): ``away_from`` is about to go down."""
        if self._etcd is None or self.via != away_from:
            return
        if self._etcd.move_to is None:
            raise RemoteError(f"etcd at {self._etcd.label}: cannot be reached another way")
        self._etcd.move_to(to)
        self.via = to

    def take_lock(self, why: str, wait: bool = False, reads: tuple = ((), ())) -> etcd_api.Lock:
        """The cluster's lock, for ``why``; LockedError naming its holder, or, with ``wait``, wait for it.
        ``reads``: (keys, prefixes) read in the transaction that takes it (``Lock.take_read``)."""
        client = self.connect_etcd(locking=True)
        holder = {"who": state.operator(), "since": state.now(), "why": why}
        while True:
            try:
                lock = client.acquire(state.lock_key(self.cluster), holder, self.cluster.timeouts.lock, reads)
                break
            except LockedError:
                if not wait or self.ex.interrupted.is_set():
                    raise
                time.sleep(1)
        lock.stuck = self.ex.stuck
        self.lock = lock
        self.ex.fence = lock
        client.fence, client.fence_held = lock.fence, lock.confirmed_by
        self._stack.callback(self._release)
        return lock

    def _release(self) -> None:
        self.ex.fence = None
        if self._etcd is not None:
            self._etcd.fence = self._etcd.fence_held = None
        if self.lock is not None:
            self.lock.release()

    def close(self) -> None:
        try:
            self._stack.close()
        finally:
            if self._owns_ex:
                self.ex.close()


@contextmanager
def session(cluster, why: str = None, via: str = None, wait: bool = False, etcd: bool = True,
            changes: bool = None, ahead=(), reads: tuple = ((), ()), registry: bool = False) -> Iterator[Session]:
    """A Session on ``cluster``: with etcd reached (``etcd``) and, when ``why`` is given, its lock
    taken. A task that ``changes`` things (default: one that takes the lock here; a task that
    takes it later says so) has its interrupts handled. A lost lock ends in LostLock naming the
    cluster. The connections to the machines, the balancer and the hosts ``ahead`` (the build
    server of a deploy) are opened meanwhile, and, with ``registry``, the registry's (a deploy asks it
    about the recorded release's tags: ``registry.warm_ahead``). ``reads``: (keys, prefixes) read
    with the taking of the lock (``Lock.take_read``)."""
    s = Session(cluster)
    if etcd:
        warm(etcd_api.HTTP_STACK)  # loaded while the connections open
    s.ex.connect_ahead([*cluster.machines, cluster.balancer.host, *ahead])
    if registry:
        registry_api.warm_ahead(s.ex)
    try:
        with _interrupts(s) if (bool(why) if changes is None else changes) else _nothing():
            if etcd:
                s.connect_etcd(via, locking=bool(why))
            if why:
                s.take_lock(why, wait, reads)
            try:
                yield s
            except LostLock as lost:
                raise LostLock(f"lost the deploy lock of {cluster.name} ({lost})") from None
    finally:
        s.close()


def optional_lock(s: Session, why: str, wait: bool = False, no_lock: bool = False) -> None:
    """Take the lock when the cluster has an etcd to hold it in; a cluster not yet set up has none
    (its first build and push run before it exists). When no etcd answers but a machine says it was
    installed, the cluster is set up and its etcd is in trouble: PreflightError, nothing done
    without the lock, unless ``no_lock`` (the operator's ``--no-lock``) says to go on."""
    try:
        s.connect_etcd(locking=True)
    except RemoteError as no_etcd:
        if no_lock:
            say(f"{why}: {s.cluster.name}'s etcd does not answer: going on without the cluster's lock (--no-lock)")
            return
        machines = list(s.cluster.machines)
        found = s.ex.parallel(lambda address: _installed_release(s.ex, address), machines)
        installed = [(m, release) for m, release in zip(machines, found) if release]
        if installed:
            machine, release = installed[0]
            raise PreflightError(f"{why}: {s.cluster.name} is installed ({machine} runs release {release}) but its "
                                 f"etcd does not answer, so the cluster's lock cannot be taken: nothing was done "
                                 f"({no_etcd}; `fab status --cluster {s.cluster.name}` says more; "
                                 f"--no-lock goes on all the same)") from None
        say(f"{s.cluster.name}: no etcd answers and no machine is installed (not set up yet): "
            f"going on without the cluster's lock")
        return
    s.take_lock(why, wait)


def _installed_release(ex: Executor, address: str) -> str:
    """The release ``address`` was installed with; "" when it was not, or does not answer."""
    try:
        return ex.read(address, machine.installed_release_command(), what="read its release").stdout.strip()
    except RemoteError:
        return ""


@contextmanager
def _nothing():
    yield


STOPPING = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _interrupts(s: Session):
    """SIGINT, SIGTERM or SIGHUP: the first asks for an orderly stop, the second aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum, frame):
        if not s.ex.interrupted.is_set():
            s.ex.interrupted.set()
            say("interrupt: finishing the step in hand and putting its machine back "
                "(interrupt again to abort at once)")
            return
        half = s.ex.in_flight()
        lock = f"; the lock expires by itself within {s.cluster.timeouts.lock} s" if s.lock else ""
        say("aborted at once" + (f"; may be half-done: {'; '.join(half)}" if half else "; nothing was running")
            + lock + f"; `fab rolling-upgrade --cluster {s.cluster.name}` brings every machine back to the "
            f"recorded release")
        os._exit(INTERRUPTED)

    # SIGHUP: the operator's terminal closed (an SSH session to a jump host dropped), the same ask.
    previous = {sig: signal.signal(sig, handle) for sig in STOPPING}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
