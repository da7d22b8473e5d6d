"""The pure decisions of a rolling upgrade: how many machines at once, and what each machine needs."""
import pytest

from tasks.upgrade import NOTHING, READD, UPGRADE, batch_limit, machine_action

ACTIVE = {"air-router.service": "active", "air-web.service": "active"}


@pytest.mark.parametrize("machines, wanted, allowed", [
    (1, 1, 1),   # a lone machine is still upgraded, one at a time
    (2, 5, 1),   # never both of two
    (3, 1, 1),
    (3, 2, 1),   # 2 of 3 out would leave a minority serving
    (4, 3, 1),
    (5, 2, 2),
    (5, 9, 2),
    (7, 3, 3),
    (7, 4, 3),
    (3, 0, 1),   # a batch below one means one
    (5, "2", 2),  # straight from the command line
])
def test_batch_limit_keeps_a_majority_in_the_balancer(machines, wanted, allowed):
    assert batch_limit(machines, wanted) == allowed
    # One at a time is the floor: with one or two machines no batch keeps a strict majority.
    assert allowed == 1 or machines - allowed > machines // 2


def test_a_machine_serving_the_release_is_left_alone():
    assert machine_action("r1", ACTIVE, True, "r1") == NOTHING


def test_another_release_or_none_is_upgraded():
    assert machine_action("r0", ACTIVE, True, "r1") == UPGRADE
    assert machine_action("", {}, False, "r1") == UPGRADE


@pytest.mark.parametrize("state", ["inactive", "failed", "activating"])
def test_a_unit_not_active_means_the_release_is_not_running(state):
    # The release file is written before the start: a deploy killed in between leaves it right.
    assert machine_action("r1", {**ACTIVE, "air-web.service": state}, True, "r1") == UPGRADE
    assert machine_action("r1", {**ACTIVE, "air-web.service": state}, False, "r1") == UPGRADE


def test_no_unit_facts_is_not_taken_for_running():
    assert machine_action("r1", {}, True, "r1") == UPGRADE


def test_running_but_out_of_the_balancer_is_only_put_back():
    assert machine_action("r1", ACTIVE, False, "r1") == READD
