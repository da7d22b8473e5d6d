"""The hooks: the environment each gets (pinned by equality), which runs when, and what their
failures do (local `sh -c` processes: no sandbox needed)."""
import json
from dataclasses import replace

import pytest

from tasks.model import hooks as model
from tasks.model.cluster import Hooks, Timeouts
from tasks.model.errors import ConfigError, Interrupted, RemoteError
from tasks.model.hooks import Facts
from tasks.runbooks import hooks
from tasks.runbooks.hooks import HookFailed

FACTS = Facts("prod", performer="ada@laptop", message="Add verified emails", release="r2", previous="r1",
              versions={"worker": "1.0.0", "web": "1.0.1"}, branch="master")


def test_a_hook_gets_the_facts_and_only_the_operators_path_home_and_locale():
    operator = {"PATH": "/usr/bin", "HOME": "/home/ada", "LANG": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "x",
                "SSH_AUTH_SOCK": "/tmp/agent"}
    assert model.environment(replace(FACTS, outcome="succeeded", seconds=12.345), operator) == {
        "PATH": "/usr/bin", "HOME": "/home/ada", "LANG": "C.UTF-8",
        "AIR_CLUSTER": "prod", "AIR_ACTION": "deploy", "AIR_RELEASE": "r2", "AIR_PREVIOUS_RELEASE": "r1",
        "AIR_VERSIONS": '{"web": "1.0.1", "worker": "1.0.0"}', "AIR_BRANCH": "master",
        "AIR_PERFORMER": "ada@laptop", "AIR_MESSAGE": "Add verified emails", "AIR_OUTCOME": "succeeded",
        "AIR_SECONDS": "12.3"}
    assert model.environment(FACTS, {})["AIR_SECONDS"] == ""


def test_after_a_deploy_post_deploy_or_on_failure_runs():
    both = Hooks(post_deploy="notify ok", on_failure="notify bad")
    assert model.after(both, failed=False) == ("post_deploy", "notify ok")
    assert model.after(both, failed=True) == ("on_failure", "notify bad")
    assert model.after(Hooks(post_deploy="notify ok"), failed=True) is None


@pytest.mark.parametrize("message", ["", "  ", "two\nlines", "bell\x07", "x" * 201, None])
def test_a_message_is_one_line_of_text(message):
    with pytest.raises(ConfigError, match="^--message: expected one line of text"):
        model.check_message(message)


def test_a_commit_subject_becomes_the_default_message():
    assert model.check_message(" Fix the login ✓ ") == "Fix the login ✓"
    assert model.subject("Fix \x1b[31mthe\x1b[0m login\nbody\n") == "Fix [31mthe[0m login"


@pytest.fixture
def target(cluster, tmp_path):
    """The unit tests' cluster, its file in tmp_path: hooks run there."""
    return replace(cluster, timeouts=replace(cluster.timeouts, hook=2))


def test_pre_deploy_sees_its_environment_and_its_failure_stops_the_deploy(target, tmp_path, capsys):
    gated = replace(target, hooks=Hooks(pre_deploy="env | grep ^AIR_ | sort > env.txt; echo 'CI is red'; exit 4"))
    with pytest.raises(HookFailed) as failed:
        hooks.gate(gated, FACTS)
    assert str(failed.value) == ("hook pre_deploy failed (exit 4): CI is red; the deploy stopped there: "
                                 "nothing was pushed or changed")
    seen = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines())
    assert seen["AIR_RELEASE"] == "r2" and json.loads(seen["AIR_VERSIONS"]) == FACTS.versions
    assert "hook pre_deploy: CI is red" in capsys.readouterr().err
    hooks.gate(replace(target, hooks=Hooks(pre_deploy="true")), FACTS)  # exit 0: the deploy goes on
    hooks.gate(target, FACTS)  # none: nothing to run


def test_a_hook_past_its_deadline_is_stopped_and_fails(target):
    slow = replace(target, hooks=Hooks(pre_deploy="sleep 30"))
    with pytest.raises(HookFailed, match="^hook pre_deploy: not done within 2 s"):
        hooks.gate(slow, FACTS)


def test_a_failing_post_deploy_is_reported_and_the_outcome_stands(target, tmp_path, capsys):
    noisy = replace(target, hooks=Hooks(post_deploy="echo \"$AIR_OUTCOME $AIR_SECONDS\" > post.txt; exit 2",
                                        on_failure="echo \"$AIR_OUTCOME\" > failure.txt"))
    facts = replace(FACTS)
    with hooks.around(noisy, facts):
        pass
    outcome, seconds = (tmp_path / "post.txt").read_text().split()
    assert outcome == "succeeded" and float(seconds) >= 0
    assert "warning: hook post_deploy failed (exit 2): (no output) (the deploy's outcome stands: succeeded)" \
        in capsys.readouterr().err
    assert not (tmp_path / "failure.txt").exists()


def test_on_failure_runs_after_a_failed_or_interrupted_deploy_and_the_error_goes_on(target, tmp_path):
    noisy = replace(target, hooks=Hooks(post_deploy="touch post.txt", on_failure="echo \"$AIR_OUTCOME\" >> failure.txt"))
    with pytest.raises(RemoteError):
        with hooks.around(noisy, replace(FACTS)):
            raise RemoteError("10.0.0.2: pull failed\nmore")
    with pytest.raises(Interrupted):
        with hooks.around(noisy, replace(FACTS)):
            raise Interrupted("stopped after 10.0.0.1")
    assert (tmp_path / "failure.txt").read_text().splitlines() == \
        ["failed: 10.0.0.2: pull failed", "interrupted: stopped after 10.0.0.1"]
    with pytest.raises(RemoteError):
        with hooks.around(noisy, replace(FACTS), enabled=False):  # --plan: no hook
            raise RemoteError("no")
    assert not (tmp_path / "post.txt").exists() and len((tmp_path / "failure.txt").read_text().splitlines()) == 2


def test_a_rollback_tells_its_hooks_where_it_goes():
    facts = Facts("prod", action="rollback")
    hooks.rolling_back(facts, {"id": "r1", "branch": "main", "components": {"web": {"version": "1.0.0"}}},
                       type("R", (), {"id": "r2"})())
    assert (facts.release, facts.previous, facts.branch, facts.versions) == ("r1", "r2", "main", {"web": "1.0.0"})


def test_timeouts_have_defaults_for_the_release_command_and_hooks(cluster):
    assert (cluster.timeouts.release_command, cluster.timeouts.hook) == (600, 60)
    assert Timeouts(1, 2, 3, 4, 5, 6, 7, 8).hook == 60
