"""The connector contract (tasks.net.connector): the executor and the tests' recording fake both fulfil it."""
import inspect

import pytest

from tasks.net.connector import Connector
from tasks.net.executor import Executor

from .fakes import FakeExecutor

METHODS = sorted(name for name, value in vars(Connector).items()
                 if callable(value) and not name.startswith("_"))


def test_the_contract_names_what_runbooks_use():
    assert METHODS == ["check", "close", "finishing", "in_flight", "parallel", "reachable", "read", "read_file",
                       "run", "stage_files", "stuck", "write_file", "write_files"]


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
