"""The configuration as YAML: the file read (a key given twice refused) and written, documented.

:func:`read_yaml` reads a config file as ``yaml.safe_load`` would, except that every key given
twice in one mapping is a :class:`~skygrade.ops.config_values.Problem`; :func:`render_yaml` writes
any config (or section) back as YAML with each field's doc, what it allows and its default as
comments. Both are generic over the sections (:mod:`skygrade.ops.config_schema`);
:func:`skygrade.ops.config.load_config` is the one that knows the root
:class:`skygrade.ops.config.Config`.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from skygrade.ops.config_schema import describe_allowed, join_path, plain_value, section_fields
from skygrade.ops.config_values import ConfigError, Problem

__all__ = ["read_yaml", "render_yaml"]


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
                self._name(value, join_path(path, key.value) if named else path)
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
                        (line, Problem(join_path(path, key), f"{message}: give it once"))
                    )
        return super().construct_mapping(node, deep=deep)


_YAML_MERGE = "tag:yaml.org,2002:merge"


def read_yaml(source: str) -> Any:
    """The parsed YAML document of the config file ``source`` (None for an empty file).

    Raises
    ------
    ConfigError
        If the file is missing or unreadable, is not UTF-8, is not valid YAML or gives a key twice
        in one mapping; the message names the file (and the line, or the dotted key path).
    """
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
    return data


def _yaml_value(value: Any) -> str:
    """One value as single-line YAML (flow style), e.g. ``full``, ``[512, 1152]``, ``null``."""
    text = yaml.safe_dump(
        plain_value(value),
        default_flow_style=True,
        sort_keys=False,
        width=1 << 30,
        allow_unicode=True,
    )
    return text.removesuffix("\n").removesuffix("\n...")


def _comment(text: str, indent: str) -> list[str]:
    width = max(100 - len(indent) - 2, 40)
    return [f"{indent}# {line}" for line in textwrap.wrap(text, width)]


def _render(cfg: Any, indent: str, docs: bool, lines: list[str]) -> None:
    defaults = type(cfg)()
    for spec in section_fields(type(cfg)):
        value = getattr(cfg, spec.name)
        if docs:
            if not indent:
                lines.append("")
            lines.extend(_comment(spec.doc, indent))
            if spec.section is None:
                allowed = f"Allowed: {describe_allowed(spec.type, spec.meta, spec.optional)}."
                default = f"Default: {_yaml_value(getattr(defaults, spec.name))}."
                if len(indent) + len(allowed) + len(default) + 3 <= 100:
                    lines.append(f"{indent}# {allowed} {default}")
                else:
                    lines += [f"{indent}# {allowed}", f"{indent}# {default}"]
        if spec.section is not None:
            if section_fields(spec.section):
                lines.append(f"{indent}{spec.name}:")
                _render(value, indent + "  ", docs, lines)
            else:
                lines.append(f"{indent}{spec.name}: {{}}")
        elif isinstance(value, Mapping) and value:
            lines.append(f"{indent}{spec.name}:")
            lines.extend(f"{indent}  {_yaml_value(k)}: {_yaml_value(v)}" for k, v in value.items())
        else:
            lines.append(f"{indent}{spec.name}: {_yaml_value(value)}")


def render_yaml(cfg: Any, docs: bool = True) -> str:
    """Render the effective configuration as YAML, documented.

    Parameters
    ----------
    cfg : skygrade.ops.config.Config
        The configuration to render (or any one section).
    docs : bool, optional
        Put each section's and field's doc, what it allows and its default as comments above
        it (default True).

    Returns
    -------
    str
        Valid YAML; ``parse_config(yaml.safe_load(text)) == cfg``.

    Examples
    --------
    >>> print(render_yaml(skygrade.ops.config.load_config(), docs=False).splitlines()[1])
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
