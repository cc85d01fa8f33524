"""Tests of the drop-directory watcher: real files, real threads, bounded in time."""

from __future__ import annotations

import os
import threading
import time
from functools import cache
from pathlib import Path

import pytest

import skygrade.streamer.drop_checks as drop_checks_mod
import skygrade.streamer.watcher as watcher_mod
import skygrade.transforms.confined_reads as confined_reads_mod
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.streamer.telescope import write_progressively
from skygrade.streamer.watcher import DropWatcher
from skygrade.transforms.fits_walk import check_integrity

pytestmark = [
    pytest.mark.usefixtures("no_thread_leak"),
    # watchdog warns (from its inotify thread) when a `mkdir -p` races its recursive watches;
    # with filterwarnings=error the warning would kill that thread. Harmless: ignore it.
    pytest.mark.filterwarnings("ignore:Callback with id:RuntimeWarning"),
]

SETTLE_S = 0.2
POLL_S = 0.05
#: How long to keep watching after the expected reports, to catch duplicates.
QUIET_S = 0.6
NIGHT = "2026-11-24"


@cache
def exposure(seed: int = 0) -> bytes:
    """The bytes of one tiny, valid MegaCam exposure (95 kB)."""
    plan = plan_night(NIGHT, 1, seed=seed, class_mix={"GOOD": 1.0})[0]
    return exposure_bytes(plan, Geometry(2, 128, 160))


class Recorder:
    """Callbacks that record what the watcher reports, and let a test wait for it."""

    def __init__(self, check_ready=None):
        self._cond = threading.Condition()
        self._check_ready = check_ready
        self.ready: list[tuple[Path, float]] = []
        self.rejected: list[tuple[Path, str, str]] = []
        self.failures: list[BaseException] = []

    def on_ready(self, path: Path) -> None:
        try:
            if self._check_ready is not None:
                self._check_ready(path)
        except BaseException as exc:  # surfaced by the test, not lost in the worker's log
            self.failures.append(exc)
        with self._cond:
            self.ready.append((path, time.monotonic()))
            self._cond.notify_all()

    def on_reject(self, path: Path, reason: str, message: str) -> None:
        with self._cond:
            self.rejected.append((path, reason, message))
            self._cond.notify_all()

    @property
    def ready_paths(self) -> list[Path]:
        with self._cond:
            return [p for p, _ in self.ready]

    @property
    def reasons(self) -> dict[str, str]:
        with self._cond:
            return {p.name: reason for p, reason, _ in self.rejected}

    def wait(self, predicate, timeout: float = 5.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout)
        assert ok, f"timed out: ready={self.ready_paths}, rejected={self.rejected}"
        assert not self.failures, self.failures

    def wait_ready(self, n: int, timeout: float = 5.0) -> None:
        self.wait(lambda r: len(r.ready) >= n, timeout)


@pytest.fixture
def drop(tmp_path):
    path = tmp_path / "drop"
    path.mkdir()
    return path


@pytest.fixture
def start_watcher(drop):
    """Start a DropWatcher on ``drop`` with short timings; every one is stopped at teardown."""
    started = []

    def start(recorder: Recorder, **kwargs) -> DropWatcher:
        options = {"settle_s": SETTLE_S, "poll_s": POLL_S, "incomplete_timeout_s": 5.0}
        watcher = DropWatcher(drop, recorder.on_ready, recorder.on_reject, **options | kwargs)
        watcher.start()
        started.append(watcher)
        return watcher

    yield start
    for watcher in started:
        watcher.stop()


def check_integrity_bytes(data: bytes):
    """The layout of an exposure given as bytes."""
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".fits") as fh:
        fh.write(data)
        fh.flush()
        return check_integrity(fh.name)


def _complete(path: Path) -> None:
    layout = check_integrity(path)
    assert layout.size == len(exposure())


# ---------------------------------------------------------------------------------- arrivals
@pytest.mark.parametrize("use_polling", [False, True], ids=["inotify", "polling"])
def test_progressive_write_reported_once_after_completion(drop, start_watcher, use_polling):
    rec = Recorder(check_ready=_complete)
    start_watcher(rec, use_polling=use_polling)
    path = drop / "2817001o.fits"
    chunks = []
    write_progressively(
        exposure(), path, chunks=5, duration_s=1.0, on_chunk=lambda i, n: chunks.append(i)
    )
    written_at = time.monotonic()
    assert chunks == [1, 2, 3, 4, 5]
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [path]
    assert rec.ready[0][1] >= written_at
    assert rec.rejected == []


def test_burst_of_files_each_reported_once(drop, start_watcher):
    rec = Recorder(check_ready=_complete)
    start_watcher(rec)
    paths = [drop / f"{2817100 + i}o.fits" for i in range(30)]
    for path in paths:
        path.write_bytes(exposure())
    rec.wait_ready(30)
    time.sleep(QUIET_S)
    assert sorted(rec.ready_paths) == sorted(paths)
    assert rec.rejected == []


def test_files_in_night_subfolders(drop, start_watcher):
    rec = Recorder(check_ready=_complete)
    (drop / "2026-11-23").mkdir()
    start_watcher(rec)
    old = drop / "2026-11-23" / "2817001o.fits"
    old.write_bytes(exposure())
    night = drop / "2026-11-24" / "deeper"  # created while watching
    night.mkdir(parents=True)
    new = night / "2817002o.fits.fz"
    new.write_bytes(exposure())
    rec.wait_ready(2)
    time.sleep(QUIET_S)
    assert sorted(rec.ready_paths) == sorted([old, new])


def test_folder_moved_in_whole_is_scanned(drop, start_watcher, tmp_path):
    rec = Recorder(check_ready=_complete)
    start_watcher(rec)
    outside = tmp_path / "staging" / NIGHT
    outside.mkdir(parents=True)
    for i in range(3):
        (outside / f"28171{i}o.fits").write_bytes(exposure())
    os.rename(outside, drop / NIGHT)
    rec.wait_ready(3)
    time.sleep(QUIET_S)
    assert sorted(p.name for p in rec.ready_paths) == [f"28171{i}o.fits" for i in range(3)]


def test_existing_files_found_by_startup_scan(drop, start_watcher):
    rec = Recorder(check_ready=_complete)
    paths = [drop / "2817001o.fits", drop / NIGHT / "2817002o.fits"]
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(exposure())
    (drop / "notes.txt").write_text("not an exposure")
    watcher = start_watcher(rec)
    rec.wait_ready(2)
    assert sorted(rec.ready_paths) == sorted(paths)
    # A second scan re-offers them; nothing is reported twice for an unchanged identity.
    assert watcher.scan() == 2
    time.sleep(QUIET_S)
    assert len(rec.ready) == 2


def test_rewritten_file_is_reported_again(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure(0))
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    write_progressively(exposure(1), path, chunks=3, duration_s=0.4)
    rec.wait_ready(2)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [path, path]
    assert path.read_bytes() == exposure(1)


def _fill_preallocated(path: Path, data: bytes, stops: list[int], pause_s: float) -> None:
    """Copy ``data`` into space reserved first (``truncate -s SIZE``, as rsync --preallocate
    and fallocate do), pausing at each byte offset of ``stops`` for ``pause_s``."""
    with open(path, "wb") as fh:
        fh.truncate(len(data))
    with open(path, "r+b") as fh:
        pos = 0
        for stop in [*stops, len(data)]:
            fh.write(data[pos:stop])
            fh.flush()
            os.fsync(fh.fileno())
            pos = stop
            if stop < len(data):
                time.sleep(pause_s)


def test_a_preallocated_copy_is_reported_once_when_filled(drop, start_watcher):
    """A copy into preallocated space has its final size from the start, and every header
    once its last CCD's data start arriving: paused twice within that CCD for longer than
    settle_s, it was reported at each pause, on partial data, then complete (three grades;
    issue 21, item 4). Now once, complete."""
    data = exposure()
    last = check_integrity_bytes(data).hdus[-1]
    stops = [last.data_offset + last.data_bytes // 3, last.data_offset + 2 * last.data_bytes // 3]
    path = drop / "2817001o.fits"

    def full(ready: Path) -> None:
        assert ready.read_bytes() == data, "reported before the copy was complete"

    rec = Recorder(check_ready=full)
    start_watcher(rec)
    _fill_preallocated(path, data, stops, pause_s=4 * SETTLE_S)
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [path]
    assert rec.rejected == []


def test_touched_without_change_is_not_reported_again(drop, start_watcher):
    """A new mtime with the same content (touch, rsync -t, a copy of the same bytes) is no
    reason to grade again: only a change of content is."""
    rec = Recorder()
    start_watcher(rec)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure(0))
    rec.wait_ready(1)
    before = path.stat().st_mtime_ns
    path.write_bytes(exposure(0))  # copied again as it was: a new mtime, the same bytes
    os.utime(path, ns=(before + 10**9, before + 10**9))
    time.sleep(SETTLE_S + QUIET_S)
    assert rec.ready_paths == [path]
    path.write_bytes(exposure(1))  # new content: reported again
    rec.wait_ready(2)
    assert rec.ready_paths == [path, path]


def test_data_that_really_end_in_zeros_are_graded_after_the_timeout(drop, start_watcher):
    """Zeros at the end of a CCD with no DATASUM to prove them real are waited for like an
    incomplete copy, then reported (not quarantined as truncated): the file is complete."""
    data = bytearray(exposure())
    last = check_integrity_bytes(bytes(data)).hdus[-1]
    end = last.data_offset + last.data_bytes
    data[end - 4 * 2880 : end] = bytes(4 * 2880)
    rec = Recorder()
    start_watcher(rec, incomplete_timeout_s=1.0)
    path = drop / "2817001o.fits"
    path.write_bytes(bytes(data))
    time.sleep(0.6)
    assert rec.ready == []  # waited for: it might be a copy still filling
    rec.wait_ready(1)
    assert rec.ready_paths == [path] and rec.rejected == []


def test_temporary_name_renamed_into_place(drop, start_watcher):
    rec = Recorder(check_ready=_complete)
    start_watcher(rec)
    part = drop / "2817001o.fits.part"
    write_progressively(exposure(), part, chunks=3, duration_s=0.3)
    time.sleep(SETTLE_S + 0.2)
    assert rec.ready == []
    final = drop / "2817001o.fits"
    os.rename(part, final)
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [final]


def test_hidden_temporary_and_foreign_names_are_ignored(drop, start_watcher):
    rec = Recorder()
    watcher = start_watcher(rec)
    ignored = [
        ".2817001o.fits",
        "2817001o.fits.tmp",
        "2817001o.fits.part",
        "2817001o.fits~",
        ".2817001o.fits.swp",
        "2817001o.fits.swp",
        ".staging/2817001o.fits",
        "notes.txt",
        "2817001o.FITS.gz",
    ]
    for name in ignored:
        (drop / name).parent.mkdir(exist_ok=True)
        (drop / name).write_bytes(b"garbage, would be rejected if looked at")
    (drop / "folder.fits").mkdir()  # a directory with a matching name
    sentinel = drop / "2817009o.fits"
    sentinel.write_bytes(exposure())
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [sentinel]
    assert rec.rejected == []
    assert watcher.scan() == 1  # only the sentinel is worth a look


# ------------------------------------------------------------------------------ rejections
def test_truncated_forever_is_rejected_after_timeout(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec, incomplete_timeout_s=0.8)
    path = drop / "2817001o.fits"
    started = time.monotonic()
    path.write_bytes(exposure()[: len(exposure()) // 2])
    rec.wait(lambda r: r.rejected)
    waited = time.monotonic() - started
    time.sleep(QUIET_S)
    assert [(p, reason) for p, reason, _ in rec.rejected] == [(path, "truncated")]
    assert "still incomplete" in rec.rejected[0][2]
    assert 0.8 <= waited < 3.0
    assert rec.ready == []


def test_truncated_file_completed_after_rejection_is_reported(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec, incomplete_timeout_s=0.5)
    path = drop / "2817001o.fits"
    half = len(exposure()) // 2
    path.write_bytes(exposure()[:half])
    rec.wait(lambda r: r.rejected)
    with path.open("ab") as fh:
        fh.write(exposure()[half:])
    rec.wait_ready(1)
    assert rec.ready_paths == [path]


def test_a_slow_copy_still_growing_past_the_timeout_is_waited_for(drop, start_watcher, caplog):
    """The timeout counts from the last change: a transfer slower than it is not truncated."""
    rec = Recorder()
    start_watcher(rec, incomplete_timeout_s=0.6)
    path = drop / "2817001o.fits"
    data = exposure()
    chunks = [data[i : i + len(data) // 12] for i in range(0, len(data), len(data) // 12)]
    with caplog.at_level("WARNING", logger="skygrade.streamer.watcher"):
        with path.open("wb") as fh:
            for chunk in chunks:  # ~1.3 s of growth, > 2x the timeout
                fh.write(chunk)
                fh.flush()
                time.sleep(0.1)
        rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.rejected == [] and rec.ready_paths == [path]
    assert "still being written" in caplog.text


def test_pending_lists_the_copies_still_arriving_with_their_state(drop, start_watcher):
    """What the observer page's Waiting panel shows: a file cut short is ``incomplete`` (the
    walk's verdict), one still growing ``copying``; both leave the list once reported."""
    rec = Recorder()
    watcher = start_watcher(rec, incomplete_timeout_s=30.0)
    half = drop / "2817001o.fits"
    half.write_bytes(exposure()[: len(exposure()) // 2])
    before = time.time()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        pending = watcher.pending()
        if [w["state"] for w in pending] == ["incomplete"]:
            break
        time.sleep(POLL_S)
    (w,) = pending
    assert w["path"] == str(half) and w["state"] == "incomplete"
    assert w["reason"] == "truncated: waiting for the rest of the copy"
    assert before - 5.0 < w["since"] <= time.time()
    growing = drop / "2817002o.fits"
    deadline = time.monotonic() + 5.0
    with growing.open("wb") as fh:  # written a little at a time, faster than it settles
        while time.monotonic() < deadline:
            fh.write(exposure()[:100])
            fh.flush()
            time.sleep(SETTLE_S / 4)
            states = {Path(w["path"]).name: w["state"] for w in watcher.pending()}
            if states.get(growing.name) == "copying":
                break
    assert states == {half.name: "incomplete", growing.name: "copying"}
    growing.write_bytes(exposure(1))
    with half.open("ab") as fh:
        fh.write(exposure()[len(exposure()) // 2 :])
    rec.wait_ready(2)
    assert watcher.pending() == []


def test_not_fits_rejected_at_once(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec)
    path = drop / "2817001o.fits"
    path.write_bytes(b"this is not a FITS file\n" * 200)
    rec.wait(lambda r: r.rejected, timeout=2.0)
    time.sleep(QUIET_S)
    assert [(p, reason) for p, reason, _ in rec.rejected] == [(path, "not_fits")]
    assert rec.ready == []


@pytest.mark.parametrize(
    "name",
    ["2817001o\nINFO ready: forged.fits", "2817001o\r\x1b[2K\x85.fits"],
    ids=["newline", "cr-escape-c1"],
)
def test_control_characters_in_a_name_reach_neither_the_log_nor_the_reason(
    drop, start_watcher, caplog, name
):
    """A newline in a file name split the log line (a forged second line): every logged name
    and reason is escaped, and so is the message handed to ``on_reject``."""
    caplog.set_level("DEBUG", logger="skygrade.streamer.watcher")
    rec = Recorder()
    start_watcher(rec)
    bad, good = drop / name, drop / (name.replace(".fits", "") + "-good.fits")
    bad.write_bytes(b"this is not a FITS file\n" * 200)
    good.write_bytes(exposure())
    rec.wait(lambda r: r.rejected and r.ready, timeout=5.0)
    ((path, reason, message),) = rec.rejected
    assert (path, reason) == (bad, "not_fits")  # the file itself keeps its real name
    controls = set("\n\r\x1b\x85")
    assert not controls & set(message), message
    assert name.replace("\n", "\\n").replace("\r", "\\r")[:10] in message
    lines = [r.getMessage() for r in caplog.records if r.name == "skygrade.streamer.watcher"]
    assert any("rejected" in line for line in lines) and any("ready" in line for line in lines)
    assert not [line for line in lines if controls & set(line)], lines


def test_a_gzipped_fits_file_is_rejected_once_settled_not_ignored(drop, start_watcher, monkeypatch):
    """``*.fits.gz`` was ignored with no trace: now it is rejected as
    ``unsupported_compression`` once its copy has settled, without being opened."""
    import gzip

    opened = []
    monkeypatch.setattr(drop_checks_mod, "check_integrity", lambda p: opened.append(p))
    rec = Recorder()
    start_watcher(rec)
    path = drop / "2817001o.fits.gz"
    data = gzip.compress(exposure())
    write_progressively(data, path, chunks=3, duration_s=0.1)
    rec.wait(lambda r: r.rejected, timeout=5.0)
    time.sleep(QUIET_S)
    ((where, reason, message),) = rec.rejected  # once, though written in three chunks
    assert (where, reason) == (path, "unsupported_compression")
    assert message.startswith(f"{path}: ") and ".gz" in message and "fpack" in message
    assert rec.ready == [] and opened == []


def test_corrupt_file_rejected_with_its_reason(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure() + b"\0" * 2880)  # a block after the last HDU
    rec.wait(lambda r: r.rejected, timeout=2.0)
    assert rec.reasons == {"2817001o.fits": "trailing_data"}


def test_symlink_outside_drop_refused_without_opening(drop, start_watcher, tmp_path, monkeypatch):
    opened = []
    real_check = drop_checks_mod.check_integrity

    def spy(path):
        opened.append(os.fspath(path))
        return real_check(path)

    monkeypatch.setattr(drop_checks_mod, "check_integrity", spy)
    outside = tmp_path / "secret" / "2817001o.fits"
    outside.parent.mkdir()
    outside.write_bytes(exposure())
    rec = Recorder()
    start_watcher(rec)
    (drop / "2817001o.fits").symlink_to(outside)
    (drop / "store").mkdir()
    inside = drop / "store" / "2817002o.fits"
    inside.write_bytes(exposure())
    (drop / "2817002o.fits").symlink_to(inside)  # a link that stays inside is fine
    rec.wait(lambda r: r.rejected and r.ready)
    time.sleep(QUIET_S)
    assert rec.reasons == {"2817001o.fits": "outside_drop"}
    assert "outside" in rec.rejected[0][2]
    # Reported once, by its real name (before: by both names, so graded twice).
    assert rec.ready_paths == [inside]
    assert not any(p.endswith("/drop/2817001o.fits") for p in opened)


@pytest.mark.parametrize("kind", ["hardlink", "symlink", "symlink-first"])
def test_a_file_with_two_names_in_the_drop_is_reported_once(drop, start_watcher, kind):
    """A hard link or a symlink to a file of the drop is the same file: reported once, by a
    name with no symlink in it (issue 21, item 10: a symlink made the daemon grade it twice)."""
    night = drop / NIGHT
    night.mkdir()
    target = night / "2817001o.fits"
    other = drop / "2817001o.fits"
    if kind == "symlink-first":  # only the link's name can be seen first
        (drop / ".store").mkdir()
        target = drop / ".store" / "2817001o.fits"
    target.write_bytes(exposure())
    if kind == "hardlink":
        os.link(target, other)
    else:
        other.symlink_to(target)
    rec = Recorder(check_ready=_complete)
    start_watcher(rec)
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    if kind == "hardlink":  # either name; whichever the scan came to first
        assert len(rec.ready_paths) == 1 and rec.ready_paths[0] in (target, other)
    else:
        assert rec.ready_paths == [target]
    assert rec.rejected == []


def test_a_bad_file_with_two_names_is_rejected_once(drop, start_watcher):
    """A hard link to a non-FITS file is the same file: one quarantine, not one per name."""
    rec = Recorder()
    start_watcher(rec)
    (drop / "store").mkdir()
    garbage = drop / "store" / "2817001o.fits"
    garbage.write_bytes(b"observing log, not an image\n" * 200)
    os.link(garbage, drop / "2817002o.fits")
    rec.wait(lambda r: r.rejected)
    time.sleep(QUIET_S)
    assert len(rec.rejected) == 1 and rec.rejected[0][1] == "not_fits", rec.rejected
    assert rec.ready == []


def test_unreadable_file_rejected(drop, start_watcher, monkeypatch):
    real_open = open

    def guarded_open(file, *args, **kwargs):
        if os.fspath(file).endswith("locked.fits"):
            raise PermissionError(13, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    # Tests run as root, so chmod 000 would not stop a read: refuse the open instead.
    monkeypatch.setattr(confined_reads_mod, "open", guarded_open, raising=False)
    real_check = drop_checks_mod.check_integrity

    def flaky_disk(path):
        if os.fspath(path).endswith("eio.fits"):
            raise OSError(5, "Input/output error", os.fspath(path))
        return real_check(path)

    monkeypatch.setattr(drop_checks_mod, "check_integrity", flaky_disk)
    rec = Recorder()
    start_watcher(rec)
    (drop / "locked.fits").write_bytes(exposure())
    (drop / "eio.fits").write_bytes(exposure())
    os.mkfifo(drop / "pipe.fits")  # would block a reader forever
    rec.wait(lambda r: len(r.rejected) >= 3)
    time.sleep(QUIET_S)
    assert rec.reasons == {
        "locked.fits": "unreadable",
        "eio.fits": "unreadable",
        "pipe.fits": "unreadable",
    }
    assert "Permission denied" in dict((p.name, m) for p, _, m in rec.rejected)["locked.fits"]
    assert rec.ready == []


def test_deleted_while_waiting_is_forgotten(drop, start_watcher):
    rec = Recorder()
    start_watcher(rec, incomplete_timeout_s=0.5)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure()[:5760])
    time.sleep(SETTLE_S)
    path.unlink()
    time.sleep(1.0)
    assert rec.ready == [] and rec.rejected == []


# -------------------------------------------------------------------------- robustness
def test_callback_exception_does_not_kill_the_worker(drop, start_watcher, caplog):
    calls = []

    class Flaky(Recorder):
        def on_ready(self, path):
            calls.append(path)
            if len(calls) == 1:
                raise RuntimeError("ledger disk full")
            super().on_ready(path)

    rec = Flaky()
    watcher = start_watcher(rec)
    first = drop / "2817001o.fits"
    first.write_bytes(exposure())
    second = drop / "2817002o.fits"
    time.sleep(SETTLE_S + 0.2)
    second.write_bytes(exposure())
    # The failed report is offered again (after ~1 s), and the worker goes on with the rest.
    rec.wait_ready(2, timeout=5.0)
    assert watcher.running
    assert sorted(rec.ready_paths) == sorted([first, second])
    assert calls.count(first) == 2
    assert "ledger disk full" in caplog.text


def test_stop_joins_every_thread(drop):
    before = set(threading.enumerate())
    rec = Recorder()
    watcher = DropWatcher(drop, rec.on_ready, rec.on_reject, settle_s=SETTLE_S, poll_s=POLL_S)
    with watcher:
        assert watcher.running
        assert len(set(threading.enumerate()) - before) >= 2  # observer (+ emitter) and worker
        with pytest.raises(RuntimeError, match="already running"):
            watcher.start()
    assert not watcher.running
    assert set(threading.enumerate()) - before == set()
    watcher.stop()  # idempotent
    # It can start again, and finds the file written while it was down.
    (drop / "2817001o.fits").write_bytes(exposure())
    with watcher:
        rec.wait_ready(1)
    assert set(threading.enumerate()) - before == set()


def test_lost_events_are_caught_by_the_periodic_rescan(drop, start_watcher, monkeypatch):
    monkeypatch.setattr(watcher_mod._EnqueueHandler, "on_any_event", lambda self, event: None)
    rec = Recorder(check_ready=_complete)
    start_watcher(rec, rescan_s=0.3)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure())
    rec.wait_ready(1)
    time.sleep(QUIET_S)
    assert rec.ready_paths == [path]


def test_dead_watchdog_thread_is_restarted(drop, start_watcher):
    rec = Recorder()
    watcher = start_watcher(rec, rescan_s=0.3)
    old = watcher._observer
    for emitter in list(old.emitters):
        emitter.stop()
        emitter.join(2.0)
    deadline = time.monotonic() + 10.0  # the rescan every 0.3 s notices; slower under load
    while watcher._observer is old and time.monotonic() < deadline:
        time.sleep(0.05)
    new = watcher._observer
    assert new is not old and new.is_alive()
    assert all(e.is_alive() for e in new.emitters)
    path = drop / "2817001o.fits"
    path.write_bytes(exposure())
    rec.wait_ready(1)
    assert rec.ready_paths == [path]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"settle_s": -1}, "settle_s"),
        ({"poll_s": 0}, "poll_s"),
        ({"incomplete_timeout_s": 0}, "incomplete_timeout_s"),
        ({"patterns": ()}, "patterns"),
        ({"rescan_s": 0}, "rescan_s"),
    ],
)
def test_invalid_settings(drop, kwargs, match):
    with pytest.raises(ValueError, match=match):
        DropWatcher(drop, print, print, **kwargs)


def test_missing_drop_dir(tmp_path):
    watcher = DropWatcher(tmp_path / "nope", print, print)
    with pytest.raises(FileNotFoundError, match="nope"):
        watcher.start()
    assert not watcher.running
