"""``skygrade report``: a night's summary from a small hand-made grades dataset."""

import argparse
import datetime as dt
import re

import pytest

from skygrade.models.classes import CLASSES
from skygrade.ops.config import Config
from skygrade.streamer import report
from skygrade.streamer.commands import report as report_command
from skygrade.transforms.grades_dataset import GradesDataset

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
        "filter": "r.MP9601" if i % 2 else "g.MP9401",
        "exptime": 300.0,
        "object": f"D{i}",
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
        GradesDataset(out).write(row(i, g, 20 * i), [])
    GradesDataset(out).write(
        row(9, None, 200, status="quarantined", reason="truncated: 5 of 37"), []
    )
    # a later model version regraded exposure 3 beside the old row
    later = row(3, "GOOD", 60, version="v2")
    later["graded_at"] += 86400
    GradesDataset(out).write(later, [])
    # another night's exposure (an exposure id is in one night only: issue 21 item 5)
    GradesDataset(out).write(row(10, "BT", 0) | {"night": "2026-11-23"}, [])
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
    assert GradesDataset(dataset).nights() == ["2026-11-23", NIGHT]


def test_report_text(dataset):
    text = report.format_report(NIGHT, report.night_rows(dataset, NIGHT, "v1"))
    assert "7 exposure(s), 6 graded, 1 quarantined; usable (GOOD) 67% of graded" in text
    assert "GOOD 4 (67%)" in text and "BT 1 (17%)" in text
    assert "2026-11-25 06" in text and "2026-11-25 07" in text and "2026-11-25 09" in text
    assert "2817009: truncated: 5 of 37" in text
    assert report.format_report(NIGHT, []) == f"night {NIGHT}: no exposure graded"


def test_report_is_about_the_night_grades_per_filter_time_lost_and_what_to_re_observe(dataset):
    lines = report.format_report(NIGHT, report.night_rows(dataset, NIGHT, "v1")).splitlines()
    # v1: 0 g GOOD, 1 r GOOD, 2 g GOOD, 3 r BT, 4 g B_SEEING, 5 r GOOD, 9 r quarantined
    table = lines[lines.index("grades per filter:") + 2 :][:2]
    assert [line.split() for line in table] == [
        ["g.MP9401", "3", "2", "1", "0", "0", "0", "0"],
        ["r.MP9601", "4", "2", "0", "0", "1", "0", "1"],
    ]
    assert "time lost (sum of EXPTIME per grade): B_SEEING 5 min · BT 5 min" in lines
    again = lines[next(i for i, t in enumerate(lines) if t.startswith("to re-observe")) :]
    assert again[0].startswith("to re-observe (2 not GOOD")
    assert again[1].split()[:6] == ["07:00:00", "2817003", "D3", "r.MP9601", "BT", "0.80:"]
    assert again[2].split()[:5] == ["07:20:00", "2817004", "D4", "g.MP9401", "B_SEEING"]
    assert "measured" not in "\n".join(lines)  # no seeing / sky column in these rows
    rows = report.night_rows(dataset, NIGHT, "v1")
    for i, r in enumerate(rows):
        r.update(seeing_arcsec=0.6 + 0.1 * i, airmass=1.2)
    text = report.format_report(NIGHT, rows)
    assert '  seeing: 0.85" [0.60, 1.10] (6 exposures)' in text
    assert "  airmass: 1.20 [1.20, 1.20] (6 exposures)" in text


def test_quarantine_only_night_gives_a_short_correct_report(dataset):
    rows = [r for r in report.night_rows(dataset, NIGHT) if r["status"] != "graded"]
    text = report.format_report(NIGHT, rows)
    assert text.splitlines()[:2] == [
        f"night {NIGHT}: 1 exposure(s), 0 graded, 1 quarantined; usable (GOOD) - of graded; "
        "model v1",
        "no exposure graded: every file of the night was quarantined (below)",
    ]
    assert "grades per filter" not in text and "to re-observe" not in text
    assert text.endswith("quarantined:\n  2817009: truncated: 5 of 37")


def test_png(dataset, tmp_path):
    png = report.plot_night(NIGHT, report.night_rows(dataset, NIGHT), tmp_path / "n.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert report.plot_night(NIGHT, [])[:8] == b"\x89PNG\r\n\x1a\n"  # bytes, to inline


def axis_of(fig):
    """The figure's time axis: (start, end) as UTC datetimes, tick labels, texts shown."""
    from matplotlib.dates import num2date

    ax = fig.axes[-1]
    fig.canvas.draw()
    lo, hi = (num2date(x) for x in ax.get_xlim())
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    texts = [t.get_text() for a in fig.axes for t in a.texts]
    return lo, hi, labels, texts


def test_the_plots_time_axis_is_the_nights_also_when_nothing_was_graded(dataset):
    rows = report.night_rows(dataset, NIGHT)
    lo, hi, labels, texts = axis_of(report.night_figure(NIGHT, rows))
    assert lo <= rows[0]["time"] and hi >= rows[-1]["time"] and hi - lo < dt.timedelta(hours=5)
    assert labels and all(re.fullmatch(r"\d\d:\d\d", t) for t in labels), labels
    assert len(report.night_figure(NIGHT, rows).axes) == 5  # grades + 4 statistics
    # quarantine-only night: one panel, over the files' times, that says so
    q = [r for r in rows if r["status"] != "graded"]
    fig = report.night_figure(NIGHT, q)
    lo, hi, labels, texts = axis_of(fig)
    assert len(fig.axes) == 1 and texts == ["no exposure graded: every file quarantined"]
    assert lo < q[0]["time"] < hi and hi - lo == dt.timedelta(minutes=20)
    assert all(re.fullmatch(r"\d\d:\d\d", t) for t in labels), labels
    # no exposure at all: the night's 13 hours (18:00 to 07:00 HST)
    lo, hi, labels, texts = axis_of(report.night_figure(NIGHT, []))
    assert (lo, hi) == (START - dt.timedelta(hours=2), START + dt.timedelta(hours=11))
    assert texts == ["no exposure"]


def test_command_line(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    args = parser.parse_args([str(dataset), "--night", NIGHT, "--png", str(tmp_path / "p.png")])
    assert report_command.command(args, Config()) == 0
    out = capsys.readouterr().out
    assert f"night {NIGHT}: 7 exposure(s)" in out and (tmp_path / "p.png").is_file()
    args = parser.parse_args([str(dataset)])  # the latest night by default
    assert report_command.command(args, Config()) == 0
    assert "night 2026-11-24" in capsys.readouterr().out
    args = parser.parse_args([str(dataset), "--night", "2026-01-01"])
    assert report_command.command(args, Config()) == 1
    assert capsys.readouterr().out == (
        f"night 2026-01-01: no exposure in {dataset}; nights with data: 2026-11-23, {NIGHT}\n"
    )
    from skygrade.streamer.cli_common import UsageError

    with pytest.raises(UsageError, match="not a grades dataset"):
        report_command.command(parser.parse_args([str(tmp_path)]), Config())


def test_an_empty_dataset_gives_a_short_report_not_a_usage_error(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    for empty in (tmp_path / "new", tmp_path / "listed"):
        empty.mkdir()
        if empty.name == "listed":
            (empty / "exposures").mkdir()
        html, png = tmp_path / f"{empty.name}.html", tmp_path / f"{empty.name}.png"
        args = parser.parse_args([str(empty), "--html", str(html), "--png", str(png)])
        assert report_command.command(args, Config()) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"{empty}: no night in the dataset yet (nothing graded)\n")
        page = html.read_text()
        assert "has no graded exposure yet" in page and "<script" not in page
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_html_morning_report_embeds_the_plot_and_writes_the_csv_beside_it(dataset, tmp_path):
    import base64
    import csv
    import io

    from PIL import Image

    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    html = tmp_path / "out" / "night.html"
    args = parser.parse_args([str(dataset), "--night", NIGHT, "--html", str(html)])
    assert report_command.command(args, Config()) == 0
    page = html.read_text()
    # the timeline plot, inlined
    plot = page.split('<section id="plot"', 1)[1]
    data = re.search(r'src="data:image/png;base64,([^"]+)"', plot)[1]
    assert Image.open(io.BytesIO(base64.b64decode(data))).size == (1000, 1040)
    # grades per filter, and what to re-observe with its reasons (the latest grades: 3 is GOOD)
    per_filter = page.split('id="per-filter"', 1)[1].split("</table>", 1)[0]
    cells = re.findall(r'<tr data-filter="([^"]+)">(.*?)</tr>', per_filter)
    assert [(f, re.findall(r">(\d+)<", row)) for f, row in cells] == [
        ("g.MP9401", ["3", "2", "1", "0", "0", "0", "0"]),
        ("r.MP9601", ["4", "3", "0", "0", "0", "0", "1"]),
    ]
    again = page.split('id="reobserve"', 1)[1].split("</table>", 1)[0]
    assert re.findall(r'<tr data-id="(\d+)">', again) == ["2817004"]
    assert 'href="#exp-2817004"' in again and 'data-grade="B_SEEING"' in again
    # the CSV beside it, linked: every exposure, the latest grades
    assert 'href="night.csv" download' in page
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out" / "night.csv").read_text())))
    assert [r["exposure_id"] for r in rows] == [f"28170{i:02d}" for i in (0, 1, 2, 3, 4, 5, 9)]
    by_id = {r["exposure_id"]: r for r in rows}
    assert by_id["2817003"]["grade"] == "GOOD" and by_id["2817003"]["model_version"] == "v2"
    assert by_id["2817009"]["status"] == "quarantined" and by_id["2817009"]["grade"] == ""
    assert by_id["2817009"]["reason"] == "truncated: 5 of 37"
    assert by_id["2817000"]["time"] == "2026-11-25T06:00:00+00:00"


def test_quarantine_only_night_html_and_png(tmp_path, capsys):
    out = tmp_path / "grades"
    GradesDataset(out).write(
        row(9, None, 200, status="quarantined", reason="truncated: 5 of 37"), []
    )
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    html, png = tmp_path / "q.html", tmp_path / "q.png"
    args = parser.parse_args([str(out), "--html", str(html), "--png", str(png)])
    assert report_command.command(args, Config()) == 0
    assert "no exposure graded: every file of the night was quarantined" in capsys.readouterr().out
    page = html.read_text()
    assert "no exposure graded this night" in page
    waiting = page.split('<section id="waiting"', 1)[1].split("</section>", 1)[0]
    assert (
        'data-id="2817009" data-state="quarantined"' in waiting and "truncated: 5 of 37" in waiting
    )
    assert "nothing: every graded exposure is GOOD" in page
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_plot_shows_seeing_and_sky_through_the_night_when_the_rows_have_them(dataset):
    rows = report.night_rows(dataset, NIGHT)
    labels = [a.get_ylabel() for a in report.night_figure(NIGHT, rows).axes[1:]]
    assert labels == [label for _, label in report.STATISTICS]
    for i, r in enumerate(rows):
        r.update(seeing_arcsec=0.7 + 0.05 * i, sky_mag_arcsec2=20.0)
    fig = report.night_figure(NIGHT, rows)
    assert [a.get_ylabel() for a in fig.axes[1:3]] == ['seeing (")', "sky (mag/arcsec2)"]
    seeing = fig.axes[1].collections[0].get_offsets()[:, 1]
    graded = [r["seeing_arcsec"] for r in rows if r["status"] == "graded"]
    assert list(seeing) == pytest.approx(graded)
