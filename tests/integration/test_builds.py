"""Builds of the sample application the way the real one needs them, as a user runs them.

The sample's builds (clusters/local.yaml) use what the real Air images need:
air_frontend from the repository's root with its own ignore file and a build
argument carrying the version, air_backend in two stages after a prepare
command, static_website from a second repository on its own branch
(``develop``). The build-only tests use clusters of their own (the
``session`` of test_images: a temporary clusters folder and a unique
prefix); the deploy tests use the sandbox's `local` cluster, installed and
serving, and check from outside: HTTP through the balancer and to the
machines, the registry's tags, etcd's records, the containers' start times.
Branches made here carry the session's prefix and are removed at the end.
"""
import json
import time

import pytest
import yaml

from sandbox import testbed as sb
from tasks.net.executor import Executor

from conftest import ROOT, error_line, fab, fab_here
from conftest import Probe, get_version
from integration.test_deploy import recorded, start_times
from integration.test_images import Session, build_push, changed, head_of, snapshot, versions


@pytest.fixture(scope="module")
def session(sandbox, tmp_path_factory):
    s = Session(tmp_path_factory.mktemp("clusters"))
    yield s
    s.cleanup()


def images(report) -> dict:
    return {name: c["digest"] for name, c in report["components"].items()}


# ---------------------------------------------------------------- builds (clusters of their own)

@pytest.fixture(scope="module")
def built(session):
    """A cluster on its own branch of the main repository, built and pushed once: (name, branch, report)."""
    branch, _ = session.branch("builds")
    name = session.write("builds", branch)
    report, _, _ = build_push(session, name)
    return name, branch, report


def test_an_unchanged_build_keeps_every_image_and_pushes_nothing(session, built, registry):
    name, _, first = built
    before = snapshot(session, registry)
    report, log, _ = build_push(session, name)
    # The prepare command ran again and air_backend's two stages were built again, from the cache.
    assert "  air_backend: generated/manifest: " in log
    assert "air_backend: Step 5/6 : COPY --from=builder /release/ /app/" in log
    assert images(report) == images(first)
    assert changed(report) == set()
    assert snapshot(session, registry) == before


def test_what_the_ignore_file_excludes_does_not_make_a_new_image(session, built, registry):
    name, branch, _ = built
    sb.commit_change(sb.Change("air_frontend", "file", "NOTES.md", branch=branch))
    before = snapshot(session, registry)
    report, _, _ = build_push(session, name)
    assert changed(report) == set()
    assert snapshot(session, registry) == before
    # The same component's served files do (the folder is in the context).
    sb.commit_change(sb.Change("air_frontend", branch=branch))
    report, _, _ = build_push(session, name)
    assert changed(report) == {"air_frontend"}


def test_a_component_branch_builds_the_second_repository_at_that_branch(session, built, registry, build_server):
    name, branch, _ = built
    site_branch = session.name("site")
    site_commit = sb.commit_change(sb.Change(sb.WEBSITE, branch=site_branch))
    main_commit = head_of(build_server, f"/aircloak/{name}/air")
    before = versions(build_push(session, name)[0])
    report, log, _ = build_push(session, name, "--branch", f"{sb.WEBSITE}={site_branch}")
    assert f"build: {sb.WEBSITE} from {sb.WEBSITE_REPOSITORY} at {site_branch} ({site_commit[:10]})" in log
    cluster = session.load(name)
    assert head_of(build_server, cluster.checkout_of(cluster.component(sb.WEBSITE))) == site_commit
    assert head_of(build_server, cluster.build.checkout) == main_commit
    assert changed(report) == {sb.WEBSITE}
    major, minor, patch = before[sb.WEBSITE].split(".")
    assert versions(report) == {**before, sb.WEBSITE: f"{major}.{minor}.{int(patch) + 1}"}


def test_a_prepare_command_past_its_deadline_is_stopped_and_fails_the_build(session, built, registry, build_server):
    name, branch, _ = built
    marker = session.name("slow_prepare")
    local = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
    slow = [{**c, "prepare": f"echo started; sleep 60; echo {marker}-never", "prepare_timeout": 2}
            if c["name"] == "air_backend" else c for c in local["components"]]
    session.write("builds", branch, components=slow)
    sb.commit_change(sb.Change("air_backend", branch=branch))  # a new commit: no image of air_backend built from it yet
    try:
        before = snapshot(session, registry)
        began = time.monotonic()
        proc = fab("build", "--cluster", name, env=session.env, check=False)
        seconds = time.monotonic() - began
        assert error_line(proc) == "error: build of air_backend failed at its prepare command: not done within 2 s " \
                                   "(prepare_timeout)"
        assert "  air_backend: started" in proc.stderr and f"air_backend: {marker}-never" not in proc.stderr
        assert seconds < 30
        # Nothing of it is left running on the build server.
        ex, host = build_server
        left = ex.run(host, f"grep -l -s '{marker[:-1]}[{marker[-1]}]' /proc/[0-9]*/cmdline", check=False)
        assert left.stdout.strip() == ""
        assert refused_push(session, name) and snapshot(session, registry) == before
    finally:
        session.write("builds", branch)


def refused_push(session, name) -> bool:
    """`fab push` after a failed build refuses: the failed component has no image of its checkout's commit."""
    proc = fab("push", "--cluster", name, env=session.env, check=False)
    return error_line(proc).startswith("error: no image of air_backend built from ")


def test_component_branches_are_checked(session, built, build_server):
    name, _, _ = built
    missing = session.name("no_such_site_branch")
    proc = fab("build", "--cluster", name, "--branch", f"{sb.WEBSITE}={missing}", env=session.env, check=False)
    assert error_line(proc) == f"error: no branch {missing!r} in {sb.WEBSITE_REPOSITORY}"
    proc = fab_here("build", "--cluster", name, "--branch", "air_frontend=develop", env=session.env, check=False)
    assert error_line(proc) == "error: --branch air_frontend=develop: air_frontend is built from the main " \
                               "repository, whose branch is given as --branch develop"
    assert proc.stderr.count("\n") == 1  # refused before anything ran


# ---------------------------------------------------------------- the local cluster

def test_a_build_argument_reaches_the_image(local_serving):
    """air_frontend's AIR_BUILD_VERSION ({version}: MAJOR.MINOR of VERSION) is what its /version shows."""
    current, _, _ = recorded(local_serving)
    with Executor(local_serving) as ex:
        base = ex.run(local_serving.build.host, f"cat {local_serving.build.checkout}/VERSION").stdout.strip()
    port = local_serving.component("air_frontend").port
    for machine in local_serving.machines:
        answer = get_version(machine, port)
        assert answer["built_for"] == base, answer
        assert answer["version"] == current["components"]["air_frontend"]["version"], answer


def test_a_change_in_the_second_repository_deploys_only_the_static_website(sandbox, local_serving, clock):
    # The cluster at what master builds now (an earlier module may have left an older release, whose
    # images the build server's cache no longer makes again): nothing to do when it is already.
    fab("deploy", "--cluster", "local")
    before, history, _ = recorded(local_serving)
    started = start_times(local_serving)
    site_commit = sb.commit_change(sb.Change(sb.WEBSITE))  # on develop, in the second repository
    with clock("deploy of a change in the second repository, under the probe"):
        with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
            proc = fab("deploy", "--cluster", "local")
    print("\n" + probe.report("deploy of the static website"))
    assert probe.covered and probe.failed == 0, probe.errors
    current, history_after, holder = recorded(local_serving)
    assert current["outcome"] == "succeeded" and holder is None and len(history_after) == len(history) + 1
    assert {k for k in current["components"] if current["components"][k] != before["components"][k]} == {sb.WEBSITE}
    after = start_times(local_serving)
    for machine in local_serving.machines:
        assert {c for c in after[machine] if after[machine][c] != started[machine][c]} == {sb.WEBSITE}

    with Executor(local_serving) as ex:
        main_commit = ex.run(local_serving.build.host, f"git -C {sb.REPOSITORY} rev-parse master").stdout.strip()
    sources = {s["repository"]: (s["branch"], s["commit"]) for s in current["sources"]}
    assert sources == {sb.REPOSITORY: ("master", main_commit), sb.WEBSITE_REPOSITORY: ("develop", site_commit)}
    assert history_after[-1]["sources"] == current["sources"]
    listing = fab("releases", "--cluster", "local").stdout.splitlines()
    print(listing[-1])
    assert listing[-1].startswith("*") and current["id"] in listing[-1]
    assert f"{sb.REPOSITORY} master@{main_commit[:10]}" in listing[-1]
    assert f"{sb.WEBSITE_REPOSITORY} develop@{site_commit[:10]}" in listing[-1]
    assert json.loads(fab("releases", "--cluster", "local", "--json").stdout)[-1]["sources"] == current["sources"]
    assert "release " + current["id"] in proc.stdout
    # Only the static website was built: the others' build inputs are the release's, their images kept.
    others = [c.name for c in local_serving.components if c.name != sb.WEBSITE]
    assert all(f"  {c}: its build inputs are the release's: " in proc.stderr for c in others), proc.stderr
    assert [c for c in others if f"  {c}: Step " in proc.stderr] == []
    assert f"  {sb.WEBSITE}: Step " in proc.stderr


def registry_tags(registry, cluster) -> dict:
    return {c: (sorted(registry.tags(cluster.image(c))), registry.config_digest(cluster.image(c), "latest"))
            for c in cluster.component_names}


@pytest.mark.parametrize("fails, component, expected", [
    ("prepare", "air_backend", 'error: build of air_backend failed at its prepare command (exit 2): '
                               'bin/unfinished: 1: Syntax error: "then" unexpected'),
    ("build", "air_frontend", "error: build of air_frontend failed at step 5/5 (RUN echo compiling air_frontend "
                              "&& exit 3): The command '/bin/sh -c echo compiling air_frontend && exit 3' "
                              "returned a non-zero code: 3"),
])
def test_a_failing_build_names_the_component_pushes_nothing_and_leaves_the_cluster(
        session, local_serving, registry, fails, component, expected):
    branch = session.name(f"fails_{fails}")
    sb.commit_change(sb.Change(component, "fails", fails, branch=branch))
    # A change to another component on the same branch: a push, were there one, would have something new.
    sb.commit_change(sb.Change("router", branch=branch))
    record, history, _ = recorded(local_serving)
    started = start_times(local_serving)
    tags = registry_tags(registry, local_serving)
    proc = fab("deploy", "--cluster", "local", "--branch", branch, check=False)
    assert error_line(proc) == expected
    if fails == "build":  # the last lines of its build output come before the error
        assert f"  {component}| compiling {component}" in proc.stderr
    else:  # the prepare command's output is streamed with the component's name
        assert f'  {component}: bin/unfinished: 1: Syntax error: "then" unexpected' in proc.stderr
    assert "push:" not in proc.stderr
    assert registry_tags(registry, local_serving) == tags
    assert recorded(local_serving) == (record, history, None)
    assert start_times(local_serving) == started


def test_build_and_push_refuse_without_the_lock_when_an_installed_clusters_etcd_is_down(sandbox, local_serving):
    """Two operators must not build into the shared checkout exactly when the cluster is in trouble:
    with no etcd answering on an installed cluster, push (and build) refuse in one line; --no-lock
    goes on. The application serves throughout."""
    from conftest import on_each, wait_serving
    cluster = local_serving
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        on_each(cluster, "systemctl stop etcd-member")
        try:
            refused = fab("push", "--cluster", "local", check=False)
            forced = fab("balancer.setup", "--cluster", "local", "--no-lock", check=False)
        finally:
            on_each(cluster, "systemctl start etcd-member")
        assert wait_serving(cluster, 60)
    line = error_line(refused)
    assert line.startswith("error: push: local is installed (") and "its etcd does not answer" in line
    assert "nothing was done" in line and "--no-lock" in line
    assert forced.returncode == 0, forced.stderr
    assert "going on without the cluster's lock (--no-lock)" in forced.stderr
    print("\n" + probe.report("etcd stopped on every machine"))
    assert probe.failed == 0, probe.errors
