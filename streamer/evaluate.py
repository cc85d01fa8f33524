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

The numerical work lives in :mod:`skygrade.models.evaluate`, the exposure-level tables (pipeline,
exposure rules, agreement with the person) in :mod:`skygrade.streamer.evaluation_tables`, the
Markdown and the PNG in :mod:`skygrade.streamer.evaluation_report`; the shared stages come from
:mod:`skygrade.streamer.pipelines` (the same code :func:`skygrade.streamer.training_job.run_train`
runs).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

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
from skygrade.models.train import classification_metrics
from skygrade.ops.files import atomic_write_text
from skygrade.streamer.evaluation_report import plot_confusion, render_markdown
from skygrade.streamer.evaluation_tables import (
    agreement,
    pipeline_metrics,
    read_features,
    rule_comparison,
)
from skygrade.streamer.pipelines import (
    build_dataset,
    cache_features,
    pipeline_options,
    work_dirs,
)
from skygrade.transforms.dataset import find_archive, read_label_sets, read_labels
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


class Selection(NamedTuple):
    """Which exposures of the archive are evaluated, and which are extracted for it."""

    seen: set[str]  # the archive's exposures the bundle knows (its training archive)
    evaluated: list  # the exposures reported on
    scope: dict  # the report's ``scope`` (kind, text, counts)
    extract: list  # the exposures whose features are needed (evaluated, and the reference)


class Fit(NamedTuple):
    """What the baseline (and the image-only mean vector) is fitted on."""

    reference: list[Reference]  # the bundle's training exposures, else a half of this archive
    fit_on: str  # the words saying which, for the progress line and the report
    compared: set[str]  # the graded exposures all methods are compared on
    fallback: bool  # whether it fell back to the seeded half of this archive
    notes: list[str]  # the report's notes this choice calls for


class Baseline(NamedTuple):
    """The threshold tree fitted on the reference set, and its metrics on the compared
    exposures."""

    tree: object
    min_leaf: int
    compared_ids: list[str]
    metrics: dict


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
    chosen = _select_exposures(items, split, training, archive, bundle_path)
    evaluated = chosen.evaluated
    say(f"evaluating {len(evaluated)} of {len(items)} exposures ({chosen.scope['kind']})")

    # 1. features (cached)
    cache_features(chosen.extract, features_dir, cfg, options, lambda t: say(f"stage 1/5 {t}"))

    # 2. CNN inputs with the bundle's SOM and tile
    say(f"stage 2/5 hits and representative images with the bundle's SOM (tile {bundle.tile})")
    som_path = bundle_path / bundle.manifest["som"]["file"]
    data = build_dataset(evaluated, features_dir, shard_dir, som_path, bundle.tile, options)
    if data is None:
        raise ValueError(f"{archive}: no evaluated exposure yielded a usable CCD")
    graded = sorted(set(data.exposure.tolist()))
    say(f"  {len(data)} CCDs of {len(graded)} exposures")

    # reference set: the bundle's training exposures, else a seeded half of this archive
    fit = _reference_set(chosen, items, split, graded, features_dir, bundle_path, training)
    if not fit.reference:
        raise ValueError(f"{archive}: no labelled exposure with features to fit the baseline on")
    ref_ccds = [read_features(r.features) for r in fit.reference]

    # 3. CNN probabilities in every mode
    say("stage 3/5 CNN probabilities: full, catalog mode, image-only")
    probs = _cnn_probabilities(bundle, data, ref_ccds)
    cnn = {mode: mode_metrics(data, p) for mode, p in probs.items()}

    # 4. traditional baseline
    say(f"stage 4/5 threshold-tree baseline fitted on {fit.fit_on}")
    baseline = _fit_baseline(fit, ref_ccds, evaluated, features_dir)
    for rule in baseline.tree.describe():
        say(f"  {rule}")

    # 5. report
    say("stage 5/5 report")
    report = _evaluation_report(
        bundle_path,
        bundle,
        archive,
        cfg,
        chosen,
        data,
        graded,
        probs,
        cnn,
        fit,
        baseline,
        features_dir,
    )
    paths = _write_report(report, cnn, graded, out_dir)
    say(f"report written: {paths['markdown']}")
    return {"report": report, "paths": paths, "evaluated": graded}


def _select_exposures(items, split: dict, training: dict, archive, bundle_path: Path) -> Selection:
    """Which exposures are evaluated (the held-out test ones of the bundle's training archive,
    else all), the report's scope, and which are extracted (those, and the training ones)."""

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
    return Selection(seen, evaluated, scope, extract)


def _reference_set(
    chosen: Selection,
    items,
    split: dict,
    graded: list[str],
    features_dir: Path,
    bundle_path: Path,
    training: dict,
) -> Fit:
    """What the baseline is fitted on: the bundle's training exposures with cached features,
    else (too few of them) a seeded half of the evaluated ones, the other half compared."""

    if chosen.seen:
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
        evaluated = chosen.evaluated
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
    return Fit(reference, fit_on, compared, fallback, notes)


def _cnn_probabilities(bundle, data, ref_ccds: list) -> dict[str, np.ndarray]:
    """The CNN's CCD probabilities in every mode (:func:`skygrade.models.evaluate.ablation_probs`),
    the image-only mode with the reference CCDs' mean hits vector; the network reads the
    inputs its bundle names (:meth:`~skygrade.models.bundle.ModelBundle.select_inputs`)."""

    data = replace(data, vector=bundle.select_inputs(data.vector))
    mean_vector = mean_hits_vector([c for ccds in ref_ccds for c in ccds], bundle.som)
    if mean_vector is None:  # no reference CCD with a clean source: the evaluated CCDs' mean
        mean_vector = data.vector.mean(0)
    else:
        mean_vector = bundle.select_inputs(mean_vector[None])[0]
    return ablation_probs(bundle.cnn, data, mean_vector)


def _fit_baseline(fit: Fit, ref_ccds: list, evaluated, features_dir: Path) -> Baseline:
    """Fit the threshold tree on the reference exposures' statistics and score it on the
    compared exposures that have cached features and a label."""

    ref_stats = [exposure_statistics(ccds) for ccds in ref_ccds]
    reference, compared = fit.reference, fit.compared
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
        [exposure_statistics(read_features(features_dir / f"{e}.parquet")) for e in compared_ids]
    )
    truth = np.array([CLASSES.index(labels[e]) for e in compared_ids], dtype=int)
    base_metrics = classification_metrics(truth, tree.predict_proba(X))
    return Baseline(tree, min_leaf, compared_ids, base_metrics)


def _evaluation_report(
    bundle_path: Path,
    bundle,
    archive,
    cfg,
    chosen: Selection,
    data,
    graded: list[str],
    probs: dict,
    cnn: dict,
    fit: Fit,
    baseline: Baseline,
    features_dir: Path,
) -> dict:
    """The dict written to ``report.json``: :func:`skygrade.models.evaluate.build_report` of every
    stage's results, the notes that explain them, the pipeline, rule and agreement tables."""

    training = bundle.manifest.get("training", {})
    evaluated = chosen.evaluated
    comparison = _comparison(data, probs, graded, fit, baseline)
    pipeline, rules, agree_rows, notes = _exposure_tables(
        cfg, archive, data, probs["full"], evaluated, graded, features_dir, fit.notes
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
        scope={**chosen.scope, "n_evaluated": len(evaluated), "n_graded": len(graded)},
        cnn=cnn,
        baseline={
            "fit_on": fit.fit_on,
            "n_fit": len(fit.reference),
            "fit_ids": sorted(r.exposure_id for r in fit.reference),
            "depth": TREE_DEPTH,
            "min_leaf": baseline.min_leaf,
            "rules": baseline.tree.describe(),
            "metrics": baseline.metrics,
        },
        comparison=comparison,
        notes=notes,
    )
    report["scope"]["exposure_ids"] = graded
    report["pipeline"] = pipeline
    report["rules"] = rules
    report["agreement"] = agree_rows
    return report


def _comparison(data, probs: dict, graded: list[str], fit: Fit, baseline: Baseline) -> dict:
    """The report's side-by-side table: every CNN mode and the baseline on the same exposures."""

    compared_ids = baseline.compared_ids
    keep = np.isin(data.exposure, compared_ids)
    part = data.subset(compared_ids)
    cnn_compared = {mode: mode_metrics(part, p[keep]) for mode, p in probs.items()}
    compared_text = (
        f"All methods on the same {len(compared_ids)} exposures"
        + (
            f" (the half of the archive the baseline was not fitted on; the per-mode sections "
            f"below cover all {len(graded)} graded exposures)"
            if fit.fallback
            else ""
        )
        + ". Exposure metrics use the grading rule (mean of the CCD "
        "probabilities); ECE is the expected calibration error of the exposure probabilities."
    )
    return {
        "text": compared_text,
        "exposure_ids": compared_ids,
        "rows": comparison_rows(cnn_compared, baseline.metrics),
    }


def _exposure_tables(
    cfg, archive, data, full: np.ndarray, evaluated, graded: list[str], features_dir: Path, notes
) -> tuple[dict, dict, dict, list[str]]:
    """(pipeline, rules, agreement, notes): the exposure-level tables of
    :mod:`skygrade.streamer.evaluation_tables` from the full-mode probabilities ``full``, and
    ``notes`` followed by the notes that explain them."""

    notes = list(notes)
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
    pipeline = pipeline_metrics(data, full, evaluated, features_dir)
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
    rules = rule_comparison(data, full)
    r = rules
    notes.append(
        f"Exposure rule: the mean of the CCDs' probabilities (shipped) grades {r['mean']:.1%} "
        f"of the {r['n']} exposures right, the normalised geometric mean {r['geometric']:.1%}, "
        f"the vote pool (half vote shares, half mean) {r['vote']:.1%}."
    )
    agree_rows = agreement(data, full, evaluated, read_label_sets(archive).also)
    if agree_rows["n_also"]:
        a = agree_rows
        notes.append(
            f"Manual grades are noisy: {a['n_also']} exposure(s) carry other grades a person gave "
            f"them (labels.csv `also`). Counting a grade in `label` or `also` as agreement, the "
            f"network agrees with the person on {a['n_agree']} of {a['n']} graded exposures "
            "(table 'Agreement with the person')."
        )
    return pipeline, rules, agree_rows, notes


def _write_report(report: dict, cnn: dict, graded: list[str], out_dir: Path) -> dict:
    """Write ``report.md``, ``report.json`` and ``confusion.png`` into ``out_dir``; their paths."""

    out_dir.mkdir(parents=True, exist_ok=True)
    return {
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
