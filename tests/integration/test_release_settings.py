"""Settings belong to a release, on the sandbox: a deploy that fails puts the previous settings back,
and a rollback restores those of the release it goes back to; each checked from outside (GET
/settings of air_backend through the balancer, etcdctl on every machine), under the probe with a
long request in flight.

One scenario on the installed cluster, its steps in order (each needs the one before): a deploy
with a setting of ours, a broken release with another setting (it fails at its first machine), its
repair with that setting, then the rollback. Only ``CHANGED`` changes (the component a normal
change touches, as test_deploy's rollback leaves it): the other components keep the versions
the registry gave them. The cluster file is a copy (``local_copy``); the module's fixture puts
the real file's settings back.
"""
import http.client
import json
import secrets as tokens

import pytest

from sandbox import testbed as sb
from tasks.model import release_settings as kept
from tasks.model import state
from tasks.runbooks import records

from conftest import Probe, Slow, etcd_of, etcdctl_each, fab, local_copy

SITE = "site/name"
CHANGED = "static_website"
# timeouts.healthy: a broken release is waited out that long, and its first machine, put back (all of its
# components restarted), must be healthy within it too; SHORT_HEALTH (5 s) was not enough once on a busy host.
HEALTHY = 10
FLAG = "feature/flag"


@pytest.fixture(scope="module")
def restored(installed):
    yield installed
    fab("settings.apply", "--cluster", "local", "--wait")  # back to what the real cluster file says


def with_settings(folder, site, **more) -> dict:
    """The environment of a copy of the cluster file whose settings have ``site`` (and ``more``)."""
    return local_copy(folder, settings={SITE: site, **more}, timeouts={"healthy": HEALTHY})


def site_through_balancer(cluster) -> set:
    """The site names air_backend answers /settings with, through the balancer, once every machine answered."""
    machines, names = set(), set()
    for _ in range(60):
        conn = http.client.HTTPConnection(cluster.balancer.host, cluster.balancer.http_port, timeout=10)
        try:
            conn.request("GET", "/settings")
            answer = conn.getresponse()
            body = json.loads(answer.read())
        finally:
            conn.close()
        assert answer.status == 200 and body["database_password"] == "present", body
        names.add(body["site_name"])
        machines.add(body["machine"])
        if machines >= set(cluster.machines):
            return names
    raise AssertionError(f"/settings answered from {sorted(machines)} only, not from all of {cluster.machines}")


def etcd_values(cluster, key) -> set:
    """The values etcdctl reads for ``key`` (a setting, relative) on each machine ('' when absent)."""
    full = state.setting_key(cluster, key)
    return set(etcdctl_each(cluster, f"get --print-value-only {full}").values())


def recorded(cluster) -> tuple:
    with etcd_of(cluster) as client:
        return records.read_release(client, cluster)[1], records.history(client, cluster)


def under_traffic(cluster, *args, env=None, check=True):
    """`fab ARGS` under the probe, a long request in flight all along; (the run, the probe, the long request)."""
    slow = Slow(cluster, 6)
    with Probe(cluster.balancer.host, cluster.balancer.http_port) as probe:
        slow.start()
        assert slow.started_on.wait(10), slow.error
        proc = fab(*args, env=env, check=check)
    slow.join(30)
    return proc, probe, slow


def test_a_failed_deploy_puts_the_settings_back_and_a_rollback_restores_its_releases(
        restored, local_serving, tmp_path, clock, figures):
    cluster = local_serving
    first, second = f"Air {tokens.token_hex(3)}", f"Air {tokens.token_hex(3)}"

    # A release deployed with a setting of ours (nothing else new: it is recorded again with it).
    with clock("deploy with a setting of ours"):
        fab("deploy", "--cluster", "local", env=with_settings(tmp_path / "first", first))
    good, _ = recorded(cluster)
    assert good["settings"]["values"][SITE] == {"value": first}
    assert site_through_balancer(cluster) == {first}

    # A broken release with another setting: it fails at its first machine, and the settings go back.
    sb.commit_change(sb.Change(CHANGED, "broken"))
    env = with_settings(tmp_path / "second", second, **{FLAG: "on"})
    with clock("broken deploy with other settings (waits for the health timeout)"):
        proc, probe, slow = under_traffic(cluster, "deploy", "--cluster", "local", env=env, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    error = next(line for line in proc.stderr.splitlines() if line.startswith("error: "))
    figures(f"failed deploy: {error[:120]}; {probe.report('meanwhile')}")
    assert probe.failed == 0 and slow.complete, (probe.errors, slow.lines, slow.error)
    assert f"deploy: settings: ~ {SITE}: {first!r} -> {second!r}" in proc.stderr
    assert f"deploy: settings: + {FLAG} = 'on'" in proc.stderr
    assert "deploy: putting the settings back as they were" in proc.stderr
    assert f"deploy: settings: ~ {SITE}: {second!r} -> {first!r}" in proc.stderr
    assert site_through_balancer(cluster) == {first}
    assert etcd_values(cluster, SITE) == {first + "\n"} and etcd_values(cluster, FLAG) == {""}
    current, history = recorded(cluster)
    assert current["id"] == good["id"] and current["outcome"] == "restored after a failed upgrade"
    assert current["settings"] == good["settings"]
    assert history[-1]["outcome"].startswith("failed: ") and history[-1]["settings"]["values"][SITE] == {"value": second}

    # Its repair, with the other setting, then the plan of a rollback (one `fab` running both, one after
    # the other: the plan reads what the repair left); then the rollback and the listing (one `fab` too).
    sb.commit_change(sb.Change(CHANGED, "fix"))
    with clock("deploy of the repair with other settings, then the rollback's plan"):
        out = fab("deploy", "--cluster", "local", "rollback", "--cluster", "local", "--plan", env=env).stdout
    repaired, _ = recorded(cluster)
    deployed, *plan = out.splitlines()
    assert deployed == f"release {repaired['id']}", out
    assert f"settings: ~ {SITE}: {second!r} -> {first!r}" in plan and f"settings: - {FLAG}" in plan
    # the repair's settings, which the plan changed nothing of
    assert site_through_balancer(cluster) == {second} and etcd_values(cluster, FLAG) == {"on\n"}
    with clock("rollback, under the probe, then the listing"):
        proc, probe, slow = under_traffic(cluster, "rollback", "--cluster", "local", "releases", "--cluster", "local",
                                          env=env)
    figures(f"rollback restoring the settings: {probe.report('meanwhile')}")
    assert probe.failed == 0 and slow.complete, (probe.errors, slow.lines, slow.error)
    rolled_back, *listing = proc.stdout.splitlines()
    assert rolled_back == f"release {good['id']}", proc.stdout
    assert f"rollback: settings: ~ {SITE}: {second!r} -> {first!r}" in proc.stderr
    assert f"rollback: settings: - {FLAG}" in proc.stderr
    secret_values = [p.read_text().strip() for p in sb.STATE.joinpath("secrets").iterdir() if p.is_file()]
    assert not any(value in proc.stdout + proc.stderr for value in secret_values)
    assert site_through_balancer(cluster) == {first}
    assert etcd_values(cluster, SITE) == {first + "\n"} and etcd_values(cluster, FLAG) == {""}
    current, history = recorded(cluster)
    assert current["rollback_from"] == repaired["id"] and current["settings"] == good["settings"]

    # The listing (after the rollback) says which releases ran with the settings etcd holds now.
    assert [line[2:].split()[1] for line in listing] == [r["id"] for r in history], listing  # one line each
    short = lambda record: f"settings {kept.short(record):8}"
    assert listing[-1].startswith("*") and f"{short(good)} same" in listing[-1]
    assert any(repaired["id"] in line and f"{short(repaired)} differs" in line for line in listing)
