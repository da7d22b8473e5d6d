"""The batch planner on plain data: capacity (N or P% of the machines), one etcd member per group,
the leader last, workers filling the rest, and the failure budget."""
import pytest

from tasks.model.rollout_plan import UPGRADE, Step, groups, stops, unavailable


def steps(*machines) -> list:
    return [Step(m, UPGRADE) for m in machines]


def names(planned) -> list:
    return [[s.machine for s in group] for group in planned]


@pytest.mark.parametrize("machines, max_unavailable, allowed", [
    (12, "25%", 3),
    (8, "25%", 2),
    (10, "15%", 1),    # 1.5 rounds down
    (4, "10%", 1),     # 0.4 rounds down to 0: one at a time is the floor
    (12, "100%", 5),   # never most of the machines: 7 of 12 keep serving
    (3, "50%", 1),
    (12, "4", 4),
    (3, "2", 1),       # 2 of 3 out would leave a minority serving
    (1, "1", 1),       # one machine: it goes out alone (it is all there is)
    (1, "100%", 1),
])
def test_capacity_is_n_or_p_percent_rounded_down_at_least_one_and_never_most(machines, max_unavailable, allowed):
    assert unavailable(machines, max_unavailable) == allowed


def test_one_machine_is_one_group():
    assert names(groups(steps("10.0.0.1"), {"10.0.0.1"}, 1, "3", leader="10.0.0.1")) == [["10.0.0.1"]]


def test_all_members_go_one_at_a_time_the_leader_last_whatever_the_capacity():
    members = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"]
    assert names(groups(steps(*members), set(members), 5, "100%", leader="10.0.0.2")) == \
        [["10.0.0.1"], ["10.0.0.3"], ["10.0.0.4"], ["10.0.0.5"], ["10.0.0.2"]]


def test_without_a_known_leader_members_keep_address_order():
    members = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert names(groups(steps(*members), set(members), 3, "2")) == [["10.0.0.1"], ["10.0.0.2"], ["10.0.0.3"]]


def test_all_workers_go_as_many_at_once_as_the_capacity_allows():
    workers = [f"10.0.1.{i}" for i in range(1, 13)]
    assert names(groups(steps(*workers), set(), 12, "25%")) == [workers[0:3], workers[3:6], workers[6:9], workers[9:12]]


def test_twelve_machines_at_25_percent_five_members_seven_workers():
    members = [f"10.0.0.{i}" for i in range(1, 6)]
    workers = [f"10.0.1.{i}" for i in range(1, 8)]
    assert names(groups(steps(*members, *workers), set(members), 12, "25%", leader="10.0.0.1")) == [
        ["10.0.1.1", "10.0.1.2", "10.0.0.2"],
        ["10.0.1.3", "10.0.1.4", "10.0.0.3"],
        ["10.0.1.5", "10.0.1.6", "10.0.0.4"],
        ["10.0.1.7", "10.0.0.5"],
        ["10.0.0.1"],
    ]


def test_eight_machines_at_25_percent_three_members():
    """The issue's sandbox test: never more than 2 out, never more than one member."""
    members = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    workers = [f"10.0.1.{i}" for i in range(1, 6)]
    assert names(groups(steps(*members, *workers), set(members), 8, "25%", leader="10.0.0.3")) == [
        ["10.0.1.1", "10.0.1.2"],
        ["10.0.1.3", "10.0.0.1"],
        ["10.0.1.4", "10.0.0.2"],
        ["10.0.1.5", "10.0.0.3"],
    ]


def test_only_the_machines_with_steps_are_grouped_and_the_capacity_counts_every_machine():
    """Two of twelve need an upgrade: capacity is 25% of the twelve serving, so both go at once."""
    assert names(groups(steps("10.0.1.3", "10.0.1.9"), {"10.0.0.1"}, 12, "25%")) == [["10.0.1.3", "10.0.1.9"]]


def test_nothing_to_do_is_no_group():
    assert groups([], {"10.0.0.1"}, 3, "1") == []


@pytest.mark.parametrize("members, workers, max_unavailable", [
    (m, w, u) for m in (0, 1, 3, 5) for w in (0, 1, 2, 7, 20) for u in ("1", "2", "3", "25%", "50%", "100%")
    if m + w > 0])
def test_every_plan_keeps_the_rules(members, workers, max_unavailable):
    """Each machine once, no group above the capacity or with two members, the leader's group last,
    and no more groups than the rules force."""
    member_list = [f"10.0.0.{i}" for i in range(1, members + 1)]
    all_steps = steps(*member_list, *[f"10.0.1.{i}" for i in range(1, workers + 1)])
    leader = member_list[0] if member_list else None
    planned = groups(all_steps, set(member_list), len(all_steps), max_unavailable, leader)
    limit = unavailable(len(all_steps), max_unavailable)
    assert sorted(s.machine for group in planned for s in group) == sorted(s.machine for s in all_steps)
    assert all(0 < len(group) <= limit for group in planned)
    assert all(sum(s.machine in member_list for s in group) <= 1 for group in planned)
    if leader:
        assert leader in [s.machine for s in planned[-1]]
    assert len(planned) == max(members, -(-len(all_steps) // limit))


@pytest.mark.parametrize("failed, left_out, max_failures, stop", [
    (0, 0, 0, False),
    (1, 0, 0, True),    # the default: the first failure stops the rollout
    (1, 0, 1, False),   # within the budget, restored: it goes on
    (2, 0, 1, True),
    (3, 0, 3, False),
    (1, 1, 5, True),    # not restored (out of the balancer): capacity is gone, whatever the budget
])
def test_the_failure_budget(failed, left_out, max_failures, stop):
    assert stops(failed, left_out, max_failures) is stop
