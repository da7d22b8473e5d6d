"""A release is exactly what runs: images by digest, components that come and go, old images removed.

Everything runs as a user runs it (`fab deploy`, `fab rollback`) on the sandbox's `local`
cluster and is checked from outside: the balancer's answers under a probe, the units and
images on the machines, the registry's tags, etcd's records. A cluster file with another
component or another ``registry.keep`` is a copy of clusters/local.yaml in a temporary
clusters folder (AIR_CLUSTERS_DIR), so it is still the cluster `local`. The tests run in
file order; each leaves the cluster serving on the plain local.yaml. Deploys are the expensive
step: where one deploy can carry the change another check needs, it does (the first deploy
and the deploy that takes the extra component away also change static_website, so that the
image-retention test finds the machines holding enough of its images without deploys of its
own; that test's last deploy is the one the registry goes down in).
"""
import base64
import json
import subprocess
import time

import yaml

from sandbox import testbed as sb
from tasks.net import docker_api
from tasks.commands import machine
from tasks.model import state
from tasks.model.credentials import load_credentials
from tasks.net.executor import Executor
from tasks.net.session import session

from conftest import (ROOT, SPARE_ADDRESSES, Probe, Running, error_line, etcd_of, fab, get_version, local_copy, on,
                      on_each)
from tasks.runbooks import membership, records
from tasks.runbooks import steps

REGISTRY = f"{sb.PREFIX}-registry"
LOCAL = yaml.safe_load((ROOT / "clusters" / "local.yaml").read_text())
EXTRA = {"name": "extra", "port": 8084, "health": "/health", "repository": sb.WEBSITE_REPOSITORY,
         "branch": "develop", "source": "."}


def current(cluster) -> dict:
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1]


def history(cluster) -> list:
    with etcd_of(cluster) as client:
        return records.history(client, cluster)


def released(proc) -> str:
    lines = [line for line in proc.stdout.splitlines() if line.startswith("release ")]
    assert lines, proc.stdout + proc.stderr
    return lines[-1].split()[1]


def probed(sandbox, *args, env=None, check=True):
    """``fab ARGS`` under a probe through the balancer: (process, probe, seconds)."""
    began = time.monotonic()
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        proc = fab(*args, env=env, check=check)
    seconds = time.monotonic() - began
    print("\n" + probe.report(" ".join(args[:3])))
    assert probe.failed == 0, probe.errors
    return proc, probe, seconds


def running_images(cluster) -> dict:
    """machine -> {container: image ID it runs}."""
    command = "docker ps --format '{{.Names}}' | sort | xargs -r docker inspect -f '{{.Name}} {{.Image}}'"
    return {m: dict(line.lstrip("/").split() for line in out.splitlines())
            for m, out in on_each(cluster, command).items()}


def image_census(cluster, address) -> tuple:
    """(component -> image IDs of its repository, total bytes of them) on one machine."""
    out = on(cluster, address, "docker images --no-trunc --format '{{.Repository}} {{.ID}} {{.Size}}' "
                               f"| grep '^{cluster.registry.address}/{cluster.namespace}/{cluster.name}_' | sort -u").stdout
    ids: dict = {}
    sizes = {}
    for line in out.splitlines():
        repository, image_id, size = line.split()
        ids.setdefault(repository.rsplit("/", 1)[1].removeprefix(f"{cluster.name}_"), set()).add(image_id)
        sizes[image_id] = size
    return ids, sum(_bytes(s) for s in sizes.values())


def _bytes(size: str) -> float:
    for unit, factor in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1)):
        if size.endswith(unit):
            return float(size[:-len(unit)]) * factor
    raise AssertionError(size)


def pulls_since(cluster, since: float) -> dict:
    """machine -> the images its engine pulled since ``since`` (seconds since the epoch)."""
    command = (f"docker events --since {int(since)} --until $(date +%s) --filter type=image --filter event=pull "
               "--format '{{.ID}}'")
    return {m: out.split() for m, out in on_each(cluster, command).items()}


def overwrite_tag(cluster, component: str, version: str, other: str) -> str:
    """Push another image (``other``'s current one) as ``component``:``version`` from the build server,
    by hand with the sandbox's push account; returns the image ID now under that tag."""
    registry = cluster.registry.address
    username, password = load_credentials(cluster.registry.credentials)
    with Executor(cluster) as ex:
        api = docker_api.engine(ex.conn(cluster.build.host))
        source = f"{registry}/{cluster.image(other)}:latest"
        api.pull(f"{registry}/{cluster.image(other)}", tag="latest",
                 auth_config={"username": username, "password": password})
        api.tag(source, f"{registry}/{cluster.image(component)}", version)
        for chunk in api.push(f"{registry}/{cluster.image(component)}", tag=version, stream=True, decode=True,
                              auth_config={"username": username, "password": password}):
            assert "error" not in chunk, chunk
        return api.inspect_image(source)["Id"]


def registry_digest(registry, cluster, component, version):
    return registry.config_digest(cluster.image(component), version)


# ---------------------------------------------------------------- pinned by digest

def test_an_overwritten_version_tag_changes_nothing_that_runs(sandbox, local_serving, registry):
    """Machines run the recorded digests: a tag pushed again by hand moves nothing; the next push
    takes the next free patch instead of writing over it."""
    cluster = local_serving
    sb.commit_change(sb.Change("air_frontend"))
    # static_website too: one more of its images on the machines for the image-retention test,
    # without a deploy of its own there. Nothing checked here is about static_website.
    sb.commit_change(sb.Change("static_website"))
    deployed, _, _ = probed(sandbox, "deploy", "--cluster", "local")
    record = current(cluster)
    frontend = record["components"]["air_frontend"]
    assert frontend["manifest"].startswith("sha256:") and record["id"] == released(deployed)
    other = overwrite_tag(cluster, "air_frontend", frontend["version"], "air_backend")
    assert registry_digest(registry, cluster, "air_frontend", frontend["version"]) == other != frontend["digest"]

    spare = SPARE_ADDRESSES[0]  # joins after the tag moved: it pulls the recorded image all the same
    with Executor(cluster) as ex:
        if machine.fresh_problems(steps.facts(ex, spare)):
            sb.reset_machines([spare])
    fab("add-machine", "--cluster", "local", "--via", cluster.machines[0], "--machine", spare)
    try:
        joined = on(cluster, spare, "docker inspect -f '{{.Image}}' air-air_frontend").stdout.strip()
    finally:  # what `fab remove-machine` does, run in this process: the cluster put back, not a check
        with session(cluster, f"remove-machine {spare}", cluster.machines[0]) as s:
            membership.remove(s, cluster.machines[0], spare)
    assert joined == frontend["digest"]

    again, _, _ = probed(sandbox, "deploy", "--cluster", "local")
    major, minor, patch = frontend["version"].split(".")
    taken = f"{major}.{minor}.{int(patch) + 1}"
    assert f"push: air_frontend {taken}\n" in again.stderr  # the image is pushed again, under a free tag
    assert registry_digest(registry, cluster, "air_frontend", frontend["version"]) == other  # not written over
    assert registry_digest(registry, cluster, "air_frontend", taken) == frontend["digest"]
    assert released(again) == record["id"] and "nothing to do" in again.stderr  # the same images: the same release
    for address, containers in running_images(cluster).items():
        assert containers["air-air_frontend"] == frontend["digest"], address


def test_a_release_recorded_by_tag_whose_tag_moved_is_refused_before_any_restart(sandbox, local_serving,
                                                                                   registry):
    """A release recorded before manifest digests were kept is pulled by its tags; a tag that now holds
    other content is caught by the check after the pull, before anything stops."""
    cluster = local_serving
    before = current(cluster)
    older = next(r for r in reversed(history(cluster)) if r["outcome"] in ("succeeded", "installed")
                 and r["id"] != before["id"]
                 and r["components"]["air_frontend"]["version"] != before["components"]["air_frontend"]["version"])
    legacy = {**older, "components": {name: {"version": c["version"], "digest": c["digest"]}
                                      for name, c in older["components"].items()}}
    key = state.history_key(cluster, older["when"])
    with etcd_of(cluster) as client:  # as the air-deploy before pinning recorded it
        client.put(key, json.dumps(legacy, sort_keys=True))
    try:
        version = older["components"]["air_frontend"]["version"]
        other = overwrite_tag(cluster, "air_frontend", version, "air_backend")
        started = running_images(cluster)
        proc, probe, _ = probed(sandbox, "rollback", "--cluster", "local", "--to", older["id"], check=False)
    finally:
        with etcd_of(cluster) as client:
            client.put(key, json.dumps(older, sort_keys=True))
    line = error_line(proc)
    print(line)
    assert (f"air_frontend {version}: the registry gave {other}, release {older['id']} records "
            f"{older['components']['air_frontend']['digest']}") in line
    assert "restart" not in line
    assert running_images(cluster) == started  # nothing restarted
    assert current(cluster)["id"] == before["id"]


def test_machines_log_in_with_the_pull_account_and_the_push_account_stays_here(local_serving):
    cluster = local_serving
    push_user, push_password = load_credentials(cluster.registry.credentials)
    pull_user, _ = load_credentials(cluster.registry.pull_credentials)
    assert pull_user != push_user
    for address, text in on_each(cluster, "cat /root/.docker/config.json").items():
        login = base64.b64decode(json.loads(text)["auths"][cluster.registry.address]["auth"]).decode()
        assert login.split(":")[0] == pull_user, address
        assert push_password not in text and push_password not in login, address


# ---------------------------------------------------------------- components come and go

def test_components_come_and_go_and_rollbacks_cross_both(sandbox, local_serving, tmp_path, clock):
    """The deploy that takes the extra component away also ships a change of static_website: one
    more of its images on the machines for the image-retention test, without a deploy of its own
    there (nothing checked here is about static_website)."""
    cluster = local_serving
    plain = current(cluster)["id"]
    with_extra = local_copy(tmp_path / "extra", components=LOCAL["components"] + [EXTRA])

    with clock("deploy adding a component"):
        added, _, _ = probed(sandbox, "deploy", "--cluster", "local", env=with_extra)
    grown = released(added)
    extra = current(cluster)["components"]["extra"]["version"]
    assert set(on_each(cluster, "systemctl is-active air-extra.service").values()) == {"active\n"}
    answer = get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"])
    assert answer["release"] == grown and answer["components"]["extra"] == extra, answer

    sb.commit_change(sb.Change("static_website"))
    with clock("deploy taking it away"):
        removed, _, _ = probed(sandbox, "deploy", "--cluster", "local")  # the plain file: extra is gone
    assert "extra" not in current(cluster)["components"]
    gone = "systemctl list-unit-files --no-legend air-extra.service | wc -l; docker ps -q --filter name=air-extra | wc -l"
    assert set(on_each(cluster, gone).values()) == {"0\n0\n"}
    assert "extra" not in get_version(sandbox["balancer"]["address"], sandbox["balancer"]["port"])["components"]

    with clock("rollback to the release with it"):
        back, _, _ = probed(sandbox, "rollback", "--cluster", "local", "--to", grown, env=with_extra)
    assert released(back) == grown
    assert set(on_each(cluster, "systemctl is-active air-extra.service").values()) == {"active\n"}

    with clock("rollback to a release older than it"):
        first, _, _ = probed(sandbox, "rollback", "--cluster", "local", "--to", plain, env=with_extra)
    assert released(first) == plain
    assert set(on_each(cluster, gone).values()) == {"0\n0\n"}


# ---------------------------------------------------------------- old images

def test_machines_keep_the_images_of_the_current_and_kept_releases(sandbox, local_serving, tmp_path, figures, clock):
    """The deploy that cleans up is also the one the registry goes down in, for 3 s during the
    pulls: the engines' retries carry it through (under the probe), and it cleans up all the same.
    The static_website images it removes are those the tests before left (their deploys change it
    for this), or, with fewer, those of deploys of its own."""
    cluster = local_serving
    keep = 1  # registry.keep (3 by default): 1 proves the same rule in fewer deploys
    keep_all = local_copy(tmp_path / "all", registry={"keep": 50})
    keep_one = local_copy(tmp_path / "one", registry={"keep": keep})
    address = cluster.machines[0]
    # With every image kept, deploys until the machine holds more static_website images than the
    # current one and `keep` more; what earlier tests left counts (the module's first deploy and its
    # deploy taking the extra component away change static_website for this), so after them it takes
    # none. The release before the cleanup is then the test before's rollback to a release of the
    # plain file: it is one of the kept ones all the same (a rollback is recorded as a release).
    deploys = 0
    while deploys < 3 and len(image_census(cluster, address)[0]["static_website"]) <= keep + 1:
        sb.commit_change(sb.Change("static_website"))
        fab("deploy", "--cluster", "local", env=keep_all)
        deploys += 1
    disk = "du -sk /var/lib/docker/overlay2 /var/lib/docker/image | awk '{s += $1} END {print s}'"
    before, size_before = image_census(cluster, address)
    disk_before = int(on(cluster, address, disk).stdout)
    sb.commit_change(sb.Change("static_website"))
    with clock("deploy cleaning up, the registry down for 3 s"):
        registry_down_for_3_s_during_the_pulls(sandbox, cluster, env=keep_one)
    after, size_after = image_census(cluster, address)
    disk_after = int(on(cluster, address, disk).stdout)
    figures(f"disk use of {address}'s Docker images and layers (du of overlay2 and image): "
            f"{disk_before / 1024:.1f} MiB before cleanup, {disk_after / 1024:.1f} MiB after")
    figures(f"images of {address} after {deploys + 1} deploys, keep {keep} (sizes as docker reports them, shared "
            f"layers counted per image): before cleanup {sum(map(len, before.values()))} "
            f"({size_before / 1e6:.1f} MB), after {sum(map(len, after.values()))} ({size_after / 1e6:.1f} MB); "
            f"per component before {({c: len(i) for c, i in sorted(before.items())})}, "
            f"after {({c: len(i) for c, i in sorted(after.items())})}")
    assert len(before["static_website"]) > keep + 1
    assert all(len(ids) <= keep + 1 for ids in after.values()) and len(after["static_website"]) == keep + 1
    kept = {r["components"]["static_website"]["digest"] for r in history(cluster)[-(keep + 1):]}
    assert after["static_website"] == kept

    since = time.time() - 1
    _, _, seconds = probed(sandbox, "rollback", "--cluster", "local")
    assert pulls_since(cluster, since) == {m: [] for m in cluster.machines}
    figures(f"rollback to the previous release (its images on the machines, no pull): {seconds:.1f} s")

    oldest = next(r for r in history(cluster) if r["outcome"] == "succeeded"
                  and r["components"]["static_website"]["digest"] not in after["static_website"])
    since = time.time() - 1
    _, _, seconds = probed(sandbox, "rollback", "--cluster", "local", "--to", oldest["id"])
    assert all(pulled for pulled in pulls_since(cluster, since).values())
    figures(f"rollback to a release whose images were removed (pulled again): {seconds:.1f} s")


# ---------------------------------------------------------------- a flaky registry

def registry_down_for_3_s_during_the_pulls(sandbox, cluster, env=None) -> None:
    """`fab deploy` (a change committed) with the registry stopped for 3 s once the release is
    planned, under a probe: it is retried through, nothing fails, and the machines' engines did try
    while the registry was down."""
    with Probe(sandbox["balancer"]["address"], sandbox["balancer"]["port"]) as probe:
        deploy = Running("deploy", "--cluster", "local", env=env)
        deploy.wait_for("deploy: release ")
        subprocess.run(["docker", "exec", REGISTRY, "systemctl", "stop", "docker-registry"], check=True)
        stopped = time.time()
        time.sleep(3)
        subprocess.run(["docker", "exec", REGISTRY, "systemctl", "start", "docker-registry"], check=True)
        done = deploy.finish()
    print("\n" + probe.report("deploy with the registry down for 3 s"))
    assert done.returncode == 0, done.stderr
    assert probe.failed == 0, probe.errors
    # The machines' engines did try while the registry was down.
    failed = on_each(cluster, f"journalctl -u docker --since @{int(stopped)} --no-pager -o cat | "
                              "grep -c -i 'connection refused' || true")
    print(failed)
    assert any(int(count) > 0 for count in failed.values()), failed
