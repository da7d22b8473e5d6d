"""The tests' forked `fab` (tests/fabfork.py) answers as `python -m fabric` started afresh does."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fabfork

ROOT = Path(__file__).resolve().parents[2]
# Fabric's own prompt, read from standard input when there is no terminal.
PROMPTS = ("--prompt-for-login-password", "--list")


@pytest.fixture(scope="module")
def server():
    forks = fabfork.FabServer(ROOT)
    yield forks
    forks.stop()


def started_afresh(args, env, input=None) -> tuple:
    return answer(subprocess.run([sys.executable, "-m", "fabric", *args], cwd=ROOT, capture_output=True, text=True,
                                 env=env, input=input))


def answer(run: subprocess.CompletedProcess) -> tuple:
    return run.args, run.returncode, run.stdout, run.stderr


@pytest.mark.parametrize("args", [("--list",), ("--version",), ("deploy", "--cluster", "no-such-cluster")])
def test_a_forked_run_answers_as_a_fresh_one(server, args):
    env = dict(os.environ)
    assert answer(server.run(args, env)) == started_afresh(args, env)


def test_a_forked_run_has_the_environment_and_input_it_is_given(server, tmp_path):
    env = {**os.environ, "AIR_CLUSTERS_DIR": str(tmp_path / "elsewhere")}
    forked = server.run(("deploy", "--cluster", "local"), env, input="ignored\n")
    assert answer(forked) == started_afresh(("deploy", "--cluster", "local"), env, input="ignored\n")
    assert forked.returncode == 1 and str(tmp_path / "elsewhere") in forked.stderr, forked.stderr
    answered = server.run(PROMPTS, dict(os.environ), input="secret\n")
    assert answered.returncode == 0 and "Available tasks:" in answered.stdout


@pytest.fixture
def sleepy(tmp_path) -> tuple:
    """`fab` arguments of a task that sleeps for a minute (a fabfile of its own)."""
    (tmp_path / "fabfile.py").write_text("import time\nfrom invoke import task\n\n\n"
                                         "@task\ndef sleepy(c):\n    time.sleep(60)\n")
    return "--search-root", str(tmp_path), "sleepy"


def test_a_run_past_its_timeout_is_killed_and_said_so(server, sleepy):
    started = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired) as late:
        server.run(sleepy, dict(os.environ), timeout=1)
    assert time.monotonic() - started < 10
    assert late.value.cmd == [sys.executable, "-m", "fabric", *sleepy]


def test_a_spawned_run_can_be_signalled_and_waited_for(server, sleepy):
    child = server.spawn(sleepy, dict(os.environ))
    assert child.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == -signal.SIGTERM and child.poll() == -signal.SIGTERM
    for stream in (child.stdin, child.stdout, child.stderr):
        stream.close()


def test_no_preloaded_module_reads_the_environment_when_imported():
    """The server imports `tasks` and `cloudconfig` once for every run: a module-level read of the
    environment there would give each run the server's value instead of its own."""
    import ast
    found = []
    for package in fabfork.PRELOADED_PACKAGES:
        for file in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(file.read_text())
            for statement in tree.body:
                if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    continue  # what runs when called (a class's methods too)
                for node in ast.walk(statement):
                    if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "environb"):
                        found.append(f"{file.relative_to(ROOT)}:{node.lineno}")
    assert found == []


def test_a_ctrl_c_ends_the_server_quietly_and_stop_leaves_nothing_behind():
    forks = fabfork.FabServer(ROOT)
    forks.run(("--version",), dict(os.environ))
    folder = Path(forks.path).parent
    forks.proc.send_signal(signal.SIGINT)  # as a Ctrl-C at the terminal reaches the process group
    assert forks.proc.wait(10) == 0
    forks.stop()
    assert not folder.exists()
