"""Honest evaluation of a model bundle: ablations, a traditional baseline, the report's data.

Plain numpy + torch; no Beam, no file layout and no presentation: the caller
(:mod:`skygrade.streamer.evaluate`) picks the exposures, builds the CNN inputs with the bundle's SOM
and hands in arrays, and :mod:`skygrade.streamer.evaluation_report` writes what :func:`build_report`
gives as Markdown and a PNG for people.

Three things are measured side by side on the same exposures:

- the CNN in full mode (representative image + hits), in catalog mode (image flags zeroed: hits
  only, how archived nights with only SExtractor catalogs are graded) and image-only (hits
  vector replaced by the training-set mean vector). These are inference-time maskings of one
  trained network (it was trained with image dropout), not retrained models;
- a traditional baseline: a few per-exposure statistics of the source catalog
  (:func:`exposure_statistics`) thresholded by a small greedy decision tree
  (:func:`fit_threshold_tree`) whose rules are printed in the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from skygrade.models.classes import CLASSES
from skygrade.models.train import Dataset, classification_metrics, exposure_probabilities, predict

# --------------------------------------------------------------------------- statistics

STATISTICS: dict[str, str] = {
    "flux_radius_px": "median FLUX_RADIUS of clean sources (pixels)",
    "elongation": "median ELONGATION of clean sources",
    "log_sky_rate": "log10 median BACKGROUND per second (ADU/s)",
    "sky_ccd_spread_dex": "CCD-to-CCD spread (std) of log10 median BACKGROUND (dex)",
    "sky_within_spread": "median over CCDs of the within-CCD BACKGROUND spread (p90-p10)/median",
    "log_density": "log10 clean sources per megapixel",
    "blended_fraction": "fraction of detections flagged blended (FLAGS bit 2)",
}
"""Per-exposure statistics of the traditional baseline, with what each one is."""

_CLEAN_BITS = ~3
"""FLAGS bits that disqualify a source for the baseline (all but neighbours / blended)."""


def exposure_statistics(ccds: Sequence) -> dict[str, float]:
    """The traditional per-exposure quality statistics of :data:`STATISTICS`.

    Parameters
    ----------
    ccds : sequence of skygrade.transforms.extract.CcdFeatures
        The CCDs of one exposure (any object with ``sources``, ``exptime``, ``width`` and
        ``height`` attributes).

    Returns
    -------
    dict of str to float
        One value per name of :data:`STATISTICS`; NaN where the exposure has no clean source
        (a result, not an error: the tree fills NaN with the training median).

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> t = {"FLAGS": np.zeros(3, int), "FLUX_RADIUS": np.array([2.0, 2.5, 3.0]),
    ...      "ELONGATION": np.ones(3), "BACKGROUND": np.full(3, 100.0)}
    >>> ccd = SimpleNamespace(sources=t, exptime=100.0, width=1000, height=1000)
    >>> round(exposure_statistics([ccd])["flux_radius_px"], 2)
    2.5
    """
    nan = float("nan")
    radius, elong, sky_ccd, within, rate = [], [], [], [], []
    n_clean = n_all = n_blended = 0
    area_mpx = 0.0
    for c in ccds:
        t = c.sources
        flags = np.asarray(t["FLAGS"]).astype(np.int64)
        clean = (flags & _CLEAN_BITS) == 0
        n_all += len(flags)
        n_blended += int(np.count_nonzero(flags & 2))
        n_clean += int(np.count_nonzero(clean))
        area_mpx += c.width * c.height / 1e6
        radius.append(np.asarray(t["FLUX_RADIUS"], dtype=np.float64)[clean])
        elong.append(np.asarray(t["ELONGATION"], dtype=np.float64)[clean])
        sky = np.asarray(t["BACKGROUND"], dtype=np.float64)[clean]
        sky = sky[np.isfinite(sky)]
        if len(sky):
            med = float(np.median(sky))
            exptime = max(float(c.exptime), 1e-3)
            if med > 0:
                sky_ccd.append(math.log10(med))
                rate.append(med / exptime)
                p10, p90 = np.percentile(sky, [10, 90])
                within.append(float((p90 - p10) / med))

    def median(parts: list[np.ndarray]) -> float:
        values = np.concatenate(parts) if parts else np.zeros(0)
        values = values[np.isfinite(values)]
        return float(np.median(values)) if len(values) else nan

    return {
        "flux_radius_px": median(radius),
        "elongation": median(elong),
        "log_sky_rate": math.log10(float(np.median(rate))) if rate else nan,
        "sky_ccd_spread_dex": float(np.std(sky_ccd)) if sky_ccd else nan,
        "sky_within_spread": float(np.median(within)) if within else nan,
        "log_density": math.log10(n_clean / area_mpx + 1.0) if area_mpx > 0 else nan,
        "blended_fraction": n_blended / n_all if n_all else nan,
    }


def statistics_matrix(stats: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Rows of :func:`exposure_statistics` -> float64 array (n, len(STATISTICS))."""
    return np.array([[s[name] for name in STATISTICS] for s in stats], dtype=np.float64).reshape(
        len(stats), len(STATISTICS)
    )


# --------------------------------------------------------------------------- threshold tree


@dataclass(frozen=True)
class _Node:
    counts: np.ndarray  # (k,) weighted class counts of the training samples reaching the node
    raw: np.ndarray  # (k,) unweighted class counts
    feature: int = -1
    threshold: float = float("nan")
    left: _Node | None = None  # value <= threshold
    right: _Node | None = None  # value > threshold

    @property
    def leaf(self) -> bool:
        return self.left is None


@dataclass(frozen=True)
class Tree:
    """A fitted depth-limited threshold tree (see :func:`fit_threshold_tree`)."""

    root: _Node
    names: tuple[str, ...]
    classes: tuple[str, ...]
    fill: np.ndarray
    """Training medians, used for missing (NaN) values."""

    def _check(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != len(self.names):
            raise ValueError(f"X must have shape (n, {len(self.names)}), got {X.shape}")
        return np.where(np.isfinite(X), X, self.fill)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Class fractions of the leaf each row falls in, shape (n, n_classes)."""
        X = self._check(X)
        out = np.zeros((len(X), len(self.classes)))
        for i, row in enumerate(X):
            node = self.root
            while not node.leaf:
                node = node.left if row[node.feature] <= node.threshold else node.right
            out[i] = node.counts / max(node.counts.sum(), 1e-12)
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class index of every row."""
        return self.predict_proba(X).argmax(1)

    def describe(self) -> list[str]:
        """One human-readable rule per leaf, in tree order, e.g.
        ``elongation > 1.45 and flux_radius_px <= 3.2 -> BT (12 training exposures: 11 BT,
        1 GOOD)``."""
        rules: list[str] = []

        def walk(node: _Node, bounds: dict[int, list[float]]) -> None:
            if node.leaf:
                conds = []
                for f in sorted(bounds):
                    lo, hi = bounds[f]
                    name = self.names[f]
                    if np.isfinite(lo) and np.isfinite(hi):
                        conds.append(f"{_g(lo)} < {name} <= {_g(hi)}")
                    elif np.isfinite(lo):
                        conds.append(f"{name} > {_g(lo)}")
                    else:
                        conds.append(f"{name} <= {_g(hi)}")
                k = int(node.counts.argmax())
                order = sorted(range(len(self.classes)), key=lambda j: (-node.raw[j], j))
                mix = ", ".join(f"{node.raw[j]} {self.classes[j]}" for j in order if node.raw[j])
                when = " and ".join(conds) if conds else "always"
                n = int(node.raw.sum())
                rules.append(f"{when} -> {self.classes[k]} ({n} training exposures: {mix})")
                return
            lo, hi = bounds.get(node.feature, [-np.inf, np.inf])
            walk(node.left, {**bounds, node.feature: [lo, min(hi, node.threshold)]})
            walk(node.right, {**bounds, node.feature: [max(lo, node.threshold), hi]})

        walk(self.root, {})
        return rules


def _g(x: float) -> str:
    return f"{x:.3g}"


def fit_threshold_tree(
    X: np.ndarray,
    y: np.ndarray,
    names: Sequence[str],
    depth: int = 3,
    min_leaf: int = 5,
    classes: Sequence[str] = CLASSES,
    balanced: bool = True,
) -> Tree:
    """Fit a small decision tree of thresholds on a few statistics (greedy, Gini impurity).

    The traditional way to grade exposures is a handful of hand-set cuts on seeing, elongation
    and sky; this fits those cuts on labelled data so that the comparison with the CNN is fair.

    Parameters
    ----------
    X : np.ndarray
        (n, n_features) statistics; NaN is replaced by the column's median.
    y : np.ndarray
        (n,) class indices into ``classes``.
    names : sequence of str
        Name of each column (used by :meth:`Tree.describe`).
    depth : int
        Maximum depth (>= 1): at most ``2**depth`` rules.
    min_leaf : int
        Fewest training samples on each side of a split (>= 1).
    classes : sequence of str
        Class names, in index order.
    balanced : bool
        Weight classes inversely to their frequency (as the CNN's loss does), so a rare class
        is not simply outvoted.

    Returns
    -------
    Tree
        With ``predict``, ``predict_proba`` and ``describe``.

    Raises
    ------
    ValueError
        On inconsistent shapes, labels out of range, no samples, or ``depth`` / ``min_leaf``
        below 1.

    Examples
    --------
    >>> X = np.array([[1.0], [1.1], [3.0], [3.2]])
    >>> tree = fit_threshold_tree(X, np.array([0, 0, 1, 1]), ["elongation"], min_leaf=1)
    >>> tree.describe()[0]
    'elongation <= 2.05 -> GOOD (2 training exposures: 2 GOOD)'
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y)
    names = tuple(names)
    classes = tuple(classes)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D (n, n_features), got shape {X.shape}")
    if len(X) == 0:
        raise ValueError("X has no rows: nothing to fit the threshold tree on")
    if y.shape != (len(X),):
        raise ValueError(f"y must have shape ({len(X)},), got {y.shape}")
    if len(names) != X.shape[1]:
        raise ValueError(f"names has {len(names)} entries for {X.shape[1]} columns")
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth!r}")
    if min_leaf < 1:
        raise ValueError(f"min_leaf must be >= 1, got {min_leaf!r}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= len(classes):
        raise ValueError(f"y must hold class indices in [0, {len(classes)}), got {np.unique(y)}")
    k = len(classes)
    with np.errstate(all="ignore"):
        fill = np.array(
            [np.nanmedian(col) if np.isfinite(col).any() else 0.0 for col in X.T], dtype=np.float64
        )
    X = np.where(np.isfinite(X), X, fill)
    counts = np.bincount(y, minlength=k).astype(np.float64)
    weight = (
        np.where(counts > 0, len(y) / np.maximum(counts, 1) / np.count_nonzero(counts), 0.0)
        if balanced
        else np.ones(k)
    )
    root = _grow(X, y, weight, k, depth, min_leaf)
    return Tree(root, names, classes, fill)


def _grow(X, y, weight, k, depth, min_leaf) -> _Node:
    raw = np.bincount(y, minlength=k)
    node = _Node(raw * weight, raw)
    if depth == 0 or len(y) < 2 * min_leaf or np.count_nonzero(raw) < 2:
        return node
    best = _best_split(X, y, weight, k, min_leaf)
    if best is None:
        return node
    f, threshold = best
    go_left = X[:, f] <= threshold
    return replace(
        node,
        feature=f,
        threshold=threshold,
        left=_grow(X[go_left], y[go_left], weight, k, depth - 1, min_leaf),
        right=_grow(X[~go_left], y[~go_left], weight, k, depth - 1, min_leaf),
    )


def _gini(counts: np.ndarray) -> np.ndarray:
    total = counts.sum(-1)
    p = counts / np.maximum(total, 1e-12)[..., None]
    return 1.0 - (p**2).sum(-1)


def _best_split(X, y, weight, k, min_leaf) -> tuple[int, float] | None:
    """(feature, threshold) of the largest weighted Gini decrease, or None if none helps."""
    n = len(y)
    onehot = np.eye(k)[y] * weight
    total = onehot.sum(0)
    parent = _gini(total) * total.sum()
    best, best_gain = None, 1e-12
    for f in range(X.shape[1]):
        order = np.argsort(X[:, f], kind="stable")
        values = X[order, f]
        left = np.cumsum(onehot[order], axis=0)[:-1]  # split after position i
        right = total - left
        size = np.arange(1, n)
        ok = (values[:-1] < values[1:]) & (size >= min_leaf) & (n - size >= min_leaf)
        if not ok.any():
            continue
        cost = _gini(left) * left.sum(1) + _gini(right) * right.sum(1)
        gain = np.where(ok, parent - cost, -np.inf)
        i = int(gain.argmax())
        if gain[i] > best_gain:
            best_gain = gain[i]
            best = (f, float((values[i] + values[i + 1]) / 2))
    return best


# --------------------------------------------------------------------------- CNN modes


MODES: dict[str, str] = {
    "full": "CNN full (representative image + hits)",
    "catalog": "CNN catalog mode (image flag 0: hits only)",
    "image_only": "CNN image-only (hits vector -> training-set mean)",
    "hits_only": "CNN hits-only (image flag 0)",
}
"""The CNN's inference modes in the report. Catalog mode and hits-only are the same masking of
this network (image flag 0); both names are kept so either reading finds its row."""


def mode_metrics(data: Dataset, probs: np.ndarray) -> dict:
    """CCD-level and exposure-level metrics of CCD probabilities ``probs`` of ``data``.

    Exposure probabilities combine the CCDs with the grading rule
    (:func:`skygrade.models.train.exposure_probabilities`).

    Returns
    -------
    dict
        ``{"ccd": metrics, "exposure": metrics}`` of
        :func:`skygrade.models.train.classification_metrics`.
    """
    if len(probs) != len(data):
        raise ValueError(f"probs has {len(probs)} rows for {len(data)} samples")
    _, truth, exp_probs = exposure_probabilities(data, probs)
    return {
        "ccd": classification_metrics(data.label, probs),
        "exposure": classification_metrics(truth, exp_probs),
    }


def ablation_probs(model, data: Dataset, mean_vector: np.ndarray) -> dict[str, np.ndarray]:
    """CCD class probabilities of ``data`` in each inference mode of :data:`MODES`.

    Parameters
    ----------
    model : skygrade.models.cnn.DualInputNet
        The trained network (trained with image dropout, so a zero image flag is in its
        training distribution).
    data : skygrade.models.train.Dataset
        CNN inputs of the evaluated CCDs.
    mean_vector : np.ndarray
        (n_clusters + n_aux,) mean hits vector of the training CCDs, which replaces every
        CCD's vector in the image-only mode (the least informative hits input the network
        knows).

    Returns
    -------
    dict of str to np.ndarray
        (n, n_classes) probabilities for ``full``, ``catalog``, ``image_only`` and
        ``hits_only`` (the same array as ``catalog``).
    """
    mean_vector = np.asarray(mean_vector, dtype=np.float32)
    if mean_vector.shape != data.vector.shape[1:]:
        raise ValueError(
            f"mean_vector must have shape {data.vector.shape[1:]}, got {mean_vector.shape}"
        )
    catalog = predict(model, data, np.zeros(len(data), np.float32))
    masked = replace(data, vector=np.broadcast_to(mean_vector, data.vector.shape).copy())
    return {
        "full": predict(model, data),
        "catalog": catalog,
        "image_only": predict(model, masked),
        "hits_only": catalog,
    }


# --------------------------------------------------------------------------- report


ABLATION_NOTE = (
    "Ablations are inference-time maskings of one trained network, not retrained models: "
    "catalog mode / hits-only set the image flag to 0 (the network was trained with image "
    "dropout, so it knows this input); image-only replaces every CCD's hits vector (hit "
    "fractions + per-CCD source density, exposure time and summary statistics of source size, "
    "elongation and sky) by the training-set mean vector."
)


def comparison_rows(cnn: Mapping[str, dict], baseline: dict | None) -> list[dict]:
    """The side-by-side table: one row per CNN mode of :data:`MODES`, then the baseline.

    Parameters
    ----------
    cnn : mapping of str to dict
        :func:`mode_metrics` of each mode, on the compared exposures.
    baseline : dict or None
        ``classification_metrics`` of the baseline on the same exposures.
    """
    rows = []
    for mode, label in MODES.items():
        if mode in cnn:
            m = cnn[mode]
            rows.append(_row(mode, label, m["exposure"], m["ccd"]))
    if baseline is not None:
        rows.append(_row("baseline", "threshold tree on catalog statistics", baseline, None))
    return rows


def _row(method: str, label: str, exposure: dict, ccd: dict | None) -> dict:
    return {
        "method": method,
        "label": label,
        "n_exposures": exposure["n"],
        "exposure_accuracy": exposure["accuracy"],
        "exposure_macro_f1": exposure["macro_f1"],
        "exposure_ece": exposure["ece"],
        "ccd_accuracy": None if ccd is None else ccd["accuracy"],
        "ccd_macro_f1": None if ccd is None else ccd["macro_f1"],
    }


def build_report(
    *,
    bundle: dict,
    archive: str,
    scope: dict,
    cnn: Mapping[str, dict],
    baseline: dict,
    comparison: dict,
    notes: Sequence[str] = (),
) -> dict:
    """Assemble the evaluation report (JSON-ready: NaN becomes None).

    Parameters
    ----------
    bundle : dict
        ``path``, ``version`` and what the bundle says about its training.
    archive : str
        The evaluated archive.
    scope : dict
        ``kind`` (``held_out_test`` or ``independent``), ``text`` (one sentence saying which
        exposures were evaluated and why) and counts.
    cnn : mapping of str to dict
        :func:`mode_metrics` per mode on all evaluated exposures.
    baseline : dict
        ``fit_on`` (text), ``n_fit``, ``rules`` (:meth:`Tree.describe`), ``metrics``.
    comparison : dict
        ``text`` and ``rows`` (:func:`comparison_rows`) on the exposures every method scored.
    notes : sequence of str
        More caveats for the reader.
    """
    report = {
        "classes": list(CLASSES),
        "bundle": dict(bundle),
        "archive": str(archive),
        "scope": dict(scope),
        "cnn": {mode: cnn[mode] for mode in MODES if mode in cnn},
        "baseline": dict(baseline),
        "comparison": dict(comparison),
        "statistics": dict(STATISTICS),
        "notes": [ABLATION_NOTE, *notes],
    }
    return _jsonable(report)


def _jsonable(x):
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return None if not math.isfinite(float(x)) else float(x)
    return x
