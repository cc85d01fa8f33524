"""Knowing when the network does not know: an out-of-distribution score per CCD.

Plain numpy. A CCD's Input-2 vector (hit fractions + per-CCD statistics,
:func:`skygrade.models.cnn.hit_vector`) is compared with the training CCDs' vectors: each column is
standardised with the training median and a robust spread, and the CCD's distance is the root
mean square of those z values. The score is that distance over the training CCDs' 99th
percentile (:data:`QUANTILE`), so 1 is the edge of what training saw and 3 is far beyond it. A
detector effect the simulator lacks, a camera setting never seen, or a catalog made unlike any
training one moves statistics the network has never been asked about; its softmax can still
say 1.00, and the score is what says otherwise.

:func:`temper` then lowers the confidence: probabilities are mixed with the uniform
distribution by ``clip((score - 1) / 2, 0, MAX_MIX)``. The class order of one CCD is kept, the
grade's confidence falls, and an exposure's mean (:func:`skygrade.models.aggregate.combine`) weighs
an unsure CCD less.

The 0/1 flag columns (``exptime_known``, ``shapes_measured``, ``isolated``) are left out of the
distance: a catalog without EXPTIME is a known case, trained on, not a strange sky.
"""

from __future__ import annotations

import numpy as np

QUANTILE = 0.99
"""Training-CCD quantile of the distance that maps to score 1."""

MAX_MIX = 0.8
"""Largest weight of the uniform distribution in :func:`temper`."""

FLAG_FEATURES = ("exptime_known", "shapes_measured", "isolated")
"""Input-2 columns that are flags, not measurements (not in the distance)."""

_Z_CLIP = 50.0


def _columns(names: list[str]) -> np.ndarray:
    return np.array([n not in FLAG_FEATURES for n in names])


def fit_reference(vectors: np.ndarray, names: list[str]) -> dict:
    """The reference of :func:`ood_scores` from the training CCDs' Input-2 vectors.

    Parameters
    ----------
    vectors : np.ndarray
        (n, d) training vectors, n >= 10.
    names : list of str
        The d column names (hit clusters then :data:`skygrade.models.cnn.AUX_FEATURES`).

    Returns
    -------
    dict
        JSON-ready: ``names``, ``center``, ``scale``, ``threshold`` (the training distance at
        :data:`QUANTILE`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> ref = fit_reference(rng.normal(size=(500, 3)), ["a", "b", "c"])
    >>> float(np.round(ood_scores(np.zeros((1, 3)), ref)[0], 2)) < 1
    True
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or len(vectors) < 10:
        raise ValueError(f"need at least 10 training vectors of shape (n, d), got {vectors.shape}")
    if vectors.shape[1] != len(names):
        raise ValueError(f"{vectors.shape[1]} columns but {len(names)} names")
    lo, center, hi = np.percentile(vectors, [1, 50, 99], axis=0)
    spread = np.clip(vectors, lo, hi).std(axis=0)
    q25, q75 = np.percentile(vectors, [25, 75], axis=0)
    scale = np.maximum(np.maximum((q75 - q25) / 1.349, spread), 1e-3)
    ref = {
        "names": list(names),
        "center": center.tolist(),
        "scale": scale.tolist(),
        "threshold": 1.0,
    }
    ref["threshold"] = float(np.quantile(_distance(vectors, ref), QUANTILE))
    return ref


def _distance(vectors: np.ndarray, ref: dict) -> np.ndarray:
    keep = _columns(ref["names"])
    z = (np.asarray(vectors, dtype=np.float64) - np.asarray(ref["center"])) / np.asarray(
        ref["scale"]
    )
    z = np.clip(z[:, keep], -_Z_CLIP, _Z_CLIP)
    return np.sqrt(np.mean(z**2, axis=1))


def ood_scores(vectors: np.ndarray, ref: dict | None) -> np.ndarray:
    """Out-of-distribution score of each row (1 = the 99th percentile of training CCDs).

    ``ref`` None (a bundle made before the score existed): NaN for every row.
    """
    vectors = np.asarray(vectors, dtype=np.float64)
    if ref is None:
        return np.full(len(vectors), np.nan)
    if vectors.shape[1] != len(ref["names"]):
        raise ValueError(
            f"vectors have {vectors.shape[1]} columns, the OOD reference {len(ref['names'])}"
        )
    return _distance(vectors, ref) / max(float(ref["threshold"]), 1e-9)


def temper(probs: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Probabilities mixed with the uniform distribution as far as the inputs are unfamiliar.

    Examples
    --------
    >>> temper(np.array([[1.0, 0.0]]), np.array([2.0])).round(2).tolist()
    [[0.75, 0.25]]
    >>> temper(np.array([[1.0, 0.0]]), np.array([np.nan])).tolist()
    [[1.0, 0.0]]
    """
    probs = np.asarray(probs, dtype=np.float64)
    scores = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=0.0)
    mix = np.clip((scores - 1.0) / 2.0, 0.0, MAX_MIX)[:, None]
    return (1.0 - mix) * probs + mix / probs.shape[1]
