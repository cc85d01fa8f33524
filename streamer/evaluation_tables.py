"""The exposure-level tables of ``skygrade evaluate`` beside the CNN's metrics: what the grading
pipeline would say (the network plus the saturated-sky rule), the shipped exposure rule beside
the ones it replaced, and the network's agreement with the person's grades.

:func:`skygrade.streamer.evaluate.run_evaluate` puts them in the report (``pipeline``, ``rules``,
``agreement``); :mod:`skygrade.streamer.evaluation_report` renders them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from skygrade.models.aggregate import combine, geometric_mean, vote_pool
from skygrade.models.classes import CLASSES
from skygrade.models.train import classification_metrics, exposure_probabilities
from skygrade.streamer.pipelines import summarize_extract
from skygrade.transforms.extract import features_from_arrow
from skygrade.transforms.grade import pick_class, saturated_sky, saturated_sky_probs


def read_features(path: Path):
    """The CCD features of one exposure from its cached parquet file."""

    return features_from_arrow(pq.read_table(path))


def saturated_ccds(features_dir: Path, exposure_ids) -> dict[str, tuple[int, int]]:
    """Exposure -> (CCDs quarantined as ``saturated``, CCDs) from an extraction cache: its
    quarantine records (``_quarantine/<id>.ccdNN.json``) and feature files. Only exposures
    with a saturated CCD are listed."""

    reasons: dict[str, list[str]] = {}
    for record in summarize_extract(features_dir)["quarantined"]:
        if not record.is_exposure:
            reasons.setdefault(record.exposure_id, []).append(record.reason)
    out = {}
    for e in exposure_ids:
        n_saturated = reasons.get(e, []).count("saturated")
        if n_saturated:
            features = features_dir / f"{e}.parquet"
            n_measured = len(read_features(features)) if features.exists() else 0
            out[e] = (n_saturated, len(reasons[e]) + n_measured)
    return out


def pipeline_metrics(data, probs: np.ndarray, evaluated, features_dir: Path) -> dict:
    """Exposure metrics of what the grading pipeline would say: the network's exposure
    probabilities, except where :func:`skygrade.transforms.grade.saturated_sky` grades the exposure
    BGP by rule (also when no CCD reached the network)."""

    ids, truth, exp_probs = exposure_probabilities(data, probs)
    rows = {e: (t, p) for e, t, p in zip(ids, truth.tolist(), exp_probs, strict=True)}
    labels = {i.exposure_id: i.label for i in evaluated}
    rule = [
        e
        for e, (n_saturated, n_ccd) in saturated_ccds(features_dir, labels).items()
        if saturated_sky(n_saturated, n_ccd)
    ]
    n_rule_only = sum(e not in rows for e in rule)
    for e in rule:
        rows[e] = (CLASSES.index(labels[e]), saturated_sky_probs())
    order = sorted(rows)
    metrics = classification_metrics(
        np.array([rows[e][0] for e in order], dtype=int),
        np.array([rows[e][1] for e in order]).reshape(-1, len(CLASSES)),
    )
    return {"exposure": metrics, "n_rule": len(rule), "n_rule_only": n_rule_only}


def rule_comparison(data, probs: np.ndarray) -> dict:
    """Exposure accuracy of the shipped exposure rule (:func:`skygrade.models.aggregate.combine`,
    the mean) beside the normalised geometric mean it replaced and the vote pool, on the same CCD
    probabilities."""

    ids = sorted(set(data.exposure.tolist()))
    right = {"mean": 0, "geometric": 0, "vote": 0}
    for e in ids:
        m = data.exposure == e
        truth = int(np.bincount(data.label[m]).argmax())
        right["mean"] += int(np.argmax(combine(probs[m])) == truth)
        right["geometric"] += int(np.argmax(geometric_mean(probs[m])) == truth)
        right["vote"] += int(np.argmax(vote_pool(probs[m])) == truth)
    n = max(len(ids), 1)
    return {"n": len(ids), **{rule: count / n for rule, count in right.items()}}


def agreement(data, probs: np.ndarray, evaluated, also: dict) -> dict:
    """Per exposure: the person's grade(s), the network's exposure grade and whether they agree.

    A grade in ``label`` or in ``also`` (other grades a person gave the same exposure) counts
    as agreement: manual grades are noisy (two versions of the real list disagree on 4 of 14).
    """

    ids, _, exp_probs = exposure_probabilities(data, probs)
    labels = {i.exposure_id: i.label for i in evaluated}
    rows = []
    for e, p in zip(ids, exp_probs, strict=True):
        grade = pick_class(p)
        others = sorted(also.get(e, ()))
        rows.append(
            {
                "exposure_id": e,
                "label": labels[e],
                "also": others,
                "grade": grade,
                "confidence": float(p.max()),
                "p": {c: float(p[i]) for i, c in enumerate(CLASSES)},
                "agree": grade == labels[e] or grade in others,
            }
        )
    return {
        "n": len(rows),
        "n_agree": sum(r["agree"] for r in rows),
        "n_exact": sum(r["grade"] == r["label"] for r in rows),
        "n_also": sum(bool(r["also"]) for r in rows),
        "rows": rows,
    }
