"""GradeExposures end to end on small simulated exposures, and the parquet dataset it writes."""

import numpy as np
import pytest

from skygrade.models.classes import CLASSES
from skygrade.ops.config import Config, config_digest
from skygrade.streamer.pipelines import run_grade
from skygrade.streamer.sky_fits import write_exposure
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.grades_dataset import GradesDataset


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "test-7")


@pytest.fixture(scope="module")
def exposures(tmp_path_factory, synth_mef):
    root = tmp_path_factory.mktemp("drop")
    plans = plan_night("2026-11-24", 2, seed=3, class_mix={"GOOD": 1, "BT": 1})
    paths = [
        str(write_exposure(p, Geometry(2, 256, 320), root / "2026-11-24" / p.filename))
        for p in plans
    ]
    bad = root / "2026-11-24" / "2817999o.fits"
    bad.write_bytes(b"not a fits file" * 300)
    dead = synth_mef(root / "2026-11-24" / "2817998o.fits")
    return paths, str(bad), dead


@pytest.fixture(scope="module")
def synth_mef():
    from astropy.io import fits

    def make(path):
        rng = np.random.default_rng(0)
        live = rng.normal(1000, 20, (320, 256))
        for _ in range(40):
            y, x = rng.integers(20, 300), rng.integers(20, 236)
            live[y - 2 : y + 3, x - 2 : x + 3] += 3000
        hdus = [fits.PrimaryHDU()]
        hdus[0].header.update(
            EXPNUM=2817998, EXPTIME=60.0, NEXTEND=2, **{"DATE-OBS": "2026-11-25T08:00:00"}
        )
        for i, data in enumerate([live, np.zeros((320, 256))]):
            hdus.append(fits.ImageHDU(data.astype(np.uint16), name=f"ccd{i:02d}"))
        fits.HDUList(hdus).writeto(path)
        return str(path)

    return make


def test_grade_rows_for_good_bad_and_dead_inputs(bundle, exposures, tmp_path):
    paths, bad, dead = exposures
    cfg = Config()
    rows = run_grade([*paths, bad, dead], tmp_path, bundle, cfg)
    by_id = {r["exposure_id"]: r for r in rows}
    assert len(rows) == 4
    for p in paths:
        r = by_id[p.rsplit("/", 1)[1][:-6]]
        assert r["status"] == "graded" and r["grade"] in CLASSES
        assert r["n_ccd"] == 2 and r["n_ccd_graded"] == 2
        assert sum(r[f"p_{c}"] for c in CLASSES) == pytest.approx(1.0)
        assert r["night"] == "2026-11-24" and r["extract_s"] > 0
    assert by_id["2817999"]["status"] == "quarantined"
    assert by_id["2817999"]["reason"].startswith("not_fits")
    d = by_id["2817998"]
    assert d["status"] == "graded" and d["n_ccd_graded"] == 1
    assert "all_zero" in d["reason"]
    assert {r["model_version"] for r in rows} == {"test-7"}
    assert {r["config_digest"] for r in rows} == {config_digest(cfg)}

    ccds = GradesDataset(tmp_path).read("ccds").to_pylist()
    dead_ccd = [c for c in ccds if c["exposure_id"] == "2817998" and c["ccd"] == 1][0]
    assert dead_ccd["status"] == "quarantined" and dead_ccd["grade"] is None
    live = [c for c in ccds if c["status"] == "graded"]
    assert all(len(c["hits"]) == 20 for c in live)


def test_dataset_reads_as_one_table_everywhere_and_regrading_does_not_duplicate(
    bundle, exposures, tmp_path
):
    import duckdb
    import pandas as pd
    import pyarrow.dataset as ds

    paths, bad, _ = exposures
    run_grade([*paths, bad], tmp_path, bundle, Config())
    run_grade(paths, tmp_path, bundle, Config())  # regrade: same files replaced
    table = ds.dataset(tmp_path / "exposures", partitioning="hive").to_table()
    assert table.num_rows == 3
    frame = pd.read_parquet(tmp_path / "exposures")
    assert sorted(frame["exposure_id"]) == sorted(table.column("exposure_id").to_pylist())
    con = duckdb.connect()
    n, nights = con.execute(
        f"select count(*), count(distinct night) from "
        f"read_parquet('{tmp_path}/exposures/*/*.parquet', hive_partitioning=true)"
    ).fetchone()
    assert (n, nights) == (3, 1)
    n_ccd = con.execute(
        f"select count(*) from read_parquet('{tmp_path}/ccds/*/*.parquet', hive_partitioning=1)"
    ).fetchone()[0]
    assert n_ccd == 4


def test_pooled_ccds_give_the_same_rows_as_beam_spread_ccds(bundle, exposures, tmp_path):
    paths, bad, dead = exposures
    spread = run_grade([*paths, bad, dead], tmp_path / "a", bundle, Config())
    pooled = run_grade([*paths, bad, dead], tmp_path / "b", bundle, Config(), ccd_workers=2)
    again = run_grade(paths, tmp_path / "c", bundle, Config(), ccd_workers=2)  # pool reused
    keys = ("exposure_id", "grade", "status", "n_ccd_graded", "n_sources")
    assert [[r[k] for k in keys] for r in spread] == [[r[k] for k in keys] for r in pooled]
    for a, b in zip(spread, pooled, strict=True):
        for c in CLASSES:
            assert a[f"p_{c}"] == pytest.approx(b[f"p_{c}"])
    assert [r["grade"] for r in again] == [r["grade"] for r in spread if r["path"] in paths]


def test_a_session_built_once_grades_like_run_grade(bundle, exposures, tmp_path):
    """The daemon's session (graph and proto built once, one run per exposure) writes the
    rows run_grade writes; arrivals reach latency_s; a failed run leaves nothing behind."""
    from skygrade.streamer.session import _ARRIVALS, _INBOX, GradingSession

    paths, bad, dead = exposures
    expected = run_grade([*paths, bad, dead], tmp_path / "a", bundle, Config(), ccd_workers=1)
    session = GradingSession(tmp_path / "b", bundle, Config(), ccd_workers=1)
    got = []
    for i, path in enumerate([*paths, bad, dead]):
        arrived = 1_700_000_000.0 + i
        rows = session.grade([path], {path: arrived})
        assert [r["path"] for r in rows] == [path]
        assert rows[0]["arrived_at"].timestamp() == pytest.approx(arrived)
        got += rows
    assert session.runs == 4 and not _INBOX and not _ARRIVALS
    keys = ("exposure_id", "grade", "status", "reason", "n_ccd_graded", "n_sources")
    got.sort(key=lambda r: r["exposure_id"])
    assert [[r[k] for k in keys] for r in got] == [[r[k] for k in keys] for r in expected]
    for a, b in zip(expected, got, strict=True):
        for c in CLASSES:
            assert a[f"p_{c}"] == pytest.approx(b[f"p_{c}"])
    assert len(GradesDataset(tmp_path / "b").read()) == 4

    # a sink that fails raises to the caller (first run and proto reruns alike), the inbox
    # does not keep the paths, and the session grades again once the disk is back
    import shutil

    out = tmp_path / "c"
    failing = GradingSession(out, bundle, Config(), ccd_workers=1)
    for run in range(3):
        out.write_text("a file where the dataset's directory should be")
        # Beam wraps the sink's NotADirectoryError in a RuntimeError that keeps its message
        with pytest.raises(RuntimeError, match=r"NotADirectoryError: .*Not a directory: .*/c/"):
            failing.grade([paths[0]], {paths[0]: 1.0})
        assert not _INBOX and not _ARRIVALS
        out.unlink()
        assert [r["path"] for r in failing.grade([paths[0]])] == [paths[0]]
        assert failing.runs == run + 1
        shutil.rmtree(out)
