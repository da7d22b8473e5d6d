"""A recording fake of the executor (``tasks.net.executor.Executor``): the seam orchestration tests use.

It runs nothing. Each command is recorded as ``(host, command, change)``; its
answer comes from the first scripted rule whose host and text match, else
exit 0 with no output. Files uploaded or staged are kept in ``files``. Its
``check`` is the real rule (interrupt flag, then the fence), so lost-lock and
interrupt paths run as they do for real.
"""
from __future__ import annotations

import threading
from pathlib import Path
from contextlib import contextmanager
from types import SimpleNamespace

from cloudconfig import BASE_SUFFIX
from tasks.commands.machine import BASE_MARK
from tasks.commands.shell import Staged, staged_commands, staging_command
from tasks.model.errors import DeadlineError, RemoteError
from tasks.net.connector import Result
from tasks.net.executor import Executor, parallel


class FakeExecutor:
    def __init__(self, cluster, down=()):
        self.cluster = cluster
        self.fence = None
        self.interrupted = threading.Event()
        self.run_id = "run1"
        self.fan_out = cluster.rollout.parallel
        self.down = dict.fromkeys(down, "nothing answers on port 22") if not isinstance(down, dict) else dict(down)
        self.calls: list = []
        self.files: dict = {}
        self.rules: list = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self.steps: list = []  # (host, what, deadline) of every step outside run
        self.on_run = None  # called with (host, command) before answering: a hook for tests
        self.forgotten: list = []  # hosts whose connection was given up (``forget``), in order
        self.given_up: dict = {}  # host -> the keepalive watcher's verdict (``gave_up_on``)

    # The real rules of what may still change.
    check = Executor.check
    connection_lost = Executor.connection_lost
    finishing = Executor.finishing

    def answer(self, text: str, exited: int = 0, stdout: str = "", stderr: str = "", host: str = None,
               deadline: bool = False, first: bool = False):
        """Commands containing ``text`` (on ``host``, if given) answer so; ``deadline``: they time out.
        ``first``: this rule goes before those already given (a test's own over its fixture's)."""
        self.rules.insert(0 if first else len(self.rules), (host, text, Result(exited, stdout, stderr), deadline))

    def commands(self, host: str = None, changes_only: bool = False) -> list:
        return [c for h, c, change in self.calls if (host is None or h == host) and (change or not changes_only)]

    def reachable(self, host):
        return self.down.get(host)

    def forget(self, host):
        self.forgotten.append(host)

    def gave_up_on(self, host):
        return self.given_up.get(host)

    def conn(self, host):
        if host in self.down:
            raise RemoteError(f"{host}: cannot reach over SSH ({self.down[host]})")
        return SimpleNamespace(host=host, air_sudo=False)

    def run(self, host, command, *, what=None, deadline=None, stdin=None, check=True, change=True, stream=False,
            on_line=None):
        what = what or command.split("\n")[0][:80]
        if change:
            self.check(what)
        self.conn(host)
        with self._lock:
            self.calls.append((host, command, change))
        if self.on_run:
            self.on_run(host, command)
        for rule_host, text, result, times_out in self.rules:
            if text in command and (rule_host is None or rule_host == host):
                if times_out:
                    raise DeadlineError(f"{host}: {what}: not done within {deadline} s (stopped there)")
                if check and result.exited != 0:
                    raise RemoteError(f"{host}: {what} failed (exit {result.exited}): {result.stderr}")
                for line in result.stdout.splitlines() if on_line else ():
                    on_line(line)
                return result
        return Result(0, "", "")

    def read(self, host, command, *, what=None, deadline=None, check=True):
        return self.run(host, command, what=what, deadline=deadline, check=check, change=False)

    def stage_files(self, host, files, *, before=None, after=None, undo=None, what=None, deadline=None) -> Staged:
        """Records each file as ``<path>.staged``; the staging command (``before``, ``after``, ``undo``) is run as sent."""
        files = list(files)
        self.run(host, staging_command(files, before, after, undo), what=what or "stage files", deadline=deadline)
        for path, content, mode in files:
            self.files[(host, path + ".staged")] = (content, mode)
        return staged_commands(files, "/tmp/staging", ".staged")

    def write_files(self, host, files):
        files = list(files)
        staged = self.stage_files(host, files)
        self.run(host, staged.swap, what="install files")
        for path, content, mode in files:
            self.files[(host, path)] = (content, mode)

    def write_file(self, host, path, content, mode=0o644):
        self.write_files(host, [(path, content, mode)])

    def read_file(self, host, path, missing=None):
        found = self.files.get((host, path))
        return missing if found is None else found[0]

    def parallel(self, work, items, *, describe=str):
        return parallel(work, items, describe=describe, at_once=self.fan_out)

    def in_flight(self):
        return []

    def stuck(self):
        return None

    @contextmanager
    def step(self, host, what, deadline):
        self.steps.append((host, what, deadline))
        yield

    def close(self):
        pass


class FakeFence:
    """A lock whose ``confirm`` fails once ``lose()`` was called (a lease expired, a key deleted)."""

    def __init__(self):
        self.lost = None

    def lose(self, why="the key is gone (deleted or expired)"):
        self.lost = why

    def confirmed_by(self, sent):
        pass

    def confirm(self, fresh=0):
        from tasks.model.errors import LostLock
        if self.lost:
            raise LostLock(f"/air/test/lock: {self.lost}")


SNAPSHOT = Path(__file__).parent / "data" / "etcd-snapshot-rev10-4keys.db"  # etcd 3.4's: revision 10, 4 keys


class FakeEtcd:
    """Keys in a dict, and a fixed member list; its snapshot is a recorded one (``SNAPSHOT``)."""

    def __init__(self, members=()):
        self.snapshots = 0
        self.data: dict = {}
        self.v2: dict = {}
        self.users: dict = {}   # name -> {password, roles}
        self.roles: dict = {}   # name -> [perm as the gateway gives it]
        self.calls: list = []   # auth API paths called
        self.auth_enabled = False
        self._members = [SimpleNamespace(id=str(i + 1), name=f"m{i + 1}", peer_urls=(f"http://{m}:2380",),
                                         client_urls=(), learner=False, started=True)
                         for i, m in enumerate(members)]

    def get(self, key):
        return self.data.get(key)

    def put(self, key, value):
        self.data[key] = value

    # etcd's auth API, as the gateway answers it: users, roles and their READ grants (keys base64).

    def auth(self, path, payload, what):
        self.calls.append(path)
        handlers = {
            "user/list": lambda p: {"users": sorted(self.users)},
            "role/list": lambda p: {"roles": sorted(self.roles)},
            "user/get": lambda p: {"roles": sorted(self.users[p["name"]]["roles"])},
            "role/get": lambda p: {"perm": list(self.roles[p["role"]])},
            "user/add": lambda p: self.users.setdefault(p["name"], {"password": p["password"], "roles": set()}),
            "user/changepw": lambda p: self.users[p["name"]].update(password=p["password"]),
            "user/grant": lambda p: self.users[p["user"]]["roles"].add(p["role"]),
            "user/delete": lambda p: self.users.pop(p["name"]),
            "role/add": lambda p: self.roles.setdefault(p["name"], []),
            "role/grant": lambda p: self.roles[p["name"]].append(p["perm"]),
            "role/revoke": lambda p: self.roles[p["role"]].remove(
                next(g for g in self.roles[p["role"]] if g["key"] == p["key"])),
            "role/delete": lambda p: self.roles.pop(p["role"]),
            "enable": lambda p: setattr(self, "auth_enabled", True),
            "disable": lambda p: setattr(self, "auth_enabled", False),
        }
        answer = handlers[path](payload)
        return answer if isinstance(answer, dict) and path.endswith(("list", "get")) else {}

    def log_in_again(self):
        pass

    def get_prefix(self, prefix):
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    def read_many(self, keys=(), prefixes=()):
        self.reads = getattr(self, "reads", 0) + 1
        return {k: self.get(k) for k in keys}, {p: self.get_prefix(p) for p in prefixes}

    def delete(self, key):
        self.data.pop(key, None)

    def members(self):
        return list(self._members)

    def status(self):
        """No leader named unless a test sets ``leader`` (a member's id): the rollout keeps address order."""
        return {"member": "1", "leader": getattr(self, "leader", ""), "raft_term": 2}

    def status_ahead(self):
        self.asked_ahead = getattr(self, "asked_ahead", []) + ["status"]

    def members_ahead(self):
        self.asked_ahead = getattr(self, "asked_ahead", []) + ["members"]

    def snapshot(self):
        self.snapshots += 1
        return SNAPSHOT.read_bytes()

    def count_keys(self, revision=0):
        return 4 if revision == 10 else len(self.data)

    def write_many(self, puts, deletes=()):
        self.writes = getattr(self, "writes", 0) + 1
        self.data.update(puts)
        for key in deletes:
            self.data.pop(key, None)

    # etcd's v2 store: a store of its own
    def v2_put(self, key, value):
        self.v2[key] = value

    def v2_delete(self, key):
        self.v2.pop(key, None)

    def v2_get_prefix(self, prefix):
        return {k: v for k, v in self.v2.items() if k.startswith(prefix)}


@contextmanager
def interrupted_at(ex, text):
    """Set the executor's interrupt flag when a command containing ``text`` runs (as a Ctrl-C would mid-step)."""
    before = ex.on_run

    def hook(host, command):
        if text in command:
            ex.interrupted.set()
    ex.on_run = hook
    try:
        yield
    finally:
        ex.on_run = before


def release_facts_text(release_id: str, components: dict, units, user_data: str, base: str = None,
                       digests=()) -> str:
    """What ``machine.release_facts_command`` prints on a machine in that state; ``base``: the
    text of its kept base cloud config; ``digests``: of the cloud config air-deploy wrote last, and
    of the one there now."""
    text = (f"--release\n{release_id}\n--components\n" + "".join(f"{c} {v}\n" for c, v in components.items())
            + "--units\n" + "".join(f"{u}\n" for u in units) + f"--user_data\n{user_data}\n"
            + "--written\n" + "".join(f"{d}\n" for d in digests))
    return text + (f"{BASE_MARK}{user_data}{BASE_SUFFIX}\n{base}" if base is not None else "")
