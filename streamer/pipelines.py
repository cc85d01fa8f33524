"""Entry points that build and run skygrade's Beam pipelines.

Each entry is ``run_*(..., options=None)``: it builds the pipeline from transforms, runs it to
completion and returns a small summary. Runners are chosen explicitly (never Beam's default
Prism runner, which downloads a binary at run time).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

log = logging.getLogger(__name__)

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner")


def pipeline_options(
    runner: str = "FnApiRunner", workers: int = 1, extra: Sequence[str] = ()
) -> PipelineOptions:
    """Pipeline options for ``runner`` with ``workers`` local worker processes.

    Parameters
    ----------
    runner : str
        ``FnApiRunner`` (default, in this process or ``workers`` subprocesses), ``DirectRunner``,
        or any Beam runner name (``DaskRunner``, ``FlinkRunner``, ``DataflowRunner``...) whose
        own options go in ``extra``.
    workers : int
        Local worker processes (``direct_num_workers``); 1 runs in process.
    extra : sequence of str
        More ``--flag=value`` pipeline options, passed through.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
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
    """A pipeline on the runner named in ``options`` (FnApiRunner built directly)."""
    from apache_beam.options.pipeline_options import StandardOptions

    runner = options.view_as(StandardOptions).runner
    if runner == "FnApiRunner":
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(
            runner=FnApiRunner(provision_info=_worker_provision()), options=options
        )
    return beam.Pipeline(options=options)


# --------------------------------------------------------------------------- extract


class _WriteExposureFeatures(beam.DoFn):
    """(exposure_id, [CcdFeatures]) -> DIR/<exposure_id>.parquet (atomic); yields the path."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def process(self, item):
        from transforms.extract import features_to_arrow
        from transforms.sinks import write_parquet_atomic

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


def run_extract(
    paths: Sequence[str],
    out_dir: str | os.PathLike,
    backend: str = "sep",
    params=None,
    options: PipelineOptions | None = None,
) -> dict:
    """Extract features of ``paths`` into ``out_dir`` (one parquet file per exposure).

    Returns
    -------
    dict
        ``written`` (parquet paths) and ``quarantined`` (records) read back from ``out_dir``.
    """
    from transforms.extract import ExtractSources
    from transforms.quarantine import QUARANTINE

    out_dir = str(out_dir)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with make_pipeline(options or pipeline_options()) as p:
        out = (
            p
            | "ExposurePaths" >> beam.Create([str(x) for x in paths])
            | "ExtractSources" >> ExtractSources(backend, params)
        )
        _ = (
            out["features"]
            | "KeyByExposure" >> beam.Map(lambda f: (f.exposure_id, f))
            | "GroupCcds" >> beam.GroupByKey()
            | "WriteFeatures" >> beam.ParDo(_WriteExposureFeatures(out_dir))
        )
        _ = out[QUARANTINE] | "WriteQuarantine" >> beam.ParDo(_WriteQuarantine(out_dir))
    return summarize_extract(out_dir)


def summarize_extract(out_dir: str | os.PathLike) -> dict:
    """What an extract run left in ``out_dir``: parquet files and quarantine records."""
    from transforms.quarantine import Quarantined

    out = Path(out_dir)
    quarantined = [
        Quarantined(**json.loads(p.read_text())) for p in sorted(out.glob("_quarantine/*.json"))
    ]
    return {"written": sorted(out.glob("*.parquet")), "quarantined": quarantined}
