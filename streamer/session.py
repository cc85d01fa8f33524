"""A grading pipeline built once and run once per ready exposure: how the daemon uses Beam.

Building a Beam pipeline is not free: applying ``GradeExposures`` (RunInference alone expands
into a dozen transforms whose DoFns Beam inspects method by method) and translating the graph
to its runner proto cost more per exposure than the 0.2 s the daemon may spend on top of the
work itself (benchmarks/latency.py, section 2; the figure is in benchmarks/README.md).
:class:`GradingSession` builds the graph and its proto once; every exposure then runs the same
proto on the same in-process ``FnApiRunner``. What changes between runs enters at run time,
through this module's state, which the in-process runner shares with its caller:

- the paths to grade: the pipeline starts from one constant token, and a DoFn swaps it for the
  paths put in the inbox under that token (:class:`_TakeInbox`);
- their arrival times (for ``latency_s``): ``GradeExposures`` looks them up in
  :class:`LiveArrivals`, a mapping that reads this module's current arrivals;
- the rows written: a last DoFn puts each exposure row ``WriteGrades`` wrote in the outbox
  under the token (:class:`_PutOutbox`), and :meth:`GradingSession.grade` returns them, so the
  daemon feeds its metrics and alerts from what the pipeline wrote, without reading the
  dataset back.

The transforms are the same ``GradeExposures`` and ``WriteGrades`` that ``skygrade grade`` and
the backfill run; only the source differs. In process only: a runner that ships the pipeline to
other processes would carry empty copies of the inbox.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence

import apache_beam as beam
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.transforms import environments

from skygrade.models.bundle import read_manifest
from skygrade.ops.config import config_digest
from skygrade.streamer.ccd_pool import pooled
from skygrade.streamer.pipelines import _worker_provision, pipeline_options
from skygrade.transforms.grades_dataset import stored_row
from skygrade.transforms.grading import GradeExposures
from skygrade.transforms.sinks import WriteGrades

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
_INBOX: dict[str, list[str]] = {}
_ARRIVALS: dict[str, float] = {}
_OUTBOX: dict[str, list[dict]] = {}


class _TakeInbox(beam.DoFn):
    """A session's token -> the paths waiting under it in the inbox (taken, not copied)."""

    def process(self, token: str) -> Iterator[str]:
        yield from _INBOX.pop(token, ())


class _PutOutbox(beam.DoFn):
    """An exposure row written by ``WriteGrades`` -> the outbox of the session's token, as
    stored (:func:`skygrade.transforms.grades_dataset.stored_row`: the row a read of the dataset
    gives)."""

    def __init__(self, token: str) -> None:
        self.token = token

    def process(self, row: dict) -> Iterator[dict]:
        _OUTBOX.setdefault(self.token, []).append(stored_row(row))
        yield row


class LiveArrivals(Mapping):
    """Arrival time (epoch seconds) of each path being graded, read when looked up.

    It pickles to an empty shell that reads this module's state, so the copy inside the
    pipeline sees the arrivals of the run in progress.
    """

    def __getitem__(self, path: str) -> float:
        return _ARRIVALS[path]

    def __iter__(self) -> Iterator[str]:
        return iter(dict(_ARRIVALS))

    def __len__(self) -> int:
        return len(_ARRIVALS)


class GradingSession:
    """``GradeExposures`` -> ``WriteGrades`` into ``out_dir``, built once, run per batch.

    Parameters
    ----------
    out_dir : path-like
        The grades dataset.
    bundle : path-like
        Model bundle.
    cfg : Config
        Configuration (``extract``; its digest goes on every row).
    ccd_workers : int
        CCD worker processes (the pool outlives every run; see :mod:`skygrade.streamer.ccd_pool`).

    Examples
    --------
    >>> # session = GradingSession("grades", DEFAULT_BUNDLE, load_config(), ccd_workers=2)
    >>> # rows = session.grade(["drop/2817001o.fits"], {"drop/2817001o.fits": time.time()})
    """

    def __init__(self, out_dir, bundle, cfg, ccd_workers: int = 2) -> None:

        self.out_dir = os.fspath(out_dir)
        self.model_version = str(read_manifest(bundle)["version"])
        self._token = f"skygrade-session-{uuid.uuid4().hex}"
        self._options = pipeline_options("FnApiRunner", 1)
        self._runner = FnApiRunner(provision_info=_worker_provision())
        self._pipeline = beam.Pipeline(runner=self._runner, options=self._options)
        _ = (
            self._pipeline
            | "Token" >> beam.Create([self._token])
            | "Inbox" >> beam.ParDo(_TakeInbox())
            | "GradeExposures"
            >> GradeExposures(
                bundle,
                cfg.extract,
                config_digest(cfg),
                LiveArrivals(),
                ccd_pool=pooled(ccd_workers),
            )
            | "WriteGrades" >> WriteGrades(self.out_dir)
            | "Outbox" >> beam.ParDo(_PutOutbox(self._token))
        )
        self._proto = None
        self.runs = 0

    def grade(self, paths: Sequence[str], arrivals: Mapping[str, float] | None = None):
        """Grade ``paths`` into the dataset; returns the exposure rows written (graded and
        quarantined, one per path, sorted by id), as the pipeline handed them on.

        Raises whatever the pipeline raised (a sink on a read-only disk, say): nothing is
        half-written, since every file is written atomically, and the caller may retry.
        """

        paths = [str(p) for p in paths]
        with _LOCK:
            _INBOX[self._token] = paths
            _OUTBOX.pop(self._token, None)
            _ARRIVALS.clear()
            _ARRIVALS.update(arrivals or {})
            try:
                if self._proto is None:
                    # The first run goes through Pipeline.run, which also prepares the runner
                    # and the options; later runs reuse the proto it translated.
                    self._pipeline.run().wait_until_finish()
                    self._proto = self._pipeline.to_runner_api(
                        default_environment=environments.EmbeddedPythonEnvironment.default()
                    )
                else:
                    self._runner.run_via_runner_api(self._proto, self._options)
            finally:
                _INBOX.pop(self._token, None)
                _ARRIVALS.clear()
                rows = _OUTBOX.pop(self._token, [])
            self.runs += 1
        return sorted(rows, key=lambda r: r["exposure_id"])
