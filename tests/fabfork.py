"""`fab` runs for the tests without paying Python's and Fabric's start-up at every run.

A test run calls `fab` a few hundred times, and each `python -m fabric` spends about a quarter of a
CPU-second importing Fabric, Invoke, paramiko, docker-py and requests before it reads its first
argument, and another 50 ms importing air-deploy's modules. Here one server process (`python -m
tests.fabfork SOCKET`, one per test process) imports those once: Fabric and the third-party libraries
the tasks use, and every module of `tasks` and `cloudconfig` (none reads the environment or a file
when imported). For each run it forks a child that becomes `python -m fabric ARGS` in the run's
working folder and environment, with the caller's pipes as its standard input, output and error.
The child loads the fabfile, and with it the sandbox's tasks, itself, as a fresh `fab` does
(`sandbox.testbed` reads the environment when imported).

Each run's child is forked by a short-lived supervisor that waits for it and reports its exit status;
the server itself stays single-threaded, so forking it is safe, and frozen for the collector, so the
children share its pages instead of copying them. The server ends when the test process
that started it closes its standard input (at exit, or when it dies).
"""
import gc
import importlib
import json
import locale
import os
import pkgutil
import runpy
import select
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TextIO

# Imported by the server once: what `fab` and air-deploy's tasks import from outside the project,
# and the project's packages whose every module is imported too.
PRELOADED = ("fabric.main", "docker", "requests", "yaml", "etcd3gw", "semver", "cryptography.x509")
PRELOADED_PACKAGES = ("tasks", "cloudconfig")


# ---- the server (its own process) -------------------------------------------------------------

def serve(path: str) -> None:
    for name in PRELOADED:
        importlib.import_module(name)
    for package in PRELOADED_PACKAGES:
        for module in pkgutil.walk_packages(importlib.import_module(package).__path__, f"{package}."):
            importlib.import_module(module.name)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the supervisors are reaped by the kernel
    gc.freeze()  # what is imported stays out of the children's collections: their pages stay shared
    print("ready", flush=True)
    while True:
        try:
            readable, _, _ = select.select([listener, sys.stdin], [], [])
        except KeyboardInterrupt:  # a Ctrl-C at the terminal reaches the whole process group: ours to end
            return
        if sys.stdin in readable:  # our test process closed it: it has ended
            return
        conn, _ = listener.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 20, 3)
        sys.stdout.flush()
        sys.stderr.flush()
        if os.fork() == 0:  # the run's supervisor
            listener.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            pid = os.fork()
            if pid == 0:
                conn.close()
                _become_fab(json.loads(message), fds)  # does not return
            _supervise(conn, pid, fds)  # does not return
        conn.close()
        for fd in fds:
            os.close(fd)


def _supervise(conn, pid: int, fds: list) -> None:
    """Says the run's pid, waits for it and says its exit status; then ends, whatever happened."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is the child's to handle, not ours
        for fd in fds:
            os.close(fd)
        conn.send(f"pid {pid}".encode())
        _, status = os.waitpid(pid, 0)
        conn.send(f"exit {os.waitstatus_to_exitcode(status)}".encode())
    finally:
        os._exit(0)


def _become_fab(request: dict, fds: list) -> None:
    """The run's child: its standard streams, folder and environment, then `python -m fabric ARGS`.
    It exits as `python -m fabric` would: SystemExit's code, or a traceback and 1."""
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["fab", *request["args"]]
    runpy.run_module("fabric", run_name="__main__", alter_sys=True)
    sys.exit(0)


# ---- the test process's side --------------------------------------------------------------------

class FabServer:
    """The server for this test process, started at its first run."""

    def __init__(self, root: Path):
        self.root = root
        self.proc = None
        self.path = None
        self._starting = threading.Lock()  # tests start runs from several threads

    def _start(self) -> None:
        self.path = str(Path(tempfile.mkdtemp(prefix="fabfork-")) / "socket")
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.fabfork", self.path], cwd=self.root,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=os.environ.copy())
        if self.proc.stdout.readline() != b"ready\n":
            raise RuntimeError(f"tests.fabfork did not start (exit {self.proc.wait()})")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stdin.close()
            self.proc.wait(10)
            self.proc = None
            shutil.rmtree(Path(self.path).parent, ignore_errors=True)

    def spawn(self, args, env: dict) -> "Forked":
        """`python -m fabric ARGS` started from the project root with ``env`` (the whole
        environment): as subprocess.Popen([python, -m, fabric, *ARGS], stdin=PIPE, stdout=PIPE,
        stderr=PIPE, text=True)."""
        with self._starting:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        conn.connect(self.path)
        pipes = [os.pipe() for _ in range(3)]  # stdin, stdout, stderr: (read end, write end)
        theirs = [pipes[0][0], pipes[1][1], pipes[2][1]]
        request = {"args": list(args), "env": env, "cwd": str(self.root)}
        socket.send_fds(conn, [json.dumps(request).encode()], theirs)
        for fd in theirs:
            os.close(fd)
        return Forked(conn, [sys.executable, "-m", "fabric", *args],
                      open(pipes[0][1], "w"), open(pipes[1][0]), open(pipes[2][0]))

    def run(self, args, env: dict, input: str = None, timeout: float = None) -> subprocess.CompletedProcess:
        """As subprocess.run([python, -m, fabric, *ARGS], capture_output=True, text=True, ...)."""
        child = self.spawn(args, env)
        try:
            out, err = _communicate(child.stdin, child.stdout, child.stderr, input, timeout)
        except subprocess.TimeoutExpired as late:
            child.kill()
            child.wait()
            late.cmd = child.args
            raise
        return subprocess.CompletedProcess(child.args, child.wait(), _text(out), _text(err))


class Forked:
    """One forked `fab`: what subprocess.Popen offers of it (pid, args, its standard streams as
    text files, returncode, poll, wait, send_signal, kill)."""

    def __init__(self, conn, args: list, stdin: TextIO, stdout: TextIO, stderr: TextIO):
        self._conn = conn
        self.args, self.stdin, self.stdout, self.stderr = args, stdin, stdout, stderr
        self.pid = int(conn.recv(64).split()[1])
        self.returncode = None

    def poll(self):
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._ended(self._conn.recv(64))
            except BlockingIOError:
                pass
        return self.returncode

    def wait(self, timeout: float = None) -> int:
        if self.returncode is None:
            self._conn.setblocking(True)
            self._conn.settimeout(timeout)
            try:
                self._ended(self._conn.recv(64))
            except socket.timeout:
                raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self.returncode

    def _ended(self, message: bytes) -> None:
        self.returncode = int(message.split()[1])
        self._conn.close()

    def send_signal(self, sig) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _communicate(stdin, stdout, stderr, input, timeout):
    """Write ``input`` to the child's standard input and read its outputs to their end (as bytes,
    from the files' descriptors); closes the three files."""
    pending = (input or "").encode()
    out, err = stdout.fileno(), stderr.fileno()
    chunks = {out: [], err: []}
    with selectors.DefaultSelector() as selector:
        if pending:
            selector.register(stdin, selectors.EVENT_WRITE)
        else:
            stdin.close()
        for file in (stdout, stderr):
            selector.register(file, selectors.EVENT_READ)
        deadline = None if timeout is None else time.monotonic() + timeout
        while selector.get_map():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                for key in list(selector.get_map().values()):
                    key.fileobj.close()
                raise subprocess.TimeoutExpired("fab", timeout, b"".join(chunks[out]), b"".join(chunks[err]))
            for key, _ in selector.select(left):
                if key.fileobj is stdin:
                    try:
                        written = os.write(key.fd, pending[:65536])
                    except BrokenPipeError:
                        written = len(pending)
                    pending = pending[written:]
                    if not pending:
                        selector.unregister(stdin)
                        stdin.close()
                    continue
                data = os.read(key.fd, 65536)
                if data:
                    chunks[key.fd].append(data)
                else:
                    selector.unregister(key.fileobj)
                    key.fileobj.close()
    return b"".join(chunks[out]), b"".join(chunks[err])


def _text(data: bytes) -> str:
    """Bytes as subprocess's text mode gives them: decoded as the locale says, with universal newlines."""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")


if __name__ == "__main__":
    serve(sys.argv[1])
