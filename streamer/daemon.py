"""The daemon at the data drop: watcher -> ledger -> one Beam pipeline per exposure -> parquet,
Prometheus metrics, alerts.

Execution design, chosen by measurement (benchmarks/latency.py and benchmarks/extract.py; the
figures are in benchmarks/README.md):

- A streaming Beam pipeline on the FnApiRunner delivers elements from a queue in milliseconds,
  but its GroupByKey (needed to gather an exposure's CCDs into one grade) emits only at
  shutdown, and the BundleBasedDirectRunner's streaming is broken (apache/beam#26577).
- A bounded pipeline per ready exposure on the in-process FnApiRunner costs little overhead
  per run for a trivial graph, and it is the same ``GradeExposures`` that ``skygrade grade``
  and the backfill run, so the daemon grades exactly like the batch tools. For the real graph,
  building it and translating it to the runner's proto cost more than the daemon's budget per
  exposure, and a CoGroupByKey split it into 5 stages: the daemon's
  :class:`~skygrade.streamer.session.GradingSession` builds graph and proto once and reruns the
  proto per exposure, and with a CCD pool ``GradeExposures`` is one shuffle-free stage.
- sep holds the GIL: CCDs run in parallel only in separate processes. Beam's
  ``multi_processing`` mode restarts its workers every run (a fixed cost of CPU-seconds per
  run), so the daemon uses a pool of CCD worker processes created once and reused by every
  exposure (``ccd_workers``; streamer/ccd_pool.py), several times faster than one process.
- The model bundle and SOM load once per process (RunInference's handler and the SOM go
  through process-level caches).

Durability: every file the watcher reports goes into the sqlite ledger before anything else;
the grader claims one entry at a time, runs the pipeline (the parquet sink writes each
exposure under a fixed name, atomically), then marks it final. A crash between the two is
recovered at start-up (the entry goes back to ``seen`` and is regraded, replacing the same
file), so nothing is lost and nothing appears twice. A failing sink (read-only disk) leaves
the entry pending; it is retried with back-off on its own schedule (``next_attempt_at`` in the
ledger), so the other exposures are graded meanwhile; once the output can be written again (a
grade written, or the grader's look at it every ``retry_s``), the exposures that waited only for
it are due at once, not after their back-off. A file the watcher refuses is the exception:
its quarantine row is written before its ledger entry, and a failed write is retried by the
watcher (a crash between the two rewrites the same row at restart).

What the daemon says about itself (/healthz, the Waiting panel) is
:class:`skygrade.streamer.daemon_health.DaemonHealth`, a mixin of :class:`Daemon`.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import threading
import time
from pathlib import Path

from skygrade.models.bundle import MANIFEST, check_bundle
from skygrade.ops.alert_delivery import AlertDispatcher
from skygrade.ops.alerts import AlertEngine
from skygrade.ops.config import Config
from skygrade.ops.config_values import ConfigError, Problem
from skygrade.ops.files import atomic_write_bytes
from skygrade.ops.http import HttpServer
from skygrade.ops.metrics import Metrics
from skygrade.ops.text import escape_controls
from skygrade.streamer.ccd_pool import shutdown_pool
from skygrade.streamer.daemon_health import DaemonHealth
from skygrade.streamer.ledger import TOO_MANY_ATTEMPTS, Ledger
from skygrade.streamer.observer import Observer
from skygrade.streamer.session import GradingSession
from skygrade.streamer.watcher import DropWatcher
from skygrade.transforms.confined_reads import pinned
from skygrade.transforms.exposure import exposure_id_from_path
from skygrade.transforms.grades_dataset import GradesDataset, stored_row
from skygrade.transforms.grading import exposure_row
from skygrade.transforms.quarantine import Quarantined

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.sqlite"
#: Longest back-off (s) between two attempts at an exposure whose grading failed.
MAX_BACKOFF_S = 300.0


class Daemon(DaemonHealth):
    """Watch ``drop_dir``, grade every exposure into ``out_dir``; stop with :meth:`stop`.

    Parameters
    ----------
    drop_dir, out_dir : path-like
        Where exposures arrive; where the grades dataset and the ledger go.
    bundle : path-like
        Model bundle.
    cfg : Config
        Configuration (sections ``watch``, ``metrics``, ``alerts``, ``extract``).
    """

    def __init__(self, drop_dir, out_dir, bundle, cfg: Config) -> None:
        self.drop_dir = Path(drop_dir).resolve()
        self.out_dir = Path(out_dir)
        self.bundle = Path(bundle)
        self.cfg = cfg
        # The whole bundle, weights included, is loaded and checked before anything starts: a
        # bad one is refused here (BundleError: `skygrade watch` exits 2 saying why) rather
        # than retried all night.
        self.manifest = check_bundle(self.bundle).manifest
        self._checked_key = self._bundle_key()
        self._refused_key: tuple | None = None  # a bundle on disk refused, not graded with
        self.bundle_problem: str | None = None  # why, while it is on disk
        self.stopping = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics = Metrics()
        self.metrics.set_model(str(self.manifest.get("version", "unknown")))
        self.ledger: Ledger | None = None
        self.last_graded: dict | None = None
        self.session = None  # the grading pipeline (skygrade.streamer.session), built on first use
        self._session_key: tuple | None = None  # the bundle the session was built for
        self._output_failures = 0  # failed writes in a row while the output is unwritable
        self._output_waiting: set[int] = set()  # ledger keys held back by it, not by themselves
        self._output_looked = 0.0  # monotonic time the grader last looked at a broken output
        self.output_problem: str | None = None  # why nothing can be written, while it lasts
        self.bundle_blocked = False  # no bundle to grade with (health says so)
        self._probe: tuple[float, str | None] = (0.0, None)  # last probe of the output by health
        self.metrics.oldest_pending_age.set_function(self._oldest_pending_age)
        self.started_at = time.time()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Open the ledger, recover, start server, alerting, grader and watcher."""
        wc = self.cfg.watch
        if not self.drop_dir.is_dir():
            raise FileNotFoundError(f"drop directory {self.drop_dir} does not exist")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger(self.out_dir / LEDGER_FILE)
        recovered = self.ledger.recover(max_interruptions=wc.max_interruptions)
        if recovered:
            log.info("recovered %d exposure(s) caught mid-grading", len(recovered))
        self.dispatcher = AlertDispatcher.from_config(self.cfg.alerts, self.metrics)
        self.dispatcher.start()
        self.alerts = AlertEngine(self.cfg.alerts, sink=self.dispatcher.send, metrics=self.metrics)
        self.observer = Observer(
            self.out_dir, status=self.health, waiting=self.waiting, drop_dir=self.drop_dir
        )
        self._warm = threading.Thread(target=self.observer.warm, name="skygrade-observer-warm")
        self._warm.start()
        self.server = HttpServer(
            self.metrics.registry,
            self.cfg.metrics.host,
            self.cfg.metrics.port,
            self.health,
            routes=self.observer.routes(),
            request_timeout_s=self.cfg.metrics.request_timeout_s,
            max_connections=self.cfg.metrics.max_connections,
        )
        self._start_server()
        grader = threading.Thread(target=self._grade_loop, name="skygrade-grader")
        grader.start()
        self._threads.append(grader)
        self.watcher = DropWatcher(
            self.drop_dir,
            self._on_ready,
            self._on_reject,
            settle_s=wc.settle_s,
            incomplete_timeout_s=wc.incomplete_timeout_s,
            poll_s=wc.poll_s,
            use_polling=wc.use_polling,
            rescan_s=wc.rescan_s,
        )
        self.watcher.start()
        self._wake.set()
        log.info(
            "watching %s -> %s (model %s, metrics on http://%s:%d/metrics)",
            self.drop_dir,
            self.out_dir,
            self.manifest.get("version"),
            self.cfg.metrics.host,
            self.server.port,
        )

    def _start_server(self) -> None:
        """Bind the metrics server; a bind that fails is a configuration error naming the key.

        Raises
        ------
        ConfigError
            ``metrics.port`` when the port is in use or not allowed, ``metrics.host`` when the
            address is unknown or not on this machine (before, the daemon exited with a bare
            ``[Errno 98] Address already in use``).
        """
        mc = self.cfg.metrics
        try:
            self.server.start()
        except OSError as exc:
            what = exc.strerror or str(exc)
            if isinstance(exc, socket.gaierror) or exc.errno == errno.EADDRNOTAVAIL:
                key, problem = "metrics.host", f"cannot bind {mc.host!r}: {what}"
            elif exc.errno == errno.EADDRINUSE:
                key, problem = "metrics.port", f"port {mc.port} on {mc.host} is in use"
            elif exc.errno == errno.EACCES:
                key, problem = "metrics.port", f"port {mc.port} on {mc.host}: {what}"
            else:
                key, problem = "metrics", f"cannot serve on {mc.host}:{mc.port}: {what}"
            raise ConfigError([Problem(key, problem)]) from exc

    def stop(self, timeout: float | None = None) -> None:
        """Stop watching, let the exposure in flight finish (or hand it back), join threads."""
        timeout = self.cfg.watch.shutdown_timeout_s if timeout is None else timeout
        self.stopping.set()
        self._wake.set()
        if getattr(self, "watcher", None) is not None:
            self.watcher.stop()
        for t in self._threads:
            t.join(timeout)
            if t.is_alive():
                log.warning(
                    "grader still busy after %.0f s; its exposure is regraded at restart", timeout
                )
        if getattr(self, "_warm", None) is not None:
            self._warm.join(timeout)
        if getattr(self, "server", None) is not None:
            self.server.stop()
        if getattr(self, "dispatcher", None) is not None:
            self.dispatcher.stop()
        shutdown_pool()
        if self.ledger is not None:
            self.ledger.close()
        log.info("stopped")

    def run_forever(self) -> None:
        """Start, then block until SIGTERM / SIGINT, then stop cleanly."""

        def handle(signum, _frame):
            log.info("signal %d: stopping", signum)
            self.stopping.set()

        old = {s: signal.signal(s, handle) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.stop()
            for s, h in old.items():
                signal.signal(s, h)

    # ------------------------------------------------------------------ watcher callbacks

    def _on_ready(self, path: Path) -> None:
        st = path.stat()
        exposure_id = exposure_id_from_path(path)
        entry, new = self.ledger.observe(
            exposure_id, str(path), st.st_size, st.st_mtime_ns, ready_at=time.time()
        )
        if new:
            log.info("ready: %s", escape_controls(path))
            self._wake.set()

    def _on_reject(self, path: Path, reason: str, detail: str) -> None:
        # Runs on the watcher's worker thread: the modules it needs are imported with this one,
        # not here, or the first rejection would hold the watcher up for seconds of imports.
        try:
            st = path.lstat()
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        exposure_id = exposure_id_from_path(path)
        if self.ledger.is_done(exposure_id, size, mtime):
            return
        # The detail names the file: no control character of its name goes into the reason.
        reason, detail = escape_controls(reason), escape_controls(detail)
        arrived = time.time()
        try:
            row = self._write_refusal(exposure_id, str(path), reason, detail, arrived)
        except OSError as exc:
            # Not raised to the watcher, which offered the file again every second with a
            # traceback each time (issue 21, item 3): the refusal waits in the ledger, and the
            # grader writes its row on the back-off schedule of any failed write.
            _, new = self.ledger.observe(
                exposure_id, str(path), size, mtime, ready_at=arrived, refused=f"{reason}: {detail}"
            )
            if new:
                log.error(
                    "quarantine row of %s not written (%s); retrying in %.0f s",
                    escape_controls(path),
                    escape_controls(f"{type(exc).__name__}: {exc}"),
                    self.cfg.watch.retry_s,
                )
                self._wake.set()
            return
        # The row first, the ledger second: once the ledger holds it as quarantined it is never
        # written again.
        self.ledger.quarantine(exposure_id, str(path), f"{reason}: {detail}", size, mtime)
        self._account(row)
        log.warning("quarantined %s: %s: %s", escape_controls(path), reason, detail)

    def _write_refusal(
        self, exposure_id: str, path: str, reason: str, detail: str, arrived: float | None
    ) -> dict:
        """Write the quarantine row of a file graded by nobody; returns the row."""
        q = Quarantined(exposure_id, path, None, "watch", reason, detail)
        row, _ = exposure_row(
            exposure_id, None, [], [q], str(self.manifest.get("version")), "", arrived
        )
        GradesDataset(self.out_dir).write(row, [])
        return stored_row(row)  # as the pipeline hands on its rows

    # ------------------------------------------------------------------ grading

    def _grade_loop(self) -> None:
        """Grade pending exposures until stopped; an unexpected error is logged and the loop
        goes on after a pause (a grader that dies silently would leave /healthz lying)."""
        while not self.stopping.is_set():
            try:
                self._grade_pending()
            except Exception:
                log.exception("grader error; retrying in %.0f s", self.cfg.watch.retry_s)
                self.stopping.wait(self.cfg.watch.retry_s)

    def _grade_pending(self) -> None:
        wc = self.cfg.watch
        while not self.stopping.is_set():
            waiting = [e for e in self.ledger.pending(wc.backlog_policy) if not self._gone(e)]
            self.metrics.backlog.set(len(waiting))
            now = time.time()
            # An exposure waiting out the back-off of a failure is not due: the others go first.
            due = [e for e in waiting if (e.next_attempt_at or 0.0) <= now]
            if not due:
                if self._output_repaired():
                    continue
                later = [e.next_attempt_at for e in waiting if e.next_attempt_at]
                timeout = wc.poll_s if not later else max(0.0, min(wc.poll_s, min(later) - now))
                self._wake.wait(timeout)
                self._wake.clear()
                continue
            if due[0].reason is None:
                self.bundle_blocked = not self._session_ready()
                if self.bundle_blocked:  # the bundle cannot be loaded: no exposure's fault
                    self.stopping.wait(wc.retry_s)
                    continue
            entry = self.ledger.claim(due[0].key)
            if entry is None:
                continue
            try:
                if entry.reason is not None:  # refused by the watcher; its row is to be written
                    slug, _, detail = entry.reason.partition(": ")
                    arrived = entry.ready_at or entry.seen_at
                    rows = [
                        self._write_refusal(entry.exposure_id, entry.path, slug, detail, arrived)
                    ]
                else:
                    # Opened once, beneath the drop directory, and read only through that open file
                    # (skygrade.transforms.confined_reads.pinned): a folder swapped for a symlink
                    # after the watcher's check cannot make the pipeline read a file outside the
                    # drop.
                    with pinned(entry.path, self.drop_dir):
                        rows = self.session.grade(
                            [entry.path], {entry.path: entry.ready_at or entry.seen_at}
                        )
            except Exception as exc:  # sink or pipeline failure: keep it pending, retry later
                self._failed(entry, exc)
                continue
            self._output_usable()  # written: the output works (again)
            row = rows[0] if rows else None
            if row is None:
                self.ledger.finish(entry.key, "quarantined", "no_row: the pipeline wrote nothing")
                continue
            state = "graded" if row["status"] == "graded" else "quarantined"
            self.ledger.finish(
                entry.key,
                state,
                None if state == "graded" else row["reason"],
                row["model_version"],
            )
            self._account(row)
            log.info(
                "%s %s %.2f %s",
                escape_controls(row["exposure_id"]),
                row["grade"],
                row["confidence"],
                escape_controls(row["reason"]),
            )

    def _session_ready(self) -> bool:
        """Build the grading session when first needed, and again when the bundle changes on
        disk (a symlink swapped to a new version: no restart needed).

        A new bundle is loaded and checked whole (:func:`skygrade.models.bundle.check_bundle`)
        before it is used: a bad one is refused once (logged, counted in
        ``skygrade_bundle_refusals_total``) and grading goes on with the bundle in use. The
        session is built on the bundle's real directory, so a symlink pointing elsewhere since
        does not change what it loads. False when there is no bundle to grade with: that is
        the bundle's fault, not the exposure's, and counts against none."""
        try:
            key = self._bundle_key()
        except OSError as exc:
            key = (str(self.bundle), -1)
            problem = f"{type(exc).__name__}: {exc}"
        else:
            if self.session is not None and key == self._session_key:
                return True
            if key == self._refused_key:
                return self._keep_old(key)
            problem = None
            real = Path(key[0])
            try:
                manifest = (
                    self.manifest if key == self._checked_key else check_bundle(real).manifest
                )
                session = GradingSession(
                    self.out_dir, real, self.cfg, ccd_workers=self.cfg.watch.ccd_workers
                )
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
        if problem is not None:
            if key != self._refused_key:
                self._refused_key, self.bundle_problem = key, problem
                self.metrics.bundle_refusals.inc()
                log.error(
                    "model bundle %s refused (%s); %s",
                    escape_controls(self.bundle),
                    escape_controls(problem),
                    "still grading with the bundle in use"
                    if self._keep_old(key)
                    else f"nothing can be graded until it is replaced (checked every "
                    f"{self.cfg.watch.retry_s:.0f} s)",
                )
            return self._keep_old(key)
        self.session, self._session_key = session, key
        self._checked_key = key
        self._refused_key = self.bundle_problem = None
        self._use_model(manifest)
        return True

    def _keep_old(self, refused: tuple) -> bool:
        """Whether the session in use may go on after ``refused`` was refused: it was built on
        another directory (a bundle rewritten in place took the old one's files with it)."""
        return self.session is not None and self._session_key[0] != refused[0]

    def _gone(self, entry) -> bool:
        """Whether a waiting exposure's file was deleted; if so it leaves the pending work (a
        file an operator removed is not retried forever)."""
        if entry.next_attempt_at is None or os.path.lexists(entry.path):
            return False  # only the ones that failed before are looked at, before each pass
        try:
            self.ledger.quarantine(
                entry.exposure_id,
                entry.path,
                "deleted: the file was removed before it could be graded",
                entry.size,
                entry.mtime_ns,
            )
        except ValueError:  # claimed or finished meanwhile
            return False
        log.warning(
            "%s was deleted after %d failed attempt(s): no longer retried",
            escape_controls(entry.path),
            entry.failures,
        )
        return True

    def _output_writable(self) -> str | None:
        """None if a file can be written into the grades dataset, else what failed."""
        probe = self.out_dir / "exposures" / f".skygrade-probe-{os.getpid()}"
        try:
            atomic_write_bytes(probe, b"")
            probe.unlink(missing_ok=True)  # a concurrent probe (health, grader) took it
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def _output_repaired(self) -> bool:
        """While no grade can be written, look at the output again (at most every
        ``retry_s``); True once it can be written, the exposures that waited for it made due.

        Before, they waited out the back-off they had built up while it was broken (which
        doubles with each failed write, up to 300 s): the fault suite's output, read-only for
        4 s, took 19 s to catch up once repaired, and /healthz stayed 503 meanwhile."""
        if self.output_problem is None:
            return False
        now = time.monotonic()
        if now - self._output_looked < self.cfg.watch.retry_s:
            return False
        self._output_looked = now
        if self._output_writable() is not None:
            return False
        self._output_usable()
        return True

    def _output_usable(self) -> None:
        """The output can be written (again): no problem, and what waited for it is due."""
        waiting, self._output_waiting = self._output_waiting, set()
        self._output_failures, self.output_problem = 0, None
        if waiting and self.ledger.due_now(waiting):
            log.info("the output can be written again: %d exposure(s) due now", len(waiting))

    def _failed(self, entry, exc: Exception) -> None:
        """A grading that raised: back to the ledger, due again after its own back-off (which
        doubles with each failure, up to :data:`MAX_BACKOFF_S`); one log line per attempt, and
        the other exposures are graded meanwhile.

        The failure counts against the exposure only when the output itself is writable (a
        probe file can be written beside the rows): a read-only or full dataset is nobody's
        exposure's fault and must not quarantine the night. An exposure that failed
        ``watch.max_attempts`` times on its own is quarantined as ``too_many_attempts``."""
        wc = self.cfg.watch
        error = f"{type(exc).__name__}: {exc}"
        output_error = self._output_writable()
        own = output_error is None
        if own:
            failures = n = entry.failures + 1
        else:
            failures = entry.failures
            self._output_failures += 1
            n = self._output_failures
            self.output_problem = output_error
            self._output_waiting.add(entry.key)
        self.metrics.write_failures.labels("exposure" if own else "output").inc()
        if own and failures >= wc.max_attempts:
            self._give_up(entry, failures, error)
            return
        delay = min(wc.retry_s * 2 ** (n - 1), MAX_BACKOFF_S)
        self.ledger.retry_later(entry.key, delay, error, count=own)
        log.error(
            "grading %s failed (%s); retrying in %.0f s (%s)",
            escape_controls(entry.path),
            escape_controls(error),
            delay,
            f"attempt {failures} of {wc.max_attempts}"
            if own
            else f"the output cannot be written: {escape_controls(output_error)}",
        )

    def _give_up(self, entry, failures: int, error: str) -> None:
        """Quarantine an exposure that failed ``failures`` times on its own."""
        reason = f"{TOO_MANY_ATTEMPTS}: {failures} failed attempts, the last: {error}"
        self.ledger.finish(entry.key, "quarantined", reason)
        slug, _, detail = reason.partition(": ")
        try:
            row = self._write_refusal(
                entry.exposure_id, entry.path, slug, detail, entry.ready_at or entry.seen_at
            )
        except OSError as exc:  # most likely what failed all along: the ledger holds it
            self.metrics.exposures_quarantined.labels(TOO_MANY_ATTEMPTS).inc()
            log.warning(
                "quarantine row of %s not written either (%s): the ledger holds it",
                escape_controls(entry.path),
                escape_controls(exc),
            )
        else:
            self._account(row)
        log.error(
            "%s quarantined after %d failed attempts: %s",
            escape_controls(entry.path),
            failures,
            escape_controls(error),
        )

    def _bundle_key(self) -> tuple[str, int]:
        """What identifies the bundle on disk: its real path and its manifest's mtime."""
        real = self.bundle.resolve()
        return str(real), (real / MANIFEST).stat().st_mtime_ns

    def _use_model(self, manifest: dict) -> None:
        version = str(manifest.get("version", "unknown"))
        if version != str(self.manifest.get("version", "unknown")):
            log.info("model bundle %s: now version %s", self.bundle, version)
        self.manifest = manifest
        self.metrics.set_model(version)

    def _account(self, row: dict) -> None:
        """Metrics and alerts for one exposure row."""
        stages = {
            s: row.get(f"{s}_s") or 0.0 for s in ("extract", "som", "representative", "score")
        }
        self.metrics.observe_exposure(
            row.get("grade"),
            row["status"],
            row.get("reason"),
            row.get("latency_s"),
            row.get("confidence"),
            row.get("n_ccd_graded") or 0,
            row.get("n_sources") or 0,
            stages,
            ood=row.get("ood_score"),
            seeing_arcsec=row.get("seeing_arcsec"),
            sky_mag_arcsec2=row.get("sky_mag_arcsec2"),
        )
        self.alerts.observe(row)
        if row["status"] == "graded":
            self.last_graded = row
