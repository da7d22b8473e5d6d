"""Shared test fixtures.

Integration tests (tests/integration) share one sandbox for the whole run:
``sandbox`` brings it up once (3 machines and 2 spares) and removes it at
the end, unless AIR_SANDBOX_KEEP=1, which keeps it for fast reruns while
developing. A test that changes the cluster restores what it changed, or
says in its fixture what state it leaves.
"""
import json
import os
import subprocess
import sys
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
