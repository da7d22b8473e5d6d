"""Pushing the built images: the registry decides each one's version.

For every component, the facts are read first (the image's tags in the
registry and the config digest of the newest one), ``version.decide`` turns
them into a plan, and only then are the changed images tagged and pushed, as
their version and as ``latest``. An image equal to the newest pushed one is
reported unchanged and not pushed. A version tag is never pushed over other
content: right before each push (under the cluster's lock) the planned tag is
read again, and when it holds another image (pushed by hand, or by a second
push that computed the same version) the image takes the next free patch.
The manifest digest the registry gives each push is what the release records
and what machines pull. Registry credentials reach the build server's engine
in the API's auth header, never in argv, a file or a log.
"""
from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Optional

from tasks.commands.build_scripts import NO_COMMIT, candidate
from tasks.model import version
from tasks.model.credentials import load_credentials
from tasks.model.errors import ConfigError, PreflightError, RemoteError
from tasks.model.frozen import frozen
from tasks.model.release import Image, Release
from tasks.net import deferred
from tasks.net.progress import say
from tasks.net import registry as registry_api
from tasks.net.registry import RegistryClient
from tasks.net.session import optional_lock, session
from tasks.runbooks.build import component_commits, read_version
from tasks.runbooks.cli import NO_LOCK_HELP, air_task, build_host, cluster_of

if TYPE_CHECKING:
    from docker import errors as docker_errors

    from tasks.net import docker_api
else:
    docker_api, docker_errors = deferred("tasks.net.docker_api"), deferred("docker.errors")


@frozen
class Step:
    component: str
    image_id: str
    decision: version.Decision
    manifest: str = ""  # the registry's manifest digest of the image, once known

    @property
    def image(self) -> Image:
        return Image(self.component, self.decision.version, self.image_id, self.manifest)


def plan(cluster, base: tuple, images: dict, registry: RegistryClient) -> list:
    """What push would do: one Step per component, from the registry's tags and digests."""
    steps = []
    for component, image_id in images.items():
        repository = cluster.image(component)
        tags = registry.tags(repository)
        newest = version.newest(tags)
        config, manifest = (registry.digests(repository, str(newest)) if newest else None) or (None, "")
        decision = version.decide(base, tags, config, image_id, f"{cluster.build.checkout}/VERSION")
        steps.append(Step(component, image_id, decision, "" if decision.changed else manifest))
    return steps


def free_version(registry: RegistryClient, repository: str, step: Step) -> tuple:
    """(version, manifest digest or None): the step's planned version when that tag is free or holds
    this very image (then with its manifest digest), else the next patch that is."""
    planned = step.decision.version
    while True:
        found = registry.digests(repository, planned)
        if found is None:
            return planned, None
        if found[0] == step.image_id:
            return planned, found[1]
        planned = version.next_patch(planned)


def published_release(ex) -> Release:
    """The newest pushed version of every component, as the registry has it (with its manifest digest)."""
    cluster = ex.cluster
    registry = RegistryClient.for_cluster(ex)
    images = []
    for component in cluster.component_names:
        repository = cluster.image(component)
        newest = version.newest(registry.tags(repository))
        if newest is None:
            raise PreflightError(f"no pushed version of {repository} in {cluster.registry.address}: "
                                 f"build and push first")
        found = registry.digests(repository, str(newest))
        if found is None:  # the tag went between the two reads
            raise PreflightError(f"{repository}:{newest} vanished from {cluster.registry.address} while being read")
        images.append(Image(component, str(newest), *found))
    return Release(tuple(images))


def moved_tag(ex, release: Release) -> Optional[str]:
    """The first ``component version`` of ``release`` whose tag in the registry no longer holds the
    image the release records (pushed again by hand, or gone), or None when every one does. The
    first tag is read alone (the client learns how the registry wants it to log in) unless the
    client knows already (``registry.warm_ahead``), the others all at once: one round trip, not one each."""
    registry = registry_api.of_task(ex).ready()

    def moved(image) -> Optional[str]:
        found = registry.digests(ex.cluster.image(image.component), image.version)
        if found is None or found[0] != image.digest or (image.manifest and found[1] != image.manifest):
            return f"{image.component} {image.version}"
        return None

    images = list(release.images)
    alone = [] if registry.knows_login else images[:1]
    said = [moved(image) for image in alone] + ex.parallel(moved, images[len(alone):], describe=lambda i: i.component)
    return next((m for m in said if m is not None), None)


def push_image(api, cluster, step: Step, commit: str, auth: dict, tags: list) -> Optional[str]:
    """Push the candidate as each of ``tags``; the manifest digest the registry gave (None if it said none)."""
    repository = f"{cluster.registry.address}/{cluster.image(step.component)}"
    manifest = None
    for tag in tags:
        api.tag(candidate(cluster, step.component, commit), repository, tag)
        for chunk in api.push(repository, tag, auth_config=auth, what=f"push of {step.component} {tag}"):
            if "error" in chunk:
                raise RemoteError(f"push of {step.component} {tag} failed: {chunk['error'].strip()}")
            manifest = (chunk.get("aux") or {}).get("Digest") or manifest
    return manifest


def pushed(ex, api, registry, step: Step, commit: str, auth: dict) -> Step:
    """The step carried out: its image under a free version tag (read again right before the push,
    never one holding other content) and as ``latest``; returned with the version taken and the
    manifest digest recorded."""
    cluster = ex.cluster
    repository = cluster.image(step.component)
    tags = []
    taken, manifest = step.decision.version, step.manifest
    if step.decision.changed:
        taken, manifest = free_version(registry, repository, step)
        if taken != step.decision.version:
            say(f"push: {repository}:{step.decision.version} holds another image already: "
                f"{step.component} takes {taken}")
        tags += [] if manifest else [taken]
    # An earlier push may have stopped between the version and `latest`: repair `latest`.
    if registry.config_digest(repository, "latest") != step.image_id:
        tags.append("latest")
    if tags:
        ex.check(f"the push of {step.component}")
        say(f"push: {step.component} {' and '.join(tags)}")
        try:
            manifest = push_image(api, cluster, step, commit, auth, tags) or manifest
        except docker_errors.APIError as e:
            raise RemoteError(f"push of {step.component} failed: {e.explanation or e}") from None
    if not manifest:  # an engine that did not say: ask the registry
        manifest = (registry.digests(repository, taken) or (None, ""))[1]
    return replace(step, decision=replace(step.decision, version=taken), manifest=manifest)


def candidates(api, cluster, components, commits: dict) -> dict:
    """component -> image ID of its candidate built from its checkout's commit; every one must be there,
    so that nothing is pushed when a component's build failed."""
    images = {}
    for component in components:
        commit = commits[component]
        if commit == NO_COMMIT:
            raise ConfigError(f"no checkout of {component} on the build server: run build first")
        try:
            images[component] = api.inspect_image(candidate(cluster, component, commit))["Id"]
        except docker_errors.ImageNotFound:
            raise ConfigError(f"no image of {component} built from {commit[:12]} (its checkout's commit) "
                              f"on the build server: run build first") from None
    return images


def push_all(ex, host: str, images: dict = None, dry: bool = False, before=None) -> tuple:
    """Push what changed; returns the Release and the steps taken (``dry``: the steps push would take).
    ``before(release)``: called with the planned release before the first push."""
    cluster = ex.cluster
    registry = RegistryClient.for_cluster(ex)
    registry.check()
    username, password = load_credentials(cluster.registry.credentials)
    auth = {"username": username, "password": password}
    base = read_version(ex, host)
    commits = component_commits(ex, host)
    api = docker_api.Engine(ex, host)
    images = images or candidates(api, cluster, cluster.component_names, commits)
    steps = plan(cluster, base, images, registry)
    if before is not None:
        before(Release(tuple(s.image for s in steps)))
    if not dry:
        steps = [pushed(ex, api, registry, step, commits[step.component], auth) for step in steps]
        prune_dangling(api, host)
    return Release(tuple(s.image for s in steps)), steps


def prune_dangling(api, host: str) -> None:
    """Remove the build server's dangling images (layers no tag names any more); its engine keeps
    those a container uses. A failure is a warning: the push is done."""
    try:
        reclaimed = api.prune_images(filters={"dangling": True}).get("SpaceReclaimed") or 0
    except docker_errors.APIError as e:
        say(f"warning: {host}: pruning dangling images failed: {e.explanation or e}")
        return
    except RemoteError as e:
        say(f"warning: pruning dangling images failed: {e}")
        return
    if reclaimed:
        say(f"push: {host}: dangling images pruned ({reclaimed / 1e6:.1f} MB)")


def report(release: Release, steps: list) -> dict:
    return {"release": release.id,
            "components": {s.component: {"version": s.decision.version, "digest": s.image_id,
                                         "manifest": s.manifest,
                                         "changed": s.decision.changed, "previous": s.decision.previous}
                           for s in steps}}


def print_report(release: Release, steps: list, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report(release, steps), indent=1, sort_keys=True))
        return
    for s in steps:
        state = "pushed" if s.decision.changed else "unchanged"
        print(f"{s.component:20} {s.decision.version:10} {s.image_id[:19]}  {state}")
    print(f"release {release.id}")


@air_task(help={"cluster": "target cluster", "json": "print the release as JSON", "no-lock": NO_LOCK_HELP})
def push(c, cluster=None, json_=False, no_lock=False):
    """Push the built images that changed, each with the next version the registry allows."""
    target = cluster_of(cluster)
    with session(target, etcd=False, changes=True) as s:
        optional_lock(s, "push", no_lock=no_lock)
        release, steps = push_all(s.ex, build_host(c, target))
    print_report(release, steps, json_)
