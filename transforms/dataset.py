"""Training data for the CNN: labelled archives, cached features, per-exposure training shards.

An archive is a directory tree of exposures plus a ``labels.csv`` (``exposure_id,label``) at
its top, as ``skygrade simulate --out`` writes it and as a manual grading campaign would.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq

from skygrade.models.classes import CLASSES
from skygrade.models.cnn import hit_vector
from skygrade.models.summary import stack_summaries
from skygrade.ops.files import atomic_write_bytes
from skygrade.transforms.ccd_pixels import read_ccd
from skygrade.transforms.exposure import NIGHT_PATTERN, exposure_id_from_path, read_meta
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import CcdFeatures, features_from_arrow
from skygrade.transforms.representative import ccd_inputs
from skygrade.transforms.som_hits import ccd_hits, load_som

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
EXPOSURE_PATTERNS = ("*.fits", "*.fits.fz", "*.fz")
CATALOG_PATTERNS = ("*.ldac", "*.cat", "*.ldac.gz", "*.cat.gz")
"""SExtractor catalogs as pipelines name them (``1625583p.fits.ldac``, gzipped or not)."""


class ArchiveItem(NamedTuple):
    exposure_id: str
    path: str
    night: str
    label: str


class Labels(NamedTuple):
    """A labels file: the grade of each exposure and the other grades people gave it."""

    label: dict[str, str]
    also: dict[str, frozenset[str]]
    """Other grades a person gave the same exposure (the ``also`` column, ``|``-separated);
    manual grades are noisy, and a grade in ``label`` or ``also`` counts as agreement."""


def read_label_sets(archive: str | os.PathLike) -> Labels:
    """``labels.csv`` of an archive with its optional ``also`` column.

    Extra columns are allowed; bad rows are errors naming the line and the value.
    """
    path = Path(archive) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no labels file (expected columns exposure_id,label)")
    labels: dict[str, str] = {}
    also: dict[str, frozenset[str]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or not {"exposure_id", "label"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: header must contain exposure_id,label")
        for line, row in enumerate(reader, start=2):
            label = (row["label"] or "").strip()
            if label not in CLASSES:
                raise ValueError(
                    f"{path}: line {line}: label {label!r} is not one of {', '.join(CLASSES)}"
                )
            others = {a.strip() for a in (row.get("also") or "").split("|") if a.strip()}
            bad = sorted(others - set(CLASSES))
            if bad:
                raise ValueError(
                    f"{path}: line {line}: also {bad[0]!r} is not one of {', '.join(CLASSES)}"
                )
            exposure_id = row["exposure_id"].strip()
            labels[exposure_id] = label
            if others - {label}:
                also[exposure_id] = frozenset(others - {label})
    return Labels(labels, also)


def read_labels(archive: str | os.PathLike) -> dict[str, str]:
    """``labels.csv`` of an archive as {exposure_id: label} (:func:`read_label_sets`)."""
    return read_label_sets(archive).label


def find_archive(archive: str | os.PathLike) -> list[ArchiveItem]:
    """The labelled exposures of an archive, sorted by exposure id.

    Exposures (``*.fits``, ``*.fits.fz``) and SExtractor catalogs (:data:`CATALOG_PATTERNS`)
    are found alike. The night is the ``YYYY-MM-DD`` directory an exposure sits in, else its
    DATE-OBS, else ``unknown``. Files without a label are ignored (counted in the log);
    labels without a file are reported.
    """
    root = Path(archive)
    labels = read_labels(root)
    items, unlabelled = {}, 0
    patterns = EXPOSURE_PATTERNS + CATALOG_PATTERNS
    files = sorted({p for pattern in patterns for p in root.rglob(pattern)})
    for path in files:
        if path.name.startswith("."):
            continue
        exposure_id = exposure_id_from_path(path)
        if exposure_id not in labels:
            unlabelled += 1
            continue
        if exposure_id in items:
            log.warning(
                "%s: exposure %s has two files, %s kept, %s ignored",
                root,
                exposure_id,
                items[exposure_id].path,
                path,
            )
            continue
        night = path.parent.name if NIGHT_PATTERN.match(path.parent.name) else None
        if night is None:
            try:
                night = read_meta(path).night or "unknown"
            except (ExposureError, OSError):
                night = "unknown"
        items[exposure_id] = ArchiveItem(exposure_id, str(path), night, labels[exposure_id])
    missing = sorted(set(labels) - set(items))
    if unlabelled:
        log.info("%s: %d exposure file(s) without a label ignored", root, unlabelled)
    if missing:
        log.warning(
            "%s: %d labelled exposure(s) have no file, e.g. %s",
            root,
            len(missing),
            ", ".join(missing[:5]),
        )
    return [items[k] for k in sorted(items)]


# --------------------------------------------------------------------------- shards


def exposure_shard(
    item: ArchiveItem, features_path: str, som_path: str, tile: int
) -> dict[str, np.ndarray]:
    """CNN inputs of every CCD of one exposure, pixels re-read once per CCD for the cutouts.

    CCDs measured from a SExtractor catalog (``catalog`` backend) have no pixels: their image
    is blank and their ``flag`` 0, the catalog-mode input the network was trained to read.
    """
    ccds: list[CcdFeatures] = features_from_arrow(pq.read_table(features_path))
    som = load_som(som_path)
    images, hits, n_sources, exptime, area, ccd_index, summary = [], [], [], [], [], [], []
    flags = []
    for f in ccds:
        if f.backend != "catalog":
            f = _with_pixels(f, read_ccd(item.path, f.ccd).data)
        inputs = ccd_inputs(ccd_hits(f, som), size=tile)
        if inputs.reason is not None:
            continue  # a CCD with no clean source is not graded, so not trained on either
        images.append(inputs.image.astype(np.float16))
        hits.append(inputs.hits)
        n_sources.append(inputs.n_sources)
        exptime.append(inputs.exptime)
        area.append(inputs.area_mpx)
        ccd_index.append(f.ccd)
        summary.append(inputs.summary)
        flags.append(1.0 if inputs.has_image else 0.0)
    n = len(images)
    return {
        "image": np.stack(images) if n else np.zeros((0, 1, 1), np.float16),
        "vector": hit_vector(
            np.array(hits).reshape(n, -1), n_sources, exptime, area, stack_summaries(summary)
        )
        if n
        else np.zeros((0, 0), np.float32),
        "ccd": np.array(ccd_index, dtype=np.int16),
        "flag": np.array(flags, dtype=np.float32),
        "label": np.full(n, CLASSES.index(item.label), dtype=np.int64),
    }


def _with_pixels(f: CcdFeatures, pixels: np.ndarray) -> CcdFeatures:
    return replace(f, pixels=pixels)


def write_shard(path: str | os.PathLike, shard: dict[str, np.ndarray]) -> Path:
    """Write a shard atomically as an uncompressed ``.npz`` (no pickle)."""
    buf = io.BytesIO()
    np.savez(buf, **shard)
    return atomic_write_bytes(path, buf.getvalue())


def read_shard(path: str | os.PathLike) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _ShardFn(beam.DoFn):
    def __init__(self, cache_dir: str, shard_dir: str, som_path: str, tile: int) -> None:
        self.cache_dir, self.shard_dir, self.som_path, self.tile = (
            cache_dir,
            shard_dir,
            som_path,
            tile,
        )
        self.done = beam.metrics.Metrics.counter("train", "shards_written")

    def process(self, item: ArchiveItem):
        features = Path(self.cache_dir) / f"{item.exposure_id}.parquet"
        if features.exists():  # else quarantined at extraction: nothing to learn from
            shard = exposure_shard(item, str(features), self.som_path, self.tile)
            path = write_shard(Path(self.shard_dir) / f"{item.exposure_id}.npz", shard)
            self.done.inc()
            yield str(path)


class BuildShards(beam.PTransform):
    """:class:`ArchiveItem` -> one training shard per exposure (path of the written ``.npz``)."""

    def __init__(self, cache_dir: str, shard_dir: str, som_path: str, tile: int) -> None:
        super().__init__()
        self.args = (str(cache_dir), str(shard_dir), str(som_path), tile)

    def expand(self, items):
        return (
            items | "Spread" >> beam.Reshuffle() | "WriteShards" >> beam.ParDo(_ShardFn(*self.args))
        )
