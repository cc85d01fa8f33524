"""``skygrade backfill`` on Dask: Beam's DaskRunner (fixed, ``skygrade.streamer.dask_runner``) on a
``dask.distributed.LocalCluster`` of worker processes gives the same rows as the local runner."""

import argparse
import io
import math
import threading

import apache_beam as beam
import pytest

from skygrade.ops.config import Config
from skygrade.streamer.backfill import run_backfill
from skygrade.streamer.commands import backfill as backfill_command
from skygrade.streamer.dask_runner import local_cluster, translate
from skygrade.streamer.pipelines import make_pipeline, pipeline_options
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import simulate_archive
from skygrade.transforms.grades_dataset import GradesDataset

NIGHTS = ["2026-11-01", "2026-11-02"]
CORRUPT = "2899999"
JOB_TIMEOUT_S = 180
"""Each Dask job fails (and is cancelled) past this; the jobs here take seconds."""

TIMING = {"arrived_at", "graded_at", "latency_s"}


def comparable(table) -> list[dict]:
    """Rows without their timing columns (``arrived_at``, ``graded_at``, ``latency_s``,
    ``*_s`` stage seconds), sorted by exposure (and CCD)."""
    rows = [
        {k: v for k, v in r.items() if k not in TIMING and not k.endswith("_s")}
        for r in table.to_pylist()
    ]
    return sorted(rows, key=lambda r: (r["exposure_id"], r.get("ccd", -1)))


FLOAT_TOL = 1e-6
"""Probabilities come from a float32 CNN run on batches of CCDs, and the runners batch them
differently: the same CCD's scores differ in the 9th digit (measured ~2e-9)."""


def same(a, b) -> bool:
    """Equal, with NaN equal to NaN (medians of CCDs without sources) and floats to
    ``FLOAT_TOL``."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, abs=FLOAT_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [(r["exposure_id"], r.get("ccd")) for r in got] == [
        (r["exposure_id"], r.get("ccd")) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        diff = {k: (g[k], w[k]) for k in g if not same(g[k], w[k])}
        assert not diff, f"{g['exposure_id']} ccd {g.get('ccd')}: {diff}"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    """A small untrained bundle (the grades need not be right, only the same)."""
    return tiny_bundle(tmp_path_factory.mktemp("b") / "b", "dask-test")


@pytest.fixture(scope="module")
def cluster():
    """Two single-threaded worker processes, closed after the module's tests."""
    with local_cluster(2) as c:
        yield c


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    simulate_archive(root, NIGHTS, 2, Geometry(2, 256, 320), 5, {"GOOD": 1, "BT": 1, "BGP": 1})
    (root / NIGHTS[1] / f"{CORRUPT}o.fits").write_bytes(b"garbage " * 400)
    return root


@pytest.fixture(scope="module")
def local(archive, bundle, tmp_path_factory):
    """The archive backfilled on the local runner (FnApiRunner, in process)."""
    out = tmp_path_factory.mktemp("local") / "grades"
    summary = run_backfill(archive, out, bundle, Config(), stream=io.StringIO())
    assert len(summary.rows) == 5 and not summary.missing
    return out


def dask_flags(cluster) -> list[str]:
    return [
        f"--dask_client_address={cluster.scheduler_address}",
        f"--dask_job_timeout_s={JOB_TIMEOUT_S}",
    ]


def test_dask_backfill_writes_the_same_rows_as_the_local_runner(
    archive, bundle, local, cluster, tmp_path
):
    out = tmp_path / "grades"
    options = pipeline_options("dask", 2, dask_flags(cluster))
    stream = io.StringIO()
    # batch_size=2: three Dask jobs on one cluster, each with its own client
    summary = run_backfill(
        archive,
        out,
        bundle,
        Config(),
        options=options,
        batch_size=2,
        stream=stream,
        min_interval_s=0,
    )
    assert (summary.found, summary.skipped, len(summary.rows), summary.missing) == (5, 0, 5, []), (
        summary.text() + stream.getvalue()
    )
    assert "exposures: 5/5 (100.0%)" in stream.getvalue()
    for which in ("exposures", "ccds"):
        assert_same_rows(
            comparable(GradesDataset(out).read(which)), comparable(GradesDataset(local).read(which))
        )
    # the same files (one per exposure per model version), every row graded or quarantined
    names = sorted(p.relative_to(out) for p in out.rglob("*.parquet"))
    assert names == sorted(p.relative_to(local) for p in local.rglob("*.parquet"))
    statuses = {r["exposure_id"]: r["status"] for r in summary.rows}
    assert statuses.pop(CORRUPT) == "quarantined"
    assert set(statuses.values()) == {"graded"} and len(statuses) == 4
    ccds = GradesDataset(out).read("ccds")
    assert len(ccds) == 8 and all(h is not None for h in ccds.column("hits").to_pylist())
    # a rerun on Dask finds everything done
    again = run_backfill(archive, out, bundle, Config(), options=options)
    assert (again.skipped, again.rows) == (5, [])


def test_command_line_dask_with_its_own_local_cluster(archive, bundle, local, tmp_path, capsys):
    """``--runner dask`` without ``--dask-scheduler``: a cluster of ``--workers`` processes
    for the run, closed at the end."""
    out = tmp_path / "grades"
    parser = argparse.ArgumentParser()
    backfill_command.add_arguments(parser)
    args = parser.parse_args(
        [
            str(archive),
            "--out",
            str(out),
            "--nights",
            NIGHTS[0],
            "--runner",
            "dask",
            "--workers",
            "1",
            "--bundle",
            str(bundle),
            f"--beam-option=--dask_job_timeout_s={JOB_TIMEOUT_S}",
        ]
    )
    threads_before = set(threading.enumerate())
    assert backfill_command.command(args, Config()) == 0
    text = capsys.readouterr().out
    assert "2 exposure(s) selected, 0 already graded (skipped), 2 written now" in text
    want = [r for r in comparable(GradesDataset(local).read()) if r["night"] == NIGHTS[0]]
    assert_same_rows(comparable(GradesDataset(out).read()), want)
    # the cluster's and clients' threads in this process are gone, but for distributed's
    # process-wide offload executor (one idle thread kept for reuse)
    left = [
        t.name
        for t in set(threading.enumerate()) - threads_before
        if t.is_alive() and not t.name.startswith("Dask-Offload")
    ]
    assert left == []


def test_dask_scheduler_option_needs_the_dask_runner(archive, tmp_path):
    parser = argparse.ArgumentParser()
    backfill_command.add_arguments(parser)
    args = parser.parse_args(
        [str(archive), "--out", str(tmp_path), "--dask-scheduler", "tcp://127.0.0.1:1"]
    )
    from skygrade.streamer.cli_common import UsageError

    with pytest.raises(UsageError, match="--dask-scheduler needs --runner dask"):
        backfill_command.command(args, Config())


def test_group_by_key_shuffles_through_the_scheduler_not_a_worker_directory(cluster):
    """dask picks a bag's shuffle when the graph is built; with no client yet it would pick
    the on-disk one (a partd directory of one worker, lost when that worker frees it)."""
    from dask.distributed import Client

    p = beam.Pipeline()
    _ = (
        p
        | beam.Create(list(range(40)))
        | beam.Map(lambda x: (x % 7, x))
        | beam.GroupByKey()
        | beam.MapTuple(lambda k, vs: (k, sorted(vs)))
    )
    leaves = translate(p, {"partition_size": 1})
    keys = {str(k[0] if isinstance(k, tuple) else k) for leaf in leaves for k in leaf.dask}
    assert not [k for k in keys if k.startswith("partd-") or "groupby-part" in k]
    assert [k for k in keys if "shuffle" in k]
    with Client(cluster.scheduler_address) as client:
        (pairs,) = client.gather(client.compute(list(leaves)))
    groups = dict(windowed.value for _, windowed in pairs)
    assert groups == {k: list(range(k, 40, 7)) for k in range(7)}


def test_runner_keeps_tagged_outputs_apart_and_finish_bundle_outputs(cluster, tmp_path):
    """The faults of Beam 2.77's DaskRunner that broke grading (see skygrade.streamer.dask_runner):
    a multi-output ParDo (``Partition``) fed every output to each branch, and the last batch
    of ``BatchElements`` (emitted in ``finish_bundle``) was lost; both branches are leaves."""
    evens, odds = tmp_path / "evens.txt", tmp_path / "odds.txt"

    def write_lines(values, path):  # nested: pickled by value for the Dask workers
        with open(path, "a") as fh:
            fh.writelines(f"{v}\n" for v in values)
        return len(values)

    options = pipeline_options("dask", 2, [*dask_flags(cluster), "--dask_npartitions=3"])
    p = make_pipeline(options)
    parts = p | beam.Create(list(range(23))) | beam.Partition(lambda x, _: x % 2, 2)
    _ = (
        parts[0]
        | "Batch" >> beam.BatchElements(min_batch_size=4, max_batch_size=4)
        | "WriteEvens" >> beam.Map(write_lines, str(evens))
    )
    _ = (
        parts[1]
        | "Odds" >> beam.Map(lambda x: [x])
        | "WriteOdds" >> beam.Map(write_lines, str(odds))
    )
    result = p.run()
    assert result.wait_until_finish() == "DONE"
    assert result.client.status == "closed"  # closed by the result, before the cluster
    assert sorted(int(x) for x in evens.read_text().split()) == list(range(0, 23, 2))
    assert sorted(int(x) for x in odds.read_text().split()) == list(range(1, 23, 2))


def test_pipeline_options_for_dask():
    from apache_beam.runners.dask.dask_runner import DaskOptions

    from skygrade.streamer.dask_runner import SkygradeDaskOptions

    options = pipeline_options("dask", 3)
    assert options.view_as(DaskOptions).partition_size == 1  # one exposure a partition
    assert options.view_as(SkygradeDaskOptions).dask_local_workers == 3
    sized = pipeline_options("DaskRunner", 1, ["--dask_npartitions=4"])
    dask = sized.view_as(DaskOptions)
    assert (dask.npartitions, dask.partition_size) == (4, None)
