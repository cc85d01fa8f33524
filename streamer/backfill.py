"""``skygrade backfill``: grade an archive of exposures with Beam batch jobs.

The job is the same :class:`~skygrade.transforms.grading.GradeExposures` as the daemon and
``skygrade grade``; what this module adds is the bookkeeping of a long batch run:

* **Idempotent.** Before the job starts, the exposure rows already in the dataset are read
  (``exposure_id``, ``model_version``, ``config_digest``); an exposure that already has a row
  with this bundle's model version *and* this configuration's digest is skipped (graded and
  quarantined rows alike; ``--force`` regrades them).
* **One row per exposure per model version.** The dataset's one naming scheme
  (:meth:`~skygrade.transforms.grades_dataset.GradesDataset.paths`): a backfill writes
  ``exposures/night=N/<exposure_id>.<model_version>.parquet`` (and the same name under
  ``ccds/``), so grading an archive with a new model adds rows beside the old version's
  instead of replacing them. A regrade with the same model version (``--force``, or a new
  config digest) replaces the file that already holds that version's row, whatever its name
  (the daemon's ``<exposure_id>.parquet`` included), so the version stays unique.
* **Resumable.** Each exposure's files are written atomically, exposure file last (the
  commit mark), so after a crash a rerun finds what is done and grades only the rest. The
  archive goes through in batches of ``batch_size`` exposures, one Beam job each: the grading
  job groups by exposure, so one job writes nothing until all its exposures are measured.
* **Followable.** The driver watches the exposure files appear and draws a
  :class:`~skygrade.streamer.progress.Progress` line (done / total, rate, ETA); the run ends with a
  summary (grades, quarantined with reasons, throughput, output location).

Reading the dataset as one table works unchanged: every file name ends in ``.parquet`` under
the hive ``night=`` directories (``GradesDataset(dir).read()``, ``pandas.read_parquet(dir)``,
DuckDB ``read_parquet('DIR/exposures/*/*.parquet', hive_partitioning=true)``); the table holds
one row per (``exposure_id``, ``model_version``); filter on ``model_version`` for one model.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TextIO

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from skygrade.models.bundle import read_manifest
from skygrade.models.classes import CLASSES
from skygrade.ops.config import config_digest
from skygrade.streamer.ccd_pool import pooled, shutdown_pool
from skygrade.streamer.dask_runner import scheduler_for
from skygrade.streamer.pipelines import DASK_RUNNERS, make_pipeline, pipeline_options
from skygrade.streamer.progress import Progress
from skygrade.transforms.dataset import CATALOG_PATTERNS, EXPOSURE_PATTERNS
from skygrade.transforms.exposure import NIGHT_PATTERN, exposure_id_from_path
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.extract import make_backend
from skygrade.transforms.grades_dataset import GradesDataset, exposure_file_name
from skygrade.transforms.grading import GradeExposures

if TYPE_CHECKING:
    from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)

"""Extra file patterns of SExtractor catalog archives (``--backend catalog``)."""


class ArchiveExposure(NamedTuple):
    """One exposure file of an archive: its id, path and observing night."""

    exposure_id: str
    path: str
    night: str


# --------------------------------------------------------------------------- discovery


def find_exposures(
    archive: str | os.PathLike,
    backend: str = "sep",
    params=None,
    nights: Iterable[str] | None = None,
) -> list[ArchiveExposure]:
    """The exposure files under ``archive``, sorted by exposure id (no labels needed).

    Parameters
    ----------
    archive : path-like
        A directory tree of ``.fits`` / ``.fits.fz`` exposures (plus ``.ldac`` / ``.cat``
        catalogs when ``backend`` is ``"catalog"``).
    backend : str
        Extraction backend; its ``open`` reads the headers (exposure id and DATE-OBS).
    params : ExtractConfig, optional
        Extraction settings passed to the backend.
    nights : iterable of str, optional
        Keep only these ``YYYY-MM-DD`` nights. The night is the ``YYYY-MM-DD`` folder an
        exposure sits in, else the observing night of its DATE-OBS, else ``"unknown"``.

    Returns
    -------
    list of ArchiveExposure
        A file whose header cannot be read keeps the id its name implies; the grading job
        quarantines it with the reason.

    Raises
    ------
    FileNotFoundError
        ``archive`` is not a directory.
    """

    root = Path(archive)
    if not root.is_dir():
        raise FileNotFoundError(f"archive {str(root)!r} is not a directory")
    patterns = EXPOSURE_PATTERNS + (CATALOG_PATTERNS if backend == "catalog" else ())
    opener = make_backend(backend, params)
    wanted = None if nights is None else set(nights)
    found: dict[str, ArchiveExposure] = {}
    files = sorted({p for pattern in patterns for p in root.rglob(pattern)})
    for path in files:
        if path.name.startswith(".") or not path.is_file():
            continue
        folder = path.parent.name if NIGHT_PATTERN.match(path.parent.name) else None
        if wanted is not None and folder is not None and folder not in wanted:
            continue  # the folder decides: no header read for other nights
        try:
            meta = opener.open(str(path))
            exposure_id, night = meta.exposure_id, folder or meta.night or "unknown"
        except (ExposureError, OSError, ValueError):
            exposure_id, night = exposure_id_from_path(path), folder or "unknown"
        if wanted is not None and night not in wanted:
            continue
        if exposure_id in found:
            log.warning(
                "exposure %s: %s ignored, already found at %s",
                exposure_id,
                path,
                found[exposure_id].path,
            )
            continue
        found[exposure_id] = ArchiveExposure(exposure_id, str(path), night)
    return [found[k] for k in sorted(found)]


# --------------------------------------------------------------------------- dataset layout


def _exposure_of(file_name: str) -> str:
    return file_name.split(".", 1)[0]


class GradedRow(NamedTuple):
    """What the skip decision needs of a row already in the dataset."""

    exposure_id: str
    model_version: str
    config_digest: str
    status: str
    file: Path


def existing_rows(out_dir: str | os.PathLike) -> dict[str, list[GradedRow]]:
    """The exposure rows already in the dataset at ``out_dir``, by exposure id.

    Reads four columns of every exposure file. A file that cannot be read (not parquet,
    truncated by hand) is logged and ignored, so its exposure is regraded.
    """
    columns = ["exposure_id", "model_version", "config_digest", "status"]
    dataset = GradesDataset(out_dir)
    rows: dict[str, list[GradedRow]] = {}
    for file in dataset.exposure_files():
        try:
            found = dataset.read_file(file, columns)
        except Exception as exc:  # noqa: BLE001 - any unreadable file means "not done"
            log.warning("%s: unreadable (%s); its exposure will be regraded", file, exc)
            continue
        for r in found:
            rows.setdefault(r["exposure_id"], []).append(
                GradedRow(
                    r["exposure_id"],
                    r["model_version"] or "",
                    r["config_digest"] or "",
                    r["status"] or "",
                    file,
                )
            )
    return rows


class Plan(NamedTuple):
    """What a backfill will do: exposures to grade, exposures skipped, and for each exposure
    to grade the file name it goes to (the file already holding this model version's row,
    else the dataset's name for it)."""

    todo: list[ArchiveExposure]
    skipped: list[ArchiveExposure]
    targets: dict[str, str]


def plan_backfill(
    items: Sequence[ArchiveExposure],
    existing: dict[str, list[GradedRow]],
    model_version: str,
    config_digest: str,
    force: bool = False,
) -> Plan:
    """Split ``items`` into what to grade and what is already graded.

    An exposure is skipped when one of its rows has ``model_version`` and ``config_digest``
    (unless ``force``).
    """
    todo, skipped, targets = [], [], {}
    for item in items:
        same_version = [
            r for r in existing.get(item.exposure_id, ()) if r.model_version == model_version
        ]
        if not force and any(r.config_digest == config_digest for r in same_version):
            skipped.append(item)
            continue
        todo.append(item)
        if same_version:
            targets[item.exposure_id] = same_version[0].file.name
        else:
            targets[item.exposure_id] = exposure_file_name(item.exposure_id, model_version)
    return Plan(todo, skipped, targets)


class _WriteBackfillRows(beam.DoFn):
    def __init__(self, out_dir: str, targets: dict[str, str]) -> None:
        self.out_dir, self.targets = out_dir, dict(targets)
        self.written = beam.metrics.Metrics.counter("backfill", "exposures_written")

    def setup(self) -> None:
        self.dataset = GradesDataset(self.out_dir)

    def process(self, item):
        row, ccd_rows = item
        # under the file that already holds this model version's row, if one does
        path = self.dataset.write(row, ccd_rows, self.targets.get(row["exposure_id"]))
        self.written.inc()
        yield str(path)


class WriteBackfillRows(beam.PTransform):
    """``(exposure_row, ccd_rows)`` -> parquet files named by :func:`plan_backfill`; yields
    the exposure file paths."""

    def __init__(self, out_dir: str | os.PathLike, targets: dict[str, str]) -> None:
        super().__init__()
        self.out_dir, self.targets = os.fspath(out_dir), dict(targets)

    def expand(self, graded):
        return graded | "WriteParquet" >> beam.ParDo(_WriteBackfillRows(self.out_dir, self.targets))


# --------------------------------------------------------------------------- progress


class _OutputWatcher:
    """A driver thread that counts exposure files created or replaced since it started."""

    def __init__(self, out_dir: Path, expected: Iterable[str], progress, poll_s: float) -> None:
        self.dataset = GradesDataset(out_dir)
        self.remaining = set(expected)
        self.progress, self.poll_s = progress, poll_s
        self.written: dict[str, Path] = {}
        self._before = self._stamps()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backfill-progress", daemon=True)

    def _stamps(self) -> dict[Path, int]:
        stamps = {}
        for file in self.dataset.exposure_files():
            try:
                stamps[file] = file.stat().st_mtime_ns
            except FileNotFoundError:  # replaced between glob and stat
                continue
        return stamps

    def scan(self) -> None:
        for file, stamp in self._stamps().items():
            exposure_id = _exposure_of(file.name)
            if exposure_id in self.remaining and self._before.get(file) != stamp:
                self.remaining.discard(exposure_id)
                self.written[exposure_id] = file
                self.progress.update(note=exposure_id)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.scan()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.scan()
        self.progress.close()


# --------------------------------------------------------------------------- run


@dataclass
class BackfillSummary:
    """What a backfill did. ``rows`` are the exposure rows it wrote (graded and quarantined)."""

    out_dir: Path
    model_version: str
    config_digest: str
    found: int
    skipped: int
    rows: list[dict] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def grade_counts(self) -> dict[str, int]:
        return dict(Counter(r["grade"] for r in self.rows if r["status"] == "graded"))

    @property
    def quarantined(self) -> list[tuple[str, str]]:
        """(exposure_id, reason) of the exposures quarantined in this run."""
        return [(r["exposure_id"], r["reason"] or "") for r in self.rows if r["status"] != "graded"]

    def text(self) -> str:
        """A few lines for the terminal."""

        counts = self.grade_counts
        graded = sum(counts.values())
        rate = len(self.rows) / self.wall_s * 60 if self.wall_s > 0 else 0.0
        lines = [
            f"backfill with model {self.model_version} (config {self.config_digest}): "
            f"{self.found} exposure(s) selected, {self.skipped} already graded (skipped), "
            f"{len(self.rows)} written now in {self.wall_s:.1f} s ({rate:.1f} exposures/min)",
            "  grades: "
            + (", ".join(f"{c} {counts[c]}" for c in CLASSES if counts.get(c)) or "none")
            + f" ({graded} graded)",
        ]
        if self.quarantined:
            lines.append(f"  quarantined: {len(self.quarantined)}")
            lines += [f"    {eid}: {reason}" for eid, reason in self.quarantined]
        if self.missing:
            lines.append(
                f"  NOT WRITTEN: {len(self.missing)} exposure(s), e.g. "
                f"{', '.join(self.missing[:5])}: rerun to resume"
            )
        lines.append(f"  rows in {self.out_dir}/exposures/ and {self.out_dir}/ccds/")
        return "\n".join(lines)


def run_backfill(
    archive: str | os.PathLike,
    out_dir: str | os.PathLike,
    bundle: str | os.PathLike,
    cfg,
    nights: Iterable[str] | None = None,
    force: bool = False,
    options: PipelineOptions | None = None,
    batch_size: int = 32,
    stream: TextIO | None = None,
    poll_s: float = 1.0,
    min_interval_s: float = 5.0,
    ccd_workers: int = 0,
) -> BackfillSummary:
    """Grade the exposures of ``archive`` not yet graded by ``bundle`` with ``cfg``.

    Parameters
    ----------
    archive : path-like
        Directory tree of exposures (or catalogs with ``cfg.extract.backend == "catalog"``).
    out_dir : path-like
        The grades dataset (``exposures/`` and ``ccds/`` partitioned by night).
    bundle : path-like
        Model bundle; its manifest version is written on every row.
    cfg : Config
        Configuration; its digest is written on every row.
    nights : iterable of str, optional
        Only these nights (see :func:`find_exposures`).
    force : bool
        Regrade exposures already graded with this model version and configuration.
    options : PipelineOptions, optional
        Beam runner options (default: FnApiRunner in process). With the Dask runner and no
        scheduler named (``--dask_client_address`` / ``--dask_scheduler_file``), a local Dask
        cluster of ``--dask_local_workers`` processes runs all the batches and is closed at
        the end (``skygrade.streamer.dask_runner.scheduler_for``).
    batch_size : int
        Exposures per Beam job. The grading job groups by exposure, so a job writes its rows
        only once all its exposures are measured: batches bound what a crash loses and make
        the progress line move, at the cost of one job start per batch (~0.1 s in process,
        ~1-2 s with worker processes).
    stream : file-like, optional
        Where the progress line goes (default stderr).
    poll_s, min_interval_s : float
        How often the driver looks for new files; the least seconds between two progress lines
        when ``stream`` is not a terminal.
    ccd_workers : int
        0 (default): CCDs are spread by the runner. N > 0: with the in-process runner, each
        exposure's CCDs run in a pool of N processes started once for the whole backfill (the
        daemon's way: no worker start-up per job, one shuffle-free stage per exposure).

    Returns
    -------
    BackfillSummary
    """

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = Path(out_dir)
    model_version = str(read_manifest(bundle)["version"])
    digest = config_digest(cfg)
    items = find_exposures(archive, cfg.extract.backend, cfg.extract, nights)
    pool = pooled(ccd_workers)
    plan = plan_backfill(items, existing_rows(out), model_version, digest, force)
    log.info(
        "backfill %s: %d exposure(s), %d already graded with model %s, %d to grade",
        archive,
        len(items),
        len(plan.skipped),
        model_version,
        len(plan.todo),
    )
    summary = BackfillSummary(out, model_version, digest, len(items), len(plan.skipped))
    if not plan.todo:
        return summary
    out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    bar = Progress(len(plan.todo), "exposures", stream=stream, min_interval_s=min_interval_s)
    watcher = _OutputWatcher(out, [i.exposure_id for i in plan.todo], bar, poll_s)
    options = options or pipeline_options()
    try:
        with watcher, _scheduler(options) as options:
            for first in range(0, len(plan.todo), batch_size):
                batch = plan.todo[first : first + batch_size]
                with make_pipeline(options) as p:
                    _ = (
                        p
                        | "ExposurePaths" >> beam.Create([i.path for i in batch])
                        | "GradeExposures"
                        >> GradeExposures(bundle, cfg.extract, digest, ccd_pool=pool)
                        | "WriteRows" >> WriteBackfillRows(out, plan.targets)
                    )
    finally:
        if pool is not None:  # the pool served every batch of this backfill; it ends with it
            shutdown_pool()
    summary.wall_s = time.monotonic() - start
    summary.rows = _read_written(watcher.dataset, watcher.written, model_version)
    summary.missing = sorted(watcher.remaining)
    return summary


def _scheduler(options: PipelineOptions):
    """A context giving the options to run with: a local Dask cluster for the Dask runner
    without a scheduler, ``options`` unchanged otherwise."""

    if options.view_as(StandardOptions).runner not in DASK_RUNNERS:
        return contextlib.nullcontext(options)

    return scheduler_for(options)


def _read_written(dataset: GradesDataset, files: dict[str, Path], model_version: str) -> list[dict]:
    return [
        row
        for exposure_id in sorted(files)
        for row in dataset.read_file(files[exposure_id])
        if row["model_version"] == model_version
    ]
