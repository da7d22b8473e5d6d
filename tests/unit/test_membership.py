"""When removing an etcd member is safe (membership.removal_problem), and upgrade's batch size: pure rules."""
import pytest

from tasks.model.rollout_plan import batch_limit
from tasks.runbooks.membership import quorum, removal_problem

A, B, C, D, E = "10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"


@pytest.mark.parametrize("voters, needed", [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (6, 4), (7, 4)])
def test_quorum(voters, needed):
    assert quorum(voters) == needed


def test_three_members_all_up_one_may_go():
    assert removal_problem([A, B, C], {A, B, C}, B) is None


def test_three_members_one_down_removing_a_healthy_one_is_refused():
    assert removal_problem([A, B, C], {A, B}, B) == (
        "the 2 members left need 2 running for quorum, but only 1 answer (10.0.0.3 down)")


def test_three_members_one_down_removing_the_down_one_is_safe():
    assert removal_problem([A, B, C], {A, B}, C) is None


@pytest.mark.parametrize("alive", [{A, B}, {A}, set()])
def test_two_members_never_shrink_to_one(alive):
    assert removal_problem([A, B], alive, B) == "it would leave 1 etcd member (no redundancy at all)"


def test_one_member_cannot_be_removed():
    assert removal_problem([A], {A}, A) == "it would leave 0 etcd member (no redundancy at all)"


def test_five_members_two_down_removing_a_healthy_one_is_refused():
    assert removal_problem([A, B, C, D, E], {A, B, C}, A) == (
        "the 4 members left need 3 running for quorum, but only 2 answer (10.0.0.4, 10.0.0.5 down)")


def test_five_members_two_down_removing_a_down_one_is_safe():
    assert removal_problem([A, B, C, D, E], {A, B, C}, E) is None


def test_five_members_one_down_removing_a_healthy_one_is_safe():
    assert removal_problem([A, B, C, D, E], {A, B, C, D}, A) is None


def test_an_address_outside_the_members_does_not_count_as_alive():
    assert removal_problem([A, B, C], {A, D, E}, B) == (
        "the 2 members left need 2 running for quorum, but only 1 answer (10.0.0.3 down)")


@pytest.mark.parametrize("machines, wanted, limit", [
    (1, 1, 1), (1, 3, 1), (2, 2, 1), (3, 1, 1), (3, 3, 1), (4, 2, 1),
    (5, 1, 1), (5, 2, 2), (5, 9, 2), (7, 3, 3), (7, 4, 3), (7, "2", 2), (3, 0, 1),
])
def test_batch_limit_keeps_a_majority_in_the_balancer(machines, wanted, limit):
    assert batch_limit(machines, wanted) == limit
    if machines > 2:
        assert machines - limit > machines // 2
