"""The observer page in a real headless browser (Debian's chromium + chromedriver, driven by
selenium with explicit paths: nothing is downloaded) against the daemon grading small simulated
exposures in process. Bounded in time; the browser and the daemon are stopped in ``finally``.

A screenshot is saved (path printed) and copied to build/observer-screenshot.png.
"""

import dataclasses
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from skygrade.models.bundle import ModelBundle, read_manifest
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import CnnShape, DualInputNet
from skygrade.models.som import SOM_FEATURES, train_som
from skygrade.streamer.daemon import Daemon
from skygrade.streamer.night_summary import GRADE_COLORS
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.grades_dataset import GradesDataset

pytestmark = pytest.mark.usefixtures("no_thread_leak")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NIGHT = "2026-11-24"
XSS = "<script>alert(1)</script>"
GEOMETRY = Geometry(4, 256, 320)
STALE = (StaleElementReferenceException,)
"""The page swaps in fresh panels while it polls: an element found a moment ago may be gone."""
SCREENSHOT = Path(__file__).resolve().parents[2] / "build" / "observer-screenshot.png"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A small random model whose last layer is scaled up, so that its grades differ from CCD
    to CCD (an untrained network grades everything alike), independent of the shipped one."""
    rows = np.random.default_rng(0).normal(size=(3000, len(SOM_FEATURES))).astype(np.float32)
    som = train_som(rows, grid=(6, 6), iterations=1000, n_clusters=20, seed=0)
    torch.manual_seed(3)
    net = DualInputNet(CnnShape(tile=16))
    last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(40.0)
    b = ModelBundle(som, net, {"version": "observer-test"})
    return b.save(tmp_path_factory.mktemp("bundle") / "b")


@pytest.fixture
def browser():
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(30)
        driver.set_script_timeout(30)
        yield driver
    finally:
        driver.quit()


def drop_exposure(drop: Path, plan) -> None:
    """Write an exposure into the drop dir the way a copy ends: complete, then renamed."""
    final = drop / NIGHT / plan.filename
    partial = final.with_name("." + final.name + ".part")
    partial.write_bytes(exposure_bytes(plan, GEOMETRY))
    partial.rename(final)


def rgba(text: str) -> tuple[int, int, int, float]:
    m = re.fullmatch(r"rgba?\((\d+), (\d+), (\d+)(?:, ([\d.]+))?\)", text)
    assert m, text
    return int(m[1]), int(m[2]), int(m[3]), float(m[4] or 1.0)


def test_the_observer_page_follows_the_daemon_in_a_browser(
    bundle, tmp_path, browser, capsys, daemon_config, wait_for
):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / NIGHT).mkdir(parents=True)
    plans = plan_night(NIGHT, 3, seed=11, class_mix={"GOOD": 1, "BT": 1, "B_SEEING": 1})
    plans[1] = dataclasses.replace(plans[1], object=XSS)  # typed by an observer
    assert plans[0].date_obs < plans[1].date_obs < plans[2].date_obs
    before = set(threading.enumerate())
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        for plan in plans[:2]:
            drop_exposure(drop, plan)
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) == 2)
        base = f"http://127.0.0.1:{daemon.server.port}"
        browser.get(base + "/")
        wait = WebDriverWait(browser, 30, ignored_exceptions=STALE)
        latest = str(plans[1].expnum)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-exposure"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-exposure") == latest

        # the focal plane: one cell per CCD, coloured as the parquet rows grade them
        rows = {
            c["ccd"]: c
            for c in GradesDataset(out).read("ccds").to_pylist()
            if c["exposure_id"] == latest
        }
        assert sorted(rows) == list(range(GEOMETRY.n_ccd))
        cells = browser.find_elements(By.CSS_SELECTOR, "#focal-plane .ccd")
        assert len(cells) == GEOMETRY.n_ccd
        for cell in cells:
            c = rows[int(cell.get_attribute("data-ccd"))]
            assert cell.get_attribute("data-grade") == (c["grade"] or "")
            r, g, b, a = rgba(cell.value_of_css_property("background-color"))
            if c["grade"]:
                assert (r, g, b) == GRADE_COLORS[c["grade"]]
                assert a == pytest.approx(0.3 + 0.7 * c[f"p_{c['grade']}"], abs=0.01)

        # OBJECT is shown as text, and no script from it ran
        obj = browser.find_element(By.CSS_SELECTOR, "#exposure-summary .f-object")
        assert obj.text == XSS
        with pytest.raises(NoAlertPresentException):
            _ = browser.switch_to.alert.text

        # selecting a CCD shows its details and its thumbnail
        graded = [k for k, c in sorted(rows.items()) if c["status"] == "graded"]
        assert graded, rows
        k = graded[-1]
        browser.find_element(By.ID, f"cell-{k}").click()
        wait.until(
            lambda d: d.find_element(By.CSS_SELECTOR, "#ccd-detail h3").text.startswith(
                f"ccd{k:02d}"
            )
        )
        # done in place, no navigation; the address follows the CCD (a link to share)
        assert browser.current_url == base + f"/?ccd={k}"
        assert browser.execute_script("return performance.navigation.type") == 0
        detail = browser.find_element(By.ID, "ccd-detail")
        probs = {
            tr.find_element(By.TAG_NAME, "th").text: tr.find_elements(By.TAG_NAME, "td")[-1].text
            for tr in detail.find_elements(By.CSS_SELECTOR, "table.probs tr")
        }
        assert probs == {cls: f"{rows[k][f'p_{cls}']:.3f}" for cls in CLASSES}
        cells = detail.find_elements(By.CSS_SELECTOR, "table.hits td")
        assert [td.text for td in cells] == [f"#{j} {n}" for j, n in enumerate(rows[k]["hits"])]
        assert [int(td.find_element(By.CLASS_NAME, "n").text) for td in cells] == rows[k]["hits"]
        assert str(rows[k]["n_sources"]) in detail.text
        img = detail.find_element(By.CSS_SELECTOR, "img.thumb")
        wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
        size = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
        )
        tile = read_manifest(bundle)["cnn"]["shape"]["tile"]
        assert size == [5 * tile, 4 * tile]  # 20 tiles, 4 rows of 5
        # beside it the CCD's pixels, binned, and the whole focal plane's (from the drop file)
        for css, want in (
            ("#ccd-detail img.preview", [GEOMETRY.width // 2, GEOMETRY.height // 2]),
            ("#mosaic img", [4 * GEOMETRY.width + 3 * 80, GEOMETRY.height]),  # 1 row of 4
        ):
            wait.until(
                lambda d, css=css: d.execute_script(
                    "const i = document.querySelector(arguments[0]);"
                    "return i && i.complete && i.naturalWidth > 0",
                    css,
                )
            )
            got = browser.execute_script(
                "const i = document.querySelector(arguments[0]);"
                "return [i.naturalWidth, i.naturalHeight, i.alt]",
                css,
            )
            assert got[:2] == want, css
            assert got[2].startswith("binned preview of the pixels of "), got

        # a newly graded exposure gains a mark on the timeline, without a reload
        marks = browser.find_elements(By.CSS_SELECTOR, "#timeline .mark")
        assert len(marks) == 2
        browser.execute_script("window.__sameDocument = 'yes';")
        drop_exposure(drop, plans[2])
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) == 3)
        newest = str(plans[2].expnum)
        WebDriverWait(browser, 60, ignored_exceptions=STALE).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline .mark")) == 3
        )
        assert browser.execute_script("return window.__sameDocument") == "yes"
        ids = [
            m.get_attribute("data-id")
            for m in browser.find_elements(By.CSS_SELECTOR, "#timeline .mark")
        ]
        assert ids == [str(p.expnum) for p in plans]
        WebDriverWait(browser, 30, ignored_exceptions=STALE).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-exposure") == newest
        )
        first_row = browser.find_element(By.CSS_SELECTOR, "#exposures tbody tr")
        assert first_row.get_attribute("data-id") == newest
        assert "watching" in browser.find_element(By.ID, "now-state").text
        assert daemon.observer.waiting == daemon.waiting  # the Waiting panel hears the ledger

        # the CCD chosen before stays open on the new exposure; votes beside the headline
        wait.until(
            lambda d: (
                d.find_element(By.CSS_SELECTOR, "#exposure").get_attribute("data-id") == newest
            )
        )
        assert browser.find_element(By.CSS_SELECTOR, "#ccd-detail h3").text.startswith(
            f"ccd{k:02d}"
        )
        new_rows = [
            c for c in GradesDataset(out).read("ccds").to_pylist() if c["exposure_id"] == newest
        ]
        tally = {}
        for c in new_rows:
            if c["grade"]:
                tally[c["grade"]] = tally.get(c["grade"], 0) + 1
        votes = browser.find_element(By.ID, "votes").text
        assert votes.startswith("CCD votes:")
        assert all(f"{g} {n}" in votes for g, n in tally.items()), (votes, tally)

        browser.find_element(By.ID, "cell-0").click()  # for the screenshot: one CCD open
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ccd-detail h3").text[:5] == "ccd00")
        assert browser.current_url == base + "/?ccd=0"
        shot = tmp_path / "observer.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
        with capsys.disabled():
            print(f"\nobserver page screenshot: {shot} (copied to {SCREENSHOT})")

        # navigation: a timeline mark is a link to its exposure; previous / next from there
        first = str(plans[0].expnum)
        mark = browser.find_element(By.CSS_SELECTOR, f'#timeline .mark[data-id="{first}"]')
        browser.execute_script(
            "arguments[0].dispatchEvent(new MouseEvent('click', {bubbles: true}))", mark
        )
        wait.until(lambda d: "/exposure?" in d.current_url)
        assert browser.current_url == base + f"/exposure?night={NIGHT}&id={first}"
        assert browser.find_element(By.ID, "exposure-title").text == f"Exposure {first}"
        browser.find_element(By.CSS_SELECTOR, "#exposure .exp-next").click()
        wait.until(lambda d: d.current_url.endswith(f"id={plans[1].expnum}"))
        assert browser.find_element(By.CSS_SELECTOR, ".f-object").text == XSS
        # a shared address with ?ccd= opens that CCD's details without a click
        browser.get(base + "/?ccd=1")
        assert browser.find_element(By.CSS_SELECTOR, "#ccd-detail h3").text.startswith("ccd01")
        # a night without data says so and lists the nights that have some
        browser.get(base + "/night?date=2030-01-01")
        links = browser.find_elements(By.CSS_SELECTOR, "#nights a")
        assert [a.text for a in links] == [NIGHT]
        assert "no exposure for the night" in browser.find_element(By.ID, "missing").text

        # a copy still arriving appears on the Waiting panel as the page polls, as incomplete
        browser.get(base + "/")
        late = plan_night(NIGHT, 1, seed=12, class_mix={"GOOD": 1})[0]
        data = exposure_bytes(late, GEOMETRY)
        (drop / NIGHT / late.filename).write_bytes(data[: len(data) // 3])
        row = f'#waiting-list tr[data-id="{late.filename}"]'
        WebDriverWait(browser, 30, ignored_exceptions=STALE).until(
            lambda d: (
                [e.get_attribute("data-state") for e in d.find_elements(By.CSS_SELECTOR, row)]
                == ["incomplete"]
            )
        )
        assert "waiting for the rest of the copy" in browser.find_element(By.ID, "waiting").text
    finally:
        daemon.stop(timeout=30)
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=10)


@pytest.mark.parametrize("width", [800, 900])
def test_nine_ccds_per_row_fit_at_800_px_and_the_palette_is_the_servers(
    tmp_path, browser, capsys, width, observer_rows
):
    from skygrade.ops.http import HttpServer
    from skygrade.ops.metrics import Metrics
    from skygrade.streamer.observer import Observer
    from skygrade.transforms.grades_dataset import GradesDataset

    rows = observer_rows
    out = tmp_path / "grades"
    for i, g in enumerate(["GOOD", "BT", "RBT"]):
        r = rows.exposure(i, g, 36)
        GradesDataset(out).write(r, rows.ccd_rows(r, i))
    GradesDataset(out).write(rows.exposure(3, None, 36, status="quarantined"), [])
    browser.set_window_size(width, 1000)
    with HttpServer(Metrics().registry, port=0, routes=Observer(out).routes()) as server:
        browser.get(f"http://127.0.0.1:{server.port}/")
        inner = browser.execute_script("return window.innerWidth")
        assert inner <= width
        assert browser.execute_script("return document.documentElement.scrollWidth") <= inner
        panel = browser.find_element(By.ID, "exposure").rect
        cells = browser.find_elements(By.CSS_SELECTOR, "#focal-plane .ccd")
        assert len(cells) == 36
        first_row = [c.rect for c in cells[:9]]
        assert len({round(r["y"]) for r in first_row}) == 1  # nine side by side
        assert cells[9].rect["y"] > first_row[0]["y"]
        assert first_row[-1]["x"] + first_row[-1]["width"] <= panel["x"] + panel["width"]
        assert all(r["width"] >= 20 for r in first_row), first_row  # still a cell to click
        # the chips, badges and marks take their colours from the one palette
        for chip in browser.find_elements(By.CSS_SELECTOR, "#glance .chip[data-grade]"):
            grade = chip.get_attribute("data-grade")
            if grade:
                color = rgba(chip.value_of_css_property("background-color"))[:3]
                assert color == GRADE_COLORS[grade], grade
        # the quarantined exposure waits in its own panel, not in the exposure panel
        assert (
            browser.find_element(By.TAG_NAME, "body").get_attribute("data-exposure")
            == (rows.exposure(2, "RBT", 36)["exposure_id"])
        )
        waiting = browser.find_element(By.ID, "waiting").text
        assert "2817003" in waiting and "quarantined" in waiting and "truncated" in waiting
        shot = tmp_path / f"observer-{width}.png"
        assert browser.save_screenshot(str(shot))
        target = SCREENSHOT.with_name(f"observer-screenshot-{width}px.png")
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, target)
        with capsys.disabled():
            print(f"\nobserver page at {width} px: {target}")


def test_the_daemon_tells_the_waiting_panel_its_incoming_files():
    """Daemon.waiting: the ledger's rows waiting to be graded, since they were ready."""
    from types import SimpleNamespace

    from skygrade.streamer.ledger_store import Entry

    def entry(eid, ready_at):
        return Entry(
            1, eid, f"/drop/{eid}o.fits", 10, 1, 1, "seen", None, 0, 5.0, None, None, None, ready_at
        )

    ledger = SimpleNamespace(pending=lambda: [entry("1", 7.0), entry("2", None)])
    got = Daemon.waiting(SimpleNamespace(ledger=ledger))
    assert got == [
        {"exposure_id": "1", "path": "/drop/1o.fits", "state": "incoming", "since": 7.0},
        {"exposure_id": "2", "path": "/drop/2o.fits", "state": "incoming", "since": 5.0},
    ]
    assert Daemon.waiting(SimpleNamespace(ledger=None)) == []
