"""bench/common.py, the bench scripts' shared helpers: the figures' lines, timing, and how a `fab`
command is run and judged (subprocess replaced: no sandbox, no `fab`)."""
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    # bench/ is not a package, and putting it on sys.path would let bench/sandbox.py shadow the
    # sandbox package for the rest of the run: load the one file under a name of its own.
    spec = importlib.util.spec_from_file_location("bench_common", ROOT / "bench" / "common.py")
    module = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
    return module


common = _load()


class Clock:
    """The `time` module as the module under test sees it: each monotonic() is the next reading."""

    def __init__(self, *readings):
        self.readings = iter(readings)

    def monotonic(self):
        return next(self.readings)


# ---------------------------------------------------------------- summary

def test_summary_lays_out_min_median_max_with_one_decimal_by_default():
    line = common.summary("settings.apply, nothing to change", [2.0, 1.25, 3.5], width=40, note="3 runs")
    assert line == f"{'settings.apply, nothing to change':40} min   1.2 s  median   2.0 s  max   3.5 s  (3 runs)"


def test_summary_with_two_decimals_as_status_prints_it():
    line = common.summary("fab status (whole command)", [0.5, 0.75, 0.25, 1.0], width=48, digits=2,
                          note="target 2 s")
    assert line == (f"{'fab status (whole command)':48} min  0.25 s  median  0.62 s  max  1.00 s  "
                    f"(target 2 s)")


def test_summary_of_one_figure():
    assert common.summary("x", [7.0], width=1, note="1 runs") == "x min   7.0 s  median   7.0 s  max   7.0 s  (1 runs)"


def test_summary_of_no_figures_is_an_error():
    with pytest.raises(ValueError):
        common.summary("x", [], width=1, note="0 runs")


# ---------------------------------------------------------------- seconds and timed

def test_seconds_is_the_wall_time_of_the_step_with_its_arguments(monkeypatch):
    monkeypatch.setattr(common, "time", Clock(10.0, 12.5))
    called = []
    assert common.seconds(lambda *a: called.append(a), 3, 2) == 2.5
    assert called == [(3, 2)]


def test_timed_prints_what_and_seconds_and_returns_them(monkeypatch, capsys):
    monkeypatch.setattr(common, "time", Clock(0.0, 41.25))
    assert common.timed("setup-cluster, 3 machines", lambda: None) == 41.25
    assert capsys.readouterr().out == "setup-cluster, 3 machines:   41.2 s\n"


def test_timed_in_a_column(monkeypatch, capsys):
    monkeypatch.setattr(common, "time", Clock(0.0, 3.0))
    common.timed("down", lambda: None, form=common.COLUMN)
    assert capsys.readouterr().out == f"{'down':40} {3.0:7.1f} s\n"


# ---------------------------------------------------------------- fab

@pytest.fixture
def ran(monkeypatch):
    """The `subprocess` module as bench/common.py sees it: run records each call and answers with
    ``ran.status``."""
    calls = []

    def run(argv, **kwargs):
        calls.append((argv, kwargs))
        return subprocess.CompletedProcess(argv, ran.status, "out\n", "trouble\n")

    ran = type("Ran", (), {"calls": calls, "status": 0})()
    monkeypatch.setattr(common, "subprocess", SimpleNamespace(run=run))
    monkeypatch.setattr(common, "time", Clock(1.0, 3.5))
    return ran


def test_fab_runs_fabric_from_the_project_root_with_env_over_the_environment(ran, monkeypatch):
    monkeypatch.setenv("AIR_BENCH_TEST", "outer")
    result = common.fab("settings.apply", "--cluster", "local", env={"AIR_CLUSTERS_DIR": "/tmp/c"})
    assert result == common.Ran(2.5, "out\n", "trouble\n")
    (argv, kwargs), = ran.calls
    assert argv == [sys.executable, "-m", "fabric", "settings.apply", "--cluster", "local"]
    assert kwargs["cwd"] == ROOT
    assert kwargs["env"]["AIR_CLUSTERS_DIR"] == "/tmp/c" and kwargs["env"]["AIR_BENCH_TEST"] == "outer"


def test_fab_that_fails_ends_the_script_with_its_standard_error(ran):
    ran.status = 1
    with pytest.raises(SystemExit) as stopped:
        common.fab("deploy", "--cluster", "local")
    assert stopped.value.code == "fab deploy --cluster local failed:\ntrouble"


def test_fab_accepts_the_exit_statuses_it_is_told(ran):
    ran.status = 1  # `fab status`: something drifted
    assert common.fab("status", "--cluster", "local", ok=(0, 1)).seconds == 2.5
