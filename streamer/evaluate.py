"""``skygrade evaluate``: an honest report of how well a model bundle grades a labelled archive.

Which exposures are scored:

- the bundle's own training archive (its exposure ids appear in the manifest's split): only the
  held-out *test* exposures; training and validation exposures are never reported on;
- any other archive (other nights, other seeds): all of its exposures.

Stages (progress lines through ``progress``): (1) features, cached under ``work_dir/features``
like ``skygrade train`` (a Beam job); (2) hits + representative images of every CCD with the
*bundle's* SOM and tile (a Beam job); (3) CNN probabilities in full mode, catalog mode and the
ablations (:func:`skygrade.models.evaluate.ablation_probs`); (4) the traditional baseline, a
threshold tree on per-exposure catalog statistics fitted on the bundle's training exposures; (5) the
report: ``report.md``, ``report.json`` and ``confusion.png`` in ``out_dir``.

The numerical work lives in :mod:`skygrade.models.evaluate`, the Markdown and the PNG in
:mod:`skygrade.streamer.evaluation_report`; the shared stages come from
:mod:`skygrade.streamer.pipelines` (the same code :func:`skygrade.streamer.training_job.run_train`
runs).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq

from skygrade.models.aggregate import combine, geometric_mean, vote_pool
from skygrade.models.bundle import load_bundle
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import hit_vector
from skygrade.models.evaluate import (
    STATISTICS,
    ablation_probs,
    build_report,
    comparison_rows,
    exposure_statistics,
    fit_threshold_tree,
    mode_metrics,
    statistics_matrix,
)
from skygrade.models.summary import stack_summaries
from skygrade.models.train import classification_metrics, exposure_probabilities
from skygrade.ops.files import atomic_write_text
from skygrade.streamer.evaluation_report import plot_confusion, render_markdown
from skygrade.streamer.pipelines import (
    build_dataset,
    cache_features,
    pipeline_options,
    summarize_extract,
    work_dirs,
)
from skygrade.transforms.dataset import find_archive, read_label_sets, read_labels
from skygrade.transforms.extract import features_from_arrow
from skygrade.transforms.grade import pick_class, saturated_sky, saturated_sky_probs
from skygrade.transforms.representative import ccd_inputs
from skygrade.transforms.som_hits import ccd_hits

log = logging.getLogger(__name__)

TREE_DEPTH = 3
"""Depth of the baseline's threshold tree (at most 8 rules)."""
MIN_LEAF = 5
"""Fewest training exposures per rule of the baseline (lowered for small reference sets)."""
MIN_REFERENCE = 4
"""Fewest labelled training exposures with cached features (of at least two classes) to fit
the baseline on; with fewer, it is fitted on a seeded half of the evaluated archive instead."""
FALLBACK_SEED = 0
"""Seed of that half split."""


class Reference(NamedTuple):
    """A labelled exposure whose cached features the baseline (and the image-only mean vector)
    is fitted on."""

    exposure_id: str
    label: str
    features: Path


def run_evaluate(
    bundle_path: str | os.PathLike,
    archive: str | os.PathLike,
    out_dir: str | os.PathLike,
    cfg,
    options=None,
    work_dir: str | os.PathLike | None = None,
    progress=None,
) -> dict:
    """Evaluate the model bundle at ``bundle_path`` on the labelled ``archive``.

    Parameters
    ----------
    bundle_path : path-like
        Model bundle directory.
    archive : path-like
        Labelled archive (exposures + ``labels.csv``).
    out_dir : path-like
        Where ``report.md``, ``report.json`` and ``confusion.png`` are written.
    cfg : skygrade.ops.config.Config
        Extraction settings (``cfg.extract``) for exposures not yet in the feature cache.
    options : PipelineOptions, optional
        Beam options of the two Beam jobs.
    work_dir : path-like, optional
        Feature cache and shards (default ``<out_dir>/work``). Passing the work directory of
        the bundle's training reuses its cached features.
    progress : callable, optional
        Gets one line of text per stage (default: the log).

    Returns
    -------
    dict
        ``report`` (the dict written to ``report.json``), ``paths`` (markdown, json, confusion)
        and ``evaluated`` (exposure ids).

    Raises
    ------
    ValueError
        When the archive has no labelled exposure, when it is the bundle's training archive
        but holds none of its test exposures, or when no evaluated exposure has a usable CCD.
    """

    say = progress or (lambda text: log.info("%s", text))
    bundle_path, out_dir = Path(bundle_path), Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir / "work"
    features_dir, shard_dir = work_dirs(work, cfg.extract.backend)
    options = options or pipeline_options()

    bundle = load_bundle(bundle_path)
    training = bundle.manifest.get("training", {})
    split = {k: set(training.get("split", {}).get(k, ())) for k in ("train", "val", "test")}
    items = find_archive(archive)
    if not items:
        raise ValueError(f"{archive}: no labelled exposure found")

    # which exposures, and what the baseline is fitted on
    seen = {i.exposure_id for i in items} & (split["train"] | split["val"] | split["test"])
    if seen:
        evaluated = [i for i in items if i.exposure_id in split["test"]]
        if not evaluated:
            raise ValueError(
                f"{archive} is the training archive of bundle {bundle_path} but holds none of "
                "its held-out test exposures: nothing can be evaluated honestly"
            )
        n_train = sum(i.exposure_id in split["train"] for i in items)
        n_val = sum(i.exposure_id in split["val"] for i in items)
        n_other = len(items) - len(evaluated) - n_train - n_val
        scope = {
            "kind": "held_out_test",
            "text": (
                f"This archive is the bundle's training archive: only its {len(evaluated)} "
                f"held-out test exposures (split by {training['split'].get('by', '?')}) are "
                f"evaluated; the {n_train} training and {n_val} validation exposures are never "
                "reported on"
                + (f", nor the {n_other} exposures unknown to the bundle" if n_other else "")
                + "."
            ),
            "n_archive": len(items),
            "n_excluded_train": n_train,
            "n_excluded_val": n_val,
            "n_excluded_unknown": n_other,
        }
        extract = evaluated + [i for i in items if i.exposure_id in split["train"]]
    else:
        evaluated = items
        scope = {
            "kind": "independent",
            "text": (
                f"Independent archive (no exposure of it is in the bundle's training data): "
                f"all {len(items)} exposures are evaluated."
            ),
            "n_archive": len(items),
        }
        extract = evaluated
    say(f"evaluating {len(evaluated)} of {len(items)} exposures ({scope['kind']})")

    # 1. features (cached)
    cache_features(extract, features_dir, cfg, options, lambda t: say(f"stage 1/5 {t}"))

    # 2. CNN inputs with the bundle's SOM and tile
    say(f"stage 2/5 hits and representative images with the bundle's SOM (tile {bundle.tile})")
    som_path = bundle_path / bundle.manifest["som"]["file"]
    data = build_dataset(evaluated, features_dir, shard_dir, som_path, bundle.tile, options)
    if data is None:
        raise ValueError(f"{archive}: no evaluated exposure yielded a usable CCD")
    graded = sorted(set(data.exposure.tolist()))
    say(f"  {len(data)} CCDs of {len(graded)} exposures")

    # reference set: the bundle's training exposures, else a seeded half of this archive
    if seen:
        reference = [
            Reference(i.exposure_id, i.label, features_dir / f"{i.exposure_id}.parquet")
            for i in items
            if i.exposure_id in split["train"]
        ]
        reference = [r for r in reference if r.features.exists()]
        fit_on = f"the bundle's {len(reference)} training exposures"
    else:
        reference = _training_reference(bundle_path, training, [features_dir])
        fit_on = f"the bundle's {len(reference)} training exposures (their cached features)"
    compared = set(graded)
    notes = []
    fallback = not _enough(reference)
    if fallback:
        fit_ids, compared = _half_split([(i.exposure_id, i.label) for i in evaluated], graded)
        reference = [
            Reference(i.exposure_id, i.label, features_dir / f"{i.exposure_id}.parquet")
            for i in evaluated
            if i.exposure_id in fit_ids
        ]
        reference = [r for r in reference if r.features.exists()]
        fit_on = (
            f"a seeded half ({len(reference)} exposures, seed {FALLBACK_SEED}) of this archive, "
            f"because fewer than {MIN_REFERENCE} labelled training exposures of the bundle (of "
            "two classes or more) have cached features here (pass the training's work directory "
            "as --work to use them); the side-by-side table covers only the other half"
        )
        notes.append(
            "The image-only mean hits vector is the mean over the baseline's fitting half of "
            "this archive, not over the bundle's training set (whose features are not here)."
        )
    if not reference:
        raise ValueError(f"{archive}: no labelled exposure with features to fit the baseline on")
    ref_ccds = [_read_features(r.features) for r in reference]

    # 3. CNN probabilities in every mode
    say("stage 3/5 CNN probabilities: full, catalog mode, image-only")
    mean_vector = mean_hits_vector([c for ccds in ref_ccds for c in ccds], bundle.som)
    if mean_vector is None:  # no reference CCD with a clean source: the evaluated CCDs' mean
        mean_vector = data.vector.mean(0)
    probs = ablation_probs(bundle.cnn, data, mean_vector)
    cnn = {mode: mode_metrics(data, p) for mode, p in probs.items()}

    # 4. traditional baseline
    say(f"stage 4/5 threshold-tree baseline fitted on {fit_on}")
    ref_stats = [exposure_statistics(ccds) for ccds in ref_ccds]
    min_leaf = max(1, min(MIN_LEAF, len(reference) // 4))
    tree = fit_threshold_tree(
        statistics_matrix(ref_stats),
        np.array([CLASSES.index(r.label) for r in reference]),
        list(STATISTICS),
        depth=TREE_DEPTH,
        min_leaf=min_leaf,
    )
    labels = {i.exposure_id: i.label for i in evaluated}
    compared_ids = sorted(
        e for e in compared if (features_dir / f"{e}.parquet").exists() and e in labels
    )
    X = statistics_matrix(
        [exposure_statistics(_read_features(features_dir / f"{e}.parquet")) for e in compared_ids]
    )
    truth = np.array([CLASSES.index(labels[e]) for e in compared_ids], dtype=int)
    base_metrics = classification_metrics(truth, tree.predict_proba(X))
    for rule in tree.describe():
        say(f"  {rule}")

    # 5. report
    say("stage 5/5 report")
    keep = np.isin(data.exposure, compared_ids)
    part = data.subset(compared_ids)
    cnn_compared = {mode: mode_metrics(part, p[keep]) for mode, p in probs.items()}
    compared_text = (
        f"All methods on the same {len(compared_ids)} exposures"
        + (
            f" (the half of the archive the baseline was not fitted on; the per-mode sections "
            f"below cover all {len(graded)} graded exposures)"
            if fallback
            else ""
        )
        + ". Exposure metrics use the grading rule (mean of the CCD "
        "probabilities); ECE is the expected calibration error of the exposure probabilities."
    )
    if cfg.extract.backend == "catalog":
        notes.append(
            "This archive holds SExtractor catalogs (catalog backend): no CCD has pixels, so every "
            "row but image-only is catalog mode, the way nights with only catalogs are graded; "
            "the threshold tree reads the same catalogs."
        )
    else:
        notes.append(
            "Catalog mode and hits-only are the same inference here (image flag 0 on CCDs whose "
            "features came from this archive's extraction); catalog mode is how nights with "
            "only SExtractor catalogs are graded."
        )
    pipeline = pipeline_metrics(data, probs["full"], evaluated, features_dir)
    if pipeline["n_rule"]:
        m = pipeline["exposure"]
        notes.append(
            "Pipeline (the network plus the saturated-sky rule of skygrade.transforms.grade: "
            "half or more of an exposure's CCDs saturated -> BGP): "
            f"{pipeline['n_rule']} exposure(s) graded by the rule, "
            f"{pipeline['n_rule_only']} of them with no CCD for the network; "
            f"exposure accuracy {m['accuracy']:.1%} on {m['n']} exposures (macro-F1 "
            f"{m['macro_f1']:.3f})."
        )
    not_graded = len(evaluated) - len(graded) - pipeline["n_rule_only"]
    if not_graded:
        notes.append(
            f"{not_graded} evaluated exposure(s) had no usable CCD (quarantined or no clean "
            "source) and are not in the CNN metrics; the pipeline quarantines them."
        )
    rules = rule_comparison(data, probs["full"])
    r = rules
    notes.append(
        f"Exposure rule: the mean of the CCDs' probabilities (shipped) grades {r['mean']:.1%} "
        f"of the {r['n']} exposures right, the normalised geometric mean {r['geometric']:.1%}, "
        f"the vote pool (half vote shares, half mean) {r['vote']:.1%}."
    )
    agree_rows = agreement(data, probs["full"], evaluated, read_label_sets(archive).also)
    if agree_rows["n_also"]:
        a = agree_rows
        notes.append(
            f"Manual grades are noisy: {a['n_also']} exposure(s) carry other grades a person gave "
            f"them (labels.csv `also`). Counting a grade in `label` or `also` as agreement, the "
            f"network agrees with the person on {a['n_agree']} of {a['n']} graded exposures "
            "(table 'Agreement with the person')."
        )
    report = build_report(
        bundle={
            "path": str(bundle_path),
            "version": bundle.version,
            "training_archive": training.get("archive"),
            "split_by": training.get("split", {}).get("by"),
            "tile": bundle.tile,
            "members": bundle.n_members,
            "recorded": _recorded_metrics(bundle.manifest),
        },
        archive=str(archive),
        scope={**scope, "n_evaluated": len(evaluated), "n_graded": len(graded)},
        cnn=cnn,
        baseline={
            "fit_on": fit_on,
            "n_fit": len(reference),
            "fit_ids": sorted(r.exposure_id for r in reference),
            "depth": TREE_DEPTH,
            "min_leaf": min_leaf,
            "rules": tree.describe(),
            "metrics": base_metrics,
        },
        comparison={
            "text": compared_text,
            "exposure_ids": compared_ids,
            "rows": comparison_rows(cnn_compared, base_metrics),
        },
        notes=notes,
    )
    report["scope"]["exposure_ids"] = graded
    report["pipeline"] = pipeline
    report["rules"] = rules
    report["agreement"] = agree_rows
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": atomic_write_text(out_dir / "report.md", render_markdown(report)),
        "json": atomic_write_text(
            out_dir / "report.json", json.dumps(report, indent=1, allow_nan=False) + "\n"
        ),
        "confusion": plot_confusion(
            cnn["full"]["exposure"]["confusion"],
            CLASSES,
            out_dir / "confusion.png",
            title=f"CNN full mode, {len(graded)} exposures",
        ),
    }
    say(f"report written: {paths['markdown']}")
    return {"report": report, "paths": paths, "evaluated": graded}


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
            n_measured = len(_read_features(features)) if features.exists() else 0
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


def _recorded_metrics(manifest: dict) -> dict:
    """What the bundle itself recorded about its held-out part at training time (for a
    cross-check: evaluating the training archive must reproduce it)."""
    metrics = manifest.get("metrics", {})
    return {
        mode: {
            level: {k: metrics[mode][level].get(k) for k in ("n", "accuracy", "macro_f1")}
            for level in ("exposure", "ccd")
            if level in metrics.get(mode, {})
        }
        for mode in ("full", "catalog")
        if mode in metrics
    }


def _enough(reference: list[Reference]) -> bool:
    return len(reference) >= MIN_REFERENCE and len({r.label for r in reference}) >= 2


def _training_reference(bundle_path: Path, training: dict, feature_dirs: list[Path]):
    """The bundle's training exposures whose features are cached (here, or in the training's
    default work directory ``<bundle>.work``) and whose labels the training archive still has."""

    default_work = bundle_path.with_name(bundle_path.name + ".work")
    dirs = [*feature_dirs, *(default_work / d.name for d in feature_dirs)]
    try:
        labels = read_labels(training.get("archive") or "")
    except (OSError, ValueError):
        return []
    out = []
    for e in training.get("split", {}).get("train", ()):
        path = next((d / f"{e}.parquet" for d in dirs if (d / f"{e}.parquet").exists()), None)
        if path is not None and e in labels:
            out.append(Reference(e, labels[e], path))
    return out


def _half_split(labelled: list[tuple[str, str]], graded: list[str]):
    """(fit ids, compared ids): a seeded half of every class to fit on, the graded rest compared."""
    rng = np.random.default_rng(FALLBACK_SEED)
    fit: set[str] = set()
    for label in sorted({lab for _, lab in labelled}):
        group = sorted(e for e, lab in labelled if lab == label)
        rng.shuffle(group)
        fit.update(group[: len(group) // 2])
    return fit, {e for e in graded if e not in fit}


def _read_features(path: Path):

    return features_from_arrow(pq.read_table(path))


def mean_hits_vector(ccds: list, som) -> np.ndarray | None:
    """Mean CNN hits vector (Input-2) of CCDs, from their features alone.

    The vector depends on the features and the SOM, not on pixels, so the training set's mean
    can be computed from cached features without the training archive's files. CCDs that
    grading skips (no clean source) are left out, as in the training shards.

    Parameters
    ----------
    ccds : list of skygrade.transforms.extract.CcdFeatures
        Any number of CCDs, of any exposures.
    som : skygrade.models.som.SourceSom
        The bundle's SOM.

    Returns
    -------
    np.ndarray or None
        float32 (n_clusters + n_aux,), or None when no CCD has a clean source.
    """

    inputs = [ccd_inputs(ccd_hits(f, som)) for f in ccds]
    inputs = [x for x in inputs if x.reason is None]
    if not inputs:
        return None
    vectors = hit_vector(
        np.stack([x.hits for x in inputs]),
        np.array([x.n_sources for x in inputs]),
        np.array([x.exptime for x in inputs]),
        np.array([x.area_mpx for x in inputs]),
        stack_summaries([x.summary for x in inputs]),
    )
    return vectors.mean(0)
