"""The connector contract (tasks.net.connector): the executor and the tests' recording fake both fulfil it."""
import inspect

import pytest

from tasks.net.connector import Connector
from tasks.net.executor import Executor

from .fakes import FakeExecutor

METHODS = sorted(name for name, value in vars(Connector).items()
                 if callable(value) and not name.startswith("_"))


def test_the_contract_names_what_runbooks_use():
    assert METHODS == ["check", "close", "finishing", "forget", "in_flight", "parallel", "reachable", "read", "read_file",
                       "run", "stage_files", "step", "stuck", "write_file", "write_files"]


@pytest.mark.parametrize("implementation", [Executor, FakeExecutor])
@pytest.mark.parametrize("name", METHODS)
def test_every_method_takes_the_contracts_parameters(implementation, name):
    wanted = inspect.signature(getattr(Connector, name)).parameters
    found = inspect.signature(getattr(implementation, name)).parameters
    for parameter in wanted.values():
        assert parameter.name in found, f"{implementation.__name__}.{name} lacks {parameter.name}"
        assert found[parameter.name].kind == parameter.kind, f"{implementation.__name__}.{name}: {parameter.name}"
        if parameter.default is not inspect.Parameter.empty:
            assert found[parameter.name].default == parameter.default, f"{implementation.__name__}.{name}: {parameter.name}"


@pytest.mark.parametrize("implementation", [Executor, FakeExecutor])
def test_the_attributes_are_set_by_each_implementation(implementation):
    source = inspect.getsource(implementation.__init__)
    for attribute in Connector.__annotations__:
        assert f"self.{attribute} =" in source, f"{implementation.__name__} never sets {attribute}"


def test_an_ssh_config_in_home_is_never_read(cluster, monkeypatch, tmp_path):
    """A Host entry of ~/.ssh/config for a machine (another address, port, user, a jump host, agent
    forwarding) changes nothing: the cluster file alone says how to connect."""
    from fabric import Connection

    from tasks.net.executor import Executor
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "config").write_text("Host 10.0.0.1\n  HostName 192.0.2.9\n  Port 2222\n  User root\n"
                                          "  ProxyJump evil.example\n  ForwardAgent yes\n  IdentityFile ~/.ssh/x\n")
    monkeypatch.setenv("HOME", str(home))
    for name in ("id_ed25519", "known_hosts"):
        (cluster.file.parent / name).write_text("")
    with Executor(cluster) as ex:
        conn = Connection("10.0.0.1", **ex._settings())
    assert (conn.host, conn.port, conn.user, conn.forward_agent, conn.gateway) == ("10.0.0.1", 22, "core", False, None)
    assert conn.connect_kwargs["key_filename"] == [str(cluster.ssh.key)]
