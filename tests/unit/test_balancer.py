"""The balancer: the routers file rendered and read back (pure), and set_machines' plan (remote mocked).

``balancer_config`` is text in, text out; ``balancer.set_machines`` reads the
file first and only writes, validates and reloads when the machine list
changes, which is checked here with ``tasks.remote`` replaced by a mock.
"""
from contextlib import nullcontext
from types import SimpleNamespace

import pytest

from tasks import balancer
from tasks.balancer_config import BACKEND, HEADER, machines_in, main_config, routers_file

ROUTERS = """\
# Written by air-deploy; do not edit by hand.
backend air_routers
    mode tcp
    balance roundrobin
    option redispatch
    retries 3
    default-server check inter 1s fall 2 rise 2
    server 10.0.0.1 10.0.0.1:80
    server 10.0.0.2 10.0.0.2:80
"""


def test_routers_file():
    assert routers_file(80, ["10.0.0.1", "10.0.0.2"]) == ROUTERS


def test_routers_file_without_machines():
    text = routers_file(80, [])
    assert text.startswith(HEADER) and f"backend {BACKEND}\n" in text
    assert "server " not in text.replace("default-server", "")
    assert machines_in(text) == []


def test_routers_file_with_ipv6_machines_brackets_the_address_only():
    text = routers_file(8080, ["fd00::1", "10.0.0.3"])
    assert text.endswith("    server fd00::1 [fd00::1]:8080\n    server 10.0.0.3 10.0.0.3:8080\n")


@pytest.mark.parametrize("machines", [
    [], ["10.0.0.1"], ["10.0.0.3", "10.0.0.1", "10.0.0.2"], ["fd00::1", "fd00::2"], ["2001:db8::a", "10.0.0.9"],
])
def test_machines_in_reads_back_routers_file(machines):
    assert machines_in(routers_file(80, machines)) == machines


def test_machines_in_ignores_default_server_comments_and_nothing():
    text = ("# server 10.9.9.9 10.9.9.9:80\n" + ROUTERS + "    # server 10.8.8.8 10.8.8.8:80\n")
    assert machines_in(text) == ["10.0.0.1", "10.0.0.2"]
    assert machines_in("") == machines_in(None) == []


def test_main_config_sends_its_port_to_the_backend():
    text = main_config(80, "/etc/haproxy/air-routers.cfg")
    assert "    bind :80\n" in text and f"    default_backend {BACKEND}\n" in text


def test_check_command():
    assert balancer.check_command("/etc/haproxy/haproxy.cfg", "/etc/haproxy/air-routers.cfg.air-candidate") == (
        "haproxy -c -q -f /etc/haproxy/haproxy.cfg -f /etc/haproxy/air-routers.cfg.air-candidate")


def test_check_command_quotes_paths():
    assert balancer.check_command("/etc/my haproxy.cfg", "/tmp/x") == "haproxy -c -q -f '/etc/my haproxy.cfg' -f /tmp/x"


# ---------------------------------------------------------------- set_machines, remote mocked

CLUSTER = SimpleNamespace(balancer=SimpleNamespace(
    host="10.0.0.100", port=80, routers_file="/etc/haproxy/air-routers.cfg", config="/etc/haproxy/haproxy.cfg"))


@pytest.fixture
def remote(mocker):
    """tasks.balancer's remote, with a balancer whose routers file lists 10.0.0.1 and 10.0.0.2."""
    fake = mocker.patch("tasks.balancer.remote")
    fake.connect.return_value = nullcontext("conn")
    fake.read_file.return_value = ROUTERS
    return fake


def test_set_machines_with_nothing_to_change_neither_writes_nor_reloads(remote):
    assert balancer.set_machines(CLUSTER, ["10.0.0.1", "10.0.0.2"]) == ["10.0.0.1", "10.0.0.2"]
    remote.read_file.assert_called_once_with("conn", "/etc/haproxy/air-routers.cfg", missing="")
    remote.upload_file.assert_not_called()
    remote.run.assert_not_called()


def test_set_machines_ignores_repeated_machines(remote):
    assert balancer.set_machines(CLUSTER, ["10.0.0.1", "10.0.0.2", "10.0.0.1"]) == ["10.0.0.1", "10.0.0.2"]
    remote.run.assert_not_called()


def test_set_machines_writes_a_candidate_checks_it_then_swaps_and_reloads(remote):
    assert balancer.set_machines(CLUSTER, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == \
        ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    candidate = "/etc/haproxy/air-routers.cfg.air-candidate"
    remote.upload_file.assert_called_once_with(
        "conn", candidate, routers_file(80, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]), 0o644)
    assert [c.args[1] for c in remote.run.call_args_list] == [
        f"haproxy -c -q -f /etc/haproxy/haproxy.cfg -f {candidate} && "
        f"mv -f {candidate} /etc/haproxy/air-routers.cfg && systemctl reload haproxy",
    ]


def test_add_of_a_listed_machine_changes_nothing(remote):
    assert balancer.add(CLUSTER, "10.0.0.2") == ["10.0.0.1", "10.0.0.2"]
    remote.upload_file.assert_not_called()
    remote.run.assert_not_called()


def test_remove_of_an_unlisted_machine_changes_nothing(remote):
    assert balancer.remove(CLUSTER, "10.0.0.9") == ["10.0.0.1", "10.0.0.2"]
    remote.upload_file.assert_not_called()
    remote.run.assert_not_called()


def test_remove_writes_the_others(remote):
    assert balancer.remove(CLUSTER, "10.0.0.1") == ["10.0.0.2"]
    remote.upload_file.assert_called_once()
    assert remote.upload_file.call_args.args[2] == routers_file(80, ["10.0.0.2"])


def test_set_machines_with_reload_reloads_even_when_the_file_is_right(remote):
    # After setup-cluster the file may already be right while haproxy still counts the freshly
    # installed machines as down: the reload starts its checks afresh.
    assert balancer.set_machines(CLUSTER, ["10.0.0.1", "10.0.0.2"], reload=True) == ["10.0.0.1", "10.0.0.2"]
    assert remote.run.call_args.args[1].endswith("&& systemctl reload haproxy")
