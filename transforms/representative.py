"""Representative image of a CCD (Input-1 of the CNN): one random source cutout per SOM cluster.

For each of the SOM's clusters one source is drawn at random among the CCD's clean sources of
that cluster (seeded by exposure id and CCD, so regrading gives the same image), its cutout is
taken from the background-subtracted pixels, scaled by its own robust peak, and the cutouts are
tiled in cluster order. An empty cluster is a blank tile. Sources whose cutout would cross the
CCD edge are used only when the cluster has no other; their tile is zero-padded and flagged.

With the defaults (20 clusters, 32x32 cutouts, 4 rows of 5 tiles) a 2048x4612 CCD becomes a
128x160 image, ~460x fewer pixels (the paper: ~800x with its own sizes).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from skygrade.models.mosaic import tile_grid
from skygrade.models.som import interior_area_mpx
from skygrade.models.summary import ccd_summary, missing_columns
from skygrade.transforms.som_hits import CcdHits


def representative_seed(exposure_id: str, ccd: int) -> np.random.Generator:
    """The generator that picks the representative sources of one CCD (stable across runs)."""
    return np.random.default_rng([zlib.crc32(exposure_id.encode()), int(ccd)])


def cutout(pixels: np.ndarray, x: float, y: float, size: int) -> tuple[np.ndarray, bool]:
    """A ``size`` x ``size`` stamp centred on 0-based pixel (x, y), zero-padded at edges.

    Returns the stamp (float32) and whether it was padded.
    """
    half = size // 2
    cx, cy = int(np.rint(x)), int(np.rint(y))
    x0, y0 = cx - half, cy - half
    x1, y1 = x0 + size, y0 + size
    h, w = pixels.shape
    stamp = np.zeros((size, size), dtype=np.float32)
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx0 < sx1 and sy0 < sy1:
        stamp[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = pixels[sy0:sy1, sx0:sx1]
    padded = x0 < 0 or y0 < 0 or x1 > w or y1 > h
    return stamp, padded


def scale_stamp(stamp: np.ndarray) -> np.ndarray:
    """Scale a stamp so that its central source peaks at 1, clipped to [-0.2, 1.5].

    The local sky (median of the stamp's border) is subtracted first, so the result does not
    depend on whether or how the backend subtracted the background. Dividing by the peak of the
    central 5x5 pixels (the chosen source) keeps the shape (width, trail, blends) and drops the
    brightness, which the hit counts already carry; brighter neighbours saturate at 1.5.
    """
    border = np.concatenate([stamp[0], stamp[-1], stamp[1:-1, 0], stamp[1:-1, -1]])
    stamp = stamp - np.float32(np.median(border))
    c = stamp.shape[0] // 2
    level = float(stamp[c - 2 : c + 3, c - 2 : c + 3].max())
    if not np.isfinite(level) or level <= 0:
        return np.zeros_like(stamp)
    return np.clip(stamp / level, -0.2, 1.5).astype(np.float32)


class Representative(NamedTuple):
    image: np.ndarray
    """float32 (rows * size, cols * size) mosaic."""
    chosen: np.ndarray
    """Index (into the CCD's feature table) of the source of each cluster, -1 when empty."""
    padded: np.ndarray
    """bool per cluster: the cutout crossed the CCD edge and was zero-padded."""


def representative_image(
    pixels: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    labels: np.ndarray,
    index: np.ndarray,
    n_clusters: int,
    size: int,
    rng: np.random.Generator,
) -> Representative:
    """Tile one random cutout per cluster.

    Parameters
    ----------
    pixels : np.ndarray
        CCD image (background-subtracted or not: each stamp is sky-subtracted locally).
    x, y : np.ndarray
        0-based source positions of the whole feature table.
    labels : np.ndarray
        Cluster of each clean source.
    index : np.ndarray
        Position of each clean source in the feature table (same length as ``labels``).
    n_clusters : int
        Number of clusters (tiles).
    size : int
        Cutout side in pixels.
    rng : np.random.Generator
        Picks the sources; use :func:`representative_seed`.
    """
    if size < 4:
        raise ValueError(f"cutout size must be >= 4, got {size}")
    rows, cols = tile_grid(n_clusters)
    image = np.zeros((rows * size, cols * size), dtype=np.float32)
    chosen = np.full(n_clusters, -1, dtype=np.int64)
    padded = np.zeros(n_clusters, dtype=bool)
    h, w = pixels.shape
    half = size // 2
    xi, yi = np.rint(x[index]), np.rint(y[index])
    inside = (xi - half >= 0) & (yi - half >= 0) & (xi - half + size <= w) & (yi - half + size <= h)
    for k in range(n_clusters):
        members = np.flatnonzero(labels == k)
        if len(members) == 0:
            continue
        preferred = members[inside[members]]
        pool = preferred if len(preferred) else members
        pick = int(pool[rng.integers(len(pool))])
        src = int(index[pick])
        stamp, padded[k] = cutout(pixels, float(x[src]), float(y[src]), size)
        r, c = divmod(k, cols)
        image[r * size : (r + 1) * size, c * size : (c + 1) * size] = scale_stamp(stamp)
        chosen[k] = src
    return Representative(image, chosen, padded)


@dataclass(frozen=True)
class CcdInputs:
    """Everything the CNN and the output rows need of one CCD; pixels are gone by now."""

    exposure_id: str
    ccd: int
    n_ccd: int
    exptime: float
    hits: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    n_sources: int = 0
    n_clean: int = 0
    median_elongation: float = float("nan")
    median_iso0: float = float("nan")
    median_background: float = float("nan")
    blended_fraction: float = float("nan")
    area_mpx: float = float("nan")
    """Area of the CCD's interior (megapixels), where its measured sources lie
    (:func:`skygrade.models.som.interior_area_mpx`)."""
    padded_tiles: int = 0
    has_image: bool = True
    """False in catalog mode (no pixels): the CNN then grades from the hits alone."""
    reason: str | None = None
    stage_s: dict = field(default_factory=dict, repr=False)
    """Seconds per stage spent on this CCD so far (extract, som, representative)."""
    """Why this CCD's inputs are degenerate (e.g. no clean source), else None."""
    summary: np.ndarray | None = field(default=None, repr=False)
    """Robust summary statistics of the clean sources (``skygrade.models.cnn.ccd_summary``), an
    input of the CNN beside the hits; None when not measured."""
    physics: object | None = field(default=None, compare=False)
    """Seeing, PSF shape, sky, source counts (:class:`skygrade.transforms.psf_measure.CcdPhysics`)
    of the CCD: reported, never an input of the CNN; None when not measured."""
    missing: tuple[str, ...] = ()
    """Inputs the CCD's table lacks (``EXPTIME``, ``FLUX_RADIUS``...: an archive catalog with
    few columns), named in the grade's reason (:func:`skygrade.models.summary.missing_columns`)."""


def ccd_inputs(hits: CcdHits, size: int = 32) -> CcdInputs:
    """Representative image + hits + summary statistics of one CCD."""
    start = time.perf_counter()
    f = hits.features
    t = f.sources
    image_shape = tuple(s * size for s in tile_grid(len(hits.hits)))
    if f.pixels is None or len(hits.labels) == 0:
        image = np.zeros(image_shape, dtype=np.float32)
        padded = 0
    else:
        rep = representative_image(
            f.pixels,
            t["X_IMAGE"] - 1.0,
            t["Y_IMAGE"] - 1.0,
            hits.labels,
            hits.index,
            len(hits.hits),
            size,
            representative_seed(f.exposure_id, f.ccd),
        )
        image, padded = rep.image, int(rep.padded.sum())
    clean = hits.index

    def med(name: str) -> float:
        values = t[name][clean]
        return float(np.median(values)) if len(values) else float("nan")

    n = f.n_sources
    blended = float(np.mean((t["FLAGS"] & 2) != 0)) if n else float("nan")
    return CcdInputs(
        exposure_id=f.exposure_id,
        ccd=f.ccd,
        n_ccd=f.n_ccd,
        exptime=f.exptime,
        hits=hits.hits,
        image=image,
        n_sources=n,
        n_clean=len(clean),
        median_elongation=med("ELONGATION"),
        median_iso0=med("ISO0"),
        median_background=med("BACKGROUND"),
        blended_fraction=blended,
        area_mpx=interior_area_mpx(f.width, f.height, hits.edge_margin),
        padded_tiles=padded,
        has_image=f.pixels is not None,
        reason=hits.reason,
        summary=ccd_summary(t, f.exptime, f.width, f.height, hits.edge_margin),
        physics=f.physics,
        missing=(
            *(() if np.isfinite(f.exptime) and f.exptime > 0 else ("EXPTIME",)),
            *missing_columns(t),
        ),
        stage_s={
            "extract": f.extract_s,
            "som": hits.som_s,
            "representative": time.perf_counter() - start,
        },
    )
