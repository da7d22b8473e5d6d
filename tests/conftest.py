"""Shared test fixtures.

Integration tests (tests/integration) share one sandbox for the whole run:
``sandbox`` brings it up once (3 machines and 2 spares) and removes it at
the end, unless AIR_SANDBOX_KEEP=1, which keeps it for fast reruns while
developing. A test that changes the cluster restores what it changed, or
says in its fixture what state it leaves.
"""
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINES, SPARES = 3, 2


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


def fab(*args, env=None, input=None, check=True, timeout=600):
    """Run `fab ARGS` from the project root as a user would; returns the CompletedProcess."""
    proc = subprocess.run([sys.executable, "-m", "fabric", *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, input=input, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"fab {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def error_line(proc) -> str:
    """A `fab` run that failed the way the command line promises: non-zero, no traceback, and
    exactly one `error:` line, its last (progress lines may precede it). Returns that line."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    return errors[0]


def on(cluster, address, command, check=True):
    """Run ``command`` on one host of the cluster over SSH; returns the invoke Result."""
    from tasks import remote
    with remote.connect(cluster, address) as conn:
        return remote.run(conn, command, check=check)


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
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and steps:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", f"timings of {request.module.__name__}")
            for what, seconds in steps:
                reporter.write_line(f"{seconds:7.1f} s  {what}")


@pytest.fixture(scope="session")
def sandbox():
    """The sandbox's status (fab sandbox.status --json), up for the whole session."""
    from tasks import sandbox as sb
    info = sb.bring_up(MACHINES, SPARES)
    yield info
    if os.environ.get("AIR_SANDBOX_KEEP") != "1":
        sb.tear_down()


@pytest.fixture(scope="session")
def local(sandbox):
    from tasks import cluster
    return cluster.load("local")


def serving(cluster) -> bool:
    """True when the cluster's etcd has exactly its machines as started members, a release is
    recorded, every machine runs that release and the balancer lists exactly those machines."""
    from tasks import balancer, machine, remote, state
    from tasks.errors import AirError
    try:
        with state.cluster_etcd(cluster) as client:
            members = client.members()
            release, _ = state.read_release(client, cluster)
        addresses = sorted(state.member_address(m) for m in members)
        if release is None or addresses != sorted(cluster.machines) or any(m.learner or not m.started for m in members):
            return False

        def runs(address):
            with remote.connect(cluster, address) as conn:
                facts = machine.release_facts(conn, cluster)
                return facts["release"] == release.id and set(facts["units"].values()) == {"active"}
        return all(remote.parallel(runs, cluster.machines)) and \
            sorted(balancer.listed(cluster)) == addresses
    except AirError:
        return False


def install_fresh(sandbox, cluster):
    """Reset every sandbox machine to freshly prepared, build and push master, and set the cluster up."""
    from tasks import build, install, push
    from tasks import sandbox as sb
    sb.reset_machines([m["address"] for m in sandbox["machines"]])
    built = build.build_all(cluster, cluster.build.host, cluster.build.branch)
    push.push_all(cluster, cluster.build.host, built["images"])
    install.setup(cluster, list(cluster.machines))


@pytest.fixture(scope="module")
def installed(sandbox, local):
    """The local cluster installed on its 3 machines and serving. Checked at the start of every
    module that uses it and reinstalled only when a previous module left it otherwise."""
    if not serving(local):
        install_fresh(sandbox, local)
    assert serving(local)
    return local
