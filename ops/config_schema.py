"""The configuration's schema engine: frozen, typed, documented sections, validated with paths.

A section is a frozen dataclass decorated with :func:`config_section`; each of its fields is
declared with :func:`setting` (a leaf value with a ``doc`` and optional constraints) or
:func:`section` (a nested section). Validation (:func:`build_section`, and every section's
constructor), :func:`to_dict`, the YAML rendering (:mod:`skygrade.ops.config_yaml`) and the field
listing (:func:`skygrade.ops.config.documented_fields`) are generic: they are driven by the type
hints and the field metadata, never written per field. The sections themselves are in
:mod:`skygrade.ops.config`.

Supported field types: ``bool``, ``int``, ``float`` (ints accepted and stored as float; bools are
never numbers), ``str``, ``Literal[...]``, ``X | None``, ``tuple[T, T]`` and ``tuple[T, ...]`` of
scalars (written as YAML lists), ``Mapping[str, T]`` / ``dict[str, T]`` of scalars (stored as a
hashable, picklable :class:`FrozenMap`) and nested sections. Constraints in the field metadata:
``gt``, ``ge``, ``lt``, ``le`` (on a number, on each item of a tuple, on each value of a mapping),
``choices`` (the allowed keys of a mapping, named ``key_label`` in messages) and ``check`` (a
callable that gets the converted value and returns an error text or None).

Every problem is a :class:`~skygrade.ops.config_values.Problem` at the dotted key path it concerns,
and a :class:`~skygrade.ops.config_values.ConfigError` carries all of them at once (both, with
:class:`~skygrade.ops.config_values.FrozenMap` and :func:`~skygrade.ops.config_values.show_value`,
are in
:mod:`skygrade.ops.config_values`). :func:`section_fields`, :func:`join_path`,
:func:`describe_allowed`,
:func:`type_text` and :func:`plain_value` are the engine's introspection, for
:mod:`skygrade.ops.config` and :mod:`skygrade.ops.config_yaml`.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import dataclasses
import difflib
import math
import operator
import types
import typing
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, Literal, NamedTuple, get_args, get_origin

from skygrade.ops.config_values import ConfigError, FrozenMap, Problem, show_value

__all__ = [
    "SectionField",
    "build_section",
    "config_section",
    "describe_allowed",
    "join_path",
    "plain_value",
    "section",
    "section_fields",
    "setting",
    "to_dict",
    "type_text",
]

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
    section_fields(cls)
    try:
        cls()
    except (ConfigError, TypeError) as exc:
        raise TypeError(f"{cls.__name__}: the defaults are not a valid config: {exc}") from None
    return cls


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and getattr(tp, _IS_SECTION, False) is True


class SectionField(NamedTuple):
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
def section_fields(cls: type) -> tuple[SectionField, ...]:
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
            out.append(SectionField(f.name, tp, False, meta, tp))
            continue
        _check_type(tp, meta, where)
        out.append(SectionField(f.name, tp, optional, meta, None))
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


def describe_allowed(tp: Any, meta: Mapping[str, Any], optional: bool = False) -> str:
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


def type_text(spec: SectionField) -> str:
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


def join_path(path: str, key: Any) -> str:
    """The dotted key path of ``key`` below ``path`` (``""`` is the top level)."""
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
        out.append(Problem(path, f"expected {_NOUNS[tp][0]}{null}, got {show_value(value)}"))
        return _INVALID
    if isinstance(converted, float) and not math.isfinite(converted):
        out.append(Problem(path, f"expected a finite number{null}, got {show_value(value)}"))
        return _INVALID
    if tp in (int, float) and not _in_bounds(converted, meta):
        allowed = _NOUNS[tp][0] + _bounds_text(meta) + null
        out.append(Problem(path, f"expected {allowed}, got {show_value(value)}"))
        return _INVALID
    return converted


def _convert(spec: SectionField, value: Any, path: str, out: list[Problem]) -> Any:
    """Validate and normalise the value of a leaf field; record problems in ``out``."""
    if value is None and spec.optional:
        return None
    tp, meta = spec.type, spec.meta
    origin, args = get_origin(tp), get_args(tp)
    expected = describe_allowed(tp, meta, spec.optional)
    n_problems = len(out)
    if origin is Literal:
        if not any(type(value) is type(a) and value == a for a in args):
            hint = _suggest(value, [a for a in args if isinstance(a, str)])
            hint = f";{hint}" if hint else ""
            out.append(Problem(path, f"expected {expected}, got {show_value(value)}{hint}"))
            return _INVALID
        result = value
    elif origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not isinstance(value, list | tuple) or (not variadic and len(value) != len(args)):
            out.append(Problem(path, f"expected {expected}, got {show_value(value)}"))
            return _INVALID
        items = [args[0]] * len(value) if variadic else list(args)
        result = tuple(
            _number(t, v, meta, f"{path}[{i}]", out)
            for i, (t, v) in enumerate(zip(items, value, strict=True))
        )
    elif origin in (dict, Mapping):
        if not isinstance(value, Mapping):
            out.append(Problem(path, f"expected {expected}, got {show_value(value)}"))
            return _INVALID
        choices, label = meta.get("choices"), meta.get("key_label", "key")
        result = {}
        for key, item in value.items():
            sub = join_path(path, key)
            if not isinstance(key, str):
                out.append(Problem(sub, f"expected a string {label}, got {show_value(key)}"))
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
    for spec in section_fields(type(obj)):
        value = getattr(obj, spec.name)
        if spec.section is not None:
            if not isinstance(value, spec.section):
                expected = f"a {spec.section.__name__}"
                problems.append(Problem(spec.name, f"expected {expected}, got {show_value(value)}"))
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
        out.append(Problem(path or None, f"expected a mapping for {what}, got {show_value(data)}"))
        return _INVALID
    specs = {spec.name: spec for spec in section_fields(cls)}
    n_problems = len(out)
    kwargs = {}
    for key, value in data.items():
        sub = join_path(path, key)
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
            Problem(join_path(path, p.path) if p.path else path or None, p.message)
            for p in exc.problems
        )
        return _INVALID


def build_section(cls: type, data: object, source: str = "<config>") -> Any:
    """Validate a ``yaml.safe_load``-ed object and build section ``cls`` from it.

    Keys left out take their defaults; a mapping-valued key replaces its default as a whole.

    Parameters
    ----------
    cls : type
        A :func:`config_section` class (the root :class:`skygrade.ops.config.Config`, or any
        section).
    data : object
        The parsed YAML: a mapping, or None (all defaults).
    source : str, optional
        Name of where ``data`` came from, used in error messages.

    Raises
    ------
    ConfigError
        With one line per problem found (all of them, not just the first).
    """
    problems: list[Problem] = []
    built = _build(cls, data, "", problems)
    if problems:
        raise ConfigError(problems, source)
    return built


def plain_value(value: Any) -> Any:
    """A field value as plain data: a section as a dict, a tuple as a list, a mapping as a dict."""
    if _is_section(type(value)):
        return to_dict(value)
    if isinstance(value, tuple):
        return [plain_value(v) for v in value]
    if isinstance(value, Mapping):
        return {k: plain_value(v) for k, v in value.items()}
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
    return {spec.name: plain_value(getattr(cfg, spec.name)) for spec in section_fields(type(cfg))}
