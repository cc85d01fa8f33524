"""The SOM hit vectors carry the class: a nearest-centroid classifier on hit fractions beats chance.

Simulated exposures of the five classes are extracted with sep; a small SOM is fitted on the
sources of half of the exposures, every CCD becomes its vector of hit *fractions* per cluster,
and each held-out CCD is given the class of the nearest class centroid (Euclidean distance after
dividing each cluster's fraction by its spread over the training CCDs) computed on the training
exposures. The split is by exposure, never CCDs of one exposure on both sides; the accuracy is
the mean over several random splits, each with its own SOM.

Design measured before setting the bar (6 data sets of 50 exposures, 6 splits each): exposure-
to-exposure variation (exposure time, seeing, sky) dominates, so 10 exposures of one CCD per
class separate the classes much more reliably than 5 exposures of two CCDs for the same pixels:
mean accuracy 0.45-0.57 (chance 0.20) for the former, 0.28-0.63 for the latter.
"""

import warnings

import numpy as np
import pytest

from skygrade.models.classes import CLASSES
from skygrade.models.som import feature_matrix, train_som
from skygrade.streamer.sky_fits import render_exposure
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.extract import sep_features

GEOMETRY = Geometry(1, 1024, 1152)
PER_CLASS = 10
SPLITS = 12
GRID, ITERATIONS = (8, 8), 3000
MIN_ACCURACY = 0.35
"""Chance is 0.20. Measured: 0.46 for the seeds used here (12 splits, single splits 0.24-0.60);
0.45-0.57 for 6 other simulation seeds (6 splits each)."""


@pytest.fixture(scope="module")
def exposures():
    """(label, [SOM rows of each CCD]) of PER_CLASS simulated exposures per class."""
    out = []
    for k, label in enumerate(CLASSES):
        for plan in plan_night("2024-03-01", PER_CLASS, seed=k, class_mix={label: 1.0}):
            hdul = render_exposure(plan, GEOMETRY)
            ccds = []
            for hdu in hdul[1:]:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "sep found no source")  # clouded BGP CCDs
                    table = sep_features(
                        np.asarray(hdu.data, dtype=np.float32), float(hdu.header["SATURATE"])
                    )
                rows, _ = feature_matrix(table, GEOMETRY.width, GEOMETRY.height)
                ccds.append(rows)
            out.append((label, ccds))
    return out


def split_accuracy(exposures, train: set[int], seed: int) -> float:
    """Nearest-centroid accuracy on the CCDs of the exposures not in ``train``."""
    rows = np.concatenate([r for i, (_, ccds) in enumerate(exposures) if i in train for r in ccds])
    som = train_som(rows, grid=GRID, iterations=ITERATIONS, n_clusters=20, seed=seed)

    def vectors(keep):
        x, y = [], []
        for i, (label, ccds) in enumerate(exposures):
            if keep(i):
                for r in ccds:
                    hits = som.hits(r).astype(np.float64)
                    x.append(hits / max(hits.sum(), 1.0))
                    y.append(CLASSES.index(label))
        return np.array(x), np.array(y)

    x_train, y_train = vectors(lambda i: i in train)
    x_test, y_test = vectors(lambda i: i not in train)
    spread = x_train.std(axis=0) + 1e-3
    centroids = np.array([x_train[y_train == k].mean(axis=0) for k in range(len(CLASSES))])
    d2 = (((x_test[:, None, :] - centroids[None]) / spread) ** 2).sum(axis=-1)
    return float(np.mean(d2.argmin(axis=1) == y_test))


def test_nearest_centroid_on_hit_fractions_beats_chance(exposures):
    labels = np.array([CLASSES.index(label) for label, _ in exposures])
    accuracies = []
    for seed in range(SPLITS):
        rng = np.random.default_rng(seed)
        train = set()
        for k in range(len(CLASSES)):
            members = np.flatnonzero(labels == k)
            train |= set(rng.permutation(members)[: len(members) // 2].tolist())
        accuracies.append(split_accuracy(exposures, train, seed))
    accuracy = float(np.mean(accuracies))
    print(
        f"nearest-centroid accuracy on SOM hit fractions: {accuracy:.3f} "
        f"(splits {', '.join(f'{a:.2f}' for a in accuracies)}; chance {1 / len(CLASSES):.2f})"
    )
    assert accuracy >= MIN_ACCURACY, accuracies
