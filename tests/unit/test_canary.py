"""A canary deploy on the recording executor: one machine gets the candidate, the rest is untouched;
a rollback of it puts that machine back; its records in etcd say where the candidate runs."""
import json

import pytest

from tasks.commands import machine
from tasks.model import state
from tasks.model.errors import ConfigError
from tasks.model.rollout_plan import drift
from tasks.runbooks import records
from tasks.runbooks.deploy import deploy_canary, deploy_release, rollback_canary
from tasks.runbooks.upgrade import UpgradeFailed

from .test_rollout import MACHINES, NEW, OLD, facts_text, record_routes, s  # noqa: F401 (fixtures)

CANARY = "10.0.0.3"


def changed_hosts(ex) -> set:
    return {h for h, _, change in ex.calls if change}


def history(s) -> list:
    return [json.loads(v) for _, v in sorted(s.etcd.get_prefix(state.history_prefix(s.cluster)).items())]


def test_a_canary_upgrades_only_its_machine_and_records_the_candidate(s):
    deploy_canary(s, NEW, OLD, CANARY, branch="master", commit="abc")
    assert changed_hosts(s.ex) == {CANARY, "10.0.0.100"}  # the machine and the balancer
    assert s.ex.routed == [["10.0.0.1", "10.0.0.2"], MACHINES]
    candidate, record = records.read_candidate(s.etcd, s.cluster)
    assert candidate == NEW and record["machines"] == [CANARY] and record["outcome"] == "running"
    assert record["commit"] == "abc"
    assert records.read_release(s.etcd, s.cluster)[0] == OLD  # the cluster's release is unchanged


def test_a_second_candidate_is_refused_before_any_change(s):
    other = OLD.__class__(tuple(i.__class__(i.component, "9.9.9", "sha256:" + "f" * 64) for i in OLD.images))
    records.write_candidate(s.etcd, s.cluster, other, ["10.0.0.1"])
    with pytest.raises(ConfigError, match=r"^candidate .* already runs on 10\.0\.0\.1: `fab deploy --cluster prod` "
                                          r"continues it"):
        deploy_canary(s, NEW, OLD, CANARY)
    assert changed_hosts(s.ex) == set()


def test_a_failed_canary_puts_the_machine_back_and_forgets_the_candidate(s):
    s.ex.answer("http://127.0.0.1:8080/health", host=CANARY, exited=1, stderr="not healthy within 60 s: web", first=True)
    with pytest.raises(UpgradeFailed, match=f"upgrade of {CANARY} to {NEW.id} failed"):
        deploy_canary(s, NEW, OLD, CANARY)
    assert records.read_candidate(s.etcd, s.cluster) == (None, None)
    assert history(s)[-1]["outcome"].startswith(f"failed: canary on {CANARY}: upgrade of {CANARY}")
    assert changed_hosts(s.ex) == {CANARY, "10.0.0.100"}


def test_a_canary_must_be_a_member_before_anything_is_built(s):
    with pytest.raises(ConfigError, match=r"^--canary: 10\.0\.0\.9 is not an etcd member of prod"):
        deploy_release(s, "build.example.org", "master", canary="10.0.0.9")
    assert s.ex.calls == []


def test_rolling_back_a_canary_puts_its_machines_on_the_clusters_release(s):
    s.ex.answer("echo '--release'", host=CANARY, stdout=facts_text(NEW.id, {"web": "1.0.1", "worker": "1.0.0"}), first=True)
    record = records.write_candidate(s.etcd, s.cluster, NEW, [CANARY], branch="master")
    rollback_canary(s, OLD, NEW, record)
    assert changed_hosts(s.ex) == {CANARY, "10.0.0.100"}
    assert any(machine.stop_command(s.cluster, ["web"]) in c for c in s.ex.commands(CANARY, changes_only=True))
    assert records.read_candidate(s.etcd, s.cluster) == (None, None)
    assert history(s)[-1]["outcome"] == f"rolled back: canary on {CANARY}" and history(s)[-1]["id"] == NEW.id


def test_a_machine_running_the_candidate_is_not_drift(cluster):
    facts = {m: {"release": OLD.id} for m in MACHINES}
    facts[CANARY] = {"release": NEW.id}
    assert drift(cluster, MACHINES, facts, MACHINES, OLD, {CANARY: NEW.id}) is None
    assert "10.0.0.3 runs release" in drift(cluster, MACHINES, facts, MACHINES, OLD)
