"""The simulated telescope: labelled exposures delivered as an archive or into a data drop.

:func:`simulate_archive` writes whole nights (``<night>/<expnum>o.fits`` and ``labels.csv``);
:func:`run_telescope` acts as the telescope, delivering one exposure per cadence into a drop
directory, each written progressively (:func:`write_progressively`) like a slow transfer.

The simulator itself lives in five modules, each importing only those before it:
:mod:`skygrade.streamer.sky_plan` (geometry, filters, the
:class:`~skygrade.streamer.sky_plan.ExposurePlan` of each exposure,
:func:`~skygrade.streamer.sky_plan.plan_night`), :mod:`skygrade.streamer.sky_kernels` (PSF, tracking
and galaxy kernels), :mod:`skygrade.streamer.sky_context` (the focal-plane fields an exposure's CCDs
share), :mod:`skygrade.streamer.sky_render` (one CCD's pixels) and
:mod:`skygrade.streamer.sky_fits` (headers, :func:`~skygrade.streamer.sky_fits.render_exposure`, the
file's bytes).
"""

from __future__ import annotations

import csv
import io
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from skygrade.ops.files import atomic_write_text
from skygrade.streamer.sky_fits import exposure_bytes, write_exposure
from skygrade.streamer.sky_plan import (
    NARROW_BAND_FRACTION,
    ExposurePlan,
    Geometry,
    _iter_plans,
    plan_night,
)

log = logging.getLogger(__name__)

LABELS_FILE = "labels.csv"
LABELS_HEADER = ("exposure_id", "label")


def _merge_labels(labels_path: Path, new: Mapping[str, str]) -> None:
    """Merge exposure labels into ``labels.csv`` (sorted by id, rewritten atomically)."""
    rows: dict[str, str] = {}
    if labels_path.exists():
        with labels_path.open(newline="") as fh:
            for row in csv.DictReader(fh):
                if row.get("exposure_id"):
                    rows[row["exposure_id"]] = row.get("label", "")
    rows.update(new)

    def key(eid: str) -> tuple[int, int, str]:
        return (0, int(eid), "") if eid.isdigit() else (1, 0, eid)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LABELS_HEADER)
    for eid in sorted(rows, key=key):
        writer.writerow([eid, rows[eid]])
    atomic_write_text(labels_path, buf.getvalue())


def simulate_archive(
    out_dir: str | os.PathLike,
    nights: Sequence[str],
    exposures_per_night: int,
    geometry: Geometry,
    seed: int,
    class_mix: Mapping[str, float],
    progress: Callable[[int, int, Path], None] | None = None,
    narrow_band: float = NARROW_BAND_FRACTION,
) -> list[Path]:
    """Write an archive of labelled exposures: ``out_dir/<night>/<expnum>o.fits``.

    ``out_dir/labels.csv`` (header ``exposure_id,label``) is merged with what is already there
    after each night, so calls for other nights accumulate.

    Parameters
    ----------
    out_dir : path-like
        Archive root (created if needed).
    nights : sequence of str
        Observing nights, ``YYYY-MM-DD``.
    exposures_per_night : int
        Exposures per night.
    geometry : Geometry
    seed : int
        Simulation seed.
    class_mix : mapping of str to float
        Relative class frequencies.
    progress : callable, optional
        Called as ``progress(done, total, path)`` after each file.
    narrow_band : float, optional
        Share of exposures taken through a narrow-band filter.

    Returns
    -------
    list of pathlib.Path
        The files written, in order.

    Examples
    --------
    >>> import tempfile
    >>> paths = simulate_archive(tempfile.mkdtemp(), ["2024-03-01"], 1, Geometry(1, 128, 128),
    ...                          seed=1, class_mix={"BT": 1.0})
    >>> paths[0].name.endswith("o.fits")
    True
    """
    out = Path(out_dir)
    plans = [
        plan_night(night, exposures_per_night, seed, class_mix, narrow_band=narrow_band)
        for night in nights
    ]
    total = sum(len(p) for p in plans)
    paths: list[Path] = []
    for night, night_plans in zip(nights, plans, strict=True):
        for plan in night_plans:
            path = write_exposure(plan, geometry, out / night / plan.filename)
            paths.append(path)
            log.info("wrote %s (%s)", path, plan.label)
            if progress is not None:
                progress(len(paths), total, path)
        _merge_labels(out / LABELS_FILE, {p.exposure_id: p.label for p in night_plans})
    return paths


def write_progressively(
    data: bytes,
    path: str | os.PathLike,
    chunks: int,
    duration_s: float,
    on_chunk: Callable[[int, int], None] | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Write ``data`` to ``path`` in pieces spread over ``duration_s``, like a slow transfer.

    The first piece is written at once and the last after ``duration_s``; each piece is
    flushed before ``on_chunk(pieces_written, chunks)`` is called. If ``stop`` is set, the rest
    is written at once so that no truncated file is left behind.

    Parameters
    ----------
    data : bytes
        The complete file content.
    path : path-like
        Destination (written in place, not atomically: readers can see a partial file).
    chunks : int
        Number of pieces (>= 1).
    duration_s : float
        Duration of the whole transfer, seconds (>= 0).
    on_chunk : callable, optional
        Called as ``on_chunk(i, chunks)`` after piece ``i`` (1-based) is on disk.
    stop : threading.Event, optional
        Cuts the waits short.

    Raises
    ------
    ValueError
        If ``chunks < 1`` or ``duration_s < 0``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_progressively(b"abcdef", p, chunks=3, duration_s=0.0)
    >>> p.read_bytes()
    b'abcdef'
    """
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks!r}")
    if not duration_s >= 0:
        raise ValueError(f"duration_s must be >= 0, got {duration_s!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bounds = [len(data) * i // chunks for i in range(chunks + 1)]
    start = time.monotonic()
    hurry = False
    view = memoryview(data)
    with path.open("wb") as fh:
        for i in range(chunks):
            if i > 0 and not hurry:
                due = start + duration_s * i / (chunks - 1)
                remaining = due - time.monotonic()
                if remaining > 0:
                    if stop is not None:
                        hurry = stop.wait(remaining)
                    else:
                        time.sleep(remaining)
            fh.write(view[bounds[i] : bounds[i + 1]])
            fh.flush()
            if on_chunk is not None:
                on_chunk(i + 1, chunks)


def run_telescope(
    drop_dir: str | os.PathLike,
    n_exposures: int | None,
    geometry: Geometry,
    seed: int,
    class_mix: Mapping[str, float],
    cadence_s: float,
    transfer_s: float,
    transfer_chunks: int,
    night: str,
    stop: threading.Event | None = None,
    progress: Callable[[int, int, Path], None] | None = None,
    narrow_band: float = NARROW_BAND_FRACTION,
) -> list[Path]:
    """Act as the telescope: deliver one exposure every ``cadence_s`` into a drop directory.

    Each exposure is rendered ahead of its slot, then written progressively (over
    ``transfer_s`` in ``transfer_chunks`` pieces) directly at ``drop_dir/<night>/<expnum>o.fits``,
    after which its label is merged into ``drop_dir/labels.csv``.

    Parameters
    ----------
    drop_dir : path-like
        The data drop.
    n_exposures : int or None
        How many exposures; ``None`` runs until ``stop`` is set.
    geometry : Geometry
    seed : int
    class_mix : mapping of str to float
    cadence_s : float
        Seconds between the starts of two deliveries (a slow render or transfer delays the next).
    transfer_s : float
        Duration of one file's transfer.
    transfer_chunks : int
        Pieces per transfer.
    night : str
        Observing night, ``YYYY-MM-DD``.
    stop : threading.Event, optional
        Set it to stop promptly (a transfer in progress is completed at once).
    progress : callable, optional
        ``progress(done, total, path)`` after each delivery; ``total`` is 0 when unbounded.
    narrow_band : float, optional
        Share of exposures taken through a narrow-band filter.

    Returns
    -------
    list of pathlib.Path
        The files delivered.

    Raises
    ------
    ValueError
        If ``n_exposures`` is None without a ``stop`` event, or a timing argument is negative.

    Examples
    --------
    >>> import tempfile
    >>> paths = run_telescope(tempfile.mkdtemp(), 1, Geometry(1, 128, 128), 1, {"GOOD": 1},
    ...                       cadence_s=0.0, transfer_s=0.0, transfer_chunks=2, night="2024-03-01")
    >>> len(paths)
    1
    """
    if n_exposures is None and stop is None:
        raise ValueError("n_exposures=None runs until stopped: pass a stop event")
    if n_exposures is not None and n_exposures < 0:
        raise ValueError(f"n_exposures must be >= 0 or None, got {n_exposures!r}")
    if not cadence_s >= 0 or not transfer_s >= 0:
        raise ValueError(f"cadence_s and transfer_s must be >= 0, got {cadence_s}, {transfer_s}")
    if transfer_chunks < 1:
        raise ValueError(f"transfer_chunks must be >= 1, got {transfer_chunks!r}")
    drop = Path(drop_dir)
    plans: Iterator[ExposurePlan] | list[ExposurePlan]
    plans = (
        plan_night(night, n_exposures, seed, class_mix, narrow_band=narrow_band)
        if n_exposures is not None
        else _iter_plans(night, seed, class_mix, narrow_band=narrow_band)
    )
    total = n_exposures or 0
    stop = stop or threading.Event()
    written: list[Path] = []
    start = time.monotonic()
    for k, plan in enumerate(plans):
        if stop.is_set():
            break
        data = exposure_bytes(plan, geometry)
        wait = start + k * cadence_s - time.monotonic()
        if wait > 0 and stop.wait(wait):
            break
        if wait < -cadence_s:
            log.warning("telescope is %.1f s behind its cadence", -wait)
        path = drop / night / plan.filename
        write_progressively(data, path, transfer_chunks, transfer_s, stop=stop)
        _merge_labels(drop / LABELS_FILE, {plan.exposure_id: plan.label})
        written.append(path)
        log.info("delivered %s (%s)", path, plan.label)
        if progress is not None:
            progress(len(written), total, path)
    return written
