"""SOM hit counting (Input-2 of the CNN): each clean source -> its cluster -> counts per cluster.

The SOM is loaded once per worker process (:func:`load_som`, cached by path and file stamp)
in ``DoFn.setup``, never per element and never at import.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from skygrade.models.som import (
    EDGE_MARGIN,
    SourceSom,
    clean_mask,
    edge_margin,
    feature_matrix,
)
from skygrade.transforms.extract import CcdFeatures

log = logging.getLogger(__name__)

_CACHE: dict[tuple[str, int, int], SourceSom] = {}
_LOCK = threading.Lock()


def load_som(path: str | os.PathLike) -> SourceSom:
    """The SOM at ``path``, loaded once per process (reloaded if the file changes)."""
    st = os.stat(path)
    key = (os.fspath(path), st.st_mtime_ns, st.st_size)
    with _LOCK:
        som = _CACHE.get(key)
        if som is None:
            som = SourceSom.load(path)
            _CACHE[key] = som
            log.info("loaded SOM %s (%dx%d, %d clusters)", path, som.rows, som.cols, som.n_clusters)
    return som


@dataclass(frozen=True)
class CcdHits:
    """A CCD's hit vector and the cluster of each clean source (for the cutouts)."""

    features: CcdFeatures = field(repr=False)
    hits: np.ndarray  # int32 (n_clusters,)
    labels: np.ndarray = field(repr=False)  # int16 cluster of each clean source
    index: np.ndarray = field(repr=False)  # position of each clean source in the feature table
    reason: str | None = None
    som_s: float = 0.0
    edge_margin: int = EDGE_MARGIN
    """The SOM's edge margin: the summary statistics measure the same sources as the hits."""


def _empty_reason(features: CcdFeatures, margin: int) -> str:
    """Why a CCD has no measured source: none detected, all flagged, or all by the edges (or
    outside the CCD's size: a catalog whose X/Y are not of a 2048 x 4612 CCD)."""
    n = features.n_sources
    if n == 0:
        return "no_sources: no source detected"
    clean = clean_mask(features.sources)
    if clean.any():  # none measured, yet some clean: every clean one is outside the interior
        return (
            f"no_interior_sources: all {int(clean.sum())} clean sources lie within "
            f"{edge_margin(features.width, features.height, margin)} px of the edges of the "
            f"{features.width}x{features.height} CCD or outside it (a catalog of another CCD "
            "size: set extract.catalog_ccd_shape)"
        )
    return f"no_clean_sources: all {n} sources flagged"


def ccd_hits(features: CcdFeatures, som: SourceSom) -> CcdHits:
    """Map one CCD's clean sources onto the SOM's clusters.

    A CCD with no clean source gets a zero hit vector and a reason.
    """
    start = time.perf_counter()
    margin = som.edge_margin
    rows, index = feature_matrix(features.sources, features.width, features.height, margin)
    labels = som.cluster_of(rows)
    hits = np.bincount(labels, minlength=som.n_clusters).astype(np.int32)
    reason = None
    if len(index) == 0:
        reason = _empty_reason(features, margin)
    return CcdHits(features, hits, labels, index, reason, time.perf_counter() - start, margin)
