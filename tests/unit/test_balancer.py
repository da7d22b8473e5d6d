"""The balancer: the routers file rendered and read back (pure), and what ``Routers`` runs.

``balancer_config`` is text in, text out; ``balancer.Routers`` reads the
file first and only writes, validates and reloads when the machine list
changes, which is checked here on the recording executor.
"""
from types import SimpleNamespace

import pytest

from tasks import balancer
from tasks.balancer_config import BACKEND, HEADER, machines_in, main_config, routers_file
from tasks.errors import LostLock

from .fakes import FakeExecutor, FakeFence

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


# ---------------------------------------------------------------- Routers, on the recording executor

CLUSTER = SimpleNamespace(balancer=SimpleNamespace(
    host="10.0.0.100", port=80, routers_file="/etc/haproxy/air-routers.cfg", config="/etc/haproxy/haproxy.cfg"))
CANDIDATE = "/etc/haproxy/air-routers.cfg.air-candidate-run1"


@pytest.fixture
def ex():
    """An executor whose balancer's routers file lists 10.0.0.1 and 10.0.0.2."""
    fake = FakeExecutor(CLUSTER)
    fake.files[("10.0.0.100", "/etc/haproxy/air-routers.cfg")] = (ROUTERS, 0o644)
    return fake


def test_set_with_nothing_to_change_neither_writes_nor_reloads(ex):
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2"]) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []
    assert ("10.0.0.100", CANDIDATE + ".staged") not in ex.files


def test_set_ignores_repeated_machines(ex):
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2", "10.0.0.1"]) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_set_writes_a_candidate_checks_it_then_swaps_and_reloads(ex):
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert ex.files[("10.0.0.100", CANDIDATE + ".staged")] == \
        (routers_file(80, ["10.0.0.1", "10.0.0.2", "10.0.0.3"]), 0o644)
    assert ex.commands(changes_only=True) == [
        f"mkdir -p /etc/haproxy && mv -f {CANDIDATE}.staged {CANDIDATE} && "
        f"haproxy -c -q -f /etc/haproxy/haproxy.cfg -f {CANDIDATE} && "
        f"mv -f {CANDIDATE} /etc/haproxy/air-routers.cfg && systemctl reload haproxy",
    ]


def test_add_of_a_listed_machine_changes_nothing(ex):
    assert balancer.Routers(ex).add("10.0.0.2") == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_remove_of_an_unlisted_machine_changes_nothing(ex):
    assert balancer.Routers(ex).remove("10.0.0.9") == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True) == []


def test_remove_writes_the_others(ex):
    assert balancer.Routers(ex).remove("10.0.0.1") == ["10.0.0.2"]
    assert ex.files[("10.0.0.100", CANDIDATE + ".staged")][0] == routers_file(80, ["10.0.0.2"])


def test_set_with_reload_reloads_even_when_the_file_is_right(ex):
    # After setup-cluster the file may already be right while haproxy still counts the freshly
    # installed machines as down: the reload starts its checks afresh.
    assert balancer.Routers(ex).set(["10.0.0.1", "10.0.0.2"], reload=True) == ["10.0.0.1", "10.0.0.2"]
    assert ex.commands(changes_only=True)[-1].endswith("&& systemctl reload haproxy")


def test_a_lost_lock_stops_the_change_before_the_balancer_is_touched(ex):
    ex.fence = FakeFence()
    ex.fence.lose()
    with pytest.raises(LostLock):
        balancer.Routers(ex).remove("10.0.0.1")
    assert ex.commands(changes_only=True) == [] and ("10.0.0.100", CANDIDATE + ".staged") not in ex.files
