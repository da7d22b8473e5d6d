"""Shared test fixtures.

Integration tests (tests/integration) share one sandbox per process:
``sandbox`` brings it up once (3 machines and 2 spares) and removes it at
the end, unless AIR_SANDBOX_KEEP=1, which keeps it for fast reruns while
developing. Run on several pytest-xdist workers (``-n N --dist loadfile``),
each worker has a sandbox of its own (``sandbox.workers``: its prefix,
subnet, state and clusters folder, set in the environment here, before
anything reads it) and runs whole modules, the longest first. A test that
changes the cluster restores what it changed, or says in its fixture what
state it leaves.
"""
import atexit
import http.client
import io
import json
import os
import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from unittest import mock

import fabfork
import pytest
from xdist.scheduler import LoadFileScheduling

from sandbox import workers  # reads nothing of the environment: the worker's own sandbox is put there first

WORKER = os.environ.get("PYTEST_XDIST_WORKER")
os.environ.update(workers.prepared(WORKER, os.environ))

ROOT = Path(__file__).resolve().parent.parent
MACHINES, SPARES = workers.MACHINES, workers.SPARES

# The integration modules, about the longest first (as `--durations` measured them): on several
# workers (``--dist loadfile --no-loadscope-reorder``) each worker takes the next module when it is
# done with one, so the long ones start first and the short ones fill in. test_install leads: it
# sets up fresh machines, which the first module on a new sandbox has without a reset.
# test_release_content comes after test_faults and test_deploy: its image-retention test needs
# fewer deploys of its own on a sandbox whose machines already hold a few images.
# The modules of SECOND_CLUSTER come together: they run as one (``ModulesScheduling``).
LONGEST_FIRST = ("test_install", "test_workers", "test_faults", "test_balancer", "test_etcd_auth", "test_sandbox",
                 "test_etcd_peers", "test_deploy", "test_etcd_backup", "test_builds", "test_release_content",
                 "test_os_upgrade", "test_canary", "test_operator", "test_machines", "test_membership",
                 "test_hardening", "test_images", "test_release_settings", "test_capacity", "test_config",
                 "test_release_phase", "test_gateway", "test_fencing")
# The modules that use the sandbox's second cluster (the `second_cluster` fixture, which `local2`
# uses). They run on one worker, one after the other: its machines are made on one sandbox only
# (about 2.3 s of CPU each, at the start of a run, when every CPU is busy), and it is installed
# there once (12-16 s each time).
SECOND_CLUSTER = ("test_balancer", "test_etcd_auth", "test_sandbox")


class ModulesScheduling(LoadFileScheduling):
    """``--dist loadfile``, with the modules of ``SECOND_CLUSTER`` one unit of work."""

    def _split_scope(self, nodeid: str) -> str:
        module = nodeid.split("::", 1)[0]
        return "second cluster" if Path(module).stem in SECOND_CLUSTER else module


def pytest_xdist_make_scheduler(config, log):
    return ModulesScheduling(config, log) if config.getoption("dist") == "loadfile" else None


def _layout():
    """The sandbox's addresses, as `sandbox.status` reports them (from its layout, which follows
    AIR_SANDBOX_SUBNET): no test writes an address of its own."""
    from sandbox import testbed as sb
    nodes = sb.layout(MACHINES, SPARES)
    role = lambda r: [n.address for n in nodes if n.role == r and n.cluster == "local"]
    user_data = {n.address: n.user_data for n in nodes if n.is_machine}
    return role("machine"), role("spare"), role("balancer")[0], role("build")[0], user_data


# USER_DATA: machine address -> where it keeps its cloud config (Flatcar's or CoreOS's path).
MACHINE_ADDRESSES, SPARE_ADDRESSES, BALANCER_ADDRESS, BUILD_ADDRESS, USER_DATA = _layout()
SUBNET = BALANCER_ADDRESS.rsplit(".", 1)[0]
NOBODY = f"{SUBNET}.99"  # in the sandbox's subnet, but no container has it


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
    unranked = sorted({Path(str(i.fspath)).stem for i in items if "tests/integration" in str(i.fspath)}
                      - set(LONGEST_FIRST))
    if unranked:  # it would run last, on one worker, while the other has nothing left to do
        raise pytest.UsageError(f"tests/conftest.py: LONGEST_FIRST does not place {', '.join(unranked)}")
    sharing = {Path(str(i.fspath)).stem for i in items if "second_cluster" in getattr(i, "fixturenames", ())}
    if not sharing <= set(SECOND_CLUSTER):  # it would install the second cluster on a sandbox of its own
        missing = ", ".join(sorted(sharing - set(SECOND_CLUSTER)))
        raise pytest.UsageError(f"tests/conftest.py: SECOND_CLUSTER does not name {missing}")

    def rank(item):  # unit tests first; within a module, file order (the sort is stable)
        if "tests/integration" not in str(item.fspath):
            return -1
        name = Path(str(item.fspath)).stem
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)


FAB = fabfork.FabServer(ROOT)  # started at the first `fab` run
atexit.register(FAB.stop)


def fab(*args, env=None, input=None, check=True, timeout=600):
    """Run `fab ARGS` from the project root as a user would, in a process of its own (forked from
    one that has Fabric and air-deploy's modules imported: tests/fabfork.py); returns the CompletedProcess."""
    proc = FAB.run(args, {**os.environ, **(env or {})}, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def fab_here(*args, env=None, input="", check=True):
    """``fab`` run in this process, as `python -m fabric` runs it (invoke's Program), for input it
    refuses before contacting any host: the same CompletedProcess (exit status and outputs) with no
    interpreter to start. A traceback would be an exception raised here."""
    from fabric.main import program
    env = env or {}
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with mock.patch.dict(os.environ, env), mock.patch.object(sys, "stdin", io.StringIO(input)), \
            redirect_stdout(out), redirect_stderr(err):
        try:
            program.run(["fab", "--search-root", str(ROOT), *args])
        except SystemExit as stopped:
            code = stopped.code if isinstance(stopped.code, int) else 1
    proc = subprocess.CompletedProcess(["fab", *args], code, out.getvalue(), err.getvalue())
    if check and code != 0:
        raise AssertionError(f"fab {' '.join(args)} exited {code}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def machine_releases(cluster) -> dict:
    """machine -> the release its release file names, read on every machine of ``cluster`` at once."""
    from tasks.runbooks import steps
    return _looking(cluster, lambda ex: dict(zip(cluster.machines, ex.parallel(
        lambda a: steps.release_facts(ex, a)["release"], cluster.machines))))


def routed_in(line: str) -> list:
    """The machines a `balancer: routes to A, B (drained C)` progress line names as routed to."""
    return line.split("routes to", 1)[1].split("(")[0].replace(",", " ").split()


def error_line(proc) -> str:
    """A `fab` run that failed the way the command line promises: non-zero, no traceback, and
    exactly one `error:` line, its last (progress lines may precede it). Returns that line."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


_executors: dict = {}  # cluster -> an Executor kept open for the tests' own looks at it


def executor(cluster, fresh=False):
    """An Executor of ``cluster`` kept open in this process: one SSH connection per host, not one per
    look. ``fresh``: made anew (a host it used was paused, powered off or made afresh meanwhile)."""
    from tasks.net.executor import Executor
    ex = _executors.pop(cluster, None)
    if ex is not None and (fresh or ex._gone):
        ex.close()
        ex = None
    _executors[cluster] = ex = ex or Executor(cluster)
    return ex


def close_executors() -> None:
    while _executors:
        _executors.popitem()[1].close()


def _looking(cluster, look):
    """``look(executor)``, once more on a fresh executor when a kept connection turned out dead
    (the host was restarted or made afresh since): the SSH channel never opened, nothing ran."""
    from tasks.model.errors import AirError
    try:
        return look(executor(cluster))
    except AirError as e:
        if "connection lost" not in str(e) and "cannot reach over SSH" not in str(e):
            raise
    return look(executor(cluster, fresh=True))


def on(cluster, address, command, check=True, stdin=None):
    """Run ``command`` on one host of the cluster over SSH; returns the Result."""
    return _looking(cluster, lambda ex: ex.run(address, command, check=check, stdin=stdin))


def on_each(cluster, command, machines=None, stdin=None) -> dict:
    """machine -> standard output of ``command`` there, over SSH, side by side."""
    machines = list(machines or cluster.machines)
    return _looking(cluster, lambda ex: dict(zip(machines, ex.parallel(
        lambda a: ex.run(a, command, what=command[:40], stdin=stdin).stdout, machines))))


def _etcdctl(cluster, args: str) -> tuple:
    """(command, stdin) running etcdctl ``args`` against a machine's own member, logged in as
    etcd's root when the cluster has a root login: the login goes by standard input, never in a
    command line."""
    from tasks.model import etcd_access
    login = etcd_access.root_login(cluster)
    command = f"ETCDCTL_API=3 etcdctl {args}"
    if login is None:
        return command, None
    return f"read -r ETCDCTL_USER && export ETCDCTL_USER && {command}", f"{login[0]}:{login[1]}\n"


def etcdctl(cluster, address, args: str, check=True):
    """etcdctl ``args`` on ``address`` (see ``_etcdctl``); returns the Result."""
    command, stdin = _etcdctl(cluster, args)
    return _looking(cluster, lambda ex: ex.run(address, command, check=check, stdin=stdin))


def etcdctl_each(cluster, args: str, machines=None) -> dict:
    """machine -> etcdctl ``args``'s standard output there, side by side."""
    command, stdin = _etcdctl(cluster, args)
    return on_each(cluster, command, machines, stdin)


def listed(cluster) -> list:
    """The machines the balancer's routers file lists."""
    from tasks.runbooks import balancer
    return _looking(cluster, lambda ex: balancer.Routers(ex).listed())


def healthy_members(cluster, machines) -> list:
    """The machines whose etcd member answers healthy, asked with etcdctl on each machine (etcd's
    clients listen on its loopback only)."""
    said = etcdctl_each(cluster, "endpoint health 2>&1 || true", machines)
    return sorted(m for m, text in said.items() if " is healthy" in text)


def etcd_leader(cluster) -> str:
    """The address of the member leading etcd, as the first machine's member sees it (on its loopback)."""
    first = cluster.machines[0]
    status = json.loads(etcdctl(cluster, first, "endpoint status -w json").stdout)[0]["Status"]
    listed = json.loads(etcdctl(cluster, first, "member list -w json").stdout)["members"]
    return next(m["name"] for m in listed if m["ID"] == status["leader"])


SHORT_LEASE = 5  # s: the deploy lock's lease in a test that waits for it to run out (the file says 15)
SHORT_HEALTH = 5  # s: timeouts.healthy where a release that never gets healthy is waited out (the file says 20)


def local_copy(folder, **changes) -> dict:
    """clusters/local.yaml copied into ``folder`` with ``changes`` (top-level sections merged), its
    include naming this sandbox's own state; the environment that makes `fab` use it (still the
    cluster `local`)."""
    return cluster_copy("local", folder, **changes)


def cluster_copy(name, folder, **changes) -> dict:
    """``local_copy`` of the sandbox cluster ``name``."""
    import yaml
    from sandbox import testbed as sb
    data = yaml.safe_load((ROOT / "clusters" / f"{name}.yaml").read_text())
    data["include"] = str(sb.fragment_file(name))
    for key, value in changes.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return {"AIR_CLUSTERS_DIR": str(folder)}


@contextmanager
def etcd_of(cluster, via=None):
    """An etcd client of the cluster (no lock taken), found as a task's session finds it, over the
    connections kept open (``executor``): a look at etcd opens no SSH connection (a session of its
    own would open one to every machine)."""
    from tasks.net.session import Session

    def connect(ex):
        s = Session(cluster, ex)
        try:
            return s, s.connect_etcd(via)
        except BaseException:
            s.close()
            raise
    s, client = _looking(cluster, connect)
    try:
        yield client
    finally:
        s.close()


@pytest.fixture(scope="module")
def clock(request):
    """``with clock("what"):`` times a step; a module's steps are printed at its end, even under -q."""
    steps = []

    @contextmanager
    def timed(what):
        started = time.monotonic()
        try:
            yield
        finally:
            steps.append((what, time.monotonic() - started))

    yield timed
    _print_at_end(request, "timings", [f"{seconds:7.1f} s  {what}" for what, seconds in steps])


def _print_at_end(request, title: str, lines: list) -> None:
    """A module's ``lines`` under a heading, shown even under -q (capture set aside)."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and lines:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", f"{title} of {request.module.__name__}")
            for line in lines:
                reporter.write_line(line)


@pytest.fixture(scope="module")
def figures(request):
    """``figures(line)`` keeps a measured figure; a module's figures are printed at its end, even under -q."""
    lines: list = []
    yield lines.append
    _print_at_end(request, "figures", lines)


@pytest.fixture(scope="session")
def sandbox():
    """The sandbox's status (fab sandbox.status --json), up for the whole session."""
    from sandbox import testbed as sb
    # tests/run says so when it has just brought this sandbox up (sandbox.workers up, which ended
    # well): then its status is enough (a bring-up that finds it up costs 2-5 s per worker).
    info = sb.status() if os.environ.get(workers.UP_AHEAD) == "1" else None
    if not (info and info["up"]):
        info = sb.bring_up(MACHINES, SPARES, second=False)  # the second cluster's machines: see `second_cluster`
    yield info
    close_executors()
    if os.environ.get("AIR_SANDBOX_KEEP") != "1":
        sb.tear_down()


@pytest.fixture(scope="session")
def local(sandbox):
    from tasks.model import cluster
    return cluster.load("local")


def serving(cluster) -> bool:
    """True when the cluster's etcd has exactly its machines as started members, a release is
    recorded, every machine runs that release and the balancer lists exactly those machines."""
    from tasks.model.errors import AirError
    from tasks.model import state
    from tasks.runbooks import balancer, records, steps
    try:
        with etcd_of(cluster) as etcd:
            members = etcd.members()
            release, _ = records.read_release(etcd, cluster)
        addresses = sorted(state.member_address(m) for m in members)
        if release is None or addresses != sorted(cluster.machines) or \
                any(m.learner or not m.started for m in members):
            return False

        def runs(ex, address):
            facts = steps.release_facts(ex, address)
            return facts["release"] == release.id and set(facts["units"].values()) == {"active"}
        return _looking(cluster, lambda ex: all(ex.parallel(lambda a: runs(ex, a), cluster.machines))
                        and sorted(balancer.Routers(ex).listed()) == addresses)
    except AirError:
        return False


def stale(cluster, addresses) -> list:
    """Those of ``addresses`` that are not freshly prepared machines, as add-machine's preflight
    judges it (a machine wiped by remove-machine is fresh again; one that runs etcd or units is not)."""
    from tasks.commands import machine
    from tasks.model.errors import AirError
    from tasks.net.executor import Executor
    from tasks.runbooks import steps

    def problems(ex, address) -> list:
        try:
            return machine.fresh_problems(steps.facts(ex, address))
        except AirError as e:  # not answering (stopped by a test that failed): made afresh too
            return [str(e)]
    with Executor(cluster) as ex:
        return [a for a, found in zip(addresses, ex.parallel(lambda a: problems(ex, a), list(addresses))) if found]


def make_fresh(cluster, addresses) -> None:
    """``addresses`` freshly prepared: the ones that are not are made afresh (sandbox.reset_machines)."""
    from sandbox import testbed as sb
    renew = stale(cluster, addresses)
    if renew:
        sb.reset_machines(renew)


def install_fresh(sandbox, cluster):
    """Every sandbox machine freshly prepared, master built and pushed, and the cluster set up."""
    from tasks.runbooks import install
    from tasks.runbooks.publish import publish
    from tasks.net.session import session
    make_fresh(cluster, [m["address"] for m in sandbox["machines"]])
    with session(cluster, etcd=False) as s:
        publish(s.ex, cluster.build.host, cluster.build.branch)
    with session(cluster, etcd=False) as s:
        install.setup(s, list(cluster.machines))


def wait_serving(cluster, within=120) -> bool:
    """True once the cluster serves (``serving``), False when it did not within ``within`` s."""
    deadline = time.monotonic() + within
    while not serving(cluster):
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return True


@pytest.fixture(scope="session")
def second_cluster(sandbox):
    """The sandbox with the second cluster's machines made too (SECOND_CLUSTER's modules ask for it):
    the sandbox's status."""
    from sandbox import testbed as sb
    return sb.bring_up(MACHINES, SPARES)


@pytest.fixture(scope="session")
def local2(second_cluster):
    """The sandbox's second cluster, installed and serving (afresh when an earlier run left it otherwise)."""
    from sandbox import testbed as sb
    from tasks.model import cluster
    local2 = cluster.load("local2")
    if not serving(local2):
        make_fresh(local2, list(local2.machines))
        sb.deploy_one(local2)
    assert serving(local2)
    return local2


@pytest.fixture
def local_serving(installed):
    """The installed cluster, serving at the start of the test (a previous test may have just restarted a machine)."""
    assert wait_serving(installed, 60), "the cluster is not serving at the start of the test"
    return installed


@pytest.fixture(scope="module")
def build_server(local):
    """(executor, build server address)."""
    from tasks.net.executor import Executor
    with Executor(local) as ex:
        yield ex, local.build.host


@pytest.fixture(scope="module")
def registry(local):
    from tasks.net.registry import RegistryClient
    return RegistryClient.for_registry(local.registry)


@pytest.fixture(scope="module")
def installed(sandbox, local):
    """The local cluster installed on its 3 machines and serving. Checked at the start of every
    module that uses it and reinstalled only when a previous module left it otherwise."""
    if not serving(local):
        install_fresh(sandbox, local)
    assert serving(local)
    return local


# ---------------------------------------------------------------- traffic through the balancer

class Poller:
    """Calls ``poll(ex)`` every ``EVERY`` s in a thread, with an Executor of ``cluster`` of its own,
    from ``with`` to its end."""
    EVERY = 0.2

    def __init__(self, cluster):
        self.cluster, self._stop = cluster, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self):
        from tasks.net.executor import Executor
        with Executor(self.cluster) as ex:
            while not self._stop.wait(self.EVERY):
                self.poll(ex)

    def poll(self, ex):
        raise NotImplementedError


class Rotation(Poller):
    """``fewest``: the fewest machines the routers file ever had in rotation (drained ones are not)."""

    def __init__(self, cluster):
        super().__init__(cluster)
        self.fewest = len(cluster.machines)

    def poll(self, ex):
        from tasks.commands.haproxy import machines_in
        try:
            text = ex.read_file(self.cluster.balancer.host, self.cluster.balancer.routers_file, missing="")
        except Exception:  # the balancer paused, say: nothing to read now
            return
        self.fewest = min(self.fewest, len(machines_in(text)))


class Probe:
    """Steady GET /release requests to the balancer in a thread, until stopped or a bound is reached
    (the router's /version without asking the other components: a request fails or not the same
    way, for a fraction of the processes)."""

    def __init__(self, address, port, max_requests=3000, max_seconds=120, interval=0.1):
        self.address, self.port = address, port
        self.max_requests, self.max_seconds, self.interval = max_requests, max_seconds, interval
        self.sent = self.failed = 0
        self.errors = []        # (seconds into the probe, what went wrong), the first few
        self.releases = {}      # release id -> answers naming it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="balancer probe", daemon=True)

    def __enter__(self):
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.seconds = time.monotonic() - self._started

    def _run(self):
        while not self._stop.is_set() and self.sent < self.max_requests \
                and time.monotonic() - self._started < self.max_seconds:
            self.sent += 1
            try:
                answer = get_version(self.address, self.port, path="/release")
                self.releases[answer.get("release")] = self.releases.get(answer.get("release"), 0) + 1
            except Exception as e:  # any failure is what is counted
                self.failed += 1
                if len(self.errors) < 10:
                    self.errors.append((round(time.monotonic() - self._started, 2), repr(e)[:160]))
            self._stop.wait(self.interval)

    @property
    def covered(self) -> bool:
        """True when it stopped because it was told to, not because a bound was reached."""
        return self.sent < self.max_requests and self.seconds < self.max_seconds + 1

    def report(self, what) -> str:
        return (f"{what}: probe sent {self.sent} requests in {self.seconds:.1f} s, {self.failed} failed; "
                f"releases answered: {self.releases}" + (f"; errors: {self.errors}" if self.errors else ""))


def get_version(address, port, timeout=10, path="/version") -> dict:
    conn = http.client.HTTPConnection(address, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise AssertionError(f"HTTP {response.status}: {body[:100]!r}")
    return json.loads(body)


class Running:
    """A `fab` run in the background whose progress lines (standard error) can be waited for."""

    def __init__(self, *args, env=None):
        self.proc = FAB.spawn(args, {**os.environ, **(env or {})})
        self.proc.stdin.close()
        self.lines, self._queue = [], queue.Queue()
        self.arrived: list = []  # time.monotonic() when each of ``lines`` was read
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.arrived.append(time.monotonic())
            self.lines.append(line.rstrip("\n"))
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, prefix: str, within: float = 120) -> str:
        """The next progress line starting with ``prefix``."""
        deadline = time.monotonic() + within
        while True:
            try:
                line = self._queue.get(timeout=max(0.05, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line {prefix!r} within {within} s; so far:\n"
                                     + "\n".join(self.lines)) from None
            if line.startswith(prefix):
                return line

    def finish(self, within: float = 300) -> subprocess.CompletedProcess:
        try:
            self.proc.wait(timeout=within)  # its standard output is a line or two: the pipe does not fill
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError(f"{' '.join(self.proc.args[3:])} did not end within {within} s (killed); "
                                 "so far:\n" + "\n".join(self.lines)) from None
        out = self.proc.stdout.read()
        self._reader.join(5)
        return subprocess.CompletedProcess(self.proc.args, self.proc.returncode, out, "\n".join(self.lines) + "\n")


class Slow(threading.Thread):
    """GET /slow?seconds=N through the balancer, read line by line; keeps what it read and when it ended."""

    def __init__(self, cluster, seconds):
        super().__init__(daemon=True)
        self.cluster, self.seconds = cluster, seconds
        self.lines, self.error, self.ended = [], None, None
        self.started_on = threading.Event()

    def run(self):
        try:
            conn = http.client.HTTPConnection(self.cluster.balancer.host, self.cluster.balancer.http_port,
                                              timeout=self.seconds + 30)
            conn.request("GET", f"/slow?seconds={self.seconds}")
            response = conn.getresponse()
            while True:
                line = response.readline()
                if not line:
                    break
                self.lines.append(line.decode().strip())
                self.started_on.set()
            conn.close()
        except Exception as e:  # what went wrong is what the test reports
            self.error = repr(e)
        finally:
            self.ended = time.monotonic()
            self.started_on.set()

    @property
    def machine(self) -> str:
        return self.lines[0].split()[1].rstrip(",") if self.lines else None

    @property
    def complete(self) -> bool:
        return self.error is None and self.lines[-1:] == ["done"] and len(self.lines) == self.seconds + 2
