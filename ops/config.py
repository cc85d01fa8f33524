"""Configuration: the sections of skygrade's YAML file, and loading it.

Each section is a frozen, typed, documented dataclass (the engine that makes it one, and checks
every value with its dotted key path, is :mod:`skygrade.ops.config_schema`; the YAML reading and
writing is :mod:`skygrade.ops.config_yaml`). The sections of the daemon (``watch``, ``metrics``,
``alerts``) are in :mod:`skygrade.ops.config_daemon`. :class:`Config` holds one attribute per
section;
:func:`load_config` reads and validates a file into it.

Adding a section later takes two steps::

    @config_section
    class SomConfig:
        \"\"\"Self-organizing map.\"\"\"

        rows: int = setting(30, "Rows of the SOM grid.", ge=2)

    # and on Config:
    som: SomConfig = section(SomConfig, "The self-organizing map (`skygrade train`).")

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Mapping
from typing import Literal

from skygrade.ops.classes import CLASSES
from skygrade.ops.config_daemon import AlertsConfig, MetricsConfig, WatchConfig
from skygrade.ops.config_schema import (
    build_section,
    config_section,
    join_path,
    section,
    section_fields,
    setting,
    to_dict,
    type_text,
)
from skygrade.ops.config_values import show_value
from skygrade.ops.config_yaml import read_yaml

__all__ = [
    "CLASSES",
    "Config",
    "ExtractConfig",
    "LoggingConfig",
    "SomConfig",
    "TelescopeConfig",
    "TrainConfig",
    "config_digest",
    "documented_fields",
    "load_config",
    "parse_config",
    "with_backend",
]


# --------------------------------------------------------------------------------------------
# Root config and its sections (later issues add a section class and one field on Config)


def _night_date(night: str | None) -> str | None:
    if night is None or re.fullmatch(r"\d{4}-\d{2}-\d{2}", night):
        return None
    return f"expected a night as YYYY-MM-DD, got {night!r}"


TRAIN_INPUTS = (
    "log_clean_density",
    "log_exptime",
    "exptime_known",
    "shapes_measured",
    "log_flux_radius",
    "log_elongation",
    "log_elongation_p90",
    "log_extent_p90",
    "log_sky_rate",
    "sky_spread_dex",
    "log_major_spread",
    "log_radius_spread",
    "log_major_over_radius",
    "theta_alignment",
    "log_iso0_bright",
    "log_iso0_spread",
    "isolated",
    "twin_fraction",
)
"""The default ``train.inputs``: the network inputs of the shipped bundle (names of
:data:`skygrade.models.cnn.AUX_FEATURES`, which this package may not import)."""


def _distinct_names(names: tuple[str, ...]) -> str | None:
    if not names:
        return "must name at least one input"
    repeated = sorted({n for n in names if names.count(n) > 1})
    return f"names {', '.join(map(repr, repeated))} twice" if repeated else None


def _positive_total(mix: Mapping[str, float]) -> str | None:
    if sum(mix.values()) > 0:
        return None
    return f"expected at least one class with a weight > 0, got {show_value(mix)}"


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
    narrow_band: float = setting(
        0.06,
        "Share of exposures taken through a narrow-band filter (CaHK, Ha, OIII: minutes-long "
        "exposures of a sky ~10x darker than the broad bands'); 0 draws broad bands only.",
        ge=0,
        le=1,
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
    inputs: tuple[str, ...] = setting(
        TRAIN_INPUTS,
        "Per-CCD scalars the network reads beside the hit fractions, by name (`skygrade train` "
        "refuses a name the code does not compute). The default is the shipped bundle's; the "
        "code also computes log_sky_spread_adu, the sky's spread in ADU (docs/model.md item "
        "23: not in the default). A bundle records its own, so scoring reads what it was "
        "trained on.",
        check=_distinct_names,
    )
    ensemble: int = setting(
        2,
        "Networks trained on the same split and SOM with seeds seed, seed+1, ...; the bundle "
        "holds them all and scoring averages their log-probabilities, which evens out the "
        "run-to-run variance of a single network. Each member adds one training run; the fused "
        "pass scores a 36-CCD exposure on one core in ~7 ms with 2 members, ~25 ms with 4.",
        ge=1,
        le=16,
    )


@config_section
class LoggingConfig:
    """Logging of every skygrade command."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = setting(
        "INFO", "Lowest level of the log records that skygrade writes."
    )


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
    return build_section(Config, data, source)


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
    return parse_config(read_yaml(source), source)


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
        for spec in section_fields(cls):
            path = join_path(prefix, spec.name)
            out.append((path, type_text(spec), spec.doc))
            if spec.section is not None:
                walk(spec.section, path)

    walk(cfg_cls, "")
    return out
