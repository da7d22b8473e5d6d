import pytest
import semver

from tasks.model.errors import ConfigError
from tasks.model import version
from tasks.model.version import Decision, decide, newest, parse_version

OLD, NEW = "sha256:" + "a" * 64, "sha256:" + "b" * 64


# ---------------------------------------------------------------- newest

def test_newest_of_no_tags_is_none():
    assert newest([]) is None


def test_newest_ignores_non_version_tags_and_prereleases():
    tags = ["latest", "junk", "1.0", "v1.2.0", "01.0.0", "1.0.1", "1.0.2-rc1", "1.0.3+build5", "1.0.0"]
    assert newest(tags) == semver.Version(1, 0, 1)


def test_newest_compares_as_versions_not_text():
    assert newest(["1.9.0", "1.10.0", "1.2.11"]) == semver.Version(1, 10, 0)


# ---------------------------------------------------------------- decide

def test_no_tags_starts_at_patch_zero():
    assert decide((1, 0), [], None, NEW) == Decision("1.0.0", True, None)


def test_only_non_version_tags_count_as_none():
    assert decide((1, 0), ["latest", "1.0.1-rc1", "build-7"], None, NEW) == Decision("1.0.0", True, None)


def test_new_image_gets_next_patch_of_newest():
    assert decide((1, 0), ["1.0.0", "1.0.1", "latest"], OLD, NEW) == Decision("1.0.2", True, "1.0.1")


def test_gaps_in_patches_are_fine():
    assert decide((1, 0), ["1.0.0", "1.0.7"], OLD, NEW) == Decision("1.0.8", True, "1.0.7")


def test_prereleases_are_ignored():
    assert decide((1, 0), ["1.0.1", "1.0.2-rc1", "1.0.5+b"], OLD, NEW) == Decision("1.0.2", True, "1.0.1")


def test_same_digest_keeps_version_unchanged():
    assert decide((1, 0), ["1.0.0", "1.0.1"], NEW, NEW) == Decision("1.0.1", False, "1.0.1")


def test_same_digest_keeps_version_even_if_version_moved_on():
    assert decide((1, 1), ["1.0.4"], NEW, NEW) == Decision("1.0.4", False, "1.0.4")


def test_version_moved_on_starts_at_patch_zero():
    assert decide((1, 1), ["1.0.0", "1.0.4"], OLD, NEW) == Decision("1.1.0", True, "1.0.4")
    assert decide((2, 0), ["1.9.4"], OLD, NEW) == Decision("2.0.0", True, "1.9.4")


def test_unknown_newest_digest_counts_as_different():
    assert decide((1, 0), ["1.0.3"], None, NEW) == Decision("1.0.4", True, "1.0.3")


def test_version_going_backwards_is_an_error_naming_file_version_and_tag():
    with pytest.raises(ConfigError) as error:
        decide((1, 0), ["1.0.9", "1.1.2"], OLD, NEW, version_file="air/VERSION")
    message = str(error.value)
    assert "air/VERSION" in message and "1.0" in message and "1.1.2" in message
    assert "backwards" in message and "\n" not in message


def test_minor_ten_is_after_minor_nine():
    assert decide((1, 10), ["1.9.3"], OLD, NEW) == Decision("1.10.0", True, "1.9.3")
    assert decide((1, 10), ["1.9.3", "1.10.2"], OLD, NEW) == Decision("1.10.3", True, "1.10.2")


# ---------------------------------------------------------------- parse_version

@pytest.mark.parametrize("text, expected", [
    ("1.0", (1, 0)),
    ("1.10", (1, 10)),
    ("0.3\n", (0, 3)),
    ("  2.7 \n\n", (2, 7)),
])
def test_parse_version(text, expected):
    assert parse_version(text, "build:/air/VERSION") == expected


@pytest.mark.parametrize("text", ["1", "1.0.0", "a.b", "", "\n", "1.", ".1", "01.0", "1.0-rc1", "1.0\n2.0", "major: 1"])
def test_malformed_version_is_an_error_naming_the_file(text):
    with pytest.raises(ConfigError, match="build:/air/VERSION: expected MAJOR.MINOR"):
        parse_version(text, "build:/air/VERSION")


@pytest.mark.parametrize("given, after", [("1.0.0", "1.0.1"), ("1.9.9", "1.9.10"), ("0.10.41", "0.10.42")])
def test_next_patch(given, after):
    assert version.next_patch(given) == after
