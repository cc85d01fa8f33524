"""WARN / ALARM rules on the graded exposures, and their delivery.

:class:`AlertEngine` looks at each exposure row as it is written and keeps one state per rule:

==================  =====================================================================
rule                condition (thresholds from :class:`skygrade.ops.config.AlertsConfig`)
==================  =====================================================================
consecutive_bad     N consecutive graded exposures not GOOD: WARN at ``consecutive_bad_warn``,
                    ALARM at ``consecutive_bad_alarm``; cleared by a GOOD exposure
low_confidence      a graded exposure's confidence below ``low_confidence`` (WARN)
median_elongation   median source elongation at or above ``median_elongation_warn`` (WARN) or
                    ``median_elongation_alarm`` (ALARM): trailed stars, tracking
median_iso0         median ISO0 above ``median_iso0_warn`` (WARN; off when unset): seeing
seeing              measured seeing (``seeing_arcsec``, PSF FWHM) at or above
                    ``seeing_warn_arcsec`` (WARN; off when unset)
quarantine_rate     ``quarantine_warn`` or more of the last ``quarantine_window`` exposures
                    quarantined (WARN)
==================  =====================================================================

It reports changes only: a rule going active, escalating from WARN to ALARM, or clearing (a
resolved :class:`Alert`). While a rule stays active its level does not go down, and
:meth:`AlertEngine.active` shows its latest message. Quarantined exposures only count for the
quarantine rule; they neither extend nor break a run of exposures not GOOD.

:class:`AlertDispatcher` delivers alerts: a log line for each (WARNING for WARN, ERROR for
ALARM, INFO when resolved) and, when a webhook URL is configured, an HTTP POST of
Alertmanager-compatible JSON from a background thread, so that :meth:`AlertDispatcher.send`
never blocks the pipeline.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import collections
import dataclasses
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from skygrade.ops.config import AlertsConfig, check_http_url
from skygrade.ops.metrics import Metrics

__all__ = [
    "RULES",
    "Alert",
    "AlertDispatcher",
    "AlertEngine",
    "alertmanager_payload",
    "rfc3339",
]

logger = logging.getLogger(__name__)

#: The rules of :class:`AlertEngine`, in the order they are evaluated and listed.
RULES: tuple[str, ...] = (
    "consecutive_bad",
    "low_confidence",
    "median_elongation",
    "median_iso0",
    "seeing",
    "quarantine_rate",
)

Level = Literal["WARN", "ALARM"]
_RANK = {"WARN": 1, "ALARM": 2}
_SEVERITY = {"WARN": "warning", "ALARM": "critical"}
_STATUSES = ("graded", "quarantined")
_SKIP = object()  # a rule that learns nothing from a row keeps its state


def rfc3339(when: datetime) -> str:
    """Format a datetime as RFC 3339 in UTC with milliseconds, e.g. ``2024-03-01T08:15:02.250Z``.

    Parameters
    ----------
    when : datetime
        An aware datetime (a naive one is taken as UTC).

    Returns
    -------
    str
        The timestamp, ending in ``Z``.

    Examples
    --------
    >>> rfc3339(datetime(2024, 3, 1, 8, 15, 2, 250000, tzinfo=UTC))
    '2024-03-01T08:15:02.250Z'
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert, as fired, escalated or resolved by :class:`AlertEngine`.

    Attributes
    ----------
    level : {"WARN", "ALARM"}
        Severity. A resolved alert keeps the level it had while active.
    rule : str
        The rule (one of :data:`RULES`).
    message : str
        For people, e.g. ``"6 consecutive exposures not GOOD (last: BT, 2817011)"``.
    exposure_id : str or None
        The exposure whose row changed the rule's state.
    started_at : datetime
        When the alert (at this level) started, UTC.
    resolved : bool
        True for the notice that the condition has cleared.
    ended_at : datetime or None
        When the condition cleared (resolved alerts only), UTC.
    """

    level: Level
    rule: str
    message: str
    exposure_id: str | None
    started_at: datetime
    resolved: bool = False
    ended_at: datetime | None = None

    @property
    def alertname(self) -> str:
        """``skygrade_<rule>``, the Alertmanager ``alertname`` label."""
        return f"skygrade_{self.rule}"

    @property
    def severity(self) -> str:
        """``"warning"`` for WARN, ``"critical"`` for ALARM (the Alertmanager label)."""
        return _SEVERITY[self.level]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class AlertEngine:
    """Evaluate the alert rules on each exposure row; report and remember state changes.

    Parameters
    ----------
    config : skygrade.ops.config.AlertsConfig
        The thresholds.
    sink : callable, optional
        Called with each :class:`Alert` that :meth:`observe` reports (e.g.
        ``AlertDispatcher.send``). An exception from it is logged, never raised.
    metrics : skygrade.ops.metrics.Metrics, optional
        Counts fired alerts in ``skygrade_alerts_total{level}``.
    clock : callable, optional
        Returns the current aware datetime (default ``datetime.now(UTC)``); for tests.

    Examples
    --------
    >>> engine = AlertEngine(AlertsConfig(consecutive_bad_warn=1, consecutive_bad_alarm=2))
    >>> row = {"exposure_id": "2817011", "grade": "BT", "status": "graded", "confidence": 0.9}
    >>> [(a.level, a.message) for a in engine.observe(row)]
    [('WARN', '1 consecutive exposures not GOOD (last: BT, 2817011)')]
    """

    def __init__(
        self,
        config: AlertsConfig,
        sink: Callable[[Alert], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self._metrics = metrics
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._active: dict[str, Alert] = {}
        self._bad_run = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=config.quarantine_window)
        self._last_quarantined: tuple[str, str | None] | None = None

    def observe(self, row: Mapping[str, Any]) -> list[Alert]:
        """Evaluate every rule on one exposure row.

        Parameters
        ----------
        row : mapping
            The exposure row; the keys used are ``exposure_id``, ``grade``, ``status``
            (``"graded"`` or ``"quarantined"``), ``confidence``, ``median_elongation``,
            ``median_iso0``, ``seeing_arcsec``, ``seeing_zenith_arcsec``, ``n_psf_stars`` and
            ``reason``. Missing or NaN values leave the rules that need
            them as they are.

        Returns
        -------
        list of Alert
            The state changes, in :data:`RULES` order: alerts that went active or escalated
            to ALARM, and resolved alerts (``resolved=True``) of rules that cleared. Each was
            also passed to the sink.

        Raises
        ------
        ValueError
            If ``row["status"]`` is not ``"graded"`` or ``"quarantined"``.
        """
        status = row.get("status")
        if status not in _STATUSES:
            raise ValueError(f"row['status'] must be one of {_STATUSES}, got {status!r}")
        exposure_id = None if row.get("exposure_id") is None else str(row["exposure_id"])
        with self._lock:
            now = self._clock()
            verdicts = {
                "consecutive_bad": self._consecutive_bad(row, status, exposure_id),
                "low_confidence": self._low_confidence(row, status, exposure_id),
                "median_elongation": self._elongation(row, status, exposure_id),
                "median_iso0": self._iso0(row, status, exposure_id),
                "seeing": self._seeing(row, status, exposure_id),
                "quarantine_rate": self._quarantine_rate(row, status, exposure_id),
            }
            changes = []
            for rule in RULES:
                verdict = verdicts[rule]
                if verdict is not _SKIP:
                    change = self._transition(rule, *verdict, exposure_id, now)
                    if change is not None:
                        changes.append(change)
        for alert in changes:
            if self._metrics is not None and not alert.resolved:
                self._metrics.alerts.labels(alert.level).inc()
            if self._sink is not None:
                try:
                    self._sink(alert)
                except Exception:
                    logger.exception("alert sink failed on %s", alert)
        return changes

    def active(self) -> list[Alert]:
        """The active alerts, in :data:`RULES` order, each with its latest message.

        Returns
        -------
        list of Alert
            One per active rule; empty when all is well.
        """
        with self._lock:
            return [self._active[rule] for rule in RULES if rule in self._active]

    # -- state machine

    def _transition(
        self,
        rule: str,
        level: Level | None,
        message: str,
        exposure_id: str | None,
        now: datetime,
    ) -> Alert | None:
        previous = self._active.get(rule)
        if level is None:
            if previous is None:
                return None
            del self._active[rule]
            return dataclasses.replace(
                previous, message=message, exposure_id=exposure_id, resolved=True, ended_at=now
            )
        if previous is None or _RANK[level] > _RANK[previous.level]:
            alert = Alert(level, rule, message, exposure_id, started_at=now)
            self._active[rule] = alert
            return alert
        # still active at the same or a lower level: the level sticks until the rule clears
        self._active[rule] = dataclasses.replace(previous, message=message, exposure_id=exposure_id)
        return None

    # -- rules: each returns _SKIP or (level or None, message)

    def _consecutive_bad(self, row: Mapping, status: str, eid: str | None) -> Any:
        grade = row.get("grade")
        if status != "graded" or not grade:
            return _SKIP
        cfg = self.config
        if grade == "GOOD":
            run, self._bad_run = self._bad_run, 0
            return None, f"{eid} graded GOOD after {run} consecutive exposures not GOOD"
        self._bad_run += 1
        run = self._bad_run
        level = (
            "ALARM"
            if run >= cfg.consecutive_bad_alarm
            else "WARN"
            if run >= cfg.consecutive_bad_warn
            else None
        )
        return level, f"{run} consecutive exposures not GOOD (last: {grade}, {eid})"

    def _low_confidence(self, row: Mapping, status: str, eid: str | None) -> Any:
        confidence = _finite(row.get("confidence"))
        if status != "graded" or confidence is None:
            return _SKIP
        limit = self.config.low_confidence
        if confidence < limit:
            grade = row.get("grade")
            return "WARN", f"confidence {confidence:.2f} below {limit:g} (graded {grade}, {eid})"
        return None, f"confidence {confidence:.2f} back at or above {limit:g} ({eid})"

    def _elongation(self, row: Mapping, status: str, eid: str | None) -> Any:
        value = _finite(row.get("median_elongation"))
        if status != "graded" or value is None:
            return _SKIP
        cfg = self.config
        for level, limit in (
            ("ALARM", cfg.median_elongation_alarm),
            ("WARN", cfg.median_elongation_warn),
        ):
            if value >= limit:
                return level, (
                    f"median elongation {value:.2f} >= {limit:g} ({eid}): stars trailed, "
                    "check tracking"
                )
        return (
            None,
            f"median elongation {value:.2f} back below {cfg.median_elongation_warn:g} ({eid})",
        )

    def _iso0(self, row: Mapping, status: str, eid: str | None) -> Any:
        limit = self.config.median_iso0_warn
        value = _finite(row.get("median_iso0"))
        if limit is None or status != "graded" or value is None:
            return _SKIP
        if value > limit:
            return "WARN", f"median ISO0 {value:.1f} px > {limit:g} ({eid}): poor seeing"
        return None, f"median ISO0 {value:.1f} px back at or below {limit:g} ({eid})"

    def _seeing(self, row: Mapping, status: str, eid: str | None) -> Any:
        limit = self.config.seeing_warn_arcsec
        value = _finite(row.get("seeing_arcsec"))
        if limit is None or status != "graded" or value is None:
            return _SKIP
        zenith = _finite(row.get("seeing_zenith_arcsec"))
        stars = row.get("n_psf_stars")
        detail = ", ".join(
            part
            for part in (
                f'{zenith:.2f}" at zenith' if zenith is not None else "",
                f"{int(stars)} stars" if stars is not None else "",
            )
            if part
        )
        detail = f" ({detail})" if detail else ""
        if value >= limit:
            return "WARN", f'seeing {value:.2f}"{detail} >= {limit:g}" ({eid}): poor seeing'
        return None, f'seeing {value:.2f}" back below {limit:g}" ({eid})'

    def _quarantine_rate(self, row: Mapping, status: str, eid: str | None) -> Any:
        quarantined = status == "quarantined"
        self._recent.append(quarantined)
        if quarantined:
            self._last_quarantined = (eid, row.get("reason"))
        n, window = sum(self._recent), len(self._recent)
        if n >= self.config.quarantine_warn:
            last_id, reason = self._last_quarantined or (eid, None)
            detail = f"{last_id}: {reason}" if reason else f"{last_id}"
            return "WARN", f"{n} of the last {window} exposures quarantined (last {detail})"
        return None, f"{n} of the last {window} exposures quarantined ({eid})"


# --------------------------------------------------------------------------------------------
# Delivery


def alertmanager_payload(alert: Alert, now: datetime | None = None) -> list[dict[str, Any]]:
    """The Alertmanager API v2 JSON (a list of alerts) for one :class:`Alert`.

    Parameters
    ----------
    alert : Alert
        The alert.
    now : datetime, optional
        Used as ``endsAt`` when a resolved alert has no ``ended_at``, and to end the WARN
        that an ALARM replaces (default: the current time).

    Returns
    -------
    list of dict
        ``[{"labels": {"alertname", "severity", "service"}, "annotations": {"summary",
        "exposure_id"}, "startsAt", "generatorURL"}]``, with ``"endsAt"`` on a resolved alert.
        An ALARM also ends the rule's WARN (labels differ only by severity), so that the two
        are not both firing in Alertmanager.

    Examples
    --------
    >>> t = datetime(2024, 3, 1, tzinfo=UTC)
    >>> alertmanager_payload(Alert("WARN", "low_confidence", "low", "2817011", t))[0]["labels"]
    {'alertname': 'skygrade_low_confidence', 'severity': 'warning', 'service': 'skygrade'}
    """
    now = now or datetime.now(UTC)

    def entry(severity: str, ends_at: datetime | None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "labels": {
                "alertname": alert.alertname,
                "severity": severity,
                "service": "skygrade",
            },
            "annotations": {"summary": alert.message, "exposure_id": alert.exposure_id or ""},
            "startsAt": rfc3339(alert.started_at),
        }
        if ends_at is not None:
            item["endsAt"] = rfc3339(ends_at)
        item["generatorURL"] = ""
        return item

    if alert.resolved:
        return [entry(alert.severity, alert.ended_at or now)]
    items = [entry(alert.severity, None)]
    if alert.level == "ALARM":
        items.append(entry(_SEVERITY["WARN"], now))
    return items


class AlertDispatcher:
    """Log every alert and POST it to an Alertmanager-compatible webhook in the background.

    Parameters
    ----------
    url : str or None
        Webhook endpoint (http or https), e.g. ``http://localhost:9093/api/v2/alerts``. None
        only logs.
    timeout_s : float, optional
        Seconds one request may take (default 2).
    retries : int, optional
        Further attempts after a failed request (default 3), waiting ``backoff_s``, then
        twice that, and so on. A 4xx answer other than 408 and 429 is not retried.
    queue_size : int, optional
        Alerts waiting for delivery at most (default 100); when full, the oldest is dropped
        and counted in ``skygrade_alerts_dropped_total``.
    metrics : skygrade.ops.metrics.Metrics, optional
        Counts undelivered alerts (``skygrade_alert_webhook_failures_total``) and dropped ones.
    backoff_s : float, optional
        First wait between attempts (default 0.25 s).

    Raises
    ------
    ValueError
        If ``url`` is not http(s) or a number is out of range.

    Examples
    --------
    >>> dispatcher = AlertDispatcher("http://localhost:9093/api/v2/alerts")  # doctest: +SKIP
    >>> engine = AlertEngine(AlertsConfig(), sink=dispatcher.send)  # doctest: +SKIP
    >>> with dispatcher:  # doctest: +SKIP
    ...     engine.observe(row)
    """

    def __init__(
        self,
        url: str | None,
        timeout_s: float = 2.0,
        retries: int = 3,
        queue_size: int = 100,
        metrics: Metrics | None = None,
        backoff_s: float = 0.25,
    ) -> None:
        problem = None if url is None else check_http_url(url)
        if problem:
            raise ValueError(f"url: {problem}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        self.url = url
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self._metrics = metrics
        self._queue: collections.deque[Alert] = collections.deque()
        self._queue_size = int(queue_size)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._deadline = math.inf
        self._closed = False
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener()

    @classmethod
    def from_config(cls, config: AlertsConfig, metrics: Metrics | None = None) -> "AlertDispatcher":
        """Build a dispatcher from the ``alerts`` config section.

        Parameters
        ----------
        config : skygrade.ops.config.AlertsConfig
            Uses ``webhook_url``, ``webhook_timeout_s``, ``webhook_retries``, ``webhook_queue``.
        metrics : skygrade.ops.metrics.Metrics, optional
            Where failures and drops are counted.

        Returns
        -------
        AlertDispatcher
            Not started.
        """
        return cls(
            config.webhook_url,
            timeout_s=config.webhook_timeout_s,
            retries=config.webhook_retries,
            queue_size=config.webhook_queue,
            metrics=metrics,
        )

    # -- lifecycle

    def start(self) -> None:
        """Start the delivery thread (nothing to start without a URL).

        Raises
        ------
        RuntimeError
            If already started, or started again after :meth:`stop`.
        """
        if self._closed:
            raise RuntimeError("AlertDispatcher was stopped; build a new one")
        if self._thread is not None:
            raise RuntimeError("AlertDispatcher is already running")
        if self.url is None:
            return
        self._thread = threading.Thread(target=self._run, name="skygrade-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (one attempt each) within ``timeout``, then join the thread.

        Alerts still queued at the deadline are dropped and counted. Idempotent.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the thread (default 5). A request in flight may take up to
            ``timeout_s`` to give up.
        """
        with self._cond:
            self._closed = True
            self._deadline = time.monotonic() + timeout
            self._stopping.set()
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout + self.timeout_s)
            if thread.is_alive():
                logger.warning("alert delivery thread still running after %.1f s", timeout)
        with self._cond:  # never started, or the thread gave up: what is left is dropped
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._count_dropped(left)
            logger.warning("%d alert(s) left undelivered at shutdown", left)

    def __enter__(self) -> "AlertDispatcher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sending

    def send(self, alert: Alert) -> None:
        """Log ``alert`` now and queue it for the webhook; never blocks on the network.

        Parameters
        ----------
        alert : Alert
            The alert (usually from :meth:`AlertEngine.observe`, as its sink).
        """
        if alert.resolved:
            logger.info("RESOLVED %s (was %s): %s", alert.rule, alert.level, alert.message)
        else:
            level = logging.ERROR if alert.level == "ALARM" else logging.WARNING
            logger.log(level, "%s %s: %s", alert.level, alert.rule, alert.message)
        if self.url is None:
            return
        dropped = 0
        with self._cond:
            if self._closed:
                dropped = 1
            else:
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    dropped = 1
                self._queue.append(alert)
                self._cond.notify()
        if dropped:
            self._count_dropped(dropped)
            logger.warning("alert queue full or closed: dropped an alert")

    def pending(self) -> int:
        """Number of alerts waiting for delivery."""
        with self._cond:
            return len(self._queue)

    # -- the delivery thread

    def _count_dropped(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.alerts_dropped.inc(n)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    return  # stop() drops and counts what is left
                alert = self._queue.popleft()
            try:
                self._deliver(alert)
            except Exception:  # never let the thread die with alerts queued
                logger.exception("alert delivery failed unexpectedly")

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alertmanager_payload(alert)).encode("utf-8")
        attempts = 1 if self._stopping.is_set() else 1 + self.retries
        error = "not attempted"
        for attempt in range(attempts):
            if attempt and self._stopping.wait(self.backoff_s * 2 ** (attempt - 1)):
                break  # stopping: no more retries
            try:
                self._post(body)
                return
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response and its socket
                error = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad answers
                error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if self._metrics is not None:
            self._metrics.webhook_failures.inc()
        logger.error(
            "alert webhook %s failed for %s %s: %s", self.url, alert.level, alert.rule, error
        )

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "skygrade"},
        )
        with self._opener.open(request, timeout=self.timeout_s) as response:
            response.read()
