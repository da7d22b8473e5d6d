import pytest

from tasks.model.roles import MEMBER, WORKER, first_members, joins_as, roles, to_promote, workers

MACHINES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]


def test_a_machine_is_a_member_iff_etcd_lists_it():
    assert roles(MACHINES, ["10.0.0.2", "10.0.0.4", "10.0.0.5"]) == {
        "10.0.0.1": WORKER, "10.0.0.2": MEMBER, "10.0.0.3": WORKER, "10.0.0.4": MEMBER, "10.0.0.5": MEMBER}
    assert workers(MACHINES, ["10.0.0.2", "10.0.0.4", "10.0.0.5"]) == ["10.0.0.1", "10.0.0.3"]


def test_a_cluster_installed_before_workers_stays_all_members():
    assert set(roles(MACHINES, MACHINES).values()) == {MEMBER}


def test_a_member_the_cluster_file_lacks_is_still_a_member():
    assert roles(MACHINES[:2], ["10.0.0.2", "10.0.0.9"]) == {
        "10.0.0.1": WORKER, "10.0.0.2": MEMBER, "10.0.0.9": MEMBER}


def test_setup_makes_the_first_machines_members():
    assert first_members(MACHINES, 3) == MACHINES[:3]
    assert first_members(MACHINES[:2], 5) == MACHINES[:2]
    with pytest.raises(ValueError):
        first_members(MACHINES, 0)


@pytest.mark.parametrize("count, cap, role", [(2, 3, MEMBER), (3, 3, WORKER), (5, 5, WORKER), (6, 5, WORKER),
                                              (0, 1, MEMBER)])
def test_a_new_machine_joins_as_a_member_until_the_members_are_complete(count, cap, role):
    assert joins_as(count, cap) == role


def test_the_promoted_worker_is_the_first_that_answers():
    assert to_promote(["10.0.0.4", "10.0.0.5"], {"10.0.0.5", "10.0.0.1"}) == "10.0.0.5"
    assert to_promote(["10.0.0.4", "10.0.0.5"], set()) is None
