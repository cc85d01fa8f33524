"""How CCD class probabilities combine into an exposure's (shared by grading and evaluation)."""

from __future__ import annotations

import numpy as np


def combine(probs: np.ndarray) -> np.ndarray:
    """Normalised geometric mean of rows of class probabilities (mean log-probability, softmax).

    Examples
    --------
    >>> combine(np.array([[0.9, 0.1], [0.6, 0.4]])).round(3)
    array([0.786, 0.214])
    """
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    mean = logp.mean(axis=0)
    out = np.exp(mean - mean.max())
    return out / out.sum()
