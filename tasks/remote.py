"""Running things on the cluster's hosts: the one place that talks SSH.

Everything else builds *what* to run (pure functions returning command
strings, file contents, plans); this module *runs* it. It opens Fabric
connections that check host keys against the cluster's known_hosts file,
runs commands through ``sudo -n`` when the login user is not root, writes
files atomically over SFTP with their mode set before any content arrives
(so secrets are never readable by others, and never in argv), and fans out
per-machine work in threads while keeping each machine's outcome.
"""
from __future__ import annotations

import io
import logging
import shlex
import socket
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, NamedTuple

import paramiko
from fabric import Connection
from invoke.exceptions import CommandTimedOut

from .errors import AirError, ConfigError, RemoteError

_print_lock = threading.Lock()
# paramiko logs a refused tunnel channel at ERROR; our own error line already says what failed.
logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


def say(message: str) -> None:
    """Progress for the operator, on standard error (standard output is for results)."""
    with _print_lock:
        print(message, file=sys.stderr, flush=True)


def q(value) -> str:
    """Quote one value for the remote shell."""
    return shlex.quote(str(value))


def connect(cluster, host: str) -> Connection:
    """A connection to ``host`` with the cluster's login, refusing unknown host keys."""
    known_hosts = cluster.ssh.known_hosts
    if not known_hosts.exists():
        raise ConfigError(f"{cluster.file}: ssh.known_hosts: {known_hosts} does not exist")
    if not cluster.ssh.key.exists():
        raise ConfigError(f"{cluster.file}: ssh.key: {cluster.ssh.key} does not exist")
    conn = Connection(
        host, user=cluster.ssh.user, port=cluster.ssh.port,
        connect_timeout=cluster.timeouts.connect,
        connect_kwargs={"key_filename": [str(cluster.ssh.key)], "look_for_keys": False,
                        "allow_agent": False, "banner_timeout": cluster.timeouts.connect,
                        "auth_timeout": cluster.timeouts.connect},
    )
    conn.client.load_host_keys(str(known_hosts))
    conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
    conn.air_sudo = cluster.ssh.user != "root"
    return conn


def _wrapped(conn: Connection, command: str) -> str:
    if getattr(conn, "air_sudo", False):
        return f"sudo -n sh -c {q(command)}"
    return command


def run(conn: Connection, command: str, *, check: bool = True, stdin: str = None,
        timeout: int = None, what: str = None, stream: bool = False):
    """Run ``command`` on ``conn``'s host; return the invoke Result.

    ``check``: a non-zero exit raises RemoteError naming the host, ``what`` was
    being done and the last lines of its error output. ``stdin``: text sent as
    standard input (the way secrets reach a command). ``stream``: show output
    as it comes (build logs); otherwise it is captured and hidden.
    """
    what = what or command.split("\n")[0][:80]
    try:
        result = conn.run(
            _wrapped(conn, command), hide=not stream, warn=True, pty=False,
            in_stream=io.StringIO(stdin) if stdin is not None else False,
            timeout=timeout,
        )
    except CommandTimedOut:
        raise RemoteError(f"{conn.host}: {what}: no answer within {timeout} s") from None
    except (paramiko.SSHException, OSError, EOFError) as e:
        raise RemoteError(f"{conn.host}: cannot reach over SSH ({_reason(e)})") from None
    if check and result.exited != 0:
        raise RemoteError(f"{conn.host}: {what} failed (exit {result.exited}): {tail(result.stderr or result.stdout)}")
    return result


def _reason(error: Exception) -> str:
    if isinstance(error, paramiko.BadHostKeyException):
        return "host key does not match known_hosts: refusing"
    if isinstance(error, paramiko.SSHException) and "not found in known_hosts" in str(error):
        return "host key not in known_hosts: refusing"
    if isinstance(error, paramiko.ssh_exception.NoValidConnectionsError):
        return f"nothing answers on port {sorted(error.errors)[0][1]}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "no answer (timed out)"
    text = str(error) or type(error).__name__
    return text.splitlines()[0]


def tail(text: str, lines: int = 3) -> str:
    kept = [line for line in (text or "").strip().splitlines() if line.strip()]
    return " | ".join(kept[-lines:]) or "(no output)"


def reachable(conn: Connection) -> str:
    """None when ``conn`` can log in, otherwise why not (one line)."""
    try:
        conn.open()
        return None
    except Exception as e:  # anything that stops a login is an answer here
        return _reason(e)


def upload_file(conn: Connection, path: str, content, mode: int) -> None:
    """Write ``path`` over SFTP as the login user, its mode set before any content is written."""
    try:
        with conn.sftp().open(path, "wb") as remote:
            remote.chmod(mode)
            remote.write(content.encode() if isinstance(content, str) else content)
    except (OSError, paramiko.SSHException) as e:
        raise RemoteError(f"{conn.host}: cannot write {path}: {_reason(e)}") from None


class Staged(NamedTuple):
    swap: str     # the command putting every staged file in place at once
    discard: str  # the command removing them instead


def stage_files(conn: Connection, files) -> Staged:
    """Upload ``(path, content, mode)`` files without putting them in place yet. Each upload has
    its mode before its content: beside its target as ``<path>.air-new``, or, when commands run
    through sudo, in a private staging folder."""
    files = list(files)
    folders = " ".join(q(f) for f in sorted({path.rsplit("/", 1)[0] or "/" for path, _, _ in files}))
    if not getattr(conn, "air_sudo", False):
        run(conn, f"mkdir -p {folders}", what="make folders")
        for path, content, mode in files:
            upload_file(conn, f"{path}.air-new", content, mode)
        return Staged(" && ".join(f"mv -f {q(path + '.air-new')} {q(path)}" for path, _, _ in files),
                      "rm -f " + " ".join(q(path + ".air-new") for path, _, _ in files))
    staging = run(conn, "mktemp -d", what="make a private staging folder").stdout.strip()
    # mktemp ran under sudo; the login user must be able to write into it.
    run(conn, f"chown {q(conn.user)} {q(staging)}", what="own the staging folder")
    for i, (path, content, mode) in enumerate(files):
        upload_file(conn, f"{staging}/{i}", content, mode)
    swap = " && ".join(f"install -m {mode:o} {q(f'{staging}/{i}')} {q(path + '.air-new')} && "
                       f"mv -f {q(path + '.air-new')} {q(path)}" for i, (path, _, mode) in enumerate(files))
    return Staged(f"{{ mkdir -p {folders} && {swap}; }}; status=$?; rm -rf {q(staging)}; exit $status",
                  f"rm -rf {q(staging)}")


def write_files(conn: Connection, files) -> None:
    """Replace each ``(path, content, mode)`` atomically; no file is ever readable with another mode."""
    files = list(files)
    run(conn, stage_files(conn, files).swap, what=f"install {', '.join(p for p, _, _ in files)}"[:120])


def write_file(conn: Connection, path: str, content, mode: int = 0o644) -> None:
    write_files(conn, [(path, content, mode)])


def read_file(conn: Connection, path: str, missing=None):
    """The text of ``path``, or ``missing`` when there is no such file."""
    result = run(conn, f"if [ -e {q(path)} ]; then cat {q(path)}; else exit 3; fi", check=False)
    if result.exited == 3:
        return missing
    if result.exited != 0:
        raise RemoteError(f"{conn.host}: cannot read {path}: {tail(result.stderr)}")
    return result.stdout


def read_bytes(conn: Connection, command: str, what: str) -> bytes:
    """The binary standard output of ``command`` (a tar stream, say)."""
    conn.open()
    channel = conn.client.get_transport().open_session()
    try:
        channel.exec_command(_wrapped(conn, command))
        chunks, errors = [], []
        while True:
            data = channel.recv(1 << 16)
            if not data:
                break
            chunks.append(data)
        while channel.recv_stderr_ready():
            errors.append(channel.recv_stderr(1 << 16))
        status = channel.recv_exit_status()
    finally:
        channel.close()
    if status != 0:
        raise RemoteError(f"{conn.host}: {what} failed (exit {status}): "
                          f"{tail(b''.join(errors).decode(errors='replace'))}")
    return b"".join(chunks)


def parallel(work: Callable, items: Iterable, *, describe: Callable = str) -> list:
    """``work(item)`` for every item at once; results in order, or one AirError naming each failure.

    Every item runs to its end even when another fails, so the error says
    the state of each machine, not only of the first that failed.
    """
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(items))) as pool:
        futures = [pool.submit(work, item) for item in items]
    results, failures = [], []
    for item, future in zip(items, futures):
        error = future.exception()
        if error is None:
            results.append(future.result())
        elif isinstance(error, AirError):
            name = describe(item)
            failures.append(str(error) if str(error).startswith(f"{name}:") else f"{name}: {error}")
        else:
            raise error
    if failures:
        raise RemoteError("; ".join(failures) if len(failures) > 1 else failures[0])
    return results
