"""What `pip install` ships (the deploy library: tasks and its layers, cloudconfig; never the sandbox),
and the layers' import rule: model and commands are pure, and only `tasks.net` connects."""
import configparser
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ("model", "commands", "net", "runbooks")
# What opens sockets or channels, or carries a task runner: none of it may load with the pure layers.
CONNECTING = ("paramiko", "fabric", "invoke", "requests", "urllib3", "etcd3gw", "docker", "tasks.net", "tasks.runbooks")


def modules(package: str) -> list:
    folder = ROOT.joinpath(*package.split("."))
    return sorted(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__")


def loaded_by(names) -> list:
    """The modules (sys.modules) a fresh interpreter holds after importing ``names``."""
    script = ("import importlib, json, sys\n"
              f"for name in {list(names)!r}: importlib.import_module(name)\n"
              "print(json.dumps(sorted(sys.modules)))")
    found = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(found.stdout)


def under(loaded, roots) -> list:
    return sorted(m for m in loaded if any(m == r or m.startswith(r + ".") for r in roots))


def test_the_package_ships_the_library_only():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    shipped = [p.strip() for p in config["options"]["packages"].split(",")]
    assert shipped == ["tasks"] + [f"tasks.{layer}" for layer in LAYERS] + ["cloudconfig"]
    on_disk = sorted(p.parent.name for p in (ROOT / "tasks").glob("*/__init__.py"))
    assert on_disk == sorted(LAYERS)


def test_tasks_holds_nothing_but_its_layers():
    assert sorted(p.name for p in (ROOT / "tasks").glob("*.py")) == ["__init__.py"]


def test_no_module_of_the_library_imports_the_sandbox():
    library = [m for layer in LAYERS for m in modules(f"tasks.{layer}")] + modules("cloudconfig")
    assert under(loaded_by(library), ["sandbox"]) == []


@pytest.mark.parametrize("package", ["tasks.model", "tasks.commands", "cloudconfig"])
def test_the_pure_layers_load_nothing_that_connects(package):
    names = modules(package) + ([package] if package == "cloudconfig" else [])
    assert under(loaded_by(names), CONNECTING) == []


def test_the_model_imports_no_other_layer():
    loaded = loaded_by(modules("tasks.model"))
    assert under(loaded, ["tasks.commands", "tasks.net", "tasks.runbooks"]) == []


def test_the_network_layer_runs_no_runbook():
    assert under(loaded_by(modules("tasks.net")), ["tasks.runbooks"]) == []


# Loaded when a task first needs them (``tasks.net.deferred``), never by `fab` starting: the HTTP
# stacks, and the certificate code beyond what paramiko itself loads.
DEFERRED = ("requests", "urllib3", "etcd3gw", "docker", "tasks.net.http", "tasks.net.docker_api",
            "tasks.model.certificates", "cryptography.x509")


def test_fab_starts_without_the_http_stacks():
    assert under(loaded_by(["fabric", "fabfile"]), DEFERRED) == []


def test_what_is_deferred_loads_on_first_use():
    script = ("import sys\n"
              "from tasks.net import etcd, registry\n"
              "assert 'requests' not in sys.modules\n"
              "etcd.requests.RequestException, registry.http.ConnectingAdapter\n"
              "print(sorted(m for m in ('requests', 'tasks.net.http', 'etcd3gw.client') if m in sys.modules))")
    found = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["['requests',", "'tasks.net.http']"]


def test_the_machine_images_build_needs_only_the_standard_library():
    """`sandbox/prepare-host` starts it before the Python packages are installed."""
    at_start = set(loaded_by([]))  # what site-packages' .pth files load in any interpreter
    loaded = loaded_by(["sandbox.image"])
    third_party = [m for m in loaded if m not in at_start and m.split(".")[0] not in sys.stdlib_module_names
                   and m.split(".")[0] not in ("sandbox", "tasks")]
    assert third_party == [] and under(loaded, ["tasks"]) == ["tasks", "tasks.model", "tasks.model.errors"]
