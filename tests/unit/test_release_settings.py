"""tasks/model/release_settings.py: what a release record keeps of its settings and secrets, what a
rollback puts back from it, and the check of a record read back; pure, by equality."""
import hashlib
import json

import pytest

from tasks.model import release_settings as kept
from tasks.model import state
from tasks.model.cluster import RolloutLimits
from tasks.model.errors import Interrupted, LostLock, RecordError
from tasks.runbooks import deploy, records
from tasks.runbooks.publish import Published
from tasks.runbooks.upgrade import PartlyUpgraded, UpgradeFailed

from .test_rollout import NEW, OLD, facts_text, record_routes, s  # noqa: F401 (fixtures)

PASSWORD = "hunter2-XYZ"


def sha(text) -> str:
    return "sha256:" + hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()


def test_a_secret_files_value_drops_one_trailing_newline():
    assert kept.secret_value("pw\n") == "pw"
    assert kept.secret_value("pw\n\n") == "pw\n"
    assert kept.secret_value("pw") == "pw"


def test_the_settings_digest_covers_every_value_secrets_included_in_any_order():
    values = {"site/name": "Air", "db/password": PASSWORD}
    assert kept.settings_digest(values) == sha('{"db/password":"hunter2-XYZ","site/name":"Air"}')
    assert kept.settings_digest(dict(reversed(list(values.items())))) == kept.settings_digest(values)
    assert kept.settings_digest({**values, "db/password": "other"}) != kept.settings_digest(values)
    assert kept.settings_digest({}) == sha("{}")


def test_a_record_keeps_a_secret_as_its_reference_and_digest_never_its_value():
    values = {"site/name": "Air", "db/password": PASSWORD}
    files = {"db_password": (PASSWORD + "\n").encode(), "session_key": b"k"}
    fields = kept.fields(values, {"db/password": "db_password"}, files)
    assert fields == {
        "settings": {"digest": kept.settings_digest(values),
                     "values": {"db/password": {"secret": "db_password", "digest": sha(PASSWORD)},
                                "site/name": {"value": "Air"}}},
        "secrets": {"db_password": sha(PASSWORD + "\n"), "session_key": sha(b"k")}}
    assert PASSWORD not in json.dumps(fields)
    kept.check(fields)  # what it writes, it accepts back


def test_of_record_takes_the_two_fields_when_there():
    fields = kept.fields({"a": "1"}, {}, {})
    assert kept.of_record({"id": "x", "outcome": "succeeded", **fields}) == fields
    assert kept.of_record({"id": "x"}) == {}
    assert kept.of_record(None) == {}


def test_the_short_digest_of_a_record():
    fields = kept.fields({"a": "1"}, {}, {})
    assert kept.short(fields) == fields["settings"]["digest"][7:15]
    assert kept.short({"id": "x"}) == "-"


KEPT = kept.kept({"site/name": "Air", "db/password": PASSWORD, "db/port": "5432"}, {"db/password": "db_password"})


def test_a_rollback_restores_values_and_a_secret_whose_file_still_gives_its_value():
    now = {"site/name": "New", "db/password": "new-pw", "feature/flag": "on"}
    restore = kept.restore(KEPT, now, {"db_password": PASSWORD})
    assert restore.values == {"site/name": "Air", "db/password": PASSWORD, "db/port": "5432"}
    assert restore.left == {}
    assert restore.kept == KEPT


def test_a_secret_changed_since_is_left_as_it_is_and_named():
    now = {"site/name": "New", "db/password": "new-pw"}
    restore = kept.restore(KEPT, now, {"db_password": "rotated"})
    assert restore.values == {"site/name": "Air", "db/password": "new-pw", "db/port": "5432"}
    assert restore.left == {"db/password": "db_password"}
    # The rollback's record keeps what etcd then holds: the key as the same reference, its value's digest.
    assert restore.kept == kept.kept(restore.values, {"db/password": "db_password"})
    assert "new-pw" not in json.dumps(restore.kept)


def test_a_secret_whose_file_is_gone_is_left_and_absent_stays_absent():
    restore = kept.restore(KEPT, {"site/name": "New"}, {"db_password": None})
    assert restore.values == {"site/name": "Air", "db/port": "5432"}
    assert restore.left == {"db/password": "db_password"}


def test_which_secret_files_changed_since():
    assert kept.changed_secrets({"a": "sha256:1", "b": "sha256:2", "gone": "sha256:3"},
                                {"a": "sha256:1", "b": "sha256:9", "new": "sha256:4"}) == ["b", "gone", "new"]
    assert kept.changed_secrets({"a": "sha256:1"}, {"a": "sha256:1"}) == []


def test_printable_keys_are_values_to_every_record_and_secrets_to_none():
    other = kept.kept({"site/name": "X", "db/port": "1", "db/password": "p", "extra": "e"}, {"db/port": "port_file"})
    assert kept.printable(KEPT) == {"site/name", "db/port"}
    assert kept.printable(KEPT, other) == {"site/name", "extra"}  # db/port is a secret to one of them
    assert kept.printable(KEPT, None) == frozenset()  # a record that kept nothing: nothing is known plain


GOOD = {"id": "x", **kept.fields({"site/name": "Air", "db/password": PASSWORD}, {"db/password": "db_password"},
                                 {"db_password": b"pw"})}


@pytest.mark.parametrize("damage, said", [
    (lambda r: r.update(settings="x"), "settings: not a mapping of digest and values"),
    (lambda r: r["settings"].update(digest="sha256:12"), "settings digest 'sha256:12' is not sha256:"),
    (lambda r: r["settings"].update(values=[]), "settings values: not a mapping"),
    (lambda r: r["settings"]["values"].update({"../x": {"value": "1"}}), "settings: '../x' is not a setting's key"),
    (lambda r: r["settings"]["values"].update({"a\n": {"value": "1"}}), "settings: 'a\\n' is not a setting's key"),
    (lambda r: r["settings"]["values"].update({"a": {"value": 1}}), "settings: a: neither a value nor"),
    (lambda r: r["settings"]["values"].update({"a": {"secret": "../etc/passwd", "digest": "sha256:" + "0" * 64}}),
     "settings: a: neither a value nor a secret's name and digest"),
    (lambda r: r["settings"]["values"].update({"a": {"secret": "f", "digest": "$(reboot)"}}),
     "settings: a '$(reboot)' is not sha256:"),
    (lambda r: r["settings"]["values"].update({"a": {"secret": "f", "digest": "sha256:" + "0" * 64, "value": "v"}}),
     "settings: a: neither"),
    (lambda r: r.update(secrets=["a"]), "secrets: not a mapping"),
    (lambda r: r["secrets"].update({"a b": "sha256:" + "0" * 64}), "secrets: 'a b' is not a file name"),
    (lambda r: r["secrets"].update({"f": "md5:0"}), "secrets: f 'md5:0' is not sha256:"),
])
def test_a_damaged_record_is_refused_naming_what(damage, said):
    record = json.loads(json.dumps(GOOD))
    damage(record)
    with pytest.raises(RecordError) as refused:
        kept.check(record)
    assert str(refused.value).startswith(said)


def test_an_old_record_without_the_fields_passes():
    kept.check({"id": "x", "components": {}})
    kept.check(GOOD)


# ---------------------------------------------------------------- deploy and rollback, on the recording fake

P = "/air/prod/app/settings/"
BUILT = {"branch": "master", "commit": "abc", "sources": []}
NEW_FACTS = {"web": "1.0.1", "worker": "1.0.0"}


@pytest.fixture
def configured(s):
    """The fake session's cluster with settings, one of them the secret file db_password."""
    from dataclasses import replace

    from tasks.model.cluster import Setting
    s.cluster.secrets.mkdir(exist_ok=True)
    (s.cluster.secrets / "db_password").write_text(PASSWORD + "\n")
    s.cluster = replace(s.cluster, settings=(Setting("site/name", "Air"), Setting("db/password", secret="db_password")))
    return s


def settings_in(s) -> dict:
    return {k[len(P):]: v for k, v in s.etcd.get_prefix(P).items()}


def recorded(s) -> tuple:
    """(current record, history) as the fake etcd holds them."""
    return records.read_release(s.etcd, s.cluster)[1], records.history(s.etcd, s.cluster)


def at_releases(s, old_settings: dict, old_kept=True):
    """etcd holding ``old_settings`` and OLD recorded with them (``old_kept``: with its settings kept)."""
    s.etcd.data = {k: v for k, v in s.etcd.data.items() if not k.startswith(P)}
    s.etcd.data.update({P + k: v for k, v in old_settings.items()})
    fields = kept.fields(old_settings, {"db/password": "db_password"}, {"db_password": (PASSWORD + "\n").encode()})
    meta = fields if old_kept else {}
    record = records.write_release(s.etcd, s.cluster, OLD, outcome="succeeded", when="2024-01-01T00:00:00.000000Z",
                                   **meta)
    records.add_history(s.etcd, s.cluster, record)
    return record


def writes_before_restarts(s) -> list:
    """Calls ex.calls had made when each settings transaction was written (to compare with the restarts)."""
    at = []
    write = s.etcd.write_many
    prefix = state.settings_prefix(s.cluster)
    settings_too = lambda puts, deletes: any(k.startswith(prefix) for k in [*puts, *deletes])  # not a release record
    s.etcd.write_many = lambda puts, deletes=(): (settings_too(puts, deletes) and at.append(len(s.ex.calls)),
                                                  write(puts, deletes))
    return at


def first_restart(s) -> int:
    return next(i for i, (_, c, change) in enumerate(s.ex.calls) if change and "list-unit-files --no-legend air-" in c)


def test_a_deploy_records_its_settings_and_a_failed_one_puts_the_previous_back(configured, capsys):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD, "stale": "x"})
    s.ex.answer("http://127.0.0.1:8080/health", host="10.0.0.2", exited=1, stderr="not healthy within 5 s: web", first=True)
    with pytest.raises(UpgradeFailed):
        deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, None, 0.0)
    assert settings_in(s) == {"site/name": "Old", "db/password": PASSWORD, "stale": "x"}
    current, history = recorded(s)
    assert current["id"] == OLD.id and current["outcome"] == "restored after a failed upgrade"
    assert kept.of_record(current) == kept.of_record(old)  # the settings it runs with, as it kept them
    # The failed release's record keeps the settings it was tried with.
    assert history[-1]["id"] == NEW.id and history[-1]["outcome"].startswith("failed: ")
    assert history[-1]["settings"] == kept.kept({"site/name": "Air", "db/password": PASSWORD},
                                                {"db/password": "db_password"})
    said = capsys.readouterr().err
    assert "deploy: settings: ~ site/name: 'Old' -> 'Air'" in said and "deploy: settings: - stale" in said
    put_back = said[said.index("deploy: putting the settings back as they were"):]
    assert "deploy: settings: ~ site/name: 'Air' -> 'Old'" in put_back and "deploy: settings: + stale = 'x'" in put_back
    assert PASSWORD not in said


def test_a_deploy_with_a_failure_within_its_budget_keeps_its_settings_with_the_release(configured, capsys):
    s = configured
    at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    # The upgrade (restarting web alone) fails there; its restore (both components) works.
    s.ex.answer("list-unit-files --no-legend air-web.service 2>", host="10.0.0.2", deadline=True, first=True)
    with pytest.raises(PartlyUpgraded):
        deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, RolloutLimits(max_failures=1), 0.0)
    assert settings_in(s) == {"site/name": "Air", "db/password": PASSWORD}
    current, _ = recorded(s)
    assert current["id"] == NEW.id and current["outcome"] == "partly upgraded: failed on 10.0.0.2"
    assert "putting the settings back" not in capsys.readouterr().err


def test_a_successful_deploy_keeps_its_settings_in_its_records(configured):
    s = configured
    at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, None, 0.0)
    current, history = recorded(s)
    fields = kept.fields({"site/name": "Air", "db/password": PASSWORD}, {"db/password": "db_password"},
                         {"db_password": (PASSWORD + "\n").encode()})
    assert current["id"] == NEW.id and kept.of_record(current) == fields
    assert history[-1]["id"] == NEW.id and kept.of_record(history[-1]) == fields
    assert PASSWORD not in json.dumps(current)


def test_a_deploy_of_the_same_release_with_other_settings_records_it_again_with_them(configured):
    s = configured
    at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    deploy.roll_cluster(s, Published(OLD, [], BUILT), OLD, None, 0.0)  # the machines run OLD: nothing to restart
    assert s.ex.commands(changes_only=True) == []
    current, history = recorded(s)
    assert current["settings"]["digest"] == kept.settings_digest({"site/name": "Air", "db/password": PASSWORD})
    assert current["outcome"] == "succeeded" and current["when"] != "2024-01-01T00:00:00.000000Z"
    assert [r["id"] for r in history] == [OLD.id, OLD.id] and history[-1] == current
    # The same settings again: nothing is recorded.
    deploy.roll_cluster(s, Published(OLD, [], BUILT), OLD, None, 0.0)
    assert recorded(s) == (current, history)


def rolled_to_new(s, new_settings: dict) -> dict:
    """The cluster on NEW (its machines too) with ``new_settings``, OLD in the history before it."""
    s.ex.answer("echo '--release'", stdout=facts_text(NEW.id, NEW_FACTS), first=True)
    s.etcd.data = {k: v for k, v in s.etcd.data.items() if not k.startswith(P)}
    s.etcd.data.update({P + k: v for k, v in new_settings.items()})
    record = records.write_release(s.etcd, s.cluster, NEW, outcome="succeeded", when="2024-01-02T00:00:00.000000Z",
                                   **deployed_fields(s))
    records.add_history(s.etcd, s.cluster, record)
    return record


def deployed_fields(s) -> dict:
    from tasks.runbooks import release_settings
    return release_settings.deployed(s.cluster)


def test_a_rollback_restores_the_settings_of_its_release_in_one_write_before_the_rollout(configured, capsys):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD, "db/port": "5432"})
    current = rolled_to_new(s, {"site/name": "Air", "db/password": PASSWORD, "feature": "on"})
    at = writes_before_restarts(s)
    assert deploy.roll_back_to(s, old, current)
    assert settings_in(s) == {"site/name": "Old", "db/password": PASSWORD, "db/port": "5432"}
    assert len(at) == 1 and at[0] < first_restart(s)
    now, history = recorded(s)
    assert now["id"] == OLD.id and now["rollback_from"] == NEW.id
    assert now["settings"] == old["settings"] and history[-1]["settings"] == old["settings"]
    said = capsys.readouterr().err
    assert "rollback: settings: ~ site/name: 'Air' -> 'Old'" in said
    assert "rollback: settings: + db/port = '5432'" in said and "rollback: settings: - feature" in said
    assert "db/password" not in said and PASSWORD not in said  # restored as it was: unchanged, not said


def test_a_rollback_leaves_a_secret_changed_since_and_says_so(configured, capsys):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    (s.cluster.secrets / "db_password").write_text("rotated-pw\n")
    current = rolled_to_new(s, {"site/name": "Air", "db/password": "rotated-pw"})
    deploy.roll_back_to(s, old, current)
    assert settings_in(s) == {"site/name": "Old", "db/password": "rotated-pw"}
    said = capsys.readouterr().err
    assert (f"rollback: settings: db/password: secret db_password changed since release {OLD.id} (or is gone): "
            f"left as it is") in said
    assert f"rollback: settings: secret file db_password changed since release {OLD.id}: left as it is" in said
    assert "rotated-pw" not in said and PASSWORD not in said
    # What the rollback's record keeps: the reference, and the digest of the value etcd holds.
    assert recorded(s)[0]["settings"]["values"]["db/password"] == {"secret": "db_password", "digest": sha("rotated-pw")}


def test_a_rollback_to_a_release_that_kept_no_settings_leaves_them(configured, capsys):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD}, old_kept=False)
    current = rolled_to_new(s, {"site/name": "Air", "db/password": PASSWORD})
    at = writes_before_restarts(s)
    deploy.roll_back_to(s, old, current)
    assert at == [] and settings_in(s) == {"site/name": "Air", "db/password": PASSWORD}
    assert (f"rollback: settings: release {OLD.id} kept no settings (recorded before they were kept): "
            f"left as they are") in capsys.readouterr().err
    assert kept.of_record(recorded(s)[0]) == kept.of_record(current)  # they are still the current ones


def test_the_plan_of_a_rollback_shows_the_settings_and_changes_nothing(configured, capsys):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    current = rolled_to_new(s, {"site/name": "Air", "db/password": "other-pw", "feature": "on"})
    before = dict(s.etcd.data)
    assert not deploy.roll_back_to(s, old, current, plan_=True)
    assert s.etcd.data == before and s.ex.commands(changes_only=True) == []
    out = capsys.readouterr().out.splitlines()
    assert out[-3:] == ["settings: ~ db/password: (secret) -> (secret)", "settings: ~ site/name: 'Air' -> 'Old'",
                        "settings: - feature"]
    assert out[0].startswith("10.0.0.1: out of the balancer, restart web on")


def test_a_failed_rollback_puts_the_settings_back(configured):
    s = configured
    old = at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    current = rolled_to_new(s, {"site/name": "Air", "db/password": PASSWORD})
    s.ex.answer("http://127.0.0.1:8080/health", host="10.0.0.1", exited=1, stderr="not healthy", first=True)
    with pytest.raises(UpgradeFailed):
        deploy.roll_back_to(s, old, current)
    assert settings_in(s) == {"site/name": "Air", "db/password": PASSWORD}
    now, history = recorded(s)
    assert now["id"] == NEW.id and kept.of_record(now) == kept.of_record(current)
    assert history[-1]["outcome"].startswith("failed: ")


def test_put_back_after_an_interrupt_but_not_after_a_lost_lock(configured, capsys):
    from tasks.runbooks import release_settings
    s = configured
    before = {P + "site/name": "Before"}
    s.etcd.data[P + "site/name"] = "After"
    s.ex.interrupted.set()  # a Ctrl-C: the put back happens all the same
    with pytest.raises(Interrupted):
        with release_settings.put_back_on_failure(s, "deploy", before, None):
            raise Interrupted("interrupted during the upgrade of 10.0.0.1")
    assert settings_in(s) == {"site/name": "Before"}
    # A record that kept nothing: which values were secrets is unknown, so none is printed.
    assert "deploy: settings: ~ site/name: (secret) -> (secret)" in capsys.readouterr().err
    s.etcd.data[P + "site/name"] = "After"
    with pytest.raises(LostLock):
        with release_settings.put_back_on_failure(s, "deploy", before, None):
            raise LostLock("/air/prod/lock: gone")
    assert settings_in(s) == {"site/name": "After"}


def test_the_releases_listing_says_whether_a_releases_settings_are_the_ones_now():
    record = {"when": "2024-01-01T00:00:00.000000Z", "id": OLD.id, "components": OLD.to_dict()["components"],
              **kept.fields({"a": "1"}, {}, {})}
    now = record["settings"]["digest"]
    short = now[7:15]
    assert deploy.release_line("*", record, "succeeded", now) == (
        f"* 2024-01-01T00:00:00.000000Z  {OLD.id}  succeeded   settings {short} same     -  web=1.0.0 worker=1.0.0")
    assert f"settings {short} differs  -" in deploy.release_line(" ", record, "succeeded", "sha256:" + "0" * 64)
    old = {k: v for k, v in record.items() if k != "settings"}
    assert "  settings -        unknown  -" in deploy.release_line(" ", old, "succeeded", now)


def test_the_releases_listing_names_a_recorded_repository_without_credentials():
    record = {"when": "2024-01-01T00:00:00.000000Z", "id": OLD.id, "components": OLD.to_dict()["components"],
              "sources": [{"repository": "https://user:token@git.example.org/air.git", "branch": "main",
                           "commit": "c" * 40, "components": ["web"]}]}
    assert deploy.release_line(" ", record, "succeeded").endswith(
        "web=1.0.0 worker=1.0.0  https://git.example.org/air.git main@cccccccccc")


def test_a_record_is_printed_without_its_secrets_digests():
    record = {"id": "r1", **kept.fields({"db/password": "hunter2", "site/name": "Air"}, {"db/password": "db_pw"},
                                        {"db_pw": "hunter2\n"})}
    shown = kept.shown(record)
    assert shown["settings"]["values"] == {"db/password": {"secret": "db_pw"}, "site/name": {"value": "Air"}}
    assert shown["secrets"] == ["db_pw"] and shown["id"] == "r1"
    assert kept.digest("hunter2") not in repr(shown) and kept.digest("hunter2\n") not in repr(shown)
    assert kept.shown({"id": "old"}) == {"id": "old"}


def test_a_builder_error_on_any_machine_leaves_etcd_and_the_machines_untouched(configured, monkeypatch):
    """Every machine's documents (units, cloud config) are built before the deploy writes `outcome:
    upgrading` or applies a setting: a builder failing on the last machine changes nothing anywhere."""
    from tasks.commands import machine
    from tasks.model.errors import ConfigError
    s = configured
    at_releases(s, {"site/name": "Old", "db/password": PASSWORD})
    before = dict(s.etcd.data)
    build = machine.cloudconfig.final

    def failing(cluster, address, *args, **kwargs):
        if address == "10.0.0.3":
            raise ConfigError("components.web.stop_command: a control character (\\n)")
        return build(cluster, address, *args, **kwargs)
    monkeypatch.setattr(machine.cloudconfig, "final", failing)
    with pytest.raises(ConfigError, match="stop_command"):
        deploy.roll_cluster(s, Published(NEW, [], BUILT), OLD, None, 0.0)
    assert s.etcd.data == before  # no record, no setting
    assert s.ex.commands(changes_only=True) == []
