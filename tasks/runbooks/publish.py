"""Publishing a release: build on the build server, then push what changed.

The first half of every deploy, and of the sandbox's and the tests' own installs: ``publish``
builds every component (``tasks.runbooks.build``), lets the registry decide each changed image's
version and pushes it (``tasks.runbooks.push``), and returns the release with what made it:
the main commit and branch, every source checkout and every component's build inputs, as the
release records keep them. Given the cluster's release record, it builds nothing when the
checkouts and build inputs are those the record keeps and the registry's tags still hold its
images (one request per image): that release is the one published. Otherwise a component whose
build inputs alone are the record's is not built again when its candidate on the build server is
still the image the release runs (a change to the second repository builds the static website
alone).
"""
from __future__ import annotations

from dataclasses import field
from typing import Callable, Optional

from tasks.model.frozen import frozen
from tasks.model.release import Release
from tasks.net.progress import say
from tasks.runbooks.build import build_images, check_out
from tasks.runbooks.push import moved_tag, push_all

META = ("branch", "commit", "sources", "inputs")  # what a release record keeps of its build


@frozen
class Published:
    release: Release
    steps: list       # push's steps (``dry``: the steps push would take; none when nothing was built)
    built: dict       # build_all's answer: images, commit, branch, base, sources, inputs
    extra: dict = field(default_factory=dict)  # more for the release record (a deploy's message)

    @property
    def meta(self) -> dict:
        """What a release record keeps of its build (and ``extra``)."""
        return {**{key: self.built[key] for key in META if key in self.built}, **self.extra}


def publish(ex, host: str, branch=None, dry: bool = False, recorded: Optional[dict] = None,
            before_push: Optional[Callable] = None) -> Published:
    """Build at ``branch`` (a branch, ``--branch`` values or Branches) on ``host``, then push what
    changed (``dry``: plan the push only). ``recorded``: the cluster's release record; when its
    sources and build inputs are the checkouts' now and the registry's tags still hold its images,
    nothing is built and its release is returned.
    ``before_push(release, built)``: called with the release about to be pushed (or the recorded one,
    when nothing is built), before anything is pushed (a deploy's pre_deploy hook); its error stops
    the publish there."""
    # The registry is asked whether the recorded release's tags still hold its images while the
    # checkouts are updated: the answer is ready when they are found unchanged.
    current = Release.from_dict(recorded) if recorded is not None else None
    held = ex.meanwhile(moved_tag, ex, current) if current is not None else None
    checked = check_out(ex, host, branch)
    meta = checked.meta(ex.cluster)
    if held is not None and recorded is not None and current is not None and unchanged(recorded, meta):
        moved = held.result()
        if moved is None:
            say(f"build: every source and build input is release {recorded['id']}'s: nothing to build")
            if before_push is not None:
                before_push(current, meta)
            return Published(current, [], meta)
        say(f"build: the registry's {moved} no longer holds release {recorded['id']}'s image: building")
    reuse = reusable(current, recorded.get("inputs") or {}, meta) if recorded is not None and current is not None \
        else None
    built = build_images(ex, host, checked, reuse=reuse)
    before = (lambda release: before_push(release, built)) if before_push else None
    release, steps = push_all(ex, host, built["images"], dry=dry, before=before)
    return Published(release, steps, built)


def reusable(release: Release, inputs: dict, meta: dict) -> dict:
    """component -> the image ID ``release`` runs, for each component whose build inputs are
    ``inputs``' (what its record keeps): its build would make that image again (its candidate on
    the build server is used when it still is that image). Pure."""
    return {c: release.image(c).digest for c, digest in meta["inputs"].items()
            if inputs.get(c) == digest and c in release.components()}


def unchanged(recorded: dict, meta: dict) -> bool:
    """Whether a release record was built from exactly ``meta``'s sources and inputs (a record
    written before build inputs were kept never is). Pure."""
    return all(recorded.get(key) == meta[key] for key in ("sources", "inputs")) and \
        set(recorded.get("components", {})) == set(meta["inputs"])
