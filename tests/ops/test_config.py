"""Tests for skygrade.ops.config: loading, validation messages, rendering, digest, field docs."""

import dataclasses
import json
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import pytest
import yaml

from skygrade.ops.config import (
    CLASSES,
    Config,
    LoggingConfig,
    TelescopeConfig,
    config_digest,
    documented_fields,
    load_config,
    parse_config,
)
from skygrade.ops.config_schema import config_section, section, setting, to_dict
from skygrade.ops.config_values import ConfigError, FrozenMap, Problem
from skygrade.ops.config_yaml import render_yaml

EXAMPLE = Path(__file__).parents[2] / "ops" / "skygrade.example.yaml"
REGENERATE = (
    ".venv/bin/python -c 'from skygrade.ops.config import load_config; "
    "from skygrade.ops.config_yaml import render_yaml; "
    'open("ops/skygrade.example.yaml", "w").write(render_yaml(load_config()))\''
)


def write(tmp_path: Path, text: str, name: str = "skygrade.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


# ---------------------------------------------------------------------------------- defaults


def test_defaults():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.telescope.geometry == "full"
    assert cfg.telescope.n_ccd is None
    assert cfg.telescope.ccd_shape is None
    assert (cfg.telescope.seed, cfg.telescope.exposures_per_night) == (0, 40)
    assert (cfg.telescope.cadence_s, cfg.telescope.transfer_s) == (60.0, 5.0)
    assert cfg.telescope.transfer_chunks == 16
    assert cfg.telescope.class_mix == {
        "GOOD": 0.5,
        "B_SEEING": 0.15,
        "BGP": 0.1,
        "BT": 0.15,
        "RBT": 0.1,
    }
    assert cfg.logging == LoggingConfig(level="INFO")


@pytest.mark.parametrize("text", ["", "# only a comment\n", "null\n", "telescope:\nlogging: {}\n"])
def test_empty_file_or_empty_sections_give_defaults(tmp_path, text):
    assert load_config(write(tmp_path, text)) == Config()


def test_the_narrow_band_holdout_draws_the_training_mix_through_narrow_bands_only():
    models = Path(__file__).parents[2] / "models"
    training = load_config(models / "training.yaml").telescope
    holdout = load_config(models / "holdout-narrow-band.yaml").telescope
    assert holdout.class_mix == training.class_mix
    assert (training.narrow_band, holdout.narrow_band) == (0.0, 1.0)


def test_parse_none_and_empty_mapping_give_defaults():
    assert parse_config(None) == parse_config({}) == Config()


def test_one_classes_tuple_for_the_config_and_the_model():
    import skygrade.ops.classes
    from skygrade.models.classes import CLASSES as MODEL_CLASSES
    from skygrade.models.classes import DESCRIPTIONS

    # Defined once (skygrade.ops.classes): the config and the model hold the very same tuple.
    assert CLASSES is MODEL_CLASSES is skygrade.ops.classes.CLASSES
    assert tuple(Config().telescope.class_mix) == CLASSES == tuple(DESCRIPTIONS)


def test_partial_section_merges_over_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "telescope:\n  geometry: small\n  seed: 7\n"))
    assert cfg.telescope == dataclasses.replace(TelescopeConfig(), geometry="small", seed=7)
    assert cfg.logging == LoggingConfig()


def test_partial_class_mix_replaces_the_whole_mix(tmp_path):
    cfg = load_config(write(tmp_path, "telescope:\n  class_mix: {BT: 1, RBT: 2}\n"))
    assert cfg.telescope.class_mix == {"BT": 1.0, "RBT": 2.0}


def test_values_are_normalised(tmp_path):
    text = "telescope:\n  cadence_s: 30\n  ccd_shape: [512, 1152]\n  n_ccd: 4\n"
    tel = load_config(write(tmp_path, text)).telescope
    assert tel.cadence_s == 30.0 and type(tel.cadence_s) is float
    assert tel.ccd_shape == (512, 1152)
    assert tel.n_ccd == 4
    assert isinstance(tel.class_mix, FrozenMap)
    assert all(type(v) is float for v in tel.class_mix.values())


def test_config_is_frozen_hashable_and_picklable():
    cfg = parse_config({"telescope": {"ccd_shape": [128, 256], "class_mix": {"GOOD": 1}}})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.telescope.seed = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.telescope.class_mix["GOOD"] = 2.0  # type: ignore[index]
    assert hash(cfg) == hash(parse_config(to_dict(cfg)))
    assert pickle.loads(pickle.dumps(cfg)) == cfg


def test_direct_construction_is_validated_and_normalised():
    tel = TelescopeConfig(ccd_shape=[128, 256], class_mix={"GOOD": 1})
    assert tel.ccd_shape == (128, 256)
    assert isinstance(tel.class_mix, FrozenMap)
    with pytest.raises(ConfigError, match=r"cadence_s: expected a number > 0, got -1"):
        TelescopeConfig(cadence_s=-1)
    with pytest.raises(ConfigError, match=r"seed: expected an integer, got 'x'"):
        dataclasses.replace(TelescopeConfig(), seed="x")


# ----------------------------------------------------------------------- round trips, example


NON_DEFAULT = {
    "telescope": {
        "geometry": "small",
        "n_ccd": 2,
        "ccd_shape": [256, 576],
        "seed": 11,
        "cadence_s": 2.5,
        "transfer_s": 0,
        "class_mix": {"RBT": 3, "GOOD": 1e-3},
    },
    "logging": {"level": "DEBUG"},
}


@pytest.mark.parametrize("docs", [True, False])
@pytest.mark.parametrize("data", [None, NON_DEFAULT], ids=["defaults", "non-default"])
def test_render_yaml_round_trips(data, docs):
    cfg = parse_config(data)
    text = render_yaml(cfg, docs=docs)
    assert parse_config(yaml.safe_load(text)) == cfg
    assert ("#" in text) is docs


def test_render_yaml_has_every_doc_as_a_comment():
    text = render_yaml(Config())
    comments = " ".join(
        line.strip().removeprefix("# ") for line in text.splitlines() if line.strip()[:1] == "#"
    )
    for path, _, doc in documented_fields():
        assert " ".join(doc.split()) in comments, path


def test_to_dict_round_trips_and_is_plain():
    cfg = parse_config(NON_DEFAULT)
    plain = to_dict(cfg)
    assert plain["telescope"]["ccd_shape"] == [256, 576]
    assert type(plain["telescope"]["class_mix"]) is dict
    assert json.loads(json.dumps(plain)) == plain
    assert parse_config(plain) == cfg
    assert to_dict(cfg.logging) == {"level": "DEBUG"}
    with pytest.raises(TypeError, match="config section"):
        to_dict({"telescope": {}})


def test_example_file_is_current_and_loads():
    shipped = EXAMPLE.read_text(encoding="utf-8")
    assert shipped == render_yaml(load_config()), f"regenerate it: {REGENERATE}"
    assert load_config(EXAMPLE) == Config()


# ---------------------------------------------------------------------------------- mistakes


MISTAKES = [
    (
        "telescop:\n  seed: 1\n",
        "skygrade.yaml: telescop: unknown key; did you mean 'telescope'? "
        "valid keys at the top level: alerts, extract, logging, metrics, som, telescope, "
        "train, watch",
    ),
    (
        "telescope:\n  cadance_s: 5\n",
        "skygrade.yaml: telescope.cadance_s: unknown key; did you mean 'cadence_s'? "
        "valid keys in telescope: cadence_s, ccd_shape, class_mix, exposures_per_night, ",
    ),
    ("monitoring: {}\n", "skygrade.yaml: monitoring: unknown key; valid keys at the top level"),
    (
        "telescope:\n  narrow_band: 1.5\n",
        "skygrade.yaml: telescope.narrow_band: expected a number >= 0 and <= 1, got 1.5",
    ),
    (
        "telescope:\n  cadence_s: -3\n",
        "skygrade.yaml: telescope.cadence_s: expected a number > 0, got -3",
    ),
    (
        "telescope:\n  cadence_s: fast\n",
        "skygrade.yaml: telescope.cadence_s: expected a number, got 'fast'",
    ),
    (
        "telescope:\n  transfer_s: .inf\n",
        "skygrade.yaml: telescope.transfer_s: expected a finite number, got inf",
    ),
    (
        "telescope:\n  geometry: huge\n",
        "skygrade.yaml: telescope.geometry: expected one of 'full', 'small', got 'huge'",
    ),
    (
        "logging:\n  level: info\n",
        "skygrade.yaml: logging.level: expected one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', "
        "got 'info'; did you mean 'INFO'?",
    ),
    ("telescope:\n  seed: abc\n", "skygrade.yaml: telescope.seed: expected an integer, got 'abc'"),
    ("telescope:\n  seed: 1.5\n", "skygrade.yaml: telescope.seed: expected an integer, got 1.5"),
    ("telescope:\n  seed: -1\n", "skygrade.yaml: telescope.seed: expected an integer >= 0, got -1"),
    ("telescope:\n  seed: true\n", "skygrade.yaml: telescope.seed: expected an integer, got True"),
    (
        "telescope:\n  cadence_s: yes\n",
        "skygrade.yaml: telescope.cadence_s: expected a number, got True",
    ),
    (
        "telescope:\n  n_ccd: 0\n",
        "skygrade.yaml: telescope.n_ccd: expected an integer >= 1 or null, got 0",
    ),
    (
        "telescope:\n  ccd_shape: [512, 1152, 3]\n",
        "skygrade.yaml: telescope.ccd_shape: expected a list of 2 integers >= 64 or null, "
        "got [512, 1152, 3]",
    ),
    (
        "telescope:\n  ccd_shape: 512\n",
        "skygrade.yaml: telescope.ccd_shape: expected a list of 2 integers >= 64 or null, got 512",
    ),
    (
        "telescope:\n  ccd_shape: [512, 32]\n",
        "skygrade.yaml: telescope.ccd_shape[1]: expected an integer >= 64, got 32",
    ),
    (
        "telescope:\n  class_mix: {GOOD: 1, FOO: 1}\n",
        "skygrade.yaml: telescope.class_mix.FOO: unknown class; "
        "expected one of GOOD, B_SEEING, BGP, BT, RBT",
    ),
    (
        "telescope:\n  class_mix: {BSEEING: 1}\n",
        "skygrade.yaml: telescope.class_mix.BSEEING: unknown class; did you mean 'B_SEEING'? "
        "expected one of GOOD, B_SEEING, BGP, BT, RBT",
    ),
    (
        "telescope:\n  class_mix: {GOOD: -1}\n",
        "skygrade.yaml: telescope.class_mix.GOOD: expected a number >= 0, got -1",
    ),
    (
        "telescope:\n  class_mix: {GOOD: 0, BT: 0}\n",
        "skygrade.yaml: telescope.class_mix: expected at least one class with a weight > 0, "
        "got {'GOOD': 0.0, 'BT': 0.0}",
    ),
    (
        "telescope:\n  class_mix: [GOOD]\n",
        "skygrade.yaml: telescope.class_mix: expected a mapping of class "
        "(GOOD, B_SEEING, BGP, BT, RBT) to number >= 0, got ['GOOD']",
    ),
    (
        "train:\n  ensemble: 0\n",
        "skygrade.yaml: train.ensemble: expected an integer >= 1 and <= 16, got 0",
    ),
    (
        "train:\n  ensemble: 2.5\n",
        "skygrade.yaml: train.ensemble: expected an integer",
    ),
    (
        "train:\n  inputs: [log_exptime, isolated, log_exptime]\n",
        "skygrade.yaml: train.inputs: names 'log_exptime' twice",
    ),
    (
        "train:\n  inputs: []\n",
        "skygrade.yaml: train.inputs: must name at least one input",
    ),
    (
        "telescope: 3\n",
        "skygrade.yaml: telescope: expected a mapping for the telescope section, got 3",
    ),
    ("- telescope\n- logging\n", "skygrade.yaml: expected a mapping for the top level, got ["),
    ("just a string\n", "skygrade.yaml: expected a mapping for the top level, got 'just a string'"),
]


@pytest.mark.parametrize(("text", "message"), MISTAKES, ids=[m[1][15:60] for m in MISTAKES])
def test_mistake_is_named_with_file_path_value_and_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        load_config(write(tmp_path, text))
    assert len(info.value.problems) == 1
    assert info.value.source == str(tmp_path / "skygrade.yaml")


def test_error_path_and_source_attributes(tmp_path):
    exc = error_of(tmp_path, "telescope:\n  cadence_s: 0\n")
    assert isinstance(exc, ValueError)
    assert exc.path == "telescope.cadence_s"
    assert exc.source.endswith("skygrade.yaml")
    assert exc.problems == (Problem("telescope.cadence_s", "expected a number > 0, got 0"),)
    assert error_of(tmp_path, "[1]\n").path is None


def test_yaml_syntax_error_gives_line_and_column(tmp_path):
    exc = error_of(tmp_path, "telescope:\n  seed: 1\n  geometry: [small\n")
    assert re.fullmatch(r".*skygrade\.yaml: not valid YAML at line \d+ column \d+: .+", str(exc))
    exc = error_of(tmp_path, "telescope:\n  seed: 1\n bad: 2\n")
    assert "skygrade.yaml: not valid YAML at line 3 column 2: " in str(exc)
    assert exc.path is None


def test_duplicate_keys_are_refused_with_their_key_path(tmp_path):
    """YAML keeps the last of two equal keys silently: a setting pasted twice overrode the
    first without a word. Each duplicate is a problem at its dotted path, with both lines."""
    text = (
        "metrics:\n"
        "  port: 9108\n"
        "  host: 0.0.0.0\n"
        "  port: 9109\n"
        "telescope:\n"
        "  class_mix: {GOOD: 1, BT: 2, GOOD: 3}\n"
        "metrics:\n"
        "  port: 1\n"
    )
    exc = error_of(tmp_path, text)
    assert [p.path for p in exc.problems] == ["metrics.port", "telescope.class_mix.GOOD", "metrics"]
    assert exc.problems[0].message == "duplicate key (line 2 and line 4): give it once"
    assert (
        str(exc)
        .splitlines()[0]
        .endswith("skygrade.yaml: metrics.port: duplicate key (line 2 and line 4): give it once")
    )


def test_without_duplicates_the_file_loads_as_yaml_safe_load_reads_it(tmp_path):
    text = "telescope: &base\n  seed: 3\n  cadence_s: 30\nsimulate:\n  <<: *base\n  seed: 4\n"
    path = write(tmp_path, text)
    from skygrade.ops.config_yaml import _UniqueKeyLoader

    loader = _UniqueKeyLoader(text)
    try:
        assert loader.get_single_data() == yaml.safe_load(text)  # merge keys may override
    finally:
        loader.dispose()
    assert loader.duplicates == []
    assert load_config(write(tmp_path, "telescope:\n  seed: 3\n")).telescope.seed == 3
    assert path.exists()


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.yaml: no such config file$"):
        load_config(tmp_path / "nope.yaml")


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(ConfigError, match=r"is a directory, not a config file"):
        load_config(tmp_path)


def test_all_errors_are_reported_at_once(tmp_path):
    text = (
        "telescope:\n"
        "  cadence_s: -3\n"
        "  geometry: huge\n"
        "  cadance_s: 1\n"
        "  class_mix: {FOO: 1}\n"
        "logging:\n"
        "  level: LOUD\n"
        "extra: 1\n"
    )
    exc = error_of(tmp_path, text)
    paths = [p.path for p in exc.problems]
    assert paths == [
        "telescope.cadence_s",
        "telescope.geometry",
        "telescope.cadance_s",
        "telescope.class_mix.FOO",
        "logging.level",
        "extra",
    ]
    lines = str(exc).splitlines()
    assert len(lines) == 6
    assert all(re.match(r".*skygrade\.yaml: [\w.]+: ", line) for line in lines)
    assert exc.path == "telescope.cadence_s"


def test_config_error_pickles():
    with pytest.raises(ConfigError) as info:
        parse_config({"telescope": {"seed": -1, "n_ccd": "x"}}, source="a.yaml")
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)
    assert (again.path, again.source, again.problems) == (
        info.value.path,
        info.value.source,
        info.value.problems,
    )


# ------------------------------------------------------------------------------------ digest


def test_digest_is_stable_and_short():
    digest = config_digest(load_config())
    assert re.fullmatch(r"[0-9a-f]{12}", digest)
    assert config_digest(load_config()) == digest
    assert config_digest(parse_config(to_dict(load_config()))) == digest
    assert config_digest(parse_config({"telescope": {"cadence_s": 60}})) == digest


def test_digest_changes_with_any_value():
    base = config_digest(Config())
    changed = [
        {"telescope": {"seed": 1}},
        {"telescope": {"cadence_s": 60.5}},
        {"telescope": {"class_mix": {"GOOD": 0.5, "B_SEEING": 0.15, "BGP": 0.1, "BT": 0.15}}},
        {"logging": {"level": "DEBUG"}},
    ]
    digests = {config_digest(parse_config(data)) for data in changed}
    assert base not in digests and len(digests) == len(changed)


def test_digest_ignores_mapping_order():
    a = parse_config({"telescope": {"class_mix": {"GOOD": 1, "BT": 2}}})
    b = parse_config({"telescope": {"class_mix": {"BT": 2, "GOOD": 1}}})
    assert a == b
    assert config_digest(a) == config_digest(b)


# ------------------------------------------------------------------------------ field docs


def _all_fields(cls: type, prefix: str = "") -> list[str]:
    """Every field path of a config class, found without the module's own machinery."""
    out = []
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        out.append(path)
        if dataclasses.is_dataclass(f.type):
            out += _all_fields(f.type, f"{path}.")
    return out


def test_documented_fields_cover_every_field_with_a_doc():
    listed = documented_fields()
    assert [path for path, _, _ in listed] == _all_fields(Config)
    for path, type_text, doc in listed:
        assert type_text.strip(), path
        assert len(doc.strip()) > 10, f"{path} needs a real doc"
    kinds = dict((path, type_text) for path, type_text, _ in listed)
    assert kinds["telescope"] == "section"
    assert kinds["telescope.cadence_s"] == "float (> 0)"
    assert kinds["telescope.geometry"] == "'full' | 'small'"
    assert kinds["telescope.ccd_shape"] == "tuple[int, int] | None (each >= 64)"


def test_field_without_doc_is_refused_at_definition():
    with pytest.raises(TypeError, match=r"Bad\.x: every config field needs a non-empty 'doc'"):

        @config_section
        class Bad:
            x: int = 3


def test_bad_declarations_are_refused_at_definition():
    with pytest.raises(TypeError, match="unsupported config type"):

        @config_section
        class Bad1:
            x: list = setting((), "A list.")

    with pytest.raises(TypeError, match="unknown metadata"):

        @config_section
        class Bad2:
            x: int = setting(1, "A number.", gte=0)

    with pytest.raises(TypeError, match="defaults are not a valid config"):

        @config_section
        class Bad3:
            x: int = setting(-1, "A number.", ge=0)


def test_a_new_section_needs_no_new_machinery():
    """Every supported type, as a later issue would add it: a class and a field, nothing else."""

    def not_two(value):
        return None if value != 2 else f"expected anything but 2, got {value!r}"

    @config_section
    class Extra:
        """A section as a later issue adds it."""

        on: bool = setting(False, "A switch.")
        name: str = setting("x", "A name.")
        mode: Literal["a", "b"] | None = setting(None, "A mode.")
        ratio: float = setting(0.5, "A ratio.", ge=0, le=1)
        steps: tuple[float, ...] = setting([1.0, 2.0], "Steps.", gt=0)
        weights: Mapping[str, int] = setting({"a": 1}, "Weights.", check=not_two)
        count: int = setting(1, "A count.", check=not_two)

    @config_section
    class Root:
        extra: Extra = section(Extra, "The extra section.")

    root = Root()
    assert root.extra.steps == (1.0, 2.0)
    paths = [p for p, _, _ in documented_fields(Root)]
    assert paths == ["extra"] + [f"extra.{f.name}" for f in dataclasses.fields(Extra)]
    rendered = render_yaml(root)
    assert "# A switch." in rendered and "on: false" in rendered

    with pytest.raises(ConfigError) as info:
        Extra(on=1, name=3, mode="c", ratio=2, steps=[1, 0], weights={"a": "x"}, count=2)
    assert [p.path for p in info.value.problems] == [
        "on",
        "name",
        "mode",
        "ratio",
        "steps[1]",
        "weights.a",
        "count",
    ]
    assert str(info.value).splitlines()[3] == (
        "Extra(...): ratio: expected a number >= 0 and <= 1, got 2"
    )
    assert Extra(steps=[], weights={}, mode="b").steps == ()


def test_cross_field_check_in_post_init_gets_the_yaml_path():
    @config_section
    class Window:
        lo: float = setting(0.0, "Lower edge.")
        hi: float = setting(1.0, "Upper edge.")

        def __post_init__(self):
            if self.lo >= self.hi:
                raise ConfigError([Problem("hi", f"expected a number > lo, got {self.hi!r}")])

    @config_section
    class Root:
        window: Window = section(Window, "A window.")

    from skygrade.ops import config_schema

    problems = []
    assert config_schema._build(Root, {"window": {"lo": 2}}, "", problems) is config_schema._INVALID
    assert problems == [Problem("window.hi", "expected a number > lo, got 1.0")]
