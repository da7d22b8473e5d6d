"""What the executor sends (pure builders, run in a real ``sh``) and its checks before a change."""
import io
import os
import subprocess
import signal
import threading
import re
import time
from pathlib import Path

import pytest
from types import SimpleNamespace

from tasks.commands.shell import (
    KILL_AFTER,
    STAGED_MARK,
    archive_of,
    deadline_wrapped,
    staged_commands,
    staged_folder,
    staging_command,
    stream_wrapped,
)
from tasks.model.errors import Interrupted, LostLock, RemoteError
from tasks.net.executor import Executor, parallel
from tasks.net.progress import PROGRESS_AFTER, PROGRESS_EVERY, progress_line

from .fakes import FakeExecutor, FakeFence
from tasks.net import progress


def sh(command: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(["sh", "-c", command], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_a_command_is_sent_under_timeout_and_sudo_for_a_user_that_is_not_root():
    assert deadline_wrapped("systemctl stop 'a b'", 30, sudo=False) == \
        f"timeout -k {KILL_AFTER} 30 sh -c 'systemctl stop '\"'\"'a b'\"'\"''"
    assert deadline_wrapped("true", 5, sudo=True) == f"sudo -n timeout -k {KILL_AFTER} 5 sh -c true"


def test_the_remote_timeout_stops_the_command_there_and_says_so(tmp_path):
    started = sh(deadline_wrapped("sleep 30; touch late", 1, sudo=False), tmp_path)
    assert started.returncode == 124 and not (tmp_path / "late").exists()


def test_swap_puts_every_file_in_place_and_lets_the_chain_go_on(tmp_path):
    files = [(str(tmp_path / "etc/a.conf"), "A", 0o644), (str(tmp_path / "secrets/key"), "K", 0o600)]
    folder = tmp_path / "stage"
    folder.mkdir()
    for i, (_, content, _) in enumerate(files):
        (folder / str(i)).write_text(content)
    swap = staged_commands(files, str(folder), ".new-1").swap
    done = sh(f"{swap} && echo after", tmp_path)
    assert done.returncode == 0 and done.stdout == "after\n", done.stderr
    assert (tmp_path / "etc/a.conf").read_text() == "A" and (tmp_path / "secrets/key").read_text() == "K"
    assert oct((tmp_path / "secrets/key").stat().st_mode & 0o777) == oct(0o600)
    assert not folder.exists()  # the staging folder is cleaned up


def test_a_failed_swap_fails_the_chain_and_cleans_up(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "0").write_text("A")
    (tmp_path / "file").write_text("")  # the target's folder cannot be made: the install fails
    swap = staged_commands([(str(tmp_path / "file/a"), "A", 0o644)], str(folder), ".new-1").swap
    done = sh(f"{swap} && echo after", tmp_path)
    assert done.returncode != 0 and "after" not in done.stdout
    assert not folder.exists() and (tmp_path / "file").read_text() == ""


def test_discard_removes_what_was_staged(tmp_path):
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "0").write_text("A")
    assert sh(staged_commands([(str(tmp_path / "a"), "A", 0o644)], str(folder), ".new-1").discard, tmp_path).returncode == 0
    assert list(tmp_path.iterdir()) == []


def staged_by_command(tmp_path, files, before=None, after=None):
    """Runs ``staging_command`` here, with TMPDIR in ``tmp_path``, fed ``archive_of(files)``."""
    return subprocess.run(["sh", "-c", staging_command(files, before, after)], input=archive_of(files), text=True,
                          capture_output=True, env={**os.environ, "TMPDIR": str(tmp_path)})


def test_one_command_stages_every_file_privately_between_its_before_and_after_steps(tmp_path):
    files = [("/etc/a.conf", "A\n", 0o644), ("/etc/air/secrets/key", b"\x00K", 0o600)]
    done = staged_by_command(tmp_path, files, before="echo before", after="echo after")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    folder = Path(staged_folder(done.stdout))
    assert lines == ["before", f"{STAGED_MARK}{folder}", "after"] and folder.parent == tmp_path
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)
    assert (folder / "0").read_text() == "A\n" and (folder / "1").read_bytes() == b"\x00K"
    assert {oct(p.stat().st_mode & 0o777) for p in folder.iterdir()} == {oct(0o600)}
    swap = staged_commands(files, str(folder), ".new").swap.replace("/etc/", f"{tmp_path}/etc/")
    assert sh(swap, tmp_path).returncode == 0 and (tmp_path / "etc/a.conf").read_text() == "A\n"


def test_only_files_that_change_are_staged_and_swapped_in(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    for name, text, mode in (("same", "S", 0o644), ("content", "old", 0o644), ("mode", "M", 0o600)):
        (etc / name).write_text(text)
        (etc / name).chmod(mode)
    files = [(str(etc / "same"), "S", 0o644), (str(etc / "content"), "new", 0o644), (str(etc / "mode"), "M", 0o644),
             (str(etc / "missing"), "N", 0o600)]
    kept = (etc / "same").stat().st_ino
    staging = tmp_path / "tmp"
    staging.mkdir()
    done = subprocess.run(["sh", "-c", staging_command(files, before="sleep 0.2; echo pulled")], input=archive_of(files),
                          text=True, capture_output=True, env={**os.environ, "TMPDIR": str(staging)})
    assert done.returncode == 0, done.stderr
    folder = Path(staged_folder(done.stdout))
    assert done.stdout.splitlines()[0] == "pulled"
    assert sorted(p.name for p in folder.iterdir()) == ["1", "2", "3"]  # the same file is not staged
    assert sh(staged_commands(files, str(folder), ".new").swap, tmp_path).returncode == 0
    assert [(etc / n).read_text() for n in ("same", "content", "mode", "missing")] == ["S", "new", "M", "N"]
    assert oct((etc / "mode").stat().st_mode & 0o777) == oct(0o644)
    assert (etc / "same").stat().st_ino == kept and not folder.exists()


def test_undo_runs_when_the_staging_fails_and_only_then(tmp_path):
    files = [("/etc/a.conf", "A", 0o644)]
    undo = f"echo undone >> {tmp_path}/undone"

    def staged(before, archive):
        return subprocess.run(["sh", "-c", staging_command(files, before, None, undo)], input=archive, text=True,
                              capture_output=True, env={**os.environ, "TMPDIR": str(tmp_path)})
    assert staged("true", archive_of(files)).returncode == 0 and not (tmp_path / "undone").exists()
    assert staged("false", archive_of(files)).returncode != 0  # the step failed
    assert staged("true", "not an archive").returncode != 0    # the unpacking failed after the step went well
    assert (tmp_path / "undone").read_text() == "undone\nundone\n"


def test_a_failed_step_around_the_staging_leaves_no_folder_behind(tmp_path):
    files = [("/etc/a.conf", "A", 0o644)]
    assert staged_by_command(tmp_path, files, before="false").returncode != 0
    failed_after = staged_by_command(tmp_path, files, after="echo paused; false")
    assert failed_after.returncode != 0 and STAGED_MARK in failed_after.stdout
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RemoteError, match="printed no folder"):
        staged_folder("before\n")


# ---------------------------------------------------------------- the checks before a change

def test_an_interrupt_stops_the_next_change_but_not_a_read_nor_the_machine_in_hand(cluster):
    ex = FakeExecutor(cluster)
    ex.interrupted.set()
    with pytest.raises(Interrupted, match="interrupted before stop"):
        ex.run("10.0.0.1", "systemctl stop x", what="stop")
    assert ex.read("10.0.0.1", "cat /etc/air/state/release").exited == 0
    with ex.finishing():
        ex.run("10.0.0.1", "systemctl start x", what="start")
    assert ex.commands() == ["cat /etc/air/state/release", "systemctl start x"]


def test_a_lost_lock_stops_every_change_even_while_finishing(cluster):
    ex = FakeExecutor(cluster)
    ex.fence = FakeFence()
    ex.run("10.0.0.1", "true")
    ex.fence.lose()
    with ex.finishing(), pytest.raises(LostLock):
        ex.run("10.0.0.1", "systemctl start x")
    assert ex.commands() == ["true"]


def test_a_change_asks_the_lock_for_a_confirmation_at_most_a_second_old(cluster):
    from tasks.net.executor import LOCK_CONFIRMED_FOR
    asked = []
    ex = FakeExecutor(cluster)
    ex.fence = SimpleNamespace(confirm=lambda fresh=0: asked.append(fresh))
    ex.run("10.0.0.1", "systemctl start x")
    ex.read("10.0.0.1", "cat /etc/air/state/release")  # a read asks nothing
    assert asked == [LOCK_CONFIRMED_FOR] and 0 < LOCK_CONFIRMED_FOR <= 1


def test_parallel_raises_a_halt_as_itself_with_the_others_failures():
    def work(n):
        if n == "10.0.0.1":
            raise LostLock("/air/c/lock: the key is gone")
        if n == "10.0.0.2":
            raise RemoteError("10.0.0.2: pull failed")
        return n
    with pytest.raises(LostLock) as halted:
        parallel(work, ["10.0.0.0", "10.0.0.1", "10.0.0.2"])
    assert str(halted.value) == "/air/c/lock: the key is gone; 10.0.0.2: pull failed"
    assert parallel(lambda n: n * 2, [1, 2, 3]) == [2, 4, 6]


def test_a_signal_a_worker_thread_receives_is_handled_while_the_work_goes_on():
    """Python runs signal handlers in the main thread only; the kernel may deliver a Ctrl-C to any
    thread. While ``parallel`` waits, the main thread wakes often enough to run the handler at once,
    not when the work ends (a Ctrl-C would then come after the step it was meant to stop)."""
    handled, sent, workers = [], [], []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(time.monotonic()))
    working = threading.Event()

    def work(seconds):
        workers.append(threading.get_ident())
        working.set()
        time.sleep(seconds)
        return seconds

    def send_to_the_worker():
        working.wait(5)
        time.sleep(0.3)  # the main thread is waiting by then
        sent.append(time.monotonic())
        signal.pthread_kill(workers[0], signal.SIGUSR1)
    try:
        threading.Thread(target=send_to_the_worker, name="sender").start()
        assert parallel(work, [2.0]) == [2.0]
        ended = time.monotonic()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert sent and handled, (sent, handled)
    assert handled[0] - sent[0] < 1.0 and ended - handled[0] > 0.5, (sent, handled, ended)


def test_a_file_being_installed_from_staging_is_never_readable_by_others(tmp_path):
    """The install runs under umask 077, so `install` creates the file 0600 before giving it its mode."""
    folder = tmp_path / "stage"
    folder.mkdir()
    (folder / "0").write_bytes(b"x" * (1 << 20))
    swap = staged_commands([(str(tmp_path / "etc/config"), "", 0o644)], str(folder), ".new-1").swap
    assert swap.index("umask 077 && ") < swap.index("install -m 644")
    assert sh(f"{swap} && umask", tmp_path).stdout.strip() == "0077"
    assert oct((tmp_path / "etc/config").stat().st_mode & 0o777) == oct(0o644)
    assert oct((tmp_path / "etc").stat().st_mode & 0o777) == oct(0o755)  # folders keep the usual mode


def test_a_stream_ends_on_the_host_when_its_input_ends():
    assert stream_wrapped("journalctl -f -u 'a b'", sudo=False) == (
        "sh -c 'exec 3<&0; journalctl -f -u '\"'\"'a b'\"'\"' </dev/null 3<&- & pid=$!; "
        "{ cat <&3 >/dev/null; kill $pid; } >/dev/null 2>&1 & wait $pid'")
    assert stream_wrapped("true", sudo=True).startswith("sudo -n sh -c 'exec 3<&0; true </dev/null")


# ---------------------------------------------------------------- progress on a terminal

def test_the_progress_line_names_each_machines_long_steps_with_their_time():
    steps = [("10.0.0.2", "health check", 95.0), ("10.0.0.1", "pull release r1", 97.2), ("10.0.0.3", "read", 99.9)]
    assert progress_line(steps, 100.0) == "… 10.0.0.1: pull release r1 3s · 10.0.0.2: health check 5s"
    assert progress_line([("10.0.0.3", "read", 99.9)], 100.0) == ""  # a short step shows nothing
    assert progress_line(steps, 100.0, width=20) == "… 10.0.0.1: pull re…"


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream, redrawn", [(Terminal(), True), (io.StringIO(), False)], ids=["tty", "pipe"])
def test_a_terminal_gets_the_progress_line_redrawn_and_a_pipe_plain_lines_only(cluster, stream, redrawn):
    ex = Executor(cluster, progress=stream)
    try:
        with ex.step("10.0.0.1", "pull release r1", 60):
            time.sleep(PROGRESS_AFTER + 3 * PROGRESS_EVERY)  # a redraw or more, even on a busy machine
    finally:
        ex.close()
    text = stream.getvalue()
    assert bool(re.search(r"\r\x1b\[K… 10\.0\.0\.1: pull release r1 [12]s", text)) is redrawn
    assert text.endswith("\r\x1b[K") is redrawn  # cleared at the end
    assert text == "" or redrawn


def test_a_host_that_failed_ahead_is_reported_at_once_and_tried_again_later(cluster, monkeypatch, tmp_path):
    """Connections opened ahead: a host found dead then is not waited for a second time by the
    task's first step on it, and a later step tries again."""
    (tmp_path / "id_ed25519").write_text("key")
    (tmp_path / "known_hosts").write_text("")
    opened = []

    def refuse(conn):
        opened.append(conn.host)
        raise ConnectionRefusedError(111, "Connection refused")
    monkeypatch.setattr("fabric.Connection.open", refuse)
    ex = Executor(cluster, progress=io.StringIO())
    try:
        ex.connect_ahead(["10.0.0.1", "10.0.0.1"])
        deadline = time.monotonic() + 5
        while "10.0.0.1" not in ex._ahead_failed and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(RemoteError, match=r"^10\.0\.0\.1: cannot reach over SSH \(.*refused"):
            ex.conn("10.0.0.1")
        assert opened == ["10.0.0.1"]  # once, ahead: the step was told what it found
        with pytest.raises(RemoteError):
            ex.conn("10.0.0.1")
        assert opened == ["10.0.0.1", "10.0.0.1"]
    finally:
        ex.close()


def test_what_a_signal_handler_says_inside_say_is_printed_not_a_deadlock(capsys):
    """The SIGINT handler says what it does; it runs in the main thread, which may be inside say()
    (seen: `fab deploy` hung for good when Ctrl-C came while it printed `balancer: routes to`)."""
    import signal
    import threading
    said = threading.Event()

    def handler(signum, frame):
        progress.say("interrupt: nested")
        said.set()

    def stuck(signum, frame):  # a blocked lock acquire lets signal handlers run: fail, do not hang
        raise AssertionError("say() inside say() waited for itself")
    previous = signal.signal(signal.SIGUSR1, handler), signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 5)
    try:
        with progress._print_lock:  # as inside say(), when the signal arrives
            signal.raise_signal(signal.SIGUSR1)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGUSR1, previous[0])
        signal.signal(signal.SIGALRM, previous[1])
    assert said.is_set() and "interrupt: nested" in capsys.readouterr().err


@pytest.mark.parametrize("fails_with", [EOFError(), OSError("socket closed"), None])
def test_a_keepalive_answered_sets_the_event_and_one_cut_off_is_no_answer_nor_a_thread_error(fails_with):
    import threading
    from tasks.net.executor import _ask_keepalive

    class Transport:
        def global_request(self, kind, wait):
            assert (kind, wait) == ("keepalive@openssh.com", True)
            if fails_with is not None:
                raise fails_with
    answered = threading.Event()
    _ask_keepalive(Transport(), answered)
    assert answered.is_set() is (fails_with is None)


def test_a_channel_opened_ahead_and_discarded_after_its_connection_died_is_dropped_quietly():
    from tasks.net.executor import _Spare

    class Channel:
        closes = 0

        def close(self):
            Channel.closes += 1
            raise EOFError()  # paramiko, writing the close on a connection gone

    class Transport:
        def open_session(self, timeout):
            return Channel()
    spare = _Spare(Transport(), timeout=1)
    assert spare._ready.wait(5)
    spare._discard()
    assert Channel.closes == 1
