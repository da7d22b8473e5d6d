"""Build and push, as a user runs them: the registry decides every version.

Each run of this module is independent of what earlier runs left in the
registry: its clusters are written into a temporary clusters folder
(AIR_CLUSTERS_DIR, given to the `fab` subprocess), include the sandbox's
``.sandbox/cluster.yaml`` and use a namespace, cluster names and sample-app
branches made unique by one random prefix. A build and push of a fresh cluster
is the expensive step here: the clusters are module fixtures, each made when a
test first asks for it, so every test runs alone too; where a test continues
from the state the one before it left, its docstring says so. At the end the
module removes its checkouts, branches and images on the build server; its
images stay in the registry under the unique namespace (the registry has no
garbage collection running).
"""
import json
import secrets
import socket
import time
from pathlib import Path

import pytest
import yaml

from sandbox import testbed as sb
from tasks.model import cluster as cluster_config
from tasks.commands.shell import q

from conftest import ROOT, fab, fab_here

FRAGMENT = (sb.STATE / "cluster.yaml").resolve()  # what `fab sandbox.up` wrote
LOCAL = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
COMPONENTS = [c["name"] for c in LOCAL["components"]]
BUILD = f"{sb.PREFIX}-build"


class Session:
    """This module's clusters: one clusters folder, one prefix for namespace, cluster names and branches."""

    def __init__(self, directory: Path):
        self.prefix = "t" + secrets.token_hex(4)
        self.directory = directory
        self.clusters = set()

    @property
    def env(self) -> dict:
        return {"AIR_CLUSTERS_DIR": str(self.directory)}

    def name(self, short: str) -> str:
        return f"{self.prefix}_{short}"

    def write(self, short: str, branch: str, directory: Path = None, **sections) -> str:
        """clusters/<prefix>_<short>.yaml on ``branch``; ``sections`` complete or override fields."""
        name = self.name(short)
        data = {"include": str(FRAGMENT), "namespace": self.prefix, "build": {"branch": branch},
                "components": LOCAL["components"], "settings": LOCAL["settings"], "admin": LOCAL["admin"],
                "timeouts": LOCAL["timeouts"]}
        for key, value in sections.items():
            data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
        (directory or self.directory).mkdir(parents=True, exist_ok=True)
        ((directory or self.directory) / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        self.clusters.add(name)
        return name

    def load(self, name: str, directory: Path = None):
        return cluster_config.load(name, directory or self.directory)

    def branch(self, short: str, component: str = "air_frontend") -> tuple:
        """A new branch <prefix>_<short> of the sample app's main repository (from master, plus one change
        to ``component``); (branch, commit)."""
        branch = self.name(short)
        return branch, sb.commit_change(sb.Change(component, branch=branch))

    def cleanup(self) -> None:
        p = self.prefix
        sb.inside(BUILD, f"""
            rm -rf /aircloak/{p}_*
            for repository in {sb.REPOSITORY} {sb.WEBSITE_REPOSITORY}; do
                git -C $repository for-each-ref --format='%(refname:short)' 'refs/heads/{p}_*' \\
                    | xargs -r git -C $repository branch -q -D
            done
            docker image ls --format '{{{{.Repository}}}}:{{{{.Tag}}}}' | grep '/{p}/' | xargs -r docker image rm >/dev/null
        """, check=False)


@pytest.fixture(scope="module")
def session(installed, tmp_path_factory):
    """The module's clusters share the sandbox's machines with `local`: its install (reused when it serves)
    makes the etcd root login they load with and the etcd that holds their locks."""
    s = Session(tmp_path_factory.mktemp("clusters"))
    yield s
    s.cleanup()


# ---------------------------------------------------------------- running and reading

def build_push(session, name, *build_args, env=None) -> tuple:
    """`fab build` then `fab push --json`, as a user runs them; (push report, build stderr, seconds)."""
    started = time.monotonic()
    built = fab("build", "--cluster", name, *build_args, env=env or session.env)
    pushed = fab("push", "--cluster", name, "--json", env=env or session.env)
    return json.loads(pushed.stdout), built.stderr, time.monotonic() - started


def versions(report) -> dict:
    return {name: c["version"] for name, c in report["components"].items()}


def changed(report) -> set:
    return {name for name, c in report["components"].items() if c["changed"]}


def registry_versions(registry, cluster) -> dict:
    """Every component's tags in the registry, read from outside."""
    return {c: sorted(registry.tags(cluster.image(c))) for c in cluster.component_names}


def snapshot(session, registry) -> dict:
    """Tags and newest digests of every image of every cluster this module made."""
    state = {}
    for name in sorted(session.clusters):
        for component in COMPONENTS:
            repository = f"{session.prefix}/{name}_{component}"
            tags = sorted(registry.tags(repository))
            state[repository] = (tags, registry.config_digest(repository, "latest") if tags else None)
    return state


def refused(*args, env, runner=fab) -> str:
    """Run `fab ARGS` expecting failure: non-zero exit and exactly one `error: ...` line on stderr.
    ``runner=fab_here``: in this process, for input refused before any host is contacted."""
    proc = runner(*args, env=env, check=False)
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


# ---------------------------------------------------------------- versions

@pytest.fixture(scope="module")
def stage(session):
    """A cluster on its own branch, built and pushed once: (name, branch, tip, first push report, build stderr)."""
    branch, tip = session.branch("stage")
    name = session.write("stage", branch)
    report, built, _ = build_push(session, name)
    return name, branch, tip, report, built


def test_first_push_gives_every_component_x_y_0(session, stage, registry):
    name, _, tip, report, built = stage
    assert "VERSION 1.0" in built and f"({tip[:10]})" in built
    assert versions(report) == {c: "1.0.0" for c in COMPONENTS}
    assert changed(report) == set(COMPONENTS)
    assert all(c["previous"] is None for c in report["components"].values())
    assert registry_versions(registry, session.load(name)) == {c: ["1.0.0", "latest"] for c in COMPONENTS}


def test_again_without_change_pushes_nothing(session, stage, registry, capsys):
    name, _, _, first, _ = stage
    before = snapshot(session, registry)
    report, _, seconds = build_push(session, name)
    with capsys.disabled():
        print(f"\n  build+push with nothing changed: {seconds:.1f} s")
    assert changed(report) == set()
    assert versions(report) == {c: "1.0.0" for c in COMPONENTS}
    assert report["release"] == first["release"]
    assert snapshot(session, registry) == before


@pytest.fixture(scope="module")
def patched(session, registry):
    """A cluster on its own branch, pushed, then router changed and pushed again: (name, branch, the
    second push's report, the registry's tags right after it). The minor-version test goes on from
    here, and the error tests aim at it afterwards."""
    branch, _ = session.branch("patched")
    name = session.write("patched", branch)
    build_push(session, name)
    sb.commit_change(sb.Change("router", branch=branch))
    report, _, _ = build_push(session, name)
    return name, branch, report, registry_versions(registry, session.load(name))


def test_a_changed_component_alone_gets_the_next_patch(patched):
    _, _, report, tags = patched
    assert changed(report) == {"router"}
    assert versions(report) == {**{c: "1.0.0" for c in COMPONENTS}, "router": "1.0.1"}
    assert report["components"]["router"]["previous"] == "1.0.0"
    assert tags == {**{c: ["1.0.0", "latest"] for c in COMPONENTS}, "router": ["1.0.0", "1.0.1", "latest"]}


def test_a_new_minor_version_goes_to_changed_components_only(session, patched, registry):
    """On the patched cluster (router at 1.0.1, every other component at 1.0.0)."""
    name, branch, _, _ = patched
    sb.commit_change(sb.Change("air_backend", "version", "1.1", branch=branch))
    sb.commit_change(sb.Change("air_backend", branch=branch))
    report, built, _ = build_push(session, name)
    assert "VERSION 1.1" in built
    # air_frontend's image carries MAJOR.MINOR (its AIR_BUILD_VERSION build argument): it changes with VERSION.
    assert changed(report) == {"air_backend", "air_frontend"}
    assert versions(report) == {"router": "1.0.1", "air_frontend": "1.1.0", "air_backend": "1.1.0",
                                "static_website": "1.0.0"}
    assert registry_versions(registry, session.load(name))["air_backend"] == ["1.0.0", "1.1.0", "latest"]


# ---------------------------------------------------------------- two clusters, two branches

def head_of(build_server, checkout) -> str:
    ex, host = build_server
    return ex.run(host, f"git -C {q(checkout)} rev-parse HEAD").stdout.strip()


def test_two_clusters_on_different_branches_keep_separate_checkouts_and_images(session, stage, registry,
                                                                                 build_server):
    stage_name, _, stage_tip, stage_report, _ = stage
    branch, prod_tip = session.branch("prod", component="router")
    prod_name = session.write("prod", branch)
    prod_report, _, _ = build_push(session, prod_name)
    stage_cluster, prod_cluster = session.load(stage_name), session.load(prod_name)

    assert stage_cluster.build.checkout == f"/aircloak/{stage_name}/air"
    assert prod_cluster.build.checkout == f"/aircloak/{prod_name}/air"
    # Building prod left stage's checkout where stage's build put it.
    assert head_of(build_server, stage_cluster.build.checkout) == stage_tip
    assert head_of(build_server, prod_cluster.build.checkout) == prod_tip
    assert stage_tip != prod_tip

    assert stage_cluster.image("router") != prod_cluster.image("router")
    assert registry_versions(registry, prod_cluster) == {c: ["1.0.0", "latest"] for c in COMPONENTS}
    # Their branches differ in router and air_frontend (each changed one of them from master).
    for component in ("router", "air_frontend"):
        assert prod_report["components"][component]["digest"] != stage_report["components"][component]["digest"]
        assert registry.config_digest(prod_cluster.image(component), "1.0.0") != \
            registry.config_digest(stage_cluster.image(component), "1.0.0")


# ---------------------------------------------------------------- errors: one line, non-zero, nothing pushed

@pytest.fixture(scope="module")
def target(patched):
    """A pushed cluster that the error tests aim at: (name, branch). The patched cluster: its versions
    do not matter here, only that it is pushed and what each step changes."""
    return patched[:2]


def target_short(session, name: str) -> str:
    return name.removeprefix(f"{session.prefix}_")


def unused_port(host: str) -> int:
    for port in range(5999, 5900, -1):
        try:
            socket.create_connection((host, port), timeout=2).close()
        except ConnectionRefusedError:
            return port
    raise AssertionError(f"no unused port on {host}")


def test_registry_unreachable(session, target, registry, tmp_path, local):
    """Leaves air_backend changed, built and not pushed: the wrong-credentials test goes on from there."""
    name, branch = target
    sb.commit_change(sb.Change("air_backend", branch=branch))  # so that a push would have something to push
    host = local.registry.address.rsplit(":", 1)[0]
    port = unused_port(host)
    session.write(target_short(session, name), branch, directory=tmp_path, registry={"address": f"{host}:{port}"})
    env = {"AIR_CLUSTERS_DIR": str(tmp_path)}
    before = snapshot(session, registry)
    # Built with the registry that is there, so that the wrong-credentials test and the push that
    # shows both refusals kept air_backend back reuse this one build.
    fab("build", "--cluster", name, env=session.env)
    message = refused("push", "--cluster", name, env=env)
    assert message.startswith(f"error: registry {host}:{port} unreachable: ")
    assert snapshot(session, registry) == before


def test_wrong_registry_credentials(session, target, registry, tmp_path, local):
    """Goes on from the registry-unreachable test: air_backend changed and built, not pushed. With the
    registry that is there and the right credentials, the same build pushes afterwards: neither
    refusal pushed anything of it."""
    name, branch = target
    credentials = tmp_path / "registry.yaml"
    wrong = "wrong-" + secrets.token_hex(8)
    credentials.write_text(yaml.safe_dump({"username": sb.REGISTRY_USER, "password": wrong}))
    credentials.chmod(0o600)
    session.write(target_short(session, name), branch, directory=tmp_path / "clusters",
                  registry={"credentials": str(credentials)})
    env = {"AIR_CLUSTERS_DIR": str(tmp_path / "clusters")}
    before = snapshot(session, registry)
    message = refused("push", "--cluster", name, env=env)
    assert message == f"error: registry {local.registry.address} refused the credentials from {credentials} (HTTP 401)"
    assert wrong not in message
    assert snapshot(session, registry) == before
    report = json.loads(fab("push", "--cluster", name, "--json", env=session.env).stdout)
    assert changed(report) == {"air_backend"}


def test_branch_that_does_not_exist(session, target, registry, build_server):
    name, _ = target
    checkout = session.load(name).build.checkout
    head = head_of(build_server, checkout)
    before = snapshot(session, registry)
    missing = session.name("no_such_branch")
    message = refused("build", "--cluster", name, "--branch", missing, env=session.env)
    assert message == f"error: no branch {missing!r} in {sb.REPOSITORY}"
    assert head_of(build_server, checkout) == head
    assert snapshot(session, registry) == before


def test_branch_with_shell_characters_is_refused_before_anything_runs(session, target, registry, build_server):
    name, _ = target
    assert build_server[0].run(build_server[1], "test -e /tmp/pwned", check=False).exited == 1
    before = snapshot(session, registry)
    message = refused("build", "--cluster", name, "--branch", "x;touch /tmp/pwned", env=session.env, runner=fab_here)
    assert message.startswith("error: branch 'x;touch /tmp/pwned' is not a valid branch name")
    assert build_server[0].run(build_server[1], "test -e /tmp/pwned", check=False).exited == 1
    assert snapshot(session, registry) == before


def test_unknown_cluster(session, target, registry):
    before = snapshot(session, registry)
    for task in ("build", "push"):
        message = refused(task, "--cluster", "no_such_cluster", env=session.env, runner=fab_here)
        assert message.startswith(f"error: unknown cluster 'no_such_cluster': no {session.directory}/no_such_cluster.yaml"
                                  f" (known: ")
        assert target[0] in message
    assert snapshot(session, registry) == before


def test_malformed_cluster_file(session, target, registry, tmp_path):
    name, _ = target
    (tmp_path / f"{name}.yaml").write_text(f"include: {FRAGMENT}\nnamespace: [{session.prefix}\n")
    before = snapshot(session, registry)
    for task in ("build", "push"):
        message = refused(task, "--cluster", name, env={"AIR_CLUSTERS_DIR": str(tmp_path)}, runner=fab_here)
        assert message.startswith(f"error: {tmp_path / name}.yaml: malformed YAML at line ")
    assert snapshot(session, registry) == before
