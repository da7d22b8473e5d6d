"""The release command: its one-off container pinned by equality, when a deploy runs it, and what a
deploy whose release command fails leaves (the recording executor: nothing drained)."""
from dataclasses import replace

import pytest
from invoke.exceptions import Exit

from cloudconfig.units import component_unit
from tasks.commands import release_command as commands
from tasks.model.cluster import ReleaseCommand
from tasks.runbooks import deploy, records
from tasks.runbooks import release_command as runbook
from tasks.runbooks.publish import Published
from tasks.runbooks.release_command import ReleaseCommandFailed

from . import test_release_settings, test_rollout
from .test_release_settings import BUILT, PASSWORD, recorded
from .test_rollout import NEW, OLD

# Their fixtures: the recording session on OLD (``s``) with settings, one a secret (``configured``).
s, record_routes, configured = test_rollout.s, test_rollout.record_routes, test_release_settings.configured

MIGRATE = ReleaseCommand("web", "/app/bin/migrate --to 'latest schema'")


def with_command(cluster, **changes):
    return replace(cluster, release_command=MIGRATE, **changes)


def test_the_one_off_container_has_its_components_identity_at_the_releases_image(cluster):
    target = with_command(replace(cluster, components=(replace(cluster.components[0], user=10001, reads=()),
                                                       *cluster.components[1:])))
    image = NEW.image("web")
    ref = f"registry.example.org:5000/aircloak/prod_web:{image.version}"
    assert commands.run_command(target, NEW, "10.0.0.2") == (
        "/usr/bin/docker rm -f air-web-release-command >/dev/null 2>&1; "
        "/usr/bin/docker run --rm --name air-web-release-command --network host --user 10001 "
        f"--label air.version=1.0.1 -e AIR_COMPONENT=web -e AIR_VERSION=1.0.1 -e AIR_MACHINE=10.0.0.2 "
        "-e AIR_PORT=8080 -e AIR_ETCD=http://127.0.0.1:2379 -e AIR_ETCD_PREFIX=/air/prod/app/ "
        "-v /etc/air/state:/air/state:ro -v /var/lib/air/web:/air/data "
        f"{ref} /app/bin/migrate --to 'latest schema' 2>&1")
    assert commands.remove_command(target) == "/usr/bin/docker rm -f air-web-release-command >/dev/null 2>&1; true"


def test_the_one_off_container_gets_the_same_environment_and_mounts_as_the_unit(cluster):
    """Its etcd login, secrets and data folder are the unit's: both come from ``identity_words``."""
    web = replace(cluster.components[0], secrets=("db_password",), reads=("maintenance",))
    target = with_command(replace(cluster, components=(web, *cluster.components[1:])))
    one_off = commands.run_command(target, NEW, "10.0.0.1")
    unit = component_unit(target, web, "10.0.0.1")
    for word in ("-e AIR_ETCD_USER=air-web", "-e AIR_ETCD_PASSWORD_FILE=/air/secrets/etcd-password",
                 "-v /etc/air/secrets/web:/air/secrets:ro", "-v /var/lib/air/web:/air/data",
                 "-e AIR_ETCD_PREFIX=/air/prod/app/", "-e AIR_MACHINE=10.0.0.1"):
        assert word in one_off and word in unit


def test_secrets_are_masked_the_longest_first():
    assert commands.masked("password hunter2 and hunter2x", ["hunter2", "hunter2x", ""]) == \
        "password (secret) and (secret)"


@pytest.mark.parametrize("release, current, candidate, why", [
    ("r2", "r1", None, None),
    ("r2", None, None, None),
    ("r2", "r1", "r3", None),   # it replaces another candidate: new
    ("r1", "r1", None, "release r1 is already the cluster's release"),
    ("r2", "r1", "r2", "release r2 is the candidate: its canary deploy ran it"),
])
def test_a_deploy_runs_it_for_a_new_release_only(cluster, release, current, candidate, why):
    assert commands.due(with_command(cluster), release, current, candidate) == why
    assert commands.due(cluster, release, current, candidate) == "the cluster file has no release_command"


def test_the_plan_says_whether_it_would_run(cluster):
    target = with_command(cluster)
    assert runbook.plan_line(target, NEW, OLD, None) == (
        "release command: would run \"/app/bin/migrate --to 'latest schema'\" in a one-off container of web 1.0.1 "
        "on one member, before the first drain")
    assert runbook.plan_line(target, OLD, OLD, None) == \
        f"release command: not run (release {OLD.id} is already the cluster's release)"
    assert runbook.plan_line(cluster, NEW, OLD, None) is None


def test_it_runs_on_one_member_before_the_first_drain_its_output_masked(configured, capsys):
    s = configured
    s.cluster = with_command(s.cluster)
    s.ex.answer("air-web-release-command", stdout=f"migrating\nwith {PASSWORD}\ndone\n")
    deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, None, 0.0)
    ran = [(i, h) for i, (h, c, _) in enumerate(s.ex.calls) if "docker run --rm --name air-web-release-command" in c]
    assert [h for _, h in ran] == ["10.0.0.1"]
    assert ran[0][0] < min(i for i, (_, c, _) in enumerate(s.ex.calls) if "list-unit-files --no-legend air-" in c)
    assert s.ex.routed[0] == ["10.0.0.2", "10.0.0.3"]  # the first drain came after it
    said = capsys.readouterr().err
    assert "10.0.0.1: with (secret)" in said and PASSWORD not in said
    assert recorded(s)[0]["id"] == NEW.id


def test_a_failing_release_command_stops_the_deploy_before_any_drain(configured, capsys):
    s = configured
    s.cluster = with_command(s.cluster)
    s.ex.answer("air-web-release-command", exited=3, stdout="".join(f"line {i}\n" for i in range(9)) + PASSWORD)
    with pytest.raises(ReleaseCommandFailed) as failed:
        deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, None, 0.0)
    message = str(failed.value)
    assert message.startswith("10.0.0.1: the release command failed (exit 3): line 5 | line 6 | line 7 | line 8 | "
                              "(secret)")
    assert f"nothing was drained: prod still runs release {OLD.id}" in message and PASSWORD not in message
    assert getattr(s.ex, "routed", []) == []
    assert not any("list-unit-files --no-legend air-" in c for _, c, _ in s.ex.calls)
    current, history = recorded(s)
    assert current["id"] == OLD.id
    assert history[-1]["id"] == NEW.id and history[-1]["outcome"].startswith(
        "failed: release command on 10.0.0.1: the release command failed (exit 3)")


def test_a_release_command_past_its_deadline_has_its_container_removed(configured):
    s = configured
    s.cluster = with_command(s.cluster)
    s.ex.answer("docker run --rm --name air-web-release-command", deadline=True)
    with pytest.raises(ReleaseCommandFailed, match="did not end within 600 s"):
        runbook.run(s, NEW)
    assert any(c.startswith("/usr/bin/docker rm -f air-web-release-command") for c in s.ex.commands("10.0.0.1"))


def test_the_same_release_again_does_not_run_it(configured):
    s = configured
    s.cluster = with_command(s.cluster)
    deploy.roll_cluster(s, Published(OLD, [], BUILT), OLD, None, 0.0)
    assert not any("air-web-release-command" in c for _, c, _ in s.ex.calls)


def test_release_command_refuses_a_cluster_without_one(cluster, monkeypatch):
    monkeypatch.setattr(runbook, "cluster_of", lambda name: cluster)
    with pytest.raises(Exit, match="^error: .*prod.yaml: release_command: missing"):
        runbook.release_command_task.body(None, cluster="prod")


def test_the_history_keeps_the_message_and_the_listing_shows_it_with_the_performer():
    record = {"when": "2024-01-01T00:00:00.000000Z", "id": OLD.id, "components": OLD.to_dict()["components"],
              "who": "ada@laptop", "message": "Add \"verified\" emails"}
    assert deploy.release_line(" ", record, "succeeded").endswith(
        'web=1.0.0 worker=1.0.0  by ada@laptop  "Add \\"verified\\" emails"')
    assert records  # the records module carries the message as any other field


def test_the_cluster_file_names_a_component_it_has(tmp_path):
    from tasks.model.cluster import load

    from .conftest import CLUSTER_YAML
    (tmp_path / "secrets").mkdir(mode=0o700)
    (tmp_path / "prod.yaml").write_text(CLUSTER_YAML + "release_command: {component: web, command: migrate}\n"
                                        "hooks: {pre_deploy: ci-green}\n")
    loaded = load("prod", directory=tmp_path)
    assert loaded.release_command == ReleaseCommand("web", "migrate") and loaded.hooks.pre_deploy == "ci-green"
    (tmp_path / "prod.yaml").write_text(CLUSTER_YAML + "release_command: {component: db, command: migrate}\n")
    with pytest.raises(Exception, match="release_command.component: expected one of the components"):
        load("prod", directory=tmp_path)


def test_a_rollback_says_it_does_not_run_it(cluster, capsys):
    runbook.not_run_by_rollback(cluster)
    assert capsys.readouterr().err == ""
    runbook.not_run_by_rollback(with_command(cluster))
    assert capsys.readouterr().err == ("rollback: the release command is not run (a rollback keeps what it did); "
                                       "`fab release-command --cluster prod` runs it at the cluster's release\n")
