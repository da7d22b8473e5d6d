"""``frozen``: a frozen dataclass that costs less to define.

Python 3.11's ``dataclass(frozen=True)`` writes six methods for each class (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``) and compiles each with
``exec``: about 0.15 ms apiece, so 17 ms of every `fab` start for the 53 such classes of
air-deploy's modules (`bench/rolling.py`'s start-up figure). A ``frozen`` class compiles its ``__init__`` only;
the other five are the ones below, shared by every such class, and do what the dataclass's would:

- equal when of the same class with equal compared fields (``NotImplemented`` otherwise);
- hashed on those fields; shown as ``Name(field=value, ...)`` (fields with ``repr``);
- frozen: a field is set once, by ``__init__`` (or ``__post_init__``), and never again; no other
  attribute is set, none deleted (``dataclasses.FrozenInstanceError``).

It is a dataclass still: ``fields``, ``replace``, ``asdict`` and field options work as ever.
"""
from __future__ import annotations

import dataclasses
from dataclasses import FrozenInstanceError, field, fields
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


def _compared(self) -> tuple:
    return tuple(getattr(self, f.name) for f in fields(self) if f.compare)


def _eq(self, other):
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _compared(self) == _compared(other)


def _hash(self) -> int:
    return hash(tuple(getattr(self, f.name) for f in fields(self) if (f.compare if f.hash is None else f.hash)))


def _repr(self) -> str:
    shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.repr)
    return f"{type(self).__qualname__}({shown})"


def _setattr(self, name: str, value) -> None:
    if name in self.__dict__ or name not in self.__dataclass_fields__:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")
    object.__setattr__(self, name, value)


def _delattr(self, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


SHARED = {"__eq__": _eq, "__hash__": _hash, "__repr__": _repr, "__setattr__": _setattr, "__delattr__": _delattr}


@dataclass_transform(frozen_default=True, field_specifiers=(field,))  # a frozen dataclass, to type checkers
def frozen(cls: type[T]) -> type[T]:
    """``cls`` made a frozen dataclass (see the module's docstring); a method its body defines is kept."""
    own = set(cls.__dict__)
    if cls.__dict__.get("__hash__", 0) is None and "__eq__" in own:
        own.discard("__hash__")  # Python's None for a class defining __eq__: hashed on the fields, as a dataclass is
    cls = dataclasses.dataclass(cls, repr=False, eq=False)
    for name, method in SHARED.items():
        if name not in own:
            setattr(cls, name, method)
    return cls
