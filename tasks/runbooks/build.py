"""Building the cluster's images on the build server.

Each target cluster has its own checkouts there, so stage and production can
be on different branches at once: the main one (``build.checkout``, holding
VERSION) and one per component that names its own repository
(``<build.checkout>-<component>``). A build puts every checkout at its branch,
runs a component's prepare command in its checkout (output prefixed by the
component's name, under a deadline), streams its build context (a folder of
the checkout, the root included) as a tar from the build server, drops what
the component's ignore file excludes, and builds through the build server's
Docker engine with the component's Dockerfile, build arguments and target
stage, tagged ``candidate-<commit>`` (the commit of the component's own
checkout); ``push`` decides what of it is new. The engine's build cache is
kept (intermediate images of every stage stay), so an unchanged component is
rebuilt from cache into the same image ID. A failure names the component and
the step, shows the last lines of its output, and stops the build before
anything is pushed. The shell lines sent to the build server and the build's
options are built by ``tasks.commands.build_scripts`` and tested by equality.
"""
from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING, Optional

from tasks.commands.build_scripts import (
    BUILD_LOG_LINES,
    CANDIDATE,
    NO_COMMIT,
    NO_VERSION,
    Branches,
    Job,
    build_context,
    build_inputs,
    build_options,
    candidate,
    checked_out_script,
    checkouts,
    commits_command,
    context_command,
    credentials_masked,
    failure_line,
    jobs,
    parse_branches,
    parse_checked_out,
    prepare_script,
    step_of,
    sources,
    without_credentials,
)
from tasks.commands.shell import TIMED_OUT, tail
from tasks.model import version
from tasks.model.errors import ConfigError, DeadlineError, RemoteError
from tasks.model.frozen import frozen
from tasks.net import deferred
from tasks.net.progress import say
from tasks.net.session import optional_lock, session
from tasks.runbooks.cli import NO_LOCK_HELP, air_task, build_host, cluster_of, report

if TYPE_CHECKING:
    from docker import errors as docker_errors

    from tasks.net import docker_api
else:
    docker_api, docker_errors = deferred("tasks.net.docker_api"), deferred("docker.errors")

# ---------------------------------------------------------------- what to run


# ---------------------------------------------------------------- running it

def update_checkouts(ex, host, plan: list) -> tuple:
    """Put every checkout at its branch; returns (their commits, in ``plan``'s order; the main
    commit's subject; the main checkout's VERSION as (major, minor)), all read by one command."""
    version_file = f"{ex.cluster.build.checkout}/VERSION"
    result = ex.run(host, checked_out_script(plan, version_file), check=False, deadline=ex.cluster.timeouts.pull,
                    what=f"update checkouts {', '.join(c.path for c in plan)}")
    if result.exited == 3:
        for c in plan:
            if f"no branch {c.branch} in {without_credentials(c.repository)}" in result.stderr:
                raise ConfigError(f"no branch {c.branch!r} in {without_credentials(c.repository)}")
    if result.exited == NO_VERSION:
        raise ConfigError(f"{host}:{version_file}: missing (it must hold MAJOR.MINOR)")
    if result.exited != 0:
        raise RemoteError(f"{host}: updating the checkouts failed (exit {result.exited}): "
                          f"{credentials_masked(tail(result.stderr or result.stdout))}")
    commits, subject, version_text = parse_checked_out(result.stdout, len(plan))
    return commits, subject, version.parse_version(version_text, f"{host}:{version_file}")


def component_commits(ex, host) -> dict:
    """component -> the commit its checkout is at (what push publishes), ``none`` if it has no checkout."""
    cluster = ex.cluster
    paths = list(dict.fromkeys(cluster.checkout_of(c) for c in cluster.components))
    found = dict(zip(paths, ex.read(host, commits_command(paths), what="read the commits of the checkouts")
                     .stdout.split()))
    return {c.name: found.get(cluster.checkout_of(c), NO_COMMIT) for c in cluster.components}


def read_version(ex, host) -> tuple:
    path = f"{ex.cluster.build.checkout}/VERSION"
    text = ex.read_file(host, path)
    if text is None:
        raise ConfigError(f"{host}:{path}: missing (it must hold MAJOR.MINOR)")
    return version.parse_version(text, f"{host}:{path}")


def prepare(ex, host, checkout: str, component) -> None:
    say(f"  {component.name}: prepare: {component.prepare}")
    try:
        result = ex.run(host, prepare_script(checkout, component), check=False, stream=True,
                        deadline=component.prepare_timeout + 30, what=f"prepare {component.name}")
    except DeadlineError:
        result = None
    if result is None or result.exited == TIMED_OUT:
        raise RemoteError(f"build of {component.name} failed at its prepare command: not done within "
                          f"{component.prepare_timeout} s (prepare_timeout)")
    if result.exited != 0:
        last = failure_line(result.stderr).removeprefix(f"{component.name}: ")
        raise RemoteError(f"build of {component.name} failed at its prepare command (exit {result.exited}): {last}")


def reused(api, cluster, job: Job, image_id: str) -> bool:
    """Whether ``job``'s candidate on the build server is the image ``image_id`` (the one its
    build inputs made for the cluster's release): then it is not built again."""
    try:
        return api.inspect_image(candidate(cluster, job.component.name, job.commit))["Id"] == image_id
    except docker_errors.ImageNotFound:
        return False


class BuildStream:
    """What an engine's build stream of one component said so far: its lines, the step it was at,
    the image it made, or the error it refused with."""

    def __init__(self, component: str):
        self.component = component
        self.log: list = []
        self.step: Optional[str] = None
        self.image_id: Optional[str] = None
        self.refused: Optional[str] = None

    def follow(self, chunks) -> None:
        """Read the stream's chunks to its end, or to the engine's error; each step said as it starts."""
        for chunk in chunks:
            for line in filter(str.strip, chunk.get("stream", "").splitlines()):
                self.log.append(line)
                if line.startswith("Step "):
                    self.step = step_of(line)
                    say(f"  {self.component}: {line}")
            self.image_id = chunk.get("aux", {}).get("ID", self.image_id)
            if "error" in chunk:
                self.refused = chunk["error"]  # the engine's own answer: a step failed
                return

    def failed(self, error: str, kind=RemoteError) -> RemoteError:
        """The build's error, naming the step it failed at; its last lines are said first."""
        for line in self.log[-BUILD_LOG_LINES:]:
            say(f"  {self.component}| {line}")
        return kind(f"build of {self.component} failed at {self.step or 'its start'}: {failure_line(error)}")


def build_component(api, ex, host, job: Job, reuse: Optional[str] = None) -> str:
    """Prepare and build one image from its checkout; return its image ID. Steps stream as progress.
    ``reuse``: the image ID the component's build inputs made for the cluster's release; when its
    candidate is still that image (and the build may use the cache), nothing is built."""
    started, component, cluster = time.monotonic(), job.component, ex.cluster
    ex.check(f"the build of {component.name}")
    if reuse is not None and job.cache and reused(api, cluster, job, reuse):
        say(f"  {component.name}: its build inputs are the release's: {reuse[:19]} kept, not built")
        return reuse
    if component.prepare:
        prepare(ex, host, job.checkout, component)
    context = build_context(ex.read_bytes(host, context_command(job.checkout, component.source),
                                          what=f"read the build context of {component.name}"), component)
    options = build_options(cluster, job)
    stream = BuildStream(component.name)
    try:
        stream.follow(api.build(f"build {component.name}", fileobj=io.BytesIO(context), **options))
    except docker_errors.APIError as e:
        raise stream.failed(e.explanation or str(e)) from None
    except RemoteError as e:  # the stream cut off (its deadline) or its channel lost: nothing was tagged
        raise stream.failed(str(e), type(e)) from None
    if stream.refused is not None:
        raise stream.failed(stream.refused)
    image_id = stream.image_id or api.inspect_image(options["tag"])["Id"]
    forget_older_candidates(api, cluster, component.name, job.commit)
    say(f"  {component.name}: built {image_id[:19]} in {time.monotonic() - started:.1f} s")
    return image_id


def forget_older_candidates(api, cluster, component: str, commit: str) -> None:
    """Untag candidates of other commits (the images stay while a version tag holds them)."""
    keep = candidate(cluster, component, commit)
    repository = keep.rsplit(":", 1)[0]
    for image in api.images(name=repository):
        for tag in image.get("RepoTags") or []:
            if tag != keep and tag.startswith(f"{repository}:{CANDIDATE}"):
                api.remove_image(tag, noprune=True)


@frozen
class CheckedOut:
    """The cluster's checkouts on the build server, each at its branch: what a build starts from."""
    branches: Branches
    plan: list       # the Checkouts (the main one first)
    commits: list    # their commits, in plan's order
    base: tuple      # VERSION's (major, minor)
    components: list
    subject: str = ""  # the main commit's subject (a deploy's default message)

    def jobs(self, cluster, cache: bool = True) -> list:
        return jobs(cluster, self.plan, self.commits, self.base, self.components, cache)

    def inputs(self, cluster) -> dict:
        """component -> the digest of everything its image is built from (``build_inputs``)."""
        return {job.component.name: build_inputs(job) for job in self.jobs(cluster)}

    def meta(self, cluster) -> dict:
        """What a release record keeps of its build: main commit and branch, VERSION's base, every
        source checkout, every component's build inputs."""
        return {"commit": self.commits[0], "branch": self.branches.main, "base": self.base,
                "sources": sources(self.plan, self.commits), "inputs": self.inputs(cluster), "subject": self.subject}


def check_out(ex, host: str, branch=None, only: str = None) -> CheckedOut:
    """Every checkout the build of the cluster (or of component ``only``) needs, at its branch on
    ``host``. ``branch``: a branch of the main repository, ``--branch`` values or Branches."""
    cluster = ex.cluster
    branches = parse_branches(cluster, branch)
    components = [cluster.component(only)] if only else list(cluster.components)
    plan = checkouts(cluster, branches, components)
    commits, subject, base = update_checkouts(ex, host, plan)
    say(f"build: {cluster.name} at {branches.main} ({commits[0][:10]}), VERSION {base[0]}.{base[1]}, on {host}")
    for c, commit in zip(plan[1:], commits[1:]):
        say(f"build: {', '.join(c.components)} from {without_credentials(c.repository)} at {c.branch} "
            f"({commit[:10]})")
    return CheckedOut(branches, plan, commits, base, components, subject)


def build_images(ex, host: str, checked: CheckedOut, cache: bool = True, reuse: Optional[dict] = None) -> dict:
    """Build every component of ``checked``; returns what ``build_all`` returns. ``cache``: False
    rebuilds every step. ``reuse``: component -> the image its unchanged build inputs made
    (``publish.reusable``), kept when its candidate still is that image."""
    api = docker_api.Engine(ex, host)
    reuse = reuse or {}
    images = {job.component.name: build_component(api, ex, host, job, reuse.get(job.component.name))
              for job in checked.jobs(ex.cluster, cache)}
    return {**checked.meta(ex.cluster), "images": images}


def build_all(ex, host: str, branch=None, only: str = None, cache: bool = True) -> dict:
    """Checkouts and builds. ``branch``: a branch of the main repository, ``--branch`` values or
    Branches; ``cache``: False rebuilds every step. Returns the images ({component: image ID}) with
    what a release record keeps of the build (``CheckedOut.meta``)."""
    return build_images(ex, host, check_out(ex, host, branch, only), cache)


@air_task(help={"cluster": "target cluster (clusters/<name>.yaml)",
                "branch": "branch of the main repository (default: the cluster's build.branch); "
                          "COMPONENT=B for a component with its own repository (repeatable)",
                "component": "build only this component",
                "no-cache": "rebuild every step instead of using the build server's build cache",
                "json": "print the images and sources as JSON", "no-lock": NO_LOCK_HELP},
          iterable=["branch"])
def build(c, cluster=None, branch=None, component=None, no_cache=False, json_=False, no_lock=False):
    """Update the cluster's checkouts on the build server and build its images."""
    target = cluster_of(cluster)
    branches = parse_branches(target, branch)
    if component is not None:
        target.component(component)
    with session(target, etcd=False, changes=True) as s:
        optional_lock(s, f"build {branches}", no_lock=no_lock)
        result = build_all(s.ex, build_host(c, target), branches, component, cache=not no_cache)
    report({"images": result["images"], "sources": result["sources"]}, json_,
           "\n".join(f"{name:20} {image_id}" for name, image_id in result["images"].items()))
