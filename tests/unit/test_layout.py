"""What `pip install` ships: the deploy library (tasks, cloudconfig), never the sandbox."""
import configparser
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_ships_the_library_only():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert [p.strip() for p in config["options"]["packages"].split(",")] == ["tasks", "cloudconfig"]


def test_no_module_of_the_library_imports_the_sandbox():
    modules = sorted(p.stem for p in (ROOT / "tasks").glob("*.py") if p.stem != "__init__")
    script = ("import importlib, sys\n"
              f"for name in {modules!r}: importlib.import_module('tasks.' + name)\n"
              "print(sorted(m for m in sys.modules if m == 'sandbox' or m.startswith('sandbox.')))")
    found = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
