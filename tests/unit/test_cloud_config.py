"""tasks/runbooks/cloud_config.py: where `fab cloudconfig.base --output` writes, and where it refuses to."""
import os
import stat

import pytest

from tasks.model.errors import ConfigError
from tasks.runbooks.cloud_config import write_private


def test_a_symlink_as_output_is_refused_and_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.write_text("kept\n")
    link = tmp_path / "user_data"
    link.symlink_to(target)
    with pytest.raises(ConfigError) as refused:
        write_private(str(link), "#cloud-config\n")
    assert str(refused.value) == f"--output: {link} is a symbolic link: refused (not followed)"
    assert target.read_text() == "kept\n"


def test_the_output_is_written_for_its_owner_only(tmp_path):
    path = tmp_path / "user_data"
    path.write_text("old, longer content\n")
    path.chmod(0o644)
    write_private(str(path), "#cloud-config\n")
    assert path.read_text() == "#cloud-config\n"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
