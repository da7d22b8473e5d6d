"""tasks/push.py: the version a push takes and the manifest digest it records, against an in-memory registry;
publish's check of an unchanged build."""
from types import SimpleNamespace

import pytest

from tasks.model import version
from tasks.model.errors import RemoteError
from tasks.model.release import Release
from tasks.runbooks import push

BUILT = "sha256:" + "b" * 64    # the built image's ID
OTHER = "sha256:" + "0" * 64    # another image pushed under a version by hand


def manifest_of(config: str) -> str:
    return "sha256:" + config[-1] * 63 + "m"


class Registry:
    """tag -> config digest of one repository; manifests derived from the config digest."""

    def __init__(self, tags: dict):
        self.held = dict(tags)

    def tags(self, repository):
        return list(self.held)

    def digests(self, repository, tag):
        config = self.held.get(tag)
        return (config, manifest_of(config)) if config else None

    def config_digest(self, repository, tag):
        return self.held.get(tag)


class Engine:
    """The build server's engine: every push lands in ``registry`` and says its digest in an aux chunk."""

    def __init__(self, registry):
        self.registry, self.pushes = registry, []

    def tag(self, image, repository, tag):
        pass

    def prune_images(self, filters):
        self.pruned = filters
        return {"SpaceReclaimed": 0}

    def push(self, repository, tag, **options):
        self.pushes.append(tag)
        self.registry.held[tag] = BUILT
        return iter([{"status": "Pushed"}, {"aux": {"Tag": tag, "Digest": manifest_of(BUILT), "Size": 1}}])


def executor(cluster):
    return SimpleNamespace(cluster=cluster, check=lambda what: None)


def step_of(cluster, registry):
    return push.plan(cluster, (1, 0), {"web": BUILT}, registry)[0]


def test_the_planned_version_when_its_tag_is_free(cluster):
    registry = Registry({"1.0.0": OTHER})
    step = step_of(cluster, registry)
    assert step.decision == version.Decision("1.0.1", True, "1.0.0")
    assert push.free_version(registry, "aircloak/prod_web", step) == ("1.0.1", None)


def test_a_tag_pushed_meanwhile_with_another_image_is_never_overwritten(cluster):
    registry = Registry({"1.0.0": OTHER})
    step = step_of(cluster, registry)
    registry.held.update({"1.0.1": OTHER, "1.0.2": OTHER})  # a second push, and one by hand, after the plan
    engine = Engine(registry)
    done = push.pushed(executor(cluster), engine, registry, step, "abc", {})
    assert engine.pushes == ["1.0.3", "latest"]
    assert registry.held["1.0.1"] == registry.held["1.0.2"] == OTHER
    assert (done.decision.version, done.manifest) == ("1.0.3", manifest_of(BUILT))
    assert Release((done.image,)).to_dict()["components"]["web"] == {
        "version": "1.0.3", "digest": BUILT, "manifest": manifest_of(BUILT)}


def test_a_tag_that_already_holds_this_image_is_taken_without_a_push(cluster):
    registry = Registry({"1.0.0": OTHER})
    step = step_of(cluster, registry)
    registry.held.update({"1.0.1": BUILT, "latest": BUILT})  # another push of the same build got there first
    engine = Engine(registry)
    done = push.pushed(executor(cluster), engine, registry, step, "abc", {})
    assert engine.pushes == []
    assert (done.decision.version, done.manifest) == ("1.0.1", manifest_of(BUILT))


def test_an_unchanged_image_keeps_its_version_and_records_its_manifest(cluster):
    registry = Registry({"1.0.0": OTHER, "1.0.1": BUILT, "latest": BUILT})
    step = step_of(cluster, registry)
    assert (step.decision.changed, step.manifest) == (False, manifest_of(BUILT))
    engine = Engine(registry)
    assert push.pushed(executor(cluster), engine, registry, step, "abc", {}) == step
    assert engine.pushes == []


def test_a_moved_tag_is_found_and_only_then(cluster, monkeypatch):
    from tasks.model.release import Image
    release = Release((Image("web", "1.0.3", "sha256:" + "a" * 64, "sha256:" + "m" * 64),
                       Image("worker", "1.0.1", "sha256:" + "b" * 64, "")))  # recorded before manifests were kept
    held = {("web", "1.0.3"): ("sha256:" + "a" * 64, "sha256:" + "m" * 64),
            ("worker", "1.0.1"): ("sha256:" + "b" * 64, "sha256:" + "n" * 64)}
    asked = []

    class Registry:
        knows_login = False

        def ready(self):
            return self

        def digests(self, repository, tag):
            asked.append((repository, tag))
            return held.get((repository.rsplit("_", 1)[-1], tag))

    made = []
    monkeypatch.setattr(push.RegistryClient, "for_cluster", classmethod(lambda cls, ex: made.append(1) or Registry()))
    side_by_side = []
    ex = SimpleNamespace(cluster=cluster, registry_client=None,
                         parallel=lambda work, items, describe: side_by_side.append(len(items)) or [work(i) for i in items])
    assert push.moved_tag(ex, release) is None
    assert asked == [(cluster.image("web"), "1.0.3"), (cluster.image("worker"), "1.0.1")]
    assert side_by_side == [1]  # the first alone: the client learns how to log in
    held[("web", "1.0.3")] = ("sha256:" + "c" * 64, "sha256:" + "o" * 64)  # pushed again by hand
    assert push.moved_tag(ex, release) == "web 1.0.3"
    del held[("web", "1.0.3")]  # gone
    assert push.moved_tag(ex, release) == "web 1.0.3"
    assert made == [1]  # one client for the task
    ex.registry_client.knows_login = True  # warmed ahead: every tag at once
    side_by_side.clear()
    assert push.moved_tag(ex, release) == "web 1.0.3"
    assert side_by_side == [2]


def test_an_unchanged_build_asks_the_registry_while_the_checkouts_update_and_builds_nothing(cluster, monkeypatch):
    import threading
    from tasks.model.release import Image
    from tasks.net.executor import Executor
    from tasks.runbooks import publish
    release = Release((Image("web", "1.0.3", "sha256:" + "a" * 64, "sha256:" + "d" * 64),))
    meta = {"branch": "master", "commit": "c" * 40, "sources": {"main": "c" * 40}, "inputs": {"web": "i" * 64}}
    recorded = {**release.to_dict(), **meta}
    asked = threading.Event()
    order = []

    def checked_out(ex, host, branch):  # the checkouts' update: the registry is asked meanwhile
        assert asked.wait(5), "the registry was not asked while the checkouts were updated"
        order.append("checked out")
        return SimpleNamespace(meta=lambda cluster: meta)

    def moved(ex, held):
        order.append(("registry", held.id))
        asked.set()
        return None

    monkeypatch.setattr(publish, "check_out", checked_out)
    monkeypatch.setattr(publish, "moved_tag", moved)
    monkeypatch.setattr(publish, "build_images", lambda *a: pytest.fail("built"))
    ex = SimpleNamespace(cluster=cluster, meanwhile=lambda work, *args: Executor.meanwhile(None, work, *args))
    published = publish.publish(ex, "build", recorded=recorded)
    assert (published.release, published.steps) == (release, [])
    assert order == [("registry", release.id), "checked out"]

    def gone(ex, held):
        raise RemoteError("registry r:5000 unreachable: refused")
    monkeypatch.setattr(publish, "moved_tag", gone)
    monkeypatch.setattr(publish, "check_out", lambda ex, host, branch: SimpleNamespace(meta=lambda cluster: meta))
    with pytest.raises(RemoteError, match="unreachable"):  # its error is the publish's when it is needed
        publish.publish(ex, "build", recorded=recorded)
