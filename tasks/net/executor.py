"""Running things on the cluster's hosts: the one place that talks SSH.

Everything else builds *what* to run (pure functions returning command
strings, file contents, plans); the ``Executor`` here *runs* it. One executor
serves one task: it opens each host's Fabric ``Connection`` once (its host
key checked against the cluster's known_hosts, never anything else), watches
it with SSH keepalives so a vanished or hung peer is noticed within seconds,
and runs every command under a deadline that also holds on the remote side
(``timeout`` there ends the command, not only our channel). Commands go
through ``sudo -n`` when the login user is not root. Files are written
atomically with their mode set before any content arrives (secrets are never
readable by others, and never in argv). Before every change it checks that
the task may still change things: not interrupted, and still holding the
cluster's lock (``fence``). Work per machine fans out in threads while each
machine's outcome is kept.
"""
from __future__ import annotations

import logging
import secrets
import shutil
import socket
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Callable, Iterable, Optional

import paramiko
from fabric import Config, Connection

from tasks.commands.shell import (
    TIMED_OUT,
    Staged,
    archive_of,
    deadline_wrapped,
    q,
    staged_commands,
    staged_folder,
    staging_command,
    stream_wrapped,
    tail,
)
from tasks.model.errors import AirError, ConfigError, DeadlineError, Halt, Interrupted, RemoteError
from tasks.net.connector import Connector, Result
from tasks.net.progress import PROGRESS_EVERY, _print_lock, _progress_shown, progress_line
from tasks.net.trips import RoundTrips
from tasks.net.tunnel import bridged

# paramiko logs a refused tunnel channel at ERROR; our own error line already says what failed.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)

LOCAL_GRACE = 10     # seconds we wait beyond a deadline for the remote `timeout` to answer
# A confirmation of the cluster's lock younger than this covers the next change too: a change
# starts at most this long after the lock was lost, and a rollout's commands, which come faster,
# do not each pay etcd a round trip.
LOCK_CONFIRMED_FOR = 1.0
KEEPALIVE_EVERY = 2  # seconds between SSH keepalive requests
# What paramiko reports of a channel closed without an exit status: the connection dropped (or
# sshd refused the command, which exec_unconfirmed does not wait to hear).
NO_EXIT_STATUS = -1




class Unreachable(RemoteError):
    """A host that cannot be logged in to; ``reason`` says why in a few words."""

    def __init__(self, host: str, reason: str):
        super().__init__(f"{host}: cannot reach over SSH ({reason})")
        self.reason = reason


def without_nagle(sock):
    """``sock`` with Nagle's algorithm off, when it is a TCP socket (through a jump host it is an SSH
    channel, whose own connection is). paramiko writes each SSH message as it comes: with Nagle on, a
    message sent while the previous one is unacknowledged waits for the peer's delayed ACK (40 ms on
    Linux), and a command's round trip took 50 ms instead of 10 on the sandbox."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def exec_unconfirmed(channel, command: str) -> None:
    """Start ``command`` on ``channel`` without waiting for the server's yes. paramiko's
    ``exec_command`` waits for it, one round trip per command for nothing: sshd refuses an exec only
    in odd cases, and then closes the channel, which the reading of its output sees (exit status
    -1). paramiko has no public way to send it so: the request is the SSH_MSG_CHANNEL_REQUEST of
    RFC 4254 (6.5), "exec" with want-reply false, and goes out as paramiko's own requests do."""
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("exec")
    message.add_boolean(False)
    message.add_string(command)
    channel.transport._send_user_message(message)


class _Spare:
    """A session channel being opened in the background, for the next command on a host."""

    def __init__(self, transport, timeout: float):
        self.transport = transport
        self._channel = None
        self._ready = threading.Event()
        threading.Thread(target=self._open, args=(timeout,), name="channel ahead", daemon=True).start()

    def _open(self, timeout: float) -> None:
        try:
            self._channel = self.transport.open_session(timeout=timeout)
        except (paramiko.SSHException, OSError, EOFError):
            self._channel = None  # the command that wanted it opens its own
        self._ready.set()

    def take(self, transport):
        """The channel, when it is open on ``transport`` by now and usable; else None (a channel
        still opening is not waited for: it is closed when it arrives)."""
        if transport is not self.transport or not self._ready.is_set():
            threading.Thread(target=self._discard, name="channel ahead discarded", daemon=True).start()
            return None
        channel = self._channel
        return channel if channel is not None and channel.active and not channel.closed else None

    def _discard(self) -> None:
        self._ready.wait(60)
        if self._channel is not None:
            try:
                self._channel.close()
            except (paramiko.SSHException, OSError, EOFError):
                pass  # the connection is gone, and the channel with it


class Executor:
    """Every remote action of one task, on connections opened once per host."""

    def __init__(self, cluster, progress=None):
        self.cluster = cluster
        self.fence = None                      # the cluster lock this task holds, once it holds one
        self.interrupted = threading.Event()   # set by the first Ctrl-C or SIGTERM
        self.run_id = secrets.token_hex(4)     # staged files of concurrent runs never collide
        self.trips = RoundTrips()              # every host's answers waited for (``tasks.net.trips``)
        self.fan_out = cluster.rollout.parallel  # hosts worked on at once by ``parallel`` (``--parallel``)
        self._conns: dict = {}
        self._gone: dict = {}                  # host -> why its connection was given up
        self._ahead_failed: dict = {}          # host -> (when, Unreachable) of a connection tried ahead
        self._host_locks: dict = {}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._active: dict = {}                # step id -> (host, what, deadline, started), monotonic times
        self._closed = threading.Event()
        self._spares: dict = {}                # host -> the _Spare channel opened ahead for its next command
        self.registry_client = None            # the task's one registry client (``tasks.net.registry.of_task``)
        # On a terminal, a line of the steps in flight per machine, redrawn in place; elsewhere plain lines only.
        self._progress = progress if progress is not None else sys.stderr
        self._ticker = threading.Thread(target=self._show_progress, name="progress", daemon=True)
        if self._progress.isatty():
            self._ticker.start()

    # ------------------------------------------------------------ connections

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        if self._ticker.is_alive():
            self._ticker.join(2)  # the progress line is cleared before anything else is printed
        with self._lock:
            conns, self._conns = list(self._conns.values()), {}
        # Newest first: a connection through the jump host closes before the jump host's own.
        for conn in reversed(conns):
            try:
                conn.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # gone already: nothing is left to close

    def _settings(self) -> dict:
        known_hosts, key = self.cluster.ssh.known_hosts, self.cluster.ssh.key
        if not known_hosts.exists():
            raise ConfigError(f"{self.cluster.file}: ssh.known_hosts: {known_hosts} does not exist")
        if not key.exists():
            raise ConfigError(f"{self.cluster.file}: ssh.key: {key} does not exist")
        timeout = self.cluster.timeouts.connect
        # A Config of its own, lazy: no ~/.ssh/config nor /etc/ssh/ssh_config (a Host entry there
        # could name another address, a jump host nobody checked, another key or agent
        # forwarding), nor Fabric's own config files: the cluster file alone says how to connect.
        return dict(user=self.cluster.ssh.user, port=self.cluster.ssh.port, connect_timeout=timeout,
                    config=Config(lazy=True), forward_agent=False,
                    connect_kwargs={"key_filename": [str(key)], "look_for_keys": False, "allow_agent": False,
                                    "banner_timeout": timeout, "auth_timeout": timeout})

    def conn(self, host: str) -> Connection:
        """The open connection to ``host`` (opened on first use, host key checked); RemoteError if none."""
        with self._lock:
            host_lock = self._host_locks.setdefault(host, threading.Lock())
        with host_lock:
            conn = self._conns.get(host)
            if conn is not None and conn.is_connected:
                return conn
            if host in self._gone:
                raise Unreachable(host, self._gone[host])
            failed_at, failure = self._ahead_failed.pop(host, (None, None))
            if failure is not None and time.monotonic() - failed_at < self.cluster.timeouts.connect:
                raise failure  # just found, ahead: not waited for twice
            gateway = self.cluster.ssh.gateway
            # Through the jump host when the cluster has one (Fabric opens a channel there to this host).
            via = self.conn(gateway) if gateway and host != gateway else None
            conn = Connection(host, gateway=via, **self._settings())
            conn.client.load_host_keys(str(self.cluster.ssh.known_hosts))
            conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
            sent = time.monotonic()
            try:
                conn.open()
            except Exception as e:  # anything that stops a login is an answer here
                conn.close()
                failure = Unreachable(host, _reason(e))
                if getattr(self._local, "ahead", False):
                    self._ahead_failed[host] = (time.monotonic(), failure)
                raise failure from None
            finally:
                self.trips.count(host, "login", what="SSH login", took=time.monotonic() - sent)
            if self._closed.is_set():  # opened ahead, after the task ended
                conn.close()
                raise Unreachable(host, "the task has ended")
            without_nagle(conn.transport.sock)
            conn.air_sudo = self.cluster.ssh.user != "root"
            self._conns[host] = conn
            with self._lock:  # the first command's channel too is opened ahead (one round trip less)
                if not self._closed.is_set():
                    self._spares[host] = _Spare(conn.transport, self.cluster.timeouts.connect)
            threading.Thread(target=self._watch, args=(host, conn), name=f"keepalive {host}", daemon=True).start()
            return conn

    def connect_ahead(self, hosts) -> None:
        """Open the connections to ``hosts`` in the background while the task does other things
        (takes its lock, builds): its first step on each then finds it open. A host that does not
        answer is left for that first step to report."""
        for host in dict.fromkeys(hosts):
            threading.Thread(target=self._connect_ahead, args=(host,), name=f"connect {host}", daemon=True).start()

    def _connect_ahead(self, host: str) -> None:
        self._local.ahead = True
        try:
            self.conn(host)
        except AirError:
            pass  # the first step on it reports it (an Unreachable ahead is kept for it in _ahead_failed)

    def socket_to(self, host: str, port: int, timeout: float = None) -> socket.socket:
        """A TCP connection to ``host:port`` (the registry's API, say): through the cluster's jump
        host when it has one, as a local socket pair bridged to an SSH channel there."""
        timeout = timeout or self.cluster.timeouts.connect
        gateway = self.cluster.ssh.gateway
        if not gateway:
            return without_nagle(socket.create_connection((host, port), timeout=timeout))
        try:
            channel = self.conn(gateway).transport.open_channel("direct-tcpip", (host, port), ("127.0.0.1", 0),
                                                               timeout=timeout)
        except (paramiko.SSHException, OSError) as e:
            raise OSError(f"through {gateway}: {_reason(e)}") from None
        return bridged(channel, timeout)

    def reachable(self, host: str) -> Optional[str]:
        """None when ``host`` can be logged in to, otherwise why not (one line)."""
        try:
            self.conn(host)
            return None
        except Unreachable as e:
            return e.reason

    def forget(self, host: str) -> None:
        """Close ``host``'s connection and drop what was known of it (given up, failed ahead): it
        reboots, and the next step on it logs in afresh."""
        with self._lock:
            conn = self._conns.pop(host, None)
            self._gone.pop(host, None)
            self._ahead_failed.pop(host, None)
        if conn is not None:
            try:
                conn.close()
            except (OSError, EOFError, paramiko.SSHException):
                pass  # gone already

    def gave_up_on(self, host: str) -> Optional[str]:
        """Why the keepalive watcher gave ``host``'s connection up (None: it did not): what a
        step that lost its connection says, rather than the socket's own words."""
        return self._gone.get(host)

    def connection_lost(self, host: str, what: str, reason: str) -> RemoteError:
        """The error of step ``what`` on ``host`` whose connection was lost: why the keepalive
        watcher gave the host up, when it did, else ``reason`` (the transport's own words)."""
        return RemoteError(f"{host}: {what}: connection lost ({self.gave_up_on(host) or reason})")

    def _watch(self, host: str, conn: Connection) -> None:
        """Keepalive requests that want an answer: a peer that gives none within the cluster's
        ``timeouts.alive`` (hung, paused, powered off) has its connection closed, so whatever
        waits on it fails at once instead of at its deadline."""
        transport = conn.transport
        limit = self.cluster.timeouts.alive
        while not self._closed.wait(KEEPALIVE_EVERY) and transport.is_active():
            answered = threading.Event()
            threading.Thread(target=_ask_keepalive, args=(transport, answered), daemon=True).start()
            if not answered.wait(limit) and transport.is_active() and not self._closed.is_set():
                self._gone[host] = f"no answer over SSH for {limit} s (hung or gone)"
                transport.close()
                return

    # ------------------------------------------------------------ checks before a change

    def check(self, what: str = "the next change") -> None:
        """Raise Halt when the task must change nothing more: interrupted (unless finishing the
        machine in hand), or no longer holding the cluster's lock (confirmed again when its last
        confirmation is ``LOCK_CONFIRMED_FOR`` s old or more)."""
        if self.interrupted.is_set() and not getattr(self._local, "finishing", False):
            raise Interrupted(f"interrupted before {what}")
        if self.fence is not None:
            self.fence.confirm(fresh=LOCK_CONFIRMED_FOR)

    @contextmanager
    def finishing(self):
        """Within it, an interrupt does not stop this thread's changes: the machine in hand is
        being finished or put back."""
        before = getattr(self._local, "finishing", False)
        self._local.finishing = True
        try:
            yield
        finally:
            self._local.finishing = before

    def in_flight(self) -> list:
        """'host: what' of every remote step running now (what a second Ctrl-C may leave half-done)."""
        with self._lock:
            return [f"{host}: {what}" for host, what, _, _ in self._active.values()]

    def stuck(self) -> Optional[str]:
        """A step past its deadline and grace (its host does not answer), or None."""
        now = time.monotonic()
        with self._lock:
            for host, what, deadline, _ in self._active.values():
                if now > deadline + LOCAL_GRACE:
                    return f"{host}: {what}"
        return None

    def _show_progress(self) -> None:
        width = shutil.get_terminal_size((100, 20)).columns - 1
        while not self._closed.wait(PROGRESS_EVERY):
            with self._lock:
                steps = [(host, what, started) for host, what, _, started in self._active.values()]
            line = progress_line(steps, time.monotonic(), width)
            with _print_lock:
                if line or _progress_shown.is_set():
                    self._progress.write("\r\x1b[K" + line)
                    self._progress.flush()
                    if line:
                        _progress_shown.set()
                    else:
                        _progress_shown.clear()
        with _print_lock:
            if _progress_shown.is_set():
                self._progress.write("\r\x1b[K")
                self._progress.flush()
                _progress_shown.clear()

    @contextmanager
    def step(self, host: str, what: str, deadline: float):
        """Within it, ``what`` on ``host`` is a step in flight, as a command of ``run`` is: shown in the
        progress line, named by ``in_flight``, and ``stuck`` (the lock's watchdog) once past ``deadline``
        s and the grace. For work that does not go through ``run`` (a Docker Engine stream)."""
        token = object()
        with self._lock:
            now = time.monotonic()
            self._active[token] = (host, what, now + deadline, now)
        try:
            yield
        finally:
            with self._lock:
                del self._active[token]

    # ------------------------------------------------------------ commands

    def _session_channel(self, host: str, conn: Connection):
        """A session channel on ``conn`` for a command: the one opened ahead for ``host`` when it is
        ready and still usable, else a new one; either way the next is opened ahead, in the
        background, so that a command's own wait is its exec alone (one round trip, not two)."""
        transport, timeout = conn.transport, self.cluster.timeouts.connect
        with self._lock:
            spare = self._spares.pop(host, None)
            if not self._closed.is_set():
                self._spares[host] = _Spare(transport, timeout)
        channel = spare.take(transport) if spare is not None else None
        return channel or transport.open_session(timeout=timeout)

    def run(self, host: str, command: str, *, what: str = None, deadline: int = None, stdin: str = None,
            check: bool = True, change: bool = True, stream: bool = False, on_line: Callable = None) -> Result:
        """Run ``command`` on ``host`` within ``deadline`` s (default ``timeouts.command``).

        ``change``: it changes something, so the task must still be allowed to (``check``);
        a read (``change=False``) runs regardless. ``check``: a non-zero exit raises RemoteError
        naming the host, ``what`` was done and the last lines of its error output. ``stdin``:
        text sent as standard input (the way secrets reach a command). ``stream``: its error
        output is shown as it comes (a build's progress), and kept as well. ``on_line``: each line of
        its standard output is given to it as it comes (and kept as well).
        """
        what = what or command.split("\n")[0][:80]
        deadline = int(deadline or self.cluster.timeouts.command)
        if change:
            self.check(what)
        conn = self.conn(host)
        sent = deadline_wrapped(command, deadline, conn.air_sudo)
        with self.step(host, what, deadline):
            status, out, err = self._exec(host, conn, sent, stdin.encode() if stdin is not None else None,
                                          deadline, what, stream, on_line)
        result = Result(status, out.decode(errors="replace"), err.decode(errors="replace"))
        if status == TIMED_OUT:
            raise DeadlineError(f"{host}: {what}: not done within {deadline} s (stopped there)")
        if check and status != 0:
            raise RemoteError(f"{host}: {what} failed (exit {status}): {tail(result.stderr or result.stdout)}")
        return result

    def read(self, host: str, command: str, *, what: str = None, deadline: int = None,
             check: bool = True) -> Result:
        """``run`` for a command that changes nothing."""
        return self.run(host, command, what=what, deadline=deadline, check=check, change=False)

    def read_bytes(self, host: str, command: str, what: str, deadline: int = None) -> bytes:
        """The binary standard output of ``command`` (a tar stream, say)."""
        deadline = int(deadline or self.cluster.timeouts.command)
        conn = self.conn(host)
        with self.step(host, what, deadline):
            status, out, err = self._exec(host, conn, deadline_wrapped(command, deadline, conn.air_sudo),
                                          None, deadline, what)
        if status != 0:
            raise RemoteError(f"{host}: {what} failed (exit {status}): {tail(err.decode(errors='replace'))}")
        return out

    def _exec(self, host, conn, command: str, stdin: Optional[bytes], deadline: int, what: str,
              stream: bool = False, on_line: Callable = None) -> tuple:
        """(exit status, stdout, stderr) of one command on its own channel; gives up ``LOCAL_GRACE``
        s after ``deadline`` when the host's own ``timeout`` has not answered."""
        sent = time.monotonic()
        give_up = sent + deadline + LOCAL_GRACE
        errors: list = []
        try:
            channel = self._session_channel(host, conn)
            exec_unconfirmed(channel, command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            reader = threading.Thread(target=_drain_stderr, args=(channel, errors, stream), daemon=True)
            reader.start()
            chunks, pending = [], b""
            while True:
                left = give_up - time.monotonic()
                if left <= 0:
                    raise socket.timeout()
                channel.settimeout(left)
                data = channel.recv(1 << 16)
                if not data:
                    break
                chunks.append(data)
                if on_line is not None:
                    pending = _lines_to(on_line, pending + data)
            if on_line is not None and pending:
                on_line(pending.decode(errors="replace"))
            if not channel.status_event.wait(max(0.0, give_up - time.monotonic())):
                raise socket.timeout()
            reader.join(max(0.0, give_up - time.monotonic()))
            status = channel.recv_exit_status()
            channel.close()
            return _ended(status), b"".join(chunks), b"".join(errors)
        except socket.timeout:
            raise DeadlineError(f"{host}: {what}: no answer within {deadline} s") from None
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.connection_lost(host, what, _reason(e)) from None
        finally:  # counted once it ended, answered or not
            self.trips.count(host, "command", what=what, took=time.monotonic() - sent)

    # ------------------------------------------------------------ streams

    def stream(self, host: str, command: str, *, on_line: Callable = None, stop: threading.Event = None,
               tty: bool = False, what: str = None) -> Optional[int]:
        """Run a read whose output is wanted as it comes, with no deadline (`fab logs --follow`,
        `fab exec`); returns its exit status, or None when ``stop`` ended it.

        Each line of its standard output goes to ``on_line`` (default: our standard output), its
        error output to our standard error. Once ``stop`` is set we close our side: the command
        is wrapped so that the end of its standard input (our side closed, or the connection
        gone) ends it on the host too. ``tty``: it gets a terminal fed from ours (a console,
        through Fabric's own pty handling) and returns at its end.
        """
        what = what or command.split("\n")[0][:80]
        conn = self.conn(host)
        if tty:
            sent = f"sudo -n sh -c {q(command)}" if conn.air_sudo else command
            return conn.run(sent, pty=True, warn=True).exited
        sent = stream_wrapped(command, conn.air_sudo)
        on_line = on_line or (lambda line: print(line, flush=True))
        self.trips.count(host, "command", what=what)
        try:
            channel = conn.transport.open_session(timeout=self.cluster.timeouts.connect)
            exec_unconfirmed(channel, sent)
            errors = threading.Thread(target=_copy_stderr, args=(channel,), daemon=True)
            errors.start()
            _pump_lines(channel, on_line, stop)
            if stop is not None and stop.is_set():
                channel.close()
                return None
            status = channel.recv_exit_status()
            errors.join(5)
            channel.close()
            return _ended(status)
        except (paramiko.SSHException, OSError, EOFError) as e:
            raise self.connection_lost(host, what, _reason(e)) from None

    # ------------------------------------------------------------ files

    def stage_files(self, host: str, files, *, before: str = None, after: str = None, undo: str = None,
                    what: str = None, deadline: int = None) -> Staged:
        """Upload ``(path, content, mode)`` files into a private staging folder without putting them
        in place yet, in one command (``staging_command``; ``before``, ``after`` and, on a failure,
        ``undo`` run in it too, with ``what`` and ``deadline`` saying so). Staging folders are unique,
        so two runs never take each other's files. Returns the commands that swap them in or discard them."""
        files = list(files)
        what = what or f"stage {len(files)} file(s)"
        printed = self.run(host, staging_command(files, before, after, undo), stdin=archive_of(files), what=what,
                           deadline=deadline).stdout
        return staged_commands(files, staged_folder(printed), f".air-new-{self.run_id}")

    def write_files(self, host: str, files) -> None:
        """Replace each ``(path, content, mode)`` atomically; no file is ever readable with another mode."""
        files = list(files)
        self.run(host, self.stage_files(host, files).swap,
                 what=f"install {', '.join(p for p, _, _ in files)}"[:120])

    def write_file(self, host: str, path: str, content, mode: int = 0o644) -> None:
        self.write_files(host, [(path, content, mode)])

    def read_file(self, host: str, path: str, missing=None):
        """The text of ``path``, or ``missing`` when there is no such file."""
        result = self.read(host, f"if [ -e {q(path)} ]; then cat {q(path)}; else exit 3; fi", check=False,
                           what=f"read {path}")
        if result.exited == 3:
            return missing
        if result.exited != 0:
            raise RemoteError(f"{host}: cannot read {path}: {tail(result.stderr)}")
        return result.stdout

    # ------------------------------------------------------------ fan-out

    def parallel(self, work: Callable, items: Iterable, *, describe: Callable = str) -> list:
        return parallel(work, items, describe=describe, at_once=self.fan_out)

    def meanwhile(self, work: Callable, *args) -> Future:
        """``work(*args)`` started in the background while the task goes on (a check whose answer is
        wanted a little later: its round trips then cost no time of their own); the Future's
        ``result()`` gives its value or raises its error. An answer never asked for is dropped."""
        future: Future = Future()

        def run() -> None:
            try:
                future.set_result(work(*args))
            except BaseException as e:  # noqa: B036 - handed to whoever asks for the result
                future.set_exception(e)
        threading.Thread(target=run, name="meanwhile", daemon=True).start()
        return future


def _lines_to(on_line: Callable, data: bytes) -> bytes:
    """Each whole line of ``data`` given to ``on_line``; returns the unfinished rest."""
    *lines, rest = data.split(b"\n")
    for line in lines:
        on_line(line.decode(errors="replace"))
    return rest


def _ask_keepalive(transport, answered: threading.Event) -> None:
    """One keepalive; ``answered`` set when the host answers. A transport closing under it (the
    machine removed, the task ending) is no answer: the watcher sees the transport inactive."""
    try:
        transport.global_request("keepalive@openssh.com", wait=True)
    except (OSError, paramiko.SSHException, EOFError):
        return
    answered.set()


def _drain_stderr(channel, sink: list, show: bool) -> None:
    try:
        while True:
            data = channel.recv_stderr(1 << 16)
            if not data:
                return
            sink.append(data)
            if show:
                with _print_lock:
                    sys.stderr.write(data.decode(errors="replace"))
                    sys.stderr.flush()
    except (OSError, paramiko.SSHException, EOFError):
        return


def _pump_lines(channel, on_line: Callable, stop: Optional[threading.Event]) -> None:
    """Hand each line of ``channel``'s standard output to ``on_line`` as it comes, until the
    output ends or ``stop`` is set (looked at every 0.2 s)."""
    channel.settimeout(0.2)
    pending = b""
    while stop is None or not stop.is_set():
        try:
            data = channel.recv(1 << 16)
        except socket.timeout:
            continue
        if not data:
            break
        pending = _lines_to(on_line, pending + data)
    if pending:
        on_line(pending.decode(errors="replace"))


def _ended(status: int) -> int:
    """A command's exit status as its channel gave it; SSHException when the channel closed without
    one (the connection dropped before the command ended)."""
    if status == NO_EXIT_STATUS:
        raise paramiko.SSHException("the command ended without an exit status")
    return status


def _copy_stderr(channel) -> None:
    """A stream's error output to ours as it comes, until the channel ends (its short timeout,
    there for the stop check of ``stream``, is not an end)."""
    try:
        while True:
            try:
                data = channel.recv_stderr(1 << 16)
            except socket.timeout:
                if channel.closed or channel.exit_status_ready():
                    return
                continue
            if not data:
                return
            with _print_lock:
                sys.stderr.write(data.decode(errors="replace"))
                sys.stderr.flush()
    except (OSError, paramiko.SSHException, EOFError):
        return


def _reason(error: Exception) -> str:
    if isinstance(error, paramiko.BadHostKeyException):
        return "host key does not match known_hosts: refusing"
    if isinstance(error, paramiko.SSHException) and "not found in known_hosts" in str(error):
        return "host key not in known_hosts: refusing"
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return f"nothing answers on port {sorted(error.errors)[0][1]}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    if isinstance(error, paramiko.SSHException) and "Timeout opening channel" in str(error):
        return "no answer over SSH (hung or gone)"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]


# Seconds the main thread waits at most at a time for work done side by side. Python runs signal
# handlers (Ctrl-C's) in the main thread only, and the kernel may hand the signal to a worker thread:
# a main thread blocked until the work ends would see it only then, after the step it should stop.
SIGNALS_SEEN_WITHIN = 0.1


def parallel(work: Callable, items: Iterable, *, describe: Callable = str, at_once: int = 16) -> list:
    """``work(item)`` for every item, ``at_once`` of them side by side (each host's work holds one of
    its connection's sessions, so that bounds the SSH sessions busy at once); results in order, or one
    AirError naming each failure.

    Every item runs to its end even when another fails, so the error says
    the state of each machine, not only of the first that failed. A Halt
    (interrupted, lost lock) is raised as itself, the others' failures added.
    """
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(at_once, len(items)))) as pool:
        futures = [pool.submit(work, item) for item in items]
        while wait(futures, timeout=SIGNALS_SEEN_WITHIN).not_done:
            pass
    results, failures, halts = [], [], []
    for item, future in zip(items, futures):
        error = future.exception()
        if error is None:
            results.append(future.result())
        elif isinstance(error, Halt):
            halts.append(error)
        elif isinstance(error, AirError):
            name = describe(item)
            failures.append(str(error) if str(error).startswith(f"{name}:") else f"{name}: {error}")
        else:
            raise error
    if halts:
        halt = halts[0]
        raise type(halt)("; ".join([str(halt)] + failures))
    if failures:
        raise RemoteError("; ".join(failures) if len(failures) > 1 else failures[0])
    return results


def _fulfils(ex: Executor) -> Connector:
    """An Executor is a Connector (mypy checks this assignment against the contract)."""
    return ex
