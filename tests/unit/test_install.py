"""tasks/runbooks/install.py: what create-admin refuses before anything is contacted."""
import pytest

from tasks.model.errors import ConfigError
from tasks.runbooks import install
from tasks.runbooks.install import check_admin


@pytest.mark.parametrize("email, name", [
    ("a@example.org\r", "Ada"), ("a@example.org", "Ada\r"), ("a@example.org", "Ada\tLovelace"),
    ("a\t@example.org", "Ada"), ("a@example.org", "Ada\n"), ("a@example.org", "\x1b[2JAda"),
    ("example.org", "Ada"), (None, "Ada"), ("a@example.org", ""),
])
def test_create_admin_refuses_an_email_or_name_not_on_one_line(email, name):
    with pytest.raises(ConfigError) as refused:
        check_admin(email, name)
    assert str(refused.value) == "--email (an address) and --name are required, each on one line " \
                                 "without control characters"


def test_create_admin_takes_a_plain_email_and_name():
    assert check_admin("ada@example.org", "Ada Lovelace ✓") is None


def test_the_admin_command_runs_in_its_component_and_an_echoed_password_is_masked(cluster):
    from dataclasses import replace

    from tasks.model.cluster import Admin
    admin = replace(cluster, admin=Admin(component="web", command="/app/bin/create-admin --quiet 'a b'"))
    assert install.admin_command(admin) == "docker exec -i air-web /app/bin/create-admin --quiet 'a b'"
    assert install.masked("bad password Pw-1 for a@b", "Pw-1") == "bad password (password) for a@b"
