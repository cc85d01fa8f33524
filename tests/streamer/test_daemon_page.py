"""What the daemon gives the observer page: the files still being copied on the Waiting panel
(the watcher knows them), and the pixel previews read from its drop directory."""

import threading
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

from skygrade.streamer.daemon import Daemon
from skygrade.streamer.ledger_store import Entry
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night

pytestmark = pytest.mark.usefixtures("no_thread_leak")

NIGHT = "2026-11-24"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "page-test")


def _get(daemon, path):
    url = f"http://127.0.0.1:{daemon.server.port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _waiting_panel(daemon) -> str:
    status, body = _get(daemon, f"/fragment/now?night={NIGHT}")
    assert status == 200
    return body.decode().split('<section id="waiting"', 1)[1].split("</section>", 1)[0]


def test_the_waiting_panel_shows_a_copy_still_arriving_then_its_grade_and_previews(
    bundle, tmp_path, daemon_config, wait_for
):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / NIGHT).mkdir(parents=True)
    plan = plan_night(NIGHT, 1, seed=4, class_mix={"GOOD": 1})[0]
    data = exposure_bytes(plan, Geometry(2, 256, 320))
    path = drop / NIGHT / plan.filename
    before = set(threading.enumerate())
    daemon = Daemon(drop, out, bundle, daemon_config)
    daemon.start()
    try:
        path.write_bytes(data[: len(data) // 2])  # a copy cut half way, for now
        assert wait_for(lambda: 'data-state="incomplete"' in _waiting_panel(daemon), 20)
        panel = _waiting_panel(daemon)
        assert f'data-id="{plan.filename}" data-state="incomplete"' in panel
        assert "truncated: waiting for the rest of the copy" in panel
        (item,) = [w for w in daemon.waiting() if w["path"] == str(path)]
        assert item["state"] == "incomplete" and item["since"] > 0
        assert not any(daemon.ledger.counts().values())  # only the watcher knows it yet

        with path.open("ab") as fh:  # the rest arrives
            fh.write(data[len(data) // 2 :])
        assert wait_for(lambda: daemon.ledger.counts().get("graded", 0) == 1, 60)
        assert wait_for(lambda: plan.filename not in _waiting_panel(daemon), 10)
        assert daemon.waiting() == []

        # the daemon's page serves the previews of the file in its drop directory
        q = f"night={NIGHT}&id={plan.expnum}"
        for url in (f"/preview?{q}&ccd=1", f"/mosaic?{q}", f"/preview?{q}&ccd=0&stretch=zscale"):
            status, body = _get(daemon, url)
            assert status == 200 and body[:8] == b"\x89PNG\r\n\x1a\n", url
        assert _get(daemon, f"/preview?{q}&ccd=2")[0] == 404
        status, page = _get(daemon, f"/exposure?{q}&ccd=1")
        assert status == 200 and b'<img class="preview" src="/preview?' in page
    finally:
        daemon.stop(timeout=30)
    assert wait_for(lambda: set(threading.enumerate()) <= before, timeout=10)


def test_waiting_lists_the_watchers_copies_before_the_ledgers_files_each_once():
    def entry(eid, ready_at):
        return Entry(
            1, eid, f"/drop/{eid}o.fits", 10, 1, 1, "seen", None, 0, 5.0, None, None, None, ready_at
        )

    copying = [
        {"path": "/drop/3o.fits", "state": "incomplete", "since": 2.0, "reason": "truncated"},
        {"path": "/drop/1o.fits", "state": "copying", "since": 6.0, "reason": "being written"},
    ]
    daemon = SimpleNamespace(
        ledger=SimpleNamespace(pending=lambda: [entry("1", 7.0), entry("2", None)]),
        watcher=SimpleNamespace(pending=lambda: copying),
    )
    got = Daemon.waiting(daemon)
    # file 1, graded once and being rewritten, is listed once: as the watcher sees it
    assert got == [
        *copying,
        {"exposure_id": "2", "path": "/drop/2o.fits", "state": "incoming", "since": 5.0},
    ]
    assert Daemon.waiting(SimpleNamespace(ledger=None, watcher=None)) == []
