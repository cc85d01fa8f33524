"""``skygrade report``: a night's summary from a small hand-made grades dataset."""

import argparse
import datetime as dt

import pytest

from models.classes import CLASSES
from ops.config import Config
from streamer import report
from streamer.backfill import write_backfill_rows
from transforms.sinks import write_grade_rows

NIGHT = "2026-11-24"
START = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.UTC)


def row(i, grade, minutes, version="v1", status="graded", reason=""):
    when = START + dt.timedelta(minutes=minutes)
    r = {
        "exposure_id": f"28170{i:02d}",
        "night": NIGHT,
        "path": f"/archive/{NIGHT}/28170{i:02d}o.fits",
        "grade": grade if status == "graded" else None,
        "confidence": 0.8 if status == "graded" else 0.0,
        "n_ccd": 36,
        "n_ccd_graded": 36 if status == "graded" else 0,
        "median_elongation": 1.2 + 0.01 * i,
        "median_iso0": 20.0 + i,
        "median_background": 900.0 + 10 * i,
        "date_obs": when.isoformat(),
        "model_version": version,
        "config_digest": "abc",
        "graded_at": when.timestamp() + 60,
        "status": status,
        "reason": reason,
    }
    r.update({f"p_{c}": (1.0 if c == grade else 0.0) for c in CLASSES})
    return r


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "grades"
    grades = ["GOOD", "GOOD", "GOOD", "BT", "B_SEEING", "GOOD"]
    for i, g in enumerate(grades):
        write_grade_rows(out, row(i, g, 20 * i), [])
    write_grade_rows(out, row(9, None, 200, status="quarantined", reason="truncated: 5 of 37"), [])
    # a later model version regraded exposure 3 beside the old row
    later = row(3, "GOOD", 60, version="v2")
    later["graded_at"] += 86400
    write_backfill_rows(out, later, [])
    write_grade_rows(out, row(0, "BT", 0) | {"night": "2026-11-23"}, [])  # another night
    return out


def test_night_rows_take_each_exposures_latest_grade_or_a_version(dataset):
    rows = report.night_rows(dataset, NIGHT)
    assert len(rows) == 7
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)
    assert {r["exposure_id"]: r["model_version"] for r in rows}["2817003"] == "v2"
    only_v1 = report.night_rows(dataset, NIGHT, model_version="v1")
    assert len(only_v1) == 7 and {r["model_version"] for r in only_v1} == {"v1"}
    s = report.summarize(rows)
    assert s["grades"] == {"GOOD": 5, "B_SEEING": 1} and s["quarantined"] == 1
    assert s["usable_fraction"] == pytest.approx(5 / 6)
    assert report.nights(dataset) == ["2026-11-23", NIGHT]


def test_report_text(dataset):
    text = report.format_report(NIGHT, report.night_rows(dataset, NIGHT, "v1"))
    assert "7 exposure(s), 6 graded, 1 quarantined; usable (GOOD) 67% of graded" in text
    assert "GOOD 4 (67%)" in text and "BT 1 (17%)" in text
    assert "2026-11-25 06" in text and "2026-11-25 07" in text and "2026-11-25 09" in text
    assert "2817009: truncated: 5 of 37" in text
    assert report.format_report(NIGHT, []) == f"night {NIGHT}: no exposure graded"


def test_png(dataset, tmp_path):
    png = report.plot_night(NIGHT, report.night_rows(dataset, NIGHT), tmp_path / "n.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no exposure row"):
        report.plot_night(NIGHT, [], tmp_path / "empty.png")


def test_command_line(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report.add_arguments(parser)
    args = parser.parse_args([str(dataset), "--night", NIGHT, "--png", str(tmp_path / "p.png")])
    assert report.command(args, Config()) == 0
    out = capsys.readouterr().out
    assert f"night {NIGHT}: 7 exposure(s)" in out and (tmp_path / "p.png").is_file()
    args = parser.parse_args([str(dataset)])  # the latest night by default
    assert report.command(args, Config()) == 0
    assert "night 2026-11-24" in capsys.readouterr().out
    args = parser.parse_args([str(dataset), "--night", "2026-01-01"])
    assert report.command(args, Config()) == 1
    from streamer.cli import UsageError

    with pytest.raises(UsageError, match="not a grades dataset"):
        report.command(parser.parse_args([str(tmp_path)]), Config())
