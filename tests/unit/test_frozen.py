"""A ``frozen`` class behaves as the frozen dataclass it stands for (tasks.model.frozen)."""
import copy
import dataclasses
from typing import Optional

import pytest

from tasks.model.frozen import frozen


def both(body):
    """The same class made ``frozen`` and a frozen dataclass."""
    return frozen(type("Sample", (), dict(body))), dataclasses.dataclass(frozen=True)(type("Sample", (), dict(body)))


FIELDS = {"__annotations__": {"name": str, "port": int, "tags": tuple, "note": Optional[str], "seen": int},
          "port": 80, "tags": (), "note": dataclasses.field(default=None, compare=False),
          "seen": dataclasses.field(default=0, repr=False)}


@pytest.mark.parametrize("args, other", [(("a",), ("a",)), (("a", 81), ("a", 80)),
                                         (("a", 80, ("x",), "n"), ("a", 80, ("x",), "m")),
                                         (("a", 80, (), None, 1), ("a", 80, (), None, 2))])
def test_equality_hash_and_repr_are_the_dataclasses(args, other):
    ours, dc = both(FIELDS)
    assert (ours(*args) == ours(*other)) == (dc(*args) == dc(*other))
    assert (hash(ours(*args)) == hash(ours(*other))) == (hash(dc(*args)) == hash(dc(*other)))
    assert hash(ours(*args)) == hash(dc(*args))
    assert repr(ours(*args)) == repr(dc(*args))
    assert ours(*args) != dc(*args) and (ours(*args) == "a") is False


def test_it_is_frozen_as_a_dataclass_is():
    ours, dc = both(FIELDS)
    for made in (ours("a"), dc("a")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.port = 81
        with pytest.raises(dataclasses.FrozenInstanceError):
            made.other = 1
        with pytest.raises(dataclasses.FrozenInstanceError):
            del made.port
        assert made.port == 80


def test_fields_replace_asdict_and_copies_work_on_it():
    ours, _ = both(FIELDS)
    made = ours("a", 81, ("x",))
    assert [f.name for f in dataclasses.fields(made)] == ["name", "port", "tags", "note", "seen"]
    assert dataclasses.replace(made, port=82) == ours("a", 82, ("x",))
    assert dataclasses.asdict(made) == {"name": "a", "port": 81, "tags": ("x",), "note": None, "seen": 0}
    assert copy.deepcopy(made) == made and copy.copy(made) == made


def test_post_init_may_set_a_derived_field_and_the_bodys_own_methods_stay():
    @frozen
    class Derived:
        text: str
        length: int = dataclasses.field(init=False)

        def __post_init__(self):
            object.__setattr__(self, "length", len(self.text))

        def __repr__(self):
            return f"<{self.text}>"
    assert Derived("abc").length == 3 and repr(Derived("abc")) == "<abc>"


def test_a_class_defining_eq_is_still_hashed_on_its_fields():
    @frozen
    class Loose:
        name: str

        def __eq__(self, other):
            return isinstance(other, Loose) and self.name.lower() == other.name.lower()
    assert Loose("A") == Loose("a") and hash(Loose("a")) == hash(Loose("a"))
