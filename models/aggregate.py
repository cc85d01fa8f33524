"""How CCD class probabilities combine into an exposure's (shared by grading and evaluation).

The rule is the **mean** of the CCDs' probabilities (a linear opinion pool): every CCD carries
the same weight, at most 1/n of the exposure's probability, so the grade follows what most
CCDs say and no single confident CCD can outvote the others. The normalised geometric mean
(a product of experts, the rule before) let one CCD at probability ~1 veto a class that most
CCDs gave: a BGP exposure whose four CCDs said BGP 0.998, BGP 0.997, B_SEEING 1.00 and RBT 1.00
came out B_SEEING 0.93. Background problems are often local (moonlight on one corner), so a
rule that a minority can veto misses them. docs/model.md compares the two on held-out data.
"""

from __future__ import annotations

import numpy as np


def combine(probs: np.ndarray) -> np.ndarray:
    """Mean of rows of class probabilities: the exposure's probabilities.

    Examples
    --------
    >>> combine(np.array([[0.998, 0.002, 0.0], [0.997, 0.0, 0.003], [0.0, 1.0, 0.0],
    ...                   [0.0, 0.0, 1.0]])).round(3)
    array([0.499, 0.25 , 0.251])
    """
    probs = np.asarray(probs, dtype=np.float64)
    out = probs.mean(axis=0)
    return out / out.sum()


def geometric_mean(probs: np.ndarray) -> np.ndarray:
    """Normalised geometric mean of rows of class probabilities (mean log-probability, softmax),
    the rule :func:`combine` replaced; kept to compare the two in evaluations.

    Examples
    --------
    >>> geometric_mean(np.array([[0.9, 0.1], [0.6, 0.4]])).round(3)
    array([0.786, 0.214])
    """
    logp = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1.0))
    mean = logp.mean(axis=0)
    out = np.exp(mean - mean.max())
    return out / out.sum()


def vote_pool(probs: np.ndarray) -> np.ndarray:
    """Half the CCDs' vote shares (each CCD's most probable class), half their mean
    probabilities: the class most CCDs voted wins unless the votes are nearly tied, where the
    probabilities decide. Compared with :func:`combine` in evaluations (``report.json`` ->
    ``rules``): under the mean, one CCD at 0.99 can outweigh three at 0.45.

    Examples
    --------
    >>> vote_pool(np.array([[0.99, 0.01], [0.4, 0.6], [0.4, 0.6], [0.4, 0.6]])).round(3)
    array([0.399, 0.601])
    """
    probs = np.asarray(probs, dtype=np.float64)
    votes = np.bincount(probs.argmax(axis=1), minlength=probs.shape[1]) / len(probs)
    out = 0.5 * votes + 0.5 * probs.mean(axis=0)
    return out / out.sum()
