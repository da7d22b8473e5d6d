"""Building the cluster's images on the build server.

Each target cluster has its own source checkout there (``build.checkout``),
so stage and production can be on different branches at once. A build
updates that checkout to the branch, then builds every component's image
through the build server's Docker engine, tagged ``candidate-<commit>``
(the commit it was built from); ``push`` decides what of it is new. The shell lines sent to the build server are
built by the pure functions at the top and tested by equality.
"""
from __future__ import annotations

import io
import re

from . import docker_api, version
from .cli import air_task, build_host, cluster_of
from .errors import ConfigError, RemoteError
from .remote import q, say
from .session import optional_lock, session

CANDIDATE = "candidate-"  # + commit: a freshly built image, before push gives it a version
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$")
BUILD_LOG_LINES = 15


# ---------------------------------------------------------------- what to run

def check_branch(branch: str) -> str:
    """A branch name safe for git and the shell, or a ConfigError (before anything is contacted)."""
    if not isinstance(branch, str) or not _BRANCH.match(branch) or ".." in branch or "//" in branch \
            or branch.endswith(("/", ".", ".lock")) or "/." in branch:
        raise ConfigError(f"branch {branch!r} is not a valid branch name "
                          "(letters, digits, . _ - /; no '..', no shell characters)")
    return branch


def checkout_script(repository: str, checkout: str, branch: str) -> str:
    """Make or update the checkout and put it exactly at the branch's tip; prints the commit."""
    ref = f"refs/remotes/origin/{branch}"
    return "\n".join([
        "set -e",
        f"if [ -d {q(checkout + '/.git')} ]; then git -C {q(checkout)} fetch -q --prune origin;",
        f"else mkdir -p {q(checkout.rsplit('/', 1)[0] or '/')} && git clone -q --no-checkout {q(repository)} {q(checkout)}; fi",
        f"if ! git -C {q(checkout)} rev-parse -q --verify {q(ref)} >/dev/null; then",
        f"  echo {q(f'no branch {branch} in {repository}')} >&2; exit 3; fi",
        f"git -C {q(checkout)} checkout -q -f --detach {q(ref)}",
        f"git -C {q(checkout)} clean -q -f -d -x",
        f"git -C {q(checkout)} rev-parse HEAD",
    ])


def context_command(checkout: str, source: str) -> str:
    """A tar of one component's build context, on standard output."""
    return f"tar -C {q(checkout + '/' + source)} -c ."


def candidate(cluster, component: str, commit: str) -> str:
    return f"{cluster.registry.address}/{cluster.image(component)}:{CANDIDATE}{commit[:12]}"


# ---------------------------------------------------------------- running it

def update_checkout(ex, host, branch: str) -> str:
    cluster = ex.cluster
    try:
        result = ex.run(host, checkout_script(cluster.build.repository, cluster.build.checkout, branch),
                        what=f"update checkout {cluster.build.checkout}")
    except RemoteError as e:
        if "no branch" in str(e):
            raise ConfigError(f"no branch {branch!r} in {cluster.build.repository}") from None
        raise
    return result.stdout.strip().splitlines()[-1]


def checkout_commit(ex, host) -> str:
    """The commit the cluster's checkout is at (what push publishes)."""
    checkout = ex.cluster.build.checkout
    return ex.read(host, f"git -C {q(checkout)} rev-parse HEAD", what=f"read the commit of {checkout}").stdout.strip()


def read_version(ex, host) -> tuple:
    path = f"{ex.cluster.build.checkout}/VERSION"
    text = ex.read_file(host, path)
    if text is None:
        raise ConfigError(f"{host}:{path}: missing (it must hold MAJOR.MINOR)")
    return version.parse_version(text, f"{host}:{path}")


def build_component(api, ex, host, component, commit: str) -> str:
    """Build one image from the checkout; return its image ID. Output streams as progress."""
    cluster = ex.cluster
    context = ex.read_bytes(host, context_command(cluster.build.checkout, component.source),
                            what=f"read the build context of {component.name}")
    log, image_id = [], None
    for chunk in api.build(fileobj=io.BytesIO(context), custom_context=True, tag=candidate(cluster, component.name, commit),
                           rm=True, forcerm=True, decode=True):
        if "stream" in chunk:
            for line in chunk["stream"].splitlines():
                if line.strip():
                    log.append(line)
                    if line.startswith("Step "):
                        say(f"  {component.name}: {line}")
        if "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
        if "error" in chunk:
            log.append(chunk["error"].strip())
            raise RemoteError(f"build of {component.name} failed: {chunk['error'].strip()}\n"
                              + "\n".join(f"    {line}" for line in log[-BUILD_LOG_LINES:]))
    if image_id is None:
        image_id = api.inspect_image(candidate(cluster, component.name, commit))["Id"]
    forget_older_candidates(api, cluster, component.name, commit)
    return image_id


def forget_older_candidates(api, cluster, component: str, commit: str) -> None:
    """Untag candidates of other commits (the images stay while a version tag holds them)."""
    keep = candidate(cluster, component, commit)
    repository = keep.rsplit(":", 1)[0]
    for image in api.images(name=repository):
        for tag in image.get("RepoTags") or []:
            if tag != keep and tag.startswith(f"{repository}:{CANDIDATE}"):
                api.remove_image(tag, noprune=True)


def build_all(ex, host: str, branch: str, only: str = None) -> dict:
    """Checkout and build; returns {component: image ID} and the commit built."""
    cluster = ex.cluster
    check_branch(branch)
    components = [cluster.component(only)] if only else list(cluster.components)
    commit = update_checkout(ex, host, branch)
    base = read_version(ex, host)
    say(f"build: {cluster.name} at {branch} ({commit[:10]}), VERSION {base[0]}.{base[1]}, on {host}")
    api = docker_api.engine(ex.conn(host))
    images = {}
    for c in components:
        ex.check(f"the build of {c.name}")
        images[c.name] = build_component(api, ex, host, c, commit)
    return {"commit": commit, "branch": branch, "base": base, "images": images}


@air_task(help={"cluster": "target cluster (clusters/<name>.yaml)",
                "branch": "branch to build (default: the cluster's build.branch)",
                "component": "build only this component"})
def build(c, cluster=None, branch=None, component=None):
    """Update the cluster's checkout on the build server and build its images."""
    target = cluster_of(cluster)
    branch = check_branch(branch or target.build.branch)
    with session(target, etcd=False, changes=True) as s:
        optional_lock(s, f"build {branch}")
        result = build_all(s.ex, build_host(c, target), branch, component)
    for name, image_id in result["images"].items():
        print(f"{name:20} {image_id}")
