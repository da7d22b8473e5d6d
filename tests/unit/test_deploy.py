"""Which release a rollback goes to, from the cluster's history (oldest first)."""
import pytest

from tasks.model.errors import ConfigError
from tasks.model.release import Image, Release
from tasks.runbooks import deploy
from tasks.runbooks.deploy import rollback_target


def record(release_id, outcome, when):
    return {"id": release_id, "outcome": outcome, "when": when, "components": {}}


HISTORY = [
    record("aaa", "installed", "1"),
    record("bbb", "succeeded", "2"),
    record("ccc", "failed: upgrade of 10.0.0.1 to ccc failed", "3"),
    record("ddd", "succeeded", "4"),
]


def test_the_newest_successful_release_before_the_current_one():
    assert rollback_target(HISTORY, "ddd")["id"] == "bbb"


def test_a_failed_release_is_never_chosen():
    assert rollback_target(HISTORY[:3], "bbb")["id"] == "aaa"


def test_when_current_is_not_the_newest_successful_the_newest_other_is_chosen():
    # After a failed deploy the cluster is back on bbb; the newest good other than bbb wins.
    assert rollback_target(HISTORY, "bbb")["id"] == "ddd"


def test_no_current_release_takes_the_newest_successful():
    assert rollback_target(HISTORY, None)["id"] == "ddd"


def test_rolling_back_twice_goes_back_and_forth():
    after_rollback = HISTORY + [record("bbb", "succeeded", "5")]
    assert rollback_target(after_rollback, "bbb")["id"] == "ddd"


def test_an_explicit_release_must_have_succeeded():
    assert rollback_target(HISTORY, "ddd", to="aaa")["id"] == "aaa"
    with pytest.raises(ConfigError, match="no successful release 'ccc' in the history of prod"):
        rollback_target(HISTORY, "ddd", to="ccc", cluster_name="prod")
    with pytest.raises(ConfigError, match="no successful release 'zzz'"):
        rollback_target(HISTORY, "ddd", to="zzz")


def test_nothing_to_roll_back_to():
    with pytest.raises(ConfigError, match="no earlier successful release of prod"):
        rollback_target([record("aaa", "installed", "1")], "aaa", cluster_name="prod")
    with pytest.raises(ConfigError, match="no earlier successful release"):
        rollback_target([], None)


def test_the_newest_of_several_records_of_one_release_is_returned():
    history = [record("aaa", "installed", "1"), record("bbb", "succeeded", "2"), record("aaa", "succeeded", "3"),
               record("ccc", "succeeded", "4")]
    assert rollback_target(history, "ccc")["when"] == "3"


def test_last_good_is_the_newest_successful_release():
    from tasks.runbooks.deploy import last_good
    first = Release((Image("router", "1.0.0", "sha256:" + "a" * 64),))
    second = Release((Image("router", "1.0.1", "sha256:" + "b" * 64),))
    records = [{**first.to_dict(), "outcome": "installed"}, {**second.to_dict(), "outcome": "succeeded"},
               {**Release((Image("router", "1.0.2", "sha256:" + "c" * 64),)).to_dict(), "outcome": "failed: health"}]
    assert last_good(records) == second
    assert last_good(records[:1]) == first
    assert last_good(records[2:]) is None


def release_of(n: int) -> Release:
    return Release((Image("router", f"1.0.{n}", f"sha256:{n:064x}"),))


def test_machines_keep_the_current_and_the_newest_successful_releases():
    records = [{**release_of(n).to_dict(), "outcome": "succeeded"} for n in range(6)]
    records.insert(4, {**release_of(9).to_dict(), "outcome": "failed: health"})  # never a rollback target
    records.append({**release_of(2).to_dict(), "outcome": "succeeded"})  # a rollback to 2: counted once
    current = release_of(5)
    assert [r.id for r in deploy.releases_kept(records, current, 3)] == \
        [release_of(n).id for n in (5, 2, 4, 3)]
    assert deploy.releases_kept(records, current, 1) == [current, release_of(2)]
    assert deploy.releases_kept([], current, 3) == [current]


def test_a_published_release_records_its_branch_commit_and_sources():
    from tasks.runbooks.publish import Published
    built = {"images": {"web": "sha256:1"}, "commit": "abc", "branch": "master", "base": (1, 2),
             "sources": [{"repository": "/srv/git/air.git", "branch": "master", "commit": "abc", "components": ["web"]}]}
    assert Published(None, [], built).meta == {"branch": "master", "commit": "abc", "sources": built["sources"]}


def test_a_release_record_is_unchanged_only_with_the_same_sources_inputs_and_components():
    from tasks.runbooks.publish import unchanged
    sources = [{"repository": "r", "branch": "master", "commit": "a" * 40, "components": ["web"]}]
    meta = {"branch": "master", "commit": "a" * 40, "sources": sources, "inputs": {"web": "sha256:1"}}
    record = {"id": "r1", "components": {"web": {"version": "1.0.1"}}, "sources": sources,
              "inputs": {"web": "sha256:1"}, "outcome": "succeeded"}
    assert unchanged(record, meta)
    assert not unchanged({**record, "inputs": {"web": "sha256:2"}}, meta)
    assert not unchanged({**record, "sources": [{**sources[0], "commit": "b" * 40}]}, meta)
    assert not unchanged({k: v for k, v in record.items() if k != "inputs"}, meta)  # recorded before inputs were
    assert not unchanged({**record, "components": {"web": {}, "gone": {}}}, meta)
