"""Publishing a release: build on the build server, then push what changed.

The first half of every deploy, and of the sandbox's and the tests' own installs: ``publish``
builds every component (``tasks.runbooks.build``), lets the registry decide each changed image's
version and pushes it (``tasks.runbooks.push``), and returns the release with what made it:
the main commit and branch and every source checkout, as the release records keep them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from tasks.model.release import Release
from tasks.runbooks.build import build_all
from tasks.runbooks.push import push_all


@dataclass(frozen=True)
class Published:
    release: Release
    steps: list       # push's steps (``dry``: the steps push would take)
    built: dict       # build_all's answer: images, commit, branch, base, sources
    extra: dict = field(default_factory=dict)  # more for the release record (a deploy's message)

    @property
    def meta(self) -> dict:
        """What a release record keeps of its build: branch, commit and sources (and ``extra``)."""
        return {**{key: self.built[key] for key in ("branch", "commit", "sources")}, **self.extra}


def publish(ex, host: str, branch=None, dry: bool = False, before_push: Optional[Callable] = None) -> Published:
    """Build at ``branch`` (a branch, ``--branch`` values or Branches) on ``host``, then push what
    changed (``dry``: plan the push only). ``before_push(release, built)``: called with the release
    the push is about to make, before anything is pushed (a deploy's pre_deploy hook); its error stops
    the push."""
    built = build_all(ex, host, branch)
    before = (lambda release: before_push(release, built)) if before_push else None
    release, steps = push_all(ex, host, built["images"], dry=dry, before=before)
    return Published(release, steps, built)
