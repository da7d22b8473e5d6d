"""Image versions: MAJOR.MINOR from the VERSION file, PATCH from the registry.

This module owns the versioning rule and contacts nothing. The registry is the
authority for what exists (an image's tags, and the config digest of the
newest one); ``decide`` turns that into the version a freshly built image gets.
An image equal to the newest tag keeps that version, so rebuilding unchanged
source is a no-op; a different image gets the next patch, or ``.0`` when
VERSION moved on. VERSION going backwards is a ConfigError. Nothing is kept on
the build server.

The semver package is used here and nowhere else, and imported when first needed (not by `fab`
starting: it is 3 ms of a start-up that lists tasks).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Iterable, Optional, Tuple

from tasks.model.errors import ConfigError
from tasks.model.frozen import frozen

if TYPE_CHECKING:
    import semver

MAJOR_MINOR = re.compile(r"(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)")


def parse_version(text: str, where) -> Tuple[int, int]:
    """(major, minor) from the text of a VERSION file; ``where`` names it in errors."""
    text = text.strip()
    match = MAJOR_MINOR.fullmatch(text)
    if not match:
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise ConfigError(f"{where}: expected MAJOR.MINOR (e.g. 1.0 or 1.10), got {shown!r}")
    return int(match[1]), int(match[2])


def newest(tags: Iterable[str]) -> Optional[semver.Version]:
    """The highest plain MAJOR.MINOR.PATCH tag; ``latest``, junk, pre-releases and builds are ignored."""
    import semver
    versions = []
    for tag in tags:
        try:
            version = semver.Version.parse(tag)
        except (ValueError, TypeError):
            continue
        if version.prerelease is None and version.build is None:
            versions.append(version)
    return max(versions, default=None)


def next_patch(version: str) -> str:
    """The version after MAJOR.MINOR.PATCH ``version``: its patch plus one."""
    import semver
    return str(semver.Version.parse(version).bump_patch())


@frozen
class Decision:
    version: str             # the tag the new image gets
    changed: bool            # False: the registry already holds this very image as ``version``
    previous: Optional[str]  # the newest version tag before this build, if any


def decide(base, tags, newest_digest: Optional[str], image_digest: str,
           version_file="VERSION") -> Decision:
    """The version of a new image, from VERSION's ``base`` (major, minor), the image's
    registry tags, the config digest of the newest of them and the new image's digest."""
    major, minor = base
    latest = newest(tags)
    if latest is None:
        return Decision(f"{major}.{minor}.0", True, None)
    previous = str(latest)
    if newest_digest is not None and newest_digest == image_digest:
        return Decision(previous, False, previous)
    if (major, minor) == (latest.major, latest.minor):
        return Decision(str(latest.bump_patch()), True, previous)
    if (major, minor) > (latest.major, latest.minor):
        return Decision(f"{major}.{minor}.0", True, previous)
    raise ConfigError(f"{version_file} says {major}.{minor} but the registry already has {previous}: "
                      f"VERSION must not go backwards (set it to {latest.major}.{latest.minor} or later)")
