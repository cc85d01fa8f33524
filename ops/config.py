"""Configuration: one YAML file -> frozen, typed, documented config objects.

A section is a frozen dataclass decorated with :func:`config_section`; each of its fields is
declared with :func:`setting` (a leaf value with a ``doc`` and optional constraints) or
:func:`section` (a nested section). Validation, YAML rendering, ``to_dict`` and the field listing
are generic: they are driven by the type hints and the field metadata, never written per field.

Adding a section later takes two steps::

    @config_section
    class SomConfig:
        \"\"\"Self-organizing map.\"\"\"

        rows: int = setting(30, "Rows of the SOM grid.", ge=2)

    # and on Config:
    som: SomConfig = section(SomConfig, "The self-organizing map (`skygrade train`).")

Supported field types: ``bool``, ``int``, ``float`` (ints accepted and stored as float; bools are
never numbers), ``str``, ``Literal[...]``, ``X | None``, ``tuple[T, T]`` and ``tuple[T, ...]`` of
scalars (written as YAML lists), ``Mapping[str, T]`` / ``dict[str, T]`` of scalars (stored as a
hashable, picklable :class:`FrozenMap`) and nested sections. Constraints in the field metadata:
``gt``, ``ge``, ``lt``, ``le`` (on a number, on each item of a tuple, on each value of a mapping),
``choices`` (the allowed keys of a mapping, named ``key_label`` in messages) and ``check`` (a
callable that gets the converted value and returns an error text or None).

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import dataclasses
import difflib
import hashlib
import json
import math
import operator
import os
import re
import reprlib
import textwrap
import types
import typing
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Literal, NamedTuple, get_args, get_origin

import yaml

__all__ = [
    "CLASSES",
    "AlertsConfig",
    "Config",
    "ConfigError",
    "FrozenMap",
    "LoggingConfig",
    "MetricsConfig",
    "Problem",
    "TelescopeConfig",
    "check_http_url",
    "config_digest",
    "config_section",
    "documented_fields",
    "load_config",
    "parse_config",
    "render_yaml",
    "section",
    "setting",
    "to_dict",
]

# The five image-quality classes, in model output order. Must equal models.classes.CLASSES: ops
# imports none of the other packages, so the tuple is repeated here and a test checks they agree.
CLASSES: tuple[str, ...] = ("GOOD", "B_SEEING", "BGP", "BT", "RBT")

_INVALID: Any = object()  # returned by converters after they record a problem
_NONE_TYPE = type(None)
_SCALARS = (bool, int, float, str)
_META_KEYS = frozenset({"doc", "gt", "ge", "lt", "le", "choices", "key_label", "check"})
_BOUNDS = (
    ("gt", ">", operator.gt),
    ("ge", ">=", operator.ge),
    ("lt", "<", operator.lt),
    ("le", "<=", operator.le),
)
_NOUNS = {  # type: (as "expected ...", singular, plural)
    bool: ("true or false", "boolean", "booleans"),
    int: ("an integer", "integer", "integers"),
    float: ("a number", "number", "numbers"),
    str: ("a string", "string", "strings"),
}
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}
_IS_SECTION = "__skygrade_config_section__"

_repr = reprlib.Repr()
_repr.maxstring = 80
_repr.maxother = 80
_repr.maxlist = _repr.maxtuple = _repr.maxdict = 8


def _show(value: Any) -> str:
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


# --------------------------------------------------------------------------------------------
# Declaring sections and fields


def setting(default: Any, doc: str, /, **constraints: Any) -> Any:
    """Declare a documented leaf field of a config section.

    Parameters
    ----------
    default : object
        The default value; it must itself be valid. A dict becomes a :class:`FrozenMap` and a
        list a tuple, so defaults stay immutable.
    doc : str
        What the field does, for the YAML comments, ``--help`` and error messages.
    **constraints
        Any of ``gt``, ``ge``, ``lt``, ``le`` (numbers), ``choices`` (allowed mapping keys),
        ``key_label`` (what a mapping key is called in messages, default ``"key"``) and ``check``
        (callable taking the converted value, returning an error text or None).

    Returns
    -------
    dataclasses.Field
        To be assigned as the class attribute's default.

    Examples
    --------
    >>> cadence_s: float = setting(60.0, "Seconds between exposures.", gt=0)  # doctest: +SKIP
    """
    if isinstance(default, Mapping):
        default = FrozenMap(default)
    elif isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata={"doc": doc, **constraints})


def section(cls: type, doc: str, /) -> Any:
    """Declare a nested section field whose default is ``cls()``.

    Parameters
    ----------
    cls : type
        A class decorated with :func:`config_section`.
    doc : str
        What the section configures; rendered as a comment above it.

    Returns
    -------
    dataclasses.Field
        To be assigned as the class attribute's default.

    Examples
    --------
    >>> telescope: TelescopeConfig = section(TelescopeConfig, "The telescope.")  # doctest: +SKIP
    """
    return dataclasses.field(default_factory=cls, metadata={"doc": doc})


def config_section(cls: type) -> type:
    """Make ``cls`` a config section: a frozen, slotted, keyword-only dataclass.

    The declaration is checked at once (every field has a doc, a supported type, valid
    constraints and a valid default), so a mistake fails at import rather than in production.
    Instances validate and normalise their values when constructed, also from Python code
    (``TelescopeConfig(cadence_s=-1)`` raises :class:`ConfigError`). A ``__post_init__`` defined
    on the class runs after that, for checks across fields; it may raise :class:`ConfigError`
    with problems whose paths are field names.

    Parameters
    ----------
    cls : type
        The class to decorate.

    Returns
    -------
    type
        The dataclass.

    Raises
    ------
    TypeError
        If a field lacks a doc or a default, has an unsupported type or unknown metadata.
    """
    user_hook = cls.__dict__.get("__post_init__")

    def __post_init__(self: Any) -> None:
        _normalise(self)
        if user_hook is not None:
            user_hook(self)

    cls.__post_init__ = __post_init__
    setattr(cls, _IS_SECTION, True)
    cls = dataclasses.dataclass(frozen=True, slots=True, kw_only=True)(cls)
    _spec(cls)
    try:
        cls()
    except (ConfigError, TypeError) as exc:
        raise TypeError(f"{cls.__name__}: the defaults are not a valid config: {exc}") from None
    return cls


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and getattr(tp, _IS_SECTION, False) is True


class _Field(NamedTuple):
    """A field of a section, as the generic machinery sees it."""

    name: str
    type: Any  # the type with ``| None`` removed
    optional: bool
    meta: Mapping[str, Any]
    section: type | None  # the section class when the field is a nested section

    @property
    def doc(self) -> str:
        return self.meta["doc"]


@cache
def _spec(cls: type) -> tuple[_Field, ...]:
    """Check and describe the fields of a section class (once per class)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        where = f"{cls.__name__}.{f.name}"
        meta = dict(f.metadata)
        doc = meta.get("doc")
        if not isinstance(doc, str) or not doc.strip():
            raise TypeError(f"{where}: every config field needs a non-empty 'doc' in its metadata")
        unknown = set(meta) - _META_KEYS
        if unknown:
            raise TypeError(
                f"{where}: unknown metadata {sorted(unknown)}; valid: {sorted(_META_KEYS)}"
            )
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"{where}: every config field needs a default")
        tp, optional = _split_optional(hints[f.name], where)
        if _is_section(tp):
            if optional or set(meta) != {"doc"}:
                raise TypeError(f"{where}: a section cannot be optional or constrained")
            out.append(_Field(f.name, tp, False, meta, tp))
            continue
        _check_type(tp, meta, where)
        out.append(_Field(f.name, tp, optional, meta, None))
    return tuple(out)


def _split_optional(tp: Any, where: str) -> tuple[Any, bool]:
    if get_origin(tp) in (types.UnionType, typing.Union):
        args = get_args(tp)
        rest = [a for a in args if a is not _NONE_TYPE]
        if len(rest) != 1 or len(args) != 2:
            raise TypeError(f"{where}: only 'X | None' unions are supported, got {tp}")
        return rest[0], True
    return tp, False


def _element(tp: Any) -> Any:
    """The scalar type that numeric bounds apply to: the type, tuple items or mapping values."""
    origin = get_origin(tp)
    if origin is tuple:
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return args[0] if len(set(args)) == 1 else None
    if origin in (dict, Mapping):
        return get_args(tp)[1]
    return tp


def _check_type(tp: Any, meta: Mapping[str, Any], where: str) -> None:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        if not all(isinstance(a, _SCALARS) for a in args):
            raise TypeError(f"{where}: Literal choices must be scalars, got {tp}")
    elif origin is tuple:
        items = args[:1] if len(args) == 2 and args[1] is Ellipsis else args
        if not items or not all(a in _SCALARS for a in items):
            raise TypeError(f"{where}: tuples must hold bool/int/float/str, got {tp}")
    elif origin in (dict, Mapping):
        if len(args) != 2 or args[0] is not str or args[1] not in _SCALARS:
            raise TypeError(f"{where}: mappings must be Mapping[str, bool/int/float/str], got {tp}")
    elif tp not in _SCALARS:
        raise TypeError(f"{where}: unsupported config type {tp}")
    has_bounds = any(key in meta for key, _, _ in _BOUNDS)
    if has_bounds and _element(tp) not in (int, float):
        raise TypeError(f"{where}: gt/ge/lt/le apply to numbers only, not {tp}")
    if ("choices" in meta or "key_label" in meta) and origin not in (dict, Mapping):
        raise TypeError(f"{where}: 'choices' and 'key_label' apply to mapping keys only")
    if "check" in meta and not callable(meta["check"]):
        raise TypeError(f"{where}: 'check' must be callable")


# --------------------------------------------------------------------------------------------
# Describing what is allowed


def _bounds_text(meta: Mapping[str, Any]) -> str:
    parts = [f"{op} {meta[key]!r}" for key, op, _ in _BOUNDS if meta.get(key) is not None]
    return " " + " and ".join(parts) if parts else ""


def _describe(tp: Any, meta: Mapping[str, Any], optional: bool = False) -> str:
    """What is allowed, in words: 'a number > 0', "one of 'a', 'b'", 'a list of 2 integers'."""
    origin, args = get_origin(tp), get_args(tp)
    bounds = _bounds_text(meta)
    if origin is Literal:
        text = "one of " + ", ".join(repr(a) for a in args)
    elif origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"a list of {_NOUNS[args[0]][2]}{bounds}"
        elif len(set(args)) == 1:
            text = f"a list of {len(args)} {_NOUNS[args[0]][2]}{bounds}"
        else:
            text = "a list [" + ", ".join(_TYPE_NAMES[a] for a in args) + "]"
    elif origin in (dict, Mapping):
        label = meta.get("key_label", "key")
        if meta.get("choices") is not None:
            label += " (" + ", ".join(map(str, meta["choices"])) + ")"
        text = f"a mapping of {label} to {_NOUNS[args[1]][1]}{bounds}"
    else:
        text = _NOUNS[tp][0] + bounds
    return f"{text} or null" if optional else text


def _type_text(spec: _Field) -> str:
    """Type of a field for help output: 'float (> 0)', 'tuple[int, int] | None (each >= 64)'."""
    tp, meta = spec.type, spec.meta
    origin, args = get_origin(tp), get_args(tp)
    if spec.section is not None:
        return "section"
    if origin is Literal:
        text = " | ".join(repr(a) for a in args)
    elif origin is tuple:
        inner = [("..." if a is Ellipsis else _TYPE_NAMES[a]) for a in args]
        text = f"tuple[{', '.join(inner)}]"
    elif origin in (dict, Mapping):
        text = f"mapping[str, {_TYPE_NAMES[args[1]]}]"
    else:
        text = _TYPE_NAMES[tp]
    if spec.optional:
        text += " | None"
    notes = []
    if meta.get("choices") is not None:
        notes.append(f"{meta.get('key_label', 'key')}: " + ", ".join(map(str, meta["choices"])))
    bounds = _bounds_text(meta).strip()
    if bounds:
        each = {tuple: "each ", dict: "values ", Mapping: "values "}.get(origin, "")
        notes.append(each + bounds)
    return f"{text} ({'; '.join(notes)})" if notes else text


def _suggest(word: Any, valid: Iterable[str]) -> str:
    """' did you mean 'x'?' for a close match of ``word`` among ``valid``, else ''."""
    if not isinstance(word, str):
        return ""
    valid = list(valid)
    folded = {v.casefold(): v for v in valid}
    if word.casefold() in folded:
        return f" did you mean {folded[word.casefold()]!r}?"
    close = difflib.get_close_matches(word, valid, n=1)
    return f" did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------
# Converting and checking values


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _scalar(tp: Any, value: Any) -> Any:
    """Convert ``value`` to the scalar type ``tp`` or return _INVALID (no message)."""
    if tp is bool:
        return value if isinstance(value, bool) else _INVALID
    if isinstance(value, bool):  # bool is an int subclass, but never a number here
        return _INVALID
    if tp is int:
        return value if isinstance(value, int) else _INVALID
    if tp is float:
        return float(value) if isinstance(value, int | float) else _INVALID
    return value if isinstance(value, tp) else _INVALID


def _in_bounds(value: Any, meta: Mapping[str, Any]) -> bool:
    return all(test(value, meta[key]) for key, _, test in _BOUNDS if meta.get(key) is not None)


def _number(
    tp: Any,
    value: Any,
    meta: Mapping[str, Any],
    path: str,
    out: list[Problem],
    optional: bool = False,
) -> Any:
    """Convert one scalar (a field, a tuple item or a mapping value) and check its bounds.

    A value of the wrong type is told the type ('expected an integer, got 'abc''); a value out
    of range is told the range too ('expected a number > 0, got -3').
    """
    converted = _scalar(tp, value)
    null = " or null" if optional else ""
    if converted is _INVALID:
        out.append(Problem(path, f"expected {_NOUNS[tp][0]}{null}, got {_show(value)}"))
        return _INVALID
    if isinstance(converted, float) and not math.isfinite(converted):
        out.append(Problem(path, f"expected a finite number{null}, got {_show(value)}"))
        return _INVALID
    if tp in (int, float) and not _in_bounds(converted, meta):
        allowed = _NOUNS[tp][0] + _bounds_text(meta) + null
        out.append(Problem(path, f"expected {allowed}, got {_show(value)}"))
        return _INVALID
    return converted


def _convert(spec: _Field, value: Any, path: str, out: list[Problem]) -> Any:
    """Validate and normalise the value of a leaf field; record problems in ``out``."""
    if value is None and spec.optional:
        return None
    tp, meta = spec.type, spec.meta
    origin, args = get_origin(tp), get_args(tp)
    expected = _describe(tp, meta, spec.optional)
    n_problems = len(out)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            hint = _suggest(value, [a for a in args if isinstance(a, str)])
            hint = f";{hint}" if hint else ""
            out.append(Problem(path, f"expected {expected}, got {_show(value)}{hint}"))
            return _INVALID
        result = value
    elif origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple) or (not variadic and len(value) != len(args)):
            out.append(Problem(path, f"expected {expected}, got {_show(value)}"))
            return _INVALID
        items = [args[0]] * len(value) if variadic else list(args)
        result = tuple(
            _number(t, v, meta, f"{path}[{i}]", out)
            for i, (t, v) in enumerate(zip(items, value, strict=True))
        )
    elif origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            out.append(Problem(path, f"expected {expected}, got {_show(value)}"))
            return _INVALID
        choices, label = meta.get("choices"), meta.get("key_label", "key")
        result = {}
        for key, item in value.items():
            sub = _join(path, key)
            if not isinstance(key, str):
                out.append(Problem(sub, f"expected a string {label}, got {_show(key)}"))
            elif choices is not None and key not in choices:
                hint = _suggest(key, choices)
                valid = ", ".join(map(str, choices))
                out.append(Problem(sub, f"unknown {label};{hint} expected one of {valid}"))
            else:
                result[key] = _number(args[1], item, meta, sub, out)
        result = FrozenMap(result)
    else:
        result = _number(tp, value, meta, path, out, spec.optional)
    if len(out) > n_problems:
        return _INVALID
    check = meta.get("check")
    if check is not None:
        error = check(result)
        if error:
            out.append(Problem(path, error))
            return _INVALID
    return result


def _normalise(obj: Any) -> None:
    """``__post_init__`` of every section: validate and normalise the fields in place."""
    problems: list[Problem] = []
    for spec in _spec(type(obj)):
        value = getattr(obj, spec.name)
        if spec.section is not None:
            if not isinstance(value, spec.section):
                expected = f"a {spec.section.__name__}"
                problems.append(Problem(spec.name, f"expected {expected}, got {_show(value)}"))
            continue
        converted = _convert(spec, value, spec.name, problems)
        if converted is not _INVALID:
            object.__setattr__(obj, spec.name, converted)
    if problems:
        raise ConfigError(problems, f"{type(obj).__name__}(...)")


def _build(cls: type, data: Any, path: str, out: list[Problem]) -> Any:
    """Build section ``cls`` from parsed YAML, merged over its defaults; record problems."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        what = f"the {path} section" if path else "the top level"
        out.append(Problem(path or None, f"expected a mapping for {what}, got {_show(data)}"))
        return _INVALID
    specs = {spec.name: spec for spec in _spec(cls)}
    n_problems = len(out)
    kwargs = {}
    for key, value in data.items():
        sub = _join(path, key)
        spec = specs.get(key) if isinstance(key, str) else None
        if spec is None:
            where = f"in {path}" if path else "at the top level"
            hint = _suggest(key, specs)
            out.append(
                Problem(sub, f"unknown key;{hint} valid keys {where}: {', '.join(sorted(specs))}")
            )
            continue
        if spec.section is not None:
            kwargs[key] = _build(spec.section, value, sub, out)
        else:
            kwargs[key] = _convert(spec, value, sub, out)
    if len(out) > n_problems:
        return _INVALID
    try:
        return cls(**kwargs)
    except ConfigError as exc:  # a cross-field check in the section's own __post_init__
        out.extend(
            Problem(_join(path, p.path) if p.path else path or None, p.message)
            for p in exc.problems
        )
        return _INVALID


# --------------------------------------------------------------------------------------------
# Root config and its sections (later issues add a section class and one field on Config)


def _night_date(night: str | None) -> str | None:
    if night is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", night):
        return None
    return f"expected a night as YYYY-MM-DD, got {night!r}"


def _positive_total(mix: Mapping[str, float]) -> str | None:
    if sum(mix.values()) > 0:
        return None
    return f"expected at least one class with a weight > 0, got {_show(mix)}"


@config_section
class TelescopeConfig:
    """The simulated MegaCam telescope (``skygrade simulate``)."""

    geometry: Literal["full", "small"] = setting(
        "full",
        "Detector preset: 'full' = 36 CCDs of 2048x4612 pixels (like MegaCam); "
        "'small' = 4 CCDs of 512x1152 pixels (tests, demos).",
    )
    n_ccd: int | None = setting(
        None, "Number of CCDs per exposure; overrides the preset's count when set.", ge=1
    )
    ccd_shape: tuple[int, int] | None = setting(
        None,
        "[NAXIS1, NAXIS2] = [width, height] of each CCD in pixels; overrides the preset's shape "
        "when set.",
        ge=64,
    )
    seed: int = setting(
        0, "Seed of the random generator: the same seed renders the same exposures.", ge=0
    )
    exposures_per_night: int = setting(40, "Exposures rendered per simulated night.", ge=1)
    cadence_s: float = setting(
        60.0, "Seconds between two exposures written into the drop directory (drop mode).", gt=0
    )
    transfer_s: float = setting(
        5.0,
        "Seconds over which one file is written progressively in drop mode, like a slow "
        "transfer; 0 writes it at once.",
        ge=0,
    )
    transfer_chunks: int = setting(
        16, "Number of pieces in which a file is written over transfer_s in drop mode.", ge=1
    )
    class_mix: Mapping[str, float] = setting(
        {"GOOD": 0.5, "B_SEEING": 0.15, "BGP": 0.1, "BT": 0.15, "RBT": 0.1},
        "Relative weight of each image-quality class among the simulated exposures (normalised "
        "to a sum of 1). A mapping given in the file replaces the whole mix: classes left out "
        "get weight 0.",
        ge=0,
        choices=CLASSES,
        key_label="class",
        check=_positive_total,
    )


MEGACAM_ZERO_POINTS: dict[str, float] = {
    "u": 25.74,
    "g": 26.52,
    "r": 26.22,
    "i": 26.00,
    "z": 24.99,
}
"""Approximate nominal MegaCam zero points (AB mag of 1 ADU/s at airmass 1) by band letter:
the default of ``extract.zero_points``. Not calibrations: PHOTZP from the header wins, and a
site sets its own in the configuration."""

EXPECTED_SOURCES_PER_MPX: dict[str, float] = {
    "u": 100.0,
    "g": 115.0,
    "r": 105.0,
    "i": 110.0,
    "z": 70.0,
}
"""Clean detections per megapixel in a 100 s exposure on a clear night, by band letter: the
default of ``extract.expected_sources_per_mpx``. Measured on the simulator (0.7 arcsec, dark
sky, airmass 1, the default sep settings: 101, 114, 103, 108 and 69 per Mpx); a real field's
density depends on its galactic latitude, so these are a starting point only."""


@config_section
class ExtractConfig:
    """Source extraction per CCD (SExtractor semantics; defaults are SExtractor's)."""

    backend: Literal["sep", "sextractor", "catalog"] = setting(
        "sep",
        "Who measures the sources: 'sep' (in process, fast), 'sextractor' (Debian's "
        "source-extractor binary per CCD) or 'catalog' (inputs are existing SExtractor catalogs, "
        "FITS_1.0 or FITS_LDAC, instead of images).",
    )
    thresh: float = setting(
        1.5, "DETECT_THRESH: detection threshold in units of the local background RMS.", gt=0
    )
    minarea: int = setting(5, "DETECT_MINAREA: minimum number of pixels above threshold.", ge=1)
    deblend_nthresh: int = setting(32, "DEBLEND_NTHRESH: deblending sub-thresholds.", ge=1)
    deblend_cont: float = setting(
        0.005, "DEBLEND_MINCONT: minimum contrast for deblending (1 disables it).", ge=0, le=1
    )
    back_size: int = setting(64, "BACK_SIZE: background mesh size in pixels.", ge=8)
    back_filtersize: int = setting(3, "BACK_FILTERSIZE: background median filter size.", ge=1)
    sextractor_binary: str = setting(
        "source-extractor", "SExtractor executable for the 'sextractor' backend."
    )
    catalog_exptime: float | None = setting(
        None,
        "EXPTIME (s) for catalogs whose image header lacks it ('catalog' backend); unset: such "
        "a catalog is graded without it (the exposure time and sky rate are not used, and the "
        "reason says so).",
        gt=0,
    )
    catalog_ccd_shape: tuple[int, int] = setting(
        (2048, 4612),
        "[NAXIS1, NAXIS2] = [width, height] in pixels of the CCDs of catalogs that keep no image "
        "header (FITS_1.0 'OBJECTS' tables): MegaCam's by default. Never taken from the extent "
        "of the sources.",
        ge=1,
    )
    catalog_night: str | None = setting(
        None,
        "Observing night (YYYY-MM-DD) of catalogs without DATE-OBS that do not sit in a "
        "YYYY-MM-DD folder ('catalog' backend; `--night` on the command line); unset: 'unknown'.",
        check=_night_date,
    )
    pixel_scale: float = setting(
        0.187,
        "Arcsec per pixel (MegaCam: 0.187): the seeing in arcsec and the sky per arcsec^2.",
        gt=0,
    )
    zero_points: Mapping[str, float] = setting(
        MEGACAM_ZERO_POINTS,
        "Nominal zero point (AB magnitude of a source giving 1 ADU/s, airmass 1) per FILTER, "
        "for the sky brightness in mag/arcsec^2; a key may be a full filter name (r.MP9601) or "
        "its band letter (r). PHOTZP in the header, when present, is used instead. Defaults: "
        "approximate values for the MegaCam filters, to be checked against the PHOTZP of your "
        "Elixir-processed files.",
    )
    expected_sources_per_mpx: Mapping[str, float] = setting(
        EXPECTED_SOURCES_PER_MPX,
        "Clean detections per megapixel expected in a 100 s exposure on a clear night, per "
        "FILTER (full name or band letter), for source_count_ratio, a transparency proxy (NOT "
        "a photometric zero point: it also falls with bad seeing, a bright sky or a sparse "
        "field). Defaults: measured on the simulator's clear exposures at 0.7 arcsec seeing "
        "with the default detection settings; set them from your own clear nights.",
        gt=0,
    )
    source_count_exponent: float = setting(
        0.375,
        "The expected count scales as (EXPTIME / 100 s) ** this: sky-limited depth grows as "
        "1.25 log10(t) magnitudes and counts as 10 ** (0.3 m), so 0.375 (the simulator's "
        "counts: 0.36-0.40 from 30 to 600 s).",
        ge=0,
    )


@config_section
class SomConfig:
    """The self-organizing map over source features (fitted by ``skygrade train``)."""

    grid: tuple[int, int] = setting((16, 16), "[rows, columns] of the SOM's neuron grid.", ge=2)
    sigma: float = setting(2.0, "Initial neighbourhood radius (neurons); decays in training.", gt=0)
    learning_rate: float = setting(0.5, "Initial learning rate; decays in training.", gt=0, le=1)
    iterations: int = setting(
        100_000, "Online training updates, each on one randomly drawn source.", ge=100
    )
    n_clusters: int = setting(
        20, "Clusters the neurons are grouped into (the method uses 20).", ge=2
    )
    max_train_sources: int = setting(
        3_000_000,
        "Clean sources sampled (evenly over exposures and classes) to fit the scaling and SOM.",
        ge=1000,
    )
    seed: int = setting(0, "Seed of the SOM initialisation and of the sample order.", ge=0)


@config_section
class TrainConfig:
    """Training the CNN and assembling the model bundle (``skygrade train``)."""

    tile: int = setting(
        32, "Side in pixels of each source cutout in the representative image.", ge=8, le=128
    )
    val_fraction: float = setting(
        0.15, "Share of the training exposures held out for early stopping.", ge=0, lt=1
    )
    test_fraction: float = setting(
        0.2,
        "Share held out for the bundle's reported metrics: whole nights when the archive has "
        "at least 5 nights, else whole exposures (never CCDs of one exposure on both sides).",
        ge=0,
        lt=1,
    )
    epochs: int = setting(40, "Maximum training epochs.", ge=1)
    batch_size: int = setting(64, "CCDs per optimisation step.", ge=1)
    learning_rate: float = setting(2e-3, "AdamW learning rate (cosine decay).", gt=0)
    patience: int = setting(6, "Epochs without validation improvement before stopping.", ge=1)
    modality_dropout: float = setting(
        0.3,
        "Share of training CCDs whose image is hidden, so the network also grades from hits "
        "alone (catalog mode).",
        ge=0,
        lt=1,
    )
    seed: int = setting(0, "Seed of the split, the weights' initialisation and batch order.", ge=0)
    ensemble: int = setting(
        2,
        "Networks trained on the same split and SOM with seeds seed, seed+1, ...; the bundle "
        "holds them all and scoring averages their log-probabilities, which evens out the "
        "run-to-run variance of a single network. Each member adds one training run and about "
        "20 ms of scoring per 36-CCD exposure on one core (2 keeps an exposure under 50 ms).",
        ge=1,
        le=16,
    )


@config_section
class WatchConfig:
    """The daemon at the data drop (``skygrade watch``)."""

    settle_s: float = setting(
        2.0, "Seconds a file's size and mtime must stay unchanged before it is checked.", gt=0
    )
    incomplete_timeout_s: float = setting(
        900.0,
        "Seconds an incomplete file may stay unchanged before it is quarantined as "
        "truncated (a file still growing is waited for).",
        gt=0,
    )
    poll_s: float = setting(0.5, "Seconds between checks of files still arriving.", gt=0)
    use_polling: bool = setting(
        False,
        "Poll the drop directory instead of inotify events (needed on NFS, where writes made "
        "on another machine raise no event).",
    )
    rescan_s: float | None = setting(
        60.0,
        "Seconds between full rescans of the drop directory (a safety net for lost events); "
        "null disables them.",
        gt=0,
    )
    ccd_workers: int = setting(
        2,
        "Processes measuring the CCDs of an exposure in parallel (a pool that lives as long "
        "as the daemon).",
        ge=1,
    )
    backlog_policy: Literal["fifo", "newest-first"] = setting(
        "newest-first",
        "Order in which waiting exposures are graded when they arrive faster than they are "
        "graded: 'newest-first' shows observers the exposure just taken; nothing is dropped "
        "either way (every file is in the ledger until it is graded or quarantined).",
    )
    max_attempts: int = setting(
        5,
        "Times grading an exposure may fail on the exposure itself (its results cannot be "
        "written, the pipeline raised on it) before it is quarantined as too_many_attempts; a "
        "dataset that cannot be written at all, a bundle that cannot be loaded and a kill or "
        "restart of the daemon do not count. With retry_s 10 the fifth failure comes about "
        "150 s after the first.",
        ge=1,
    )
    max_interruptions: int = setting(
        10,
        "Times an exposure may be caught mid-grading by a crash or kill of the daemon before "
        "it is quarantined as crash_loop (a file that crashes the daemon must not crash it all "
        "night). A kill from outside looks the same as a crash, so this is kept well above "
        "the restarts a good exposure can meet.",
        ge=1,
    )
    retry_s: float = setting(
        10.0,
        "First back-off (s) after a failed grading or write of an exposure; doubles with each "
        "failure of that exposure, up to 300 s. Other exposures are graded meanwhile.",
        gt=0,
    )
    shutdown_timeout_s: float = setting(
        60.0, "Seconds a stop waits for the exposure in flight before handing it back.", gt=0
    )


@config_section
class LoggingConfig:
    """Logging of every skygrade command."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", "Lowest level of the log records that skygrade writes."
    )


def check_http_url(url: str) -> str | None:
    """Check that ``url`` is an http:// or https:// URL with a host.

    Parameters
    ----------
    url : str
        The URL (e.g. a webhook endpoint).

    Returns
    -------
    str or None
        None when it is valid, else the error text (used as a field ``check``).

    Examples
    --------
    >>> check_http_url("file:///etc/passwd")
    "expected an http:// or https:// URL, got 'file:///etc/passwd'"
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest and not rest.startswith("/"):
        return None
    return f"expected an http:// or https:// URL, got {_show(url)}"


@config_section
class MetricsConfig:
    """The daemon's HTTP server for Prometheus metrics (/metrics) and health (/healthz)."""

    host: str = setting(
        "127.0.0.1",
        "Address the server binds to; the default serves this machine only, 0.0.0.0 (or ::) "
        "every interface.",
    )
    port: int = setting(9108, "TCP port of the server; 0 picks a free one.", ge=0, le=65535)
    request_timeout_s: float = setting(
        10.0,
        "Seconds one connection may last, from accept to the end of the answer: a client "
        "that trickles its request (or reads the answer slowly) is cut off then, whatever "
        "it sends.",
        gt=0,
    )
    max_connections: int = setting(
        32,
        "Connections served at once (one thread each); more are answered 503 at once and "
        "closed. A connection gets its thread once it has sent something: silent ones hold "
        "none (up to 256, then the oldest is closed) and are closed at the request timeout.",
        ge=1,
    )


@config_section
class AlertsConfig:
    """WARN / ALARM rules on the graded exposures, and their delivery."""

    consecutive_bad_warn: int = setting(
        3, "WARN when this many consecutive graded exposures are not GOOD.", ge=1
    )
    consecutive_bad_alarm: int = setting(
        6,
        "ALARM when this many consecutive graded exposures are not GOOD (>= consecutive_bad_warn).",
        ge=1,
    )
    low_confidence: float = setting(
        0.5, "WARN when a graded exposure's confidence is below this.", ge=0, le=1
    )
    median_iso0_warn: float | None = setting(
        None,
        "WARN when an exposure's median ISO0 (pixels above threshold, a seeing proxy) exceeds "
        "this; unset disables the rule.",
        gt=0,
    )
    seeing_warn_arcsec: float | None = setting(
        1.2,
        "WARN when an exposure's seeing (median PSF FWHM of its stars, arcsec, as measured: "
        "not corrected to zenith) reaches this; unset disables the rule. The default is well "
        "above the MegaCam median on Mauna Kea (~0.7).",
        gt=0,
    )
    median_elongation_warn: float = setting(
        1.6, "WARN when an exposure's median source elongation (A/B) reaches this.", ge=1
    )
    median_elongation_alarm: float = setting(
        2.2,
        "ALARM when an exposure's median source elongation reaches this (>= "
        "median_elongation_warn).",
        ge=1,
    )
    quarantine_warn: int = setting(
        3, "WARN when this many of the last quarantine_window exposures were quarantined.", ge=1
    )
    quarantine_window: int = setting(
        10, "Number of most recent exposures the quarantine rule looks at.", ge=1
    )
    webhook_url: str | None = setting(
        None,
        "Alertmanager-compatible endpoint (e.g. http://localhost:9093/api/v2/alerts) that "
        "alerts are POSTed to; unset means alerts are only logged.",
        check=check_http_url,
    )
    webhook_timeout_s: float = setting(2.0, "Seconds one webhook request may take.", gt=0)
    webhook_retries: int = setting(
        3, "Further attempts after a failed webhook request, with exponential backoff.", ge=0
    )
    webhook_queue: int = setting(
        100, "Alerts waiting for delivery at most; when full the oldest is dropped.", ge=1
    )

    def __post_init__(self) -> None:
        problems = []
        if self.consecutive_bad_alarm < self.consecutive_bad_warn:
            problems.append(
                Problem(
                    "consecutive_bad_alarm",
                    f"expected >= consecutive_bad_warn ({self.consecutive_bad_warn}), "
                    f"got {self.consecutive_bad_alarm}",
                )
            )
        if self.median_elongation_alarm < self.median_elongation_warn:
            problems.append(
                Problem(
                    "median_elongation_alarm",
                    f"expected >= median_elongation_warn ({self.median_elongation_warn}), "
                    f"got {self.median_elongation_alarm}",
                )
            )
        if self.quarantine_warn > self.quarantine_window:
            problems.append(
                Problem(
                    "quarantine_warn",
                    f"expected <= quarantine_window ({self.quarantine_window}), "
                    f"got {self.quarantine_warn}",
                )
            )
        if problems:
            raise ConfigError(problems, f"{type(self).__name__}(...)")


@config_section
class Config:
    """The whole skygrade configuration: one attribute per section."""

    telescope: TelescopeConfig = section(
        TelescopeConfig, "The simulated MegaCam telescope (`skygrade simulate`)."
    )
    extract: ExtractConfig = section(
        ExtractConfig, "Source extraction per CCD (SExtractor semantics)."
    )
    som: SomConfig = section(SomConfig, "The self-organizing map over source features.")
    train: TrainConfig = section(TrainConfig, "Training the CNN (``skygrade train``).")
    watch: WatchConfig = section(WatchConfig, "The daemon at the data drop (skygrade watch).")
    logging: LoggingConfig = section(LoggingConfig, "Logging of every skygrade command.")
    metrics: MetricsConfig = section(
        MetricsConfig, "The daemon's /metrics and /healthz HTTP server (`skygrade watch`)."
    )
    alerts: AlertsConfig = section(AlertsConfig, "WARN / ALARM rules and their delivery.")


# --------------------------------------------------------------------------------------------
# Public functions


def with_backend(cfg: Config, backend: str | None) -> Config:
    """``cfg`` with ``extract.backend`` set to ``backend`` (``cfg`` itself when None).

    Examples
    --------
    >>> with_backend(Config(), "catalog").extract.backend
    'catalog'
    """
    if not backend:
        return cfg
    return dataclasses.replace(cfg, extract=dataclasses.replace(cfg.extract, backend=backend))


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate a ``yaml.safe_load``-ed object and build the :class:`Config`.

    Sections and keys left out take their defaults; a mapping-valued key replaces its default
    as a whole.

    Parameters
    ----------
    data : object
        The parsed YAML document: a mapping of sections, or None (all defaults).
    source : str, optional
        Name of where ``data`` came from, used in error messages.

    Returns
    -------
    Config
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        With one line per problem found (all of them, not just the first).

    Examples
    --------
    >>> parse_config({"telescope": {"geometry": "small"}}).telescope.geometry
    'small'
    """
    problems: list[Problem] = []
    cfg = _build(Config, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, except that a key given twice in one mapping is recorded.

    YAML keeps the last of two equal keys without a word, so a setting given twice (a second
    ``port:`` pasted below the first) silently overrode the first. Each duplicate becomes a
    :class:`Problem` at its dotted key path in :attr:`duplicates` (in the order of the lines of
    the second keys); everything else, merge keys
    (``<<: *base``, whose keys may be overridden) included, loads as ``yaml.safe_load`` does.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._paths: dict[int, str] = {}
        self._found: list[tuple[int, Problem]] = []

    @property
    def duplicates(self) -> list[Problem]:
        """The keys given twice, in document order."""
        return [problem for _, problem in sorted(self._found, key=lambda found: found[0])]

    def construct_document(self, node: yaml.Node) -> Any:
        self._name(node, "")
        return super().construct_document(node)

    def _name(self, node: yaml.Node, path: str) -> None:
        """Record the dotted path of every node below ``node`` (an alias keeps its first)."""
        if id(node) in self._paths:
            return
        self._paths[id(node)] = path
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                named = isinstance(key, yaml.ScalarNode) and key.tag != _YAML_MERGE
                self._name(value, _join(path, key.value) if named else path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._name(item, f"{path}[{i}]")

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode) and id(node) in self._paths:
            path = self._paths.pop(id(node))  # once per node: a merge adds keys to it later
            first: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _YAML_MERGE:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = first.setdefault(key, key_node)
                except TypeError:  # unhashable: the base class reports it
                    continue
                if seen is not key_node:
                    line = key_node.start_mark.line + 1
                    message = f"duplicate key (line {seen.start_mark.line + 1} and line {line})"
                    self._found.append(
                        (line, Problem(_join(path, key), f"{message}: give it once"))
                    )
        return super().construct_mapping(node, deep=deep)


_YAML_MERGE = "tag:yaml.org,2002:merge"


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Read and validate a YAML config file.

    Parameters
    ----------
    path : str or os.PathLike, optional
        The YAML file. None gives the defaults. An empty file gives the defaults too.

    Returns
    -------
    Config
        The validated, frozen configuration.

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, is not valid YAML, gives a key twice in one
        mapping, or holds invalid settings; the message names the file, the dotted key path,
        the bad value and what is allowed.

    Examples
    --------
    >>> load_config().telescope.cadence_s
    60.0
    """
    if path is None:
        return Config()
    source = os.fspath(path)
    try:
        text = Path(source).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("no such config file", source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {exc.start})", source) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", source) from None
    loader = _UniqueKeyLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"not valid YAML{where}: {problem}", source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"not valid YAML: {exc}", source) from None
    finally:
        loader.dispose()
    if loader.duplicates:
        raise ConfigError(loader.duplicates, source)
    return parse_config(data, source)


def _plain(value: Any) -> Any:
    if _is_section(type(value)):
        return to_dict(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """Return a config (or one section) as plain dicts, lists and scalars.

    Parameters
    ----------
    cfg : Config or a section
        The configuration.

    Returns
    -------
    dict
        JSON- and YAML-serialisable; ``parse_config(to_dict(cfg)) == cfg`` for a :class:`Config`.

    Raises
    ------
    TypeError
        If ``cfg`` is not a config section.

    Examples
    --------
    >>> to_dict(load_config())["telescope"]["geometry"]
    'full'
    """
    if not _is_section(type(cfg)):
        raise TypeError(f"expected a config section, got {type(cfg).__name__}")
    return {spec.name: _plain(getattr(cfg, spec.name)) for spec in _spec(type(cfg))}


def _yaml_value(value: Any) -> str:
    """One value as single-line YAML (flow style), e.g. ``full``, ``[512, 1152]``, ``null``."""
    text = yaml.safe_dump(
        _plain(value), default_flow_style=True, sort_keys=False, width=1 << 30, allow_unicode=True
    )
    return text.removesuffix("\n").removesuffix("\n...")


def _comment(text: str, indent: str) -> list[str]:
    width = max(100 - len(indent) - 2, 40)
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)]


def _render(cfg: Any, indent: str, docs: bool, lines: list[str]) -> None:
    defaults = type(cfg)()
    for spec in _spec(type(cfg)):
        value = getattr(cfg, spec.name)
        if docs:
            if not indent:
                lines.append("")
            lines.extend(_comment(spec.doc, indent))
            if spec.section is None:
                allowed = f"Allowed: {_describe(spec.type, spec.meta, spec.optional)}."
                default = f"Default: {_yaml_value(getattr(defaults, spec.name))}."
                if len(indent) + len(allowed) + len(default) + 3 <= 100:
                    lines.append(f"{indent}# {allowed} {default}")
                else:
                    lines += [f"{indent}# {allowed}", f"{indent}# {default}"]
        if spec.section is not None:
            if _spec(spec.section):
                lines.append(f"{indent}{spec.name}:")
                _render(value, indent + "  ", docs, lines)
            else:
                lines.append(f"{indent}{spec.name}: {{}}")
        elif isinstance(value, Mapping) and value:
            lines.append(f"{indent}{spec.name}:")
            lines.extend(f"{indent}  {_yaml_value(k)}: {_yaml_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{indent}{spec.name}: {_yaml_value(value)}")


def render_yaml(cfg: Config, docs: bool = True) -> str:
    """Render the effective configuration as YAML, documented.

    Parameters
    ----------
    cfg : Config
        The configuration to render.
    docs : bool, optional
        Put each section's and field's doc, what it allows and its default as comments above
        it (default True).

    Returns
    -------
    str
        Valid YAML; ``parse_config(yaml.safe_load(text)) == cfg``.

    Examples
    --------
    >>> print(render_yaml(load_config(), docs=False).splitlines()[1])
      geometry: full
    """
    lines: list[str] = []
    if docs:
        lines += [
            "# skygrade configuration.",
            "# Every key is optional: a key left out takes its default, and so does a section",
            "# left out. Mapping values (like telescope.class_mix) replace the default as a whole.",
        ]
    _render(cfg, "", docs, lines)
    return "\n".join(lines) + "\n"


def config_digest(cfg: Config) -> str:
    """Short digest identifying a configuration, recorded with every output row.

    Parameters
    ----------
    cfg : Config
        The configuration.

    Returns
    -------
    str
        The first 12 hex digits of the SHA-256 of the canonical JSON of ``to_dict(cfg)``
        (sorted keys, no spaces).

    Examples
    --------
    >>> len(config_digest(load_config()))
    12
    """
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]


def documented_fields(cfg_cls: type = Config) -> list[tuple[str, str, str]]:
    """List every field of a config class, sections included, for help output.

    Parameters
    ----------
    cfg_cls : type, optional
        The config class to walk (default :class:`Config`).

    Returns
    -------
    list of (str, str, str)
        ``(dotted path, type text, doc)`` in declaration order; a section's type text is
        ``"section"`` and its fields follow it.

    Examples
    --------
    >>> documented_fields()[1][:2]
    ('telescope.geometry', "'full' | 'small'")
    """
    out: list[tuple[str, str, str]] = []

    def walk(cls: type, prefix: str) -> None:
        for spec in _spec(cls):
            path = _join(prefix, spec.name)
            out.append((path, _type_text(spec), spec.doc))
            if spec.section is not None:
                walk(spec.section, path)

    walk(cfg_cls, "")
    return out
