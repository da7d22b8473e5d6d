"""tasks/maintenance.py: the message checked before anything is contacted, the one key switched
(and its v2 twin), and how status shows it."""
from dataclasses import replace
from types import SimpleNamespace

import pytest

from tasks.model import status_view
from tasks.model.errors import ConfigError
from tasks.runbooks import maintenance

from .fakes import FakeEtcd, FakeExecutor

KEY = "/air/prod/app/maintenance"


def test_the_message_is_one_line_of_text_or_the_default():
    assert maintenance.check_message(None) == maintenance.DEFAULT_MESSAGE
    assert maintenance.check_message("  Back at 10:00 <UTC> & \"soon\" ") == "Back at 10:00 <UTC> & \"soon\""


@pytest.mark.parametrize("bad", ["", "   ", "two\nlines", "tab\there", "x" * 501])
def test_a_bad_message_is_refused(bad):
    with pytest.raises(ConfigError, match="--message: expected one line of text"):
        maintenance.check_message(bad)


def test_switch_on_and_off_is_one_key(cluster):
    s = SimpleNamespace(cluster=cluster, etcd=FakeEtcd(), ex=FakeExecutor(cluster))
    maintenance.switch(s, "Upgrading the database")
    assert s.etcd.data == {KEY: "Upgrading the database"} and s.etcd.v2 == {}
    assert maintenance.read(s.etcd, cluster) == "Upgrading the database"
    maintenance.switch(s, None)
    assert s.etcd.data == {} and maintenance.read(s.etcd, cluster) is None


def test_switch_writes_the_v2_twin_when_the_cluster_asks(cluster):
    s = SimpleNamespace(cluster=replace(cluster, etcd_v2=True), etcd=FakeEtcd(), ex=FakeExecutor(cluster))
    maintenance.switch(s, "m")
    assert s.etcd.v2 == {KEY: "m"}
    maintenance.switch(s, None)
    assert s.etcd.v2 == {}


def test_status_line():
    assert status_view.status_line(None) == "maintenance: off"
    assert status_view.status_line("Back soon") == "maintenance: ON (Back soon)"
