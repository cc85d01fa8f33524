"""The self-organizing map of the method: source features -> neuron -> one of 20 clusters.

Plain numpy + minisom; no Beam and no file layout beyond :meth:`SourceSom.save` / ``load``.

Pipeline of one source:

1. :func:`feature_matrix` turns a CCD's feature table into the SOM's input rows. Only clean
   sources are used (FLAGS without the saturated / truncated / corrupted bits; blended sources
   are kept because on trailed CCDs nearly all are blended). Ranges are tamed so that CCDs from
   different skies, exposure times and reductions look alike: position relative to the CCD size,
   log ISO0, log elongation, ellipticity and the deblended flag (:data:`SOM_FEATURES`).
2. :class:`Scaling` (fitted on training data, stored with the SOM) centres each column on its
   median and divides by its interquartile range, then clips to +-5 so that one wild source
   cannot pull a neuron.
3. The best-matching unit (BMU) is found with chunked matrix distances (:func:`best_matching_units`)
   rather than minisom's per-sample ``winner``: a full exposure's sources in a fraction of a
   second (benchmarks/som.py; the figure is in benchmarks/README.md).
4. The neuron's cluster comes from :func:`ward_clusters` over the codebook.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from skygrade.ops.files import atomic_path

log = logging.getLogger(__name__)

SOM_FEATURES: tuple[str, ...] = (
    "X_REL",
    "Y_REL",
    "LOG_ISO0",
    "LOG_ELONGATION",
    "ELLIPTICITY",
    "BLENDED",
)
"""SOM input columns, derived from the extraction table by :func:`feature_matrix`.

The method's CLASS_STAR, background rate and EXPTIME are left out of the map: archived
catalogs carry a meaningless CLASS_STAR (a wrong SEEING_FWHM), often no EXPTIME, and a
BACKGROUND that is the sky or ~0 depending on the product; per-source features that mean the
same in every archive are kept, plus whether SExtractor deblended the source (FLAGS bit 2: on
trailed CCDs, and under DEBLEND_MINCONT 0, most detections are deblended pieces). The sky and
the exposure time enter the network as per-CCD scalars instead (:mod:`skygrade.models.summary`)."""

BAD_FLAG_BITS = ~(1 | 2)
"""FLAGS bits that disqualify a source (all but 'neighbours' and 'blended')."""

CLIP = 5.0


def clean_mask(table: dict[str, np.ndarray]) -> np.ndarray:
    """Sources usable by the SOM: good FLAGS and finite method features."""
    ok = (np.asarray(table["FLAGS"]) & BAD_FLAG_BITS) == 0
    for name in ("X_IMAGE", "Y_IMAGE", "ISO0", "ELONGATION", "ELLIPTICITY"):
        ok &= np.isfinite(np.asarray(table[name], dtype=np.float64))
    return ok


MIN_ISOLATED = 30
"""Isolated clean sources a CCD needs for :func:`measured_mask` to keep only those."""

EDGE_MARGIN = 128
"""Pixels along each CCD edge whose detections no statistic measures (:func:`interior_mask`):
two background meshes of the real archives' configuration (BACK_SIZE 64).

The real graded catalogs were made on images that keep MegaCam's prescan and overscan strips
(32 columns of ~0 ADU each side, X_IMAGE up to 2112): the step from sky to strip bends the
background mesh near both long edges, and most of a real CCD's detections are deblended
noise there (1,100 of 1,593 on 1625583 CCD 14, at x < 100 or x > 2000; also the top 32 rows).
Whether a catalog kept the strips is not in the catalog, so every path leaves the edges out,
framed or not; it costs a sixth of a full CCD's area. A SOM records the margin its bundle was
trained with (:attr:`SourceSom.edge_margin`): bundles from before it have none, and keep theirs."""


def edge_margin(width: int, height: int, margin: int = EDGE_MARGIN) -> int:
    """The margin :func:`interior_mask` leaves out of a ``width`` x ``height`` CCD (pixels):
    ``margin``, at most an eighth of the shorter side."""
    return min(margin, min(width, height) // 8)


def interior_area_mpx(width: int, height: int, margin: int = EDGE_MARGIN) -> float:
    """Megapixels of the CCD's interior (:func:`interior_mask`): the area its measured sources
    come from, so that a density means the same on a simulated quarter CCD and a full one.

    >>> round(interior_area_mpx(2048, 4612), 2), round(interior_area_mpx(1024, 2306), 2)
    (7.81, 1.57)
    """
    margin = edge_margin(width, height, margin)
    return max(width - 2 * margin, 0) * max(height - 2 * margin, 0) / 1e6


def interior_mask(
    table: dict[str, np.ndarray], width: int, height: int, margin: int = EDGE_MARGIN
) -> np.ndarray:
    """Detections at least :data:`EDGE_MARGIN` pixels from every edge of a ``width`` x
    ``height`` CCD (1-based X/Y_IMAGE, as SExtractor writes them).

    The margin is at most an eighth of the CCD's shorter side (128 px from 1024 px up: the
    simulator's quarter-area CCDs and MegaCam's), so a small test CCD keeps most of itself.
    A framed catalog's X_IMAGE runs past ``width`` by the strips' 32 columns: those fall outside.
    ``margin`` 0 (a SOM from before the margin) keeps every detection.

    >>> t = {"X_IMAGE": np.array([10.0, 600.0, 1990.0]), "Y_IMAGE": np.full(3, 900.0)}
    >>> interior_mask(t, 2048, 4612).tolist()
    [False, True, False]
    """
    if margin <= 0:  # a bundle from before the margin: every detection, the frame's included
        return np.ones(len(table["X_IMAGE"]), dtype=bool)
    margin = edge_margin(width, height, margin)
    x = np.asarray(table["X_IMAGE"], dtype=np.float64) - 1.0
    y = np.asarray(table["Y_IMAGE"], dtype=np.float64) - 1.0
    return (x >= margin) & (x < width - margin) & (y >= margin) & (y < height - margin)


def measured_mask(
    table: dict[str, np.ndarray], width: int, height: int, margin: int = EDGE_MARGIN
) -> np.ndarray:
    """The sources the SOM and the summary statistics measure: the isolated clean ones, away
    from the CCD's edges (:func:`interior_mask`).

    Isolated: FLAGS == 0, not deblended from a neighbour. A catalog made with DEBLEND_MINCONT 0
    (as the real graded ones are) is mostly deblended pieces of galaxies and star halos,
    elongated whatever the PSF, and how many there are depends on the site's configuration,
    not on the sky; the isolated sources keep the PSF's shape under any configuration
    (docs/model.md, "Real archive catalogs and skies the simulator never drew"). A CCD with
    fewer than :data:`MIN_ISOLATED` of them (a trailed CCD under stock deblending, where the
    trails are pieces) uses all its clean sources instead.
    """
    clean = clean_mask(table) & interior_mask(table, width, height, margin)
    isolated = clean & (np.asarray(table["FLAGS"]) == 0)
    return isolated if int(isolated.sum()) >= MIN_ISOLATED else clean


def feature_matrix(
    table: dict[str, np.ndarray], width: int, height: int, margin: int = EDGE_MARGIN
) -> tuple[np.ndarray, np.ndarray]:
    """SOM input rows of the measured sources of one CCD (:func:`measured_mask`).

    Parameters
    ----------
    table : dict of np.ndarray
        Extraction feature table (SExtractor column names).
    width, height : int
        CCD size in pixels.
    margin : int
        Edge margin (:func:`interior_mask`; the SOM's :attr:`SourceSom.edge_margin`).

    Returns
    -------
    rows : np.ndarray
        float32 array (n_clean, len(SOM_FEATURES)).
    index : np.ndarray
        Indices of those sources in ``table``.
    """
    if width < 1 or height < 1:
        raise ValueError(f"CCD size must be positive, got {width}x{height}")
    index = np.flatnonzero(measured_mask(table, width, height, margin))
    t = {k: np.asarray(v, dtype=np.float64)[index] for k, v in table.items()}
    rows = np.column_stack(
        [
            (t["X_IMAGE"] - 1.0) / width,
            (t["Y_IMAGE"] - 1.0) / height,
            np.log10(np.maximum(t["ISO0"], 1.0)),
            np.log10(np.maximum(t["ELONGATION"], 1.0)),
            np.clip(t["ELLIPTICITY"], 0.0, 1.0),
            (np.asarray(table["FLAGS"])[index] & 2 != 0).astype(np.float64),
        ]
    ).astype(np.float32)
    return rows.reshape(-1, len(SOM_FEATURES)), index


@dataclass(frozen=True)
class Scaling:
    """Robust per-column standardisation: (x - center) / scale, clipped to +-CLIP."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, rows: np.ndarray) -> Scaling:
        """Median and interquartile range of each column (a constant column gets scale 1)."""
        if len(rows) == 0:
            raise ValueError("cannot fit a scaling on zero rows")
        q25, center, q75 = np.percentile(rows, [25, 50, 75], axis=0)
        scale = (q75 - q25) / 1.349
        scale = np.where(scale > 1e-6, scale, 1.0)
        return cls(center.astype(np.float32), scale.astype(np.float32))

    def apply(self, rows: np.ndarray) -> np.ndarray:
        out = (np.asarray(rows, dtype=np.float32) - self.center) / self.scale
        return np.clip(out, -CLIP, CLIP, out=out)


def best_matching_units(
    rows: np.ndarray, codebook: np.ndarray, chunk: int = 2048, distances: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Index of the nearest neuron of every row, and its squared distance.

    ``|x - w|^2 = |x|^2 - 2 x.w + |w|^2``: rows are augmented with a 1 so that one matrix
    product per chunk gives ``-2 x.w + |w|^2`` directly (chunk x n_neurons float32, cache
    sized, written into a reused buffer), then an argmin. ``|x|^2`` does not change the
    argmin and is added only when ``distances`` are asked for.

    Parameters
    ----------
    rows : np.ndarray
        Scaled inputs, shape (n, d).
    codebook : np.ndarray
        Neuron weights, shape (n_neurons, d).
    chunk : int
        Rows per matrix product.
    distances : bool
        Also return the squared distances (else None).

    Returns
    -------
    bmu : np.ndarray of int32
    dist2 : np.ndarray of float32 or None

    Examples
    --------
    >>> best_matching_units(np.array([[0.0, 0.1]]), np.array([[0.0, 0.0], [1.0, 1.0]]))[0]
    array([0], dtype=int32)
    """
    rows = np.asarray(rows, dtype=np.float32)
    codebook = np.asarray(codebook, dtype=np.float32)
    n = len(rows)
    bmu = np.empty(n, dtype=np.int32)
    dist2 = np.empty(n, dtype=np.float32) if distances else None
    w2 = np.einsum("ij,ij->i", codebook, codebook)
    augmented_w = np.ascontiguousarray(np.hstack([-2.0 * codebook, w2[:, None]]).T)
    x_aug = np.empty((min(chunk, max(n, 1)), rows.shape[1] + 1), dtype=np.float32)
    x_aug[:, -1] = 1.0
    buf = np.empty((len(x_aug), len(codebook)), dtype=np.float32)
    for start in range(0, n, chunk):
        x = rows[start : start + chunk]
        m = len(x)
        x_aug[:m, :-1] = x
        d = buf[:m]
        np.matmul(x_aug[:m], augmented_w, out=d)
        k = d.argmin(axis=1)
        bmu[start : start + m] = k
        if dist2 is not None:
            best = d[np.arange(m), k] + np.einsum("ij,ij->i", x, x)
            dist2[start : start + m] = np.maximum(best, 0.0)
    return bmu, dist2


def ward_clusters(codebook: np.ndarray, n_clusters: int) -> np.ndarray:
    """Group neurons into ``n_clusters`` by Ward agglomerative clustering of their weights.

    Why Ward: it is deterministic (no seed, no restarts: the same codebook always gives the same
    clusters), it merges the pair that least increases the within-cluster variance, so clusters
    are compact regions of feature space of comparable spread, and on a few hundred neurons it
    takes well under a second. Clusters are numbered by their lowest neuron index.

    Returns
    -------
    np.ndarray of int16, one cluster label per neuron in [0, n_clusters).
    """
    x = np.asarray(codebook, dtype=np.float64)
    n = len(x)
    if not 1 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [1, {n}], got {n_clusters}")
    centroid = x.copy()
    size = np.ones(n)
    labels = np.arange(n)
    alive = np.ones(n, dtype=bool)
    sq = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    cost = 0.5 * sq  # Ward cost of merging two singletons: n_i n_j / (n_i + n_j) |c_i - c_j|^2
    np.fill_diagonal(cost, np.inf)
    for _ in range(n - n_clusters):
        flat = int(np.argmin(cost))
        i, j = divmod(flat, n)
        i, j = min(i, j), max(i, j)
        centroid[i] = (size[i] * centroid[i] + size[j] * centroid[j]) / (size[i] + size[j])
        size[i] += size[j]
        labels[labels == j] = i
        alive[j] = False
        cost[j, :] = cost[:, j] = np.inf
        d = ((centroid - centroid[i]) ** 2).sum(-1)
        row = size[i] * size / (size[i] + size) * d
        row[~alive] = np.inf
        row[i] = np.inf
        cost[i, :] = cost[:, i] = row
    roots = np.unique(labels)  # sorted: numbered by lowest neuron index
    return np.searchsorted(roots, labels).astype(np.int16)


@dataclass(frozen=True)
class SomQuality:
    quantization_error: float
    """Mean distance (scaled units) of a source to its BMU."""
    topographic_error: float
    """Fraction of sources whose first and second BMUs are not neighbours on the grid."""


@dataclass(frozen=True)
class SourceSom:
    """A trained SOM with its input scaling and neuron -> cluster map."""

    codebook: np.ndarray  # (rows * cols, n_features) float32
    rows: int
    cols: int
    clusters: np.ndarray  # (rows * cols,) int16
    scaling: Scaling
    features: tuple[str, ...] = SOM_FEATURES
    meta: dict = field(default_factory=dict)

    @property
    def n_clusters(self) -> int:
        return int(self.clusters.max()) + 1

    @property
    def edge_margin(self) -> int:
        """The edge margin (pixels, :func:`interior_mask`) of the sources it was trained on and
        must be fed: 0 for a SOM written before the margin existed."""
        return int(self.meta.get("edge_margin", 0))

    def bmu(self, rows: np.ndarray) -> np.ndarray:
        """Best-matching neuron of unscaled feature rows."""
        return best_matching_units(self.scaling.apply(rows), self.codebook, distances=False)[0]

    def cluster_of(self, rows: np.ndarray) -> np.ndarray:
        """Cluster label (int16) of unscaled feature rows."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.int16)
        return self.clusters[self.bmu(rows)]

    def hits(self, rows: np.ndarray) -> np.ndarray:
        """Number of rows falling in each cluster (int32, length n_clusters)."""
        return np.bincount(self.cluster_of(rows), minlength=self.n_clusters).astype(np.int32)

    def quality(self, rows: np.ndarray, max_rows: int = 100_000) -> SomQuality:
        """Quantization and topographic error on unscaled rows (a seeded sample if many)."""
        x = self.scaling.apply(rows)
        if len(x) > max_rows:
            x = x[np.random.default_rng(0).choice(len(x), max_rows, replace=False)]
        w = self.codebook
        d = (w**2).sum(1)[None, :] - 2.0 * x @ w.T
        two = np.argpartition(d, 1, axis=1)[:, :2]
        swap = d[np.arange(len(x)), two[:, 0]] > d[np.arange(len(x)), two[:, 1]]
        two[swap] = two[swap][:, ::-1]
        best = d[np.arange(len(x)), two[:, 0]] + (x**2).sum(1)
        qe = float(np.sqrt(np.maximum(best, 0)).mean())
        r1, c1 = np.divmod(two[:, 0], self.cols)
        r2, c2 = np.divmod(two[:, 1], self.cols)
        adjacent = np.maximum(np.abs(r1 - r2), np.abs(c1 - c2)) <= 1
        return SomQuality(qe, float(1.0 - adjacent.mean()))

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike) -> Path:
        """Write everything needed to reproduce :meth:`cluster_of` exactly to one ``.npz``."""
        path = Path(path)
        header = {
            "rows": self.rows,
            "cols": self.cols,
            "features": list(self.features),
            "meta": self.meta,
        }
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(
                fh,
                codebook=self.codebook,
                clusters=self.clusters,
                center=self.scaling.center,
                scale=self.scaling.scale,
                header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8),
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> SourceSom:
        """Read a SOM written by :meth:`save` (no pickle: ``allow_pickle=False``)."""
        with np.load(path, allow_pickle=False) as z:
            header = json.loads(z["header"].tobytes().decode())
            som = cls(
                codebook=z["codebook"],
                rows=int(header["rows"]),
                cols=int(header["cols"]),
                clusters=z["clusters"],
                scaling=Scaling(z["center"], z["scale"]),
                features=tuple(header["features"]),
                meta=header.get("meta", {}),
            )
        if som.features != SOM_FEATURES:
            raise ValueError(
                f"{path}: SOM was trained on features {list(som.features)}, this code computes "
                f"{list(SOM_FEATURES)}; retrain or use a matching skygrade version"
            )
        if som.codebook.shape != (som.rows * som.cols, len(som.features)):
            raise ValueError(f"{path}: codebook shape {som.codebook.shape} does not match header")
        return som


def train_som(
    rows: np.ndarray,
    grid: tuple[int, int] = (16, 16),
    sigma: float = 2.0,
    learning_rate: float = 0.5,
    iterations: int = 100_000,
    n_clusters: int = 20,
    seed: int = 0,
    edge_margin: int = EDGE_MARGIN,
) -> SourceSom:
    """Fit scaling, SOM (minisom) and clusters on unscaled feature rows.

    Parameters
    ----------
    rows : np.ndarray
        (n, len(SOM_FEATURES)) rows from :func:`feature_matrix`, pooled over training CCDs.
    grid : (int, int)
        SOM rows and columns.
    sigma, learning_rate : float
        minisom's initial neighbourhood radius and learning rate (both decay asymptotically).
    iterations : int
        Online updates; each draws one source at random (seeded).
    n_clusters : int
        Clusters of neurons (the method uses 20).
    seed : int
        Seeds minisom and the sample order: same inputs + seed -> same SOM and clusters.
    edge_margin : int
        The edge margin ``rows`` were measured with (:func:`feature_matrix`), recorded in
        ``meta`` so that grading measures the same sources.
    """
    # only training fits a SOM: the CCD chain (and the pool's fork server) loads SOMs without it
    from minisom import MiniSom

    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or rows.shape[1] != len(SOM_FEATURES):
        raise ValueError(f"rows must have shape (n, {len(SOM_FEATURES)}), got {rows.shape}")
    if len(rows) < n_clusters:
        raise ValueError(f"need at least {n_clusters} sources to train, got {len(rows)}")
    n_rows, n_cols = grid
    if n_rows * n_cols < n_clusters:
        raise ValueError(f"grid {grid} has fewer neurons than n_clusters={n_clusters}")
    scaling = Scaling.fit(rows)
    x = scaling.apply(rows).astype(np.float64)
    rng = np.random.default_rng(seed)
    som = MiniSom(
        n_rows, n_cols, x.shape[1], sigma=sigma, learning_rate=learning_rate, random_seed=seed
    )
    init = x[rng.choice(len(x), min(len(x), 50_000), replace=False)]
    som.pca_weights_init(init)
    order = rng.integers(0, len(x), size=iterations)
    # minisom's train() cycles through the data in order; feeding a seeded random draw gives
    # a reproducible random-order schedule without copying 3M rows.
    som.train(x[order], iterations, random_order=False)
    codebook = som.get_weights().reshape(n_rows * n_cols, -1).astype(np.float32)
    clusters = ward_clusters(codebook, n_clusters)
    result = SourceSom(codebook, n_rows, n_cols, clusters, scaling)
    quality = result.quality(rows)
    meta = {
        "n_train_sources": int(len(rows)),
        "iterations": int(iterations),
        "sigma": float(sigma),
        "learning_rate": float(learning_rate),
        "seed": int(seed),
        "quantization_error": quality.quantization_error,
        "topographic_error": quality.topographic_error,
        "edge_margin": int(edge_margin),
    }
    log.info(
        "SOM %dx%d trained on %d sources: QE %.3f, TE %.3f",
        n_rows,
        n_cols,
        len(rows),
        quality.quantization_error,
        quality.topographic_error,
    )
    return SourceSom(codebook, n_rows, n_cols, clusters, scaling, meta=meta)
