"""tasks/model/release_settings.py: what a release record keeps of its settings and secrets, what a
rollback puts back from it, and the check of a record read back; pure, by equality."""
import hashlib
import json

import pytest

from tasks.model import release_settings as kept
from tasks.model.errors import RecordError

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

