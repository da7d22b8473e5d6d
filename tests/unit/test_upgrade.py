"""The pure decisions of a rolling upgrade: how many machines at once, and what each machine needs."""
import pytest

from tasks.model.rollout_plan import NOTHING, READD, UPGRADE, batch_limit, machine_action

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


# ---------------------------------------------------------------- the plan, and who is routed meanwhile

def _cluster():
    from types import SimpleNamespace
    return SimpleNamespace(components=(SimpleNamespace(name="router"), SimpleNamespace(name="web")))


def _facts(release, router, web, units=("active", "active")):
    return {"release": release, "components": {"router": router, "web": web},
            "units": {"air-router.service": units[0], "air-web.service": units[1]}}


def test_plan_restarts_only_what_changes_and_skips_what_serves():
    from tasks.model.release import Image, Release
    from tasks.model.rollout_plan import Step, plan
    release = Release((Image("router", "1.0.0", "sha256:r"), Image("web", "1.0.1", "sha256:w")))
    facts = {
        "10.0.0.3": _facts("old", "1.0.0", "1.0.0"),                            # web changes
        "10.0.0.1": _facts(release.id, "1.0.0", "1.0.1"),                       # serves it already
        "10.0.0.2": _facts(release.id, "1.0.0", "1.0.1"),                       # runs it, not routed
        "10.0.0.4": _facts("old", "0.9.0", "1.0.0", units=("active", "failed")),  # both
    }
    assert plan(_cluster(), release, facts, listed=["10.0.0.1", "10.0.0.3", "10.0.0.4"]) == [
        Step("10.0.0.2", READD),
        Step("10.0.0.3", UPGRADE, ("web",)),
        Step("10.0.0.4", UPGRADE, ("router", "web")),
    ]


def test_routed_takes_the_group_out_and_puts_finished_machines_back():
    from tasks.model.rollout_plan import routed
    members = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    serving = ["10.0.0.1", "10.0.0.3"]  # .2 was out of the balancer when the upgrade began
    assert routed(members, serving, done=[], out=["10.0.0.1"]) == ["10.0.0.3"]
    assert routed(members, serving, done=["10.0.0.1"], out=["10.0.0.2"]) == ["10.0.0.1", "10.0.0.3"]
    assert routed(members, serving, done=["10.0.0.1", "10.0.0.2"], out=["10.0.0.3"]) == ["10.0.0.1", "10.0.0.2"]
    assert routed(members, serving, done=["10.0.0.1", "10.0.0.2", "10.0.0.3"], out=[]) == members


def test_describe_says_what_each_machine_needs():
    from tasks.model.release import Image, Release
    from tasks.model.rollout_plan import Step, describe
    release = Release((Image("web", "1.0.1", "sha256:w"),))
    steps = [Step("10.0.0.2", READD), Step("10.0.0.3", UPGRADE, ("web",))]
    assert describe(steps, ["10.0.0.3", "10.0.0.1", "10.0.0.2"], release) == [
        f"10.0.0.1: already runs {release.id}; nothing to do",
        f"10.0.0.2: runs {release.id}; health check, then back into the balancer",
        f"10.0.0.3: out of the balancer, restart web on {release.id}, health check, back in",
    ]
