"""What happens around a deploy, on the sandbox: the release command (air_backend's migration),
the hooks, and the deploy's message; each checked from outside (the registry's tags, the
sample database on the machines, etcd's records, HTTP through the balancer, `fab releases`),
under the probe with a long request in flight.

One scenario, its steps in order (each needs the one before), with as few deploys as it can:
air_backend changes to need the database at schema 1 with a migration that fails; a deploy
refused by the pre_deploy hook (nothing pushed); the same release again, which pushes and
stops at its failing migration (nothing drained); the migration repaired, deployed with a
message and a post_deploy hook that fails (the deploy succeeds); then a rollback, which does not
run the migration. The cluster file is a copy (``local_copy``) with the release command and hooks
that write their environment to files beside it. The cluster ends on the release it started
on, and the module's fixture puts air_backend's folder back as it was (one commit, no deploy):
the other modules find master as deployed, and neither it nor local2's database needs a schema.
"""
import json
import re

import pytest

from sandbox import testbed as sb
from tasks.runbooks import records, settings

from conftest import error_line, etcd_of, fab, local_copy, on, serving
from integration.test_release_settings import under_traffic

BACKEND = "air_backend"
DATABASE = sb.DATABASE_MOUNT
GATE = "gate-closed"          # while this file is beside the cluster file, the pre_deploy hook fails
POST_FAILS = "post-fails"     # while this file is there, the post_deploy hook fails
MESSAGE = "Verified emails: a new schema"
NEEDED: list = []  # the schema the scenario's release needs
HOOKS = {
    "pre_deploy": f"env | grep ^AIR_ | sort > pre.env; if [ -e {GATE} ]; then echo 'CI is red for this commit'; "
                  f"exit 1; fi",
    "post_deploy": f"env | grep ^AIR_ | sort > post.env; if [ -e {POST_FAILS} ]; then echo 'chat is down'; exit 1; fi",
    "on_failure": "env | grep ^AIR_ | sort > failure.env",
}


@pytest.fixture(scope="module")
def phase(installed, tmp_path_factory):
    """(the cluster, the folder of its copy, the environment that makes `fab` use the copy); at the end
    the application needs no schema again."""
    folder = tmp_path_factory.mktemp("release_phase")
    env = local_copy(folder, release_command={"component": BACKEND, "command": "/app/bin/migrate"}, hooks=HOOKS)
    build = sb._node("build").name
    before = sb.inside(build, f"git -C {sb.REPOSITORY} rev-parse master").strip()
    yield installed, folder, env
    sb.inside(build, f"""
        rm -rf /tmp/air-restore && git clone -q {sb.REPOSITORY} /tmp/air-restore && cd /tmp/air-restore
        git rm -q -r components/{BACKEND} && git checkout {before} -- components/{BACKEND}
        git -c user.name=sandbox -c user.email=sandbox@air.invalid commit -q --allow-empty -m 'air_backend as before'
        git push -q origin master && rm -rf /tmp/air-restore
    """)


def recorded(cluster) -> tuple:
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1], records.history(client, cluster)


def env_file(path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def database(cluster) -> tuple:
    """(the schema the sample database is at, its migrations' log lines), read on the first machine
    (every machine of the cluster mounts the same database)."""
    said = on(cluster, cluster.machines[0], f"cat {DATABASE}/schema 2>/dev/null || echo 0; echo --; "
                                            f"cat {DATABASE}/migrations 2>/dev/null || true").stdout
    schema, _, log = said.partition("--\n")
    return int(schema.strip()), log.splitlines()


def no_secret_in(cluster, *texts) -> None:
    for secret in settings.secrets_of(cluster).values:
        assert all(secret not in text for text in texts), "a secret was shown or given to a hook"


def test_a_failing_pre_deploy_hook_stops_the_deploy_before_anything_is_pushed(phase, registry, clock, figures):
    cluster, folder, env = phase
    NEEDED.append(database(cluster)[0] + 1)  # a schema the database is not at yet (a rerun finds it at 1)
    sb.commit_change(sb.Change(BACKEND, "schema", str(NEEDED[0])))
    subject = "the migration of air_backend fails"
    sb.commit_change(sb.Change(BACKEND, "migration", "fails"))
    current, history = recorded(cluster)
    tags = registry.tags(cluster.image(BACKEND))
    (folder / GATE).touch()
    with clock("deploy refused by pre_deploy (build included)"):
        proc = fab("deploy", "--cluster", "local", env=env, check=False)
    line = error_line(proc)
    figures(f"pre_deploy refused: {line[:140]}")
    assert line == ("error: hook pre_deploy failed (exit 1): CI is red for this commit; the deploy stopped there: "
                    "nothing was pushed or changed")
    assert "hook pre_deploy: CI is red for this commit" in proc.stderr
    assert registry.tags(cluster.image(BACKEND)) == tags  # nothing pushed
    assert recorded(cluster) == (current, history)  # nothing recorded, nothing rolled
    assert "balancer: routes" not in proc.stderr and serving(cluster)
    seen = env_file(folder / "pre.env")
    assert {k: seen[k] for k in ("AIR_CLUSTER", "AIR_ACTION", "AIR_PREVIOUS_RELEASE", "AIR_BRANCH", "AIR_MESSAGE",
                                 "AIR_OUTCOME", "AIR_SECONDS")} == {
        "AIR_CLUSTER": "local", "AIR_ACTION": "deploy", "AIR_PREVIOUS_RELEASE": current["id"], "AIR_BRANCH": "master",
        "AIR_MESSAGE": subject, "AIR_OUTCOME": "", "AIR_SECONDS": ""}
    assert re.fullmatch(r"[0-9a-f]{12}", seen["AIR_RELEASE"]) and seen["AIR_RELEASE"] != current["id"]
    versions = json.loads(seen["AIR_VERSIONS"])
    assert sorted(versions) == sorted(cluster.component_names)
    assert versions[BACKEND] not in tags  # the version push would have given it
    assert re.fullmatch(r"\S+@\S+", seen["AIR_PERFORMER"])
    failed = env_file(folder / "failure.env")
    assert failed["AIR_OUTCOME"].startswith("failed: hook pre_deploy failed (exit 1)")
    assert failed["AIR_RELEASE"] == seen["AIR_RELEASE"] and float(failed["AIR_SECONDS"]) > 0
    no_secret_in(cluster, (folder / "pre.env").read_text(), (folder / "failure.env").read_text())
    (folder / GATE).unlink()


def test_a_failing_migration_stops_the_deploy_before_any_drain(phase, clock, figures):
    cluster, folder, env = phase
    current, _ = recorded(cluster)
    schema, log = database(cluster)
    with clock("deploy whose migration fails"):
        proc, probe, slow = under_traffic(cluster, "deploy", "--cluster", "local", env=env, check=False)
    line = error_line(proc)
    figures(f"failing migration: {line[:160]}; {probe.report('meanwhile')}")
    print(proc.stderr)
    assert probe.failed == 0 and slow.complete, (probe.errors, slow.lines, slow.error)
    assert set(probe.releases) == {current["id"]}  # the previous release served all along
    ran = re.search(r"release command: '/app/bin/migrate' in a one-off container of air_backend \S+ "
                    r"\(release (\w+)\) on (\S+)", proc.stderr)
    assert ran, proc.stderr
    release, machine = ran.groups()
    assert f"{machine}: migrate: ALTER TABLE users ADD COLUMN email_verified" in proc.stderr  # streamed, named
    assert f"{machine}: migrate: connecting as air with password (secret)" in proc.stderr
    no_secret_in(cluster, proc.stdout, proc.stderr)
    assert "the release command failed (exit 3)" in line and f"schema {NEEDED[0]} not applied; rolled back" in line
    assert f"nothing was drained: local still runs release {current['id']}" in proc.stderr
    assert "balancer: routes" not in proc.stderr  # no machine left the balancer
    after, history = recorded(cluster)
    assert after == current and serving(cluster)
    assert history[-1]["id"] == release and history[-1]["outcome"].startswith(
        f"failed: release command on {machine}: the release command failed (exit 3)")
    assert database(cluster) == (schema, log)  # the migration changed nothing
    assert env_file(folder / "failure.env")["AIR_OUTCOME"].startswith("failed: ")


def test_a_release_with_a_new_migration_runs_it_once_before_any_drain(phase, clock, figures):
    cluster, folder, env = phase
    sb.commit_change(sb.Change(BACKEND, "migration", "passes"))
    previous, _ = recorded(cluster)
    _, log = database(cluster)
    (folder / POST_FAILS).touch()
    with clock("deploy with a new migration"):
        proc, probe, slow = under_traffic(cluster, "deploy", "--cluster", "local", "--message", MESSAGE, env=env)
    figures(probe.report("deploy with a migration"))
    assert probe.failed == 0 and slow.complete, (probe.errors, slow.lines, slow.error)
    current, history = recorded(cluster)
    assert current["id"] != previous["id"] and current["outcome"] == "succeeded" and serving(cluster)
    # Once, on one machine, before the first machine left the balancer.
    schema, after = database(cluster)
    new = after[len(log):]
    assert schema == NEEDED[0] and len(new) == 1 and new[0].split()[2] == str(schema), after
    machine = new[0].split()[1]
    assert re.findall(r"release command: '/app/bin/migrate' in a one-off container .* on (\S+)", proc.stderr) == \
        [machine]
    assert proc.stderr.index("release command: done on") < proc.stderr.index("balancer: routes")
    # Its /health tells a skipped migration from a run one: with the database a schema behind, 503.
    port = cluster.component(BACKEND).port
    behind = on(cluster, machine, f"cp {DATABASE}/schema /tmp/schema && echo {schema - 1} > {DATABASE}/schema && "
                                  f"curl -s -m 5 -w ' %{{http_code}}' http://127.0.0.1:{port}/health; "
                                  f"cat /tmp/schema > {DATABASE}/schema").stdout
    assert behind == f"database at schema {schema - 1}, release needs {schema} 503", behind
    assert database(cluster)[0] == schema
    # The post_deploy hook failed: said, and the deploy stands.
    assert "warning: hook post_deploy failed (exit 1): chat is down (the deploy's outcome stands: succeeded)" \
        in proc.stderr
    post = env_file(folder / "post.env")
    assert (post["AIR_RELEASE"], post["AIR_PREVIOUS_RELEASE"], post["AIR_OUTCOME"], post["AIR_MESSAGE"]) == \
        (current["id"], previous["id"], "succeeded", MESSAGE)
    assert float(post["AIR_SECONDS"]) > 0
    # The history keeps the message with the performer; releases and status show them.
    assert history[-1]["message"] == MESSAGE and current["message"] == MESSAGE
    listing = fab("releases", "--cluster", "local", env=env).stdout.splitlines()
    assert listing[-1].startswith("*") and current["id"] in listing[-1]
    assert listing[-1].endswith(f"  by {current['who']}  {json.dumps(MESSAGE)}")
    shown = fab("status", "--cluster", "local", env=env, check=False).stdout
    assert any(line.startswith("release:") and json.dumps(MESSAGE) in line and current["who"] in line
               for line in shown.splitlines()), shown
    # `fab release-command` runs it alone, once more, at the cluster's release.
    alone = fab("release-command", "--cluster", "local", env=env)
    assert re.search(rf"release command done on \S+ \(release {current['id']}\)", alone.stdout)
    assert len(database(cluster)[1]) == len(after) + 1


def test_a_rollback_does_not_run_the_release_command_and_says_so(phase, clock):
    cluster, folder, env = phase
    _, log = database(cluster)
    current, history = recorded(cluster)
    with clock("rollback"):
        proc = fab("rollback", "--cluster", "local", env=env)
    assert "rollback: the release command is not run" in proc.stderr
    assert "release command: '" not in proc.stderr and database(cluster)[1] == log
    after, _ = recorded(cluster)
    assert after["rollback_from"] == current["id"] and serving(cluster)
    post = env_file(folder / "post.env")
    assert (post["AIR_ACTION"], post["AIR_RELEASE"], post["AIR_PREVIOUS_RELEASE"]) == \
        ("rollback", after["id"], current["id"])
    (folder / POST_FAILS).unlink()
