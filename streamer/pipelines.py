"""Entry points that build and run skygrade's Beam pipelines.

Each entry is ``run_*(..., options=None)``: it builds the pipeline from transforms, runs it to
completion and returns a small summary. Runners are chosen explicitly (never Beam's default
Prism runner, which downloads a binary at run time).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

if TYPE_CHECKING:
    from models.train import Dataset

log = logging.getLogger(__name__)

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner")
DASK_RUNNERS = ("DaskRunner", "dask")
"""Names that select :class:`streamer.dask_runner.SkygradeDaskRunner` (imported only then)."""


def pipeline_options(
    runner: str = "FnApiRunner", workers: int = 1, extra: Sequence[str] = ()
) -> PipelineOptions:
    """Pipeline options for ``runner`` with ``workers`` local worker processes.

    Parameters
    ----------
    runner : str
        ``FnApiRunner`` (default, in this process or ``workers`` subprocesses), ``DirectRunner``,
        ``dask`` / ``DaskRunner`` (:class:`streamer.dask_runner.SkygradeDaskRunner`: one
        ``Create`` element per Dask partition; a local cluster of ``workers`` processes unless
        ``extra`` names a scheduler, ``--dask_client_address=ADDRESS``), or any Beam runner
        name (``FlinkRunner``, ``SparkRunner``, ``DataflowRunner``...) whose own options go in
        ``extra`` (see docs/runners.md).
    workers : int
        Local worker processes (``direct_num_workers``, or the local Dask cluster's size);
        1 runs in process.
    extra : sequence of str
        More ``--flag=value`` pipeline options, passed through.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if runner in DASK_RUNNERS:
        from streamer.dask_runner import dask_options

        runner = "DaskRunner"
        sized = any(e.startswith(("--dask_npartitions", "--dask_partition_size")) for e in extra)
        extra = [*dask_options(workers, partition_size=None if sized else 1), *extra]
    args = [f"--runner={runner}", *extra]
    if runner in LOCAL_RUNNERS:
        mode = "multi_processing" if workers > 1 else "in_memory"
        args += [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]
    return PipelineOptions(args)


def _worker_provision():
    """Provision info for local worker subprocesses: they log every start-up step at INFO to
    our stderr unless their pipeline options (empty by default) set a level."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
    from google.protobuf import struct_pb2

    level = "INFO" if logging.getLogger().isEnabledFor(logging.DEBUG) else "WARNING"
    options = struct_pb2.Struct()
    options.update({"default_sdk_harness_log_level": level})
    return ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(
            retrieval_token="unused-retrieval-token", pipeline_options=options
        )
    )


def make_pipeline(options: PipelineOptions) -> beam.Pipeline:
    """A pipeline on the runner named in ``options`` (FnApiRunner and the Dask runner built
    directly: Beam does not know ``DaskRunner`` by its short name)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(
            runner=FnApiRunner(provision_info=_worker_provision()), options=options
        )
    if runner in DASK_RUNNERS:
        from streamer.dask_runner import SkygradeDaskRunner

        return beam.Pipeline(runner=SkygradeDaskRunner(), options=options)
    return beam.Pipeline(options=options)


# --------------------------------------------------------------------------- extract


class _WriteExposureFeatures(beam.DoFn):
    """(exposure_id, [CcdFeatures]) -> DIR/<exposure_id>.parquet (atomic); yields the path."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, item):
        from ops.files import write_parquet_atomic
        from transforms.extract import features_to_arrow

        exposure_id, ccds = item
        path = Path(self.out_dir) / f"{exposure_id}.parquet"
        write_parquet_atomic(features_to_arrow(list(ccds)), path)
        yield str(path)


class _WriteQuarantine(beam.DoFn):
    """Quarantine records -> DIR/_quarantine/<exposure_id>[.ccdNN].json (atomic)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, record):
        from ops.files import atomic_write_text

        name = record.exposure_id + ("" if record.ccd is None else f".ccd{record.ccd:02d}")
        path = Path(self.out_dir) / "_quarantine" / f"{name}.json"
        atomic_write_text(path, json.dumps(record._asdict(), indent=1))
        yield record


class _WriteMeasuredExposure(beam.DoFn):
    """:class:`~transforms.ccd_chain.ExposureInputs` -> its CCDs' quarantine records, then
    DIR/<exposure_id>.parquet (written last: it marks the exposure done); yields the path."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def setup(self) -> None:
        self.quarantine = _WriteQuarantine(self.out_dir)
        self.features = _WriteExposureFeatures(self.out_dir)

    def process(self, measured):
        for record in measured.bad:
            yield from self.quarantine.process(record)
        if measured.ccds:
            yield from self.features.process((measured.meta.exposure_id, measured.ccds))


def run_extract(
    paths: Sequence[str],
    out_dir: str | os.PathLike,
    backend: str = "sep",
    params=None,
    options: PipelineOptions | None = None,
    ccd_workers: int = 0,
) -> dict:
    """Extract features of ``paths`` into ``out_dir`` (one parquet file per exposure).

    ``ccd_workers`` > 0 measures each exposure's CCDs in a process pool that outlives the
    pipeline (for a pipeline in this process), 0 spreads them with Beam (any runner); see
    :class:`~transforms.stages.MeasureExposures`. Either way an exposure's parquet file is
    written as soon as its CCDs are measured, so an interrupted run keeps what it finished and
    shows progress.

    Returns
    -------
    dict
        ``written`` (parquet paths) and ``quarantined`` (records) read back from ``out_dir``.
    """
    from transforms.extract import SepParams, make_backend
    from transforms.quarantine import QUARANTINE
    from transforms.stages import EXPOSURES, MeasureExposures, OpenExposures

    out_dir = str(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    make_backend(backend, params)  # an unknown name is refused with the valid ones
    extract = dataclasses.replace(params or SepParams(), backend=backend)
    measure = MeasureExposures(extract, ccd_workers)  # refuses a bad backend or pool size now
    with make_pipeline(options or pipeline_options()) as p:
        paths = p | "ExposurePaths" >> beam.Create([str(x) for x in paths])
        opened = paths | "OpenExposures" >> OpenExposures(extract)
        _ = (
            opened[EXPOSURES]
            | "MeasureExposures" >> measure
            | "WriteExposures" >> beam.ParDo(_WriteMeasuredExposure(out_dir))
        )
        _ = opened[QUARANTINE] | "WriteQuarantine" >> beam.ParDo(_WriteQuarantine(out_dir))
    return summarize_extract(out_dir)


def summarize_extract(out_dir: str | os.PathLike) -> dict:
    """What an extract run left in ``out_dir``: parquet files and quarantine records."""
    from transforms.quarantine import Quarantined

    out = Path(out_dir)
    quarantined = [
        Quarantined(**json.loads(p.read_text())) for p in sorted(out.glob("_quarantine/*.json"))
    ]
    return {"written": sorted(out.glob("*.parquet")), "quarantined": quarantined}


# --------------------------------------------------------------------------- train


def sample_som_rows(features_dir: Path, exposure_ids, max_sources: int, seed: int):
    """Clean-source SOM rows from the cached features of ``exposure_ids``, at most
    ``max_sources`` in total, spread evenly over exposures (so every class and night counts)."""
    import numpy as np

    from models.som import feature_matrix
    from transforms.extract import features_from_arrow

    ids = [e for e in exposure_ids if (features_dir / f"{e}.parquet").exists()]
    if not ids:
        raise ValueError("no training exposure has features: nothing to fit the SOM on")
    per_exposure = max(1, max_sources // len(ids))
    rng = np.random.default_rng(seed)
    parts = []
    for exposure_id in ids:
        import pyarrow.parquet as pq

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
    import hashlib

    h = hashlib.sha256()
    for item in sorted(items):
        path = features_dir / f"{item.exposure_id}.parquet"
        h.update(f"{item.exposure_id},{item.label},".encode())
        if path.exists():
            h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()[:16]


def cache_features(items, features_dir: Path, cfg, options: PipelineOptions, say=None) -> list:
    """Extract the features of the :class:`~transforms.dataset.ArchiveItem` s not yet cached
    under ``features_dir`` (one parquet file per exposure; quarantined ones are not retried).

    With a local runner and several workers, the CCDs are measured in a process pool beside
    an in-process pipeline (:func:`run_extract` ``ccd_workers``): each exposure is written as
    soon as it is done, so an interrupted run loses at most the exposures in flight, and the
    progress line counts them. Other runners spread the CCDs with Beam.

    ``say`` gets one line ("N cached, extracting M") before the Beam job runs; a progress line
    (stderr) follows the files as they land. Returns the paths that were extracted.
    """
    from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

    features_dir = Path(features_dir)
    quarantined = _quarantined(features_dir)
    todo_items = [i for i in items if not _feature_cached(features_dir, i.exposure_id, quarantined)]
    todo = [i.path for i in todo_items]
    if say is not None:
        say(f"features: {len(items) - len(todo)} cached, extracting {len(todo)}")
    if not todo:
        return todo
    runner = options.view_as(StandardOptions).runner
    workers = options.view_as(DirectOptions).direct_num_workers or 1
    pooled = runner in LOCAL_RUNNERS and workers > 1 and cfg.extract.backend != "catalog"
    ids = [i.exposure_id for i in todo_items]
    with _FilesProgress(features_dir, ids, "features" if say is not None else None):
        if pooled:
            from transforms.ccd_pool import shutdown_pool

            try:
                run_extract(
                    todo,
                    features_dir,
                    cfg.extract.backend,
                    cfg.extract,
                    pipeline_options(runner, 1),
                    ccd_workers=workers,
                )
            finally:
                shutdown_pool()
        else:
            run_extract(todo, features_dir, cfg.extract.backend, cfg.extract, options)
    return todo


def _quarantined(features_dir: Path) -> set[str]:
    """Exposures with a quarantine record under ``features_dir``: <exposure_id>.json or
    <exposure_id>.ccdNN.json (an exposure whose every CCD was quarantined has no parquet
    file and is not extracted again on every retrain)."""
    return {re.sub(r"\.ccd\d+$", "", p.stem) for p in (features_dir / "_quarantine").glob("*.json")}


def work_dirs(work: Path, backend: str) -> tuple[Path, Path]:
    """Feature cache and shard directories under ``work`` for an extraction backend.

    Catalog features live apart (``catalog-features``, ``catalog-shards``) from the pixel
    backends' (``features``, ``shards``): the same exposure number can have both, and a
    cache must never hand one kind of measurement to a run that asked for the other.
    """
    if backend == "catalog":
        return work / "catalog-features", work / "catalog-shards"
    return work / "features", work / "shards"


def _feature_cached(features_dir: Path, exposure_id: str, quarantined: set[str]) -> bool:
    return (features_dir / f"{exposure_id}.parquet").exists() or exposure_id in quarantined


class _FilesProgress:
    """A progress line (stderr) for a Beam job that writes one file per exposure: a thread
    counts the exposures of ``ids`` that have their parquet file or a quarantine record in
    ``directory``. Runner-agnostic: it watches the results, not the workers. ``label`` None:
    silent."""

    def __init__(self, directory: Path, ids: Sequence[str], label: str | None) -> None:
        import threading

        self.directory, self.ids, self.label = Path(directory), list(ids), label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="files-progress", daemon=True)

    def _count(self) -> int:
        quarantined = _quarantined(self.directory)
        return sum(_feature_cached(self.directory, e, quarantined) for e in self.ids)

    def _run(self) -> None:
        from streamer.progress import Progress

        bar = Progress(len(self.ids), self.label, min_interval_s=30.0)
        seen = 0
        while True:
            stopping = self._stop.wait(2.0)
            done = self._count()
            if done > seen:
                bar.update(done - seen)
                seen = done
            if stopping:
                break
        bar.close()

    def __enter__(self):
        if self.label is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


def build_dataset(
    items, features_dir: Path, shard_dir: Path, som_path, tile: int, options: PipelineOptions
) -> Dataset | None:
    """CNN inputs of every usable CCD of ``items``, built with the SOM at ``som_path``.

    Runs :class:`~transforms.dataset.BuildShards` as a Beam job into ``shard_dir`` (emptied
    first: shards depend on the SOM) and reads the shards back in ``items`` order.

    Returns
    -------
    models.train.Dataset or None
        Image flag 1 where the CCD's pixels gave its representative image, 0 for CCDs read
        from SExtractor catalogs; None when no exposure yielded a usable CCD.
    """
    import shutil

    import numpy as np

    from models.train import Dataset
    from transforms.dataset import BuildShards, read_shard

    shard_dir = Path(shard_dir)
    shutil.rmtree(shard_dir, ignore_errors=True)
    with make_pipeline(options) as p:
        _ = (
            p
            | "ArchiveItems" >> beam.Create(list(items))
            | "BuildShards" >> BuildShards(features_dir, shard_dir, som_path, tile)
        )
    parts = []
    for item in items:
        path = shard_dir / f"{item.exposure_id}.npz"
        if not path.exists():
            continue
        s = read_shard(path)
        n = len(s["label"])
        if n:
            parts.append(
                Dataset(
                    s["image"].astype(np.float32),
                    s["vector"],
                    s["flag"],
                    s["label"],
                    np.full(n, item.exposure_id, dtype=object),
                )
            )
    return Dataset.concat(parts) if parts else None


def run_train(
    archive: str | os.PathLike,
    bundle_out: str | os.PathLike,
    cfg,
    options: PipelineOptions | None = None,
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

    Stages: (1) features of every exposure, cached as parquet under ``work_dir/features`` (a
    retrain extracts only new exposures) - a Beam job; (2) leakage-free split; SOM fit on a
    sample of the training exposures' clean sources; (3) hits + representative images of every
    CCD as per-exposure shards - a Beam job; (4) CNN training with early stopping (an
    ensemble of ``train.ensemble`` networks, seeds ``seed``, ``seed + 1``, ...), metrics on
    the held-out part, bundle written atomically.

    Returns a summary dict (split sizes, metrics, bundle path).
    """
    import datetime as dt

    import numpy as np

    from models.bundle import ModelBundle
    from models.classes import CLASSES
    from models.cnn import AUX_FEATURES, CnnShape
    from models.evaluate import mode_metrics
    from models.ood import fit_reference
    from models.som import train_som
    from models.train import TrainSettings, predict, split_exposures, train_ensemble
    from ops.config import config_digest, with_backend
    from transforms.dataset import find_archive

    say = progress or (lambda text: log.info("%s", text))
    bundle_out = Path(bundle_out)
    work = Path(work_dir) if work_dir else bundle_out.with_name(bundle_out.name + ".work")
    features_dir, shard_dir = work_dirs(work, cfg.extract.backend)
    options = options or pipeline_options()

    items = find_archive(archive)
    if not items:
        raise ValueError(f"{archive}: no labelled exposure found")
    counts = {c: sum(i.label == c for i in items) for c in CLASSES}
    say(f"archive: {len(items)} labelled exposures {counts}")

    cat_items, (cat_features, cat_shards) = [], work_dirs(work, "catalog")
    if catalogs is not None:
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

    # 1. features (cached)
    cache_features(items, features_dir, cfg, options, lambda text: say(f"stage 1/4 {text}"))
    if cat_items:
        say(f"catalogs: {len(cat_items)} of the archive's exposures in {catalogs}")
        cache_features(
            cat_items,
            cat_features,
            with_backend(cfg, "catalog"),
            options,
            lambda text: say(f"stage 1/4 catalogs {text}"),
        )

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
    sc = cfg.som
    if cat_items:  # half the sample from each kind of measurement
        half = sc.max_train_sources // 2
        rows = np.concatenate(
            [
                sample_som_rows(features_dir, split.train, half, sc.seed),
                sample_som_rows(cat_features, split.train, half, sc.seed),
            ]
        )
    else:
        rows = sample_som_rows(features_dir, split.train, sc.max_train_sources, sc.seed)
    som = train_som(
        rows,
        grid=tuple(sc.grid),
        sigma=sc.sigma,
        learning_rate=sc.learning_rate,
        iterations=sc.iterations,
        n_clusters=sc.n_clusters,
        seed=sc.seed,
    )
    work.mkdir(parents=True, exist_ok=True)
    som_path = som.save(work / "som.npz")
    say(
        f"  SOM {som.rows}x{som.cols} on {len(rows)} sources: "
        f"QE {som.meta['quantization_error']:.3f}, TE {som.meta['topographic_error']:.3f}"
    )

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
    fit_data = data if cat_data is None else type(data).concat([data, cat_data])

    # 4. CNN
    shape = CnnShape(n_clusters=som.n_clusters, tile=tc.tile)
    settings = TrainSettings(
        epochs=tc.epochs,
        batch_size=tc.batch_size,
        learning_rate=tc.learning_rate,
        patience=tc.patience,
        modality_dropout=tc.modality_dropout,
        seed=tc.seed,
        ensemble=tc.ensemble,
    )
    say(
        f"stage 4/4 training the CNN: {tc.ensemble} member(s), seeds {tc.seed}.."
        f"{tc.seed + tc.ensemble - 1}, up to {tc.epochs} epochs each"
    )
    model, history = train_ensemble(
        fit_data.subset(split.train),
        fit_data.subset(split.val),
        shape,
        settings,
        progress=lambda e: say(
            f"  member {e['member'] + 1}/{tc.ensemble} epoch {e['epoch']:3d}: "
            f"train loss {e['train_loss']:.3f}"
            + (
                f", val loss {e['val_loss']:.3f}, val acc {e['val_accuracy']:.3f}"
                if "val_loss" in e
                else ""
            )
        ),
    )
    metrics = {"history": history}
    if split.val:  # the ensemble on the split its settings may be chosen by
        metrics["validation"] = mode_metrics(
            data.subset(split.val), predict(model, data.subset(split.val))
        )
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
    manifest = {
        "version": dt.datetime.now(dt.UTC).strftime("%Y.%m.%d-%H%M%S"),
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
    train_vectors = fit_data.subset(split.train).vector
    names = [f"hits_{i}" for i in range(som.n_clusters)] + list(AUX_FEATURES)
    manifest["ood"] = fit_reference(train_vectors, names)
    path = ModelBundle(som, model, manifest).save(bundle_out, metrics=metrics)
    say(f"bundle written: {path}")
    return {"bundle": path, "split": split, "metrics": metrics, "n_samples": len(data)}


# --------------------------------------------------------------------------- grade


def run_grade(
    paths: Sequence[str],
    out_dir: str | os.PathLike,
    bundle: str | os.PathLike,
    cfg,
    options: PipelineOptions | None = None,
    arrivals=None,
    ccd_workers: int = 0,
) -> list[dict]:
    """Grade ``paths`` with the model ``bundle`` into the parquet dataset at ``out_dir``.

    ``ccd_workers`` > 0 measures each exposure's CCDs in a process pool that outlives this
    call (see :mod:`transforms.ccd_pool`); 0 lets the runner spread them.

    Returns the exposure rows written (graded and quarantined), sorted by exposure id.
    """
    from ops.config import config_digest
    from transforms.grading import GradeExposures
    from transforms.sinks import WriteGrades

    paths = [str(p) for p in paths]
    with make_pipeline(options or pipeline_options()) as p:
        _ = (
            p
            | "ExposurePaths" >> beam.Create(paths)
            | "GradeExposures"
            >> GradeExposures(
                bundle, cfg.extract, config_digest(cfg), arrivals, ccd_workers=ccd_workers
            )
            | "WriteGrades" >> WriteGrades(out_dir)
        )
    from models.bundle import read_manifest

    version = str(read_manifest(bundle)["version"])
    return sorted(read_rows(out_dir, paths, version), key=lambda r: r["exposure_id"])


def read_rows(out_dir: str | os.PathLike, paths: Sequence[str], model_version: str) -> list[dict]:
    """The exposure rows of ``paths`` graded with ``model_version``, read by file name (not by
    scanning the whole dataset, which grows all night)."""
    from transforms.exposure import exposure_id_from_path, read_meta
    from transforms.exposure_errors import ExposureError
    from transforms.grades_dataset import GradesDataset

    dataset = GradesDataset(out_dir)
    rows = []
    for path in paths:
        try:
            exposure_id = read_meta(path).exposure_id
        except (ExposureError, OSError, ValueError):
            exposure_id = exposure_id_from_path(path)
        rows += [r for r in dataset.rows_of(exposure_id, model_version) if r["path"] == str(path)]
    return rows
