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
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from models.bundle import ModelBundle, read_manifest
from models.classes import CLASSES
from models.cnn import CnnShape, DualInputNet
from models.som import SOM_FEATURES, train_som
from streamer.daemon import Daemon
from streamer.observer import GRADE_COLORS
from streamer.telescope import Geometry, exposure_bytes, plan_night
from transforms.sinks import read_grades

pytestmark = pytest.mark.usefixtures("no_thread_leak")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
NIGHT = "2026-11-24"
XSS = "<script>alert(1)</script>"
GEOMETRY = Geometry(4, 256, 320)
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
        wait = WebDriverWait(browser, 30)
        latest = str(plans[1].expnum)
        wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-exposure"))
        assert browser.find_element(By.TAG_NAME, "body").get_attribute("data-exposure") == latest

        # the focal plane: one cell per CCD, coloured as the parquet rows grade them
        rows = {
            c["ccd"]: c for c in read_grades(out, "ccds").to_pylist() if c["exposure_id"] == latest
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
        assert browser.current_url == base + "/"  # done in place, no navigation
        detail = browser.find_element(By.ID, "ccd-detail")
        probs = {
            tr.find_element(By.TAG_NAME, "th").text: tr.find_elements(By.TAG_NAME, "td")[-1].text
            for tr in detail.find_elements(By.CSS_SELECTOR, "table.probs tr")
        }
        assert probs == {cls: f"{rows[k][f'p_{cls}']:.3f}" for cls in CLASSES}
        hits = [int(td.text) for td in detail.find_elements(By.CSS_SELECTOR, "table.hits td")]
        assert hits == rows[k]["hits"]
        assert str(rows[k]["n_sources"]) in detail.text
        img = detail.find_element(By.CSS_SELECTOR, "img.thumb")
        wait.until(lambda d: d.execute_script("return arguments[0].complete", img))
        size = browser.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img
        )
        tile = read_manifest(bundle)["cnn"]["shape"]["tile"]
        assert size == [5 * tile, 4 * tile]  # 20 tiles, 4 rows of 5

        # a newly graded exposure gains a mark on the timeline, without a reload
        marks = browser.find_elements(By.CSS_SELECTOR, "#timeline .mark")
        assert len(marks) == 2
        browser.execute_script("window.__sameDocument = 'yes';")
        drop_exposure(drop, plans[2])
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) == 3)
        newest = str(plans[2].expnum)
        WebDriverWait(browser, 60).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "#timeline .mark")) == 3
        )
        assert browser.execute_script("return window.__sameDocument") == "yes"
        ids = [
            m.get_attribute("data-id")
            for m in browser.find_elements(By.CSS_SELECTOR, "#timeline .mark")
        ]
        assert ids == [str(p.expnum) for p in plans]
        WebDriverWait(browser, 30).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-exposure") == newest
        )
        first_row = browser.find_element(By.CSS_SELECTOR, "#exposures tbody tr")
        assert first_row.get_attribute("data-id") == newest
        assert "watching" in browser.find_element(By.ID, "now-state").text

        browser.find_element(By.ID, "cell-0").click()  # for the screenshot: one CCD open
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#ccd-detail h3").text[:5] == "ccd00")
        shot = tmp_path / "observer.png"
        assert browser.save_screenshot(str(shot))
        assert shot.stat().st_size > 10_000
        SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, SCREENSHOT)
        with capsys.disabled():
            print(f"\nobserver page screenshot: {shot} (copied to {SCREENSHOT})")
    finally:
        daemon.stop(timeout=30)
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=10)
