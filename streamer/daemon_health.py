"""What the daemon says about itself: the /healthz document, why it is not doing its job, and
the files waiting to be graded (the observer page's Waiting panel).

:class:`DaemonHealth` is a mixin of :class:`skygrade.streamer.daemon.Daemon`; it only reads the
daemon's state, from the HTTP server's threads and the metrics scrape, and changes nothing but the
cached probe of the output (``_probe``).
"""

from __future__ import annotations

import time

from skygrade.ops.text import escape_controls

__all__ = ["DaemonHealth"]


class DaemonHealth:
    """/healthz, :meth:`problems` and :meth:`waiting` of :class:`~skygrade.streamer.daemon.Daemon`.

    It reads the daemon's ``ledger``, ``watcher``, grader threads (``_threads``), ``stopping``,
    ``alerts``, ``last_graded``, ``manifest``, ``started_at``, ``out_dir``, ``bundle``, the output
    and bundle problems (``output_problem``, ``bundle_problem``, ``bundle_blocked``) and probes
    the output with the daemon's ``_output_writable``.
    """

    def waiting(self) -> list[dict]:
        """The files held but not graded yet, for the observer page's Waiting panel: the
        watcher's files still being copied (``copying``, ``incomplete``:
        :meth:`DropWatcher.pending`) and the ledger's ``seen`` rows (``incoming``, since they
        were ready). A file in both (graded once, being rewritten) is listed once, as the
        watcher sees it."""
        watcher, ledger = getattr(self, "watcher", None), self.ledger
        copying = [] if watcher is None else watcher.pending()
        seen = {w["path"] for w in copying}
        incoming = [
            {
                "exposure_id": e.exposure_id,
                "path": e.path,
                "state": "incoming",
                "since": e.ready_at or e.seen_at,
            }
            for e in ([] if ledger is None else ledger.pending())
            if e.path not in seen
        ]
        return copying + incoming

    def _oldest_pending_age(self) -> float:
        """Seconds since the oldest exposure not yet final arrived (0 when none): read by
        ``skygrade_oldest_pending_age_seconds`` at each scrape."""
        ledger = self.ledger
        try:
            oldest = None if ledger is None else ledger.oldest_pending()
        except Exception:  # a closed ledger (stopping): nothing pending that we know of
            return 0.0
        return 0.0 if oldest is None else max(0.0, time.time() - oldest)

    def problems(self) -> list[str]:
        """Why the daemon is not doing its job right now (empty when it is): /healthz is 503
        with these while any holds. No grade can be written (the dataset is read-only,
        missing, full), there is no bundle to grade with, or an exposure keeps failing."""
        problems = []
        output = self.output_problem
        if output is None:  # nothing failed lately: look (at most every 5 s, a file made and
            when, output = self._probe  # removed beside the rows)
            if time.monotonic() - when > 5.0:
                output = self._output_writable()
                self._probe = (time.monotonic(), output)
        if output is not None:
            problems.append(f"cannot write grades into {self.out_dir}: {output}")
        if self.bundle_blocked:
            problems.append(f"model bundle {self.bundle} cannot be loaded: {self.bundle_problem}")
        ledger = self.ledger
        for entry in [] if ledger is None else ledger.failing(min_failures=2)[:5]:
            due = max(0.0, (entry.next_attempt_at or 0.0) - time.time())
            problems.append(
                f"exposure {entry.exposure_id} ({entry.path}) failed {entry.failures} times, "
                f"next attempt in {due:.0f} s: {entry.last_error}"
            )
        return [escape_controls(p) for p in problems]

    def health(self) -> dict:
        """The /healthz document: ``ok`` false (HTTP 503) while the daemon is stopping, a
        thread of it is dead, or :meth:`problems` lists something."""
        counts = self.ledger.counts() if self.ledger is not None else {}
        last = self.last_graded
        watcher = getattr(self, "watcher", None)
        grading = bool(self._threads) and all(t.is_alive() for t in self._threads)
        problems = self.problems()
        if not grading and self._threads:
            problems.append("the grader thread is not running")
        warnings = []
        if self.bundle_problem is not None and not self.bundle_blocked:
            warnings.append(
                f"model bundle {self.bundle} refused, grading with version "
                f"{self.manifest.get('version')}: {self.bundle_problem}"
            )
        return {
            "ok": not self.stopping.is_set()
            and watcher is not None
            and watcher.running
            and grading
            and not problems,
            "problems": problems,
            "warnings": [escape_controls(w) for w in warnings],
            "model_version": self.manifest.get("version"),
            "backlog": counts.get("seen", 0),
            "counts": counts,
            "last_graded": None
            if last is None
            else {
                "exposure_id": last["exposure_id"],
                "grade": last["grade"],
                "confidence": last["confidence"],
            },
            "alerts": [
                {
                    "level": a.level,
                    "rule": a.rule,
                    "message": a.message,
                    "exposure_id": a.exposure_id,
                    "since": a.started_at.isoformat(),
                }
                for a in self.alerts.active()
            ],
            "uptime_s": time.time() - self.started_at,
        }
