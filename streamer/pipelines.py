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
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
from google.protobuf import struct_pb2

from skygrade.models.bundle import read_manifest
from skygrade.models.train import Dataset
from skygrade.ops.config import config_digest
from skygrade.ops.files import atomic_write_text, write_parquet_atomic
from skygrade.streamer.ccd_pool import pooled, shutdown_pool
from skygrade.streamer.dask_runner import SkygradeDaskRunner, dask_options
from skygrade.streamer.progress import Progress
from skygrade.transforms.dataset import BuildShards, read_shard
from skygrade.transforms.exposure import exposure_id_from_path, read_meta
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import SepParams, features_to_arrow, make_backend
from skygrade.transforms.grades_dataset import GradesDataset
from skygrade.transforms.grading import GradeExposures
from skygrade.transforms.quarantine import QUARANTINE, Quarantined
from skygrade.transforms.sinks import WriteGrades
from skygrade.transforms.stages import EXPOSURES, MeasureExposures, OpenExposures

if TYPE_CHECKING:
    from skygrade.models.train import Dataset

log = logging.getLogger(__name__)

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner")
DASK_RUNNERS = ("DaskRunner", "dask")
"""Names that select :class:`skygrade.streamer.dask_runner.SkygradeDaskRunner` (imported only
then)."""


def pipeline_options(
    runner: str = "FnApiRunner", workers: int = 1, extra: Sequence[str] = ()
) -> PipelineOptions:
    """Pipeline options for ``runner`` with ``workers`` local worker processes.

    Parameters
    ----------
    runner : str
        ``FnApiRunner`` (default, in this process or ``workers`` subprocesses), ``DirectRunner``,
        ``dask`` / ``DaskRunner`` (:class:`skygrade.streamer.dask_runner.SkygradeDaskRunner`: one
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

    runner = options.view_as(StandardOptions).runner
    if runner == "FnApiRunner":
        return beam.Pipeline(
            runner=FnApiRunner(provision_info=_worker_provision()), options=options
        )
    if runner in DASK_RUNNERS:
        return beam.Pipeline(runner=SkygradeDaskRunner(), options=options)
    return beam.Pipeline(options=options)


# --------------------------------------------------------------------------- extract


class _WriteExposureFeatures(beam.DoFn):
    """(exposure_id, [CcdFeatures]) -> DIR/<exposure_id>.parquet (atomic); yields the path."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, item):

        exposure_id, ccds = item
        path = Path(self.out_dir) / f"{exposure_id}.parquet"
        write_parquet_atomic(features_to_arrow(list(ccds)), path)
        yield str(path)


class _WriteQuarantine(beam.DoFn):
    """Quarantine records -> DIR/_quarantine/<exposure_id>[.ccdNN].json (atomic)."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, record):

        name = record.exposure_id + ("" if record.ccd is None else f".ccd{record.ccd:02d}")
        path = Path(self.out_dir) / "_quarantine" / f"{name}.json"
        atomic_write_text(path, json.dumps(record._asdict(), indent=1))
        yield record


class _WriteMeasuredExposure(beam.DoFn):
    """:class:`~skygrade.transforms.ccd_chain.ExposureInputs` -> its CCDs' quarantine records, then
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
    :class:`~skygrade.transforms.stages.MeasureExposures`. Either way an exposure's parquet file is
    written as soon as its CCDs are measured, so an interrupted run keeps what it finished and
    shows progress.

    Returns
    -------
    dict
        ``written`` (parquet paths) and ``quarantined`` (records) read back from ``out_dir``.
    """

    out_dir = str(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    make_backend(backend, params)  # an unknown name is refused with the valid ones
    extract = dataclasses.replace(params or SepParams(), backend=backend)
    # refuses a bad backend or pool size now
    measure = MeasureExposures(extract, pooled(ccd_workers))
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

    out = Path(out_dir)
    quarantined = [
        Quarantined(**json.loads(p.read_text())) for p in sorted(out.glob("_quarantine/*.json"))
    ]
    return {"written": sorted(out.glob("*.parquet")), "quarantined": quarantined}


# --------------------------------------------------------------------------- features


def cache_features(items, features_dir: Path, cfg, options: PipelineOptions, say=None) -> list:
    """Extract the features of the :class:`~skygrade.transforms.dataset.ArchiveItem` s not yet
    cached under ``features_dir`` (one parquet file per exposure; quarantined ones are not retried).

    With a local runner and several workers, the CCDs are measured in a process pool beside
    an in-process pipeline (:func:`run_extract` ``ccd_workers``): each exposure is written as
    soon as it is done, so an interrupted run loses at most the exposures in flight, and the
    progress line counts them. Other runners spread the CCDs with Beam.

    ``say`` gets one line ("N cached, extracting M") before the Beam job runs; a progress line
    (stderr) follows the files as they land. Returns the paths that were extracted.
    """

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

        self.directory, self.ids, self.label = Path(directory), list(ids), label
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="files-progress", daemon=True)

    def _count(self) -> int:
        quarantined = _quarantined(self.directory)
        return sum(_feature_cached(self.directory, e, quarantined) for e in self.ids)

    def _run(self) -> None:

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

    Runs :class:`~skygrade.transforms.dataset.BuildShards` as a Beam job into ``shard_dir`` (emptied
    first: shards depend on the SOM) and reads the shards back in ``items`` order.

    Returns
    -------
    skygrade.models.train.Dataset or None
        Image flag 1 where the CCD's pixels gave its representative image, 0 for CCDs read
        from SExtractor catalogs; None when no exposure yielded a usable CCD.
    """

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
    call (see :mod:`skygrade.streamer.ccd_pool`); 0 lets the runner spread them.

    Returns the exposure rows written (graded and quarantined), sorted by exposure id.
    """

    paths = [str(p) for p in paths]
    with make_pipeline(options or pipeline_options()) as p:
        _ = (
            p
            | "ExposurePaths" >> beam.Create(paths)
            | "GradeExposures"
            >> GradeExposures(
                bundle, cfg.extract, config_digest(cfg), arrivals, ccd_pool=pooled(ccd_workers)
            )
            | "WriteGrades" >> WriteGrades(out_dir)
        )

    version = str(read_manifest(bundle)["version"])
    return sorted(read_rows(out_dir, paths, version), key=lambda r: r["exposure_id"])


def read_rows(out_dir: str | os.PathLike, paths: Sequence[str], model_version: str) -> list[dict]:
    """The exposure rows of ``paths`` graded with ``model_version``, read by file name (not by
    scanning the whole dataset, which grows all night)."""

    dataset = GradesDataset(out_dir)
    rows = []
    for path in paths:
        try:
            exposure_id = read_meta(path).exposure_id
        except (ExposureError, OSError, ValueError):
            exposure_id = exposure_id_from_path(path)
        rows += [r for r in dataset.rows_of(exposure_id, model_version) if r["path"] == str(path)]
    return rows
