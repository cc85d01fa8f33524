"""The observer page and its JSON endpoints over a small hand-made grades dataset (no browser:
tests/streamer/test_observer_page.py drives the real page in Chromium)."""

import argparse
import datetime as dt
import io
import itertools
import json
import math
import re
import time

import numpy as np
import pytest
from PIL import Image

from skygrade.models.classes import CLASSES
from skygrade.ops.config import Config
from skygrade.ops.http import HttpServer, Request
from skygrade.ops.metrics import Metrics
from skygrade.streamer import observer as obs
from skygrade.streamer import observer_report, observer_templates, observer_views, report
from skygrade.streamer.commands import report as report_command
from skygrade.streamer.night_summary import GRADE_COLORS
from skygrade.streamer.observer_index import NightIndex
from skygrade.streamer.page_images import focal_plane_layout, png_gray8
from skygrade.transforms.grades_dataset import GradesDataset, quantize_image, read_images
from tests.helpers.http import get

pytestmark = pytest.mark.usefixtures("no_thread_leak")

NIGHT = "2026-11-24"
START = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.UTC)
XSS = "<script>alert(1)</script>"


def exposure(i, grade, n_ccd, version="v1", status="graded", obj="D3"):
    when = START + dt.timedelta(minutes=3 * i)
    row = {
        "exposure_id": f"28170{i:02d}",
        "night": NIGHT,
        "path": f"/drop/{NIGHT}/28170{i:02d}o.fits",
        "grade": grade if status == "graded" else None,
        "confidence": 0.55 + 0.05 * i if status == "graded" else 0.0,
        "n_ccd": n_ccd,
        "n_ccd_graded": n_ccd - 1 if status == "graded" else 0,
        "n_sources": 1000 + i,
        "median_elongation": 1.2 + 0.01 * i,
        "median_iso0": 20.0 + i,
        "median_background": float("nan") if i == 1 else 900.0 + i,
        "exptime": 300.0,
        "filter": "r.MP9601",
        "object": obj,
        "date_obs": when.isoformat(),
        "model_version": version,
        "config_digest": "abc",
        "arrived_at": when.timestamp() + 310,
        "graded_at": when.timestamp() + 330,
        "latency_s": 20.0 + i,
        "status": status,
        "reason": f"{grade}: {n_ccd - 1}/{n_ccd - 1} CCDs" if status == "graded" else "truncated",
    }
    row.update({f"p_{c}": None for c in CLASSES})
    if status == "graded":
        row.update({f"p_{c}": (0.6 if c == grade else 0.1) for c in CLASSES})
    return row


def ccd_rows(row, seed):
    """CCD rows with a representative image each; the last CCD quarantined (dead)."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(row["n_ccd"]):
        dead = k == row["n_ccd"] - 1 or row["status"] != "graded"
        g = None if dead else CLASSES[(seed + k) % len(CLASSES)]
        probs = rng.dirichlet(np.ones(len(CLASSES)))
        if g is not None:
            probs[CLASSES.index(g)] = probs.max() + 0.5
            probs /= probs.sum()
        c = {
            "exposure_id": row["exposure_id"],
            "night": row["night"],
            "ccd": k,
            "grade": g,
            "hits": None if dead else [int(h) for h in rng.integers(0, 50, 20)],
            "n_sources": 0 if dead else 40 + k,
            "median_elongation": float("nan") if dead else 1.1 + 0.01 * k,
            "median_iso0": float("nan") if dead else 9.0 + k,
            "median_background": float("nan") if dead else 100.0 + k,
            "status": "quarantined" if dead else "graded",
            "reason": "dead_ccd: all zeros" if dead else None,
            "model_version": row["model_version"],
            "image": None if dead else rng.uniform(-0.2, 1.5, (32, 40)).astype(np.float32),
        }
        c.update({f"p_{x}": None if dead else float(probs[j]) for j, x in enumerate(CLASSES)})
        rows.append(c)
    return rows


@pytest.fixture
def dataset(tmp_path):
    out = tmp_path / "grades"
    for i, (g, n) in enumerate([("GOOD", 36), ("BT", 36), ("GOOD", 4), ("RBT", 40)]):
        r = exposure(i, g, n, obj=XSS if i == 2 else "D3")
        GradesDataset(out).write(r, ccd_rows(r, i))
    bad = exposure(4, None, 36, status="quarantined")
    GradesDataset(out).write(bad, [])
    later = exposure(1, "GOOD", 36, version="v2")  # exposure 1 regraded by a later model
    later["graded_at"] += 86400
    GradesDataset(out).write(later, ccd_rows(later, 7))
    # another night's exposure (an exposure id is in one night only: issue 21 item 5)
    other = exposure(10, "BGP", 4) | {"night": "2026-11-23"}
    GradesDataset(out).write(other, ccd_rows(other, 3))
    return out


@pytest.fixture
def server(dataset):
    observer = obs.Observer(dataset, status=lambda: {"ok": True, "backlog": 2, "alerts": []})
    with HttpServer(Metrics().registry, port=0, routes=observer.routes()) as s:
        yield s


def get_json(server, path):
    status, content_type, body = get(server, path)
    assert status == 200 and content_type == "application/json", (path, status, body[:200])
    return json.loads(body)


def same(json_value, parquet_value):
    """A JSON value equals the dataset's: NaN is null, timestamps are ISO 8601 with zone."""
    if isinstance(parquet_value, float) and math.isnan(parquet_value):
        return json_value is None
    if isinstance(parquet_value, dt.datetime):
        return dt.datetime.fromisoformat(json_value) == parquet_value
    return json_value == parquet_value


# --------------------------------------------------------------------------- storage


def test_sink_stores_representative_images_small_before_the_commit_mark(tmp_path):
    row = exposure(0, "GOOD", 4)
    ccds = ccd_rows(row, 0)
    written = GradesDataset(tmp_path).write(row, ccds)
    exp_path, ccd_path = GradesDataset(tmp_path).paths(NIGHT, row["exposure_id"], "v1")
    assert written == exp_path
    images = GradesDataset(tmp_path).images_file(exp_path)
    assert images == tmp_path / "images" / f"night={NIGHT}" / f"{row['exposure_id']}.v1.npz"
    stored = read_images(images)
    assert sorted(stored) == [0, 1, 2]  # the dead CCD has no image
    for c in ccds[:3]:
        assert stored[c["ccd"]].dtype == np.uint8
        np.testing.assert_array_equal(stored[c["ccd"]], quantize_image(c["image"]))
        back = stored[c["ccd"]] / 255.0 * 1.7 - 0.2
        assert np.abs(back - c["image"]).max() <= 1.7 / 255 / 2 + 1e-6
    # the exposure file (the commit mark) is the last one written
    assert images.stat().st_mtime_ns <= ccd_path.stat().st_mtime_ns <= exp_path.stat().st_mtime_ns
    # the parquet datasets stay pure parquet and the image is not a column
    assert "image" not in GradesDataset(tmp_path).read("ccds").column_names
    assert not list((tmp_path / "exposures").rglob("*.npz"))
    assert quantize_image(np.array([-5.0, -0.2, 1.5, 9.0])).tolist() == [0, 0, 255, 255]


def test_sink_without_images_writes_none_and_backfill_names_follow_the_file(tmp_path):
    row = exposure(0, "GOOD", 4)
    GradesDataset(tmp_path).write(row, [c | {"image": None} for c in ccd_rows(row, 0)])
    assert not (tmp_path / "images").exists()
    GradesDataset(tmp_path).write(row, ccd_rows(row, 0), file_name="2817000.old.parquet")
    assert (tmp_path / "images" / f"night={NIGHT}" / "2817000.old.npz").is_file()


# --------------------------------------------------------------------------- JSON


def test_json_endpoints_agree_with_the_parquet_dataset_row_for_row(server, dataset):
    exposures = GradesDataset(dataset).read().to_pylist()
    ccds = GradesDataset(dataset).read("ccds").to_pylist()
    doc = get_json(server, f"/api/night?date={NIGHT}")
    # one row per exposure, each exposure's latest grade (exposure 1: the v2 regrade)
    latest = {}
    for r in (r for r in exposures if r["night"] == NIGHT):
        if r["exposure_id"] not in latest or r["graded_at"] > latest[r["exposure_id"]]["graded_at"]:
            latest[r["exposure_id"]] = r
    assert [e["exposure_id"] for e in doc["exposures"]] == sorted(latest)
    assert {e["exposure_id"]: e["model_version"] for e in doc["exposures"]}["2817001"] == "v2"
    for e in doc["exposures"]:
        want = latest[e["exposure_id"]]
        for column, value in want.items():
            assert same(e[column], value), (e["exposure_id"], column, e[column], value)
    s = doc["summary"]
    assert (s["n"], s["graded"], s["quarantined"]) == (5, 4, 1)
    assert s["usable_fraction"] == pytest.approx(3 / 4)  # 1 was regraded GOOD

    for e in doc["exposures"]:
        d = get_json(server, f"/api/exposure?night={NIGHT}&id={e['exposure_id']}")
        assert d["exposure"]["exposure_id"] == e["exposure_id"]
        want = sorted(
            (
                c
                for c in ccds
                if c["exposure_id"] == e["exposure_id"]
                and c["night"] == NIGHT
                and c["model_version"] == e["model_version"]
            ),
            key=lambda c: c["ccd"],
        )
        assert [c["ccd"] for c in d["ccds"]] == [c["ccd"] for c in want]
        for got, c in zip(d["ccds"], want, strict=True):
            for column, value in c.items():
                assert same(got[column], value), (e["exposure_id"], c["ccd"], column)
            assert (got["thumbnail"] is None) == (c["status"] != "graded")
        n = max(e["n_ccd"], 1)
        assert d["layout"]["n_ccd"] == n
    rbt = get_json(server, f"/api/exposure?night={NIGHT}&id=2817003")
    assert rbt["layout"] == {"n_ccd": 40, "rows": 5, "cols": 9}
    assert get_json(server, "/api/nights") == {"nights": ["2026-11-23", NIGHT]}


def test_api_night_answers_unchanged_until_the_listing_changes(server, dataset, monkeypatch):
    first = get_json(server, f"/api/night?date={NIGHT}")
    reads = []
    original = NightIndex._read
    monkeypatch.setattr(
        NightIndex, "_read", lambda self, names: reads.append(names) or original(self, names)
    )
    again = get_json(server, f"/api/night?date={NIGHT}&rev={first['rev']}")
    assert again == {"night": NIGHT, "rev": first["rev"], "unchanged": True}
    assert reads == []  # nothing re-read while the directory listing is the same
    new = exposure(9, "BT", 4)
    GradesDataset(dataset).write(new, ccd_rows(new, 9))
    changed = get_json(server, f"/api/night?date={NIGHT}&rev={first['rev']}")
    assert changed["rev"] != first["rev"]
    assert reads == [["2817009.v1.parquet"]]  # only the new file was read
    assert [e["exposure_id"] for e in changed["exposures"]][-1] == "2817009"
    assert len(changed["exposures"]) == len(first["exposures"]) + 1


def test_now_reports_the_daemon_state_and_the_last_graded_exposure(server):
    now = get_json(server, "/api/now")
    assert now["night"] == NIGHT and now["state"] == "watching" and now["backlog"] == 2
    assert now["last_graded"]["exposure_id"] == "2817001"  # the v2 regrade is the latest
    assert now["model_version"] == "v2"


# --------------------------------------------------------------------------- pages


def test_pages_are_server_rendered_and_readable_without_javascript(server, dataset):
    status, content_type, body = get(server, "/")
    page = body.decode()
    assert status == 200 and content_type.startswith("text/html")
    for i in range(5):
        assert f'<tr id="exp-28170{i:02d}"' in page  # the table, with no script run
    # the latest GRADED exposure (2817003, 40 CCDs) is shown, not the quarantined 2817004:
    # that one waits in its own panel, with its reason and how long it has waited
    assert 'data-exposure="2817003"' in page and page.count('class="ccd') == 40
    waiting = page.split('<section id="waiting"', 1)[1].split("</section>", 1)[0]
    assert 'data-id="2817004" data-state="quarantined"' in waiting and "truncated" in waiting
    assert f'href="/exposure?night={NIGHT}&amp;id=2817004"' in waiting
    assert re.search(r'class="waited" data-t="[\d.]+">[\d.]+ (s|min|h)<', waiting)
    assert page.count('class="mark') == 5
    assert "usable (GOOD) so far: <b>75%</b> of 4 graded" in page
    # an exposure page: one cell per CCD, coloured by its row's grade, a CCD's details
    status, _, body = get(server, f"/exposure?night={NIGHT}&id=2817000&ccd=5")
    page = body.decode()
    cells = re.findall(
        r'<a class="ccd[^"]*" id="cell-(\d+)" data-ccd="\d+" data-grade="(\w*)"'
        r' data-status="(\w+)"[^>]*style="([^"]*)"',
        page,
    )
    want = {
        c["ccd"]: c
        for c in GradesDataset(dataset).read("ccds").to_pylist()
        if c["exposure_id"] == "2817000" and c["night"] == NIGHT
    }
    assert len(cells) == 36
    for k, grade, status_, style in cells:
        c = want[int(k)]
        assert grade == (c["grade"] or "") and status_ == c["status"]
        if c["grade"]:
            r, g, b = GRADE_COLORS[c["grade"]]
            alpha = 0.3 + 0.7 * c[f"p_{c['grade']}"]
            assert f"background-color:rgba({r}, {g}, {b}, {alpha:.2f})" in style
        else:
            assert "background-color" not in style
    detail = page.split('id="ccd-detail"', 1)[1]
    assert "<h3>ccd05" in detail
    assert f'src="/thumb?night={NIGHT}&amp;id=2817000&amp;ccd=5"' in detail
    assert all(str(h) in detail for h in want[5]["hits"])
    status, content_type, png = get(server, f"/thumb?night={NIGHT}&id=2817000&ccd=5")
    assert status == 200 and content_type == "image/png"
    assert Image.open(io.BytesIO(png)).size == (40, 32)
    status, _, body = get(server, "/night?date=2026-11-23")
    assert status == 200 and 'rel="next"' in body.decode()


def test_object_header_is_escaped_everywhere(server, dataset, tmp_path):
    for path in ("/", f"/exposure?night={NIGHT}&id=2817002", f"/night?date={NIGHT}&all=1"):
        status, _, body = get(server, path)
        page = body.decode()
        assert status == 200
        assert XSS not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
        assert page.count("<script") == 1  # our own script, from this server
    static = report.write_html(dataset, NIGHT, tmp_path / "r.html").read_text()
    assert XSS not in static and "&lt;script&gt;alert(1)&lt;/script&gt;" in static
    assert "<script" not in static
    # the JSON carries the text as data, never as markup
    doc = get_json(server, f"/api/exposure?night={NIGHT}&id=2817002")
    assert doc["exposure"]["object"] == XSS


@pytest.mark.parametrize(
    "path",
    [
        "/static/../ledger.sqlite",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/..%2f..%2fetc%2fpasswd",
        "/night?date=..%2F..%2Fetc",
        "/night?date=2026-11-24%2F..%2F..",
        "/night?date=2030-01-01",
        "/night?date=",
        "/api/night?date=night%3D2026-11-24",
        "/api/night?date=2030-01-01",
        f"/exposure?night={NIGHT}&id=..%2F..%2Fledger",
        f"/exposure?night={NIGHT}&id=2817000.v1",
        f"/exposure?night={NIGHT}&id=2817099",
        f"/exposure?night={NIGHT}&id=2817000&ccd=36",
        f"/exposure?night={NIGHT}&id=2817000&ccd=..%2F1",
        "/exposure?night=2030-01-01&id=2817000",
        f"/api/exposure?night={NIGHT}&id=%2e%2e%2fccds",
        f"/api/exposure?night={NIGHT}",
        f"/thumb?night={NIGHT}&id=2817000&ccd=35",  # the dead CCD: no image
        f"/thumb?night={NIGHT}&id=2817000&ccd=-1",
        f"/thumb?night={NIGHT}&id=2817000&ccd=1e1",
        f"/thumb?night={NIGHT}&id=2817000",
        f"/thumb?night={NIGHT}&id=..%2Fimages&ccd=0",
        f"/thumb?night={NIGHT}&id=2817004&ccd=0",  # quarantined exposure: no image
    ],
)
def test_traversal_unknown_ids_and_nights_are_404(server, path):
    status, _, body = get(server, path)
    assert status == 404, (path, body[:200])


def test_assets_ship_in_the_package_and_nothing_comes_from_elsewhere(server):
    for name, content_type in observer_templates.ASSETS.items():
        status, got_type, body = get(server, f"/static/{name}")
        assert status == 200 and got_type == content_type and len(body) > 1000
        text = body.decode()
        assert "https://" not in text
        assert set(re.findall(r"http://[^\"' )]+", text)) <= {"http://www.w3.org/2000/svg"}
    _, _, body = get(server, "/")
    urls = re.findall(r'(?:src|href|action)="([^"]*)"', body.decode())
    assert urls and all(u.startswith(("/", "#")) for u in urls), urls


def test_static_report_is_one_self_contained_file(dataset, tmp_path, capsys):
    parser = argparse.ArgumentParser()
    report_command.add_arguments(parser)
    out = tmp_path / "night.html"
    args = parser.parse_args([str(dataset), "--night", NIGHT, "--html", str(out)])
    assert report_command.command(args, Config()) == 0
    assert f"page: {out}" in capsys.readouterr().out
    page = out.read_text()
    urls = re.findall(r'(?:src|href|action)="([^"]*)"', page)
    assert all(u.startswith(("#", "data:image/png;base64,")) or u == "night.csv" for u in urls)
    assert (tmp_path / "night.csv").is_file()  # the CSV beside the page, linked
    assert "<style>" in page and "<script" not in page
    # every exposure listed (the quarantined 2817004 too: the latest graded one is shown)
    for i in range(5):
        assert f'<tr id="exp-28170{i:02d}"' in page
    # a night whose latest exposure has images inlines them, one per graded CCD
    new = exposure(9, "BT", 4)
    GradesDataset(dataset).write(new, ccd_rows(new, 9))
    page = report.write_html(dataset, NIGHT, out).read_text()
    assert page.count('src="data:image/png;base64,') == 3 + 1  # + the night's plot
    assert page.count('href="#ccd-') == 4
    with pytest.raises(LookupError, match="not in the dataset"):
        observer_report.render_static_night(dataset, "2030-01-01")


# --------------------------------------------------------------------------- pieces


def test_focal_plane_layout_is_megacams_4_by_9():
    rows, cols, cells = focal_plane_layout(36)
    assert (rows, cols) == (4, 9)
    assert cells[0] == (0, 0) and cells[8] == (0, 8) and cells[9] == (1, 0) and cells[35] == (3, 8)
    assert focal_plane_layout(40)[:2] == (5, 9)
    assert focal_plane_layout(4) == (1, 4, [(0, 0), (0, 1), (0, 2), (0, 3)])
    assert focal_plane_layout(8)[:2] == (2, 4)  # as the simulator lays 8 CCDs out


def test_png_encoder_round_trips():
    image = np.random.default_rng(0).integers(0, 256, (7, 13), dtype=np.uint8)
    png = png_gray8(image)
    decoded = Image.open(io.BytesIO(png))
    assert decoded.mode == "L"
    np.testing.assert_array_equal(np.asarray(decoded), image)
    with pytest.raises(ValueError, match="non-empty 2-D"):
        png_gray8(np.zeros((0, 3), np.uint8))


def test_handlers_answer_without_a_dataset(tmp_path):
    observer = obs.Observer(tmp_path / "empty")
    page = observer.page_live(Request("GET", "/"))
    assert page.status == 200 and b"no exposure graded yet tonight" in page.body
    assert json.loads(observer.api_now(Request("GET", "/api/now")).body)["state"] == "offline"
    with pytest.raises(ValueError, match="poll_s"):
        obs.Observer(tmp_path, poll_s=0)


def test_warming_builds_the_live_nights_index_before_the_first_request(dataset, monkeypatch):
    """The daemon warms the index at start, so the first page does not read the whole night."""
    observer = obs.Observer(dataset)
    observer.warm()
    reads = []
    monkeypatch.setattr(NightIndex, "_read", lambda self, names: reads.append(names) or {})
    with HttpServer(Metrics().registry, port=0, routes=observer.routes()) as s:
        doc = get_json(s, f"/api/night?date={observer.live_night()}")
    assert reads == [] and len(doc["exposures"]) == 5


# --------------------------------------------------------------------------- issue 22: the page


def graded_ccds(row, grades):
    """CCD rows graded ``grades`` (one per CCD, None: quarantined), probabilities 0.7 / 0.075."""
    rows = []
    for k, g in enumerate(grades):
        c = ccd_rows(row, k)[0] | {"ccd": k, "grade": g}
        c.update({f"p_{x}": None if g is None else (0.7 if x == g else 0.075) for x in CLASSES})
        if g is None:
            c.update(status="quarantined", reason="dead_ccd: all zeros", image=None)
        rows.append(c)
    return rows


def test_votes_beside_the_headline_are_flagged_when_the_headline_is_not_the_majority(
    server, dataset
):
    for i, headline in ((10, "BGP"), (11, "RBT")):
        r = exposure(i, headline, 5)
        GradesDataset(dataset).write(r, graded_ccds(r, ["BGP", "RBT", "BGP", "B_SEEING", None]))
    for eid, flagged in (("2817010", False), ("2817011", True)):
        _, _, body = get(server, f"/exposure?night={NIGHT}&id={eid}")
        votes = body.decode().split('id="votes"', 1)[1].split("</p>", 1)[0]
        text = re.sub(r"<[^>]+>", "", votes)
        assert re.sub(r"\s+", " ", text).endswith(
            "CCD votes: BGP 2 · B_SEEING 1 · RBT 1"  # ties in CLASSES order
            + (" ⚠ RBT is not the majority of the CCDs: 1 of 4 votes, BGP has 2" if flagged else "")
        ), text
        assert ("flagged" in votes.split(">", 1)[0]) == flagged
    assert observer_views.votes([]) == [] and observer_views.vote_flag("GOOD", []) is None
    assert observer_views.vote_flag("GOOD", [("GOOD", 2), ("BT", 2)]) == (
        "GOOD ties with BT: 2 of 4 votes each"
    )


def test_night_at_a_glance_chips_legend_and_time_lost(server):
    _, _, body = get(server, f"/night?date={NIGHT}")
    glance = body.decode().split('<div id="glance">', 1)[1].split("</div>", 1)[0]
    chips = dict(
        re.findall(r'<li class="chip" data-grade="(\w+)"[^>]*>\w+ <b class="n">(\d+)', glance)
    )
    # latest rows: 2817000 GOOD, 2817001 GOOD (v2), 2817002 GOOD, 2817003 RBT, 2817004 quarantined
    assert chips == {"GOOD": "3", "B_SEEING": "0", "BGP": "0", "BT": "0", "RBT": "1"}
    assert re.search(r'class="chip q"[^>]*>quarantined <b class="n">1<', glance)
    legend = glance.split('id="legend"', 1)[1]
    assert all(f'data-grade="{g}">{g}</span>' in legend for g in CLASSES)
    assert "bad tracking: stars trailed" in legend  # skygrade.models.classes.DESCRIPTIONS
    lost = re.sub(r"<[^>]+>|\s+", " ", glance.split('id="lost"', 1)[1].split("</p>", 1)[0])
    assert "time lost (sum of EXPTIME per grade): RBT 5 min" in re.sub(r" +", " ", lost)
    s = report.summarize([exposure(0, "BT", 4), exposure(1, "BT", 4) | {"exptime": None}])
    assert s["lost_s"] == {"BT": 300.0} and s["lost_unknown"] == 1


def test_navigation_timeline_links_previous_next_and_the_selected_ccd(server):
    _, _, body = get(server, f"/exposure?night={NIGHT}&id=2817002")
    page = body.decode()
    # every timeline mark is a link to its exposure's page
    marks = re.findall(r'<a href="([^"]+)"><rect class="mark[^"]*" data-id="(\d+)"', page)
    assert len(marks) == 5
    assert all(h == f"/exposure?night={NIGHT}&amp;id={i}" for h, i in marks)
    # previous / next exposure of the night
    assert f'class="exp-prev" href="/exposure?night={NIGHT}&amp;id=2817001"' in page
    assert f'class="exp-next" href="/exposure?night={NIGHT}&amp;id=2817003"' in page
    _, _, body = get(server, f"/exposure?night={NIGHT}&id=2817000")
    assert 'class="exp-prev none">first of the night' in body.decode()
    # the live page takes ?ccd= (the address the page's script writes): that CCD's details
    _, _, body = get(server, "/?ccd=5")
    page = body.decode()
    assert 'data-ccd="5"' in page and "<h3>ccd05" in page
    assert 'class="ccd selected" id="cell-5"' in page
    status, _, body = get(server, "/?ccd=77")  # not a CCD of the newest exposure: no details
    assert status == 200 and 'data-ccd=""' in body.decode() and "<h3>ccd" not in body.decode()


def test_a_night_or_exposure_without_data_lists_the_nights_that_have_some(server):
    for path, says in (
        (
            "/night?date=2030-01-01",
            "the dataset has no exposure for the night &#39;2030-01-01&#39;",
        ),
        (f"/exposure?night={NIGHT}&id=2817099", f"night {NIGHT} has no exposure &#39;2817099&#39;"),
        (f"/exposure?night={NIGHT}&id=2817000&ccd=36", "exposure 2817000 has no CCD &#39;36&#39;"),
    ):
        status, content_type, body = get(server, path)
        page = body.decode()
        assert status == 404 and content_type.startswith("text/html"), path
        assert says in page and "not found" not in page
        nights = re.findall(r'<li><a href="/night\?date=([\d-]+)">', page)
        assert nights == [NIGHT, "2026-11-23"], path  # newest first


def test_alerts_show_since_when(dataset):
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=12)
    alert = {
        "level": "WARN",
        "rule": "consecutive_bad",
        "message": "3 <b>not</b> GOOD",
        "since": since.isoformat(),
    }
    observer = obs.Observer(dataset, status=lambda: {"ok": True, "alerts": [alert]})
    page = observer.page_live(Request("GET", "/")).body.decode()
    item = page.split('<ul id="alerts">', 1)[1].split("</ul>", 1)[0]
    assert "consecutive_bad: 3 &lt;b&gt;not&lt;/b&gt; GOOD" in item
    assert f"since {since:%H:%M:%S} UT" in item and ">12 min ago<" in item
    assert f'data-t="{since.timestamp():.3f}"' in item  # the script keeps the age current


def test_waiting_panel_lists_the_daemons_incoming_files_with_how_long_they_waited(dataset):
    now = time.time()
    held = [
        {"exposure_id": "2817020", "state": "incoming", "since": now - 30},
        {
            "path": "/drop/2817021o.fits",
            "state": "incomplete",
            "since": now - 7200,
            "reason": "2 of 37 HDUs",
        },
    ]
    observer = obs.Observer(dataset, waiting=lambda: held)
    items = observer.waiting_items(observer.index.night(NIGHT), now=now)
    assert [(w["id"], w["state"]) for w in items] == [
        ("2817004", "quarantined"),
        ("2817021o.fits", "incomplete"),
        ("2817020", "incoming"),
    ]  # longest waiting first (the quarantined one arrived on the dataset's night)
    assert items[-1]["waited_s"] == pytest.approx(30, abs=1)
    page = observer.page_live(Request("GET", "/")).body.decode()
    waiting = page.split('<section id="waiting"', 1)[1].split("</section>", 1)[0]
    assert re.search(r'data-id="2817021o.fits" data-state="incomplete">.*>2\.0 h<', waiting)
    assert re.search(r'data-id="2817020" data-state="incoming">.*>30 s<', waiting)
    assert json.loads(observer.api_now(Request("GET", "/api/now")).body)["waiting"][1]["id"] == (
        "2817021o.fits"
    )


def test_fragments_are_the_pages_panels_rendered_by_the_same_escaping_templates(server):
    assert observer_templates.TEMPLATES.autoescape is True
    _, _, page = get(server, f"/exposure?night={NIGHT}&id=2817002&ccd=1")
    page = page.decode()
    for path, element in (
        (f"/fragment/exposure?night={NIGHT}&id=2817002&ccd=1&pinned=1", '<section id="exposure"'),
        (f"/fragment/ccd?night={NIGHT}&id=2817002&ccd=1", '<div id="ccd-detail"'),
        (f"/fragment/night?date={NIGHT}", '<section id="tonight"'),
        (f"/fragment/now?night={NIGHT}", '<section id="now"'),
    ):
        status, content_type, body = get(server, path)
        text = body.decode()
        assert status == 200 and content_type.startswith("text/html"), path
        assert text.startswith(element) and XSS not in text, path
        assert text.split("\n", 1)[0] in page, path  # the same markup as the page's
    assert (
        "&lt;script&gt;alert(1)&lt;/script&gt;"
        in get(server, f"/fragment/exposure?night={NIGHT}&id=2817002")[2].decode()
    )
    for path in (
        f"/fragment/exposure?night={NIGHT}&id=2817099",
        f"/fragment/ccd?night={NIGHT}&id=2817002&ccd=9",
        "/fragment/night?date=2030-01-01",
    ):
        assert get(server, path)[0] == 404, path
    # the page polls the night panel with its rev: the same rev is a few bytes, a new one the
    # panel, with the latest graded exposure (the exposure panel to load) in data-latest
    rev = get_json(server, f"/api/night?date={NIGHT}")["rev"]
    assert get(server, f"/fragment/night?date={NIGHT}&rev={rev}")[2] == b'<p id="unchanged"></p>'
    text = get(server, f"/fragment/night?date={NIGHT}&rev=old")[2].decode()
    assert text.startswith(
        f'<section id="tonight" class="panel" data-rev="{rev}" data-latest="2817003">'
    )
    # the script builds no markup and keeps no copy of the classes or their colours
    js = obs.Observer(".").assets["observer.js"].decode()
    assert "innerHTML" not in js and not any(f'"{g}"' in js for g in CLASSES)
    assert "rgb(" not in js


def cvd_lab(rgb, alpha, matrix):
    """CIELAB of ``rgb`` drawn at ``alpha`` over the page's cell background, as a viewer with
    the colour-vision deficiency ``matrix`` (Machado et al. 2009, severity 1) sees it."""

    def lin(c):
        c = np.asarray(c, float) / 255
        return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)

    shown = np.asarray(rgb) * alpha + np.array([42, 47, 54]) * (1 - alpha)  # #2a2f36
    linear = np.clip(np.asarray(matrix) @ lin(shown), 0, 1)
    xyz = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    x = xyz @ linear / np.array([0.9505, 1.0, 1.089])
    f = np.where(x > 0.008856, np.cbrt(x), 7.787 * x + 16 / 116)
    return np.array([116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])])


CVD = {
    "protan": [
        [0.152286, 1.052583, -0.204868],
        [0.114503, 0.786281, 0.099216],
        [-0.003882, -0.048116, 1.051998],
    ],
    "deutan": [
        [0.367322, 0.860646, -0.227968],
        [0.280085, 0.672501, 0.047413],
        [-0.011820, 0.042940, 0.968881],
    ],
    "tritan": [
        [1.255528, -0.076749, -0.178779],
        [-0.078411, 0.930809, 0.147602],
        [0.004733, 0.691367, 0.303900],
    ],
    "normal": np.eye(3),
}


def test_palette_is_colour_blind_safe_and_separates_bt_from_rbt_when_shaded():
    shades = [observer_views.shade(c) for c in np.linspace(0, 1, 6)]
    colors = GRADE_COLORS
    for name, m in CVD.items():
        # BT and RBT apart at any two confidences (delta E, CIE76)
        worst = min(
            np.linalg.norm(cvd_lab(colors["BT"], a, m) - cvd_lab(colors["RBT"], b, m))
            for a in shades
            for b in shades
        )
        assert worst > 10, (name, worst)
        # every pair of grades apart at the same confidence
        for g, h in itertools.combinations(CLASSES, 2):
            d = min(
                np.linalg.norm(cvd_lab(colors[g], a, m) - cvd_lab(colors[h], a, m)) for a in shades
            )
            assert d > 6, (name, g, h, d)
    # one palette: the page's CSS rules and the report's plot come from GRADE_COLORS
    css = observer_templates.grade_css()
    assert all(
        f"[data-grade={g}]" in css and "rgb({}, {}, {})".format(*colors[g]) in css for g in CLASSES
    )
    assert report.GRADE_COLORS is observer_templates.GRADE_COLORS is observer_views.GRADE_COLORS


def test_seeing_and_sky_beside_the_timeline_and_in_the_facts_when_the_rows_have_them(
    server, dataset
):
    _, _, body = get(server, f"/night?date={NIGHT}")
    assert 'class="trend"' not in body.decode()  # rows written before they were measured
    for i in (10, 11, 12):
        r = exposure(i, "GOOD", 4) | {
            "seeing_arcsec": 0.6 + 0.1 * (i - 10),
            "sky_mag_arcsec2": 20.5,
            "airmass": 1.25,
        }
        GradesDataset(dataset).write(r, ccd_rows(r, i))
    _, _, body = get(server, f"/night?date={NIGHT}")
    page = body.decode()
    seeing = page.split('id="trend-seeing_arcsec"', 1)[1].split("</svg>", 1)[0]
    points = re.search(r'<polyline points="([^"]+)"', seeing)[1].split()
    assert len(points) == 3  # the graded rows with a value, on the timeline's time axis
    marks = dict(re.findall(r'data-id="(\d+)" x="([\d.]+)"', page))
    assert [float(p.split(",")[0]) for p in points] == pytest.approx(
        [float(marks[f"28170{i}"]) + 1.5 for i in (10, 11, 12)], abs=0.11
    )
    assert ">0.80<" in seeing and ">0.60<" in seeing and "seeing (&#34;): 0.80 now" in seeing
    assert 'id="trend-sky_mag_arcsec2"' in page
    _, _, body = get(server, f"/exposure?night={NIGHT}&id=2817012")
    facts = body.decode().split('id="exposure-summary"', 1)[1].split("</dl>", 1)[0]
    assert '<dt>seeing</dt><dd class="f-seeing">0.80"</dd>' in facts.replace("&#34;", '"')
    assert '<dt>airmass</dt><dd class="f-airmass">1.25</dd>' in facts
    assert "sky" in facts and "20.50 mag/arcsec2" in facts
