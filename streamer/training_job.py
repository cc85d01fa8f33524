"""``skygrade train``: fit a model bundle on a labelled archive, as Beam batch jobs.

Four stages (see README "Training"): (1) features of every exposure, cached as parquet (a
retrain extracts only new exposures) - a Beam job; (2) a leakage-free split by night and the SOM
fitted on a sample of the training exposures' clean sources; (3) hits and representative images
of every CCD as per-exposure shards - a Beam job; (4) the CNN ensemble, trained with early
stopping, scored on the held-out part, and the bundle written atomically. With ``catalogs``,
SExtractor catalogs of the same exposures are trained on beside the pixels (catalog mode).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from skygrade.models.bundle import ModelBundle
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import CnnShape, input_columns
from skygrade.models.evaluate import mode_metrics
from skygrade.models.ood import fit_reference
from skygrade.models.som import feature_matrix, train_som
from skygrade.models.train import TrainSettings, predict, split_exposures, train_ensemble
from skygrade.ops.config import config_digest, with_backend
from skygrade.streamer.pipelines import build_dataset, cache_features, pipeline_options, work_dirs
from skygrade.transforms.dataset import find_archive
from skygrade.transforms.extract import features_from_arrow

log = logging.getLogger(__name__)


def sample_som_rows(features_dir: Path, exposure_ids, max_sources: int, seed: int):
    """Clean-source SOM rows from the cached features of ``exposure_ids``, at most
    ``max_sources`` in total, spread evenly over exposures (so every class and night counts)."""
    ids = [e for e in exposure_ids if (features_dir / f"{e}.parquet").exists()]
    if not ids:
        raise ValueError("no training exposure has features: nothing to fit the SOM on")
    per_exposure = max(1, max_sources // len(ids))
    rng = np.random.default_rng(seed)
    parts = []
    for exposure_id in ids:
        rows = [
            feature_matrix(c.sources, c.width, c.height)[0]
            for c in features_from_arrow(pq.read_table(features_dir / f"{exposure_id}.parquet"))
        ]
        rows = np.concatenate(rows) if rows else np.zeros((0, 8), np.float32)
        if len(rows) > per_exposure:
            rows = rows[rng.choice(len(rows), per_exposure, replace=False)]
        parts.append(rows)
    return np.concatenate(parts)


def training_digest(features_dir: Path, items) -> str:
    """sha256 (16 hex) over every training exposure's id, label and cached feature bytes."""
    h = hashlib.sha256()
    for item in sorted(items):
        path = features_dir / f"{item.exposure_id}.parquet"
        h.update(f"{item.exposure_id},{item.label},".encode())
        if path.exists():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def run_train(
    archive: str | os.PathLike,
    bundle_out: str | os.PathLike,
    cfg,
    options=None,
    work_dir: str | os.PathLike | None = None,
    progress=None,
    catalogs: str | os.PathLike | None = None,
) -> dict:
    """Train a model bundle on a labelled archive (see README "Training").

    With ``catalogs`` (a labelled archive of SExtractor catalogs of exposures of ``archive``,
    same exposure numbers), their features (cached under ``work_dir/catalog-features``) are
    trained on too, with the image flag 0 of catalog mode: each catalog follows its exposure's
    side of the split, and the SOM is fitted on sources of both. The held-out metrics then
    include ``catalog_files``: the test exposures' catalogs, graded as catalog mode grades.

    The four stages are the module's; the CNN is an ensemble of ``train.ensemble`` networks,
    seeds ``seed``, ``seed + 1``, ...

    Returns a summary dict (split sizes, metrics, bundle path).
    """
    say = progress or (lambda text: log.info("%s", text))
    bundle_out = Path(bundle_out)
    work = Path(work_dir) if work_dir else bundle_out.with_name(bundle_out.name + ".work")
    features_dir, shard_dir = work_dirs(work, cfg.extract.backend)
    cat_features, cat_shards = work_dirs(work, "catalog")
    options = options or pipeline_options()

    try:
        input_columns(0, cfg.train.inputs)
    except ValueError as exc:
        raise ValueError(f"train.inputs: {exc}") from None

    items = find_archive(archive)
    if not items:
        raise ValueError(f"{archive}: no labelled exposure found")
    counts = {c: sum(i.label == c for i in items) for c in CLASSES}
    say(f"archive: {len(items)} labelled exposures {counts}")
    cat_items = _catalog_items(items, archive, catalogs, cfg) if catalogs is not None else []

    # 1. features (cached)
    cache_features(items, features_dir, cfg, options, lambda text: say(f"stage 1/4 {text}"))
    if cat_items:
        say(f"catalogs: {len(cat_items)} of the archive's exposures in {catalogs}")
        catalog_cfg = with_backend(cfg, "catalog")
        stage = lambda text: say(f"stage 1/4 catalogs {text}")  # noqa: E731
        cache_features(cat_items, cat_features, catalog_cfg, options, stage)

    # 2. split + SOM
    tc = cfg.train
    split = split_exposures(
        [(i.exposure_id, i.night, i.label) for i in items],
        tc.val_fraction,
        tc.test_fraction,
        tc.seed,
    )
    say(
        f"stage 2/4 split by {split.by}: train {len(split.train)}, val {len(split.val)}, "
        f"test {len(split.test)} exposures; fitting the SOM"
    )
    som = _fit_som(cfg.som, split.train, features_dir, cat_features if cat_items else None, say)
    work.mkdir(parents=True, exist_ok=True)
    som_path = som.save(work / "som.npz")

    # 3. shards (rebuilt: they depend on the SOM)
    say("stage 3/4 hits and representative images of every CCD")
    data = build_dataset(items, features_dir, shard_dir, som_path, tc.tile, options)
    if data is None:
        raise ValueError(f"{archive}: no exposure yielded a usable CCD: nothing to train on")
    say(f"  {len(data)} CCD samples from {len(set(data.exposure.tolist()))} exposures")
    cat_data = (
        build_dataset(cat_items, cat_features, cat_shards, som_path, tc.tile, options)
        if cat_items
        else None
    )
    if cat_data is not None:
        say(f"  {len(cat_data)} catalog CCD samples from {len(cat_items)} catalogs")
    # the network reads the hit fractions and train.inputs, of the every-input vectors
    columns = input_columns(som.n_clusters, tc.inputs)
    data = dataclasses.replace(data, vector=data.vector[:, columns])
    if cat_data is not None:
        cat_data = dataclasses.replace(cat_data, vector=cat_data.vector[:, columns])
    fit_data = data if cat_data is None else type(data).concat([data, cat_data])

    # 4. CNN, scored on the held-out exposures, and the bundle
    settings = TrainSettings(
        epochs=tc.epochs,
        batch_size=tc.batch_size,
        learning_rate=tc.learning_rate,
        patience=tc.patience,
        modality_dropout=tc.modality_dropout,
        seed=tc.seed,
        ensemble=tc.ensemble,
    )
    shape = CnnShape(n_clusters=som.n_clusters, tile=tc.tile, n_aux=len(tc.inputs))
    model, history = _train_cnn(fit_data, split, shape, settings, say)
    metrics = {"history": history, **_held_out_metrics(model, data, cat_data, split, say)}
    manifest = {
        "version": dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M%S"),
        "cnn": {"aux_features": list(tc.inputs)},
        "training": {
            "archive": str(archive),
            "data_digest": training_digest(features_dir, items),
            "n_exposures": len(items),
            "n_ccd_samples": len(fit_data),
            "class_counts": counts,
            "catalogs": (
                {
                    "archive": str(catalogs),
                    "n_exposures": len(cat_items),
                    "data_digest": training_digest(cat_features, cat_items),
                }
                if cat_items
                else None
            ),
            "split": {
                "by": split.by,
                "train": list(split.train),
                "val": list(split.val),
                "test": list(split.test),
            },
            "settings": dataclasses.asdict(settings),
            "config_digest": config_digest(cfg),
        },
    }
    names = [f"hits_{i}" for i in range(som.n_clusters)] + list(tc.inputs)
    manifest["ood"] = fit_reference(fit_data.subset(split.train).vector, names)
    path = ModelBundle(som, model, manifest).save(bundle_out, metrics=metrics)
    say(f"bundle written: {path}")
    return {"bundle": path, "split": split, "metrics": metrics, "n_samples": len(data)}


def _catalog_items(items, archive, catalogs, cfg) -> list:
    """The catalogs of ``catalogs`` that are of exposures of ``archive``, with the same label."""
    if cfg.extract.backend == "catalog":
        raise ValueError("--catalogs needs a pixel archive (extract.backend sep or sextractor)")
    known = {i.exposure_id: i.label for i in items}
    cat_items = [i for i in find_archive(catalogs) if i.exposure_id in known]
    if not cat_items:
        raise ValueError(f"{catalogs}: no catalog of an exposure of {archive}")
    clash = [i.exposure_id for i in cat_items if i.label != known[i.exposure_id]]
    if clash:
        raise ValueError(
            f"{catalogs}: {len(clash)} catalog(s) labelled otherwise than their exposure in "
            f"{archive}, e.g. {', '.join(clash[:5])}"
        )
    return cat_items


def _fit_som(sc, train_ids, features_dir: Path, cat_features: Path | None, say):
    """The SOM, fitted on a sample of the training exposures' clean sources (half from the
    catalogs when there are catalogs: both kinds of measurement)."""
    if cat_features is not None:
        half = sc.max_train_sources // 2
        rows = np.concatenate(
            [
                sample_som_rows(features_dir, train_ids, half, sc.seed),
                sample_som_rows(cat_features, train_ids, half, sc.seed),
            ]
        )
    else:
        rows = sample_som_rows(features_dir, train_ids, sc.max_train_sources, sc.seed)
    som = train_som(
        rows,
        grid=tuple(sc.grid),
        sigma=sc.sigma,
        learning_rate=sc.learning_rate,
        iterations=sc.iterations,
        n_clusters=sc.n_clusters,
        seed=sc.seed,
    )
    say(
        f"  SOM {som.rows}x{som.cols} on {len(rows)} sources: "
        f"QE {som.meta['quantization_error']:.3f}, TE {som.meta['topographic_error']:.3f}"
    )
    return som


def _train_cnn(fit_data, split, shape, settings, say):
    """The CNN ensemble, trained on the training exposures, stopped on the validation ones."""
    n, seed = settings.ensemble, settings.seed
    say(
        f"stage 4/4 training the CNN: {n} member(s), seeds {seed}..{seed + n - 1}, "
        f"up to {settings.epochs} epochs each"
    )

    def epoch(e: dict) -> None:
        val = (
            f", val loss {e['val_loss']:.3f}, val acc {e['val_accuracy']:.3f}"
            if "val_loss" in e
            else ""
        )
        say(
            f"  member {e['member'] + 1}/{n} epoch {e['epoch']:3d}: "
            f"train loss {e['train_loss']:.3f}{val}"
        )

    return train_ensemble(
        fit_data.subset(split.train), fit_data.subset(split.val), shape, settings, progress=epoch
    )


def _held_out_metrics(model, data, cat_data, split, say) -> dict:
    """Metrics of the ensemble on the validation exposures and on the held-out (test, else
    validation) ones: full mode, catalog mode, and the held-out exposures' catalogs."""
    metrics = {}
    if split.val:  # the ensemble on the split its settings may be chosen by
        val = data.subset(split.val)
        metrics["validation"] = mode_metrics(val, predict(model, val))
    held_ids = split.test if split.test else split.val
    held_out = data.subset(held_ids)
    for mode, flags in (("full", None), ("catalog", np.zeros(len(held_out), np.float32))):
        metrics[mode] = mode_metrics(held_out, predict(model, held_out, flags))
    full = metrics["full"]["exposure"]
    say(
        f"held-out ({'test' if split.test else 'val'}) exposures: accuracy "
        f"{full['accuracy']:.3f}, macro-F1 {full['macro_f1']:.3f}; catalog mode accuracy "
        f"{metrics['catalog']['exposure']['accuracy']:.3f}"
    )
    cat_held = cat_data.subset(held_ids) if cat_data is not None else None
    if cat_held is not None and len(cat_held):
        metrics["catalog_files"] = mode_metrics(cat_held, predict(model, cat_held))
        m = metrics["catalog_files"]["exposure"]
        say(
            f"held-out SExtractor catalogs: {m['n']} exposures, accuracy {m['accuracy']:.3f}, "
            f"macro-F1 {m['macro_f1']:.3f}"
        )
    return metrics
