"""The daemon as a real process (``python -m skygrade.streamer.cli watch``) for the tests that
start, kill and restart it: its configuration, tiny exposures, bounded waits, the members of its
session (to count orphans) and its metrics and health as a client reads them."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.exposure import exposure_id_from_path

REPO = Path(__file__).resolve().parents[2]
NIGHT = "2026-11-24"
#: Seconds a daemon may take to import Beam and torch and answer on its metrics port.
START_TIMEOUT_S = 60.0
#: Seconds for the exposures of one test to reach their final state.
GRADE_TIMEOUT_S = 60.0
#: ``watch.shutdown_timeout_s`` given to the daemons; a SIGTERM must end one within it.
SHUTDOWN_TIMEOUT_S = 20.0

#: One 256x320 CCD: a few hundred kB, graded in about a second.
SMALL = Geometry(1, 256, 320)

_LISTENING = re.compile(r"metrics on http://([^:/\s]+):(\d+)/metrics")

#: Capabilities a root daemon is started without when it must respect file permissions (a
#: read-only directory stops root only without them): the daemon runs as ``User=skygrade``
#: in production (ops/skygrade.service).
_DAC_CAPS = "-dac_override,-dac_read_search"


def write_config(path: Path, metrics: dict | None = None, **watch) -> Path:
    """A daemon configuration for tiny exposures (``watch`` and ``metrics`` keys override)."""
    settings = {
        "settle_s": 0.2,
        "poll_s": 0.05,
        "rescan_s": "null",
        "ccd_workers": 1,
        "retry_s": 0.3,
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        **watch,
    }
    lines = ["watch:", *(f"  {k}: {v}" for k, v in settings.items())]
    lines += ["metrics:", *(f"  {k}: {v}" for k, v in {"port": 0, **(metrics or {})}.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def exposures(n: int, seed: int, geometry: Geometry = SMALL) -> list[tuple[str, bytes]]:
    """``n`` tiny exposures: (file name, FITS bytes)."""
    plans = plan_night(NIGHT, n, seed=seed, class_mix={"GOOD": 1})
    return [(p.filename, exposure_bytes(p, geometry)) for p in plans]


def ids_of(files: list[tuple[str, bytes]]) -> list[str]:
    return [exposure_id_from_path(name) for name, _ in files]


def poll_until(predicate, timeout: float) -> bool:
    """Whether ``predicate()`` became true within ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= end:
            return False
        time.sleep(0.02)
    return True


def wait_for(predicate, timeout: float, what: str, proc: DaemonProcess | None = None) -> None:
    """Wait for ``predicate()``; fail (with the daemon's log) on a timeout or if it exits."""

    def done() -> bool:
        if predicate():
            return True
        if proc is not None and proc.proc.poll() is not None:
            pytest.fail(f"the daemon exited ({proc.proc.returncode}) waiting for {what}:\n{proc}")
        return False

    if not poll_until(done, timeout):
        log = "" if proc is None else f":\n{proc}"
        pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}{log}")


def live_processes():
    """(pid, /proc entry, the fields of its stat after the command name) of every live (not
    zombie) process: ``fields[0]`` is the state, then ppid, process group, session..."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry / "stat")
        if fields is not None and fields[0] not in ("Z", "X"):
            yield int(entry.name), entry, fields


def _stat_fields(path: Path) -> list[str] | None:
    """The fields of a /proc stat file after the command name (None when it is gone)."""
    try:
        stat = path.read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def all_stopped(sid: int) -> bool:
    """Whether every thread of every live process of session ``sid`` is stopped (state T).

    A SIGSTOP is delivered to each thread when it next runs, so after ``killpg`` returns a
    thread on another core may still finish what it was doing (a ledger commit): wait for this
    before reading what the frozen processes wrote."""
    for _, entry, fields in live_processes():
        if int(fields[3]) != sid:
            continue
        try:
            tasks = list((entry / "task").iterdir())
        except OSError:
            continue
        for task in tasks:
            fields = _stat_fields(task / "stat")
            if fields is not None and fields[0] not in ("T", "t", "Z", "X"):
                return False
    return True


def session_members(sid: int) -> list[tuple[int, str]]:
    """(pid, state) of every live (not zombie) process in session ``sid``, from /proc."""
    return [(pid, f[0]) for pid, _, f in live_processes() if int(f[3]) == sid]


class DaemonProcess:
    """One ``skygrade watch`` process in its own session, logging to a file.

    ``unprivileged``: when the tests run as root, start the daemon without the capabilities
    that let root write where permissions forbid it (``setpriv``), as the daemon runs in
    production; a test that makes a directory read-only needs it.
    """

    def __init__(
        self,
        config: Path,
        drop: Path,
        out: Path,
        bundle: Path,
        log: Path,
        unprivileged: bool = False,
    ) -> None:
        self.log = log
        cmd = [sys.executable, "-m", "skygrade.streamer.cli", "--config", str(config), "watch"]
        cmd += ["--drop", str(drop), "--out", str(out), "--bundle", str(bundle)]
        if unprivileged and os.geteuid() == 0:
            setpriv = shutil.which("setpriv")
            if setpriv is None:
                pytest.fail("running as root: setpriv (util-linux) is needed to drop privileges")
            cmd = [setpriv, f"--inh-caps={_DAC_CAPS}", f"--bounding-set={_DAC_CAPS}", "--", *cmd]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with log.open("wb") as fh:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.pid = self.proc.pid
        self.url = ""

    def text(self) -> str:
        """Everything the daemon has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __str__(self) -> str:
        return self.text()[-6000:]  # the end of the log, for failure messages

    def wait_ready(self) -> None:
        """Wait for the start-up log line naming the metrics port, then for /healthz."""

        def listening() -> bool:
            found = _LISTENING.search(self.text())
            if found:
                self.url = f"http://{found[1]}:{found[2]}"
            return bool(found)

        wait_for(listening, START_TIMEOUT_S, "the metrics port", self)

        def answers() -> bool:  # 200, or 503 with the reason (a test may break the output)
            try:
                return health_of(self)[0] in (200, 503)
            except OSError:
                return False

        wait_for(answers, 10.0, "/healthz", self)

    def get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:
                return response.read().decode()
        except OSError:
            return None

    def metric(self, name: str) -> float | None:
        """One sample of the daemon's /metrics (None if absent or the server did not answer)."""
        text = self.get("/metrics")
        return None if text is None else metric_sample(text, name)

    def kill(self) -> bool:
        """SIGKILL the daemon's process group (it and its CCD workers) and reap the daemon.

        Returns whether the daemon's session is empty (zombies aside) within 10 s.
        """
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.proc.wait(10)
        return poll_until(lambda: not session_members(self.pid), 10.0)


def metric_sample(text: str, name: str) -> float | None:
    """The value of the sample ``name`` (with its labels, as exposed) in a /metrics text."""
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found[1])


def health_of(proc: DaemonProcess) -> tuple[int, str]:
    """(HTTP status, body) of the daemon's /healthz; a 503 is an answer, not an error."""
    try:
        with urllib.request.urlopen(proc.url + "/healthz", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@contextlib.contextmanager
def daemon(*args, **kwargs):
    """Start a daemon (:func:`start_daemon`'s arguments), wait until it serves its metrics;
    always kill its session at the end."""
    proc = start_daemon(*args, **kwargs)
    try:
        proc.wait_ready()
        yield proc
    finally:
        proc.kill()


def start_daemon(
    tmp_path: Path,
    config: Path,
    drop: Path,
    out: Path,
    bundle: Path,
    unprivileged: bool = False,
) -> DaemonProcess:
    """Start a daemon logging to ``tmp_path/daemon-N.log``; the caller kills it."""
    n = len(list(tmp_path.glob("daemon-*.log"))) + 1
    log = tmp_path / f"daemon-{n}.log"
    return DaemonProcess(config, drop, out, bundle, log, unprivileged)


def make_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """(drop, out) under ``tmp_path``, with the drop's night folder made."""
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / NIGHT).mkdir(parents=True)
    return drop, out


def metric_total(text: str, family: str) -> float:
    """The sum of every sample of ``family`` (all its labels) in a /metrics text."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(f"{family}{{") or line.startswith(f"{family} ")
    )
