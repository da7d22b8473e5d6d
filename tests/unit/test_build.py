"""The build server's command lines, and branch names refused before anything runs."""
import pytest

from tasks.build import check_branch, checkout_script, context_command
from tasks.errors import ConfigError


def test_checkout_script_clones_or_fetches_and_detaches_at_the_branch_tip():
    assert checkout_script("git@example.org:air.git", "/aircloak/air_stage/air", "release/2.1") == "\n".join([
        "set -e",
        "if [ -d /aircloak/air_stage/air/.git ]; then git -C /aircloak/air_stage/air fetch -q --prune origin;",
        "else mkdir -p /aircloak/air_stage && git clone -q --no-checkout git@example.org:air.git /aircloak/air_stage/air; fi",
        "if ! git -C /aircloak/air_stage/air rev-parse -q --verify refs/remotes/origin/release/2.1 >/dev/null; then",
        "  echo 'no branch release/2.1 in git@example.org:air.git' >&2; exit 3; fi",
        "git -C /aircloak/air_stage/air checkout -q -f --detach refs/remotes/origin/release/2.1",
        "git -C /aircloak/air_stage/air clean -q -f -d -x",
        "git -C /aircloak/air_stage/air rev-parse HEAD",
    ])


def test_context_command_quotes_the_folder():
    assert context_command("/srv/a b", "components/router") == \
        "tar -C '/srv/a b/components/router' --exclude=./.git -c ."


def test_context_command_of_the_checkouts_root():
    assert context_command("/srv/air", ".") == "tar -C /srv/air --exclude=./.git -c ."


@pytest.mark.parametrize("branch", ["master", "release/2.1", "feature/x_y-z.3", "a" * 200])
def test_plain_branch_names_pass(branch):
    assert check_branch(branch) == branch


@pytest.mark.parametrize("branch", [
    "x;touch /tmp/pwned", "$(id)", "a b", "-rf", "../up", "a..b", "a//b", "dir/", "x.lock", "a/.hidden",
    "", "a" * 201, "`id`", "a|b", "a\nb", None,
])
def test_odd_branch_names_are_refused_with_one_line(branch):
    with pytest.raises(ConfigError) as error:
        check_branch(branch)
    assert "\n" not in str(error.value).replace(repr(branch), "")
    assert "not a valid branch name" in str(error.value)
