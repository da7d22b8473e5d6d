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


# ---------------------------------------------------------------- machine.wipe: finishing a removal

@pytest.fixture
def removed(cluster):
    """A session of a 3-member cluster whose balancer routes to those 3; 10.0.0.4 was removed, not wiped."""
    from types import SimpleNamespace

    from tasks.commands.haproxy import routers_file

    from .fakes import FakeEtcd, FakeExecutor
    ex = FakeExecutor(cluster)
    ex.files[(cluster.balancer.host, cluster.balancer.routers_file)] = (routers_file(cluster, [A, B, C]), 0o644)
    ex.answer("echo docker=", stdout="docker=active\netcd_active=active\nuser_data=/var/lib/flatcar-install/user_data\n")
    return SimpleNamespace(cluster=cluster, ex=ex, etcd=FakeEtcd([A, B, C]))


def test_machine_wipe_wipes_a_machine_no_longer_member_nor_routed(removed):
    from tasks.commands.machine import wipe_command
    from tasks.runbooks.membership import wipe_removed
    wipe_removed(removed, D)
    assert removed.ex.commands(D, changes_only=True) == [wipe_command(removed.cluster, "/var/lib/flatcar-install/user_data")]


@pytest.mark.parametrize("address, routed, message", [
    (B, [A, B, C], "10.0.0.2 is an etcd member of prod: `fab remove-machine --cluster prod --machine 10.0.0.2` "
                   "removes and wipes it; nothing was changed"),
    (D, [A, B, C, D], "10.0.0.4 is in the balancer of prod though not an etcd member: `fab balancer.remove "
                      "--cluster prod --machine 10.0.0.4` takes it out first; nothing was changed"),
])
def test_machine_wipe_refuses_a_member_or_a_routed_machine_and_changes_nothing(removed, address, routed, message):
    from tasks.commands.haproxy import routers_file
    from tasks.model.errors import PreflightError
    from tasks.runbooks.membership import wipe_removed
    cluster = removed.cluster
    removed.ex.files[(cluster.balancer.host, cluster.balancer.routers_file)] = (routers_file(cluster, routed), 0o644)
    with pytest.raises(PreflightError) as refused:
        wipe_removed(removed, address)
    assert str(refused.value) == message
    assert removed.ex.commands(changes_only=True) == []


def test_machine_wipe_refuses_a_machine_that_does_not_answer(cluster):
    from types import SimpleNamespace

    from tasks.commands.haproxy import routers_file
    from tasks.model.errors import PreflightError
    from tasks.runbooks.membership import wipe_removed

    from .fakes import FakeEtcd, FakeExecutor
    ex = FakeExecutor(cluster, down=[D])
    ex.files[(cluster.balancer.host, cluster.balancer.routers_file)] = (routers_file(cluster, [A, B, C]), 0o644)
    with pytest.raises(PreflightError, match=r"^10.0.0.4: unreachable \(nothing answers on port 22\); nothing was changed$"):
        wipe_removed(SimpleNamespace(cluster=cluster, ex=ex, etcd=FakeEtcd([A, B, C])), D)


def test_a_removal_whose_wipe_fails_says_machine_wipe_finishes_it(removed, monkeypatch):
    from tasks.model.errors import RemoteError
    from tasks.runbooks import membership
    gone = []
    removed.etcd.remove_member = gone.append
    monkeypatch.setattr(membership, "_probe", lambda ex, a: (True, True, True, "/var/lib/flatcar-install/user_data"))
    monkeypatch.setattr(membership.etcd_backup, "before_change", lambda s, task: None)
    monkeypatch.setattr(membership, "hand_over_leadership", lambda s, old, via: None)
    monkeypatch.setattr(membership.steps, "stop", lambda ex, address: None)

    def wipe(ex, address, user_data):
        raise RemoteError(f"{address}: wipe etcd and the Air units: connection lost (EOF)")
    monkeypatch.setattr(membership.steps, "wipe", wipe)
    with pytest.raises(RemoteError) as failed:
        membership.remove(removed, A, C)
    assert gone == ["3"]  # removed from etcd before the wipe failed
    assert str(failed.value) == (
        "10.0.0.3 was removed from etcd and the balancer, but wiping it failed (10.0.0.3: wipe etcd and the Air "
        "units: connection lost (EOF)); `fab machine.wipe --cluster prod --machine 10.0.0.3` finishes it")


# ---------------------------------------------------------------- workers: the members kept at etcd.members

@pytest.mark.parametrize("members, down, promoted", [
    ([A, B], [], C),            # a member gone: the first worker of the cluster file is promoted
    ([A, B], [C], D),           # ... the first that answers
    ([A, B], [C, D], None),     # none answers: the cluster goes on with 2
    ([A, B, C], [], None),      # the members are complete: nobody is promoted
])
def test_a_members_removal_promotes_the_first_worker_that_answers(cluster, monkeypatch, members, down, promoted):
    from dataclasses import replace
    from types import SimpleNamespace

    from tasks.runbooks import membership

    from .fakes import FakeEtcd, FakeExecutor
    wide = replace(cluster, machines=(A, B, C, D), etcd_members=3)
    chosen = []
    monkeypatch.setattr(membership, "promote_worker", lambda s, worker, now: chosen.append((worker, now)))
    ex = FakeExecutor(wide, down=down)
    ex.answer("echo docker=", stdout="docker=active\netcd_proxy=yes\nuser_data=/u\n")
    s = SimpleNamespace(cluster=wide, ex=ex, etcd=FakeEtcd(members))
    assert membership.keep_members(s, E) == promoted
    assert chosen == ([(promoted, members)] if promoted else [])


def test_the_member_just_removed_and_a_machine_without_the_proxy_are_not_promoted(cluster, monkeypatch):
    from dataclasses import replace
    from types import SimpleNamespace

    from tasks.runbooks import membership

    from .fakes import FakeEtcd, FakeExecutor
    wide = replace(cluster, machines=(A, B, C, D), etcd_members=3)
    monkeypatch.setattr(membership, "promote_worker", lambda s, worker, now: None)
    ex = FakeExecutor(wide)
    ex.answer("echo docker=", stdout="docker=active\netcd_proxy=yes\nuser_data=/u\n")
    assert membership.keep_members(SimpleNamespace(cluster=wide, ex=ex, etcd=FakeEtcd([A, B])), C) == D
    ex = FakeExecutor(wide)
    ex.answer("echo docker=", stdout="docker=active\netcd_proxy=no\nuser_data=/u\n")
    assert membership.keep_members(SimpleNamespace(cluster=wide, ex=ex, etcd=FakeEtcd([A, B])), C) is None
