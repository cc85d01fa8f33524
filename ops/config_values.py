"""What the configuration's schema engine hands around: problems, the error, frozen mappings.

A :class:`Problem` is one thing wrong with a configuration at the dotted key path it concerns;
a :class:`ConfigError` carries all of them at once, one line each. :class:`FrozenMap` is the
stored (immutable, hashable, picklable) form of mapping-valued fields, and :func:`show_value`
the short repr of a value that messages quote. The engine that produces them is
:mod:`skygrade.ops.config_schema`; the sections are in :mod:`skygrade.ops.config`.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import reprlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

__all__ = ["ConfigError", "FrozenMap", "Problem", "show_value"]

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 8


def show_value(value: Any) -> str:
    """Short repr of a (possibly large) value for an error message."""
    if isinstance(value, FrozenMap):
        value = dict(value)
    text = repr(value)
    return text if len(text) <= 100 else _repr.repr(value)


# --------------------------------------------------------------------------------------------
# Errors


class Problem(NamedTuple):
    """One problem in a configuration: the dotted key path (None for the whole file) and text."""

    path: str | None
    message: str


class ConfigError(ValueError):
    """A configuration could not be read or is invalid.

    The message has one line per problem, each ``<source>: <dotted.key.path>: <what is wrong>``,
    so that an operator can fix every mistake in one go.

    Parameters
    ----------
    problems : iterable of Problem, or str
        What is wrong; a plain string is one problem about the whole file.
    source : str, optional
        Where the configuration came from (a file name), or None.

    Attributes
    ----------
    problems : tuple of Problem
        Every problem found, in document order.
    path : str or None
        Dotted key path of the first problem, or None when it concerns the whole file.
    source : str or None
        The file name (or ``"<config>"``) the configuration came from.
    """

    def __init__(self, problems: Iterable[Problem] | str, source: str | None = None) -> None:
        if isinstance(problems, str):
            problems = [Problem(None, problems)]
        self.problems: tuple[Problem, ...] = tuple(Problem(*p) for p in problems)
        self.source = source
        self.path = self.problems[0].path if self.problems else None
        super().__init__(self.problems, source)

    def __str__(self) -> str:
        return "\n".join(
            ": ".join(part for part in (self.source, p.path, p.message) if part)
            for p in self.problems
        )


# --------------------------------------------------------------------------------------------
# Immutable mapping for mapping-valued fields


class FrozenMap(Mapping):
    """An immutable, hashable, picklable mapping; the stored form of mapping-valued fields.

    It compares equal to any mapping with the same items (``FrozenMap(a=1) == {"a": 1}``) and
    keeps the order in which its items were given.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | Iterable[tuple[Any, Any]] = (), /) -> None:
        self._data = dict(data)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(frozenset(self._data.items()))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._data == dict(other.items())
        return NotImplemented

    def __repr__(self) -> str:
        return f"FrozenMap({self._data!r})"
