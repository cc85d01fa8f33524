"""``skygrade backfill`` on a tiny archive: equal to ``run_grade``, idempotent, resumable."""

import argparse
import io
import shutil

import duckdb
import pytest

from skygrade.models.classes import CLASSES
from skygrade.ops.config import Config
from skygrade.streamer.backfill import (
    existing_rows,
    find_exposures,
    plan_backfill,
    run_backfill,
)
from skygrade.streamer.cli import COMMANDS
from skygrade.streamer.commands import backfill as backfill_command
from skygrade.streamer.pipelines import run_grade
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import simulate_archive
from skygrade.transforms.grades_dataset import GradesDataset

pytestmark = pytest.mark.usefixtures("no_thread_leak")

NIGHTS = ["2026-11-01", "2026-11-02"]
CORRUPT = "2899999"
COMPARED = ["status", "grade", "confidence", "n_ccd", "n_ccd_graded", "n_sources"] + [
    f"p_{c}" for c in CLASSES
]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "backfill-test")


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    simulate_archive(root, NIGHTS, 2, Geometry(2, 256, 320), 3, {"GOOD": 1, "BT": 1})
    (root / NIGHTS[1] / f"{CORRUPT}o.fits").write_bytes(b"garbage " * 400)
    return root


@pytest.fixture(scope="module")
def graded(archive, bundle, tmp_path_factory):
    """One backfill of the whole archive (shared; tests copy it before changing it)."""
    out = tmp_path_factory.mktemp("graded") / "grades"
    stream = io.StringIO()
    summary = run_backfill(archive, out, bundle, Config(), stream=stream, min_interval_s=0)
    return out, summary, stream.getvalue()


def copy_of(graded, tmp_path):
    return shutil.copytree(graded[0], tmp_path / "grades")


def stamps(out):
    return {p: p.stat().st_mtime_ns for p in sorted(out.rglob("*.parquet"))}


def test_backfill_equals_run_grade_and_reports(archive, bundle, graded, tmp_path):
    out, summary, progress = graded
    items = find_exposures(archive)
    assert len(items) == 5 and summary.found == 5 and summary.skipped == 0
    expected = run_grade([i.path for i in items], tmp_path / "grade", bundle, Config())
    rows = sorted(GradesDataset(out).read().to_pylist(), key=lambda r: r["exposure_id"])
    assert [r["exposure_id"] for r in rows] == [r["exposure_id"] for r in expected]
    for got, want in zip(rows, expected, strict=True):
        for column in COMPARED:
            # float32 network outputs depend on which CCDs share a batch (~1e-8 here)
            assert got[column] == pytest.approx(want[column], abs=1e-6), column
        assert got["model_version"] == "backfill-test"
    # file names carry the model version, one row per exposure per version
    names = sorted(p.name for p in out.glob("exposures/*/*.parquet"))
    assert names == sorted(f"{i.exposure_id}.backfill-test.parquet" for i in items)
    assert len(list(out.glob("ccds/*/*.parquet"))) == 5
    # the corrupt file is quarantined, reported, and the run completed
    assert [eid for eid, _ in summary.quarantined] == [CORRUPT]
    text = summary.text()
    assert f"{CORRUPT}: not_fits" in text and "5 written now" in text and str(out) in text
    assert sum(summary.grade_counts.values()) == 4 and not summary.missing
    assert "exposures: 5/5 (100.0%)" in progress


def test_backfill_with_a_ccd_pool_writes_the_same_rows(archive, bundle, graded, tmp_path):
    """--ccd-workers (the daemon's pooled, shuffle-free grading) writes what the runner-spread
    backfill writes, corrupt file included."""
    out = tmp_path / "pooled"
    summary = run_backfill(archive, out, bundle, Config(), stream=io.StringIO(), ccd_workers=2)
    assert (summary.found, len(summary.rows), summary.missing) == (5, 5, [])
    want = sorted(GradesDataset(graded[0]).read().to_pylist(), key=lambda r: r["exposure_id"])
    got = sorted(GradesDataset(out).read().to_pylist(), key=lambda r: r["exposure_id"])
    assert [r["exposure_id"] for r in got] == [r["exposure_id"] for r in want]
    for a, b in zip(got, want, strict=True):
        for column in COMPARED:
            assert a[column] == pytest.approx(b[column], abs=1e-6), column
    assert len(GradesDataset(out).read("ccds")) == len(GradesDataset(graded[0]).read("ccds"))


def test_ccd_pool_needs_the_in_process_runner(archive, tmp_path, capsys):
    from skygrade.streamer.cli import main

    argv = ["backfill", str(archive), "--out", str(tmp_path / "o"), "--ccd-workers", "2"]
    assert main([*argv, "--workers", "2"]) == 2
    assert "--ccd-workers runs the pipeline in this process" in capsys.readouterr().err
    assert main([*argv, "--backend", "catalog"]) == 2
    assert "not for --backend catalog" in capsys.readouterr().err


def test_rerun_writes_nothing_and_skips_all(archive, bundle, graded, tmp_path):
    out = copy_of(graded, tmp_path)
    before = stamps(out)
    summary = run_backfill(archive, out, bundle, Config(), stream=io.StringIO())
    assert (summary.found, summary.skipped, summary.rows) == (5, 5, [])
    assert stamps(out) == before
    assert "5 already graded (skipped)" in summary.text()


def test_interrupted_run_resumes_exactly_once(archive, bundle, graded, tmp_path):
    out = copy_of(graded, tmp_path)
    lost = sorted(out.glob("exposures/*/*.parquet"))[:2]
    for p in lost:  # a crash before these exposures were committed
        p.unlink()
    kept = {p: t for p, t in stamps(out).items() if p.parent.parent.name == "exposures"}
    summary = run_backfill(archive, out, bundle, Config(), stream=io.StringIO())
    assert summary.skipped == 3
    assert sorted(r["exposure_id"] for r in summary.rows) == sorted(
        p.name.split(".")[0] for p in lost
    )
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())
    ids = GradesDataset(out).read().column("exposure_id").to_pylist()
    assert sorted(ids) == sorted(set(ids)) and len(ids) == 5


def test_nights_select_and_the_rest_follows(archive, bundle, tmp_path):
    out = tmp_path / "grades"
    first = run_backfill(archive, out, bundle, Config(), nights=[NIGHTS[0]], stream=io.StringIO())
    assert first.found == 2 and {r["night"] for r in first.rows} == {NIGHTS[0]}
    assert [p.name for p in (out / "exposures").iterdir()] == [f"night={NIGHTS[0]}"]
    stream = io.StringIO()
    rest = run_backfill(archive, out, bundle, Config(), batch_size=2, stream=stream)
    assert (rest.found, rest.skipped, len(rest.rows)) == (5, 2, 3)
    assert "exposures: 3/3" in stream.getvalue()  # two Beam jobs, one progress line
    assert {r["night"] for r in rest.rows} == {NIGHTS[1]}


def test_new_model_version_adds_rows_beside_the_old(archive, graded, tmp_path, tiny_bundle):
    out = copy_of(graded, tmp_path)
    before = stamps(out)
    v2 = tiny_bundle(tmp_path / "b2", "v2/2026 12")
    summary = run_backfill(archive, out, v2, Config(), stream=io.StringIO())
    assert summary.skipped == 0 and len(summary.rows) == 5
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # old rows untouched
    table = GradesDataset(out).read()
    pairs = sorted(
        zip(table["exposure_id"].to_pylist(), table["model_version"].to_pylist(), strict=True)
    )
    ids = sorted({e for e, _ in pairs})
    assert pairs == sorted((e, v) for e in ids for v in ("backfill-test", "v2/2026 12"))
    assert (
        GradesDataset(out)
        .paths(NIGHTS[0], ids[0], "v2/2026 12")[0]
        .name.endswith(".v2_2026_12.parquet")
    )
    # the same dataset, one table, in DuckDB
    query = (
        f"select model_version, count(*) from read_parquet('{out}/exposures/*/*.parquet', "
        "hive_partitioning=true) group by 1 order by 1"
    )
    assert duckdb.sql(query).fetchall() == [("backfill-test", 5), ("v2/2026 12", 5)]


def test_same_version_from_the_daemon_is_skipped_or_replaced_with_force(archive, bundle, tmp_path):
    out = tmp_path / "grades"
    items = find_exposures(archive, nights=[NIGHTS[0]])
    run_grade([i.path for i in items], out, bundle, Config())  # <id>.<version>.parquet files
    plan = plan_backfill(items, existing_rows(out), "backfill-test", _digest())
    assert (plan.todo, len(plan.skipped)) == ([], 2)
    forced = run_backfill(
        archive, out, bundle, Config(), nights=[NIGHTS[0]], force=True, stream=io.StringIO()
    )
    assert len(forced.rows) == 2
    names = sorted(p.name for p in out.glob("exposures/*/*.parquet"))
    assert names == sorted(f"{i.exposure_id}.backfill-test.parquet" for i in items)  # in place
    assert len(GradesDataset(out).read()) == 2


def _digest():
    from skygrade.ops.config import config_digest

    return config_digest(Config())


def test_command_line(archive, bundle, graded, tmp_path, capsys):
    out = copy_of(graded, tmp_path)
    parser = argparse.ArgumentParser()
    backfill_command.add_arguments(parser)
    args = parser.parse_args(
        [str(archive), "--out", str(out), "--bundle", str(bundle), "--nights", "2026-11-02"]
    )
    assert backfill_command.command(args, Config()) == 0
    text = capsys.readouterr().out
    assert "3 exposure(s) selected, 3 already graded (skipped)" in text
    assert COMMANDS["backfill"] and "skygrade backfill" in backfill_command.EXAMPLES
